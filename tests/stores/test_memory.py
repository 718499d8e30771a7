"""The memory store's own behaviour, and Worker.serve details best seen on it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from structlog.testing import capture_logs

from tests.stores.test_conformance import record, serving, state_of, until
from work import Job, JobState, Queue, Worker
from work.stores import Claimed, Outcome, open_store
from work.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The memory store works on both anyio backends."""
    return str(request.param)


class FlakyStore(MemoryStore):
    """A memory store whose consumer calls fail ``failures`` times each before working."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.left = {"claim": failures, "renew": failures, "complete": failures, "reap": failures}

    def _maybe_fail(self, name: str) -> None:
        if self.left[name] > 0:
            self.left[name] -= 1
            raise ConnectionError(f"{name}: connection reset")

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> list[Claimed]:
        self._maybe_fail("claim")
        return await super().claim(queues, limit=limit, lease=lease, owner=owner)

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        self._maybe_fail("renew")
        return await super().renew(owner, ids, lease=lease)

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        self._maybe_fail("complete")
        return await super().complete(owner, outcomes)

    async def reap(self, *, lost_limit: int = 3) -> int:
        self._maybe_fail("reap")
        return await super().reap(lost_limit=lost_limit)


def test_open_store_memory() -> None:
    """open_store("memory://") gives a MemoryStore."""
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert repr(store) == "MemoryStore('memory://', jobs=0)"


async def test_records_are_snapshots() -> None:
    """Changing a record a store returned does not change the stored job."""
    store = MemoryStore()
    (rec,) = await store.add([record(args={"items": [1]}, headers={"h": "v"})])
    rec.args["items"].append(2)
    rec.headers["h"] = "changed"
    got = await store.get(rec.id)
    assert got is not None and got.args == {"items": [1]} and got.headers == {"h": "v"}


async def test_enter_more_than_once() -> None:
    """The memory store may be entered again; its jobs stay."""
    store = MemoryStore()
    async with store:
        await store.add([record()])
    async with store, store:
        assert len(await store.list()) == 1


async def test_non_object_args_are_a_decode_error() -> None:
    """Args stored as valid JSON that is not an object are a decode error too."""
    store = MemoryStore()
    (rec,) = await store.add([record()])
    store._rows[rec.id].args_json = "[1, 2]"  # what a buggy writer might leave
    (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="w")
    assert claimed.decode_error is not None and "object" in claimed.decode_error
    got = await store.get(rec.id)
    assert got is not None and got.args == {}


async def test_add_from_another_thread_wakes_a_waiter() -> None:
    """A job added from another thread's event loop wakes wait_for_work (by polling)."""
    store = MemoryStore()
    added = threading.Event()

    async def add_later() -> None:
        await anyio.sleep(0.3)  # the waiter must sleep meanwhile
        added.set()
        await store.add([record()])

    def add_elsewhere() -> None:
        anyio.run(add_later)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, add_elsewhere)
            await store.wait_for_work(["default"], 30)
            assert added.is_set(), "wait_for_work returned before the add"


async def test_serve_survives_store_errors() -> None:
    """Store errors in claim, renew, complete and reap are logged and retried; jobs still
    finish."""
    store = FlakyStore(failures=2)
    worker = Worker()

    @worker.handler()
    async def slowish(job: Job) -> str:
        await anyio.sleep(0.2)
        return "ok"

    queue = Queue(store)
    recs = await queue.enqueue_many([Job("slowish") for _ in range(3)])
    with capture_logs() as logs:
        async with serving(store, worker, lease=0.3):
            for rec in recs:
                done = await queue.wait(rec.id, timeout=10)
                assert done.state is JobState.SUCCEEDED and done.result == "ok"
    assert store.left == {"claim": 0, "renew": 0, "complete": 0, "reap": 0}
    # Connection errors are an outage: one line when it starts, one when the store answers.
    events = [(entry["event"], entry.get("call")) for entry in logs]
    assert ("store unreachable; retrying until it is back", "claim") in events
    assert "store reachable again" in {event for event, _ in events}
    assert all(entry["error"].endswith("connection reset") for entry in logs if "error" in entry)


