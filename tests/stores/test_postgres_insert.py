"""How a job goes into PostgreSQL: schema 8's insert trigger, and the one-trip literal insert."""

from __future__ import annotations

import math
import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from work import JobEventKind
from work.stores import JobRecord, JobState
from work.stores._postgres_insert import insert_literal, quote_dollar
from work.stores._postgres_poll import migration_v7
from work.stores._postgres_rows import dumps, insert_values
from work.stores.postgres import SCHEMA_VERSION, PostgresStore, _migration_v3, _Runner

URL = os.environ.get("ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.anyio

# Text that has broken quoting somewhere: quotes, backslashes, dollar signs next to what a
# dollar-quote tag looks like, the tags this module picks, non-ASCII, control characters.
_PIECES = ["$", "$$", "q", "$q", "$q$", "q1", "$q1$", "'", "''", '"', "\\", "\\'", "é", "€", "\n"]
_PIECES += ["\t", "\x01", ";", "--", "/*", "*/", "E'", "U&'", "a", " ", "$fn$", "$_$", "\u2028"]


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only."""
    return "asyncio"


@pytest.fixture
async def literal_store() -> AsyncIterator[PostgresStore]:
    """A store with asyncpg's statement cache off (as ``listen=False`` sets it), directly
    connected, on a fresh schema."""
    store = PostgresStore(URL, schema=f"anywork_pgtest_{uuid.uuid4().hex[:12]}", listen=False)
    try:
        async with store:
            yield store
    finally:
        await store.drop()


def _tricky(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 12)))


def test_quote_dollar_picks_a_tag_the_text_lacks() -> None:
    """The tag is one the text does not contain; a NUL (which ends a query message) gives
    None."""
    assert quote_dollar("plain") == "$q$plain$q$"
    assert quote_dollar("a $q b") == "$q1$a $q b$q1$"
    assert quote_dollar("$q $q1 $q2") == "$q3$$q $q1 $q2$q3$"
    assert quote_dollar("") == "$q$$q$"
    assert quote_dollar("a\x00b") is None


def test_insert_literal_binds_what_it_cannot_write() -> None:
    """NUL in any text, a non-finite number or a naive time: no literal query (the caller
    binds the values instead)."""
    rec = JobRecord(id="a", handler="h", queue="q", enqueued_at=datetime.now(UTC))
    values = insert_values(rec, "{}", datetime.now(UTC))
    assert insert_literal('"s".jobs', values) is not None
    for bad in (
        rec.replace(id="a\x00"),
        rec.replace(unique_key="k\x00"),
        rec.replace(timeout=math.inf),
        rec.replace(result_ttl=math.nan),
        rec.replace(scheduled_for=datetime(2030, 1, 1)),
    ):
        assert insert_literal('"s".jobs', insert_values(bad, "{}", datetime.now(UTC))) is None
    with_nul = insert_values(rec, dumps({"k": "\x00"}), datetime.now(UTC))
    assert "\\u0000" in with_nul[3]  # JSON escapes NUL: such args travel as literals
    assert insert_literal('"s".jobs', with_nul) is not None


async def test_dollar_quoted_text_reads_back_exactly() -> None:
    """Hundreds of strings built from quoting's troublemakers, sent as dollar-quoted literals
    in a query with no parameters, come back from the server unchanged."""
    rng = random.Random(8)
    texts = [_tricky(rng) for _ in range(400)] + ["$q" * n for n in range(1, 6)]
    literals = [quote_dollar(text) for text in texts]
    conn = await asyncpg.connect(URL, statement_cache_size=0)
    try:
        # Simple query protocol (no parameters): the server parses the literals itself.
        await conn.execute(
            "CREATE TEMP TABLE t AS SELECT * FROM (VALUES "
            + ", ".join(f"({i}, {lit})" for i, lit in enumerate(literals))
            + ") AS v(i, x)"
        )
        rows = await conn.fetch("SELECT i, x FROM t ORDER BY i")
    finally:
        await conn.close()
    assert [row["x"] for row in rows] == texts


def _first_arg(calls: list[tuple[str, tuple[Any, ...]]]) -> Any:
    return calls[0][1][0] if calls[0][1] else None


async def test_one_job_goes_in_by_one_query_without_parameters(
    literal_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the statement cache off, add() of one job sends one query with no parameters
    (one round trip); with it on, the prepared statement with parameters."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    execute = _Runner.execute

    async def spy(self: _Runner, sql: str, *args: Any) -> Any:
        calls.append((sql, args))
        return await execute(self, sql, *args)

    monkeypatch.setattr(_Runner, "execute", spy)
    rec = JobRecord(id="one", handler="h", queue="q", enqueued_at=datetime.now(UTC))
    await literal_store.add([rec])
    assert len(calls) == 1 and calls[0][1] == () and "$q$one$q$" in calls[0][0]
    # A value a literal cannot carry: bound instead, and stored all the same.
    calls.clear()
    await literal_store.add([rec.replace(id="inf", timeout=math.inf)])
    assert len(calls) == 1 and _first_arg(calls) == "inf"
    assert (await literal_store.get("inf")) is not None
    calls.clear()
    async with PostgresStore(URL, schema=literal_store.schema) as cached:
        await cached.add([rec.replace(id="cached")])
    assert len(calls) == 1 and _first_arg(calls) == "cached"


async def test_a_tricky_job_reads_back_as_added(literal_store: PostgresStore) -> None:
    """Jobs whose every text field holds quoting's troublemakers, with times in other zones,
    numbers and JSON, read back as added (and as the record add returned)."""
    rng = random.Random(14)
    east = timezone(timedelta(hours=5, minutes=30))
    for n in range(30):
        rec = JobRecord(
            id=f"{n}:{_tricky(rng)}",
            handler=_tricky(rng) or "h",
            queue=_tricky(rng) or "q",
            args={_tricky(rng): _tricky(rng), "n": [n, 1.5, None, True]},
            headers={_tricky(rng): _tricky(rng)},
            priority=rng.randrange(-5, 5),
            state=JobState.SCHEDULED if n % 2 else JobState.QUEUED,
            attempts=n % 3,
            max_attempts=3,
            unique_key=_tricky(rng) or None,
            enqueued_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=east),
            scheduled_for=datetime.now(east) + timedelta(hours=1) if n % 2 else None,
            timeout=0.1 + n / 7,
            retry={"backoff": _tricky(rng), "on": [500]},
            result_ttl=1e-05 * n,
            schedule_id=_tricky(rng) or None,
        )
        (added,) = await literal_store.add([rec])
        got = await literal_store.get(rec.id)
        assert got == added
        assert (got.id, got.handler, got.queue, got.args, got.headers, got.unique_key) == (
            rec.id,
            rec.handler,
            rec.queue,
            rec.args,
            rec.headers,
            rec.unique_key,
        )
        assert got.enqueued_at == rec.enqueued_at and got.scheduled_for == rec.scheduled_for
        assert (got.timeout, got.result_ttl, got.retry) == (rec.timeout, rec.result_ttl, rec.retry)
        # Added again: the existing job comes back (the status said nothing went in).
        assert await literal_store.add([rec.replace(handler="other")]) == [got]


async def _at_version_7(store: PostgresStore) -> None:
    """Put an entered store's schema back to version 7: its two row triggers on insert."""
    s = store._s
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(f"DROP TRIGGER jobs_inserted ON {s}.jobs")
        await conn.execute(f"DROP FUNCTION {s}.jobs_inserted()")
        for statement in _migration_v3(s, store._events_channel):
            if "jobs_event_insert" in statement or statement.startswith("CREATE OR REPLACE"):
                await conn.execute(statement)
        for statement in migration_v7(s):
            if "jobs_log_insert" in statement:
                await conn.execute(statement)
        await conn.execute(f"DELETE FROM {s}.schema_version WHERE version = 8")
    finally:
        await conn.close()


async def _insert_triggers(store: PostgresStore) -> list[str]:
    conn = await asyncpg.connect(URL)
    try:
        rows = await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal"
            " AND (tgtype & 4) <> 0 ORDER BY tgname",  # 4: fires on INSERT
            f"{store._s}.jobs",
        )
    finally:
        await conn.close()
    return [row["tgname"] for row in rows]


