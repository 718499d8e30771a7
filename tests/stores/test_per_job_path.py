"""The durable path's per-job shortcuts in ``serve`` and ``SyncQueue``: outcomes and the next
claim in one store call (SQLite's ``complete_and_claim``), a claimed job started with no task
of its own, and ``SyncQueue.enqueue`` storing a job on SQLite from the calling thread (the
store method itself: ``test_complete_and_claim.py``)."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from tests.stores.test_conformance import serving, until
from work import Job, JobState, Queue, SyncQueue, Worker
from work.stores import Claimed, Outcome, Store
from work.stores.memory import MemoryStore
from work.stores.sqlite import SQLiteStore

_T = TypeVar("_T")
_S = TypeVar("_S")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both stores here work on both anyio backends."""
    return str(request.param)


class Counted(SQLiteStore):
    """A SQLite store that counts its claim and complete calls."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls = {"claim": 0, "complete": 0, "complete_and_claim": 0}

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> list[Claimed]:
        self.calls["claim"] += 1
        return await super().claim(queues, limit=limit, lease=lease, owner=owner)

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        self.calls["complete"] += 1
        return await super().complete(owner, outcomes)

    async def complete_and_claim(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
    ) -> tuple[set[str], list[Claimed]]:
        self.calls["complete_and_claim"] += 1
        return await super().complete_and_claim(owner, outcomes, queues, limit=limit, lease=lease)


def all_succeeded(store: Store, n: int) -> Callable[[], Awaitable[bool]]:
    """A check for ``until``: ``n`` jobs of the default queue have succeeded."""

    async def check() -> bool:
        return bool((await store.stats()).get("default", {}).get("succeeded", 0) == n)

    return check


def isolated(cls: Callable[..., _S], kind: str, tmp_path: Path) -> _S:
    """A store of ``cls`` (a SQLite, PostgreSQL or Redis store class) under a name no other
    test uses: its own file, schema or key prefix."""
    from tests.stores.conftest import POSTGRES_URL, REDIS_URL

    name = uuid.uuid4().hex[:12]
    if kind == "postgresql":
        return cls(POSTGRES_URL, schema=f"anywork_test_{name}")
    if kind == "redis":
        return cls(REDIS_URL, prefix=f"anywork-test-{name}:")
    return cls(f"sqlite:///{tmp_path / 'jobs.db'}")


@pytest.mark.anyio
async def test_serve_writes_outcomes_and_claims_in_one_call(tmp_path: Path) -> None:
    """A busy serve on SQLite stores finished jobs' outcomes and claims the next ones with
    complete_and_claim, every job still succeeding once."""
    store = Counted(f"sqlite:///{tmp_path / 'jobs.db'}")
    worker = Worker()
    ran: list[int] = []

    async def noop(job: Job) -> None:
        ran.append(job.args["i"])

    worker.register("noop", noop)
    async with store:
        await Queue(store).enqueue_many([Job("noop", {"i": i}) for i in range(120)])
        async with serving(store, worker, concurrency=4):
            await until(all_succeeded(store, 120))
    assert sorted(ran) == list(range(120))
    assert store.calls["complete_and_claim"] > 0
    # Most claims ride along with the outcomes that free their places.
    assert store.calls["claim"] < 120 / 4


@pytest.mark.anyio
async def test_serve_runs_a_job_with_no_task_of_its_own() -> None:
    """While a claimed job's handler runs, serve holds no task for it: the worker's runner
    executes it and the outcome is stored from its completion."""
    store = MemoryStore()
    worker = Worker()
    names: list[str] = []

    async def look(job: Job) -> str:
        names.extend(task.name or "" for task in anyio.get_running_tasks())
        return "ok"

    worker.register("look", look)
    async with store:
        rec = await Queue(store).enqueue(Job("look"))
        async with serving(store, worker):
            done = await Queue(store).wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.result == "ok"
    assert names and not [n for n in names if n.startswith("anywork serve: look")]


class Threads(SQLiteStore):
    """A SQLite store that notes the thread each of its statements ran in."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.threads: list[int] = []

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        self.threads.append(threading.get_ident())
        return super()._call(fn)


def test_sync_enqueue_on_sqlite_runs_in_the_calling_thread(tmp_path: Path) -> None:
    """SyncQueue.enqueue on SQLite stores the job from the calling thread (no portal round
    trip, no thread hop), with the same answers: the stored record, the existing one for a
    taken id, and a TypeError before anything is stored."""
    store = Threads(f"sqlite:///{tmp_path / 'jobs.db'}")
    with SyncQueue(store) as queue:
        store.threads.clear()
        rec = queue.enqueue(Job("noop", {"k": 1}, id="one"), priority=3)
        assert store.threads == [threading.get_ident()]
        assert rec.id == "one" and rec.priority == 3 and rec.state is JobState.QUEUED
        again = queue.enqueue(Job("noop", {"k": 2}, id="one"))
        assert again.args == {"k": 1}
        many = queue.enqueue_many([Job("noop", id="two"), Job("noop", id="three")])
        assert [r.id for r in many] == ["two", "three"]
        assert set(store.threads) == {threading.get_ident()}
        with pytest.raises(TypeError):
            queue.enqueue(Job("noop", {"bad": object()}))
        stored = queue.get("one")
        assert stored is not None and stored.args == {"k": 1}
        assert queue.store.url == store.url
    with pytest.raises(RuntimeError, match="closed"):
        queue.enqueue(Job("noop"))


