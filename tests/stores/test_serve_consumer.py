"""The serve loop's own rules, on the memory store: what the mutation report of 2026-12 found
no test checking (outcomes stored while stopping, lease renewal and cancel delivery that go on
after an idle tick, a failed renew or a finished job, statuses set without raising, deferrals
without a policy, growing backoffs, NaN results, failed completes, records Job() rejects)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from tests.stores.test_conformance import record, serving, until
from work import (
    Exponential,
    Job,
    JobState,
    Queue,
    RetryLater,
    RetryPolicy,
    Status,
    Worker,
)
from work.stores import Outcome
from work.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The memory store works on both anyio backends."""
    return str(request.param)


class _Ordered(set[str]):
    """A set that iterates in a given order (the serve loop walks renew()'s answer)."""

    def __init__(self, order: Sequence[str]) -> None:
        super().__init__(order)
        self._order = list(order)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)


class Watched(MemoryStore):
    """A memory store that counts calls, can fail the next renew or complete, and puts given
    ids first in renew()'s answer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"reap": 0, "renew": 0, "complete": 0}
        self.fail_renew = 0
        self.fail_complete = 0
        self.stop_first: list[str] = []
        self.outcomes: list[tuple[datetime, Outcome]] = []

    async def reap(self, *, lost_limit: int = 3) -> int:
        self.calls["reap"] += 1
        return await super().reap(lost_limit=lost_limit)

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        self.calls["renew"] += 1
        if self.fail_renew:
            self.fail_renew -= 1
            raise ConnectionError("renew: connection reset")
        stop = await super().renew(owner, ids, lease=lease)
        return _Ordered(self.stop_first + sorted(stop - set(self.stop_first)))

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        self.calls["complete"] += 1
        if self.fail_complete:
            self.fail_complete -= 1
            raise ConnectionError("complete: connection reset")
        now = datetime.now(UTC)
        self.outcomes += [(now, o) for o in outcomes]
        return await super().complete(owner, outcomes)


async def test_outcome_of_a_job_finishing_while_stopping_is_stored() -> None:
    """A job that finishes (200, or a failure) while the worker is stopping has its outcome
    stored; it is not handed back and run again."""
    store = MemoryStore()
    worker = Worker(shutdown_grace=10)
    started = anyio.Event()
    release = anyio.Event()
    runs: list[str] = []

    @worker.handler()
    async def slow(job: Job) -> str:
        runs.append(job.id)
        if len(runs) == 2:
            started.set()
        await release.wait()
        if job.args.get("fail"):
            raise ValueError("broken")
        return "done"

    queue = Queue(store)
    ok = await queue.enqueue(Job("slow"))
    bad = await queue.enqueue(Job("slow", {"fail": True}))
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(lambda: worker.serve(store))
        with anyio.fail_after(10):
            await started.wait()
        worker.stop()
        release.set()
    done_ok = await queue.get(ok.id)
    done_bad = await queue.get(bad.id)
    assert done_ok is not None and done_ok.state is JobState.SUCCEEDED
    assert done_ok.result == "done" and done_ok.attempts == 1
    assert done_bad is not None and done_bad.state is JobState.FAILED
    assert done_bad.status is Status.INTERNAL_ERROR
    assert sorted(runs) == sorted([ok.id, bad.id])


async def _keeps_its_lease(store: Watched, worker: Worker, queue: Queue) -> None:
    """Run one job for three leases (0.6 s each): it must keep its lease and run once."""
    rec = await queue.enqueue(Job("long"))
    done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1


def _long_worker(runs: list[str]) -> Worker:
    worker = Worker()

    @worker.handler()
    async def long(job: Job) -> None:
        runs.append(job.id)
        await anyio.sleep(1.8)

    return worker


async def test_leases_are_renewed_after_an_idle_tick() -> None:
    """The renew loop goes on after ticks with nothing to renew: a job started later keeps
    its lease for as long as it runs."""
    store = Watched()
    runs: list[str] = []
    worker = _long_worker(runs)
    queue = Queue(store)
    async with serving(store, worker, lease=0.6):

        async def idle_a_while() -> bool:
            # Each reap is lease/2 apart: two of them span an idle renew tick (lease/3).
            return store.calls["reap"] >= 3

        await until(idle_a_while)
        assert store.calls["renew"] == 0  # nothing was held: no renew call yet
        await _keeps_its_lease(store, worker, queue)
    assert len(runs) == 1


async def test_leases_are_renewed_after_a_failed_renew() -> None:
    """One renew() that fails is logged and the next tick renews again: the job keeps its
    lease."""
    store = Watched()
    store.fail_renew = 1
    runs: list[str] = []
    worker = _long_worker(runs)
    queue = Queue(store)
    async with serving(store, worker, lease=0.6):
        await _keeps_its_lease(store, worker, queue)
    assert store.fail_renew == 0
    assert len(runs) == 1


async def test_cancels_reach_later_jobs_after_one_no_longer_held() -> None:
    """When renew() names first a job this serve no longer holds a slot for (it finished and
    was stored between the renew call and its answer), the cancels of the jobs after it are
    still delivered, including to a job still waiting for a worker slot."""
    store = Watched()
    store.stop_first = ["a-job-already-settled"]
    worker = Worker(max_concurrency=1)  # one execution at a time: the second job waits
    running = anyio.Event()
    ran: list[str] = []

    @worker.handler()
    async def forever(job: Job) -> None:
        ran.append(job.id)
        running.set()
        await anyio.sleep_forever()

    queue = Queue(store)
    async with serving(store, worker, concurrency=2, lease=3):
        blocked = await queue.enqueue(Job("forever"))
        with anyio.fail_after(10):
            await running.wait()
        waiting = await queue.enqueue(Job("forever"))  # claimed, waits for a worker slot

        async def claimed() -> bool:
            return (await store.stats())["default"].get("running") == 2

        await until(claimed)
        assert await queue.cancel(blocked.id) and await queue.cancel(waiting.id)
        # Renewals come at least every second: the cancels arrive within about that.
        got_blocked = await queue.wait(blocked.id, timeout=3)
        got_waiting = await queue.wait(waiting.id, timeout=3)
    assert got_blocked.state is JobState.CANCELLED
    assert got_waiting.state is JobState.CANCELLED
    assert ran == [blocked.id]  # the waiting job never started


async def test_status_set_without_raising_is_a_retryable_failure() -> None:
    """A handler that sets status 503 and returns normally fails with 503, and the job's
    RetryPolicy retries it."""
    store = MemoryStore()
    worker = Worker()

    @worker.handler()
    async def moody(job: Job) -> str:
        assert job.ctx is not None
        if job.ctx.attempt == 1:
            job.ctx.status = 503
        return "fine"

    queue = Queue(store)
    rec = await queue.enqueue(
        Job("moody"), retry=RetryPolicy(max_attempts=2, backoff=Exponential(0.01, jitter=False))
    )
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2 and done.result == "fine"


async def test_retry_later_without_a_policy_defers_20_times() -> None:
    """RetryLater on a job enqueued without a RetryPolicy defers it 20 times (no attempt
    used), then fails it with the handler's 429."""
    store = MemoryStore()
    worker = Worker()
    calls: list[int] = []

    @worker.handler()
    async def busy(job: Job) -> None:
        calls.append(1)
        raise RetryLater(0.001)

    queue = Queue(store)
    rec = await queue.enqueue(Job("busy"))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=20)
    assert done.state is JobState.FAILED and done.status is Status.TOO_MANY_REQUESTS
    assert done.deferrals == 20 and done.attempts == 1
    assert len(calls) == 21


