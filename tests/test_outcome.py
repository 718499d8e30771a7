"""What each code a handler raises or sets becomes: in process (Execution) and durably (decide)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from work import (
    Constant,
    Exponential,
    Job,
    JobRecord,
    JobState,
    Queue,
    RetryLater,
    RetryPolicy,
    Status,
    StatusError,
    Worker,
)
from work._durable.outcome import decide
from work.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


def _worker() -> Worker:
    worker = Worker()

    @worker.handler()
    async def raise_code(job: Job) -> None:
        raise StatusError(int(job.args["code"]))

    @worker.handler()
    async def set_code(job: Job) -> str:
        assert job.ctx is not None
        job.ctx.status = int(job.args["code"])
        return "kept"

    @worker.handler()
    async def returns(job: Job) -> Any:
        return job.args["value"]

    return worker


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (400, Status.BAD_REQUEST),
        (418, Status.IM_A_TEAPOT),
        (444, Status.NO_RESPONSE),
        (499, Status.CANCELLED),
        (503, Status.UNAVAILABLE),
        (511, Status.NETWORK_AUTHENTICATION_REQUIRED),
        # Raising says "failed": a raised non-error code is a bug in the handler, so 500.
        (200, Status.INTERNAL_ERROR),
        (204, Status.INTERNAL_ERROR),
        (302, Status.INTERNAL_ERROR),
        (100, Status.INTERNAL_ERROR),
        # StatusError(-1) itself is refused (ValueError), which is an ordinary exception: 500.
        (-1, Status.INTERNAL_ERROR),
    ],
)
async def test_a_raised_code_in_process(code: int, expected: Status) -> None:
    """A raised StatusError ends with its code when it is 4xx/5xx, else 500 (never 2xx)."""
    async with _worker() as worker:
        execution = await worker.perform(Job("raise_code", {"code": code}), sync=True)
    assert execution.status is expected
    assert execution.error is not None
    if code == -1:
        assert isinstance(execution.error, ValueError)


@pytest.mark.parametrize("code", [201, 202, 204, 302, 418, 503])
async def test_a_set_code_is_kept(code: int) -> None:
    """A handler that sets any known code and returns ends with exactly that code."""
    async with _worker() as worker:
        execution = await worker.perform(Job("set_code", {"code": code}), sync=True)
    assert int(execution.status) == code and execution.result == "kept"
    assert execution.error is None


async def _serve_one(job: Job, *, retry: RetryPolicy | None = None) -> JobRecord:
    store = MemoryStore()
    async with store, _worker() as worker, anyio.create_task_group() as tg:
        queue = Queue(store)
        rec = await queue.enqueue(job, retry=retry)
        tg.start_soon(worker.serve, store)
        done = await queue.wait(rec.id, timeout=10)
        tg.cancel_scope.cancel()
    return done


@pytest.mark.parametrize(
    ("code", "state", "status"),
    [
        (400, JobState.FAILED, Status.BAD_REQUEST),
        (418, JobState.FAILED, Status.IM_A_TEAPOT),
        # A StatusError(499) the handler raised is a failure: only a real cancel is CANCELLED.
        (499, JobState.FAILED, Status.CANCELLED),
        (200, JobState.FAILED, Status.INTERNAL_ERROR),
        (-1, JobState.FAILED, Status.INTERNAL_ERROR),
    ],
)
async def test_a_raised_code_durably(code: int, state: JobState, status: Status) -> None:
    """Durably, a raised code ends FAILED with the in-process status (no retry policy)."""
    done = await _serve_one(Job("raise_code", {"code": code}))
    assert done.state is state and done.status is status and done.attempts == 1


@pytest.mark.parametrize("code", [201, 202, 204])
async def test_a_set_2xx_code_succeeds_durably(code: int) -> None:
    """A handler that sets a 2xx code ends SUCCEEDED with that code and its result."""
    done = await _serve_one(Job("set_code", {"code": code}))
    assert done.state is JobState.SUCCEEDED and int(done.status) == code
    assert done.result == "kept"


async def test_a_set_503_is_a_retryable_failure() -> None:
    """A handler that sets 503 and returns is stored as a retryable failure (retried)."""
    store = MemoryStore()
    calls = 0
    worker = Worker()

    @worker.handler()
    async def flaky(job: Job) -> None:
        nonlocal calls
        calls += 1
        assert job.ctx is not None
        job.ctx.status = 503 if calls == 1 else 200

    async with store, worker, anyio.create_task_group() as tg:
        queue = Queue(store)
        policy = RetryPolicy(max_attempts=2, backoff=Constant(0))
        rec = await queue.enqueue(Job("flaky"), retry=policy)
        tg.start_soon(worker.serve, store)
        done = await queue.wait(rec.id, timeout=10)
        tg.cancel_scope.cancel()
    assert done.state is JobState.SUCCEEDED and done.attempts == 2 and calls == 2


async def test_a_stop_hands_back_but_a_raised_499_does_not() -> None:
    """While stopping, a raised StatusError(499) is stored FAILED, not handed back to rerun."""
    store = MemoryStore()
    worker = Worker(shutdown_grace=5)
    started = anyio.Event()
    release = anyio.Event()

    @worker.handler()
    async def late_499(job: Job) -> None:
        started.set()
        await release.wait()
        raise StatusError(499, "gave up")

    async with store:
        queue = Queue(store)
        rec = await queue.enqueue(Job("late_499"))
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            with anyio.fail_after(10):
                await started.wait()
            worker.stop()
            release.set()
        done = await queue.get(rec.id)
    assert done is not None
    assert done.state is JobState.FAILED and done.status is Status.CANCELLED
    assert done.error == "gave up"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({1: "a"}, "key 1"),
        ({"x": float("nan")}, "nan"),
        ({"x": {1, 2}}, "set"),
    ],
)
async def test_results_follow_the_args_json_rule(value: Any, named: str) -> None:
    """A result JSON cannot carry faithfully (int keys, NaN, a set) fails 500, naming the part."""
    worker = Worker()

    @worker.handler()
    async def give(job: Job) -> Any:
        return value

    store = MemoryStore()
    async with store, worker, anyio.create_task_group() as tg:
        queue = Queue(store)
        rec = await queue.enqueue(Job("give"))
        tg.start_soon(worker.serve, store)
        done = await queue.wait(rec.id, timeout=10)
        tg.cancel_scope.cancel()
    assert done.state is JobState.FAILED and done.status is Status.INTERNAL_ERROR
    assert done.error is not None and named in done.error and done.result is None


async def test_retry_later_without_a_policy_defers_up_to_twenty_times() -> None:
    """RetryLater on a job enqueued without a RetryPolicy defers 20 times, then fails 429."""
    store = MemoryStore()
    worker = Worker()
    calls = 0

    @worker.handler()
    async def busy(job: Job) -> None:
        nonlocal calls
        calls += 1
        raise RetryLater(0)

    async with store, worker, anyio.create_task_group() as tg:
        queue = Queue(store)
        rec = await queue.enqueue(Job("busy"))
        tg.start_soon(worker.serve, store)
        done = await queue.wait(rec.id, timeout=30)
        tg.cancel_scope.cancel()
    assert calls == 21
    assert done.state is JobState.FAILED and done.status is Status.TOO_MANY_REQUESTS


async def test_a_stored_backoff_grows_with_the_attempt() -> None:
    """Exponential(jitter=False) stored with the job: the retry after attempt N waits
    base * factor ** (N - 1), as the policy says."""
    policy = RetryPolicy(
        max_attempts=5, backoff=Exponential(base=10, factor=3, cap=1000, jitter=False)
    )
    store = MemoryStore()
    async with store, _worker() as worker:
        rec = await Queue(store).enqueue(Job("raise_code", {"code": 503}), retry=policy)
        execution = await worker.perform(Job("raise_code", {"code": 503}), sync=True)
    gaps = []
    for attempt in (1, 2, 3):
        before = datetime.now(UTC)
        outcome = decide(rec.replace(attempts=attempt), execution, stopping=False)
        assert outcome.state is JobState.SCHEDULED and outcome.scheduled_for is not None
        gaps.append((outcome.scheduled_for - before).total_seconds())
    assert gaps == pytest.approx([10, 30, 90], abs=1)


async def test_a_custom_backoff_is_refused_at_enqueue() -> None:
    """A Backoff the stores cannot rebuild is a TypeError naming it at enqueue; nothing stored."""

    class Doubling(Constant):
        def delay(self, attempt: int) -> float:
            return 2.0 * attempt

    store = MemoryStore()
    async with store:
        queue = Queue(store)
        with pytest.raises(TypeError, match="Doubling"):
            await queue.enqueue(Job("x"), retry=RetryPolicy(backoff=Doubling(1)))
        assert await queue.list() == []
