"""``SQLiteStore``: the default durable store, one embedded SQLite file (``sqlite:///jobs.db``)."""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import functools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from .._core.clock import SYSTEM, Clock
from .._core.exceptions import JobStateError
from .._core.status import Status
from .._durable.events import (
    DEFAULT_EVENT_BUFFER,
    EventHub,
    EventStream,
    JobEvent,
    JobEventKind,
    check_event_filters,
    event_from_values,
)
from ._activity import first_minute, minute_series
from ._args import check_args_filter, sqlite_args_where, sqlite_json_equal
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
from ._sqlite_workflows import SCHEMA as _WORKFLOW_SCHEMA
from ._sqlite_workflows import (
    WF_OWNER,
    SQLiteWorkflows,
    wf_clock,
    wf_final,
    wf_purged,
    wf_reaped,
    wf_retried,
    wf_running_steps,
)
from ._thread import CallThread
from .memory import _decode_error, _Notifier

__all__ = ["MIN_SQLITE_VERSION", "SCHEMA_VERSION", "SQLiteStore"]

MIN_SQLITE_VERSION = (3, 35, 0)
"""``UPDATE … RETURNING`` arrived in SQLite 3.35."""

SCHEMA_VERSION = 6
"""The schema this module creates; :meth:`SQLiteStore.__aenter__` migrates older files to it."""

_T = TypeVar("_T")

_COLUMNS = (
    "id, handler, queue, args, headers, priority, state, status, attempts, max_attempts, "
    "result, error, unique_key, enqueued_at, scheduled_for, started_at, finished_at, "
    "timeout, retry, deferrals, result_ttl, deadline, deferred_ttl, schedule_id"
)
# What reads select: the inserted columns plus those only later statements write.
_READ_COLUMNS = _COLUMNS + ", progress"

# Events kept in anywork_events for subscribers in other processes; older ones are pruned.
_EVENTS_KEPT = 10_000
# A subscribed store object registers in anywork_event_listeners for this long, renewed
# every third of it; the triggers record events only while some registration holds.
_LISTEN_LEASE = 60.0
# A watcher with no subscriber left ends after this many seconds.
_WATCHER_LINGER = 1.0
# How often a subscribed store looks at PRAGMA data_version for changes.
_WATCH_INTERVAL = 0.05
# Unix seconds now, in SQL (unixepoch('subsec') needs SQLite 3.42).
_SQL_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
# The event a job's state change makes (work._durable.events.kind_for_change, in SQL).
_SQL_KIND = """CASE NEW.state
    WHEN 'running' THEN 'started'
    WHEN 'succeeded' THEN 'succeeded'
    WHEN 'failed' THEN 'failed'
    WHEN 'cancelled' THEN 'cancelled'
    WHEN 'waiting' THEN 'waiting'
    WHEN 'scheduled' THEN CASE WHEN OLD.state = 'running' THEN 'retrying' ELSE 'enqueued' END
    ELSE CASE WHEN OLD.state = 'running' AND NEW.attempts >= OLD.attempts
              THEN 'retrying' ELSE 'enqueued' END
END"""
_SQL_EVENT = (
    "INSERT INTO anywork_events (kind, job_id, queue, handler, status, attempt, at, progress)"
)
# Events cost a write each: they are recorded only while some process is subscribed.
_SQL_LISTENED = f"EXISTS (SELECT 1 FROM anywork_event_listeners WHERE until > {_SQL_NOW})"

