"""The Redis store's producer path: ``add`` over a connection of the store's own
(``work.stores._redis_direct``) and ``add_blocking``, redis-py's synchronous client for
``SyncQueue`` (real servers: one Redis and the test cluster)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import redis

from tests.stores.conftest import REDIS_URL, require_redis_cluster
from work import Job, JobState, SyncQueue
from work.stores import JobRecord
from work.stores._redis_direct import BUSY, DirectScript, DirectScriptSync
from work.stores.redis import RedisStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client is asyncio-only."""
    return "asyncio"


@pytest.fixture(params=["redis", "redis-cluster"])
def url(request: pytest.FixtureRequest) -> str:
    """One Redis server, or the test cluster."""
    return REDIS_URL if request.param == "redis" else require_redis_cluster()


def _prefix() -> str:
    return f"anywork-dtest-{uuid.uuid4().hex[:12]}"


def _job(id: str, **changes: Any) -> JobRecord:
    return JobRecord(id=id, handler="h", enqueued_at=datetime.now(UTC)).replace(**changes)


class Spied(RedisStore):
    """A Redis store that counts the add calls made on its event loop."""

    def __init__(self, url: str) -> None:
        super().__init__(url, prefix=_prefix())
        self.async_adds = 0

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        self.async_adds += 1
        return await super().add(records)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Spied]:
    """An entered store on a fresh prefix, its keys deleted after the test."""
    new = Spied(url)
    async with new:
        try:
            yield new
        finally:
            await new.drop()


def _servers(url: str) -> list[redis.Redis]:
    """Plain clients of every primary behind ``url`` (one for a single server)."""
    parts = urlsplit(url)
    if not url.startswith("redis+cluster"):
        return [redis.Redis.from_url(url)]
    seed = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 7001)
    with seed:
        nodes = seed.cluster("nodes")
    return [
        redis.Redis(host=address.split(":")[0], port=int(address.split(":")[1].split("@")[0]))
        for address, node in nodes.items()
        if "master" in node["flags"]
    ]


def _flush_scripts(url: str) -> None:
    for server in _servers(url):
        with server:
            server.script_flush()


def _kill_client(url: str, sockname: tuple[str, int]) -> None:
    """Have the server behind ``url`` close the client connection from ``sockname``, as a
    restart or ``CLIENT KILL`` by an operator would."""
    host, port = sockname[:2]
    for server in _servers(url):
        with server:
            server.client_kill_filter(_type=None, laddr=None, addr=f"{host}:{port}")


@contextmanager
def _sync_queue(url: str) -> Iterator[tuple[Spied, SyncQueue]]:
    """A SyncQueue over a counting store on a fresh prefix, its keys deleted after."""
    store = Spied(url)
    try:
        with SyncQueue(store) as queue:
            yield store, queue
    finally:
        anyio.run(store.drop)


def _direct(store: RedisStore) -> DirectScript:
    direct = store._direct
    assert direct is not None
    return direct


class Calls:
    """Counts the calls of a store's DirectScript."""

    def __init__(self, direct: DirectScript) -> None:
        self.count = 0
        self._call = direct.call

        async def call(args: Sequence[bytes]) -> Any:
            self.count += 1
            return await self._call(args)

        direct.call = call  # type: ignore[method-assign]


async def test_a_lone_add_goes_over_the_direct_connection(store: Spied) -> None:
    """A lone add is one script call over the store's own connection, with add's answers:
    the new job, the existing record for a taken id, the active job of a unique key."""
    calls = Calls(_direct(store))
    (new,) = await store.add([_job("a", args={"k": 1}, unique_key="u")])
    assert new.id == "a" and new.args == {"k": 1} and new.state is JobState.QUEUED
    (taken,) = await store.add([_job("a", args={"k": 2})])
    assert taken.args == {"k": 1}
    (same_key,) = await store.add([_job("b", unique_key="u")])
    assert same_key.id == "a"
    assert calls.count == 3
    assert await store.get("b") is None


async def test_adds_while_one_is_in_flight_use_the_pool(store: Spied) -> None:
    """Concurrent adds do not wait for the direct connection: those made while it is busy go
    through the client's pool, and every answer is right (one job per unique key)."""
    calls = Calls(_direct(store))
    results: dict[int, JobRecord] = {}

    async def add(i: int) -> None:
        (results[i],) = await store.add([_job(f"j{i}", args={"i": i}, unique_key=f"k{i % 5}")])

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(add, i)
    assert 1 <= calls.count < 40
    owners = {results[i].unique_key: results[i].id for i in range(40)}
    assert len(owners) == 5
    for i in range(40):
        assert results[i].id == owners[f"k{i % 5}"]
    listed = await store.list(limit=100)
    assert sorted(r.id for r in listed) == sorted(set(owners.values()))


