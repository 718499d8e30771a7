"""``PostgresStore``: jobs in a PostgreSQL table, claimed with SKIP LOCKED, woken by NOTIFY."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

import anyio

# asyncpg ships no type information (no py.typed, no stubs): it is typed as Any here.
import asyncpg  # type: ignore[import-untyped]

from .._core.exceptions import JobStateError
from .._durable.events import (
    DEFAULT_EVENT_BUFFER,
    EventHub,
    EventStream,
    JobEventKind,
    check_event_filters,
    event_from_values,
)
from ._activity import first_minute, minute_series
from ._args import check_args_filter, postgres_args_where
from ._base import (
    DEFAULT_LOST_LIMIT,
    UNFINISHED_STATES,
    Claimed,
    Fired,
    JobRecord,
    JobState,
    Outcome,
    Plan,
    ScheduleRow,
    WorkerInfo,
    conflict_record,
)
from ._open import mask_url
from ._postgres_insert import INSERT_COLUMNS, insert_literal, migration_v8
from ._postgres_poll import (
    DEFAULT_POLL_INTERVAL,
    EventLogPoller,
    PostgresPoolerError,
    check_pooler,
    migration_v7,
    split_url,
)
from ._postgres_rows import (
    claimed_row,
    decode_row,
    dumps,
    insert_object,
    insert_values,
    loads_all,
    stored_record,
    utc,
)
from ._postgres_sync import SyncConnections, SyncFallback, SyncRunner
from ._postgres_workflows import (
    PostgresWorkflows,
    workflow_schema,
    workflow_trigger,
    workflow_triggers,
)
from ._server import StoreAuthenticationError, StoreUnavailableError, require_asyncio

__all__ = ["PostgresPoolerError", "PostgresStore", "PostgresUnavailableError"]

SCHEMA_VERSION = 8
"""The schema version this module creates and expects."""

_WORKER_LOST = "worker lost"
# The outcomes whose result complete() stores (a Deferred's provisional one for WAITING).
_RESULT_STATES = frozenset({JobState.SUCCEEDED, JobState.WAITING})
_PURGE_BATCH = 1000  # rows per purge statement
_ACTIVE = "('queued', 'scheduled', 'running', 'waiting')"
_FINISHED = "('succeeded', 'failed', 'cancelled')"
# Connection failures asyncpg reports as builtin errors (TimeoutError is an OSError too).
_CONNECT_ERRORS = (OSError, asyncpg.exceptions.CannotConnectNowError)
# What a call raises when the server went away (a restart, a failover, the network), as
# opposed to a statement that failed: each becomes a PostgresUnavailableError.
_LOST_ERRORS = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)
# A connection for events stays this long after its last subscriber left.
_EVENTS_LINGER = 1.0
# When the listening connection is gone, waiters fall back to polling this often.
_FALLBACK_POLL = 1.0


class _QuietPoolFloor(logging.Filter):
    """Drops asyncpg's "Failed to restore the pool connection floor; retrying" warnings: one
    traceback per retry while the server is down. ``Worker.serve`` reports the outage itself,
    in one line, and one more when the server is back."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to restore the pool connection floor")


logging.getLogger("asyncpg.pool").addFilter(_QuietPoolFloor())


class PostgresUnavailableError(StoreUnavailableError):
    """Raised when the PostgreSQL server cannot be reached (refused, unresolvable, timed out).

    Attributes:
        host: the host the store tried.
        port: the port the store tried.
    """

    server = "PostgreSQL"


def _now() -> datetime:
    return datetime.now(UTC)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _address(url: str) -> tuple[str, int | str]:
    """Return the (first) host and port a URL names, for error messages."""
    hostinfo = urlsplit(url).netloc.rpartition("@")[2].split(",")[0]
    host, port = hostinfo, "5432"
    if hostinfo.startswith("["):  # an IPv6 literal: [::1]:5432
        end = hostinfo.find("]")
        host, port = hostinfo[1:end], hostinfo[end + 2 :] or "5432"
    elif ":" in hostinfo:
        host, port = hostinfo.rsplit(":", 1)
    host = unquote(host) or "localhost"
    return host, int(port) if port.isdigit() else port


def _require_asyncio() -> None:
    require_asyncio("the PostgreSQL store", "asyncpg is asyncio-only")


def _migration_v1(s: str, channel: str) -> list[str]:
    """The statements that create schema version 1 in schema ``s`` (quoted)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {s}.jobs (
            seq              bigint GENERATED ALWAYS AS IDENTITY,
            id               text PRIMARY KEY,
            handler          text NOT NULL,
            queue            text NOT NULL,
            args             text NOT NULL DEFAULT '{{}}',
            headers          jsonb NOT NULL DEFAULT '{{}}',
            priority         integer NOT NULL DEFAULT 0,
            state            text NOT NULL,
            status           integer NOT NULL DEFAULT -1,
            attempts         integer NOT NULL DEFAULT 0,
            max_attempts     integer NOT NULL DEFAULT 1,
            result           jsonb,
            error            text,
            unique_key       text,
            enqueued_at      timestamptz NOT NULL,
            scheduled_for    timestamptz,
            started_at       timestamptz,
            finished_at      timestamptz,
            timeout          double precision,
            retry            jsonb,
            deferrals        integer NOT NULL DEFAULT 0,
            owner            text,
            lease_until      timestamptz,
            cancel_requested boolean NOT NULL DEFAULT false
        )""",
        f"CREATE UNIQUE INDEX IF NOT EXISTS jobs_seq ON {s}.jobs (seq)",
        # At most one job per (queue, unique_key) that is not final: add() relies on it.
        f"""CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_active ON {s}.jobs (queue, unique_key)
            WHERE unique_key IS NOT NULL AND state IN {_ACTIVE}""",
        # The claim order, per queue, over the jobs that can become ready.
        f"""CREATE INDEX IF NOT EXISTS jobs_ready ON {s}.jobs
            (queue, priority DESC, (COALESCE(scheduled_for, enqueued_at)), seq)
            WHERE state IN ('queued', 'scheduled')""",
        f"""CREATE INDEX IF NOT EXISTS jobs_due ON {s}.jobs (queue, scheduled_for)
            WHERE state = 'scheduled'""",
        f"CREATE INDEX IF NOT EXISTS jobs_lease ON {s}.jobs (lease_until) WHERE state = 'running'",
        # NOTIFY whenever a job becomes claimable again (a hand-back, a retry, a reaped
        # lease), whoever wrote it: the payload is the queue. add() notifies in its own
        # statement. Notifications are sent at commit and collapse within a transaction.
        f"""CREATE OR REPLACE FUNCTION {s}.notify_work() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM pg_notify({_quote_literal(channel)}, NEW.queue);
                RETURN NULL;
            END
            $fn$""",
        f"""CREATE TRIGGER jobs_notify_update AFTER UPDATE OF state ON {s}.jobs
            FOR EACH ROW WHEN (NEW.state IN ('queued', 'scheduled')
                               AND OLD.state IS DISTINCT FROM NEW.state)
            EXECUTE FUNCTION {s}.notify_work()""",
    ]


def _migration_v2(s: str) -> list[str]:
    """The statements that take schema ``s`` (quoted) from version 1 to 2."""
    return [
        # How many times the job's worker was lost (reap fails it at the lost limit), and
        # when a worker first handed it back for lack of its handler.
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS lost integer NOT NULL DEFAULT 0",
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS unknown_since timestamptz",
        # Retention: a job's own result_ttl, and when a finished job that has one may go.
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS result_ttl double precision",
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS expires_at timestamptz",
        f"""CREATE INDEX IF NOT EXISTS jobs_expires ON {s}.jobs (expires_at)
            WHERE expires_at IS NOT NULL""",
        # The oldest finished jobs first, for purges.
        f"""CREATE INDEX IF NOT EXISTS jobs_finished ON {s}.jobs (finished_at)
            WHERE state IN ('succeeded', 'failed', 'cancelled')""",
    ]


def _migration_v3(s: str, channel: str) -> list[str]:
    """Schema version 3: job events by NOTIFY (a trigger: no other statement changes) and
    the progress column."""
    kind_on_insert = """CASE NEW.state WHEN 'running' THEN 'started'
        WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled' ELSE 'enqueued' END"""
    # work._durable.events.kind_for_change, in SQL.
    kind_on_change = """CASE NEW.state WHEN 'running' THEN 'started'
        WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled' WHEN 'waiting' THEN 'waiting'
        WHEN 'scheduled' THEN CASE WHEN OLD.state = 'running' THEN 'retrying'
                                   ELSE 'enqueued' END
        ELSE CASE WHEN OLD.state = 'running' AND NEW.attempts >= OLD.attempts
                  THEN 'retrying' ELSE 'enqueued' END END"""
    return [
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS progress jsonb",
        f"""CREATE OR REPLACE FUNCTION {s}.notify_event() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            DECLARE
                kind text;
                payload text;
                at double precision := extract(epoch FROM clock_timestamp());
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    kind := {kind_on_insert};
                ELSIF OLD.state IS DISTINCT FROM NEW.state THEN
                    kind := {kind_on_change};
                ELSE
                    kind := 'progress';
                END IF;
                payload := json_build_array(kind, NEW.id, NEW.queue, NEW.handler, NEW.status,
                    NEW.attempts, at, CASE WHEN kind = 'progress' THEN NEW.progress END)::text;
                -- A NOTIFY payload must stay under 8000 bytes: a huge id or handler name
                -- becomes a LOST event rather than a failed transaction.
                IF octet_length(payload) >= 8000 THEN
                    payload := json_build_array('lost')::text;
                END IF;
                PERFORM pg_notify({_quote_literal(channel)}, payload);
                RETURN NULL;
            END
            $fn$""",
        f"""CREATE TRIGGER jobs_event_insert AFTER INSERT ON {s}.jobs
            FOR EACH ROW EXECUTE FUNCTION {s}.notify_event()""",
        f"""CREATE TRIGGER jobs_event_state AFTER UPDATE OF state ON {s}.jobs
            FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
            EXECUTE FUNCTION {s}.notify_event()""",
        f"""CREATE TRIGGER jobs_event_progress AFTER UPDATE OF progress ON {s}.jobs
            FOR EACH ROW WHEN (NEW.progress IS NOT NULL AND OLD.state = NEW.state)
            EXECUTE FUNCTION {s}.notify_event()""",
    ]


