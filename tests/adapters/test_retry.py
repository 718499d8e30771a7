"""Tests for the retry adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from work import Constant, Job, RetryLater, RetryPolicy, Status, StatusError, Worker
from work._core.chain import settled  # the Worker's settle step, as around every adapter
from work.adapters import Retry, retry

pytestmark = pytest.mark.anyio

MakeJob = Callable[..., Job]
FAST = Constant(0.0)


class Script:
    """A handler that plays a list of outcomes, one per call, and notes what it saw."""

    def __init__(self, *outcomes: Status | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.attempts: list[int] = []
        self.statuses_seen: list[Status] = []

    async def __call__(self, job: Job) -> Any:
        assert job.ctx is not None
        self.attempts.append(job.ctx.attempt)
        self.statuses_seen.append(job.ctx.status)
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        job.ctx.status = outcome
        return f"call {self.calls}"


async def test_retries_retryable_status_until_success(make_job: MakeJob) -> None:
    """A retryable status is tried again; attempts count 1, 2, 3 and the last result wins."""
    script = Script(Status.UNAVAILABLE, Status.INTERNAL_ERROR, Status.SUCCESS)
    job = make_job()
    result = await retry(max_attempts=5, backoff=FAST)(script)(job)
    assert result == "call 3"
    assert script.attempts == [1, 2, 3]
    assert job.ctx is not None and job.ctx.status is Status.SUCCESS
    assert job.ctx.attempt == 3


async def test_status_is_reset_before_each_attempt(make_job: MakeJob) -> None:
    """Every attempt starts with ctx.status UNKNOWN, not the previous attempt's status."""
    script = Script(Status.UNAVAILABLE, Status.SUCCESS)
    await retry(backoff=FAST)(script)(make_job())
    assert script.statuses_seen == [Status.UNKNOWN, Status.UNKNOWN]


async def test_gives_up_after_max_attempts(make_job: MakeJob) -> None:
    """After max_attempts the last attempt's status and result are the execution's."""
    script = Script(Status.UNAVAILABLE)
    job = make_job()
    result = await retry(max_attempts=3, backoff=FAST)(script)(job)
    assert script.calls == 3
    assert result == "call 3"
    assert job.ctx is not None and job.ctx.status is Status.UNAVAILABLE


async def test_non_retryable_status_is_not_retried(make_job: MakeJob) -> None:
    """A 4xx other than 408/429 ends at once."""
    script = Script(Status.BAD_REQUEST, Status.SUCCESS)
    job = make_job()
    await retry(max_attempts=3, backoff=FAST)(script)(job)
    assert script.calls == 1
    assert job.ctx is not None and job.ctx.status is Status.BAD_REQUEST


async def test_exception_is_retried_and_the_last_one_propagates(make_job: MakeJob) -> None:
    """A plain exception counts as 500: retried, and re-raised when attempts run out."""
    script = Script(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        await retry(max_attempts=2, backoff=FAST)(settled(script))(make_job())
    assert script.calls == 2


async def test_status_error_uses_its_status(make_job: MakeJob) -> None:
    """A StatusError is judged by its own status: 404 is not retried."""
    script = Script(StatusError(Status.NOT_FOUND, "gone"))
    with pytest.raises(StatusError):
        await retry(max_attempts=3, backoff=FAST)(script)(make_job())
    assert script.calls == 1


async def test_retry_on_decides(make_job: MakeJob) -> None:
    """A custom retry_on retries the statuses it accepts and only those."""
    policy = RetryPolicy(max_attempts=3, backoff=FAST, retry_on=lambda s: s is Status.CONFLICT)
    script = Script(Status.CONFLICT, Status.UNAVAILABLE, Status.SUCCESS)
    job = make_job()
    await retry(policy)(script)(job)
    assert script.calls == 2
    assert job.ctx is not None and job.ctx.status is Status.UNAVAILABLE


async def test_retry_later_does_not_use_an_attempt(make_job: MakeJob) -> None:
    """RetryLater waits its delay and tries again with the same attempt number."""
    script = Script(RetryLater(0.0), RetryLater(0.0), Status.SUCCESS)
    job = make_job()
    await retry(max_attempts=1, backoff=FAST)(script)(job)
    assert script.attempts == [1, 1, 1]
    assert job.ctx is not None and job.ctx.status is Status.SUCCESS


async def test_retry_later_uses_attempts_after_max_deferrals(make_job: MakeJob) -> None:
    """Past max_deferrals, a RetryLater is an ordinary 429 failure that uses an attempt."""
    script = Script(RetryLater(0.0))
    with pytest.raises(RetryLater):
        await retry(max_attempts=2, max_deferrals=1, backoff=FAST)(script)(make_job())
    assert script.attempts == [1, 1, 2]


async def test_retry_later_waits_its_delay(make_job: MakeJob) -> None:
    """The pause after a RetryLater is its delay."""
    script = Script(RetryLater(0.05), Status.SUCCESS)
    start = anyio.current_time()
    with anyio.fail_after(5):
        await retry(backoff=FAST)(script)(make_job())
    assert 0.05 <= anyio.current_time() - start < 2.0


async def test_backoff_pauses_between_attempts(make_job: MakeJob) -> None:
    """The policy's backoff is slept between attempts."""
    script = Script(Status.UNAVAILABLE)
    start = anyio.current_time()
    with anyio.fail_after(5):
        await retry(max_attempts=3, backoff=Constant(0.03))(script)(make_job())
    assert 0.06 <= anyio.current_time() - start < 2.0


async def test_cancellation_is_not_retried(make_job: MakeJob) -> None:
    """A cancelled attempt propagates the cancellation and is never tried again."""
    calls = 0

    async def hang(job: Job) -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05) as scope:
        await retry(max_attempts=5, backoff=FAST)(hang)(make_job())
    assert scope.cancelled_caught
    assert calls == 1