async def test_add_after_the_script_cache_is_lost(store: Spied, url: str) -> None:
    """After the server loses its scripts (a restart, SCRIPT FLUSH), an add still stores its
    job: NOSCRIPT on the direct connection hands the call to the client, which loads it."""
    await store.add([_job("before")])
    _flush_scripts(url)
    (rec,) = await store.add([_job("after", args={"x": 1})])
    assert rec.args == {"x": 1}
    stored = await store.get("after")
    assert stored is not None and stored.args == {"x": 1}
    (again,) = await store.add([_job("third")])
    assert again.id == "third"


async def test_add_after_the_server_closed_the_connection(store: Spied, url: str) -> None:
    """When the server drops the direct connection (CLIENT KILL, a restart), the next add
    still stores its job, and the one after goes over a new direct connection."""
    await store.add([_job("first")])
    conn = _direct(store)._conn
    assert conn is not None and conn.is_connected
    _kill_client(url, conn._writer.get_extra_info("sockname"))
    (rec,) = await store.add([_job("second")])
    assert rec.id == "second" and await store.get("second") is not None
    calls = Calls(_direct(store))
    (third,) = await store.add([_job("third")])
    assert third.id == "third" and calls.count == 1
    assert _direct(store)._conn is not conn  # the killed one was dropped


async def test_a_cancelled_add_leaves_no_late_reply_behind(store: Spied) -> None:
    """An add cancelled while its reply is on the way closes the direct connection, so the
    next add reads its own reply (here: the existing job), not the late one."""
    await store.add([_job("existing", args={"v": "old"})])
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.add([_job("cancelled")])
    (rec,) = await store.add([_job("existing", args={"v": "new"})])
    assert rec.args == {"v": "old"}


async def test_closing_the_store_closes_the_direct_connection(url: str) -> None:
    """Leaving the store closes its direct connection; entering it again makes a new one."""
    store = RedisStore(url, prefix=_prefix())
    try:
        async with store:
            await store.add([_job("a")])
            conn = _direct(store)._conn
            assert conn is not None and conn.is_connected
        assert store._direct is None and not conn.is_connected
        async with store:
            (rec,) = await store.add([_job("b")])
            assert rec.id == "b"
    finally:
        await store.drop()


def test_direct_script_refuses_a_second_call_in_flight() -> None:
    """DirectScript serves one call at a time and checks its argument count; so does its
    synchronous twin, which answers BUSY instead."""
    sync = DirectScriptSync(object(), "0" * 40, "{t}", 1)
    with pytest.raises(ValueError, match="expected 1"):
        sync.call(())
    with sync._lock:
        assert sync.call((b"x",)) is BUSY

    async def main() -> None:
        direct = DirectScript(object(), "0" * 40, "{t}", 1)
        with pytest.raises(ValueError, match="expected 1"):
            await direct.call(())
        direct.busy = True
        with pytest.raises(RuntimeError, match="in flight"):
            await direct.call((b"x",))

    anyio.run(main)


def test_sync_enqueue_on_redis_runs_in_the_calling_thread(url: str) -> None:
    """SyncQueue.enqueue on Redis stores jobs with redis-py's synchronous client from the
    calling thread (the portal's loop sees no add), with the same answers: the stored
    record, the existing one for a taken id or an active unique key, a batch, and a
    TypeError before anything is stored."""
    with _sync_queue(url) as (store, queue):
        rec = queue.enqueue(Job("noop", {"k": 1}, id="one"), priority=3, unique_key="u")
        assert rec.id == "one" and rec.priority == 3 and rec.state is JobState.QUEUED
        assert queue.enqueue(Job("noop", {"k": 2}, id="one")).args == {"k": 1}
        assert queue.enqueue(Job("noop", id="other"), unique_key="u").id == "one"
        many = queue.enqueue_many([Job("noop", id="two"), Job("noop", id="three")])
        assert [r.id for r in many] == ["two", "three"]
        with pytest.raises(TypeError):
            queue.enqueue(Job("noop", {"bad": object()}))
        stored = queue.get("one")
        assert stored is not None and stored.args == {"k": 1}
        assert queue.get("other") is None
        assert store.async_adds == 0
        assert store._sync
        direct = store._sync_direct
        assert direct is not None and direct._conn is not None  # it went direct


