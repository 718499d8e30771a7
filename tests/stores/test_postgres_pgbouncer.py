"""PostgreSQL through PgBouncer in transaction pooling mode: the startup check, polling for
work and events (real PgBouncer from .ci/pgbouncer, real PostgreSQL; asyncio only)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from work import WorkError
from work._core.status import Status
from work._durable.events import EventHub, JobEventKind
from work.stores import JobRecord, JobState, Outcome, open_store
from work.stores._postgres_poll import EventLogPoller, split_url
from work.stores.postgres import PostgresPoolerError, PostgresStore

from .conftest import POSTGRES_URL

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only: these tests run on asyncio."""
    return "asyncio"


@pytest.fixture
def schema() -> str:
    """A schema name no other test uses."""
    return f"anywork_pgbtest_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def polling(pgbouncer_url: str, schema: str) -> AsyncIterator[PostgresStore]:
    """An entered store through PgBouncer with ``?listen=false`` and the default interval."""
    store = PostgresStore(pgbouncer_url + "?listen=false", schema=schema)
    try:
        async with store:
            yield store
    finally:
        await store.drop()


def _job(queue: str = "default") -> JobRecord:
    return JobRecord(id=uuid.uuid4().hex, handler="h", queue=queue, enqueued_at=datetime.now(UTC))


