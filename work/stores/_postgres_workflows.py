"""The PostgreSQL store's workflows: their tables, and a trigger that applies a step's end in
the very statement (and transaction) that records it (rules: ``work/workflows/_plan.py``)."""

from __future__ import annotations

import builtins
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._base import JobRecord

if TYPE_CHECKING:
    from ..workflows._model import WorkflowRecord
    from ..workflows._plan import Plan

__all__ = ["PostgresWorkflows", "workflow_schema", "workflow_trigger", "workflow_triggers"]


def workflow_schema(s: str, channel: str) -> list[str]:
    """Statements (idempotent) creating the workflow tables and trigger in schema ``s``
    (quoted); ``channel`` is the store's NOTIFY channel (a quoted literal)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {s}.workflows (
            seq         bigint GENERATED ALWAYS AS IDENTITY,
            id          text PRIMARY KEY,
            kind        text NOT NULL,
            state       text NOT NULL,
            jobs        jsonb NOT NULL,
            n_jobs      integer NOT NULL,
            current     integer NOT NULL DEFAULT 0,
            result      jsonb,
            error       text,
            created_at  timestamptz NOT NULL,
            finished_at timestamptz,
            name        text,
            on_error_id text,
            on_error    jsonb
        )""",
        f"CREATE UNIQUE INDEX IF NOT EXISTS workflows_seq ON {s}.workflows (seq)",
        f"""CREATE TABLE IF NOT EXISTS {s}.workflow_steps (
            job_id      text PRIMARY KEY,
            workflow_id text NOT NULL,
            idx         integer NOT NULL,
            target      integer NOT NULL,
            slot        integer NOT NULL,
            ended       boolean NOT NULL DEFAULT false
        )""",
        f"""CREATE INDEX IF NOT EXISTS workflow_steps_open ON {s}.workflow_steps
            (workflow_id, idx) WHERE NOT ended""",
        f"CREATE INDEX IF NOT EXISTS workflow_steps_wf ON {s}.workflow_steps (workflow_id)",
        f"""CREATE TABLE IF NOT EXISTS {s}.workflow_barriers (
            workflow_id text NOT NULL,
            barrier     integer NOT NULL,
            remaining   integer NOT NULL,
            spec        jsonb NOT NULL,
            PRIMARY KEY (workflow_id, barrier)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.workflow_slots (
            workflow_id text NOT NULL,
            barrier     integer NOT NULL,
            slot        integer NOT NULL,
            value       jsonb NOT NULL,
            PRIMARY KEY (workflow_id, barrier, slot)
        )""",
        # Add one job from a step's template (a released step, or on_error).
        f"""CREATE OR REPLACE FUNCTION {s}.workflow_add(
                t jsonb, a jsonb, delay double precision, now_ timestamptz
            ) RETURNS void LANGUAGE plpgsql AS $fn$
            BEGIN
                INSERT INTO {s}.jobs (id, handler, queue, args, headers, priority, state,
                    max_attempts, enqueued_at, scheduled_for, timeout, retry, result_ttl)
                VALUES (t->>'id', t->>'handler', t->>'queue', a::text, t->'headers',
                    (t->>'priority')::integer,
                    CASE WHEN delay > 0 THEN 'scheduled' ELSE 'queued' END,
                    (t->>'max_attempts')::integer, now_,
                    CASE WHEN delay > 0 THEN now_ + delay * interval '1 second' END,
                    (t->>'timeout')::double precision,
                    CASE WHEN jsonb_typeof(t->'retry') = 'object' THEN t->'retry' END,
                    (t->>'result_ttl')::double precision)
                ON CONFLICT DO NOTHING;
                PERFORM pg_notify({channel}, t->>'queue');
            END
            $fn$""",
        # A step became final: fill its barrier slot, release what follows, end the
        # workflow, enqueue on_error; all in the transaction of the step's own update.
        f"""CREATE OR REPLACE FUNCTION {s}.workflow_apply(
                j_id text, j_state text, j_status integer, j_result jsonb, j_error text
            ) RETURNS void LANGUAGE plpgsql AS $fn$
            DECLARE
                st record; wf record; b record; rel jsonb; a jsonb;
                tgt integer; slt integer; val jsonb;
                now_ timestamptz := clock_timestamp();
            BEGIN
                UPDATE {s}.workflow_steps SET ended = true
                    WHERE job_id = j_id AND NOT ended
                    RETURNING workflow_id, idx, target, slot INTO st;
                IF NOT FOUND THEN RETURN; END IF;
                SELECT state, on_error INTO wf FROM {s}.workflows
                    WHERE id = st.workflow_id FOR UPDATE;
                IF NOT FOUND THEN RETURN; END IF;
                IF wf.state <> 'running' THEN
                    -- Kept: a retry of the failed step replays it (workflow_step_retried).
                    IF wf.state = 'failed' THEN
                        UPDATE {s}.workflow_steps SET ended = false WHERE job_id = j_id;
                    END IF;
                    RETURN;
                END IF;
                IF j_state <> 'succeeded' THEN
                    UPDATE {s}.workflows SET state = j_state, error = j_error,
                        current = st.idx, finished_at = now_
                        WHERE id = st.workflow_id;
                    IF j_state = 'failed' AND wf.on_error IS NOT NULL THEN
                        PERFORM {s}.workflow_add(wf.on_error, (wf.on_error->'args')
                            || jsonb_build_object('error', coalesce(j_error, ''),
                                'status', j_status, 'job_id', j_id,
                                'workflow_id', st.workflow_id), 0, now_);
                    END IF;
                    RETURN;
                END IF;
                val := coalesce(j_result, 'null'::jsonb);
                tgt := st.target;
                slt := st.slot;
                LOOP
                    IF tgt = -1 THEN
                        UPDATE {s}.workflows SET state = 'succeeded', result = val,
                            current = n_jobs, finished_at = now_ WHERE id = st.workflow_id;
                        RETURN;
                    END IF;
                    INSERT INTO {s}.workflow_slots VALUES (st.workflow_id, tgt, slt, val);
                    UPDATE {s}.workflow_barriers SET remaining = remaining - 1
                        WHERE workflow_id = st.workflow_id AND barrier = tgt
                        RETURNING remaining, spec INTO b;
                    IF b.remaining > 0 THEN RETURN; END IF;
                    IF b.spec->>'mode' = 'one' THEN
                        SELECT value INTO val FROM {s}.workflow_slots
                            WHERE workflow_id = st.workflow_id AND barrier = tgt AND slot = 0;
                    ELSE
                        SELECT coalesce(jsonb_agg(value ORDER BY slot), '[]'::jsonb) INTO val
                            FROM {s}.workflow_slots
                            WHERE workflow_id = st.workflow_id AND barrier = tgt;
                    END IF;
                    FOR rel IN SELECT * FROM jsonb_array_elements(b.spec->'releases') LOOP
                        a := rel->'t'->'args';
                        IF NOT (rel->>'immutable')::boolean THEN
                            a := a || jsonb_build_object('input', val);
                        END IF;
                        PERFORM {s}.workflow_add(rel->'t', a,
                            (rel->>'delay')::double precision, now_);
                    END LOOP;
                    IF jsonb_typeof(b.spec->'forward') IS DISTINCT FROM 'array' THEN
                        RETURN;
                    END IF;
                    tgt := (b.spec->'forward'->>0)::integer;
                    slt := (b.spec->'forward'->>1)::integer;
                END LOOP;
            END
            $fn$""",
        f"""CREATE OR REPLACE FUNCTION {s}.workflow_step_ended() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM {s}.workflow_apply(NEW.id, NEW.state, NEW.status, NEW.result,
                    NEW.error);
                RETURN NULL;
            END
            $fn$""",
        # A retried job that failed its FAILED workflow: the workflow runs again (on_error
        # already ran: dropped), and the steps that ended meanwhile count now, in order.
        f"""CREATE OR REPLACE FUNCTION {s}.workflow_step_retried() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            DECLARE st record; j record;
            BEGIN
                SELECT workflow_id, idx INTO st FROM {s}.workflow_steps WHERE job_id = NEW.id;
                IF NOT FOUND THEN RETURN NULL; END IF;
                PERFORM 1 FROM {s}.workflows WHERE id = st.workflow_id
                    AND state = 'failed' AND current = st.idx FOR UPDATE;
                IF NOT FOUND THEN RETURN NULL; END IF;
                UPDATE {s}.workflow_steps SET ended = false WHERE job_id = NEW.id;
                UPDATE {s}.workflows SET state = 'running', result = NULL, error = NULL,
                    finished_at = NULL, on_error = NULL WHERE id = st.workflow_id;
                FOR j IN SELECT jb.id, jb.state, jb.status, jb.result, jb.error
                        FROM {s}.workflow_steps ws JOIN {s}.jobs jb ON jb.id = ws.job_id
                        WHERE ws.workflow_id = st.workflow_id AND NOT ws.ended
                          AND jb.state IN ('succeeded', 'failed', 'cancelled')
                        ORDER BY ws.idx LOOP
                    PERFORM {s}.workflow_apply(j.id, j.state, j.status, j.result, j.error);
                END LOOP;
                RETURN NULL;
            END
            $fn$""",
        # Jobs deleted (purge, expire): a finished workflow goes with its last job. The
        # workflows are locked first, then looked at in a new snapshot, so that two purgers
        # of one workflow's last jobs cannot both leave it behind.
        f"""CREATE OR REPLACE FUNCTION {s}.workflow_jobs_deleted() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            DECLARE ids text[];
            BEGIN
                SELECT array_agg(DISTINCT headers->>'anywork-workflow-id') INTO ids
                    FROM gone WHERE headers ? 'anywork-workflow-id';
                IF ids IS NULL THEN RETURN NULL; END IF;
                PERFORM 1 FROM {s}.workflows WHERE id = ANY(ids) AND state <> 'running'
                    ORDER BY id FOR UPDATE;
                SELECT array_agg(w.id) INTO ids FROM {s}.workflows w
                    WHERE w.id = ANY(ids) AND w.state <> 'running'
                      AND NOT EXISTS (SELECT 1 FROM {s}.jobs jb WHERE jb.id = w.on_error_id
                          OR jb.id IN (SELECT job_id FROM {s}.workflow_steps
                                       WHERE workflow_id = w.id));
                IF ids IS NULL THEN RETURN NULL; END IF;
                DELETE FROM {s}.workflow_slots WHERE workflow_id = ANY(ids);
                DELETE FROM {s}.workflow_barriers WHERE workflow_id = ANY(ids);
                DELETE FROM {s}.workflow_steps WHERE workflow_id = ANY(ids);
                DELETE FROM {s}.workflows WHERE id = ANY(ids);
                RETURN NULL;
            END
            $fn$""",
    ]


