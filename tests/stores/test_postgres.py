"""PostgreSQL store behaviour beyond the shared conformance suite (real server, asyncio only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from work import WorkError
from work.stores import JobRecord, JobState, StoreUnavailableError, open_store
from work.stores.postgres import SCHEMA_VERSION, PostgresStore, PostgresUnavailableError, _unusable

URL = os.environ.get("ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only: these tests run on asyncio (trio's refusal is tested)."""
    return "asyncio"


def _schema() -> str:
    return f"anywork_pgtest_{uuid.uuid4().hex[:12]}"


def _job(id: str, queue: str = "default", **changes: object) -> JobRecord:
    return JobRecord(id=id, handler="h", queue=queue, enqueued_at=datetime.now(UTC)).replace(
        **changes
    )


@pytest.fixture
def schema() -> str:
    """A schema name no other test uses."""
    return _schema()


@pytest.fixture
def make(schema: str) -> Callable[[], PostgresStore]:
    """Build (not enter) stores on the test's schema, as separate processes would."""

    def build() -> PostgresStore:
        return PostgresStore(URL, schema=schema)

    return build


@pytest.fixture
async def store(make: Callable[[], PostgresStore]) -> AsyncIterator[PostgresStore]:
    """An entered store on a fresh schema, dropped after the test."""
    new = make()
    try:
        async with new:
            yield new
    finally:
        await new.drop()


async def test_open_store_maps_both_schemes(schema: str) -> None:
    """postgresql:// and postgres:// both open a PostgresStore with the given schema."""
    for scheme in ("postgresql", "postgres"):
        opened = open_store(URL.replace("postgresql", scheme, 1), schema=schema)
        assert isinstance(opened, PostgresStore)
        assert opened.schema == schema


async def test_password_is_masked_in_url() -> None:
    """The url attribute never shows the password."""
    store = PostgresStore("postgresql://me:secret@127.0.0.1:5432/test")
    assert "secret" not in store.url and "me:***@" in store.url


async def test_concurrent_migrations_are_safe(make: Callable[[], PostgresStore]) -> None:
    """Many stores migrating one new schema at once all succeed and record one version."""
    stores = [make() for _ in range(8)]
    try:
        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(s.__aenter__)
        assert stores[0]._pool is not None
        versions = await stores[0]._pool.fetch(
            f'SELECT version FROM "{stores[0].schema}".schema_version'
        )
        # Each version once, up to this module's (a branch may skip a number: 6, then 7).
        recorded = [row["version"] for row in versions]
        assert recorded == sorted(set(recorded)) and recorded[-1] == SCHEMA_VERSION
        await stores[3].add([_job("a")])
        assert (await stores[5].get("a")) is not None
    finally:
        for s in stores:
            await s.__aexit__(None, None, None)
        await stores[0].drop()