async def test_version_7_upgrades_to_one_insert_trigger() -> None:
    """A version 7 schema (two row triggers on insert) upgrades to version 8's one statement
    trigger with its jobs kept; events then arrive once each, by LISTEN and from the event log,
    and an insert wakes a waiting worker."""
    schema = f"anywork_pgtest_{uuid.uuid4().hex[:12]}"
    first = PostgresStore(URL, schema=schema)
    try:
        async with first:
            await first.add([JobRecord(id="old", handler="h", queue="q")])
        await _at_version_7(first)
        assert await _insert_triggers(first) == [
            "jobs_count_insert",
            "jobs_event_insert",
            "jobs_log_insert",
        ]
        listening = PostgresStore(URL, schema=schema)
        polling = PostgresStore(URL, schema=schema, listen=False, poll_interval=0.05)
        async with listening, polling:
            assert await _insert_triggers(listening) == ["jobs_count_insert", "jobs_inserted"]
            assert listening._pool is not None
            versions = await listening._pool.fetch(
                f"SELECT version FROM {listening._s}.schema_version ORDER BY version"
            )
            assert [row["version"] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
            assert (await listening.get("old")) is not None
            async with listening.events() as heard, polling.events() as read:
                ids = ["a", "b", "c", "d"]
                await listening.add([JobRecord(id=i, handler="h", queue="q") for i in ids[:3]])
                await polling.add([JobRecord(id="d", handler="h", queue="q")])
                for stream in (heard, read):
                    with anyio.fail_after(10):
                        events = [await anext(stream) for _ in ids]
                    assert [(e.kind, e.job_id) for e in events] == [
                        (JobEventKind.ENQUEUED, i) for i in ids
                    ]
            woke = False

            async def wait() -> None:
                nonlocal woke
                await listening.wait_for_work(["later"], 30)
                woke = True

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await anyio.wait_all_tasks_blocked()
                    await polling.add([JobRecord(id="w", handler="h", queue="later")])
            assert woke
    finally:
        await first.drop()


async def test_an_oversized_event_is_lost_on_notify_and_whole_in_the_log() -> None:
    """A job whose event passes NOTIFY's 8000 bytes is a LOST event to listeners (the insert
    still commits) and a whole ENQUEUED event in the event log."""
    schema = f"anywork_pgtest_{uuid.uuid4().hex[:12]}"
    listening = PostgresStore(URL, schema=schema)
    polling = PostgresStore(URL, schema=schema, listen=False, poll_interval=0.05)
    try:
        async with listening, polling:
            async with listening.events() as heard, polling.events() as read:
                big = "h" * 9000
                await listening.add([JobRecord(id="big", handler=big, queue="q")])
                with anyio.fail_after(10):
                    lost = await anext(heard)
                    logged = await anext(read)
            assert lost.kind is JobEventKind.LOST
            assert (logged.kind, logged.job_id) == (JobEventKind.ENQUEUED, "big")
            assert (await listening.get("big")) is not None
    finally:
        await listening.drop()