# Each entry migrates the schema from version i to i + 1, inside the one BEGIN IMMEDIATE
# transaction that read the version (SQLite's DDL is transactional), so concurrent openers
# apply each step exactly once.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE IF NOT EXISTS anywork_jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- enqueue order
            id TEXT NOT NULL UNIQUE,
            handler TEXT NOT NULL,
            queue TEXT NOT NULL,
            args TEXT NOT NULL,                     -- JSON object
            headers TEXT NOT NULL,                  -- JSON object
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            status INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            max_attempts INTEGER NOT NULL,
            result TEXT,                            -- JSON
            error TEXT,
            unique_key TEXT,
            enqueued_at REAL NOT NULL,              -- Unix seconds (UTC)
            scheduled_for REAL,
            started_at REAL,
            finished_at REAL,
            timeout REAL,
            retry TEXT,                             -- JSON
            deferrals INTEGER NOT NULL DEFAULT 0,
            due_at REAL NOT NULL,                   -- scheduled_for, else enqueued_at
            owner TEXT,
            lease_until REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX IF NOT EXISTS anywork_jobs_ready"
        " ON anywork_jobs (state, queue, priority DESC, due_at, seq)",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_lease ON anywork_jobs (state, lease_until)",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_queue ON anywork_jobs (queue, seq)",
        # At most one active job per (queue, unique_key): a safety net behind add()'s check.
        "CREATE UNIQUE INDEX IF NOT EXISTS anywork_jobs_unique ON anywork_jobs (queue, unique_key)"
        " WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')",
    ),
    (
        # How many times the job's worker was lost (reap fails it at the lost limit), and when
        # a worker first handed it back for lack of its handler.
        "ALTER TABLE anywork_jobs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE anywork_jobs ADD COLUMN unknown_since REAL",
        # Retention: a job's own result_ttl, and when a finished job that has one may go.
        "ALTER TABLE anywork_jobs ADD COLUMN result_ttl REAL",
        "ALTER TABLE anywork_jobs ADD COLUMN expires_at REAL",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_expires ON anywork_jobs (expires_at)"
        " WHERE expires_at IS NOT NULL",
        # Version 1's ready index led with state, so a claim (state = 'queued' OR ...) could
        # not walk it in claim order: it searched every row of the queue, finished ones
        # included, and sorted them in a temporary b-tree. These partial indexes hold only
        # unfinished jobs, in the claim's exact order, so history never slows a claim or an
        # idle poll.
        "DROP INDEX IF EXISTS anywork_jobs_ready",
        # Only RUNNING jobs have leases: version 1's lease index held every job.
        "DROP INDEX IF EXISTS anywork_jobs_lease",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_leases ON anywork_jobs (lease_until)"
        " WHERE state = 'running'",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_claim"
        " ON anywork_jobs (queue, priority DESC, due_at, seq, state)"
        " WHERE state IN ('queued', 'scheduled')",
        # The oldest finished jobs first, for purges.
        "CREATE INDEX IF NOT EXISTS anywork_jobs_finished ON anywork_jobs (finished_at)"
        " WHERE state IN ('succeeded', 'failed', 'cancelled')",
    ),
    # 3: job events (filled by triggers, read by subscribers in any process) and progress.
    (
        "ALTER TABLE anywork_jobs ADD COLUMN progress TEXT",  # JSON
        """
        CREATE TABLE IF NOT EXISTS anywork_events (
            seq INTEGER PRIMARY KEY,                -- the newest is never pruned: it only grows
            kind TEXT NOT NULL,
            job_id TEXT NOT NULL,
            queue TEXT NOT NULL,
            handler TEXT NOT NULL,
            status INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            at REAL NOT NULL,                       -- Unix seconds (UTC)
            progress TEXT                           -- JSON, PROGRESS events only
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS anywork_event_listeners (
            id TEXT PRIMARY KEY,
            until REAL NOT NULL                     -- Unix seconds: registered until then
        )
        """,
        f"""
        CREATE TRIGGER IF NOT EXISTS anywork_events_prune AFTER INSERT ON anywork_events
        BEGIN DELETE FROM anywork_events WHERE seq <= NEW.seq - {_EVENTS_KEPT}; END
        """,
        f"""
        CREATE TRIGGER IF NOT EXISTS anywork_jobs_event_insert AFTER INSERT ON anywork_jobs
        WHEN {_SQL_LISTENED}
        BEGIN
            {_SQL_EVENT} VALUES (
                CASE NEW.state WHEN 'running' THEN 'started' WHEN 'succeeded' THEN 'succeeded'
                    WHEN 'failed' THEN 'failed' WHEN 'cancelled' THEN 'cancelled'
                    ELSE 'enqueued' END,
                NEW.id, NEW.queue, NEW.handler, NEW.status, NEW.attempts, {_SQL_NOW}, NULL);
        END
        """,
        f"""
        CREATE TRIGGER IF NOT EXISTS anywork_jobs_event_state AFTER UPDATE OF state ON anywork_jobs
        WHEN OLD.state IS NOT NEW.state AND {_SQL_LISTENED}
        BEGIN
            {_SQL_EVENT} VALUES ({_SQL_KIND}, NEW.id, NEW.queue, NEW.handler, NEW.status,
                NEW.attempts, {_SQL_NOW}, NULL);
        END
        """,
        f"""
        CREATE TRIGGER IF NOT EXISTS anywork_jobs_event_progress
        AFTER UPDATE OF progress ON anywork_jobs WHEN NEW.progress IS NOT NULL AND {_SQL_LISTENED}
        BEGIN
            {_SQL_EVENT} VALUES ('progress', NEW.id, NEW.queue, NEW.handler, NEW.status,
                NEW.attempts, {_SQL_NOW}, NEW.progress);
        END
        """,
    ),
    # 4: deferred completion.
    (
        # Deferred completion: WAITING jobs, their deadline and the Deferred's ttl; a WAITING
        # job still holds its unique key; store-wide settings (the callback secret).
        "ALTER TABLE anywork_jobs ADD COLUMN deadline REAL",
        "ALTER TABLE anywork_jobs ADD COLUMN deferred_ttl REAL",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_deadline ON anywork_jobs (state, deadline)",
        "DROP INDEX IF EXISTS anywork_jobs_unique",
        "CREATE UNIQUE INDEX IF NOT EXISTS anywork_jobs_unique ON anywork_jobs (queue, unique_key)"
        " WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running', 'waiting')",
        "CREATE TABLE IF NOT EXISTS anywork_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    # 5: schedules, and the schedule each job is an execution of.
    (
        "ALTER TABLE anywork_jobs ADD COLUMN schedule_id TEXT",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_schedule ON anywork_jobs (schedule_id, seq)"
        " WHERE schedule_id IS NOT NULL",
        """
        CREATE TABLE IF NOT EXISTS anywork_schedules (
            id TEXT PRIMARY KEY,
            spec TEXT NOT NULL,                     -- JSON: the Schedule
            enabled INTEGER NOT NULL,
            next_fire_at REAL,                      -- Unix seconds (UTC)
            anchor REAL NOT NULL,
            last_fire_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            version INTEGER NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS anywork_schedules_due ON anywork_schedules (next_fire_at)"
        " WHERE enabled = 1 AND next_fire_at IS NOT NULL",
    ),
    # 6: listing and counting a million finished jobs from indexes. Every index ends with
    # seq (the rowid, implicitly): a filtered page walks its index in enqueue order.
    (
        "CREATE INDEX IF NOT EXISTS anywork_jobs_state ON anywork_jobs (state)",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_handler ON anywork_jobs (handler)",
        # Counts by queue and state read this index alone; a queue's page in one state too.
        "CREATE INDEX IF NOT EXISTS anywork_jobs_queue_state ON anywork_jobs (queue, state)",
        # The overview's finished jobs per minute, read from the index alone.
        "CREATE INDEX IF NOT EXISTS anywork_jobs_finished_minute"
        " ON anywork_jobs (finished_at, queue, state) WHERE state IN ('succeeded', 'failed')",
        # Deadlines matter only for WAITING jobs: a partial index instead of version 4's
        # (state, deadline) over every job, which each insert and state change had to write.
        "DROP INDEX IF EXISTS anywork_jobs_deadline",
        "CREATE INDEX IF NOT EXISTS anywork_jobs_waiting ON anywork_jobs (deadline)"
        " WHERE state = 'waiting'",
    ),
)

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
# Set by add_blocking: the store's calls run in the calling thread (see _run).
_IN_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "anywork_sqlite_in_caller", default=False
)
_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-variable limit


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    """Unix seconds as an aware datetime; a time out of datetime's range (written behind the
    store's back) reads as its nearest bound, so one bad row never breaks get() or list()."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        return (datetime.max if value > 0 else datetime.min).replace(tzinfo=UTC)


def _dt_strict(value: float | None) -> datetime | None:
    """As :func:`_dt`, but a time out of range raises (a claim fails that job with 400)."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise ValueError(f"a stored time is out of range ({value!r}): {exc}") from None


def _loads_object(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _record(row: sqlite3.Row, *, strict: bool = False) -> JobRecord:
    dt = _dt_strict if strict else _dt
    return JobRecord(
        id=row["id"],
        handler=row["handler"],
        args=_loads_object(row["args"]),
        queue=row["queue"],
        headers=_loads_object(row["headers"]),
        priority=row["priority"],
        state=JobState(row["state"]),
        status=Status.coerce(row["status"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        result=_loads(row["result"]),
        error=row["error"],
        unique_key=row["unique_key"],
        enqueued_at=dt(row["enqueued_at"]),
        scheduled_for=dt(row["scheduled_for"]),
        started_at=dt(row["started_at"]),
        finished_at=dt(row["finished_at"]),
        timeout=row["timeout"],
        retry=_loads(row["retry"]),
        deferrals=row["deferrals"],
        schedule_id=row["schedule_id"],
        deadline=_dt(row["deadline"]),
        deferred_ttl=row["deferred_ttl"],
        progress=_loads(row["progress"]),
        result_ttl=row["result_ttl"],
    )


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


# An insert that skips a job whose id, or whose active (queue, unique_key), is taken.
_INSERT = (
    f"INSERT INTO anywork_jobs ({_COLUMNS}, due_at) VALUES ({_marks(25)}) ON CONFLICT DO NOTHING"
)
_ACTIVE = "('queued', 'scheduled', 'running', 'waiting')"
# A job ready to be claimed (one parameter: now). The literal `state IN (...)` term lets
# SQLite use the partial index anywork_jobs_claim, which holds unfinished jobs only.
# A finished job: the literal term lets SQLite use the partial index anywork_jobs_finished.
_DONE = "state IN ('succeeded', 'failed', 'cancelled')"
_PURGE_BATCH = 500  # rows per purge transaction: other writers wait at most this long
_CLAIMABLE = "state IN ('queued', 'scheduled') AND (state = 'queued' OR due_at <= ?)"
# Positions in _insert_params' tuple (the order of _COLUMNS, then due_at).
_AT = {name: i for i, name in enumerate(_COLUMNS.split(", "))}
_ARGS, _HEADERS, _RESULT, _RETRY = _AT["args"], _AT["headers"], _AT["result"], _AT["retry"]
_ENQUEUED, _SCHEDULED = _AT["enqueued_at"], _AT["scheduled_for"]
_STARTED, _FINISHED = _AT["started_at"], _AT["finished_at"]


_SCHEDULE_COLUMNS = (
    "id, spec, enabled, next_fire_at, anchor, last_fire_at, created_at, updated_at, version"
)
_UNFINISHED = "(" + ", ".join(f"'{state}'" for state in UNFINISHED_STATES) + ")"


def _schedule_row(row: sqlite3.Row) -> ScheduleRow:
    return ScheduleRow(
        id=row["id"],
        spec=_loads_object(row["spec"]),
        enabled=bool(row["enabled"]),
        next_fire_at=_dt(row["next_fire_at"]),
        anchor=datetime.fromtimestamp(row["anchor"], UTC),
        last_fire_at=_dt(row["last_fire_at"]),
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
        updated_at=datetime.fromtimestamp(row["updated_at"], UTC),
        version=row["version"],
    )


def _schedule_params(row: ScheduleRow) -> tuple[Any, ...]:
    return (
        row.id,
        json.dumps(row.spec),
        int(row.enabled),
        _ts(row.next_fire_at),
        row.anchor.timestamp(),
        _ts(row.last_fire_at),
        row.created_at.timestamp(),
        row.updated_at.timestamp(),
        row.version,
    )


def _add_execution(
    conn: sqlite3.Connection, record: JobRecord, *, exclusive: bool, now: datetime
) -> tuple[JobRecord, bool]:
    """Add a schedule's execution (inside a write transaction). Returns the stored record
    and whether it is new (an existing id gives the existing record)."""
    row = conn.execute(
        f"SELECT {_READ_COLUMNS} FROM anywork_jobs WHERE id = ?", (record.id,)
    ).fetchone()
    if row is not None:
        return _record(row), False
    if (
        exclusive
        and conn.execute(
            f"SELECT 1 FROM anywork_jobs WHERE schedule_id = ? AND state IN {_UNFINISHED} LIMIT 1",
            (record.schedule_id,),
        ).fetchone()
    ):
        record = conflict_record(record, now)
    params = _insert_params(record, now)
    conn.execute(_INSERT, params)
    return _stored(record, params, json.loads(params[_ARGS])), True


class _Conflict(Exception):
    """Some job of a batch was not inserted: its id or unique key is taken."""


def _insert_params(rec: JobRecord, now: datetime) -> tuple[Any, ...]:
    """``_INSERT``'s parameters for ``rec`` (``now`` stands in for a missing enqueued_at)."""
    enqueued = (rec.enqueued_at or now).timestamp()
    scheduled = _ts(rec.scheduled_for)
    return (
        rec.id,
        rec.handler,
        rec.queue,
        json.dumps(rec.args),
        json.dumps(rec.headers) if rec.headers else "{}",
        rec.priority,
        rec.state.value,
        int(rec.status),
        rec.attempts,
        rec.max_attempts,
        json.dumps(rec.result) if rec.result is not None else None,
        rec.error,
        rec.unique_key,
        enqueued,
        scheduled,
        _ts(rec.started_at),
        _ts(rec.finished_at),
        rec.timeout,
        json.dumps(rec.retry) if rec.retry is not None else None,
        rec.deferrals,
        rec.result_ttl,
        _ts(rec.deadline),
        rec.deferred_ttl,
        rec.schedule_id,
        enqueued if scheduled is None else scheduled,  # due_at
    )


def _loads_all(texts: Sequence[str]) -> list[Any]:
    """Decode JSON texts (each one JSON value, as ``json.dumps`` wrote it) in one call: a
    quarter of the cost of one ``json.loads`` each."""
    values: list[Any] = json.loads("[" + ",".join(texts) + "]")
    return values


def _stored(rec: JobRecord, params: tuple[Any, ...], args: Any) -> JobRecord:
    """The record :meth:`SQLiteStore.get` reads back once ``rec`` is inserted with ``params``,
    made without a query: ``args`` decoded from the args stored, the other JSON columns
    decoded from the text stored, times from the Unix seconds stored (a fresh snapshot:
    nothing in it is shared with ``rec``)."""
    # object.__setattr__ on a new object rather than JobRecord(...): half the cost. Every
    # field of JobRecord is set (a field missing here fails the conformance round trip).
    new: JobRecord = object.__new__(JobRecord)
    put = object.__setattr__
    put(new, "id", rec.id)
    put(new, "handler", rec.handler)
    put(new, "args", args if isinstance(args, dict) else {})
    put(new, "queue", rec.queue)
    headers = params[_HEADERS]
    put(new, "headers", {} if headers == "{}" else _loads_object(headers))
    put(new, "priority", rec.priority)
    put(new, "state", rec.state)
    put(new, "status", rec.status)
    put(new, "attempts", rec.attempts)
    put(new, "max_attempts", rec.max_attempts)
    put(new, "result", _loads(params[_RESULT]))
    put(new, "error", rec.error)
    put(new, "unique_key", rec.unique_key)
    put(new, "enqueued_at", _dt(params[_ENQUEUED]))
    put(new, "scheduled_for", _dt(params[_SCHEDULED]))
    put(new, "started_at", _dt(params[_STARTED]))
    put(new, "finished_at", _dt(params[_FINISHED]))
    put(new, "timeout", None if rec.timeout is None else float(rec.timeout))
    put(new, "retry", _loads(params[_RETRY]))
    put(new, "deferrals", rec.deferrals)
    put(new, "schedule_id", rec.schedule_id)
    put(new, "progress", None)  # add() does not store progress
    put(new, "result_ttl", None if rec.result_ttl is None else float(rec.result_ttl))
    put(new, "deadline", _dt(_ts(rec.deadline)))
    put(new, "deferred_ttl", None if rec.deferred_ttl is None else float(rec.deferred_ttl))
    return new


def _insert_all(conn: sqlite3.Connection, *, params: Sequence[tuple[Any, ...]]) -> None:
    """Insert every job (in a transaction); raise ``_Conflict`` if any was skipped."""
    if conn.executemany(_INSERT, params).rowcount != len(params):
        raise _Conflict


def _insert_each(
    conn: sqlite3.Connection, *, records: Sequence[JobRecord], params: Sequence[tuple[Any, ...]]
) -> list[int | JobRecord]:
    """Add ``records`` as if one by one (in a transaction, which holds the write lock).

    Returns, for each job, the existing record it ran into, or the index of the job of this
    call whose record it gets (its own index when it was inserted).
    """
    existing: dict[str, JobRecord] = {}
    ids = list(dict.fromkeys(rec.id for rec in records))
    for chunk in _chunks(ids):
        sql = f"SELECT {_READ_COLUMNS} FROM anywork_jobs WHERE id IN ({_marks(len(chunk))})"
        for row in conn.execute(sql, chunk):
            existing[row["id"]] = _record(row)
    active: dict[tuple[str, str], JobRecord] = {}
    for queue, unique_key in dict.fromkeys(
        (rec.queue, rec.unique_key) for rec in records if rec.unique_key is not None
    ):
        row = conn.execute(
            f"SELECT {_READ_COLUMNS} FROM anywork_jobs WHERE queue = ? AND unique_key = ?"
            f" AND state IN {_ACTIVE}",
            (queue, unique_key),
        ).fetchone()
        if row is not None:
            active[queue, unique_key] = _record(row)
    sources: list[int | JobRecord] = []
    new_ids: dict[str, int] = {}
    new_keys: dict[tuple[str, str], int] = {}
    insert: list[tuple[Any, ...]] = []
    for i, rec in enumerate(records):
        source: int | JobRecord | None = new_ids.get(rec.id)
        if source is None:
            source = existing.get(rec.id)
        if source is None and rec.unique_key is not None:
            key = (rec.queue, rec.unique_key)
            source = new_keys.get(key)
            if source is None:
                source = active.get(key)
        if source is None:
            source = new_ids[rec.id] = i
            if rec.unique_key is not None:
                new_keys[rec.queue, rec.unique_key] = i
            insert.append(params[i])
        sources.append(source)
    # Under the write lock nothing changed since the lookups: every insert goes through.
    if insert and conn.executemany(_INSERT, insert).rowcount != len(insert):
        raise RuntimeError("anywork_jobs changed during add() despite the write lock")
    return sources


def path_from_url(url: str) -> str:
    """Return the file path in a ``sqlite:`` URL.

    ``sqlite:///jobs.db`` is ``jobs.db`` relative to the current directory,
    ``sqlite:////var/lib/jobs.db`` is absolute, ``sqlite:///:memory:`` is an in-memory
    database private to one store object.

    Raises:
        ValueError: not a ``sqlite:`` URL, a host is given, or the path is empty.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ValueError(
            f"a sqlite URL has no host: use sqlite:///relative.db or sqlite:////absolute.db, "
            f"got {url!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ValueError(f"no database file in {url!r} (e.g. sqlite:///jobs.db)")
    return path


def _claim_in(
    conn: sqlite3.Connection,
    queues: list[str],
    limit: int,
    lease: float,
    owner: str,
    now: float,
) -> list[Claimed]:
    """Claim up to ``limit`` ready jobs of ``queues``, best first, inside the caller's
    transaction (``claim`` and ``complete_and_claim``)."""
    rows = conn.execute(
        "UPDATE anywork_jobs SET state = 'running', attempts = attempts + 1,"
        " started_at = ?, owner = ?, lease_until = ?, cancel_requested = 0"
        " WHERE seq IN (SELECT seq FROM anywork_jobs"
        f"  WHERE queue IN ({_marks(len(queues))}) AND {_CLAIMABLE}"
        "  ORDER BY priority DESC, due_at, seq LIMIT ?)"
        f" RETURNING {_READ_COLUMNS}, due_at, seq, unknown_since",
        (now, owner, now + lease, *queues, now, limit),
    ).fetchall()
    # RETURNING gives no order: put them back in claim order.
    rows.sort(key=lambda r: (-r["priority"], r["due_at"], r["seq"]))
    return [_claimed_decoded_once(row) for row in rows]


def _complete_in(
    conn: sqlite3.Connection,
    owner: str,
    outcomes: Sequence[Outcome],
    now: float,
    applied: set[str],
) -> bool:
    """Apply ``outcomes`` to jobs RUNNING under ``owner``'s lease inside the caller's
    transaction (``complete`` and ``complete_and_claim``), with what follows a finished
    workflow step; fill ``applied`` (cleared first: a transaction may be retried) and return
    whether a job became ready (waiters to wake)."""
    wake = False
    applied.clear()
    for o in outcomes:
        scheduled = _ts(o.scheduled_for) if o.state is JobState.SCHEDULED else None
        waiting = o.state is JobState.WAITING
        succeeded = o.state is JobState.SUCCEEDED or waiting
        result = json.dumps(o.result) if succeeded else None
        cur = conn.execute(
            "UPDATE anywork_jobs SET state = ?, status = ?,"
            " result = CASE WHEN ? THEN ? ELSE result END, error = ?,"
            " deadline = ?, deferred_ttl = CASE WHEN ? THEN ? ELSE deferred_ttl END,"
            " scheduled_for = ?, due_at = COALESCE(?, enqueued_at), finished_at = ?,"
            " expires_at = ? + result_ttl,"
            " attempts = MAX(attempts - ?, 0), deferrals = deferrals + ?,"
            " owner = NULL, lease_until = NULL, cancel_requested = 0, unknown_since = ?"
            " WHERE id = ? AND state = 'running' AND owner = ?",
            (
                o.state.value,
                int(o.status),
                succeeded,
                result,
                o.error,
                _ts(o.deadline) if waiting else None,
                waiting,
                o.ttl,
                scheduled,
                scheduled,
                now if o.state.is_final else None,
                now if o.state.is_final else None,
                1 if o.give_back_attempt else 0,
                1 if o.deferral else 0,
                _ts(o.unknown_since),
                o.id,
                owner,
            ),
        )
        if cur.rowcount > 0:
            applied.add(o.id)
            if o.state.is_final:  # a workflow step: what follows it, in this transaction
                wake = wf_final(conn, o.id, o.state, int(o.status), result, o.error) or wake
        wake = wake or (cur.rowcount > 0 and not o.state.is_final)
    return wake


class SQLiteStore(SQLiteWorkflows):
    """The default durable store: jobs kept in one SQLite file, no server to run.

    Several worker processes (and producers) may share the file: SQLite's write lock
    serialises claims (each in a ``BEGIN IMMEDIATE`` transaction), so no two processes ever
    claim the same job while its lease holds. The file uses WAL journaling, so readers never
    block the writer. It suits one machine; for several, use PostgreSQL or Redis.

    Calls run outside the event loop over one connection per store object, guarded by a
    lock: on asyncio in one thread of the store's own, on trio in anyio's worker threads
    (``anyio.to_thread``). Idle workers poll the file every ``poll_interval`` seconds; an ``add``
    made through the same store object wakes them at once.

    Args:
        url: ``sqlite:///relative.db`` (relative to the current directory),
            ``sqlite:////absolute/path.db``, or ``sqlite:///:memory:`` (private to this store
            object: only useful for tests).
        busy_timeout: seconds a call waits for another process's write lock before failing
            with ``sqlite3.OperationalError: database is locked``.
        synchronous: SQLite's ``PRAGMA synchronous``. ``"NORMAL"`` (the default) in WAL mode
            never corrupts the file; a power cut (not a process crash) may lose the last
            transactions committed before it. ``"FULL"`` syncs every commit to disk too.
        poll_interval: seconds between checks for new work while idle.
        clock: the time every due time, claim, lease, deadline and retention is read from
            (default: the system clock; a :class:`work.testing.VirtualClock` in tests).

    Raises:
        ValueError: a bad URL or option.
        RuntimeError: the SQLite library is older than 3.35.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        poll_interval: float = 0.015,
        clock: Clock | None = None,
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a work.testing.VirtualClock or None, got {clock!r}")
        self.clock: Clock = clock or SYSTEM
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise RuntimeError(
                f"SQLiteStore needs SQLite >= 3.35 (UPDATE ... RETURNING); this Python links "
                f"SQLite {sqlite3.sqlite_version}"
            )
        self.path = path_from_url(url)
        if not busy_timeout >= 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout!r}")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.url = url
        self.busy_timeout = float(busy_timeout)
        self.synchronous = synchronous.upper()
        self.poll_interval = float(poll_interval)
        self._conn: sqlite3.Connection | None = None
        self._entered = 0
        self._lock = threading.Lock()
        self._notifier = _Notifier()
        # Events come from a watcher thread (see events()): subscribers look every 50 ms.
        self._hub = EventHub(poll=_WATCH_INTERVAL)
        self._watcher: _Watcher | None = None
        self._watcher_lock = threading.Lock()
        # The calls from asyncio run in a thread of the store's own (see _run).
        self._thread = CallThread(f"anywork-sqlite {self.path}")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # -- connection -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the file (created if missing), switch it to WAL and create or migrate the schema.

        Entering a store that is already open shares its connection; it is closed when the
        outermost ``async with`` ends.
        """
        await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection when the outermost ``async with`` ends."""
        await anyio.to_thread.run_sync(self._close)

    async def exists(self) -> bool:
        """True when the file holds an anywork store; creates nothing (for read-only
        commands, which must not leave an empty database behind)."""
        return await anyio.to_thread.run_sync(self._exists)

    def _exists(self) -> bool:
        if self._conn is not None or self.path == ":memory:":
            return True
        target = Path(self.path)
        if not target.is_file():
            return False
        conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                "AND name = 'anywork_schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError:  # not a database at all
            return False
        finally:
            conn.close()
        return row is not None

    def _open(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._entered += 1
                return
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we BEGIN / COMMIT ourselves
                check_same_thread=False,  # used from other threads, under self._lock
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.create_function("anywork_json_equal", 2, sqlite_json_equal, deterministic=True)
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                self._retry_locked(lambda: self._migrate(conn))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._entered = 1

    def _retry_locked(self, fn: Callable[[], object]) -> None:
        # Several processes starting at once may find the file locked for longer than the busy
        # handler waits while one of them switches it to WAL or creates the schema.
        for attempt in range(20):
            try:
                fn()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS anywork_schema_version (version INTEGER NOT NULL)"
            )
            (current,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM anywork_schema_version"
            ).fetchone()
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has anywork schema version {current}; this anywork knows "
                    f"versions up to {SCHEMA_VERSION}: upgrade anywork"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO anywork_schema_version (version) VALUES (?)", (version + 1,)
                )
            for statement in _WORKFLOW_SCHEMA:  # tables of their own, created if missing
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            self._entered -= 1
            if self._entered <= 0:
                if self._watcher is not None:
                    self._watcher.stop_soon()
                self._conn.close()
                self._conn = None
                self._entered = 0
                self._thread.stop()

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if _IN_CALLER.get():
            return self._call(fn)  # add_blocking: in the calling thread, no hop
        # A call in a thread looks idle to a VirtualClock's check: mark it.
        with self.clock.busy():
            # Every call holds self._lock on the one connection, so one thread of the
            # store's own serves them all: half the CPU of anyio's worker threads per call.
            return await self._thread.run(functools.partial(self._call, fn))

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._conn is None:
                raise RuntimeError(f"{self!r} is not open: use `async with store:` first")
            with wf_clock(self.clock):  # workflow hooks read the store's time
                return fn(self._conn)

    @staticmethod
    def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        # IMMEDIATE takes the write lock up front, so two processes never both read a job as
        # ready and then race to update it.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(lambda conn: self._write(conn, fn))

    # -- reading ------------------------------------------------------------------------------

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None."""

        def query(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                f"SELECT {_READ_COLUMNS} FROM anywork_jobs WHERE id = ?", (id,)
            ).fetchone()
            return _record(row) if row is not None else None

        return await self._run(query)

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
        empty page. ``args`` is one ``json_each`` lookup per key in SQL, tested on the rows the
        other filters' index walks in enqueue order.
        """
        wanted = check_args_filter(args)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("queue", queue),
            ("handler", handler),
            ("schedule_id", schedule_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(str(value))
        if wanted is not None:
            args_sql, args_params = sqlite_args_where(wanted)
            where.append(args_sql)
            params += args_params
        if after is not None:
            where.append("seq > (SELECT seq FROM anywork_jobs WHERE id = ?)")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_READ_COLUMNS} FROM anywork_jobs {clause} ORDER BY seq LIMIT ?"
        params.append(max(limit, 0))

        def query(conn: sqlite3.Connection) -> list[JobRecord]:
            return [_record(row) for row in conn.execute(sql, params)]

        return await self._run(query)

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}`` for every queue holding jobs."""

        def query(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            sql = "SELECT queue, state, COUNT(*) FROM anywork_jobs GROUP BY queue, state"
            for queue, state, count in conn.execute(sql):
                out.setdefault(queue, {})[state] = count
            return out

        return await self._run(query)

    async def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return the last hour's finished jobs per queue and minute (see
        :meth:`work.stores.Store.finished_per_minute`): one GROUP BY over the partial index
        of finished jobs by ``finished_at`` (schema version 6)."""
        now = self.clock.now()
        sql = (
            "SELECT queue, CAST(finished_at / 60 AS INTEGER) AS minute, state, COUNT(*)"
            " FROM anywork_jobs INDEXED BY anywork_jobs_finished_minute"
            " WHERE state IN ('succeeded', 'failed') AND finished_at >= ?"
            " GROUP BY queue, minute, state"
        )

        def query(conn: sqlite3.Connection) -> builtins.list[tuple[str, int, str, int]]:
            rows = conn.execute(sql, (first_minute(now) * 60.0,))
            return [(row[0], row[1], row[2], row[3]) for row in rows]

        return minute_series(await self._run(query), now)

    # -- producing ----------------------------------------------------------------------------

    async def add(self, records: Sequence[JobRecord]) -> builtins.list[JobRecord]:
        """Insert jobs in one transaction; an existing id or an active job with the same unique
        key is returned instead (see :meth:`work.stores.Store.add`).

        One ``INSERT … ON CONFLICT DO NOTHING`` per job (``executemany`` for a batch; a lone
        job is one autocommit statement). Only when some job was not inserted is the call
        redone, in a new transaction, job by job against the rows found for its ids and unique
        keys.
        """
        if not records:
            return []
        now = self.clock.now()
        params = [_insert_params(rec, now) for rec in records]

        def insert(conn: sqlite3.Connection) -> list[int | JobRecord] | None:
            if len(params) == 1:
                # One statement is its own transaction: no BEGIN / COMMIT to send.
                if conn.execute(_INSERT, params[0]).rowcount == 1:
                    return None
            else:
                try:
                    self._write(conn, functools.partial(_insert_all, params=params))
                    return None
                except _Conflict:
                    pass  # rolled back: redo it job by job
            return self._write(
                conn, functools.partial(_insert_each, records=records, params=params)
            )

        sources = await self._run(insert)
        if sources is None:
            decoded = _loads_all([p[_ARGS] for p in params])
            out = [_stored(*job) for job in zip(records, params, decoded, strict=True)]
        else:
            out = [
                src
                if isinstance(src, JobRecord)
                else _stored(records[src], params[src], json.loads(params[src][_ARGS]))
                for src in sources
            ]
            if all(isinstance(src, JobRecord) for src in sources):
                return out  # nothing was added: nothing to wake
        self._notifier.notify()
        return out

    def add_blocking(self, records: Sequence[JobRecord]) -> builtins.list[JobRecord]:
        """:meth:`add`, run to its end in the calling thread (which has no event loop of the
        store's: ``SyncQueue.enqueue``), over the store's connection under its lock: the
        same statements and answers with no thread hop and no portal round trip.

        Raises:
            RuntimeError: the store is not open, or is timed by a VirtualClock (whose time
                moves with the store's event loop: use ``add`` there).
        """
        if self.clock.virtual:
            raise RuntimeError(f"{self!r} is timed by a VirtualClock: use add() on its loop")
        token = _IN_CALLER.set(True)
        try:
            call = self.add(records)
            try:
                call.send(None)  # every _run completes at once: add never suspends here
            except StopIteration as done:
                stored: builtins.list[JobRecord] = done.value
                return stored
            call.close()
            raise RuntimeError("SQLiteStore.add suspended in add_blocking")  # pragma: no cover
        finally:
            _IN_CALLER.reset(token)

    async def cancel(self, id: str) -> bool:
        """Cancel a QUEUED, SCHEDULED or WAITING job at once, or ask a RUNNING one's owner to
        stop.

        Returns False for an unknown or already final job.
        """

        def update(conn: sqlite3.Connection) -> bool:
            now = self.clock.time()
            cur = conn.execute(
                "UPDATE anywork_jobs SET state = 'cancelled', status = ?, error = 'cancelled',"
                " finished_at = ?, expires_at = ? + result_ttl, deadline = NULL"
                " WHERE id = ? AND state IN ('queued', 'scheduled', 'waiting')",
                (int(Status.CANCELLED), now, now, id),
            )
            if cur.rowcount:
                wf_final(conn, id, JobState.CANCELLED, int(Status.CANCELLED), None, "cancelled")
                return True
            cur = conn.execute(
                "UPDATE anywork_jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
                (id,),
            )
            return cur.rowcount > 0

        return await self._transaction(update)

    # -- consuming ----------------------------------------------------------------------------

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> builtins.list[Claimed]:
        """Claim up to ``limit`` ready jobs, best first, in one ``BEGIN IMMEDIATE`` transaction
        (see :meth:`work.stores.Store.claim`)."""
        if limit <= 0 or not queues:
            return []
        queues = list(queues)

        def update(conn: sqlite3.Connection) -> list[Claimed]:
            return _claim_in(conn, queues, limit, lease, owner, self.clock.time())

        return await self._transaction(update)

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        """Extend ``owner``'s leases on ``ids``; return those it must stop running."""
        if not ids:
            return set()

        def update(conn: sqlite3.Connection) -> set[str]:
            until = self.clock.time() + lease
            held: set[str] = set()
            stop: set[str] = set()
            for chunk in _chunks(ids):
                rows = conn.execute(
                    "UPDATE anywork_jobs SET lease_until = ? WHERE owner = ? AND state = 'running'"
                    f" AND id IN ({_marks(len(chunk))}) RETURNING id, cancel_requested",
                    (until, owner, *chunk),
                ).fetchall()
                for id, cancel_requested in rows:
                    held.add(id)
                    if cancel_requested:
                        stop.add(id)
            return stop | (set(ids) - held)

        return await self._transaction(update)

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        """Apply outcomes, in one transaction, to jobs RUNNING under ``owner``'s lease; others
        are left alone. Returns the ids whose outcome was applied."""
        if not outcomes:
            return set()
        applied: set[str] = set()

        def update(conn: sqlite3.Connection) -> bool:
            return _complete_in(conn, owner, outcomes, self.clock.time(), applied)

        if await self._transaction(update):
            self._notifier.notify()
        return applied

    async def complete_and_claim(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
    ) -> tuple[set[str], builtins.list[Claimed]]:
        """:meth:`complete` then :meth:`claim`, in one ``BEGIN IMMEDIATE`` transaction and one
        thread hop: what ``serve`` calls when finished jobs free the places it claims for.

        The outcomes are applied first (the same statements and fencing as ``complete``), so
        a job given back by one of them may be claimed again at once; both commit together
        or neither does (a failure leaves the outcomes to be written again and nothing
        claimed). Returns the ids whose outcome was applied, and the claimed jobs.
        """
        queues = builtins.list(queues)
        applied: set[str] = set()

        def update(conn: sqlite3.Connection) -> tuple[bool, builtins.list[Claimed]]:
            now = self.clock.time()
            wake = _complete_in(conn, owner, outcomes, now, applied)
            if limit <= 0 or not queues:
                return wake, []
            return wake, _claim_in(conn, queues, limit, lease, owner, now)

        wake, claimed = await self._transaction(update)
        if wake:
            self._notifier.notify()
        return applied, claimed

    async def reap(self, *, lost_limit: int = DEFAULT_LOST_LIMIT) -> int:
        """Put back (or fail after ``lost_limit`` losses, or cancel) RUNNING jobs whose lease
        expired; return how many (see :meth:`work.stores.Store.reap`)."""

        def update(conn: sqlite3.Connection) -> int:
            now = self.clock.time()
            expired = "state = 'running' AND lease_until <= ?"
            cleared = "owner = NULL, lease_until = NULL, cancel_requested = 0"
            steps = wf_running_steps(conn, now)
            changed = conn.execute(
                f"UPDATE anywork_jobs SET state = 'cancelled', status = ?, error = 'cancelled',"
                f" finished_at = ?, expires_at = ? + result_ttl, {cleared}"
                f" WHERE {expired} AND cancel_requested = 1",
                (int(Status.CANCELLED), now, now, now),
            ).rowcount
            changed += conn.execute(
                f"UPDATE anywork_jobs SET state = 'queued', status = ?, error = 'worker lost',"
                f" scheduled_for = NULL, due_at = enqueued_at, lost = lost + 1, {cleared}"
                f" WHERE {expired} AND lost + 1 < ?",
                (int(Status.INTERNAL_ERROR), now, lost_limit),
            ).rowcount
            changed += conn.execute(
                f"UPDATE anywork_jobs SET state = 'failed', status = ?, error = 'worker lost',"
                f" finished_at = ?, expires_at = ? + result_ttl, lost = lost + 1, {cleared}"
                f" WHERE {expired}",
                (int(Status.INTERNAL_ERROR), now, now, now),
            ).rowcount
            wf_reaped(conn, steps)
            return changed

        changed = await self._transaction(update)
        if changed:
            self._notifier.notify()
        return changed

    async def settle(self, outcome: Outcome, *, only_expired: bool = False) -> JobRecord | None:
        """Apply ``outcome`` to a WAITING job in one transaction (see
        :meth:`work.stores.Store.settle`)."""
        o = outcome
        scheduled = _ts(o.scheduled_for) if o.state is JobState.SCHEDULED else None
        succeeded = o.state is JobState.SUCCEEDED

        def update(conn: sqlite3.Connection) -> JobRecord | None:
            now = self.clock.time()
            expired = " AND deadline <= ?" if only_expired else ""
            row = conn.execute(
                "UPDATE anywork_jobs SET state = ?, status = ?,"
                " result = CASE WHEN ? THEN ? ELSE result END, error = ?, deadline = NULL,"
                " scheduled_for = ?, due_at = COALESCE(?, enqueued_at), finished_at = ?,"
                " expires_at = ? + result_ttl"
                f" WHERE id = ? AND state = 'waiting'{expired} RETURNING {_READ_COLUMNS}",
                (
                    o.state.value,
                    int(o.status),
                    succeeded,
                    json.dumps(o.result) if succeeded else None,
                    o.error,
                    scheduled,
                    scheduled,
                    now if o.state.is_final else None,
                    now if o.state.is_final else None,
                    o.id,
                    *((now,) if only_expired else ()),
                ),
            ).fetchone()
            if row is not None:
                if o.state.is_final:  # a workflow step: what follows it, in this transaction
                    result = json.dumps(o.result) if succeeded else None
                    woke[0] = wf_final(conn, o.id, o.state, int(o.status), result, o.error)
                return _record(row)
            if not only_expired:
                _refuse(conn, o.id, self.url)
            return None

        woke = [False]
        settled = await self._transaction(update)
        if settled is not None and (not settled.state.is_final or woke[0]):
            self._notifier.notify()
        return settled

    async def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Push a WAITING job's deadline (see :meth:`work.stores.Store.heartbeat`)."""

        def update(conn: sqlite3.Connection) -> JobRecord:
            row = conn.execute(
                "UPDATE anywork_jobs SET deadline = ? + COALESCE(?, deferred_ttl, 0)"
                f" WHERE id = ? AND state = 'waiting' RETURNING {_READ_COLUMNS}",
                (self.clock.time(), ttl, id),
            ).fetchone()
            if row is None:
                _refuse(conn, id, self.url)
            return _record(row)

        return await self._transaction(update)

    async def overdue(self, *, limit: int = 100) -> builtins.list[JobRecord]:
        """Return up to ``limit`` WAITING jobs whose deadline has passed, earliest first."""

        def query(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(
                f"SELECT {_READ_COLUMNS} FROM anywork_jobs INDEXED BY anywork_jobs_waiting"
                " WHERE state = 'waiting' AND deadline <= ? ORDER BY deadline, seq LIMIT ?",
                (self.clock.time(), max(limit, 0)),
            )
            return [_record(row) for row in rows]

        return await self._run(query)

    async def setdefault_setting(self, key: str, value: str) -> str:
        """Return the setting ``key``, storing ``value`` first if there is none."""

        def update(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO anywork_settings (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (key, value),
            )
            (stored,) = conn.execute(
                "SELECT value FROM anywork_settings WHERE key = ?", (key,)
            ).fetchone()
            return str(stored)

        return await self._transaction(update)

    async def get_setting(self, key: str) -> str | None:
        """Return the setting ``key``, or None."""

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM anywork_settings WHERE key = ?", (key,))
            found = row.fetchone()
            return None if found is None else str(found[0])

        return await self._run(query)

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` as the setting ``key`` (replacing any)."""

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO anywork_settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._transaction(update)

    # -- retention ------------------------------------------------------------------------------

    async def purge(
        self, *, older_than: datetime, states: Sequence[JobState], limit: int | None = None
    ) -> int:
        """Delete finished jobs in ``states`` that finished before ``older_than``, oldest
        first, in transactions of at most 500 (see :meth:`work.stores.Store.purge`)."""
        wanted = [s.value for s in states if s.is_final]
        if not wanted or (limit is not None and limit <= 0):
            return 0
        sql = (
            "DELETE FROM anywork_jobs WHERE seq IN (SELECT seq FROM anywork_jobs"
            f" WHERE {_DONE} AND state IN ({_marks(len(wanted))}) AND finished_at < ?"
            " LIMIT ?)"
        )
        cutoff = older_than.timestamp()
        total = 0
        while limit is None or total < limit:
            batch = _PURGE_BATCH if limit is None else min(_PURGE_BATCH, limit - total)

            def delete(conn: sqlite3.Connection, batch: int = batch) -> int:
                gone = conn.execute(sql + WF_OWNER, (*wanted, cutoff, batch)).fetchall()
                wf_purged(conn, gone)  # a finished workflow goes with its last job
                return len(gone)

            deleted = await self._transaction(delete)
            total += deleted
            if deleted < batch:
                break
        return total

    async def expire(self, queues: Sequence[str], *, result_ttl: float, limit: int) -> int:
        """Delete up to ``limit`` finished jobs whose time is up, in one transaction (see
        :meth:`work.stores.Store.expire`): both searches walk partial indexes of finished
        jobs from the oldest, so they cost what they delete, not what is kept."""
        if limit <= 0:
            return 0
        queues = list(queues)

        def delete(conn: sqlite3.Connection) -> int:
            now = self.clock.time()
            gone = conn.execute(
                "DELETE FROM anywork_jobs WHERE seq IN (SELECT seq FROM anywork_jobs"
                " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)" + WF_OWNER,
                (now, limit),
            ).fetchall()
            if len(gone) < limit and queues:
                gone += conn.execute(
                    "DELETE FROM anywork_jobs WHERE seq IN (SELECT seq FROM anywork_jobs"
                    f" WHERE {_DONE} AND finished_at <= ? AND result_ttl IS NULL"
                    f" AND queue IN ({_marks(len(queues))}) LIMIT ?)" + WF_OWNER,
                    (now - result_ttl, *queues, limit - len(gone)),
                ).fetchall()
            wf_purged(conn, gone)  # a finished workflow goes with its last job
            return len(gone)

        return await self._transaction(delete)

    async def retry(self, id: str) -> JobRecord | None:
        """Queue a FAILED or CANCELLED job again, due now (see :meth:`work.stores.Store.retry`).

        Raises:
            ValueError: the job is in another state, or its unique key is taken.
        """

        def update(conn: sqlite3.Connection) -> JobRecord | None:
            now = self.clock.time()
            row = conn.execute(
                "SELECT state, queue, unique_key FROM anywork_jobs WHERE id = ?", (id,)
            ).fetchone()
            if row is None:
                return None
            if row["state"] not in ("failed", "cancelled"):
                raise ValueError(
                    f"job {id!r} is {row['state']}: only a failed or cancelled job can be retried"
                )
            if row["unique_key"] is not None:
                other = conn.execute(
                    f"SELECT id FROM anywork_jobs WHERE queue = ? AND unique_key = ?"
                    f" AND state IN {_ACTIVE}",
                    (row["queue"], row["unique_key"]),
                ).fetchone()
                if other is not None:
                    raise ValueError(
                        f"job {other['id']!r} holds unique_key {row['unique_key']!r} in queue "
                        f"{row['queue']!r} and is not finished"
                    )
            got = conn.execute(
                "UPDATE anywork_jobs SET state = 'queued', status = ?, attempts = 0,"
                " deferrals = 0, lost = 0, result = NULL, error = NULL, scheduled_for = NULL,"
                " started_at = NULL, finished_at = NULL, expires_at = NULL,"
                " unknown_since = NULL, enqueued_at = ?, due_at = ?"
                f" WHERE id = ? RETURNING {_READ_COLUMNS}",
                (int(Status.UNKNOWN), now, now, id),
            ).fetchone()
            if row["state"] == "failed":
                wf_retried(conn, id)  # the failed step of a FAILED workflow: it runs again
            return _record(got)

        record = await self._transaction(update)
        if record is not None:
            self._notifier.notify()
        return record

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job in ``queues`` is ready, or after ``timeout`` seconds.

        Polls every ``poll_interval`` seconds; an add through this store object wakes it at once.
        """
        queues = list(queues)
        sql = (
            f"SELECT 1 FROM anywork_jobs WHERE queue IN ({_marks(len(queues))})"
            f" AND {_CLAIMABLE} LIMIT 1"
        )

        def ready(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, (*queues, self.clock.time())).fetchone() is not None

        if self.clock.virtual:
            await self._wait_virtual(queues, timeout)
            return
        deadline = anyio.current_time() + timeout
        while not await self._run(ready):
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            await self._notifier.wait(min(self.poll_interval, remaining))

    async def _wait_virtual(self, queues: builtins.list[str], timeout: float) -> None:
        """wait_for_work on a virtual clock: one look, then a wait that makes the clock stop
        at the next due time or WAITING deadline (time stands still between its steps)."""
        marks = _marks(len(queues))
        sql = (
            f"SELECT min(at) FROM (SELECT min(due_at) AS at FROM anywork_jobs WHERE queue IN"
            f" ({marks}) AND state IN ('queued', 'scheduled') UNION ALL"
            " SELECT min(deadline) FROM anywork_jobs INDEXED BY anywork_jobs_waiting"
            " WHERE state = 'waiting')"
        )

        def next_due(conn: sqlite3.Connection) -> float | None:
            at: float | None = conn.execute(sql, queues).fetchone()[0]
            return at

        with self._notifier.listen() as event:
            at = await self._run(next_due)
            now = self.clock.time()
            if at is not None and at <= now:
                return
            if at is not None:
                self.clock.wake_at(at)  # advance stops there, and this wait ends
                timeout = min(timeout, at - now)
            await self.clock.wait(event, timeout)

    # -- schedules ------------------------------------------------------------------------------

    async def get_schedule(self, id: str) -> ScheduleRow | None:
        """Return the schedule's row, or None."""

        def query(conn: sqlite3.Connection) -> ScheduleRow | None:
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM anywork_schedules WHERE id = ?", (id,)
            ).fetchone()
            return _schedule_row(row) if row is not None else None

        return await self._run(query)

    async def list_schedules(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[ScheduleRow]:
        """Return up to ``limit`` schedules ordered by id (see
        :meth:`work.stores.Store.list_schedules`)."""
        where: list[str] = []
        params: list[Any] = []
        if prefix:
            where.append("substr(id, 1, length(?)) = ?")
            params += [prefix, prefix]
        if enabled is not None:
            where.append("enabled = ?")
            params.append(int(enabled))
        if after is not None:
            where.append("id > ?")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_SCHEDULE_COLUMNS} FROM anywork_schedules {clause} ORDER BY id LIMIT ?"
        params.append(max(limit, 0))

        def query(conn: sqlite3.Connection) -> list[ScheduleRow]:
            return [_schedule_row(row) for row in conn.execute(sql, params)]

        return await self._run(query)

    async def save_schedule(self, row: ScheduleRow, *, expected: int | None) -> bool:
        """Write ``row`` if the stored version is ``expected`` (None: only a new id)."""
        params = _schedule_params(row)

        def write(conn: sqlite3.Connection) -> bool:
            if expected is None:
                sql = (
                    f"INSERT INTO anywork_schedules ({_SCHEDULE_COLUMNS})"
                    f" VALUES ({_marks(9)}) ON CONFLICT DO NOTHING"
                )
                return conn.execute(sql, params).rowcount == 1
            sql = (
                "UPDATE anywork_schedules SET spec = ?, enabled = ?, next_fire_at = ?,"
                " anchor = ?, last_fire_at = ?, created_at = ?, updated_at = ?, version = ?"
                " WHERE id = ? AND version = ?"
            )
            return conn.execute(sql, (*params[1:], params[0], expected)).rowcount == 1

        return await self._transaction(write)

    async def delete_schedule(self, id: str) -> bool:
        """Delete the schedule (its executions stay); False if it did not exist."""

        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM anywork_schedules WHERE id = ?", (id,)).rowcount > 0

        return await self._transaction(write)

    async def fire_schedules(
        self, now: datetime, plan: Plan, *, limit: int
    ) -> builtins.list[Fired]:
        """Fire due schedules in one ``BEGIN IMMEDIATE`` transaction: the write lock makes
        each due schedule planned and applied by one process (see
        :meth:`work.stores.Store.fire_schedules`)."""

        def write(conn: sqlite3.Connection) -> list[Fired]:
            rows = conn.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM anywork_schedules"
                " WHERE enabled = 1 AND next_fire_at IS NOT NULL AND next_fire_at <= ?"
                " ORDER BY next_fire_at, id LIMIT ?",
                (now.timestamp(), limit),
            ).fetchall()
            # The write lock is held since the SELECT: nothing changed these rows meanwhile,
            # so every firing applies, and the statements go in batches.
            firings = [plan(_schedule_row(row)) for row in rows]
            conn.executemany(
                "UPDATE anywork_schedules SET next_fire_at = ?,"
                " last_fire_at = COALESCE(?, last_fire_at), version = version + 1"
                " WHERE id = ? AND version = ?",
                [
                    (_ts(f.next_fire_at), _ts(f.last_fire_at), f.schedule_id, f.version)
                    for f in firings
                ],
            )
            jobs = {f.job.id: f.job for f in firings if f.job is not None}
            taken: set[str] = set()
            ids = list(jobs)
            for chunk in _chunks(ids):
                sql = f"SELECT id FROM anywork_jobs WHERE id IN ({_marks(len(chunk))})"
                taken.update(id for (id,) in conn.execute(sql, chunk))
            records: dict[str, JobRecord] = {}
            params: list[tuple[Any, ...]] = []
            for f in firings:
                if f.job is None or f.job.id in taken:
                    continue
                record = f.job
                if (
                    f.exclusive
                    and conn.execute(
                        f"SELECT 1 FROM anywork_jobs WHERE schedule_id = ?"
                        f" AND state IN {_UNFINISHED} LIMIT 1",
                        (f.schedule_id,),
                    ).fetchone()
                ):
                    record = conflict_record(record, now)
                records[record.id] = record
                params.append(_insert_params(record, now))
            conn.executemany(_INSERT, params)
            stored = {
                p[0]: _stored(records[p[0]], p, args)
                for p, args in zip(params, _loads_all([p[_ARGS] for p in params]), strict=True)
            }
            return [Fired(f, stored.get(f.job.id) if f.job is not None else None) for f in firings]

        fired = await self._transaction(write)
        if any(f.record is not None for f in fired):
            self._notifier.notify()
        return fired

    async def add_execution(self, record: JobRecord, *, exclusive: bool) -> JobRecord:
        """Add one execution off the schedule's cadence (409 if exclusive and one is
        unfinished)."""

        def write(conn: sqlite3.Connection) -> JobRecord:
            return _add_execution(conn, record, exclusive=exclusive, now=self.clock.now())[0]

        stored = await self._transaction(write)
        self._notifier.notify()
        return stored

    async def executions(
        self,
        schedule_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Return the schedule's jobs, newest first; ``before`` is the previous page's last
        id."""
        where = ["schedule_id = ?"]
        params: list[Any] = [schedule_id]
        if state is not None:
            where.append("state = ?")
            params.append(str(state))
        if before is not None:
            where.append("seq < (SELECT seq FROM anywork_jobs WHERE id = ?)")
            params.append(before)
        sql = (
            f"SELECT {_READ_COLUMNS} FROM anywork_jobs WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT ?"
        )
        params.append(max(limit, 0))

        def query(conn: sqlite3.Connection) -> list[JobRecord]:
            return [_record(row) for row in conn.execute(sql, params)]

        return await self._run(query)

    async def next_schedule_due(self) -> datetime | None:
        """Return the earliest next fire of an enabled schedule, or None."""

        def query(conn: sqlite3.Connection) -> datetime | None:
            (due,) = conn.execute(
                "SELECT MIN(next_fire_at) FROM anywork_schedules"
                " WHERE enabled = 1 AND next_fire_at IS NOT NULL"
            ).fetchone()
            return _dt(due)

        return await self._run(query)

    # -- events -------------------------------------------------------------------------------

    async def set_progress(self, owner: str, progress: Mapping[str, dict[str, Any]]) -> None:
        """Set the progress of jobs RUNNING under ``owner``'s lease, in one transaction; a
        trigger records a PROGRESS event for each."""
        if not progress:
            return
        params = [(json.dumps(value), id, owner) for id, value in progress.items()]

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE anywork_jobs SET progress = ? WHERE id = ? AND state = 'running'"
                " AND owner = ?",
                params,
            )

        await self._transaction(update)

    # -- worker registry ------------------------------------------------------------------

    # The registry's table is created on first use (not by the schema migration): it is
    # additive and independent of the jobs' schema version.
    _WORKERS_TABLE = (
        "CREATE TABLE IF NOT EXISTS anywork_workers (id TEXT PRIMARY KEY, data TEXT NOT NULL)"
    )

    async def record_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a serving worker's registry entry."""
        data = info.to_json()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(self._WORKERS_TABLE)
            conn.execute(
                "INSERT OR REPLACE INTO anywork_workers (id, data) VALUES (?, ?)", (info.id, data)
            )

        await self._transaction(write)

    async def workers(self) -> builtins.list[WorkerInfo]:
        """Return every registered worker, by ``started_at``."""

        def read(conn: sqlite3.Connection) -> builtins.list[WorkerInfo]:
            conn.execute(self._WORKERS_TABLE)
            rows = conn.execute("SELECT data FROM anywork_workers").fetchall()
            return [WorkerInfo.from_json(row[0]) for row in rows]

        found = await self._run(read)
        return sorted(found, key=lambda w: (w.started_at, w.id))

    async def remove_worker(self, id: str) -> None:
        """Delete a worker's registry entry."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(self._WORKERS_TABLE)
            conn.execute("DELETE FROM anywork_workers WHERE id = ?", (id,))

        await self._transaction(write)

    @asynccontextmanager
    async def events(
        self,
        *,
        kinds: Iterable[JobEventKind] | None = None,
        queues: Iterable[str] | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> AsyncIterator[EventStream]:
        """Subscribe to job events (see :meth:`work.stores.Store.events`).

        While anything is subscribed, one watcher thread per store object registers it in
        ``anywork_event_listeners`` (renewed every 20 s, lapsing after 60 s), checks ``PRAGMA
        data_version`` every 50 ms on a connection of its own and reads the new rows of
        ``anywork_events`` when another connection (any process's, this store's included)
        committed. Triggers fill that table with every change while some registration holds
        (none: no event is written, so an unwatched store pays nothing); the last 10 000 are
        kept, and a subscriber more than that behind is told how many it lost.
        """
        kind_set, queue_set = check_event_filters(kinds, queues)
        stream = self._hub.open(kinds=kind_set, queues=queue_set, buffer=buffer)
        with stream:
            await anyio.to_thread.run_sync(self._ensure_watcher)
            yield stream

    def _ensure_watcher(self) -> None:
        with self._watcher_lock:
            if self._watcher is not None:
                return
            if self._conn is None:
                raise RuntimeError(f"{self!r} is not open: use `async with store:` first")
            # A private :memory: database has no second connection: read through ours.
            read = self._call if self.path == ":memory:" else None
            self._watcher = _Watcher(
                self.path, self._hub, read, self.busy_timeout, self._watcher_may_end
            )
            self._watcher.start()

    def _watcher_may_end(self, watcher: _Watcher) -> bool:
        """The watcher's question once nothing has been subscribed for a while (kept a second
        so that back-to-back ``Queue.wait`` calls share it): True, and forgotten, unless a
        subscriber came meanwhile (a new watcher starts for the next one)."""
        with self._watcher_lock:
            if self._hub.subscribed:
                return False
            if self._watcher is watcher:
                self._watcher = None
            return True


def _refuse(conn: sqlite3.Connection, id: str, url: str) -> NoReturn:
    """Raise why a WAITING-only update of job ``id`` changed nothing."""
    row = conn.execute("SELECT state FROM anywork_jobs WHERE id = ?", (id,)).fetchone()
    if row is None:
        raise LookupError(f"no job with id {id!r} in {url}")
    raise JobStateError(id, row["state"])


def _headers_error(headers_json: str) -> str | None:
    error = _decode_error(headers_json)
    return error.replace("args", "headers") if error is not None else None


_EVENT_COLUMNS = "seq, kind, job_id, queue, handler, status, attempt, at, progress"


class _Watcher(threading.Thread):
    """Reads new rows of ``anywork_events`` whenever the database changed, and publishes them
    to the store's hub, while the hub has subscribers."""

    def __init__(
        self,
        path: str,
        hub: EventHub,
        read: Callable[[Callable[[sqlite3.Connection], Any]], Any] | None,
        busy_timeout: float,
        may_end: Callable[[_Watcher], bool],
    ) -> None:
        super().__init__(name=f"anywork sqlite events {path}", daemon=True)
        self._hub = hub
        self._may_end = may_end
        self._stop_event = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._id = uuid.uuid4().hex
        if read is None:
            conn = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn = conn

            def read_own(fn: Callable[[sqlite3.Connection], Any]) -> Any:
                return fn(conn)

            read = read_own
        self._read = read
        # Registered first, so every change after the next line is recorded, and then
        # subscribed from the last event recorded now.
        self._renewed = time.monotonic()
        self._read(self._register)
        self._last = self._read(_max_event_seq)

    def _register(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        conn.execute("DELETE FROM anywork_event_listeners WHERE until < ?", (now,))
        conn.execute(
            "INSERT OR REPLACE INTO anywork_event_listeners (id, until) VALUES (?, ?)",
            (self._id, now + _LISTEN_LEASE),
        )

    def _unregister(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM anywork_event_listeners WHERE id = ?", (self._id,))

    def _renew(self) -> None:
        if time.monotonic() - self._renewed < _LISTEN_LEASE / 3:
            return
        if time.monotonic() - self._renewed >= _LISTEN_LEASE:
            self._hub.lose()  # stalled past the registration: changes may have gone unrecorded
        try:
            self._read(self._register)
        except sqlite3.OperationalError:
            return  # locked for longer than the busy timeout: try again on the next round
        self._renewed = time.monotonic()

    def stop_soon(self) -> None:
        """Ask the thread to end (it does within 50 ms)."""
        self._stop_event.set()

    def run(self) -> None:
        version = None
        idle_since: float | None = None
        try:
            while not self._stop_event.is_set():
                if self._hub.subscribed:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > _WATCHER_LINGER and self._may_end(self):
                    return
                if self._conn is not None:
                    current = self._conn.execute("PRAGMA data_version").fetchone()[0]
                    changed, version = current != version, current
                else:
                    changed = True  # a :memory: database: no other connection to detect
                if changed:
                    self._publish_new()
                self._renew()
                self._stop_event.wait(_WATCH_INTERVAL)
        except sqlite3.Error:
            self._hub.lose()  # the file went away or broke: say so, then stop
        finally:
            with contextlib.suppress(sqlite3.Error, RuntimeError):
                self._read(self._unregister)
            if self._conn is not None:
                self._conn.close()

    def _publish_new(self) -> None:
        last = self._last

        def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            sql = f"SELECT {_EVENT_COLUMNS} FROM anywork_events WHERE seq > ? ORDER BY seq"
            return conn.execute(sql, (last,)).fetchall()

        rows = self._read(query)
        if not rows:
            return
        if rows[0][0] > last + 1:
            # Pruned before we read them (more than 10 000 behind): they are lost.
            self._hub.lose(rows[0][0] - last - 1)
        self._last = rows[-1][0]
        self._hub.publish(_row_event(row) for row in rows)


def _max_event_seq(conn: sqlite3.Connection) -> int:
    (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM anywork_events").fetchone()
    return int(seq)


def _row_event(row: tuple[Any, ...]) -> JobEvent:
    _, kind, job_id, queue, handler, status, attempt, at, progress = row
    return event_from_values(kind, job_id, queue, handler, status, attempt, at, _loads(progress))


def _claimed(row: sqlite3.Row) -> Claimed:
    """A claimed row as a Claimed. A row that cannot be turned into a record (a time out of
    range, an unknown state, a payload that is not text) comes back alone with a
    ``decode_error`` naming what failed, never failing the rest of its batch."""
    try:
        record = _record(row, strict=True)
        error = _decode_error(row["args"]) or _headers_error(row["headers"])
        unknown_since = _dt(row["unknown_since"])
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        return Claimed(_bare_record(row), f"the stored job could not be decoded: {exc}")
    return Claimed(record, error, unknown_since)


def _claimed_decoded_once(row: sqlite3.Row) -> Claimed:
    """As :func:`_claimed`, parsing the args and headers once: their JSON is parsed again,
    to name what is wrong, only when it did not give an object."""
    try:
        record = _record(row, strict=True)
        error = None
        if not record.args:
            error = _decode_error(row["args"])
        if error is None and not record.headers:
            error = _headers_error(row["headers"])
        unknown_since = _dt(row["unknown_since"])
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        return Claimed(_bare_record(row), f"the stored job could not be decoded: {exc}")
    return Claimed(record, error, unknown_since)


def _bare_record(row: sqlite3.Row) -> JobRecord:
    """The little of a broken row that the worker needs to fail it (id, handler, queue)."""
    return JobRecord(
        id=str(row["id"]),
        handler=str(row["handler"]),
        queue=str(row["queue"]),
        state=JobState.RUNNING,
        attempts=int(row["attempts"]) if isinstance(row["attempts"], int) else 1,
    )