def test_policy_and_settings_together_is_a_type_error() -> None:
    """retry() takes a policy or keyword settings, not both."""
    with pytest.raises(TypeError, match="max_attempts"):
        retry(RetryPolicy(), max_attempts=2)


def test_bad_settings_raise_from_the_factory() -> None:
    """Invalid policy settings fail when the adapter is made, not when a job runs."""
    with pytest.raises(ValueError, match="max_attempts"):
        retry(max_attempts=0)
    with pytest.raises(TypeError, match="RetryPolicy"):
        Retry(policy="3")  # type: ignore[arg-type]


def test_repr_shows_the_policy() -> None:
    """The adapter's repr names its policy."""
    assert "max_attempts=4" in repr(retry(max_attempts=4))


async def test_worker_end_to_end_retries_an_exception() -> None:
    """Through a Worker, a handler that fails once then succeeds ends 200 on attempt 2."""
    calls = 0

    async def flaky(job: Job) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("transient")
        return "ok"

    async with Worker(adapters=[retry(backoff=FAST)]) as worker:
        worker.register("flaky", flaky)
        with anyio.fail_after(5):
            execution = await worker.perform(Job("flaky"), sync=True)
    assert execution.status is Status.SUCCESS
    assert execution.result == "ok"
    assert execution.error is None
    assert execution.ctx.attempt == 2


async def test_worker_end_to_end_retries_a_timeout() -> None:
    """A 408 from the job's timeout is retried, each attempt with its own timeout."""
    calls = 0

    async def slow_once(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep_forever()

    async with Worker(adapters=[retry(backoff=FAST)]) as worker:
        worker.register("slow_once", slow_once)
        with anyio.fail_after(5):
            execution = await worker.perform(Job("slow_once", timeout=0.05), sync=True)
    assert execution.status is Status.SUCCESS
    assert calls == 2


async def test_a_retry_on_that_accepts_200_is_asked(make_job: MakeJob) -> None:
    """Only the default retry_on lets a 200 return unasked: a custom one still decides."""
    seen: list[Status] = []

    def retry_on(status: Status) -> bool:
        seen.append(status)
        return True

    script = Script(Status.SUCCESS)
    policy = RetryPolicy(max_attempts=2, backoff=FAST, retry_on=retry_on)
    await retry(policy)(script)(make_job())
    assert script.attempts == [1, 2]
    assert seen == [Status.SUCCESS]


async def test_a_policy_subclass_is_asked_on_success(make_job: MakeJob) -> None:
    """A RetryPolicy subclass's should_retry is consulted even for a 200."""

    class Always(RetryPolicy):
        def should_retry(self, status: Status, attempt: int) -> bool:
            return attempt < self.max_attempts

    script = Script(Status.SUCCESS)
    await retry(Always(max_attempts=3, backoff=FAST))(script)(make_job())
    assert script.attempts == [1, 2, 3]


@pytest.mark.parametrize("max_deferrals", [2, 3])
async def test_deferrals_are_counted_exactly(make_job: MakeJob, max_deferrals: int) -> None:
    """Three RetryLater then success: with max_deferrals=3 all three defer without using an
    attempt; with 2 the third counts as a 429 failure, which one attempt cannot retry."""
    script = Script(RetryLater(0), RetryLater(0), RetryLater(0), Status.SUCCESS)
    adapter = retry(max_attempts=1, max_deferrals=max_deferrals, backoff=FAST)
    job = make_job()
    if max_deferrals == 3:
        assert await adapter(settled(script))(job) == "call 4"
        assert script.attempts == [1, 1, 1, 1]
    else:
        with pytest.raises(RetryLater):
            await adapter(settled(script))(job)
        assert script.calls == 3
        assert job.ctx is not None and job.ctx.status is Status.TOO_MANY_REQUESTS


class AskedBackoff:
    """A Backoff that notes which attempt numbers it is asked about (and never pauses)."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def delay(self, attempt: int) -> float:
        """Note ``attempt``; no pause."""
        self.asked.append(attempt)
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        """A description (unused in process)."""
        return {"kind": "asked"}


async def test_each_pause_is_asked_for_its_attempt(make_job: MakeJob) -> None:
    """The pause after failed attempt N is backoff.delay(N): 1, then 2, then 3."""
    backoff = AskedBackoff()
    script = Script(Status.UNAVAILABLE, Status.UNAVAILABLE, Status.UNAVAILABLE, Status.SUCCESS)
    await retry(max_attempts=4, backoff=backoff)(settled(script))(make_job())
    assert backoff.asked == [1, 2, 3] and script.attempts == [1, 2, 3, 4]
