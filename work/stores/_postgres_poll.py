"""PostgreSQL behind a transaction pooler: the ``listen`` URL options, the event log, the check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

# asyncpg ships no type information (no py.typed, no stubs): it is typed as Any here.
import asyncpg  # type: ignore[import-untyped]

from .._core.exceptions import WorkError
from .._durable.events import EventHub, event_from_values

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "EventLogPoller",
    "PostgresPoolerError",
    "check_pooler",
    "migration_v7",
    "split_url",
]

DEFAULT_POLL_INTERVAL = 0.5
"""Seconds between two looks for work and for events when the store does not LISTEN."""

# A reader's registration lasts this long past its last heartbeat: while one is registered,
# the triggers write every change to the event log.
_READER_TTL = 30.0
_HEARTBEAT_EVERY = 5.0
# Event log rows older than this are pruned (a reader further behind misses them).
_LOG_RETENTION = 300.0
_PRUNE_EVERY = 10.0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class PostgresPoolerError(WorkError, ValueError):
    """Raised when a store that LISTENs (``listen=True``, the default) is opened through a
    connection pooler in transaction pooling mode (PgBouncer's ``pool_mode=transaction``),
    where LISTEN/NOTIFY and session state do not survive between transactions.

    A configuration error, not an outage: waiting cannot heal it, so a worker exits instead
    of retrying. Open the store with ``?listen=false`` (or ``listen=False``) to poll instead.

    Attributes:
        host: the host the store connected to.
        port: the port the store connected to.
    """

    def __init__(self, host: str, port: int | str) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"PostgreSQL at {host}:{port} is behind a connection pooler in transaction pooling "
            f"mode (two transactions on one connection ran in different server sessions): "
            f"LISTEN/NOTIFY does not work through it. Add ?listen=false to the store URL (or "
            f"pass listen=False) to poll for work and events instead, or connect to PostgreSQL "
            f"directly or through session pooling"
        )


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"the store URL's {name} must be true or false, got {text!r}")


def split_url(url: str) -> tuple[str, bool | None, float | None]:
    """Take the store's own query parameters out of a PostgreSQL URL.

    Args:
        url: ``postgresql://…?listen=false&poll_interval=0.2`` (other parameters stay, for
            asyncpg).

    Returns:
        The URL for asyncpg, ``listen`` (None: not given) and ``poll_interval`` (None: not
        given).

    Raises:
        ValueError: ``listen`` is not a boolean word, or ``poll_interval`` not a number.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url, None, None
    listen: bool | None = None
    poll: float | None = None
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "listen":
            listen = _flag(key, value)
        elif key == "poll_interval":
            try:
                poll = float(value)
            except ValueError:
                raise ValueError(
                    f"the store URL's poll_interval must be a number of seconds, got {value!r}"
                ) from None
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), listen, poll


def migration_v7(s: str) -> list[str]:
    """Schema version 7: the event log, written by triggers while a polling reader is
    registered, for stores that cannot LISTEN (behind a transaction pooler)."""
    # The same kinds as the NOTIFY triggers of version 3 (work._durable.events).
    kind_on_insert = """CASE NEW.state WHEN 'running' THEN 'started'
        WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled' ELSE 'enqueued' END"""
    kind_on_change = """CASE NEW.state WHEN 'running' THEN 'started'
        WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled' WHEN 'waiting' THEN 'waiting'
        WHEN 'scheduled' THEN CASE WHEN OLD.state = 'running' THEN 'retrying'
                                   ELSE 'enqueued' END
        ELSE CASE WHEN OLD.state = 'running' AND NEW.attempts >= OLD.attempts
                  THEN 'retrying' ELSE 'enqueued' END END"""
    return [
        # xact: the writing transaction, so a reader can look again for the rows of one that
        # was still open at its last look (it commits late: its rows have lower ids).
        f"""CREATE TABLE IF NOT EXISTS {s}.event_log (
            id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            xact     xid8 NOT NULL DEFAULT pg_current_xact_id(),
            at       timestamptz NOT NULL DEFAULT now(),
            payload  text NOT NULL
        )""",
        f"CREATE INDEX IF NOT EXISTS event_log_xact ON {s}.event_log (xact)",
        f"""CREATE TABLE IF NOT EXISTS {s}.event_readers (
            id     text PRIMARY KEY,
            until  timestamptz NOT NULL
        )""",
        f"""CREATE OR REPLACE FUNCTION {s}.log_event() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            DECLARE
                kind text;
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM {s}.event_readers WHERE until > now()) THEN
                    RETURN NULL;
                END IF;
                IF TG_OP = 'INSERT' THEN
                    kind := {kind_on_insert};
                ELSIF OLD.state IS DISTINCT FROM NEW.state THEN
                    kind := {kind_on_change};
                ELSE
                    kind := 'progress';
                END IF;
                INSERT INTO {s}.event_log (payload) VALUES (json_build_array(kind, NEW.id,
                    NEW.queue, NEW.handler, NEW.status, NEW.attempts,
                    extract(epoch FROM clock_timestamp()),
                    CASE WHEN kind = 'progress' THEN NEW.progress END)::text);
                RETURN NULL;
            END
            $fn$""",
        f"""CREATE TRIGGER jobs_log_insert AFTER INSERT ON {s}.jobs
            FOR EACH ROW EXECUTE FUNCTION {s}.log_event()""",
        f"""CREATE TRIGGER jobs_log_state AFTER UPDATE OF state ON {s}.jobs
            FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
            EXECUTE FUNCTION {s}.log_event()""",
        f"""CREATE TRIGGER jobs_log_progress AFTER UPDATE OF progress ON {s}.jobs
            FOR EACH ROW WHEN (NEW.progress IS NOT NULL AND OLD.state = NEW.state)
            EXECUTE FUNCTION {s}.log_event()""",
    ]