@pytest.mark.anyio
async def test_jobs_claimed_as_the_worker_stops_are_handed_back(tmp_path: Path) -> None:
    """Jobs that complete_and_claim claims while the worker begins to stop are never started:
    they go straight back to QUEUED without using an attempt, and none stays RUNNING."""
    worker = Worker()

    class StopsMidCall(SQLiteStore):
        async def complete_and_claim(
            self,
            owner: str,
            outcomes: Sequence[Outcome],
            queues: Sequence[str],
            *,
            limit: int,
            lease: float,
        ) -> tuple[set[str], list[Claimed]]:
            worker.stop()  # as a SIGTERM arriving while the call is on its way
            return await super().complete_and_claim(
                owner, outcomes, queues, limit=limit, lease=lease
            )

    store = StopsMidCall(f"sqlite:///{tmp_path / 'jobs.db'}")
    ran: list[int] = []

    async def noop(job: Job) -> None:
        ran.append(job.args["i"])

    worker.register("noop", noop)
    async with store:
        await Queue(store).enqueue_many([Job("noop", {"i": i}) for i in range(20)])
        with anyio.fail_after(10):
            async with worker:
                await worker.serve(store, concurrency=2)
        counts = (await store.stats())["default"]
        assert counts.get("running", 0) == 0
        assert counts["succeeded"] == len(ran) == 2
        assert counts["queued"] == 18
        records = await store.list(state=JobState.QUEUED)
        assert all(r.attempts == 0 for r in records)


@pytest.mark.anyio
@pytest.mark.parametrize(("kind", "held"), [("postgresql", 4), ("redis", 4), ("sqlite", 2)])
async def test_serve_claims_while_outcomes_are_written_up_to_twice_its_concurrency(
    kind: str, held: int, anyio_backend: str, tmp_path: Path
) -> None:
    """On PostgreSQL and Redis (parallel calls) serve claims and runs the next jobs while the
    last outcomes are still being written, holding at most twice its concurrency in jobs; on
    SQLite a place frees only once its outcome is stored. Every job still succeeds once."""
    from work.stores.postgres import PostgresStore
    from work.stores.redis import RedisStore

    if kind != "sqlite" and anyio_backend != "asyncio":
        pytest.skip("asyncpg and redis-py run on asyncio only")
    base: type[SQLiteStore] | type[PostgresStore] | type[RedisStore] = {
        "postgresql": PostgresStore,
        "redis": RedisStore,
        "sqlite": SQLiteStore,
    }[kind]
    gate = anyio.Event()
    writes = [0]

    class Gated(base):  # type: ignore[valid-type,misc]
        async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
            writes[0] += 1
            await gate.wait()
            return await super().complete(owner, outcomes)  # type: ignore[no-any-return]

        async def complete_and_claim(
            self,
            owner: str,
            outcomes: Sequence[Outcome],
            queues: Sequence[str],
            *,
            limit: int,
            lease: float,
        ) -> tuple[set[str], list[Claimed]]:
            writes[0] += 1
            await gate.wait()
            return await super().complete_and_claim(  # type: ignore[no-any-return]
                owner, outcomes, queues, limit=limit, lease=lease
            )

    store = isolated(Gated, kind, tmp_path)
    worker = Worker()
    ran: list[int] = []

    async def noop(job: Job) -> None:
        ran.append(job.args["i"])

    worker.register("noop", noop)

    async def running() -> int:
        return int((await store.stats()).get("default", {}).get("running", 0))

    try:
        async with store:
            await Queue(store).enqueue_many([Job("noop", {"i": i}) for i in range(20)])
            async with serving(store, worker, concurrency=2):

                async def held_all() -> bool:
                    return len(ran) >= held and writes[0] > 0 and await running() == held

                try:
                    await until(held_all)
                    await anyio.sleep(0.3)  # room for a claim past the bound, were there one
                    assert len(ran) == held and await running() == held
                finally:
                    gate.set()  # a failure above must not leave serve's last flush waiting
                await until(all_succeeded(store, 20))
    finally:
        if kind != "sqlite":
            async with store:
                await store.drop()
    assert sorted(ran) == list(range(20))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", ["postgresql", "redis"])
async def test_claims_beside_outcome_writes_never_run_more_than_concurrency(
    kind: str, anyio_backend: str, tmp_path: Path
) -> None:
    """With claims running beside outcome writes (and the claims those writes make when the
    claim loop waits), no more than ``concurrency`` handlers ever run at once."""
    import random

    from work.stores.postgres import PostgresStore
    from work.stores.redis import RedisStore

    store: PostgresStore | RedisStore
    if kind == "postgresql":
        store = isolated(PostgresStore, kind, tmp_path)
    else:
        store = isolated(RedisStore, kind, tmp_path)
    worker = Worker()
    now = [0]
    most = [0]
    ran: list[int] = []
    rng = random.Random(7)

    async def busy(job: Job) -> None:
        now[0] += 1
        most[0] = max(most[0], now[0])
        try:
            await anyio.sleep(rng.choice((0, 0.002, 0.005, 0.01)))
        finally:
            now[0] -= 1
        ran.append(job.args["i"])

    worker.register("busy", busy)
    try:
        async with store:
            await Queue(store).enqueue_many([Job("busy", {"i": i}) for i in range(400)])
            async with serving(store, worker, concurrency=3):
                await until(all_succeeded(store, 400), timeout=60)
    finally:
        async with store:
            await store.drop()
    assert sorted(ran) == list(range(400))
    assert most[0] <= 3
