"""The SQLite store's workflows: their tables, and the hook run in the transaction that ends a
step (see ``work/workflows/_plan.py`` for the rules)."""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._core.clock import SYSTEM, Clock
from .._core.status import Status
from ._base import JobRecord, JobState

if TYPE_CHECKING:
    from ..workflows._model import WorkflowRecord
    from ..workflows._plan import Plan, Request

__all__ = [
    "SCHEMA",
    "WF_OWNER",
    "SQLiteWorkflows",
    "wf_clock",
    "wf_final",
    "wf_purged",
    "wf_reaped",
    "wf_retried",
    "wf_running_steps",
]

# The clock of the store whose connection a call runs on (set around each call, in its
# thread), so that the hooks below, called with a bare connection, read the store's time.
_clock: ContextVar[Clock] = ContextVar("anywork_sqlite_workflow_clock", default=SYSTEM)


@contextmanager
def wf_clock(clock: Clock) -> Iterator[None]:
    """Run the workflow hooks called inside this block on ``clock`` (the store's)."""
    token = _clock.set(clock)
    try:
        yield
    finally:
        _clock.reset(token)


# A RETURNING clause for a DELETE of jobs: the workflow each deleted job belonged to.
WF_OWNER = (
    " RETURNING CASE WHEN json_valid(headers)"
    """ THEN json_extract(headers, '$."anywork-workflow-id"') END"""
)