def workflow_trigger(s: str) -> str:
    """The trigger (created once) that runs ``workflow_step_ended`` for each step that
    becomes final, whichever statement does it (complete, cancel, reap)."""
    return f"""CREATE TRIGGER jobs_workflow_step AFTER UPDATE OF state ON {s}.jobs
        FOR EACH ROW WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled')
                           AND OLD.state IS DISTINCT FROM NEW.state
                           AND NEW.headers ? 'anywork-workflow-id')
        EXECUTE FUNCTION {s}.workflow_step_ended()"""


def workflow_triggers(s: str) -> dict[str, str]:
    """The triggers added since ``jobs_workflow_step``, by name (each created once, when
    missing, so that a store made by an older anywork gets them when it is opened):
    ``jobs_workflow_retry`` resumes a FAILED workflow when its failed step is retried;
    ``jobs_workflow_purge`` deletes a finished workflow with its last job."""
    return {
        "jobs_workflow_retry": f"""CREATE TRIGGER jobs_workflow_retry
            AFTER UPDATE OF state ON {s}.jobs
            FOR EACH ROW WHEN (OLD.state = 'failed' AND NEW.state = 'queued'
                               AND NEW.headers ? 'anywork-workflow-id')
            EXECUTE FUNCTION {s}.workflow_step_retried()""",
        "jobs_workflow_purge": f"""CREATE TRIGGER jobs_workflow_purge
            AFTER DELETE ON {s}.jobs REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.workflow_jobs_deleted()""",
    }