async def test_serve_claims_only_up_to_capacity() -> None:
    """serve claims no more jobs than it can run (the worker's max_concurrency by default)."""
    store = MemoryStore()
    worker = Worker(max_concurrency=2, shutdown_grace=0)
    started = 0
    two = anyio.Event()

    @worker.handler()
    async def stuck(job: Job) -> None:
        nonlocal started
        started += 1
        if started == 2:
            two.set()
        await anyio.sleep_forever()

    queue = Queue(store)
    await queue.enqueue_many([Job("stuck") for _ in range(5)])
    async with serving(store, worker):
        with anyio.fail_after(10):
            await two.wait()
        await anyio.sleep(0.1)  # give an over-eager claim loop the chance to misbehave
        stats = await store.stats()
    assert stats["default"] == {"running": 2, "queued": 3}
    assert started == 2


async def test_serve_consumes_only_its_queues() -> None:
    """serve(queues=[...]) runs jobs from those queues only; one name as a str works too."""
    store = MemoryStore()
    worker = Worker()
    ran: list[str] = []

    @worker.handler()
    async def note(job: Job) -> None:
        ran.append(job.queue)

    queue = Queue(store)
    a = await queue.enqueue(Job("note", queue="a"))
    b = await queue.enqueue(Job("note", queue="b"))
    c = await queue.enqueue(Job("note", queue="c"))
    async with serving(store, worker, queues=["a", "b"]):
        await queue.wait(a.id, timeout=10)
        await queue.wait(b.id, timeout=10)
    assert sorted(ran) == ["a", "b"]
    assert await state_of(store, c.id) is JobState.QUEUED
    async with serving(store, Worker(), queues="c", unknown_handler_grace=0):
        done = await queue.wait(c.id, timeout=10)
    assert done.status == 404


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"queues": []}, "queues"),
        ({"queues": [""]}, "queue name"),
        ({"concurrency": 0}, "concurrency"),
        ({"lease": 0}, "lease"),
    ],
)
async def test_serve_validates_its_arguments(options: dict[str, Any], match: str) -> None:
    """serve refuses empty queues, a concurrency below 1 and a non-positive lease."""
    async with Worker() as worker:
        with pytest.raises(ValueError, match=match):
            await worker.serve(MemoryStore(), **options)


async def test_serve_needs_a_running_worker() -> None:
    """serve on a worker that is not running is a RuntimeError."""
    with pytest.raises(RuntimeError, match="not running"):
        await Worker().serve(MemoryStore())


async def test_serve_on_a_stopping_worker_returns_at_once() -> None:
    """serve started just as the worker stops (start_soon, then stop) returns quietly."""
    store = MemoryStore()
    (rec,) = await store.add([record()])
    async with Worker() as worker, anyio.create_task_group() as tg:
        tg.start_soon(worker.serve, store)
        worker.stop()
    assert await state_of(store, rec.id) is JobState.QUEUED


async def test_running_job_learns_of_cancel_before_it_starts() -> None:
    """A cancel requested while the job waits for a worker slot ends it CANCELLED unrun."""
    store = MemoryStore()
    worker = Worker(max_concurrency=1, shutdown_grace=0)
    gate = anyio.Event()
    blocking = anyio.Event()
    ran: list[str] = []

    @worker.handler()
    async def blocker(job: Job) -> None:
        blocking.set()
        await gate.wait()

    @worker.handler()
    async def victim(job: Job) -> None:
        ran.append(job.id)

    queue = Queue(store)
    first = await queue.enqueue(Job("blocker"))
    async with serving(store, worker, concurrency=2, lease=0.3):
        with anyio.fail_after(10):
            await blocking.wait()
        second = await queue.enqueue(Job("victim"))

        async def victim_claimed() -> bool:
            return await state_of(store, second.id) is JobState.RUNNING

        await until(victim_claimed)
        assert await queue.cancel(second.id) is True
        done = await queue.wait(second.id, timeout=10)
        gate.set()
        await queue.wait(first.id, timeout=10)
    assert done.state is JobState.CANCELLED and ran == []


def test_memory_store_is_usable_from_a_blocking_portal() -> None:
    """A memory store entered in a blocking portal serves calls from the caller's thread."""
    store = MemoryStore()
    with anyio.from_thread.start_blocking_portal() as portal:
        (rec,) = portal.call(store.add, [record()])
        assert portal.call(store.get, rec.id) == rec
    assert threading.active_count() >= 1