def _migration_v4(s: str) -> list[str]:
    """Deferred completion: WAITING jobs' deadline and ttl, a WAITING job keeps its unique
    key, and store-wide settings (the callback secret)."""
    return [
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS deadline timestamptz",
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS deferred_ttl double precision",
        f"CREATE INDEX IF NOT EXISTS jobs_deadline ON {s}.jobs (deadline) WHERE state = 'waiting'",
        f"DROP INDEX IF EXISTS {s}.jobs_unique_active",
        f"""CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_active ON {s}.jobs (queue, unique_key)
            WHERE unique_key IS NOT NULL AND state IN {_ACTIVE}""",
        f"""CREATE TABLE IF NOT EXISTS {s}.settings (
            key text PRIMARY KEY, value text NOT NULL)""",
    ]


def _migration_v6(s: str) -> list[str]:
    """Schema version 6: indexes that page a million finished jobs by state, queue, handler
    and args, and counts of finished jobs by queue and state kept by triggers, so that stats
    never scan the history.

    Triggers append each change to ``count_deltas`` when a job enters or leaves a finished
    state (inserts only: concurrent writers never wait on one another's counter rows);
    :meth:`PostgresStore.stats` adds them to ``counts`` and folds them in, one folder at a
    time, and counts the unfinished jobs (few) from the ``jobs_queue_active`` index.
    """
    delta = f"INSERT INTO {s}.count_deltas (queue, state, n)"
    return [
        # args is JSON text; a foreign writer may leave text that is not JSON, which must not
        # break writes: such args index as NULL and match no filter.
        f"""CREATE OR REPLACE FUNCTION {s}.jobs_args(a text) RETURNS jsonb
            LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
            BEGIN RETURN a::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$""",
        f"""CREATE INDEX IF NOT EXISTS jobs_args ON {s}.jobs
            USING gin ({s}.jobs_args(args) jsonb_path_ops)""",
        f"CREATE INDEX IF NOT EXISTS jobs_state_seq ON {s}.jobs (state, seq)",
        f"CREATE INDEX IF NOT EXISTS jobs_queue_seq ON {s}.jobs (queue, seq)",
        f"CREATE INDEX IF NOT EXISTS jobs_handler_seq ON {s}.jobs (handler, seq)",
        # A queue's unfinished jobs in one state, oldest first, without walking its history.
        f"""CREATE INDEX IF NOT EXISTS jobs_queue_active ON {s}.jobs (queue, state, seq)
            WHERE state IN {_ACTIVE}""",
        f"""CREATE INDEX IF NOT EXISTS jobs_finished_minute ON {s}.jobs (finished_at, queue, state)
            WHERE state IN ('succeeded', 'failed')""",
        f"""CREATE TABLE IF NOT EXISTS {s}.counts (
            queue text NOT NULL, state text NOT NULL, n bigint NOT NULL,
            PRIMARY KEY (queue, state))""",
        f"""CREATE TABLE IF NOT EXISTS {s}.count_deltas (
            queue text NOT NULL, state text NOT NULL, n bigint NOT NULL)""",
        # Finished jobs only: unfinished ones are few and counted from jobs_queue_active.
        # A row trigger whose WHEN (checked without calling any function) passes only when a
        # job enters or leaves a finished state, so claims, renewals and progress pay nothing.
        f"""CREATE OR REPLACE FUNCTION {s}.jobs_count_row() RETURNS trigger
            LANGUAGE plpgsql AS $$ BEGIN
            IF TG_OP = 'UPDATE' AND OLD.state IN {_FINISHED} THEN
                {delta} VALUES (OLD.queue, OLD.state, -1);
            END IF;
            IF NEW.state IN {_FINISHED} THEN {delta} VALUES (NEW.queue, NEW.state, 1); END IF;
            RETURN NULL; END $$""",
        # Deletes are purges and expiries, many rows at once: one statement-level insert.
        f"""CREATE OR REPLACE FUNCTION {s}.jobs_count_delete() RETURNS trigger
            LANGUAGE plpgsql AS $$ BEGIN
            {delta} SELECT queue, state, -count(*) FROM old_rows
                WHERE state IN {_FINISHED} GROUP BY queue, state;
            RETURN NULL; END $$""",
        f"DROP TRIGGER IF EXISTS jobs_count_insert ON {s}.jobs",
        f"""CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs FOR EACH ROW
            WHEN (NEW.state IN {_FINISHED}) EXECUTE FUNCTION {s}.jobs_count_row()""",
        f"DROP TRIGGER IF EXISTS jobs_count_update ON {s}.jobs",
        f"""CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, queue ON {s}.jobs
            FOR EACH ROW WHEN ((OLD.state IS DISTINCT FROM NEW.state
                OR OLD.queue IS DISTINCT FROM NEW.queue)
                AND (OLD.state IN {_FINISHED} OR NEW.state IN {_FINISHED}))
            EXECUTE FUNCTION {s}.jobs_count_row()""",
        f"DROP TRIGGER IF EXISTS jobs_count_delete ON {s}.jobs",
        f"""CREATE TRIGGER jobs_count_delete AFTER DELETE ON {s}.jobs
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_count_delete()""",
        *recount(s),
    ]


def recount(s: str) -> list[str]:
    """Statements that rebuild schema ``s``'s ``counts`` from its jobs (the version 6
    migration; and after jobs were written with the triggers disabled, as bulk loads do)."""
    return [
        f"DELETE FROM {s}.counts",
        f"DELETE FROM {s}.count_deltas",
        f"""INSERT INTO {s}.counts (queue, state, n)
            SELECT queue, state, count(*) FROM {s}.jobs WHERE state IN {_FINISHED}
            GROUP BY queue, state""",
    ]


def _migration_v5(s: str) -> list[str]:
    """Schema version 5: schedules, and the schedule each job is an execution of."""
    return [
        f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS schedule_id text",
        f"""CREATE INDEX IF NOT EXISTS jobs_schedule ON {s}.jobs (schedule_id, seq)
            WHERE schedule_id IS NOT NULL""",
        f"""CREATE TABLE IF NOT EXISTS {s}.schedules (
            id            text COLLATE "C" PRIMARY KEY,
            spec          jsonb NOT NULL,
            enabled       boolean NOT NULL,
            next_fire_at  timestamptz,
            anchor        timestamptz NOT NULL,
            last_fire_at  timestamptz,
            created_at    timestamptz NOT NULL,
            updated_at    timestamptz NOT NULL,
            version       bigint NOT NULL
        )""",
        f"""CREATE INDEX IF NOT EXISTS schedules_due ON {s}.schedules (next_fire_at)
            WHERE enabled AND next_fire_at IS NOT NULL""",
    ]


_UNFINISHED = "(" + ", ".join(f"'{state}'" for state in UNFINISHED_STATES) + ")"