def test_sync_enqueue_while_the_direct_connection_is_busy(url: str) -> None:
    """A thread that finds the synchronous direct connection in use adds through the
    synchronous client's pool instead, with the same answers."""
    with _sync_queue(url) as (store, queue):
        queue.enqueue(Job("noop", id="first"))
        direct = store._sync_direct
        assert direct is not None
        with direct._lock:  # as while another thread's call is in flight
            assert queue.enqueue(Job("noop", {"x": 1}, id="second")).args == {"x": 1}
            assert queue.enqueue(Job("noop", {"x": 2}, id="second")).args == {"x": 1}
        stored = queue.get("second")
        assert stored is not None and stored.args == {"x": 1}
        assert store.async_adds == 0


def test_sync_enqueue_after_the_server_closed_the_connection(url: str) -> None:
    """When the server drops the synchronous direct connection, the next enqueue still
    stores its job and the one after uses a new direct connection."""
    with _sync_queue(url) as (store, queue):
        queue.enqueue(Job("noop", id="first"))
        direct = store._sync_direct
        assert direct is not None
        conn = direct._conn
        _kill_client(url, conn._sock.getsockname())
        assert queue.enqueue(Job("noop", id="second")).id == "second"
        assert queue.get("second") is not None
        assert queue.enqueue(Job("noop", id="third")).id == "third"
        assert direct._conn is not None and direct._conn is not conn
        assert store.async_adds == 0


def test_sync_enqueue_from_many_threads(url: str) -> None:
    """Threads sharing one SyncQueue on Redis store every job once."""
    with _sync_queue(url) as (store, queue):

        def produce(t: int) -> None:
            for i in range(20):
                queue.enqueue(Job("noop", {"i": i}, id=f"t{t}-{i}"))

        with ThreadPoolExecutor(4) as pool:  # a producer's error is raised here
            list(pool.map(produce, range(4)))
        assert queue.stats()["default"]["queued"] == 80
        assert store.async_adds == 0


def test_sync_enqueue_after_the_script_cache_is_lost(url: str) -> None:
    """SyncQueue.enqueue on Redis loads the add script again when the server lost it."""
    with _sync_queue(url) as (_store, queue):
        queue.enqueue(Job("noop", id="before"))
        _flush_scripts(url)
        assert queue.enqueue(Job("noop", {"x": 1}, id="after")).args == {"x": 1}
        stored = queue.get("after")
        assert stored is not None and stored.args == {"x": 1}


def test_sync_enqueue_without_a_sync_client_uses_the_portal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When redis-py's synchronous client cannot be made from the store's options,
    add_blocking answers None and SyncQueue.enqueue adds through the portal as before."""
    monkeypatch.setattr(redis.Redis, "from_url", _refuse)
    with _sync_queue(REDIS_URL) as (store, queue):
        assert queue.enqueue(Job("noop", id="one")).id == "one"
        assert [r.id for r in queue.enqueue_many([Job("noop", id="two")])] == ["two"]
        assert store.async_adds == 2
        assert store._sync is False


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("an option only the asyncio client takes")


def test_add_blocking_needs_an_open_store() -> None:
    """add_blocking on a store that is not open raises RuntimeError; an empty batch adds
    nothing."""
    store = RedisStore(REDIS_URL, prefix=_prefix())
    with pytest.raises(RuntimeError, match="not open"):
        store.add_blocking([_job("a")])

    async def empty() -> list[JobRecord] | None:
        async with store:
            return store.add_blocking([])

    assert anyio.run(empty) == []


async def test_an_add_emits_its_event_from_the_job_it_was_given(store: Spied) -> None:
    """The add script's events carry the job's handler, queue, status, attempt and enqueue
    time from the values it was given (no read of the hash): ENQUEUED for a new job, and
    the state's own kind with its status for a job added finished."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    async with store.events() as events:
        await store.add([_job("new", handler="mail", queue="q1", enqueued_at=at)])
        await store.add(
            [_job("old", handler="sync", state=JobState.FAILED, status=409, attempts=2)]
        )
        seen = []
        with anyio.fail_after(10):
            async for event in events:
                seen.append(event)
                if len(seen) == 2:
                    break
    new, old = seen
    assert (new.kind, new.job_id, new.queue, new.handler) == ("enqueued", "new", "q1", "mail")
    assert (int(new.status), new.attempt, new.at) == (-1, 0, at)
    assert (old.kind, old.job_id, old.handler, int(old.status), old.attempt) == (
        "failed",
        "old",
        "sync",
        409,
        2,
    )


def test_sync_client_that_cannot_connect_is_a_store_unavailable_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A synchronous client that fails to connect as it is made (the cluster client asks a
    node for the slot map) raises RedisUnavailableError, as every store call does."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from work.stores.redis import RedisUnavailableError

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:7001")

    monkeypatch.setattr(redis.Redis, "from_url", unreachable)
    with _sync_queue(REDIS_URL) as (_store, queue), pytest.raises(RedisUnavailableError):
        queue.enqueue(Job("noop", id="one"))