def test_migrations_from_several_processes_are_safe(schema: str) -> None:
    """Four processes entering a new schema at the same moment all succeed."""
    script = (
        "import anyio, sys\n"
        "from work.stores.postgres import PostgresStore\n"
        "async def main():\n"
        "    async with PostgresStore(sys.argv[1], schema=sys.argv[2]) as store:\n"
        "        await store.get('x')\n"
        "anyio.run(main)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, URL, schema], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    try:
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errors
    finally:
        anyio.run(PostgresStore(URL, schema=schema).drop)


async def test_migration_is_idempotent(make: Callable[[], PostgresStore]) -> None:
    """Entering again on an existing schema keeps the jobs and one row per version."""
    first = make()
    try:
        async with first:
            await first.add([_job("kept")])
        async with make() as second:
            assert (await second.get("kept")) is not None
            # One row per version (a branch may skip a number: 6, then 7).
            assert await second._pool.fetchval(
                "SELECT count(*) = count(DISTINCT version) AND max(version) = $1"
                f' FROM "{second.schema}".schema_version',
                SCHEMA_VERSION,
            )
    finally:
        await first.drop()


async def test_nested_entry_closes_on_outermost_exit(store: PostgresStore) -> None:
    """A store entered twice stays open until the outer exit."""
    async with store:
        pass
    assert (await store.get("nothing")) is None


def test_unreachable_server_names_host_and_port() -> None:
    """A refused connection raises PostgresUnavailableError naming 127.0.0.1:1."""

    async def enter() -> None:
        async with PostgresStore("postgresql://postgres@127.0.0.1:1/test", schema=_schema()):
            pass

    with pytest.raises(PostgresUnavailableError, match=r"127\.0\.0\.1:1\b") as info:
        anyio.run(enter, backend="asyncio")
    assert isinstance(info.value, WorkError) and isinstance(info.value, ConnectionError)
    assert isinstance(info.value, StoreUnavailableError)
    assert (info.value.host, info.value.port) == ("127.0.0.1", 1)


def test_trio_gives_a_clear_error() -> None:
    """Entering the store under trio raises a RuntimeError that names asyncio."""

    async def enter() -> None:
        async with PostgresStore(URL, schema=_schema()):
            pass

    with pytest.raises(RuntimeError, match="needs the asyncio backend"):
        anyio.run(enter, backend="trio")


async def test_a_statement_cancelled_midway_leaves_the_store_usable(store: PostgresStore) -> None:
    """Cancelling a call while its statement runs does not poison later calls."""
    with anyio.move_on_after(0.1):
        await store._require_pool().execute("SELECT pg_sleep(2)")
    with anyio.fail_after(5):
        await store.add([_job("after")])
        assert (await store.get("after")) is not None


async def test_a_killed_idle_connection_is_replaced(store: PostgresStore) -> None:
    """Once the server has killed the connection the store holds, the next call gets a new
    one instead of failing."""
    await store.add([_job("before")])
    held = store._require_pool()._held
    assert held is not None
    await store._pool.execute("SELECT pg_terminate_backend($1)", held.get_server_pid())
    with anyio.fail_after(5):
        while not _unusable(held):  # asyncpg has no event for this
            await anyio.sleep(0.01)
    assert (await store.get("before")) is not None
    assert store._require_pool()._held is not held


async def test_concurrent_claimers_never_share_a_job(
    store: PostgresStore, make: Callable[[], PostgresStore]
) -> None:
    """Claimers in several stores (as separate processes) each get distinct jobs."""
    await store.add([_job(f"j{i}") for i in range(300)])
    claimed: list[str] = []

    async def claimer(s: PostgresStore, n: int) -> None:
        while True:
            got = await s.claim(["default"], limit=7, lease=30, owner=f"w{n}")
            if not got:
                return
            claimed.extend(c.record.id for c in got)

    others = [make() for _ in range(3)]
    try:
        for other in others:
            await other.__aenter__()
        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(claimer, [store, *others][n % 4], n)
    finally:
        for other in others:
            await other.__aexit__(None, None, None)
    assert len(claimed) == 300
    assert len(set(claimed)) == 300


async def test_concurrent_adds_of_one_unique_key_store_one_job(store: PostgresStore) -> None:
    """Racing adds with the same unique key all return the one job that was stored."""
    results: list[str] = []

    async def add(i: int) -> None:
        (rec,) = await store.add([_job(f"u{i}", unique_key="only-one")])
        results.append(rec.id)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(add, i)
    assert len(set(results)) == 1
    assert len(await store.list()) == 1


async def test_notify_wakes_a_waiter_at_once(
    store: PostgresStore, make: Callable[[], PostgresStore]
) -> None:
    """An add in another store wakes wait_for_work well before its 10 s timeout."""
    woke = anyio.Event()

    async def wait() -> None:
        await store.wait_for_work(["default"], 10)
        woke.set()

    async with make() as producer, anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.2)  # let the waiter block
        assert not woke.is_set(), "wait_for_work returned before the add"
        added = time.monotonic()
        await producer.add([_job("wake")])
        with anyio.fail_after(2):
            await woke.wait()
        latency = time.monotonic() - added
    assert latency < 1.0


async def test_wait_ends_when_a_scheduled_job_falls_due(store: PostgresStore) -> None:
    """With only a job due in 0.3 s, wait_for_work(timeout=10) returns about then."""
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    await store.add([_job("later", state=JobState.SCHEDULED, scheduled_for=due)])
    started = time.monotonic()
    await store.wait_for_work(["default"], 10)
    assert time.monotonic() - started < 2.0
    assert datetime.now(UTC) >= due
    assert [c.record.id for c in await store.claim(["default"], limit=5, lease=5, owner="o")] == [
        "later"
    ]


