"""How a ``JobRecord`` maps to and from a row of the PostgreSQL store's jobs table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .._core.status import Status
from ._base import Claimed, JobRecord, JobState

__all__ = [
    "claimed_row",
    "decode_row",
    "dumps",
    "insert_object",
    "insert_values",
    "loads_all",
    "loads_object",
    "status_of",
    "stored_record",
    "utc",
]

# json.dumps with options builds a new encoder each call: build it once.
dumps = json.JSONEncoder(separators=(",", ":")).encode


def loads_object(raw: Any, what: str) -> tuple[dict[str, Any], str | None]:
    """Decode a JSON object column; on failure return ``{}`` and why."""
    if raw is None:
        return {}, None
    try:
        value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except ValueError as exc:
        return {}, f"job {what} are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return {}, f"job {what} must be a JSON object, got {type(value).__name__}"
    return value, None


def status_of(code: Any) -> Status:
    """The Status a status column holds; UNKNOWN for anything unreadable."""
    try:
        return Status.coerce(int(code))
    except (TypeError, ValueError):
        return Status.UNKNOWN


def decode_row(row: Any) -> tuple[JobRecord, str | None]:
    """Turn a row into a record, and say why its payload could not be decoded (or None)."""
    args, args_error = loads_object(row["args"], "args")
    headers, headers_error = loads_object(row["headers"], "headers")
    if headers_error is None and not all(isinstance(v, str) for v in headers.values()):
        headers, headers_error = {}, "job headers must map names to strings"
    retry: dict[str, Any] | None = None
    if row["retry"] is not None:
        retry, _ = loads_object(row["retry"], "retry settings")
    result = json.loads(row["result"]) if row["result"] is not None else None
    record = JobRecord(
        id=row["id"],
        handler=row["handler"],
        args=args,
        queue=row["queue"],
        headers=headers,
        priority=row["priority"],
        state=JobState(row["state"]),
        status=status_of(row["status"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        result=result,
        error=row["error"],
        unique_key=row["unique_key"],
        enqueued_at=row["enqueued_at"],
        scheduled_for=row["scheduled_for"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        timeout=row["timeout"],
        retry=retry,
        deferrals=row["deferrals"],
        deadline=row["deadline"],
        deferred_ttl=row["deferred_ttl"],
        progress=_progress(row),
        result_ttl=row["result_ttl"],
        schedule_id=row["schedule_id"],
    )
    return record, args_error or headers_error


def _progress(row: Any) -> dict[str, Any] | None:
    """The progress column (a row from before schema version 2 has none)."""
    raw = row.get("progress")
    if raw is None:
        return None
    value, _ = loads_object(raw, "progress")
    return value


_TIMES = ("enqueued_at", "scheduled_for", "started_at", "finished_at")


def claimed_row(row: Any) -> Claimed:
    """A claimed row as a Claimed. A row that cannot be turned into a record (a time stored
    as +-infinity, which asyncpg reads as a naive datetime; a result that is not JSON …) comes
    back alone with a ``decode_error`` naming what failed, never failing its whole batch."""
    try:
        for name in _TIMES:
            when = row[name]
            if when is not None and when.tzinfo is None:
                raise ValueError(f"job {name} is out of range ({when.year:04d}: +-infinity)")
        record, error = decode_row(row)
        return Claimed(record, error, row["unknown_since"])
    except Exception as exc:  # any broken row, whatever broke: fail it alone
        bare = JobRecord(
            id=str(row["id"]),
            handler=str(row["handler"]),
            queue=str(row["queue"]),
            state=JobState.RUNNING,
            attempts=row["attempts"] if isinstance(row["attempts"], int) else 1,
        )
        return Claimed(bare, f"the stored job could not be decoded: {exc}")


def utc(when: datetime) -> datetime:
    """``when`` in UTC, as the server hands back a timestamptz."""
    return when if when.tzinfo is UTC else when.astimezone(UTC)


def insert_values(rec: JobRecord, args: str, enqueued: datetime) -> tuple[Any, ...]:
    """The parameters of ``_insert_one_sql`` for ``rec`` (JSON columns as JSON text)."""
    return (
        rec.id,
        rec.handler,
        rec.queue,
        args,
        dumps(rec.headers) if rec.headers else "{}",
        rec.priority,
        rec.state.value,
        int(rec.status),
        rec.attempts,
        rec.max_attempts,
        dumps(rec.result) if rec.result is not None else None,
        rec.error,
        rec.unique_key,
        enqueued,
        rec.scheduled_for,
        rec.started_at,
        rec.finished_at,
        rec.timeout,
        dumps(rec.retry) if rec.retry is not None else None,
        rec.deferrals,
        rec.result_ttl,
        rec.schedule_id,
    )


def insert_object(rec: JobRecord, args: str, enqueued: datetime) -> dict[str, Any]:
    """One job of a batch insert as a JSON object, leaving out NULLs and the columns'
    defaults (``_insert_sql`` puts them back)."""
    out: dict[str, Any] = {
        "id": rec.id,
        "handler": rec.handler,
        "queue": rec.queue,
        "args": args,  # the args column holds JSON text
        "state": rec.state.value,
        "enqueued_at": enqueued.isoformat(),
    }
    if rec.headers:
        out["headers"] = rec.headers  # nested as JSON, not as text
    if rec.priority != 0:
        out["priority"] = rec.priority
    if rec.status != -1:
        out["status"] = int(rec.status)
    if rec.attempts != 0:
        out["attempts"] = rec.attempts
    if rec.max_attempts != 1:
        out["max_attempts"] = rec.max_attempts
    if rec.result is not None:
        out["result"] = rec.result
    if rec.error is not None:
        out["error"] = rec.error
    if rec.unique_key is not None:
        out["unique_key"] = rec.unique_key
    if rec.scheduled_for is not None:
        out["scheduled_for"] = rec.scheduled_for.isoformat()
    if rec.started_at is not None:
        out["started_at"] = rec.started_at.isoformat()
    if rec.finished_at is not None:
        out["finished_at"] = rec.finished_at.isoformat()
    if rec.timeout is not None:
        out["timeout"] = rec.timeout
    if rec.retry is not None:
        out["retry"] = rec.retry
    if rec.deferrals != 0:
        out["deferrals"] = rec.deferrals
    if rec.result_ttl is not None:
        out["result_ttl"] = rec.result_ttl
    if rec.schedule_id is not None:
        out["schedule_id"] = rec.schedule_id
    return out


def _json_copy(value: Any) -> Any:
    """``value`` through JSON (None stays None): as a JSON column reads back, shared with no
    one."""
    return None if value is None else json.loads(dumps(value))


def loads_all(texts: Sequence[str]) -> list[Any]:
    """Decode JSON texts (each one JSON value) in one call: a quarter of the cost of one
    ``json.loads`` each."""
    values: list[Any] = json.loads("[" + ",".join(texts) + "]")
    return values


def stored_record(rec: JobRecord, args: dict[str, Any], enqueued: datetime) -> JobRecord:
    """The record :meth:`PostgresStore.get` reads back once ``rec`` is inserted, made without
    a query from ``args`` decoded from the JSON text stored; other JSON values are copied
    through JSON, times are in UTC (a fresh snapshot: no mutable value is shared with
    ``rec``)."""
    # object.__setattr__ on a new object rather than JobRecord(...) or replace(): half the
    # cost. Every field of JobRecord is set (a missing one fails the conformance round trip).
    new: JobRecord = object.__new__(JobRecord)
    put = object.__setattr__
    put(new, "id", rec.id)
    put(new, "handler", rec.handler)
    put(new, "args", args)
    put(new, "queue", rec.queue)
    put(new, "headers", dict(rec.headers))
    put(new, "priority", rec.priority)
    put(new, "state", rec.state)
    put(new, "status", rec.status)
    put(new, "attempts", rec.attempts)
    put(new, "max_attempts", rec.max_attempts)
    put(new, "result", _json_copy(rec.result))
    put(new, "error", rec.error)
    put(new, "unique_key", rec.unique_key)
    put(new, "enqueued_at", enqueued)
    put(new, "scheduled_for", rec.scheduled_for and utc(rec.scheduled_for))
    put(new, "started_at", rec.started_at and utc(rec.started_at))
    put(new, "finished_at", rec.finished_at and utc(rec.finished_at))
    put(new, "timeout", None if rec.timeout is None else float(rec.timeout))
    put(new, "retry", _json_copy(rec.retry))
    put(new, "deferrals", rec.deferrals)
    # A job is added QUEUED or SCHEDULED: the WAITING columns start empty (add leaves them out).
    put(new, "deadline", None)
    put(new, "deferred_ttl", None)
    put(new, "progress", None)  # add() does not store progress
    put(new, "result_ttl", None if rec.result_ttl is None else float(rec.result_ttl))
    put(new, "schedule_id", rec.schedule_id)
    return new
