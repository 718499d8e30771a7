"""How a job goes into the PostgreSQL store: the insert trigger (schema 8), the one-trip SQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

__all__ = ["INSERT_COLUMNS", "insert_literal", "migration_v8", "quote_dollar"]

INSERT_COLUMNS = """id, handler, queue, args, headers, priority, state, status, attempts,
    max_attempts, result, error, unique_key, enqueued_at, scheduled_for, started_at,
    finished_at, timeout, retry, deferrals, result_ttl, schedule_id"""
"""The columns an insert of a job writes, in the order of ``insert_values``."""


def migration_v8(s: str, work_channel: str, events_channel: str) -> list[str]:
    """Schema version 8: one row trigger for inserted jobs instead of two (version 3's NOTIFY
    of the event, version 7's event log) and the work NOTIFY that ``add`` sent in its own
    statement.

    For each inserted job it sends the work NOTIFY when the job is claimable (so any
    writer's inserts wake workers), the job's event (the payload of version 3, or
    ``["lost"]`` past NOTIFY's 8000 bytes), and logs the event while a polling reader is
    registered (as version 7 did): one trigger call per job instead of two, the payload built
    once. (A statement-level trigger with a transition table measured cheaper per job for
    batches of 500 but ~30 µs dearer for one job, the common call.)

    Args:
        s: the schema, quoted.
        work_channel: the work NOTIFY channel, as a quoted literal.
        events_channel: the events NOTIFY channel, as a quoted literal.
    """
    kind = """CASE NEW.state WHEN 'running' THEN 'started'
        WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled' ELSE 'enqueued' END"""
    return [
        f"""CREATE OR REPLACE FUNCTION {s}.jobs_inserted() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
            DECLARE
                payload text := json_build_array({kind}, NEW.id, NEW.queue, NEW.handler,
                    NEW.status, NEW.attempts, extract(epoch FROM clock_timestamp()),
                    NULL)::text;
            BEGIN
                IF NEW.state IN ('queued', 'scheduled') THEN
                    PERFORM pg_notify({work_channel}, NEW.queue);
                END IF;
                -- A NOTIFY payload must stay under 8000 bytes: a huge id or handler name
                -- becomes a LOST event rather than a failed transaction.
                IF octet_length(payload) < 8000 THEN
                    PERFORM pg_notify({events_channel}, payload);
                ELSE
                    PERFORM pg_notify({events_channel}, '["lost"]');
                END IF;
                IF EXISTS (SELECT 1 FROM {s}.event_readers WHERE until > now()) THEN
                    INSERT INTO {s}.event_log (payload) VALUES (payload);
                END IF;
                RETURN NULL;
            END
            $fn$""",
        f"DROP TRIGGER IF EXISTS jobs_event_insert ON {s}.jobs",
        f"DROP TRIGGER IF EXISTS jobs_log_insert ON {s}.jobs",
        f"DROP TRIGGER IF EXISTS jobs_inserted ON {s}.jobs",
        f"""CREATE TRIGGER jobs_inserted AFTER INSERT ON {s}.jobs
            FOR EACH ROW EXECUTE FUNCTION {s}.jobs_inserted()""",
    ]


def quote_dollar(text: str) -> str | None:
    """``text`` as a dollar-quoted SQL literal, or None when it cannot travel in a query
    text (a NUL character ends the query message).

    The tag is one ``text`` does not contain, so the literal ends at its closing tag and
    nowhere else: no character of ``text`` is escaped or interpreted.
    """
    if "\x00" in text:
        return None
    tag = "q"
    n = 0
    while "$" + tag in text:
        n += 1
        tag = f"q{n}"
    return f"${tag}${text}${tag}$"


def _text(value: str | None) -> str | None:
    return "NULL" if value is None else quote_dollar(value)


def _int(value: int) -> str:
    return str(int(value))


def _float(value: float | None) -> str | None:
    if value is None:
        return "NULL"
    number = float(value)
    # repr gives the shortest text that reads back as the same double; inf and nan do not
    # read as numbers: the caller binds those.
    return f"({number!r}::float8)" if math.isfinite(number) else None


def _time(value: datetime | None) -> str | None:
    if value is None:
        return "NULL"
    if value.tzinfo is None:
        return None  # a naive time: bound, it means what asyncpg makes of it
    # isoformat of an aware datetime: digits, '-', ':', 'T', '.' and '+' only.
    return f"'{value.astimezone(UTC).isoformat()}'::timestamptz"


def insert_literal(table: str, values: tuple[Any, ...]) -> str | None:
    """The insert of one job as a query with no parameters (the simple query protocol: one
    round trip with no prepared statement, as a transaction pooler needs), or None when a
    value cannot be written as a literal (the caller then binds the values).

    Text travels dollar-quoted (:func:`quote_dollar`), numbers through ``int`` and
    ``float`` (``repr``), times as the ISO text of aware datetimes: nothing is escaped by
    hand. The statement's command status (``INSERT 0 1`` or ``INSERT 0 0``) says whether
    the job went in.

    Args:
        table: the jobs table, schema-qualified and quoted.
        values: :func:`work.stores._postgres_rows.insert_values` of the job (in the order
            of ``INSERT_COLUMNS``; JSON columns as JSON text).
    """
    (id, handler, queue, args, headers, priority, state, status, attempts, max_attempts,
     result, error, unique_key, enqueued_at, scheduled_for, started_at, finished_at, timeout,
     retry, deferrals, result_ttl, schedule_id) = values  # fmt: skip
    parts = [
        _text(id),
        _text(handler),
        _text(queue),
        _text(args),
        _json(headers),
        _int(priority),
        _text(state),
        _int(status),
        _int(attempts),
        _int(max_attempts),
        _json(result),
        _text(error),
        _text(unique_key),
        _time(enqueued_at),
        _time(scheduled_for),
        _time(started_at),
        _time(finished_at),
        _float(timeout),
        _json(retry),
        _int(deferrals),
        _float(result_ttl),
        _text(schedule_id),
    ]
    literals = [part for part in parts if part is not None]
    if len(literals) < len(parts):
        return None
    return (
        f"INSERT INTO {table} ({INSERT_COLUMNS}) VALUES ({', '.join(literals)})"
        " ON CONFLICT DO NOTHING"
    )


def _json(value: str | None) -> str | None:
    if value is None:
        return "NULL"
    quoted = quote_dollar(value)
    return None if quoted is None else f"{quoted}::jsonb"