async def test_exponential_backoff_grows_with_the_attempt() -> None:
    """A stored Exponential(jitter=False) backoff schedules each retry later than the one
    before, as the policy computes it from the attempt number."""
    store = Watched()
    worker = Worker()

    @worker.handler()
    async def down(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = 503

    queue = Queue(store)
    policy = RetryPolicy(max_attempts=3, backoff=Exponential(1.0, jitter=False))
    rec = await queue.enqueue(Job("down"), retry=policy)
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=20)
    assert done.state is JobState.FAILED and done.attempts == 3
    waits = [
        (o.scheduled_for - at).total_seconds()
        for at, o in store.outcomes
        if o.state is JobState.SCHEDULED and o.scheduled_for is not None
    ]
    expected = [policy.backoff.delay(1), policy.backoff.delay(2)]
    assert len(waits) == 2
    for got, want in zip(waits, expected, strict=True):
        # Computed a moment before complete() saw it: at most that moment shorter (a busy
        # machine's moment; the waits are 1 s and 2 s, so growth still shows).
        assert want - 0.5 <= got <= want
    assert expected[1] > expected[0]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_nan_or_infinite_result_fails_500(value: float) -> None:
    """A result holding NaN or +-Infinity (not JSON) is refused: FAILED 500, not stored as
    SUCCEEDED."""
    store = MemoryStore()
    worker = Worker()

    @worker.handler()
    async def odd(job: Job) -> dict[str, float]:
        return {"x": value}

    queue = Queue(store)
    rec = await queue.enqueue(Job("odd"))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.INTERNAL_ERROR
    assert done.result is None and done.error is not None and "JSON" in done.error


async def test_failed_complete_is_retried_and_the_job_runs_once() -> None:
    """A complete() that fails is retried until the outcome is stored; the job is not run
    again meanwhile."""
    store = Watched()
    store.fail_complete = 2
    worker = Worker()
    runs: list[str] = []

    @worker.handler()
    async def once(job: Job) -> str:
        runs.append(job.id)
        return "ok"

    queue = Queue(store)
    rec = await queue.enqueue(Job("once"))
    async with serving(store, worker, lease=5):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.result == "ok"
    assert store.fail_complete == 0 and store.calls["complete"] >= 3
    assert runs == [rec.id]


async def test_stored_record_job_rejects_fails_400() -> None:
    """A stored record that Job() refuses (here an empty handler name, written by another
    producer) fails 400 "bad job" without running anything."""
    store = MemoryStore()
    (rec,) = await store.add([record("", enqueued_at=datetime.now(UTC) - timedelta(seconds=1))])
    worker = Worker()
    async with serving(store, worker):
        done = await Queue(store).wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.BAD_REQUEST
    assert done.error is not None and done.error.startswith("bad job")