_WF_COLUMNS = (
    "id, kind, state, jobs::text AS jobs, n_jobs, current, result::text AS result, error,"
    " created_at, finished_at, name, on_error_id"
)


def _record(row: Any, current: int | None) -> WorkflowRecord:
    from ..workflows._model import WorkflowRecord, WorkflowState

    state = WorkflowState(row["state"])
    if not state.is_final:
        current = row["n_jobs"] if current is None else current
    else:
        current = row["current"]
    return WorkflowRecord(
        id=row["id"],
        kind=row["kind"],
        state=state,
        jobs=tuple(json.loads(row["jobs"])),
        current=current,
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        created_at=row["created_at"].astimezone(UTC),
        finished_at=row["finished_at"].astimezone(UTC) if row["finished_at"] else None,
        name=row["name"],
        on_error=row["on_error_id"],
    )


def _start(rec: JobRecord) -> dict[str, Any]:
    from ..workflows._plan import template

    delay = 0.0
    if rec.scheduled_for is not None and rec.enqueued_at is not None:
        delay = max((rec.scheduled_for - rec.enqueued_at).total_seconds(), 0.0)
    return {"t": template(rec), "a": rec.args, "d": delay}


class PostgresWorkflows:
    """Workflow methods of :class:`~work.stores.PostgresStore` (mixed in)."""

    if TYPE_CHECKING:
        _s: str
        _pool: Any

        def _require_pool(self) -> Any: ...

    async def add_workflow(self, plan: Plan) -> WorkflowRecord:
        """Store a compiled workflow and add its first steps, in one transaction (see
        :meth:`work.stores.WorkflowStore.add_workflow`)."""
        self._require_pool()
        rec = plan.record
        ids = [*rec.jobs, *([rec.on_error] if rec.on_error else [])]
        s = self._s
        async with self._pool.acquire() as conn, conn.transaction():
            taken = await conn.fetchval(
                f"SELECT id FROM {s}.jobs WHERE id = ANY($1::text[]) LIMIT 1", ids
            )
            if taken is not None:
                raise ValueError(f"a job with id {taken!r} already exists: a step needs a new id")
            inserted = await conn.fetchval(
                f"""INSERT INTO {s}.workflows (id, kind, state, jobs, n_jobs, created_at, name,
                        on_error_id, on_error)
                    VALUES ($1, $2, 'running', $3::jsonb, $4, $5, $6, $7, $8::jsonb)
                    ON CONFLICT DO NOTHING RETURNING id""",
                rec.id,
                rec.kind,
                json.dumps(list(rec.jobs)),
                len(rec.jobs),
                rec.created_at,
                rec.name,
                rec.on_error,
                json.dumps(plan.on_error) if plan.on_error is not None else None,
            )
            if inserted is None:
                raise ValueError(f"a workflow with id {rec.id!r} already exists")
            await conn.execute(
                f"""INSERT INTO {s}.workflow_steps (job_id, workflow_id, idx, target, slot)
                    SELECT u.j, $1, u.i, u.t, u.s
                    FROM unnest($2::text[], $3::int[], $4::int[], $5::int[]) AS u(j, i, t, s)""",
                rec.id,
                [p.job_id for p in plan.steps],
                [p.index for p in plan.steps],
                [p.target for p in plan.steps],
                [p.slot for p in plan.steps],
            )
            if plan.barriers:
                await conn.execute(
                    f"""INSERT INTO {s}.workflow_barriers (workflow_id, barrier, remaining, spec)
                        SELECT $1, u.b, u.r, u.s::jsonb
                        FROM unnest($2::int[], $3::int[], $4::text[]) AS u(b, r, s)""",
                    rec.id,
                    [b.index for b in plan.barriers],
                    [b.remaining for b in plan.barriers],
                    [json.dumps(b.spec()) for b in plan.barriers],
                )
            await conn.execute(
                f"""SELECT {s}.workflow_add(x->'t', x->'a', (x->>'d')::double precision, $2)
                    FROM jsonb_array_elements($1::jsonb) AS x""",
                json.dumps([_start(r) for r in plan.start]),
                rec.created_at,
            )
        return rec

    async def get_workflow(self, id: str) -> WorkflowRecord | None:
        """Return the workflow's record, or None."""
        pool = self._require_pool()
        row = await pool.fetchrow(
            f"""SELECT {_WF_COLUMNS}, (SELECT min(idx) FROM {self._s}.workflow_steps
                    WHERE workflow_id = w.id AND NOT ended) AS open
                FROM {self._s}.workflows AS w WHERE id = $1""",
            id,
        )
        return None if row is None else _record(row, row["open"])

    async def cancel_workflow(self, id: str) -> bool:
        """End a RUNNING workflow CANCELLED and cancel its unfinished jobs, in one
        transaction."""
        self._require_pool()
        s = self._s
        async with self._pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval(
                f"SELECT state FROM {s}.workflows WHERE id = $1 FOR UPDATE", id
            )
            if state != "running":
                return False
            now = datetime.now(UTC)
            await conn.execute(
                f"""UPDATE {s}.workflows SET state = 'cancelled', finished_at = $2,
                        current = coalesce((SELECT min(idx) FROM {s}.workflow_steps
                            WHERE workflow_id = $1 AND NOT ended), n_jobs)
                    WHERE id = $1""",
                id,
                now,
            )
            steps = f"SELECT job_id FROM {s}.workflow_steps WHERE workflow_id = $1"
            await conn.execute(
                f"""UPDATE {s}.jobs SET state = 'cancelled', status = 499, error = 'cancelled',
                        finished_at = $2::timestamptz,
                        expires_at = $2::timestamptz + result_ttl * interval '1 second',
                        deadline = NULL
                    WHERE id IN ({steps}) AND state IN ('queued', 'scheduled', 'waiting')""",
                id,
                now,
            )
            await conn.execute(
                f"""UPDATE {s}.jobs SET cancel_requested = true
                    WHERE id IN ({steps}) AND state = 'running'""",
                id,
            )
        return True

    async def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[WorkflowRecord]:
        """Return a page of workflow records, oldest first."""
        pool = self._require_pool()
        rows = await pool.fetch(
            f"""SELECT {_WF_COLUMNS}, (SELECT min(idx) FROM {self._s}.workflow_steps
                    WHERE workflow_id = w.id AND NOT ended) AS open
                FROM {self._s}.workflows AS w
                WHERE ($1::text IS NULL OR state = $1)
                  AND ($2::text IS NULL
                       OR seq > (SELECT seq FROM {self._s}.workflows WHERE id = $2))
                ORDER BY seq LIMIT $3""",
            state,
            after,
            max(limit, 0),
        )
        return [_record(row, row["open"]) for row in rows]