async def test_wait_for_another_queue_is_not_woken(store: PostgresStore) -> None:
    """An add to queue "b" does not end a wait on queue "a"."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.wait_for_work, ["a"], 0.6)
        await anyio.sleep(0.1)
        started = time.monotonic()
        await store.add([_job("elsewhere", queue="b")])
    assert time.monotonic() - started >= 0.4


async def test_listener_opens_lazily(store: PostgresStore) -> None:
    """A store that never waits for work holds no listening connection."""
    await store.add([_job("a")])
    assert store._listener is None
    await store.wait_for_work(["default"], 0.01)
    assert store._listener is not None


async def test_lost_listener_is_reopened(store: PostgresStore) -> None:
    """After the listening connection is killed, waiters are still woken by adds."""
    await store.wait_for_work(["default"], 0.01)  # opens the listening connection
    listener = store._listener
    assert listener is not None
    gone = anyio.Event()
    listener.add_termination_listener(lambda conn: gone.set())
    await store._pool.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    with anyio.fail_after(5):
        await gone.wait()
    woke: list[float] = []

    async def wait() -> None:
        await store.wait_for_work(["default"], 10)
        woke.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.3)
        added = time.monotonic()
        await store.add([_job("after-loss")])
    assert woke[0] - added < 1.0
    assert store._listener is not None and store._listener is not listener


@pytest.mark.parametrize("garbage", ["{not json", '"a string"', "[1, 2]"])
async def test_undecodable_args_come_back_with_a_decode_error(
    store: PostgresStore, garbage: str
) -> None:
    """Args another writer stored as garbage or a non-object are reported at claim."""
    await store.add([_job("bad"), _job("good")])
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(
            f'UPDATE "{store.schema}".jobs SET args = $1 WHERE id = $2', garbage, "bad"
        )
    finally:
        await conn.close()
    claimed = {c.record.id: c for c in await store.claim(["default"], limit=5, lease=5, owner="o")}
    assert claimed["bad"].decode_error and "args" in claimed["bad"].decode_error
    assert claimed["bad"].record.state is JobState.RUNNING and claimed["bad"].record.args == {}
    assert claimed["good"].decode_error is None
    assert (await store.get("bad")) is not None


async def test_every_field_survives_single_and_batch_adds(store: PostgresStore) -> None:
    """Both add paths (one job, a batch) store every field exactly, unicode included."""
    now = datetime.now(UTC)
    recs = [
        JobRecord(
            id=f"f{i}",
            handler="h",
            args={"\u00fc": '\u00e9\n"q"', "n": [1, 2.5, None], "i": i},
            headers={"trace": "x\u2603"},
            priority=i - 3,
            state=JobState.SCHEDULED,
            enqueued_at=now,
            scheduled_for=now + timedelta(hours=1),
            max_attempts=4,
            timeout=2.5,
            retry={"backoff": {"kind": "constant", "seconds": 1.0}, "retry_on": [500]},
            unique_key=f"k{i}",
        )
        for i in range(4)
    ]
    stored = await store.add(recs[:1]) + await store.add(recs[1:])
    assert stored == recs
    assert [await store.get(r.id) for r in recs] == recs


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
async def test_added_records_are_what_get_reads_back(store: PostgresStore, batch: bool) -> None:
    """Both add paths return, for a job they insert, the record get() reads back (times in
    UTC, whatever zone they were given in), sharing no mutable value with the caller's."""
    paris = timezone(timedelta(hours=2))
    rec = _job("a").replace(
        args={"items": [1]},
        headers={"h": "v"},
        retry={"retry_on": [500]},
        enqueued_at=datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=paris),
        scheduled_for=datetime(2024, 5, 1, 15, 0, tzinfo=paris),
        state=JobState.SCHEDULED,
        timeout=3,
    )
    records = [rec, _job("b")] if batch else [rec]
    stored = (await store.add(records))[0]
    assert stored == await store.get("a")
    assert stored.enqueued_at is not None and stored.enqueued_at.tzinfo is UTC
    assert stored.scheduled_for is not None and stored.scheduled_for.tzinfo is UTC
    assert stored.args is not rec.args and stored.headers is not rec.headers
    assert stored.retry is not rec.retry
    rec.args["items"].append(2)
    rec.headers["h"] = "changed"
    assert stored.args == {"items": [1]} and stored.headers == {"h": "v"}


async def test_times_are_aware_utc(store: PostgresStore) -> None:
    """Every time a record carries is an aware UTC datetime, microseconds kept."""
    enqueued = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    (rec,) = await store.add([_job("t").replace(enqueued_at=enqueued)])
    assert rec.enqueued_at == enqueued
    (claimed,) = await store.claim(["default"], limit=1, lease=5, owner="o")
    assert claimed.record.started_at is not None
    assert claimed.record.started_at.utcoffset() == timedelta(0)