def _schedule_row(row: Any) -> ScheduleRow:
    spec = row["spec"]
    return ScheduleRow(
        id=row["id"],
        spec=json.loads(spec) if isinstance(spec, str) else dict(spec),
        enabled=row["enabled"],
        next_fire_at=row["next_fire_at"],
        anchor=row["anchor"],
        last_fire_at=row["last_fire_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


class _Runner:
    """Runs statements on one connection held from the pool while it is free, and on the pool
    otherwise: a producer or a serve loop calling one statement at a time skips the pool's
    acquire and release (about a sixth of a small statement's cost)."""

    __slots__ = ("_address", "_busy", "_held", "_pool")

    def __init__(self, pool: Any, *, hold: bool, address: tuple[str, int | str]) -> None:
        self._pool = pool
        self._held: Any = None
        # With a pool of one, holding its connection would leave none for the others.
        self._busy = not hold
        self._address = address

    async def _call(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        if self._busy:
            try:
                return await getattr(self._pool, method)(sql, *args)
            except _LOST_ERRORS as exc:
                raise PostgresUnavailableError(*self._address, exc) from exc
        self._busy = True  # no await since the check: this task has the held connection
        try:
            if self._held is not None and _unusable(self._held):
                await self._drop_held()  # the server closed it while it sat idle
            if self._held is None:
                try:
                    self._held = await self._pool.acquire()
                except _LOST_ERRORS as exc:
                    raise PostgresUnavailableError(*self._address, exc) from exc
            conn = self._held
            try:
                return await getattr(conn, method)(sql, *args)
            except BaseException as exc:
                # The pool may have released a connection the server closed: is_closed() then
                # raises InterfaceError, which must not hide what happened (_unusable).
                gone = _unusable(conn)
                if isinstance(exc, asyncpg.PostgresError) and not gone:
                    raise  # the statement failed; the connection is fine
                # Cancelled or broken mid-statement: the pool knows how to clean that up.
                await self._drop_held()
                if isinstance(exc, Exception) and (gone or isinstance(exc, _LOST_ERRORS)):
                    # One clear error for a lost server, not asyncpg's InterfaceError or
                    # InternalClientError about the state of a dead connection.
                    raise PostgresUnavailableError(*self._address, exc) from exc
                raise
        finally:
            self._busy = False

    async def fetch(self, sql: str, *args: Any) -> Any:
        """``Connection.fetch`` on the held connection or the pool."""
        return await self._call("fetch", sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """``Connection.fetchrow`` on the held connection or the pool."""
        return await self._call("fetchrow", sql, args)

    async def execute(self, sql: str, *args: Any) -> Any:
        """``Connection.execute`` on the held connection or the pool."""
        return await self._call("execute", sql, args)

    async def _drop_held(self) -> None:
        conn, self._held = self._held, None
        if conn is not None:
            # The pool resets, or replaces, a connection given back in any state.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def close(self) -> None:
        """Give the held connection back to the pool."""
        await self._drop_held()


def _unusable(conn: Any) -> bool:
    """True for a pooled connection the server closed (asyncpg may have released it)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


@dataclass(eq=False, slots=True)
class _Waiter:
    queues: frozenset[str]
    event: anyio.Event = field(default_factory=anyio.Event)


class PostgresStore(PostgresWorkflows):
    """A durable store in PostgreSQL, for many workers on many machines.

    Jobs live in one table, ``{schema}.jobs``. Claims take a batch in one statement with
    ``FOR UPDATE SKIP LOCKED``, so concurrent workers never block on nor share a job.
    Triggers send ``NOTIFY`` when jobs are inserted (one row trigger: work and the event)
    and whenever a job becomes claimable again (hand-back, retry, reaped lease); a listening
    connection, opened on the first
    :meth:`wait_for_work`, wakes waiters at once. ``add``, ``renew`` and ``complete`` take
    whole batches in one statement each. :meth:`add_blocking` adds from a thread with no
    event loop over a psycopg 3 connection (``SyncQueue``).

    asyncpg is asyncio-only, so this store runs only on anyio's asyncio backend: entering it
    under trio raises ``RuntimeError`` (detected by asking asyncio for a running event loop).

    Times (leases, due times) are read from this process's clock, as are the times the
    producer writes, so keep the clocks of the machines involved in sync (NTP).

    Args:
        url: ``postgresql://user:password@host:port/database`` (``postgres://`` too; query
            parameters such as ``sslmode`` go to asyncpg).
        schema: the PostgreSQL schema holding the tables (created if missing); stores with
            different schemas in one database are independent.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        listen: wake waiting workers and event subscribers by ``LISTEN``/``NOTIFY`` (the
            default); False polls every ``poll_interval`` instead and keeps no state across
            transactions (asyncpg's statement cache off), for PostgreSQL behind a pooler in
            transaction mode (PgBouncer's ``pool_mode=transaction``). The URL parameter
            ``?listen=false`` does the same; the option wins over it.
        poll_interval: seconds between two looks for work and for events when not listening
            (default 0.5; URL parameter ``?poll_interval=``).
        **connect_options: further keyword arguments for ``asyncpg.create_pool``.

    Raises:
        ValueError: ``min_size`` or ``max_size`` out of range, an empty schema name, a
            ``poll_interval`` that is not positive, or a bad ``listen`` URL parameter.
    """

    #: Concurrent calls run in parallel, each on a connection of its own: ``serve`` claims
    #: the next jobs while the last outcomes are being written.
    parallel_calls = True

    def __init__(
        self,
        url: str,
        *,
        schema: str = "anywork",
        min_size: int = 1,
        max_size: int = 10,
        listen: bool | None = None,
        poll_interval: float | None = None,
        **connect_options: Any,
    ) -> None:
        dsn, url_listen, url_poll = split_url(url)
        self._init_polling(listen, url_listen, poll_interval, url_poll, connect_options)
        if not schema:
            raise ValueError("schema must be a non-empty name")
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        self.url = mask_url(url)
        self.schema = schema
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._options = connect_options
        # No statement outlives its transaction: one query with no parameters saves a trip.
        self._one_trip = connect_options.get("statement_cache_size") == 0
        self._s = _quote_ident(schema)
        # Channel names are identifiers: at most 63 bytes.
        self._channel = f"anywork.{schema}".encode()[:63].decode(errors="ignore")
        self._events_channel = f"anywork_events.{schema}".encode()[:63].decode(errors="ignore")
        self._hub = EventHub()
        self._events_conn: Any = None
        self._events_users = 0
        self._events_lock = anyio.Lock()
        self._events_linger: asyncio.TimerHandle | None = None
        self._events_closers: set[asyncio.Task[None]] = set()
        self._pool: Any = None
        self._workers_ready = False
        self._runner: _Runner | None = None
        self._listener: Any = None
        self._waiters: set[_Waiter] = set()
        self._entries = 0
        self._relisten_lock = anyio.Lock()
        # add_blocking's psycopg connections: None until made, False if they cannot be.
        self._sync: SyncConnections | Literal[False] | None = None
        self._sync_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, schema={self.schema!r})"

    def _init_polling(
        self,
        listen: bool | None,
        url_listen: bool | None,
        poll_interval: float | None,
        url_poll: float | None,
        options: dict[str, Any],
    ) -> None:
        """Settle ``listen`` and ``poll_interval`` (the options win over the URL's)."""
        self._listens = listen if listen is not None else url_listen is not False
        poll = poll_interval if poll_interval is not None else url_poll
        self._poll_interval = DEFAULT_POLL_INTERVAL if poll is None else poll
        if not self._poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {self._poll_interval!r}")
        if not self._listens:
            # No prepared statement may outlive its transaction behind a transaction pooler:
            # asyncpg then describes each statement in a round trip of its own and parses it
            # again in the one that runs it (unnamed statements only).
            options.setdefault("statement_cache_size", 0)
        self._event_poller: EventLogPoller | None = None

    async def _check_pooler(self, first: Any = None) -> None:
        """When listening: fail if the connections go through a transaction pooler (at open,
        on pool connections; in :meth:`exists`, on its own connection ``first``)."""
        if not self._listens:
            return
        async with contextlib.AsyncExitStack() as stack:
            from_pool = first is None
            if from_pool:
                first = await stack.enter_async_context(self._pool.acquire())
            if from_pool and self._max_size >= 2:
                second = await stack.enter_async_context(self._pool.acquire())
            else:  # a pool of one has no second connection; exists() has no pool
                try:
                    second = await asyncpg.connect(self._dsn, **_connect_only(self._options))
                except _CONNECT_ERRORS as exc:
                    raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
                stack.push_async_callback(second.close)
            await check_pooler(first, second, _address(self._dsn))

    async def _poll_events(self) -> None:
        """Start reading the event log (the first subscriber of a store that does not LISTEN)."""
        if self._event_poller is None:
            poller = EventLogPoller(self._pool, self._s, self._hub, self._poll_interval)
            try:
                await poller.start()
            except _LOST_ERRORS as exc:
                raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
            self._event_poller = poller

    async def _stop_polling_events(self) -> None:
        poller, self._event_poller = self._event_poller, None
        if poller is not None:
            await poller.stop()

    # -- life -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Connect a pool, create or migrate the schema. The listening connection opens on
        the first :meth:`wait_for_work`, so processes that only enqueue never hold one.

        Entering an open store again only counts the entry: it closes on the outermost exit.

        Raises:
            RuntimeError: not running on asyncio (asyncpg is asyncio-only).
            PostgresUnavailableError: the server cannot be reached.
            StoreAuthenticationError: the server refused the password or user.
            PostgresPoolerError: ``listen`` is on, but the connections go through a pooler in
                transaction mode (add ``?listen=false``).
        """
        _require_asyncio()
        if self._pool is not None:
            self._entries += 1
            return self
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                **{"reset": _keep_session, **self._options},
            )
        except _CONNECT_ERRORS as exc:
            raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            # A wrong password or an unknown user: waiting will not heal it.
            raise StoreAuthenticationError("PostgreSQL", *_address(self._dsn), exc) from exc
        self._runner = _Runner(self._pool, hold=self._max_size >= 2, address=_address(self._dsn))
        try:
            await self._check_pooler()
            await self._migrate()
        except BaseException:
            await self._close()
            raise
        self._entries = 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pool and the listening connection (on the outermost exit)."""
        self._entries -= 1
        if self._entries <= 0:
            self._entries = 0
            await self._close()

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stop_polling_events()
        if self._events_linger is not None:
            self._events_linger.cancel()
            self._events_linger = None
        for closer in list(self._events_closers):
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await closer
        events_conn, self._events_conn = self._events_conn, None
        if events_conn is not None:
            events_conn.terminate()
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        runner, self._runner = self._runner, None
        with self._sync_lock:  # after the runner: add_blocking makes no connections now
            sync, self._sync = self._sync, None
        if isinstance(sync, SyncConnections):
            sync.close()
        for waiter in self._waiters:
            waiter.event.set()
        with anyio.CancelScope(shield=True):
            if runner is not None:
                await runner.close()
            if listener is not None:
                try:
                    await listener.close(timeout=5)
                except (OSError, asyncpg.PostgresError):
                    listener.terminate()
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 10)
                except (OSError, asyncpg.PostgresError):
                    pool.terminate()

    def _require_pool(self) -> _Runner:
        if self._runner is None:
            raise RuntimeError(f"{self!r} is not open: use `async with store:`")
        return self._runner

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # One migrator at a time per schema, across processes; released at commit.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"anywork:{self.schema}"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._s}.schema_version (version integer NOT NULL)"
            )
            version = await conn.fetchval(
                f"SELECT coalesce(max(version), 0) FROM {self._s}.schema_version"
            )
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"schema {self.schema!r} is at version {version}, newer than this anywork "
                    f"knows ({SCHEMA_VERSION}); upgrade anywork"
                )
            if version < 1:
                for statement in _migration_v1(self._s, self._channel):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (1)")
            if version < 2:
                for statement in _migration_v2(self._s):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (2)")
            if version < 3:
                for statement in _migration_v3(self._s, self._events_channel):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (3)")
            if version < 4:
                for statement in _migration_v4(self._s):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (4)")
            if version < 5:
                for statement in _migration_v5(self._s):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (5)")
            if version < 6:
                # One round trip: a new schema (every test's) pays the DDL, not 20 waits.
                await conn.execute(";\n".join(_migration_v6(self._s)))
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (6)")
            if version < 7:
                for statement in migration_v7(self._s):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (7)")
            if version < 8:
                work, events = _quote_literal(self._channel), _quote_literal(self._events_channel)
                for statement in migration_v8(self._s, work, events):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {self._s}.schema_version VALUES (8)")
            # Workflows: tables of their own and a trigger, created if missing.
            for statement in workflow_schema(self._s, _quote_literal(self._channel)):
                await conn.execute(statement)
            if not await conn.fetchval(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'jobs_workflow_step'"
                " AND tgrelid = $1::regclass",
                f"{self._s}.jobs",
            ):
                await conn.execute(workflow_trigger(self._s))
            for name, statement in workflow_triggers(self._s).items():
                if not await conn.fetchval(
                    "SELECT 1 FROM pg_trigger WHERE tgname = $1 AND tgrelid = $2::regclass",
                    name,
                    f"{self._s}.jobs",
                ):
                    await conn.execute(statement)

    async def _listen(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, **_connect_only(self._options))
        except _CONNECT_ERRORS as exc:
            raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
        try:
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_listener_lost(self, conn: Any) -> None:
        # Notifications may have been missed: wake every waiter, whose next wait relistens.
        for waiter in self._waiters:
            waiter.event.set()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        for waiter in self._waiters:
            if payload in waiter.queues:
                waiter.event.set()

    # -- events -------------------------------------------------------------------------

    async def set_progress(self, owner: str, progress: Mapping[str, dict[str, Any]]) -> None:
        """Set the progress of jobs RUNNING under ``owner``'s lease, in one statement; a
        trigger sends a PROGRESS event for each."""
        if not progress:
            return
        await self._require_pool().execute(
            f"""UPDATE {self._s}.jobs AS j SET progress = p.progress::jsonb
                FROM unnest($2::text[], $3::text[]) AS p(id, progress)
                WHERE j.id = p.id AND j.state = 'running' AND j.owner = $1""",
            owner,
            list(progress),
            [dumps(value) for value in progress.values()],
        )

    # -- worker registry ------------------------------------------------------------------

    async def _workers_table(self) -> _Runner:
        # Created on first use, not by the migration: additive, independent of the jobs'
        # schema version. Concurrent creators may race on the catalog: that is harmless.
        pool = self._require_pool()
        if not self._workers_ready:
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
                await pool.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._s}.workers "
                    f"(id text PRIMARY KEY, data text NOT NULL)"
                )
            self._workers_ready = True
        return pool

    async def record_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a serving worker's registry entry."""
        pool = await self._workers_table()
        await pool.execute(
            f"INSERT INTO {self._s}.workers (id, data) VALUES ($1, $2) "
            f"ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
            info.id,
            info.to_json(),
        )

    async def workers(self) -> builtins.list[WorkerInfo]:
        """Return every registered worker, by ``started_at``."""
        pool = await self._workers_table()
        rows = await pool.fetch(f"SELECT data FROM {self._s}.workers")
        found = [WorkerInfo.from_json(row[0]) for row in rows]
        return sorted(found, key=lambda w: (w.started_at, w.id))

    async def remove_worker(self, id: str) -> None:
        """Delete a worker's registry entry."""
        pool = await self._workers_table()
        await pool.execute(f"DELETE FROM {self._s}.workers WHERE id = $1", id)

    @contextlib.asynccontextmanager
    async def events(
        self,
        *,
        kinds: Iterable[JobEventKind] | None = None,
        queues: Iterable[str] | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> AsyncIterator[EventStream]:
        """Subscribe to job events (see :meth:`work.stores.Store.events`).

        Triggers on the jobs table ``NOTIFY`` every change (at commit, in commit order); one
        connection per store object ``LISTEN``s while anything is subscribed. If that
        connection is lost, subscribers get a LOST event (``lost == 0``), and the next
        subscription connects again.

        Without LISTEN (``listen=False``), triggers write each change to the table
        ``{schema}.event_log`` while a reader is registered, and one task per store object
        reads it every ``poll_interval`` while anything is subscribed: events arrive within
        ``poll_interval`` of their commit.

        Raises:
            PostgresUnavailableError: the server cannot be reached.
        """
        kind_set, queue_set = check_event_filters(kinds, queues)
        self._require_pool()
        stream = self._hub.open(kinds=kind_set, queues=queue_set, buffer=buffer)
        try:
            async with self._events_lock:
                self._events_users += 1
                if self._events_linger is not None:
                    self._events_linger.cancel()
                    self._events_linger = None
                if not self._listens:
                    await self._poll_events()
                elif self._events_conn is None or self._events_conn.is_closed():
                    await self._listen_events()
            yield stream
        finally:
            stream.close()
            with anyio.CancelScope(shield=True):
                async with self._events_lock:
                    self._events_users -= 1
                    if self._events_users == 0 and not self._listens:
                        await self._stop_polling_events()
                    elif self._events_users == 0:
                        self._linger_events()

    async def _listen_events(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, **_connect_only(self._options))
        except _CONNECT_ERRORS as exc:
            raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
        try:
            await conn.add_listener(self._events_channel, self._on_event)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_events_lost)
        self._events_conn = conn

    def _linger_events(self) -> None:
        """The last subscriber left: keep the connection a second for the next one (back to
        back ``Queue.wait`` calls share it), then close it unless someone subscribed."""
        if self._events_linger is not None:
            self._events_linger.cancel()
        loop = asyncio.get_running_loop()
        self._events_linger = loop.call_later(_EVENTS_LINGER, self._events_idle)

    def _events_idle(self) -> None:
        self._events_linger = None
        task = asyncio.get_running_loop().create_task(self._close_idle_events())
        # Kept until done (the store owns it; closing the store closes the connection anyway).
        self._events_closers.add(task)
        task.add_done_callback(self._events_closers.discard)

    async def _close_idle_events(self) -> None:
        async with self._events_lock:
            if self._events_users == 0:
                await self._unlisten_events()

    async def _unlisten_events(self) -> None:
        conn, self._events_conn = self._events_conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_events_lost)
        try:
            await asyncio.wait_for(conn.close(), 5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            conn.terminate()

    def _on_events_lost(self, conn: Any) -> None:
        if conn is self._events_conn:
            self._events_conn = None
        self._hub.lose()

    def _on_event(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            values = json.loads(payload)
            if values[0] == "lost":
                self._hub.lose(1)
                return
            event = event_from_values(*values)
        except (ValueError, TypeError, IndexError):
            self._hub.lose(1)
            return
        self._hub.publish([event])

    async def exists(self) -> bool:
        """True when the database holds this store's schema; creates nothing (for read-only
        commands, which must not leave an empty schema behind).

        Raises:
            PostgresUnavailableError: the server cannot be reached.
            StoreAuthenticationError: the server refused the password or user.
        """
        _require_asyncio()
        if self._pool is not None:
            return True
        try:
            conn = await asyncpg.connect(self._dsn, **_connect_only(self._options))
        except _CONNECT_ERRORS as exc:
            raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise StoreAuthenticationError("PostgreSQL", *_address(self._dsn), exc) from exc
        try:
            await self._check_pooler(conn)
            found = await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{self._s}.schema_version"
            )
        except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError):
            # A statement cache through a transaction pooler: say so, as opening would.
            raise PostgresPoolerError(*_address(self._dsn)) from None
        finally:
            await conn.close()
        return bool(found)

    async def drop(self) -> None:
        """Drop the store's schema and everything in it (for tests and teardown).

        Works whether or not the store is open; an open store is unusable afterwards until it
        is entered again.
        """
        _require_asyncio()
        sql = f"DROP SCHEMA IF EXISTS {self._s} CASCADE"
        if self._pool is not None:
            await self._pool.execute(sql)
            return
        try:
            conn = await asyncpg.connect(self._dsn, **_connect_only(self._options))
        except _CONNECT_ERRORS as exc:
            raise PostgresUnavailableError(*_address(self._dsn), exc) from exc
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # -- reading --------------------------------------------------------------------------

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None."""
        row = await self._require_pool().fetchrow(f"SELECT * FROM {self._s}.jobs WHERE id = $1", id)
        return decode_row(row)[0] if row is not None else None

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}`` for every queue holding jobs.

        Finished jobs are read from the ``counts`` table plus the changes triggers appended
        since (never a scan of the history; the same statement folds those changes into
        ``counts`` when no other caller is folding); unfinished ones are counted from their
        partial index.
        """
        rows = await self._require_pool().fetch(
            f"""WITH fold AS (SELECT pg_try_advisory_xact_lock(hashtext($1)) AS got),
            gone AS (DELETE FROM {self._s}.count_deltas WHERE (SELECT got FROM fold)
                RETURNING queue, state, n),
            kept AS (INSERT INTO {self._s}.counts (queue, state, n)
                SELECT queue, state, sum(n) FROM gone GROUP BY queue, state
                ON CONFLICT (queue, state) DO UPDATE SET n = counts.n + EXCLUDED.n)
            SELECT queue, state, sum(n)::bigint AS n FROM (
                SELECT queue, state, n FROM {self._s}.counts
                UNION ALL SELECT queue, state, n FROM {self._s}.count_deltas
                UNION ALL SELECT queue, state, count(*) FROM {self._s}.jobs
                    WHERE state IN {_ACTIVE} GROUP BY queue, state
            ) c GROUP BY queue, state HAVING sum(n) > 0""",
            f"anywork-counts:{self.schema}",
        )
        out: dict[str, dict[str, int]] = {}
        for row in rows:
            out.setdefault(row["queue"], {})[row["state"]] = row["n"]
        return out

    async def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return the last hour's finished jobs per queue and minute (see
        :meth:`work.stores.Store.finished_per_minute`): one GROUP BY over the partial index
        of finished jobs by ``finished_at`` (schema version 6)."""
        now = datetime.now(UTC)
        rows = await self._require_pool().fetch(
            f"""SELECT queue, floor(extract(epoch FROM finished_at) / 60)::bigint AS minute,
                state, count(*) AS n FROM {self._s}.jobs
            WHERE state IN ('succeeded', 'failed') AND finished_at >= $1
            GROUP BY queue, minute, state""",
            datetime.fromtimestamp(first_minute(now) * 60, UTC),
        )
        return minute_series(
            ((row["queue"], row["minute"], row["state"], row["n"]) for row in rows), now
        )

    # -- producing ------------------------------------------------------------------------

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Insert jobs in one statement; an existing id or an active job with the same unique
        key is returned instead (see :meth:`work.stores.Store.add`).

        The statement returns only the ids it inserted: those jobs come back built from the
        caller's records (args through JSON, as they will be read back); a second round trip
        fetches the existing records, only when some conflicted. A call that repeats an id is
        added in runs of distinct ids, one after another, so that each job meets exactly the
        jobs added before it.
        """
        return await self._add(self._require_pool(), records)

    def add_blocking(self, records: Sequence[JobRecord]) -> builtins.list[JobRecord] | None:
        """:meth:`add` in the calling thread, which has no event loop of the store's
        (``SyncQueue.enqueue``): ``add`` itself, run to its end over a synchronous psycopg 3
        connection (asyncpg has none), so the call needs no portal round trip. The same
        statements (the insert trigger sends the NOTIFYs and logs the events), the same
        answers for a taken id or an active unique key, the same records.

        Each calling thread uses a connection of its own while it adds (see
        :class:`~work.stores._postgres_sync.SyncConnections`); they close with the store.
        With ``listen=False`` (a transaction pooler) they prepare no named statement.

        Returns:
            The stored records, or None when this path cannot add (psycopg is not installed,
            the connect options have no libpq equivalent, the connection cannot be opened
            or a statement failed): the caller then calls :meth:`add` on the store's loop,
            which raises the store's own errors (a job the failed call stored is returned
            as existing there).

        Raises:
            RuntimeError: the store is not open.
        """
        if self._runner is None:
            raise RuntimeError(f"{self!r} is not open: use `async with store:`")
        if not records:
            return []
        sync = self._sync_connections()
        if sync is None:
            return None
        runner = sync.take()
        if runner is None:
            return None
        stored: builtins.list[JobRecord] | None
        try:
            call = self._add(runner, records)
            try:
                call.send(None)  # every runner call completes at once: _add never suspends
            except StopIteration as done:
                stored = done.value
            except SyncFallback:
                stored = None
            else:  # pragma: no cover
                call.close()
                raise RuntimeError("PostgresStore.add suspended in add_blocking")
        except BaseException:
            sync.give_back(runner, broken=True)
            raise
        sync.give_back(runner)
        return stored

    def _sync_connections(self) -> SyncConnections | None:
        """:meth:`add_blocking`'s connections (made once, on first use: psycopg is imported
        there), or None when they cannot be made."""
        if self._sync is None:
            with self._sync_lock:
                if self._runner is None:
                    return None  # closed meanwhile: the caller's add raises that
                if self._sync is None:
                    sync = SyncConnections.make(
                        self._dsn, self._options, prepare=self._listens, keep=self._max_size
                    )
                    self._sync = False if sync is None else sync
        return self._sync or None

    async def _add(
        self, pool: _Runner | SyncRunner, records: Sequence[JobRecord]
    ) -> list[JobRecord]:
        """:meth:`add` on ``pool``: the store's runner, or a psycopg connection's
        (:meth:`add_blocking`)."""
        if not records:
            return []
        if len(records) == 1:
            # The common call, Queue.enqueue: no lists to build when the job goes in.
            rec = records[0]
            args = dumps(rec.args)
            enqueued = utc(rec.enqueued_at) if rec.enqueued_at else _now()
            if await self._insert_one(pool, insert_values(rec, args, enqueued)):
                return [stored_record(rec, json.loads(args), enqueued)]
            # It ran into a job (an idempotent re-add): look that job up.
            found: list[Any] = [None]
            if not await self._resolve_conflicts(pool, records, [0], found):
                return found
            # That job became final meanwhile, freeing its unique key: the general path
            # inserts again.
        if len(records) == 1 or len({rec.id for rec in records}) == len(records):
            return await self._add_distinct(pool, records)
        out: list[JobRecord] = []
        start = 0
        seen: set[str] = set()
        for i, rec in enumerate(records):
            if rec.id in seen:
                out += await self._add_distinct(pool, records[start:i])
                start = i
                seen.clear()
            seen.add(rec.id)
        out += await self._add_distinct(pool, records[start:])
        return out

    async def _add_distinct(
        self, pool: _Runner | SyncRunner, records: Sequence[JobRecord]
    ) -> list[JobRecord]:
        """:meth:`add` for jobs whose ids are all different."""
        now = _now()
        args = [dumps(rec.args) for rec in records]
        enqueued = [utc(rec.enqueued_at) if rec.enqueued_at else now for rec in records]
        out: list[JobRecord | None] = [None] * len(records)
        pending = list(range(len(records)))
        # A conflicting unique key whose job became final in between gives no record: insert
        # again. Bounded, though each retry only happens when such a race was just lost.
        for _ in range(10):
            if len(pending) == 1:
                i = pending[0]
                values = insert_values(records[i], args[i], enqueued[i])
                inserted_one = await self._insert_one(pool, values)
                rows = [{"id": records[i].id}] if inserted_one else []
            else:
                # The batch travels as one JSON document: far cheaper to encode than arrays.
                batch = dumps([insert_object(records[i], args[i], enqueued[i]) for i in pending])
                rows = await pool.fetch(self._insert_sql, batch)
            if len(rows) == len(pending):  # one row per job inserted: all were
                for i, decoded in zip(pending, loads_all([args[i] for i in pending]), strict=True):
                    out[i] = stored_record(records[i], decoded, enqueued[i])
                break
            inserted = {row["id"] for row in rows}
            conflicted: list[int] = []
            for i in pending:
                if records[i].id in inserted:
                    out[i] = stored_record(records[i], json.loads(args[i]), enqueued[i])
                else:
                    conflicted.append(i)
            pending = await self._resolve_conflicts(pool, records, conflicted, out)
            if not pending:
                break
        else:
            raise RuntimeError(f"could not add jobs {[records[i].id for i in pending]!r}")
        return [rec for rec in out if rec is not None]

    async def _insert_one(self, pool: _Runner | SyncRunner, values: tuple[Any, ...]) -> bool:
        """Insert one job (the parameters of ``insert_values``); True if it went in, False
        if it ran into a job (its id, or an active job's unique key).

        With asyncpg's statement cache off (``listen=False``, behind a transaction pooler)
        a statement with parameters takes two round trips (prepare, then run); the job then
        travels as literals in one query with none (:func:`insert_literal`), unless a value
        cannot be written so. psycopg (:meth:`add_blocking`) sends the parameters' types
        with the statement: one round trip with parameters, behind a pooler too."""
        one_trip = self._one_trip and isinstance(pool, _Runner)
        sql = insert_literal(f"{self._s}.jobs", values) if one_trip else None
        if sql is not None:
            status = await pool.execute(sql)
        else:
            status = await pool.execute(self._insert_one_sql, *values)
        # The command status of an INSERT: "INSERT 0 <rows>".
        return bool(status.endswith(" 1"))

    @functools.cached_property
    def _insert_one_sql(self) -> str:
        # Schema version 8's insert trigger sends the NOTIFYs (work and events).
        return f"""INSERT INTO {self._s}.jobs ({INSERT_COLUMNS})
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14,
                    $15, $16, $17, $18, $19::jsonb, $20, $21, $22)
            ON CONFLICT DO NOTHING"""

    @functools.cached_property
    def _insert_sql(self) -> str:
        # Keys left out of a job's object are NULL: COALESCE gives the column defaults.
        return f"""
            INSERT INTO {self._s}.jobs ({INSERT_COLUMNS})
            SELECT u.id, u.handler, u.queue, u.args, COALESCE(u.headers, '{{}}'),
                COALESCE(u.priority, 0), u.state, COALESCE(u.status, -1),
                COALESCE(u.attempts, 0), COALESCE(u.max_attempts, 1), u.result, u.error,
                u.unique_key, u.enqueued_at, u.scheduled_for, u.started_at, u.finished_at,
                u.timeout, u.retry, COALESCE(u.deferrals, 0), u.result_ttl, u.schedule_id
            FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (
                    id text, handler text, queue text, args text, headers jsonb,
                    priority integer, state text, status integer, attempts integer,
                    max_attempts integer, result jsonb, error text, unique_key text,
                    enqueued_at timestamptz, scheduled_for timestamptz, started_at timestamptz,
                    finished_at timestamptz, timeout double precision, retry jsonb,
                    deferrals integer, result_ttl double precision, schedule_id text))
                WITH ORDINALITY AS u(id, handler, queue, args, headers, priority, state,
                    status, attempts, max_attempts, result, error, unique_key, enqueued_at,
                    scheduled_for, started_at, finished_at, timeout, retry, deferrals,
                    result_ttl, schedule_id, ord)
            ORDER BY u.ord
            ON CONFLICT DO NOTHING
            RETURNING id
        """

    async def _resolve_conflicts(
        self, pool: Any, records: Sequence[JobRecord], conflicted: list[int], out: list[Any]
    ) -> list[int]:
        """Fill ``out`` with the existing records the conflicted jobs ran into; return the
        indexes still without one (their unique-key job became final meanwhile)."""
        keyed = [records[i] for i in conflicted if records[i].unique_key is not None]
        rows = await pool.fetch(
            f"""SELECT * FROM {self._s}.jobs WHERE id = ANY($1::text[])
                UNION
                SELECT j.* FROM {self._s}.jobs AS j
                JOIN unnest($2::text[], $3::text[]) AS k(queue, unique_key)
                  ON j.queue = k.queue AND j.unique_key = k.unique_key
                WHERE j.state IN {_ACTIVE}""",
            [records[i].id for i in conflicted],
            [r.queue for r in keyed],
            [r.unique_key for r in keyed],
        )
        by_id: dict[str, JobRecord] = {}
        by_key: dict[tuple[str, str], JobRecord] = {}
        for row in rows:
            rec = decode_row(row)[0]
            by_id[rec.id] = rec
            if rec.unique_key is not None and not rec.state.is_final:
                by_key[rec.queue, rec.unique_key] = rec
        missing: list[int] = []
        for i in conflicted:
            rec = records[i]
            found = by_id.get(rec.id)
            if found is None and rec.unique_key is not None:
                found = by_key.get((rec.queue, rec.unique_key))
            if found is None:
                missing.append(i)
            else:
                out[i] = found
        return missing

    async def cancel(self, id: str) -> bool:
        """Cancel a QUEUED, SCHEDULED or WAITING job at once, or ask a RUNNING one's owner to
        stop.

        Returns False for an unknown or already final job.
        """
        row = await self._require_pool().fetchrow(
            f"""UPDATE {self._s}.jobs SET
                    state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
                    status = CASE WHEN state = 'running' THEN status ELSE 499 END,
                    error = CASE WHEN state = 'running' THEN error ELSE 'cancelled' END,
                    finished_at = CASE WHEN state = 'running' THEN finished_at
                                       ELSE $2::timestamptz END,
                    expires_at = CASE WHEN state = 'running' THEN expires_at
                                      ELSE $2::timestamptz + result_ttl * interval '1 second'
                                 END,
                    cancel_requested = (state = 'running'),
                    deadline = NULL
                WHERE id = $1 AND state IN {_ACTIVE}
                RETURNING id""",
            id,
            _now(),
        )
        return row is not None

    # -- consuming ------------------------------------------------------------------------

    def _claim_sql(
        self, queues: Sequence[str], queue: str, now: str, limit: str, owner: str, until: str
    ) -> str:
        """The claim's ``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) … RETURNING
        j.*`` for ``queues``, its values at the given placeholders (``queue`` takes
        :func:`_queues_value`)."""
        # With one queue, `queue = $n` lets the planner walk jobs_ready in claim order.
        several = len(queues) > 1
        match = f"queue = ANY({queue}::text[])" if several else f"queue = {queue}::text"
        return f"""UPDATE {self._s}.jobs AS j SET
                    state = 'running', attempts = j.attempts + 1, started_at = {now},
                    owner = {owner}, lease_until = {until}, cancel_requested = false,
                    finished_at = NULL
                FROM (
                    SELECT id FROM {self._s}.jobs
                    WHERE {match}
                      AND state IN ('queued', 'scheduled')
                      AND (state = 'queued' OR scheduled_for <= {now})
                    ORDER BY priority DESC, COALESCE(scheduled_for, enqueued_at), seq
                    LIMIT {limit}
                    FOR UPDATE SKIP LOCKED
                ) AS picked
                WHERE j.id = picked.id
                RETURNING j.*"""

    def _complete_sql(self) -> str:
        """The outcomes' ``UPDATE … FROM unnest(…) … RETURNING j.id``: ``$1`` the owner, ``$2``
        the time, ``$3``-``$13`` the outcomes' columns (:func:`_complete_params`)."""
        return f"""UPDATE {self._s}.jobs AS j SET
                    state = o.state,
                    status = o.status,
                    error = o.error,
                    result = CASE WHEN o.state IN ('succeeded', 'waiting') THEN o.result::jsonb
                                  ELSE j.result END,
                    deadline = o.deadline,
                    deferred_ttl = CASE WHEN o.state = 'waiting' THEN o.ttl
                                        ELSE j.deferred_ttl END,
                    scheduled_for = CASE WHEN o.state = 'scheduled'
                                         THEN COALESCE(o.scheduled_for, $2::timestamptz)
                                         ELSE NULL END,
                    finished_at = CASE WHEN o.state IN ('succeeded', 'failed', 'cancelled')
                                       THEN $2::timestamptz ELSE NULL END,
                    expires_at = CASE WHEN o.state IN ('succeeded', 'failed', 'cancelled')
                                      THEN $2::timestamptz + j.result_ttl * interval '1 second'
                                      ELSE NULL END,
                    attempts = CASE WHEN o.give_back THEN greatest(j.attempts - 1, 0)
                                    ELSE j.attempts END,
                    deferrals = j.deferrals + CASE WHEN o.deferral THEN 1 ELSE 0 END,
                    owner = NULL, lease_until = NULL, cancel_requested = false,
                    unknown_since = o.unknown_since
                FROM unnest($3::text[], $4::text[], $5::int[], $6::text[], $7::text[],
                            $8::timestamptz[], $9::bool[], $10::bool[], $11::timestamptz[],
                            $12::timestamptz[], $13::float8[])
                    AS o(id, state, status, result, error, scheduled_for, give_back, deferral,
                         unknown_since, deadline, ttl)
                WHERE j.id = o.id AND j.state = 'running' AND j.owner = $1
                RETURNING j.id"""

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> list[Claimed]:
        """Claim up to ``limit`` ready jobs, best first, in one statement (``UPDATE … FROM
        (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)``); see :meth:`work.stores.Store.claim`.

        A job whose args or headers cannot be decoded is still claimed and comes back with
        ``decode_error`` set.
        """
        pool = self._require_pool()
        if limit <= 0 or not queues:
            return []
        now = _now()
        rows = await pool.fetch(
            self._claim_sql(queues, "$1", "$2", "$3", "$4", "$5"),
            _queues_value(queues),
            now,
            limit,
            owner,
            now + timedelta(seconds=lease),
        )
        # RETURNING does not keep the subquery's order.
        rows = sorted(rows, key=_claim_order)
        return [claimed_row(row) for row in rows]

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        """Extend ``owner``'s leases on ``ids`` in one statement; return those it must stop
        running (a cancel was requested, or the job is no longer its own)."""
        pool = self._require_pool()
        if not ids:
            return set()
        rows = await pool.fetch(
            f"""UPDATE {self._s}.jobs AS j SET lease_until = $3
                FROM unnest($2::text[]) AS u(id)
                WHERE j.id = u.id AND j.state = 'running' AND j.owner = $1
                RETURNING j.id, j.cancel_requested""",
            owner,
            list(ids),
            _now() + timedelta(seconds=lease),
        )
        kept = {row["id"] for row in rows if not row["cancel_requested"]}
        return set(ids) - kept

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        """Apply outcomes, in one statement, to jobs RUNNING under ``owner``'s lease; others
        are left alone (see :meth:`work.stores.Store.complete`). Returns the ids whose
        outcome was applied."""
        pool = self._require_pool()
        if not outcomes:
            return set()
        rows = await pool.fetch(self._complete_sql(), owner, _now(), *_complete_params(outcomes))
        return {row["id"] for row in rows}

    async def complete_and_claim(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
    ) -> tuple[set[str], builtins.list[Claimed]]:
        """:meth:`complete` and :meth:`claim` in one statement (two data-modifying ``WITH``
        queries), so one round trip and one commit: what ``serve`` calls when finished jobs
        free the places it claims for.

        Both commit together or neither does (a failure leaves the outcomes to be written
        again and nothing claimed). Both parts see the database as it was before the
        statement, so a job given back by one of these outcomes is not among the jobs this
        call claims: the next claim finds it. Returns the ids whose outcome was applied, and
        the claimed jobs.
        """
        pool = self._require_pool()
        if not outcomes or limit <= 0 or not queues:
            applied = await self.complete(owner, outcomes)
            return applied, await self.claim(queues, limit=limit, lease=lease, owner=owner)
        now = _now()
        claim = self._claim_sql(queues, "$14", "$2", "$15", "$1", "$16")
        # One row at least (the LEFT JOIN), carrying the applied ids; a claimed job per row.
        rows = await pool.fetch(
            f"""WITH done AS ({self._complete_sql()}), got AS ({claim})
                SELECT (SELECT array_agg(id) FROM done) AS anywork_applied, got.*
                FROM (SELECT 1) AS one LEFT JOIN got ON true""",
            owner,
            now,
            *_complete_params(outcomes),
            _queues_value(queues),
            limit,
            now + timedelta(seconds=lease),
        )
        applied = set(rows[0]["anywork_applied"] or ()) if rows else set()
        got = sorted((row for row in rows if row["id"] is not None), key=_claim_order)
        return applied, [claimed_row(row) for row in got]

    async def settle(self, outcome: Outcome, *, only_expired: bool = False) -> JobRecord | None:
        """Apply ``outcome`` to a WAITING job in one statement (see
        :meth:`work.stores.Store.settle`)."""
        pool = self._require_pool()
        o = outcome
        now = _now()
        expired = " AND deadline <= $2" if only_expired else ""
        row = await pool.fetchrow(
            f"""UPDATE {self._s}.jobs SET
                    state = $3, status = $4, error = $5,
                    result = CASE WHEN $3 = 'succeeded' THEN $6::jsonb ELSE result END,
                    scheduled_for = $7::timestamptz,
                    finished_at = CASE WHEN $3 IN ('succeeded', 'failed', 'cancelled')
                                       THEN $2::timestamptz ELSE NULL END,
                    expires_at = CASE WHEN $3 IN ('succeeded', 'failed', 'cancelled')
                                      THEN $2::timestamptz + result_ttl * interval '1 second'
                                 END,
                    deadline = NULL
                WHERE id = $1 AND state = 'waiting'{expired}
                RETURNING *""",
            o.id,
            now,
            o.state.value,
            int(o.status),
            o.error,
            dumps(o.result) if o.state is JobState.SUCCEEDED else None,
            o.scheduled_for if o.state is JobState.SCHEDULED else None,
        )
        if row is not None:
            return decode_row(row)[0]
        if not only_expired:
            await self._refuse(o.id)
        return None

    async def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Push a WAITING job's deadline (see :meth:`work.stores.Store.heartbeat`)."""
        row = await self._require_pool().fetchrow(
            f"""UPDATE {self._s}.jobs SET deadline =
                    $2::timestamptz + COALESCE($3::float8, deferred_ttl, 0) * interval '1 second'
                WHERE id = $1 AND state = 'waiting'
                RETURNING *""",
            id,
            _now(),
            ttl,
        )
        if row is None:
            await self._refuse(id)
        return decode_row(row)[0]

    async def _refuse(self, id: str) -> None:
        state = await self._require_pool().fetchrow(
            f"SELECT state FROM {self._s}.jobs WHERE id = $1", id
        )
        if state is None:
            raise LookupError(f"no job with id {id!r} in {self.url}")
        raise JobStateError(id, state["state"])

    async def overdue(self, *, limit: int = 100) -> list[JobRecord]:
        """Return up to ``limit`` WAITING jobs whose deadline has passed, earliest first."""
        rows = await self._require_pool().fetch(
            f"""SELECT * FROM {self._s}.jobs WHERE state = 'waiting' AND deadline <= $1
                ORDER BY deadline, seq LIMIT $2""",
            _now(),
            max(limit, 0),
        )
        return [decode_row(row)[0] for row in rows]

    async def setdefault_setting(self, key: str, value: str) -> str:
        """Return the setting ``key``, storing ``value`` first if there is none."""
        pool = self._require_pool()
        # A concurrent first insert, committed after this statement's snapshot, is invisible
        # to its SELECT: the next statement (a new snapshot) sees it.
        for _ in range(3):
            row = await pool.fetchrow(
                f"""WITH inserted AS (
                        INSERT INTO {self._s}.settings (key, value) VALUES ($1, $2)
                        ON CONFLICT DO NOTHING RETURNING value)
                    SELECT value FROM inserted
                    UNION ALL
                    SELECT value FROM {self._s}.settings WHERE key = $1
                    LIMIT 1""",
                key,
                value,
            )
            if row is not None:
                return str(row["value"])
        raise RuntimeError(f"could not read or store the setting {key!r} in {self.url}")

    async def get_setting(self, key: str) -> str | None:
        """Return the setting ``key``, or None."""
        pool = self._require_pool()
        row = await pool.fetchrow(f"SELECT value FROM {self._s}.settings WHERE key = $1", key)
        return None if row is None else str(row["value"])

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` as the setting ``key`` (replacing any)."""
        pool = self._require_pool()
        await pool.execute(
            f"""INSERT INTO {self._s}.settings (key, value) VALUES ($1, $2)
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value""",
            key,
            value,
        )

    async def reap(self, *, lost_limit: int = DEFAULT_LOST_LIMIT) -> int:
        """Put back (or fail after ``lost_limit`` losses, or cancel) RUNNING jobs whose lease
        expired; return how many (see :meth:`work.stores.Store.reap`).

        Safe from many workers at once: each expired job is locked by one reaper
        (``SKIP LOCKED``) and re-checked after the lock.
        """
        rows = await self._require_pool().fetch(
            f"""UPDATE {self._s}.jobs AS j SET
                    state = CASE WHEN j.cancel_requested THEN 'cancelled'
                                 WHEN j.lost + 1 < $2 THEN 'queued'
                                 ELSE 'failed' END,
                    status = CASE WHEN j.cancel_requested THEN 499 ELSE 500 END,
                    error = CASE WHEN j.cancel_requested THEN 'cancelled'
                                 ELSE {_quote_literal(_WORKER_LOST)} END,
                    finished_at = CASE WHEN j.cancel_requested OR j.lost + 1 >= $2
                                       THEN $1::timestamptz ELSE NULL END,
                    scheduled_for = CASE WHEN j.cancel_requested OR j.lost + 1 >= $2
                                         THEN j.scheduled_for ELSE NULL END,
                    expires_at = CASE WHEN j.cancel_requested OR j.lost + 1 >= $2
                                      THEN $1::timestamptz + j.result_ttl * interval '1 second'
                                      ELSE NULL END,
                    lost = j.lost + CASE WHEN j.cancel_requested THEN 0 ELSE 1 END,
                    owner = NULL, lease_until = NULL, cancel_requested = false
                FROM (
                    SELECT id FROM {self._s}.jobs
                    WHERE state = 'running' AND lease_until <= $1
                    FOR UPDATE SKIP LOCKED
                ) AS lost
                WHERE j.id = lost.id AND j.state = 'running' AND j.lease_until <= $1
                RETURNING j.id""",
            _now(),
            lost_limit,
        )
        return len(rows)

    # -- retention ------------------------------------------------------------------------

    async def purge(
        self, *, older_than: datetime, states: Sequence[JobState], limit: int | None = None
    ) -> int:
        """Delete finished jobs in ``states`` that finished before ``older_than``, oldest
        first, in statements of at most 1000 (see :meth:`work.stores.Store.purge`)."""
        pool = self._require_pool()
        wanted = [s.value for s in states if s.is_final]
        if not wanted or (limit is not None and limit <= 0):
            return 0
        total = 0
        while limit is None or total < limit:
            batch = _PURGE_BATCH if limit is None else min(_PURGE_BATCH, limit - total)
            rows = await pool.fetch(
                f"""DELETE FROM {self._s}.jobs WHERE id IN (
                        SELECT id FROM {self._s}.jobs
                        WHERE state IN ('succeeded', 'failed', 'cancelled')
                          AND state = ANY($1::text[]) AND finished_at < $2
                        ORDER BY finished_at LIMIT $3
                        FOR UPDATE SKIP LOCKED)
                    RETURNING 1""",
                wanted,
                older_than,
                batch,
            )
            total += len(rows)
            if len(rows) < batch:
                break
        return total

    async def expire(self, queues: Sequence[str], *, result_ttl: float, limit: int) -> int:
        """Delete up to ``limit`` finished jobs whose time is up, in one statement (see
        :meth:`work.stores.Store.expire`): both searches walk partial indexes of finished
        jobs from the oldest, so they cost what they delete, not what is kept."""
        if limit <= 0:
            return 0
        now = _now()
        rows = await self._require_pool().fetch(
            f"""WITH own AS (
                    SELECT id FROM {self._s}.jobs
                    WHERE expires_at IS NOT NULL AND expires_at <= $1
                    ORDER BY expires_at LIMIT $4 FOR UPDATE SKIP LOCKED
                ), plain AS (
                    SELECT id FROM {self._s}.jobs
                    WHERE state IN ('succeeded', 'failed', 'cancelled')
                      AND finished_at <= $2 AND result_ttl IS NULL
                      AND queue = ANY($3::text[])
                    ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED
                ), picked AS (
                    SELECT id FROM own UNION SELECT id FROM plain LIMIT $4
                )
                DELETE FROM {self._s}.jobs WHERE id IN (SELECT id FROM picked)
                RETURNING 1""",
            now,
            now - timedelta(seconds=result_ttl),
            list(queues),
            limit,
        )
        return len(rows)

    async def retry(self, id: str) -> JobRecord | None:
        """Queue a FAILED or CANCELLED job again, due now (see :meth:`work.stores.Store.retry`).

        Raises:
            ValueError: the job is in another state, or its unique key is taken.
        """
        pool = self._require_pool()
        try:
            row = await pool.fetchrow(
                f"""WITH old AS (SELECT state FROM {self._s}.jobs WHERE id = $1),
                    new AS (
                        UPDATE {self._s}.jobs SET state = 'queued', status = -1, attempts = 0,
                            deferrals = 0, lost = 0, result = NULL, error = NULL,
                            scheduled_for = NULL, started_at = NULL, finished_at = NULL,
                            expires_at = NULL, unknown_since = NULL, enqueued_at = $2
                        WHERE id = $1 AND state IN ('failed', 'cancelled')
                        RETURNING *)
                    SELECT (SELECT state FROM old) AS old_state, new.* FROM old
                    LEFT JOIN new ON true""",
                id,
                _now(),
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(
                f"job {id!r} cannot be retried: another job holding its unique_key in its "
                f"queue is not finished"
            ) from None
        if row is None:
            return None
        if row["id"] is None:
            raise ValueError(
                f"job {id!r} is {row['old_state']}: only a failed or cancelled job can be retried"
            )
        return decode_row(row)[0]

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job in ``queues`` may be ready, or after ``timeout`` seconds.

        Returns at once if a job is ready; otherwise waits for a NOTIFY naming one of
        ``queues`` on the listening connection, but no later than the next SCHEDULED job
        falls due. Without LISTEN (``listen=False``), looks every ``poll_interval`` instead.
        """
        if not self._listens:
            await self._poll_for_work(queues, timeout)
            return
        pool = self._require_pool()
        waiter = _Waiter(frozenset(queues))
        # Registered before looking, so a job added after the look still wakes us.
        self._waiters.add(waiter)
        try:
            if self._listener is None or self._listener.is_closed():
                # Bounded: an unreachable server must not hold the wait past its timeout.
                with anyio.move_on_after(max(timeout, 0.1)):
                    await self._relisten()
            now = _now()
            row = await self._work_at(pool, queues)
            if row["ready"]:
                return
            # asyncpg reads 'infinity' as a naive datetime: such a job is never due.
            if row["next_due"] is not None and row["next_due"].tzinfo is not None:
                # A little after the due time, so the claim that follows finds it ready.
                timeout = min(timeout, (row["next_due"] - now).total_seconds() + 0.001)
            if self._listener is None:
                timeout = min(timeout, _FALLBACK_POLL)
            with anyio.move_on_after(max(timeout, 0.0)):
                await waiter.event.wait()
        finally:
            self._waiters.discard(waiter)

    async def _work_at(self, pool: _Runner, queues: Sequence[str]) -> Any:
        """One look for work in ``queues``: a row with ``ready`` (a QUEUED job exists) and
        ``next_due`` (the earliest SCHEDULED job's due time, or None)."""
        return await pool.fetchrow(
            f"""SELECT
                EXISTS (SELECT 1 FROM {self._s}.jobs
                        WHERE queue = ANY($1::text[]) AND state = 'queued') AS ready,
                (SELECT min(scheduled_for) FROM {self._s}.jobs
                 WHERE queue = ANY($1::text[]) AND state = 'scheduled') AS next_due""",
            list(queues),
        )

    async def _poll_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """:meth:`wait_for_work` without LISTEN: look every ``poll_interval`` until a job is
        ready, the next SCHEDULED one falls due, or ``timeout`` passes."""
        pool = self._require_pool()
        waiter = _Waiter(frozenset(queues))
        self._waiters.add(waiter)  # closing the store wakes it
        try:
            wake = anyio.current_time() + max(timeout, 0.0)
            while True:
                now = _now()
                row = await self._work_at(pool, queues)
                if row["ready"]:
                    return
                due = row["next_due"]
                if due is not None and due.tzinfo is not None:  # not 'infinity'
                    due_in = (due - now).total_seconds() + 0.001
                    wake = min(wake, anyio.current_time() + due_in)
                left = wake - anyio.current_time()
                if left <= 0:
                    return
                with anyio.move_on_after(min(left, self._poll_interval)):
                    await waiter.event.wait()
                if waiter.event.is_set():
                    return
        finally:
            self._waiters.discard(waiter)

    async def _relisten(self) -> None:
        """Reopen a lost listening connection; on failure, waiters poll until it is back."""
        async with self._relisten_lock:
            if self._listener is not None and not self._listener.is_closed():
                return  # another waiter got there first
            old, self._listener = self._listener, None
            if old is not None:
                old.terminate()
            try:
                await self._listen()
            except (PostgresUnavailableError, asyncpg.PostgresError):
                self._listener = None

    # -- schedules ------------------------------------------------------------------------

    async def get_schedule(self, id: str) -> ScheduleRow | None:
        """Return the schedule's row, or None."""
        row = await self._require_pool().fetchrow(
            f"SELECT * FROM {self._s}.schedules WHERE id = $1", id
        )
        return _schedule_row(row) if row is not None else None

    async def list_schedules(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[ScheduleRow]:
        """Return up to ``limit`` schedules ordered by id (byte order: the id column is
        ``COLLATE "C"``); see :meth:`work.stores.Store.list_schedules`."""
        where: list[str] = []
        params: list[Any] = []
        if prefix:
            params.append(prefix)
            where.append(f"left(id, length(${len(params)})) = ${len(params)}")
        if enabled is not None:
            params.append(enabled)
            where.append(f"enabled = ${len(params)}")
        if after is not None:
            params.append(after)
            where.append(f"id > ${len(params)}")
        params.append(max(limit, 0))
        sql = (
            f"SELECT * FROM {self._s}.schedules"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY id LIMIT ${len(params)}"
        )
        return [_schedule_row(row) for row in await self._require_pool().fetch(sql, *params)]

    async def save_schedule(self, row: ScheduleRow, *, expected: int | None) -> bool:
        """Write ``row`` if the stored version is ``expected`` (None: only a new id)."""
        values = (
            row.id,
            dumps(row.spec),
            row.enabled,
            row.next_fire_at,
            row.anchor,
            row.last_fire_at,
            row.created_at,
            row.updated_at,
            row.version,
        )
        pool = self._require_pool()
        if expected is None:
            done = await pool.fetchrow(
                f"""INSERT INTO {self._s}.schedules (id, spec, enabled, next_fire_at, anchor,
                        last_fire_at, created_at, updated_at, version)
                    VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9)
                    ON CONFLICT DO NOTHING RETURNING id""",
                *values,
            )
        else:
            done = await pool.fetchrow(
                f"""UPDATE {self._s}.schedules SET spec = $2::jsonb, enabled = $3,
                        next_fire_at = $4, anchor = $5, last_fire_at = $6, created_at = $7,
                        updated_at = $8, version = $9
                    WHERE id = $1 AND version = $10 RETURNING id""",
                *values,
                expected,
            )
        return done is not None

    async def delete_schedule(self, id: str) -> bool:
        """Delete the schedule (its executions stay); False if it did not exist."""
        done = await self._require_pool().fetchrow(
            f"DELETE FROM {self._s}.schedules WHERE id = $1 RETURNING id", id
        )
        return done is not None

    async def fire_schedules(self, now: datetime, plan: Plan, *, limit: int) -> list[Fired]:
        """Fire due schedules in one transaction: the due rows are locked with ``FOR UPDATE
        SKIP LOCKED`` (concurrent schedulers take different ones), advanced in one statement,
        and their jobs added in one more (see :meth:`work.stores.Store.fire_schedules`)."""
        self._require_pool()
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"""SELECT * FROM {self._s}.schedules
                    WHERE enabled AND next_fire_at IS NOT NULL AND next_fire_at <= $1
                    ORDER BY next_fire_at, id LIMIT $2
                    FOR UPDATE SKIP LOCKED""",
                now,
                limit,
            )
            if not rows:
                return []
            firings = [plan(_schedule_row(row)) for row in rows]
            await conn.execute(
                f"""UPDATE {self._s}.schedules AS s SET next_fire_at = u.next_fire_at,
                        last_fire_at = COALESCE(u.last_fire_at, s.last_fire_at),
                        version = s.version + 1
                    FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[])
                        AS u(id, version, next_fire_at, last_fire_at)
                    WHERE s.id = u.id AND s.version = u.version""",
                [f.schedule_id for f in firings],
                [f.version for f in firings],
                [f.next_fire_at for f in firings],
                [f.last_fire_at for f in firings],
            )
            with_jobs = [f for f in firings if f.job is not None]
            busy: set[str] = set()
            exclusive = [f.schedule_id for f in with_jobs if f.exclusive]
            if exclusive:
                busy = {
                    row["schedule_id"]
                    for row in await conn.fetch(
                        f"""SELECT DISTINCT schedule_id FROM {self._s}.jobs
                            WHERE schedule_id = ANY($1::text[]) AND state IN {_UNFINISHED}""",
                        exclusive,
                    )
                }
            records: dict[str, JobRecord] = {}
            for f in with_jobs:
                assert f.job is not None
                job = f.job
                if f.exclusive and f.schedule_id in busy:
                    job = conflict_record(job, now)
                records[f.schedule_id] = job
            stored = await self._insert_in(conn, list(records.values()), now)
        return [
            Fired(f, stored.get(records[f.schedule_id].id) if f.schedule_id in records else None)
            for f in firings
        ]

    async def _insert_in(
        self, conn: Any, records: Sequence[JobRecord], now: datetime
    ) -> dict[str, JobRecord]:
        """Insert jobs on ``conn`` (in its transaction), skipping taken ids; return the
        records inserted by id."""
        if not records:
            return {}
        args = [dumps(rec.args) for rec in records]
        enqueued = [utc(rec.enqueued_at) if rec.enqueued_at else now for rec in records]
        batch = dumps(
            [insert_object(rec, a, e) for rec, a, e in zip(records, args, enqueued, strict=True)]
        )
        inserted = {row["id"] for row in await conn.fetch(self._insert_sql, batch)}
        return {
            rec.id: stored_record(rec, json.loads(a), e)
            for rec, a, e in zip(records, args, enqueued, strict=True)
            if rec.id in inserted
        }

    async def add_execution(self, record: JobRecord, *, exclusive: bool) -> JobRecord:
        """Add one execution off the schedule's cadence (409 if exclusive and one is
        unfinished), serialised with the schedule's fires by its row lock."""
        self._require_pool()
        now = _now()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"SELECT 1 FROM {self._s}.schedules WHERE id = $1 FOR UPDATE",
                record.schedule_id,
            )
            existing = await conn.fetchrow(f"SELECT * FROM {self._s}.jobs WHERE id = $1", record.id)
            if existing is not None:
                return decode_row(existing)[0]
            if exclusive and await conn.fetchval(
                f"""SELECT EXISTS (SELECT 1 FROM {self._s}.jobs
                    WHERE schedule_id = $1 AND state IN {_UNFINISHED})""",
                record.schedule_id,
            ):
                record = conflict_record(record, now)
            stored = await self._insert_in(conn, [record], now)
        return stored[record.id]

    async def executions(
        self,
        schedule_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobRecord]:
        """Return the schedule's jobs, newest first; ``before`` is the previous page's last
        id."""
        params: list[Any] = [schedule_id]
        where = ["schedule_id = $1"]
        if state is not None:
            params.append(str(state))
            where.append(f"state = ${len(params)}")
        if before is not None:
            params.append(before)
            where.append(f"seq < (SELECT seq FROM {self._s}.jobs WHERE id = ${len(params)})")
        params.append(max(limit, 0))
        sql = (
            f"SELECT * FROM {self._s}.jobs WHERE {' AND '.join(where)}"
            f" ORDER BY seq DESC LIMIT ${len(params)}"
        )
        return [decode_row(row)[0] for row in await self._require_pool().fetch(sql, *params)]

    async def next_schedule_due(self) -> datetime | None:
        """Return the earliest next fire of an enabled schedule, or None."""
        row = await self._require_pool().fetchrow(
            f"""SELECT min(next_fire_at) AS due FROM {self._s}.schedules
                WHERE enabled AND next_fire_at IS NOT NULL"""
        )
        due: datetime | None = row["due"]
        return due

    # -- listing (last: the method named `list` shadows the builtin below it) -------

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> list[JobRecord]:
        """Return up to ``limit`` records matching the filters, in enqueue order.

        ``after`` is the last id of the previous page; an id the store does not know gives an
        empty page. ``args`` is a jsonb containment test served by the GIN index on
        ``jobs_args(args)`` (schema version 6), then an exact equality per key.
        """
        wanted = check_args_filter(args)
        pool = self._require_pool()
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("queue", queue),
            ("handler", handler),
            ("schedule_id", schedule_id),
        ):
            if value is not None:
                params.append(str(value))
                where.append(f"{column} = ${len(params)}")
        if wanted is not None:
            args_sql, args_params = postgres_args_where(self._s, wanted, len(params) + 1)
            where.append(args_sql)
            params += args_params
        if after is not None:
            params.append(after)
            # An unknown id gives NULL, and `seq > NULL` matches nothing: an empty page.
            where.append(f"seq > (SELECT seq FROM {self._s}.jobs WHERE id = ${len(params)})")
        params.append(max(limit, 0))
        sql = (
            f"SELECT * FROM {self._s}.jobs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY seq LIMIT ${len(params)}"
        )
        return [decode_row(row)[0] for row in await pool.fetch(sql, *params)]


def _claim_order(row: Any) -> tuple[int, datetime, int]:
    """A claimed row's place in claim order; asyncpg reads +-infinity as naive datetimes,
    which must not break the sort of the whole batch."""
    due = row["scheduled_for"] or row["enqueued_at"]
    if due is None:
        due = datetime.min
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    return (-row["priority"], due, row["seq"])


def _queues_value(queues: Sequence[str]) -> str | builtins.list[str]:
    """The claim's queue parameter: the name of one queue, a list of several."""
    return queues[0] if len(queues) == 1 else builtins.list(queues)


def _complete_params(outcomes: Sequence[Outcome]) -> tuple[builtins.list[Any], ...]:
    """The outcomes' columns, ``$3``-``$13`` of ``PostgresStore._complete_sql``: one outcome
    per job, the first for an id winning, as if applied in order (the job is no longer
    RUNNING for the ones after it)."""
    first: dict[str, Outcome] = {}
    for o in outcomes:
        first.setdefault(o.id, o)
    latest = builtins.list(first.values())
    waiting = [o.state is JobState.WAITING for o in latest]
    return (
        [o.id for o in latest],
        [o.state.value for o in latest],
        [int(o.status) for o in latest],
        [dumps(o.result) if o.state in _RESULT_STATES else None for o in latest],
        [o.error for o in latest],
        [o.scheduled_for for o in latest],
        [o.give_back_attempt for o in latest],
        [o.deferral for o in latest],
        [o.unknown_since for o in latest],
        [o.deadline if w else None for o, w in zip(latest, waiting, strict=True)],
        [o.ttl if w else None for o, w in zip(latest, waiting, strict=True)],
    )


async def _keep_session(conn: Any) -> None:
    """Skip asyncpg's reset query on release (one round trip per store call saved): pooled
    connections never LISTEN, change settings, open cursors or take session advisory locks.
    asyncpg still rolls back a transaction left open."""


def _connect_only(options: dict[str, Any]) -> dict[str, Any]:
    """The pool options that ``asyncpg.connect`` also accepts."""
    pool_only = {"min_size", "max_size", "max_queries", "max_inactive_connection_lifetime"}
    pool_only |= {"setup", "init", "reset", "connection_class"}
    return {k: v for k, v in options.items() if k not in pool_only}