async def _schema_exists(schema: str) -> bool:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return bool(await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", schema))
    finally:
        await conn.close()


@pytest.mark.parametrize("max_size", [10, 1])
async def test_listen_through_a_transaction_pooler_fails_at_open(
    pgbouncer_url: str, schema: str, max_size: int
) -> None:
    """A store that LISTENs, opened through PgBouncer in transaction mode, fails at open with
    PostgresPoolerError saying what is wrong and how to fix it, before creating anything
    (a pool of one checks with a connection of its own)."""
    store = PostgresStore(pgbouncer_url, schema=schema, max_size=max_size)
    with pytest.raises(PostgresPoolerError) as caught:
        async with store:
            pytest.fail("opened")
    message = str(caught.value)
    assert "transaction pooling" in message and "?listen=false" in message
    assert isinstance(caught.value, WorkError) and isinstance(caught.value, ValueError)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", 6432)
    assert not await _schema_exists(schema)
    assert store._pool is None  # closed again


async def test_direct_connections_pass_the_check(schema: str) -> None:
    """Connected directly, the check passes, with a pool of one too."""
    store = PostgresStore(POSTGRES_URL, schema=schema, max_size=1)
    try:
        async with store:
            assert await store.stats() == {}
    finally:
        await store.drop()


def test_url_parameters_are_the_stores_own() -> None:
    """``listen`` and ``poll_interval`` are taken out of the URL (asyncpg would send them to
    the server as settings); the options win over them; bad values are refused."""
    assert split_url("postgresql://h/db?sslmode=disable&listen=false&poll_interval=0.2") == (
        "postgresql://h/db?sslmode=disable",
        False,
        0.2,
    )
    assert split_url("postgresql://h/db") == ("postgresql://h/db", None, None)
    store = PostgresStore("postgresql://h/db?listen=off&poll_interval=2")
    assert (store._listens, store._poll_interval) == (False, 2.0)
    assert store._options["statement_cache_size"] == 0
    assert store._dsn == "postgresql://h/db"
    store = PostgresStore("postgresql://h/db?listen=false", listen=True, poll_interval=0.1)
    assert (store._listens, store._poll_interval) == (True, 0.1)
    assert "statement_cache_size" not in store._options
    assert PostgresStore("postgresql://h/db")._listens
    with pytest.raises(ValueError, match="listen must be true or false"):
        PostgresStore("postgresql://h/db?listen=maybe")
    with pytest.raises(ValueError, match="poll_interval must be a number"):
        PostgresStore("postgresql://h/db?poll_interval=soon")
    with pytest.raises(ValueError, match="poll_interval must be > 0"):
        PostgresStore("postgresql://h/db", listen=False, poll_interval=0)


async def test_work_is_found_by_polling(polling: PostgresStore, pgbouncer_url: str) -> None:
    """A worker's wait through PgBouncer sees a job another process adds within about one
    ``poll_interval`` (0.5 s), and waits its whole timeout when nothing comes."""
    producer = open_store(pgbouncer_url + "?listen=false", schema=polling.schema)
    async with producer:
        started = anyio.current_time()
        await polling.wait_for_work(["default"], 0.6)
        assert anyio.current_time() - started >= 0.59

        async def add_soon() -> None:
            await anyio.sleep(0.2)
            await producer.add([_job()])

        async with anyio.create_task_group() as tg:
            tg.start_soon(add_soon)
            started = anyio.current_time()
            with anyio.fail_after(5):
                await polling.wait_for_work(["default"], 30)
        assert anyio.current_time() - started < 3


async def test_events_arrive_by_polling(polling: PostgresStore, schema: str) -> None:
    """Subscribed through PgBouncer, a store receives the events of changes another process
    makes (directly connected, with LISTEN), each job's in order, within a generous bound
    of the commit (documented: about one poll_interval)."""
    other = PostgresStore(POSTGRES_URL, schema=schema)
    async with other, polling.events() as stream:
        job = _job()
        added = anyio.current_time()
        await other.add([job])
        with anyio.fail_after(10):
            first = await anext(stream)
        latency = anyio.current_time() - added
        assert (first.kind, first.job_id) == (JobEventKind.ENQUEUED, job.id)
        assert latency < 5
        await other.claim(["default"], limit=1, lease=30, owner="w")
        await other.complete(
            "w", [Outcome(id=job.id, state=JobState.SUCCEEDED, status=Status.OK, result=1)]
        )
        with anyio.fail_after(10):
            kinds = [(await anext(stream)).kind for _ in range(2)]
        assert kinds == [JobEventKind.STARTED, JobEventKind.SUCCEEDED]


async def test_a_late_commit_is_not_skipped(polling: PostgresStore) -> None:
    """A transaction that wrote its change first but commits last is still read: the reader
    takes only the rows of finished transactions, never skipping one still open."""
    early, late = _job(), _job()
    await polling.add([early])
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        async with polling.events() as stream:
            tx = conn.transaction()
            await tx.start()
            await conn.execute(
                f"UPDATE \"{polling.schema}\".jobs SET state = 'cancelled', status = 499 "
                "WHERE id = $1",
                early.id,
            )
            await polling.add([late])  # logged after the open transaction's row, committed
            await anyio.sleep(1.2)  # two looks while the first transaction is open
            await tx.commit()
            with anyio.fail_after(10):
                got = {(await anext(stream)).job_id for _ in range(2)}
            assert got == {early.id, late.id}
    finally:
        await conn.close()


async def test_an_open_transaction_elsewhere_does_not_hold_events_back(
    polling: PostgresStore,
) -> None:
    """An unrelated write transaction left open (anywhere on the server) does not delay the
    events of others: each look reads what committed since the last."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        async with polling.events() as stream:
            tx = conn.transaction()
            await tx.start()
            await conn.fetchval("SELECT pg_current_xact_id()")  # holds the oldest xid
            job = _job()
            await polling.add([job])
            with anyio.fail_after(5):
                event = await anext(stream)
            assert event.job_id == job.id
            await tx.rollback()
    finally:
        await conn.close()


async def test_the_event_log_is_written_only_while_read_and_pruned(
    polling: PostgresStore, pgbouncer_url: str
) -> None:
    """The triggers log changes only while a reader is registered; leaving unregisters; old
    rows are pruned."""
    s = f'"{polling.schema}"'
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await polling.add([_job()])
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.event_log") == 0
        async with polling.events() as stream:
            await polling.add([_job()])
            with anyio.fail_after(10):
                await anext(stream)
            assert await conn.fetchval(f"SELECT count(*) FROM {s}.event_readers") == 1
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.event_readers") == 0
        await conn.execute(
            f"INSERT INTO {s}.event_log (at, payload) VALUES (now() - interval '1 hour', '[]')"
        )
        pool = await asyncpg.create_pool(
            pgbouncer_url, statement_cache_size=0, min_size=1, max_size=2
        )
        try:
            await EventLogPoller(pool, s, EventHub(), 0.5).prune(retention=60)
        finally:
            await pool.close()
        # The hour-old row is gone; the fresh one stays.
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.event_log") == 1
    finally:
        await conn.close()


async def test_a_reader_that_cannot_look_says_so(polling: PostgresStore) -> None:
    """A look that fails (the server, the pooler or the pool gone) gives subscribers one LOST
    event (``lost == 0``: an unknown number), and the reader keeps trying."""
    hub = EventHub()
    stream = hub.open()
    pool = await asyncpg.create_pool(POSTGRES_URL, min_size=1, max_size=2)
    poller = EventLogPoller(pool, f'"{polling.schema}"', hub, 0.05)
    try:
        await poller.start()
        await pool.close()
        with anyio.fail_after(10):
            lost = await anext(stream)
        assert (lost.kind, lost.lost) == (JobEventKind.LOST, 0)
    finally:
        await poller.stop()
        pool.terminate()