async def test_drop_removes_the_schema(make: Callable[[], PostgresStore]) -> None:
    """drop() removes the schema, open or not, and is harmless when it is already gone."""
    store = make()
    async with store:
        await store.add([_job("x")])
    await store.drop()
    await store.drop()
    conn = await asyncpg.connect(URL)
    try:
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", store.schema
        )
    finally:
        await conn.close()


# -- history does not slow the queue -----------------------------------------------------------


async def _fill_finished(store: PostgresStore, n: int) -> None:
    """Add ``n`` SUCCEEDED jobs in one statement, then ANALYZE (as autovacuum would)."""
    assert store._pool is not None
    s = f'"{store.schema}"'
    await store._pool.execute(
        f"""INSERT INTO {s}.jobs (id, handler, queue, state, status, attempts, enqueued_at,
                finished_at)
            SELECT 'done-' || g, 'h', 'default', 'succeeded', 200, 1, now(), now()
            FROM generate_series(1, $1) AS g""",
        n,
    )
    await store._pool.execute(f"ANALYZE {s}.jobs")


async def _plan(store: PostgresStore, sql: str, *args: object) -> str:
    assert store._pool is not None
    rows = await store._pool.fetch("EXPLAIN " + sql, *args)
    return "\n".join(row[0] for row in rows)


async def test_claim_idle_poll_and_expire_use_partial_indexes(store: PostgresStore) -> None:
    """With 20,000 finished jobs, the claim's pick, the idle poll and the retention search
    each walk a partial index of unfinished (or expiring) jobs: no sequential scan."""
    await _fill_finished(store, 20_000)
    s = f'"{store.schema}"'
    now = datetime.now(UTC)
    claim = f"""SELECT id FROM {s}.jobs WHERE queue = $1::text
                  AND state IN ('queued', 'scheduled') AND (state = 'queued' OR scheduled_for <= $2)
                ORDER BY priority DESC, COALESCE(scheduled_for, enqueued_at), seq
                LIMIT 10 FOR UPDATE SKIP LOCKED"""
    plan = await _plan(store, claim, "default", now)
    assert "jobs_ready" in plan and "Seq Scan" not in plan and "Sort" not in plan, plan
    poll = f"""SELECT EXISTS (SELECT 1 FROM {s}.jobs
                              WHERE queue = ANY($1::text[]) AND state = 'queued'),
                      (SELECT min(scheduled_for) FROM {s}.jobs
                       WHERE queue = ANY($1::text[]) AND state = 'scheduled')"""
    plan = await _plan(store, poll, ["default"])
    assert "Seq Scan" not in plan, plan
    expiring = f"""SELECT id FROM {s}.jobs WHERE expires_at IS NOT NULL AND expires_at <= $1
                   ORDER BY expires_at LIMIT 200"""
    plan = await _plan(store, expiring, now)
    assert "jobs_expires" in plan and "Seq Scan" not in plan, plan
    # The whole of one idle claim and one idle poll through the store itself.
    assert await store.claim(["default"], limit=10, lease=30, owner="w") == []
    with anyio.fail_after(5):
        await store.wait_for_work(["default"], 0.01)


async def test_version_1_schema_upgrades_on_open(make: Callable[[], PostgresStore]) -> None:
    """A schema at version 1 (before the lost counter and retention columns) is upgraded when
    a store enters it; its jobs are kept and run."""
    from work.stores.postgres import _migration_v1

    first = make()
    conn = await asyncpg.connect(URL)
    try:
        s = f'"{first.schema}"'
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(f"CREATE TABLE {s}.schema_version (version integer NOT NULL)")
        for statement in _migration_v1(s, first._channel):
            await conn.execute(statement)
        await conn.execute(f"INSERT INTO {s}.schema_version VALUES (1)")
        await conn.execute(
            f"INSERT INTO {s}.jobs (id, handler, queue, state, enqueued_at)"
            " VALUES ('old', 'h', 'default', 'queued', now())"
        )
    finally:
        await conn.close()
    try:
        async with first:
            assert first._pool is not None
            versions = await first._pool.fetch(f"SELECT version FROM {s}.schema_version")
            recorded = sorted(row["version"] for row in versions)
            assert recorded == sorted(set(recorded)) and recorded[-1] == SCHEMA_VERSION
            (claimed,) = await first.claim(["default"], limit=5, lease=0.05, owner="w")
            assert claimed.record.id == "old" and claimed.decode_error is None

            async def reaped() -> bool:
                return await first.reap() == 1

            with anyio.fail_after(10):
                while not await reaped():
                    await anyio.sleep(0.02)
            got = await first.get("old")
            assert got is not None and got.state is JobState.QUEUED
    finally:
        await first.drop()