async def check_pooler(first: Any, second: Any, address: tuple[str, int | str]) -> None:
    """Raise :class:`PostgresPoolerError` if two connections run behind a transaction
    pooler: ``first``'s two transactions, with a transaction of ``second`` open in between,
    ran in different server sessions (or ``second`` took the session ``first`` released).

    Connected directly (or through session pooling) a connection keeps its backend, so the
    check costs three short statements.

    Args:
        first: an asyncpg connection.
        second: another asyncpg connection to the same server.
        address: host and port, for the message.
    """
    try:
        before = await first.fetchval("SELECT pg_backend_pid()")
        async with second.transaction():
            # Held open: a transaction pooler must give `first` another server session now
            # (or gave `second` the one `first` just released).
            other = await second.fetchval("SELECT pg_backend_pid()")
            after = await first.fetchval("SELECT pg_backend_pid()")
    except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError):
        # The statement `first` prepared is gone, or one of that name was left by another
        # client: its server session changed under it.
        raise PostgresPoolerError(*address) from None
    if after != before or other == before:
        raise PostgresPoolerError(*address)


class EventLogPoller:
    """Reads the event log every ``interval`` seconds and publishes what it finds to a hub:
    the events API of a store that cannot LISTEN.

    While it runs, a row in ``event_readers`` (renewed every few seconds) makes the triggers
    log each change; each look takes, in log order, the rows that became visible since the
    last (see :meth:`poll`), so a transaction that commits late is never skipped. Events
    arrive within about ``interval`` seconds of their commit.
    """

    def __init__(self, pool: Any, schema: str, hub: EventHub, interval: float) -> None:
        self._pool = pool
        self._s = schema
        self._hub = hub
        self._interval = interval
        self._id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # The last look: the highest row id it read (None: not registered) and the
        # transactions still open then, whose rows below that id it could not see yet.
        self._seen: int | None = None
        self._open: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._heartbeat_at = 0.0
        self._prune_at = 0.0

    async def start(self) -> None:
        """Register and take the starting point; events committed from now on are read."""
        await self._register()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop reading and unregister (best effort: the registration expires anyway)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
            await self._pool.execute(f"DELETE FROM {self._s}.event_readers WHERE id = $1", self._id)

    async def _register(self) -> None:
        await self._register_again()
        # Taken after the registration committed: rows visible now are from before the
        # subscription; transactions open now commit after it, and are read.
        row = await self._pool.fetchrow(
            f"""SELECT (SELECT coalesce(max(id), 0) FROM {self._s}.event_log) AS seen,
                ARRAY(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS open"""
        )
        self._seen, self._open = row["seen"], list(row["open"])
        self._heartbeat_at = self._prune_at = anyio.current_time()

    async def _run(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            try:
                if self._seen is None:
                    await self._register()
                await self.poll()
            except Exception:  # the server or the pooler went away; the task must go on
                # What happened meanwhile is unknown: a LOST event, then read from the present.
                self._seen = None
                self._hub.lose()

    async def poll(self) -> None:
        """One look: publish the rows that became visible since the last, in log order.

        A row not seen yet either has a higher id than any seen, or belongs to a transaction
        that was still open at the last look (ids are taken in time order, so a lower id
        was taken before that look, by a transaction then committed, or open): so each row is
        read once, as soon as its transaction commits, and none is skipped."""
        now = anyio.current_time()
        if now - self._heartbeat_at >= _HEARTBEAT_EVERY:
            await self._register_again()
            self._heartbeat_at = now
        # One statement, one snapshot: the rows it reads and the transactions open in it.
        rows = await self._pool.fetch(
            f"""SELECT x.open, e.id, e.payload
                FROM (SELECT ARRAY(SELECT t::text FROM pg_snapshot_xip(pg_current_snapshot())
                                   AS t) AS open) AS x
                LEFT JOIN {self._s}.event_log AS e
                  ON e.id > $1 OR e.xact = ANY($2::text[]::xid8[])
                ORDER BY e.id""",
            self._seen,
            self._open,
        )
        events = []
        lost = 0
        for row in rows:
            if row["payload"] is None:
                continue
            try:
                events.append(event_from_values(*json.loads(row["payload"])))
            except (ValueError, TypeError, IndexError):
                lost += 1
        if rows:
            self._open = list(rows[0]["open"])
            ids = [row["id"] for row in rows if row["id"] is not None]
            if ids:
                self._seen = max(self._seen or 0, ids[-1])
        if events:
            self._hub.publish(events)
        if lost:
            self._hub.lose(lost)
        if now - self._prune_at >= _PRUNE_EVERY:  # after reading: never what it has not read
            await self.prune()
            self._prune_at = now

    async def _register_again(self) -> None:
        await self._pool.execute(
            f"""INSERT INTO {self._s}.event_readers (id, until)
                VALUES ($1, now() + make_interval(secs => $2))
                ON CONFLICT (id) DO UPDATE SET until = EXCLUDED.until""",
            self._id,
            _READER_TTL,
        )

    async def prune(self, retention: float = _LOG_RETENTION) -> None:
        """Delete expired reader registrations and event log rows older than ``retention``
        seconds (done every few seconds while reading)."""
        await self._pool.execute(
            f"DELETE FROM {self._s}.event_readers WHERE until < now() - interval '1 minute'"
        )
        await self._pool.execute(
            f"DELETE FROM {self._s}.event_log WHERE at < now() - make_interval(secs => $1)",
            float(retention),
        )
