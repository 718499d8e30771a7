"""Redis store behaviour beyond the shared conformance suite (real server, asyncio only)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import redis.asyncio as aioredis

from work import Status, WorkError
from work.stores import JobRecord, JobState, Outcome, StoreUnavailableError, open_store
from work.stores.redis import RedisStore, RedisUnavailableError

URL = os.environ.get("ANYWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client is asyncio-only: these tests run on asyncio (trio's refusal
    is tested)."""
    return "asyncio"


def _prefix() -> str:
    return f"anywork-rtest-{uuid.uuid4().hex[:12]}"


def _job(id: str, queue: str = "default", **changes: object) -> JobRecord:
    return JobRecord(id=id, handler="h", queue=queue, enqueued_at=datetime.now(UTC)).replace(
        **changes
    )


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return _prefix()


@pytest.fixture
def make(prefix: str) -> Callable[[], RedisStore]:
    """Build (not enter) stores on the test's prefix, as separate processes would."""

    def build() -> RedisStore:
        return RedisStore(URL, prefix=prefix)

    return build


@pytest.fixture
async def store(make: Callable[[], RedisStore]) -> AsyncIterator[RedisStore]:
    """An entered store on a fresh prefix, its keys deleted after the test."""
    new = make()
    try:
        async with new:
            yield new
    finally:
        await new.drop()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same server, for writing what another program might."""
    client = aioredis.from_url(URL)
    try:
        yield client
    finally:
        await client.aclose()


async def test_open_store_maps_both_schemes(prefix: str) -> None:
    """redis:// and rediss:// both open a RedisStore with the given prefix."""
    for url in (URL, URL.replace("redis://", "rediss://", 1)):
        opened = open_store(url, prefix=prefix)
        assert isinstance(opened, RedisStore)
        assert opened.prefix == prefix


async def test_password_is_masked_in_url() -> None:
    """The url attribute never shows the password."""
    store = RedisStore("redis://:secret@127.0.0.1:6379/0")
    assert "secret" not in store.url and ":***@" in store.url


async def test_concurrent_entries_are_safe(make: Callable[[], RedisStore]) -> None:
    """Many stores opening one new prefix at once all succeed and share the jobs."""
    stores = [make() for _ in range(8)]
    try:
        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(s.__aenter__)
        await stores[3].add([_job("a")])
        assert (await stores[5].get("a")) is not None
    finally:
        for s in stores:
            await s.__aexit__(None, None, None)
        await stores[0].drop()


async def test_newer_layout_is_refused(
    make: Callable[[], RedisStore], prefix: str, raw: aioredis.Redis
) -> None:
    """Keys written by a newer layout version make entering fail instead of corrupting."""
    await raw.set(f"{{{prefix}}}:schema_version", 99)
    try:
        with pytest.raises(RuntimeError, match="newer"):
            async with make():
                pass
    finally:
        await raw.delete(f"{{{prefix}}}:schema_version")


async def test_nested_entry_closes_on_outermost_exit(store: RedisStore) -> None:
    """A store entered twice stays open until the outer exit."""
    async with store:
        pass
    assert (await store.get("nothing")) is None


def test_unreachable_server_names_host_and_port() -> None:
    """A refused connection raises RedisUnavailableError naming 127.0.0.1:1."""

    async def enter() -> None:
        async with RedisStore("redis://127.0.0.1:1/0", prefix=_prefix()):
            pass

    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1\b") as info:
        anyio.run(enter, backend="asyncio")
    assert isinstance(info.value, WorkError) and isinstance(info.value, ConnectionError)
    assert isinstance(info.value, StoreUnavailableError)
    assert (info.value.host, info.value.port) == ("127.0.0.1", 1)


def test_trio_gives_a_clear_error() -> None:
    """Entering the store under trio raises a RuntimeError that names asyncio."""

    async def enter() -> None:
        async with RedisStore(URL, prefix=_prefix()):
            pass

    with pytest.raises(RuntimeError, match="needs the asyncio backend"):
        anyio.run(enter, backend="trio")