# Created (if missing) in the transaction that migrates the jobs' schema: tables of their own,
# so the jobs table and its migrations stay as they are.
SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS anywork_workflows (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        jobs TEXT NOT NULL,               -- JSON array of job ids
        n_jobs INTEGER NOT NULL,
        current INTEGER NOT NULL DEFAULT 0,
        result TEXT,                      -- JSON
        error TEXT,
        created_at REAL NOT NULL,
        finished_at REAL,
        name TEXT,
        on_error_id TEXT,
        on_error TEXT                     -- JSON template of the on_error job
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS anywork_workflow_steps (
        job_id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        target INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        ended INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS anywork_workflow_steps_open"
    " ON anywork_workflow_steps (workflow_id, ended, idx)",
    """
    CREATE TABLE IF NOT EXISTS anywork_workflow_barriers (
        workflow_id TEXT NOT NULL,
        barrier INTEGER NOT NULL,
        remaining INTEGER NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (workflow_id, barrier)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS anywork_workflow_slots (
        workflow_id TEXT NOT NULL,
        barrier INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (workflow_id, barrier, slot)
    ) WITHOUT ROWID
    """,
)

_WF_COLUMNS = (
    "id, kind, state, jobs, n_jobs, current, result, error, created_at, finished_at, name,"
    " on_error_id"
)


def _add(conn: sqlite3.Connection, records: list[JobRecord], *, strict: bool = False) -> None:
    from .sqlite import _INSERT, _insert_params

    now = _clock.get().now()
    cur = conn.executemany(_INSERT, [_insert_params(rec, now) for rec in records])
    # A released step whose id someone took meanwhile is skipped rather than failing the
    # transaction that ends its predecessor (which would fail the worker's complete forever).
    if strict and cur.rowcount != len(records):
        raise ValueError("a workflow step's job id is taken")


def _first_open(conn: sqlite3.Connection, wf: str) -> int | None:
    row = conn.execute(
        "SELECT MIN(idx) FROM anywork_workflow_steps WHERE workflow_id = ? AND ended = 0", (wf,)
    ).fetchone()
    return None if row[0] is None else int(row[0])


def _handle(conn: sqlite3.Connection, req: Request) -> Any:
    kind = req[0]
    if kind == "step":
        row = conn.execute(
            "UPDATE anywork_workflow_steps SET ended = 1 WHERE job_id = ? AND ended = 0"
            " RETURNING workflow_id, idx, target, slot",
            (req[1],),
        ).fetchone()
        return None if row is None else tuple(row)
    if kind in ("unend", "resume"):
        return _reopen(conn, kind, req[1])
    if kind == "lock":  # BEGIN IMMEDIATE already holds the database's write lock
        row = conn.execute(
            "SELECT state, on_error FROM anywork_workflows WHERE id = ?", (req[1],)
        ).fetchone()
        return None if row is None else (row[0], json.loads(row[1]) if row[1] else None)
    if kind == "fill":
        _, wf, b, slot, value = req
        conn.execute(
            "INSERT INTO anywork_workflow_slots (workflow_id, barrier, slot, value)"
            " VALUES (?, ?, ?, ?)",
            (wf, b, slot, value),
        )
        row = conn.execute(
            "UPDATE anywork_workflow_barriers SET remaining = remaining - 1"
            " WHERE workflow_id = ? AND barrier = ? RETURNING remaining, spec",
            (wf, b),
        ).fetchone()
        if row[0] > 0:
            return None
        values = [
            r[0]
            for r in conn.execute(
                "SELECT value FROM anywork_workflow_slots WHERE workflow_id = ? AND barrier = ?"
                " ORDER BY slot",
                (wf, b),
            )
        ]
        return json.loads(row[1]), values
    if kind == "add":
        _add(conn, req[1])
        return None
    _, wf, final, result_json, error, current = req
    if current is None:
        current = _first_open(conn, wf)
    conn.execute(
        "UPDATE anywork_workflows SET state = ?, result = ?, error = ?, finished_at = ?,"
        " current = COALESCE(?, n_jobs) WHERE id = ?",
        (final, result_json, error, _clock.get().time(), current, wf),
    )
    return None


def _reopen(conn: sqlite3.Connection, kind: str, job_id: str) -> Any:
    """The "unend" and "resume" requests (see ``work/workflows/_plan.py``)."""
    step = conn.execute(
        "SELECT workflow_id, idx FROM anywork_workflow_steps WHERE job_id = ?", (job_id,)
    ).fetchone()
    if step is None:
        return None
    wf, idx = step
    if kind == "resume":
        row = conn.execute(
            "SELECT 1 FROM anywork_workflows WHERE id = ? AND state = 'failed' AND current = ?",
            (wf, idx),
        ).fetchone()
        if row is None:
            return None
    conn.execute("UPDATE anywork_workflow_steps SET ended = 0 WHERE job_id = ?", (job_id,))
    if kind == "unend":
        return None
    # on_error ran when the workflow failed: once.
    conn.execute(
        "UPDATE anywork_workflows SET state = 'running', result = NULL, error = NULL,"
        " finished_at = NULL, on_error = NULL WHERE id = ?",
        (wf,),
    )
    rows = conn.execute(
        "SELECT j.id, j.state, j.status, j.result, j.error FROM anywork_workflow_steps s"
        " JOIN anywork_jobs j ON j.id = s.job_id WHERE s.workflow_id = ? AND s.ended = 0"
        " AND j.state IN ('succeeded', 'failed', 'cancelled') ORDER BY s.idx",
        (wf,),
    ).fetchall()
    return [(r[0], r[1], int(r[2]), r[3] if r[1] == "succeeded" else None, r[4]) for r in rows]


def wf_final(
    conn: sqlite3.Connection,
    job_id: str,
    state: JobState,
    status: int,
    result_json: str | None,
    error: str | None,
) -> bool:
    """The hook: job ``job_id`` just became final in this transaction. Returns True when it
    was a workflow step (jobs may have been added: wake the workers)."""
    from ..workflows._plan import advance, drive

    steps = advance(job_id, state, status, result_json, error, _clock.get().now())
    was_step = False

    def handle(req: Request) -> Any:
        nonlocal was_step
        reply = _handle(conn, req)
        was_step = was_step or (req[0] == "step" and reply is not None)
        return reply

    drive(steps, handle)
    return was_step


def wf_retried(conn: sqlite3.Connection, job_id: str) -> None:
    """The hook: job ``job_id`` was just queued again by a retry in this transaction; if it
    is the step that failed its workflow, the workflow resumes."""
    from ..workflows._plan import drive, resume

    drive(resume(job_id, _clock.get().now()), lambda req: _handle(conn, req))


def wf_purged(conn: sqlite3.Connection, owners: builtins.list[Any]) -> None:
    """After a DELETE of jobs ``... WF_OWNER``: delete the workflows among ``owners`` (its
    rows) that ended and have no job left."""
    for wf in {row[0] for row in owners if row[0] is not None}:
        row = conn.execute(
            "SELECT on_error_id FROM anywork_workflows WHERE id = ? AND state <> 'running'",
            (wf,),
        ).fetchone()
        if row is None:
            continue
        left = conn.execute(
            "SELECT 1 FROM anywork_jobs WHERE id = ? OR id IN"
            " (SELECT job_id FROM anywork_workflow_steps WHERE workflow_id = ?) LIMIT 1",
            (row[0], wf),
        ).fetchone()
        if left is not None:
            continue
        for table in ("workflow_slots", "workflow_barriers", "workflow_steps"):
            conn.execute(f"DELETE FROM anywork_{table} WHERE workflow_id = ?", (wf,))
        conn.execute("DELETE FROM anywork_workflows WHERE id = ?", (wf,))


def wf_running_steps(conn: sqlite3.Connection, now: float) -> builtins.list[str]:
    """The workflow steps whose lease expired (read before a reap changes them)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT j.id FROM anywork_jobs j JOIN anywork_workflow_steps s ON s.job_id = j.id"
            " WHERE j.state = 'running' AND j.lease_until <= ?",
            (now,),
        )
    ]


def wf_reaped(conn: sqlite3.Connection, ids: builtins.list[str]) -> None:
    """After a reap: the consequences of those of ``ids`` that it ended."""
    for id in ids:
        row = conn.execute(
            "SELECT state, status, error FROM anywork_jobs WHERE id = ?", (id,)
        ).fetchone()
        if row is not None and JobState(row[0]).is_final:
            wf_final(conn, id, JobState(row[0]), int(row[1]), None, row[2])


def _record(row: sqlite3.Row, current: int | None) -> WorkflowRecord:
    from ..workflows._model import WorkflowRecord, WorkflowState

    state = WorkflowState(row["state"])
    return WorkflowRecord(
        id=row["id"],
        kind=row["kind"],
        state=state,
        jobs=tuple(json.loads(row["jobs"])),
        current=row["current"] if state.is_final or current is None else current,
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
        finished_at=(
            datetime.fromtimestamp(row["finished_at"], UTC)
            if row["finished_at"] is not None
            else None
        ),
        name=row["name"],
        on_error=row["on_error_id"],
    )


class SQLiteWorkflows:
    """Workflow methods of :class:`~work.stores.SQLiteStore` (mixed in)."""

    if TYPE_CHECKING:

        async def _run(self, fn: Any) -> Any: ...
        async def _transaction(self, fn: Any) -> Any: ...

        _notifier: Any

    async def add_workflow(self, plan: Plan) -> WorkflowRecord:
        """Store a compiled workflow and add its first steps, in one transaction (see
        :meth:`work.stores.WorkflowStore.add_workflow`)."""
        rec = plan.record
        ids = [*rec.jobs, *([rec.on_error] if rec.on_error else [])]

        def insert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM anywork_workflows WHERE id = ?", (rec.id,)).fetchone():
                raise ValueError(f"a workflow with id {rec.id!r} already exists")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                row = conn.execute(
                    f"SELECT id FROM anywork_jobs WHERE id IN ({', '.join('?' * len(chunk))})"
                    " LIMIT 1",
                    chunk,
                ).fetchone()
                if row is not None:
                    raise ValueError(
                        f"a job with id {row[0]!r} already exists: a step needs a new id"
                    )
            conn.execute(
                "INSERT INTO anywork_workflows (id, kind, state, jobs, n_jobs, created_at, name,"
                " on_error_id, on_error) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.kind,
                    json.dumps(list(rec.jobs)),
                    len(rec.jobs),
                    rec.created_at.timestamp(),
                    rec.name,
                    rec.on_error,
                    json.dumps(plan.on_error) if plan.on_error is not None else None,
                ),
            )
            conn.executemany(
                "INSERT INTO anywork_workflow_steps (job_id, workflow_id, idx, target, slot)"
                " VALUES (?, ?, ?, ?, ?)",
                [(s.job_id, rec.id, s.index, s.target, s.slot) for s in plan.steps],
            )
            conn.executemany(
                "INSERT INTO anywork_workflow_barriers (workflow_id, barrier, remaining, spec)"
                " VALUES (?, ?, ?, ?)",
                [(rec.id, b.index, b.remaining, json.dumps(b.spec())) for b in plan.barriers],
            )
            _add(conn, plan.start, strict=True)

        await self._transaction(insert)
        self._notifier.notify()
        return rec

    async def get_workflow(self, id: str) -> WorkflowRecord | None:
        """Return the workflow's record, or None."""

        def query(conn: sqlite3.Connection) -> WorkflowRecord | None:
            row = conn.execute(
                f"SELECT {_WF_COLUMNS} FROM anywork_workflows WHERE id = ?", (id,)
            ).fetchone()
            if row is None:
                return None
            current = None if row["state"] != "running" else _first_open(conn, id)
            return _record(row, current)

        result: WorkflowRecord | None = await self._run(query)
        return result

    async def cancel_workflow(self, id: str) -> bool:
        """End a RUNNING workflow CANCELLED and cancel its unfinished jobs, in one
        transaction."""

        def update(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT state FROM anywork_workflows WHERE id = ?", (id,)).fetchone()
            if row is None or row[0] != "running":
                return False
            _handle(conn, ("finish", id, "cancelled", None, None, _first_open(conn, id)))
            now = _clock.get().time()
            steps = "SELECT job_id FROM anywork_workflow_steps WHERE workflow_id = ?"
            cancelled = conn.execute(
                "UPDATE anywork_jobs SET state = 'cancelled', status = ?, error = 'cancelled',"
                " finished_at = ?, expires_at = ? + result_ttl, deadline = NULL"
                f" WHERE id IN ({steps}) AND state IN ('queued', 'scheduled', 'waiting')"
                " RETURNING id",
                (int(Status.CANCELLED), now, now, id),
            ).fetchall()
            conn.execute(
                "UPDATE anywork_jobs SET cancel_requested = 1"
                f" WHERE id IN ({steps}) AND state = 'running'",
                (id,),
            )
            for (job_id,) in cancelled:
                wf_final(conn, job_id, JobState.CANCELLED, int(Status.CANCELLED), None, None)
            return True

        return bool(await self._transaction(update))

    async def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[WorkflowRecord]:
        """Return a page of workflow records, oldest first."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if after is not None:
            where.append("seq > (SELECT seq FROM anywork_workflows WHERE id = ?)")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def query(conn: sqlite3.Connection) -> builtins.list[WorkflowRecord]:
            rows = conn.execute(
                f"SELECT {_WF_COLUMNS} FROM anywork_workflows {clause} ORDER BY seq LIMIT ?",
                (*params, max(limit, 0)),
            ).fetchall()
            return [
                _record(r, _first_open(conn, r["id"]) if r["state"] == "running" else None)
                for r in rows
            ]

        result: builtins.list[WorkflowRecord] = await self._run(query)
        return result