async def test_concurrent_claimers_never_share_a_job(
    store: RedisStore, make: Callable[[], RedisStore]
) -> None:
    """Claimers in several stores (as separate processes) each get distinct jobs."""
    await store.add([_job(f"j{i}") for i in range(300)])
    claimed: list[str] = []

    async def claimer(s: RedisStore, n: int) -> None:
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


async def test_claim_merges_queues_in_order(store: RedisStore) -> None:
    """A claim over two queues takes the best jobs of both: priority, then due, then seq."""
    await store.add(
        [
            _job("a-low", queue="a"),
            _job("b-high", queue="b", priority=5),
            _job("a-high", queue="a", priority=5),
            _job("b-low", queue="b"),
        ]
    )
    got = await store.claim(["a", "b"], limit=3, lease=5, owner="o")
    assert [c.record.id for c in got] == ["b-high", "a-high", "a-low"]


async def test_concurrent_adds_of_one_unique_key_store_one_job(store: RedisStore) -> None:
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


async def test_blpop_wakes_a_waiter_at_once(
    store: RedisStore, make: Callable[[], RedisStore]
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


async def test_a_burst_wakes_every_waiter(
    store: RedisStore, make: Callable[[], RedisStore]
) -> None:
    """Five waiters (five processes) are all woken by an add of five jobs."""
    woken: list[int] = []
    waiters = [make() for _ in range(5)]
    try:
        for w in waiters:
            await w.__aenter__()
        async with anyio.create_task_group() as tg:

            async def wait(n: int) -> None:
                await waiters[n].wait_for_work(["default"], 10)
                woken.append(n)

            for n in range(5):
                tg.start_soon(wait, n)
            await anyio.sleep(0.2)
            assert not woken, "waiters returned before the add"
            started = time.monotonic()
            await store.add([_job(f"b{i}") for i in range(5)])
        assert time.monotonic() - started < 2.0
    finally:
        for w in waiters:
            await w.__aexit__(None, None, None)
    assert sorted(woken) == [0, 1, 2, 3, 4]


async def test_wait_ends_when_a_scheduled_job_falls_due(store: RedisStore) -> None:
    """With only a job due in 0.3 s, waiting (timeout=10) ends about then and it is claimed."""
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    await store.add([_job("later", state=JobState.SCHEDULED, scheduled_for=due)])
    started = time.monotonic()
    claimed: list[str] = []
    early = 0
    with anyio.fail_after(2):
        # The add's own wake token may end the first wait early: wait until it is claimed.
        while not claimed:
            await store.wait_for_work(["default"], 10)
            early += datetime.now(UTC) < due
            got = await store.claim(["default"], limit=5, lease=5, owner="o")
            claimed += [c.record.id for c in got]
    assert early <= 1, "a waiter that keeps returning before the due time is polling"
    assert claimed == ["later"]
    assert time.monotonic() - started < 2.0
    assert datetime.now(UTC) >= due


async def test_wait_for_another_queue_is_not_woken(store: RedisStore) -> None:
    """An add to queue "b" does not end a wait on queue "a"."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.wait_for_work, ["a"], 0.6)
        await anyio.sleep(0.1)
        started = time.monotonic()
        await store.add([_job("elsewhere", queue="b")])
    assert time.monotonic() - started >= 0.4


@pytest.mark.parametrize("garbage", [b"{not json", b'"a string"', b"[1, 2]", b"\xff\xfe{"])
async def test_undecodable_args_come_back_with_a_decode_error(
    store: RedisStore, prefix: str, raw: aioredis.Redis, garbage: bytes
) -> None:
    """Args another writer stored as garbage, non-UTF-8 or a non-object are reported at claim."""
    await store.add([_job("bad"), _job("good")])
    await raw.hset(f"{{{prefix}}}:job:bad", "args", garbage)
    claimed = {c.record.id: c for c in await store.claim(["default"], limit=5, lease=5, owner="o")}
    assert claimed["bad"].decode_error and "args" in claimed["bad"].decode_error
    assert claimed["bad"].record.state is JobState.RUNNING and claimed["bad"].record.args == {}
    assert claimed["good"].decode_error is None


async def test_every_field_survives_single_and_batch_adds(store: RedisStore) -> None:
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


async def test_times_are_aware_utc_to_the_microsecond(store: RedisStore) -> None:
    """Every time a record carries is an aware UTC datetime, microseconds kept exactly."""
    enqueued = datetime(2024, 5, 1, 12, 30, 15, 123457, tzinfo=UTC)
    (rec,) = await store.add([_job("t").replace(enqueued_at=enqueued)])
    assert rec.enqueued_at == enqueued
    assert (await store.get("t")) == rec
    (claimed,) = await store.claim(["default"], limit=1, lease=5, owner="o")
    assert claimed.record.started_at is not None
    assert claimed.record.started_at.utcoffset() == timedelta(0)


async def test_stats_follow_every_transition(store: RedisStore) -> None:
    """The counters behind stats() match the jobs after adds, claims, completes and reaps."""
    await store.add([_job("a"), _job("b"), _job("c", queue="q")])
    await store.claim(["default"], limit=2, lease=0, owner="o")
    await store.cancel("c")
    assert await store.reap() == 2
    assert await store.stats() == {"default": {"queued": 2}, "q": {"cancelled": 1}}
    await store.claim(["default"], limit=2, lease=0, owner="o")
    assert await store.reap(lost_limit=2) == 2
    assert await store.stats() == {"default": {"failed": 2}, "q": {"cancelled": 1}}


async def test_drop_removes_only_its_keys(
    make: Callable[[], RedisStore], raw: aioredis.Redis
) -> None:
    """drop() deletes every key under the prefix and nothing under another prefix."""
    store, other = make(), RedisStore(URL, prefix=_prefix())
    try:
        async with store, other:
            await store.add([_job("x", unique_key="k")])
            await other.add([_job("y")])
            await store.drop()
            assert [k async for k in raw.scan_iter(match=f"*{store.prefix}*")] == []
            assert (await other.get("y")) is not None
    finally:
        await other.drop()


async def test_layout_1_finished_jobs_are_indexed_on_open(
    make: Callable[[], RedisStore], prefix: str, raw: aioredis.Redis
) -> None:
    """Keys at layout version 1 (finished jobs not indexed for retention) are upgraded when a
    store enters them: the jobs finished before are then found and deleted by expire()."""
    first = make()
    try:
        async with first:
            await first.add([_job("old"), _job("running")])
            await first.claim(["default"], limit=1, lease=30, owner="o")
            await first.complete(
                "o", [Outcome(id="old", state=JobState.SUCCEEDED, status=Status.SUCCESS)]
            )
        # What layout 1 left: no retention index, version 1.
        await raw.delete(f"{{{prefix}}}:done:default")
        await raw.set(f"{{{prefix}}}:schema_version", 1)
        async with make() as second:
            assert await raw.get(f"{{{prefix}}}:schema_version") == b"3"
            assert await second.expire(["default"], result_ttl=0, limit=10) == 1
            assert await second.get("old") is None
            assert await second.get("running") is not None
    finally:
        await first.drop()


async def test_idle_claims_and_polls_never_touch_finished_jobs(store: RedisStore) -> None:
    """Claims and idle polls read only the ready and scheduled sets: finished jobs live in
    their own retention sets, so history does not slow them."""
    await store.add([_job(f"j{i}") for i in range(50)])
    await store.claim(["default"], limit=50, lease=30, owner="o")
    await store.complete(
        "o",
        [Outcome(id=f"j{i}", state=JobState.SUCCEEDED, status=Status.SUCCESS) for i in range(50)],
    )
    client = store._require()
    assert await client.zcard(store._key("ready", "default")) == 0
    assert await client.zcard(store._key("done", "default")) == 50
    assert await store.claim(["default"], limit=5, lease=30, owner="o") == []


async def test_layout_2_keys_move_under_the_hash_tag_on_open(
    make: Callable[[], RedisStore], prefix: str, raw: aioredis.Redis
) -> None:
    """Keys of layout 2 (``prefix:…``, no hash tag) are renamed to ``{prefix}:…`` when a store
    enters them (three at once), jobs and queues intact; a longer prefix's keys are left
    alone."""
    first = make()
    try:
        async with first:
            await first.add([_job("done"), _job("ready", queue="q", unique_key="u")])
            await first.claim(["default"], limit=1, lease=30, owner="o")
            await first.complete(
                "o", [Outcome(id="done", state=JobState.SUCCEEDED, status=Status.SUCCESS)]
            )
        # What layout 2 left: the same keys without the tag, at version 2.
        tagged = [k async for k in raw.scan_iter(match=f"{{{prefix}}}:*")]
        assert len(tagged) > 5
        for key in tagged:
            await raw.rename(key, key.decode().replace(f"{{{prefix}}}", prefix, 1))
        await raw.set(f"{prefix}:schema_version", 2)
        await raw.set(f"{prefix}:b:job:x", "another store's")  # the store of prefix "…:b"
        assert not await raw.exists(f"{{{prefix}}}:schema_version")
        assert await make().exists()
        openers = [make() for _ in range(3)]  # three processes opening it at once
        async with anyio.create_task_group() as tg:
            for opener in openers:
                tg.start_soon(opener.__aenter__)
        for opener in openers:
            await opener.__aexit__(None, None, None)
        async with make() as second:
            assert await raw.get(f"{{{prefix}}}:schema_version") == b"3"
            assert [k async for k in raw.scan_iter(match=f"{prefix}:*")] == [
                f"{prefix}:b:job:x".encode()
            ]
            assert (await second.get("done")) is not None
            assert await second.stats() == {"default": {"succeeded": 1}, "q": {"queued": 1}}
            assert (await second.add([_job("again", queue="q", unique_key="u")]))[0].id == "ready"
            claimed = await second.claim(["q"], limit=5, lease=30, owner="o")
            assert [c.record.id for c in claimed] == ["ready"]
    finally:
        await raw.delete(f"{prefix}:b:job:x")
        await first.drop()


async def test_keys_share_the_store_hash_tag(store: RedisStore, raw: aioredis.Redis) -> None:
    """Every key of a store carries its hash tag, so all of them hash to one cluster slot."""
    from redis.crc import key_slot

    await store.add([_job("a"), _job("b", queue="q", unique_key="k")])
    await store.claim(["default"], limit=1, lease=30, owner="o")
    keys = [k async for k in raw.scan_iter(match=f"*{store.prefix}*")]
    assert len(keys) > 5
    assert {key_slot(k) for k in keys} == {key_slot(f"{{{store.prefix}}}".encode())}


async def test_cluster_refuses_keys_of_layout_2(prefix: str) -> None:
    """A cluster holding a store's keys without the hash tag (layout 2, copied in before the
    move) is refused with a message saying to move them on a single server first."""
    from redis.asyncio.cluster import RedisCluster

    from .conftest import require_redis_cluster

    url = require_redis_cluster()
    raw = RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1))
    try:
        await raw.set(f"{prefix}:schema_version", 2)
        store = open_store(url, prefix=prefix)
        assert isinstance(store, RedisStore) and store.cluster
        with pytest.raises(RuntimeError, match="single Redis server"):
            async with store:
                pass
    finally:
        await raw.delete(f"{prefix}:schema_version")
        await raw.aclose()


async def test_unreachable_cluster_is_a_store_unavailable_error() -> None:
    """A cluster URL where no node answers raises RedisUnavailableError naming the address."""
    store = open_store("redis+cluster://127.0.0.1:1", prefix=_prefix())
    with pytest.raises(RedisUnavailableError) as caught:
        async with store:
            pass
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", 1)
