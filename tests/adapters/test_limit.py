"""Tests for the limit adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from work import Adapter, Constant, Handler, Job, RetryLater, Status, Worker
from work.adapters import limit, parse_rate, retry
from work.adapters.limit import Limit

pytestmark = pytest.mark.anyio

MakeJob = Callable[..., Job]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """A handler that counts how many run at once and waits until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.running = 0
        self.most = 0
        self.done = 0

    async def __call__(self, job: Job) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.opened.wait()
        finally:
            self.running -= 1
        self.done += 1


async def noop(job: Job) -> None:
    """A handler that does nothing."""


async def run_all(handler: Handler, jobs: list[Job]) -> None:
    async def run(job: Job) -> None:
        await handler(job)

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(run, job)


async def test_concurrency_caps_executions_at_once(make_job: MakeJob) -> None:
    """With concurrency=2 at most two run at once; the others wait their turn and all finish."""
    gate = Gate()
    limited = limit(concurrency=2)(gate)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_all, limited, [make_job() for _ in range(6)])
            await anyio.wait_all_tasks_blocked()
            assert gate.running == 2
            gate.opened.set()
    assert gate.most == 2
    assert gate.done == 6


async def test_concurrency_is_per_key(make_job: MakeJob) -> None:
    """Each key has its own slots: different tenants run together, one tenant one at a time."""
    gate = Gate()
    limited = limit(concurrency=1, key=lambda job: job.args["tenant"])(gate)
    jobs = [make_job(args={"tenant": t}) for t in ("a", "a", "b", "c", "c")]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_all, limited, jobs)
            await anyio.wait_all_tasks_blocked()
            assert gate.running == 3
            gate.opened.set()
    assert gate.done == 5


async def test_no_wait_raises_retry_later(make_job: MakeJob) -> None:
    """With wait=False a job over the concurrency raises RetryLater(retry_after) at once."""
    gate = Gate()
    limited = limit(concurrency=1, wait=False, retry_after=2.5)(gate)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_all, limited, [make_job()])
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RetryLater) as caught:
                await limited(make_job())
            gate.opened.set()
    assert caught.value.delay == 2.5
    assert caught.value.status is Status.TOO_MANY_REQUESTS


async def test_rate_without_waiting_with_a_fake_clock(make_job: MakeJob) -> None:
    """rate="2/s": two start, the third is told to come back when a start is free."""
    clock = FakeClock()
    limited = Limit(rate="2/s", wait=False, clock=clock)(noop)
    await limited(make_job())
    await limited(make_job())
    with pytest.raises(RetryLater) as caught:
        await limited(make_job())
    assert caught.value.delay == pytest.approx(0.5)
    clock.now += 0.5
    await limited(make_job())
    with pytest.raises(RetryLater):
        await limited(make_job())
    clock.now += 10
    for _ in range(2):
        await limited(make_job())


async def test_rate_waits_when_over(make_job: MakeJob) -> None:
    """rate="20/s" with wait: after the burst of 20, starts are spaced 1/20 s apart."""
    starts: list[float] = []

    async def note(job: Job) -> None:
        starts.append(anyio.current_time())

    limited = limit(rate="20/s")(note)
    with anyio.fail_after(5):
        for _ in range(23):
            await limited(make_job())
    assert starts[19] - starts[0] < 0.05
    assert starts[22] - starts[0] >= 0.14
    assert starts[22] - starts[0] < 2.0


async def test_rate_and_concurrency_together(make_job: MakeJob) -> None:
    """Concurrent waiters on a rate each reserve their own start: no burst past the rate."""
    starts: list[float] = []

    async def note(job: Job) -> None:
        starts.append(anyio.current_time())

    limited = limit(rate="10/s", concurrency=5)(note)
    with anyio.fail_after(5):
        await run_all(limited, [make_job() for _ in range(12)])
    starts.sort()
    assert len(starts) == 12
    assert starts[11] - starts[0] >= 0.18


async def test_cancelled_waiter_gives_its_place_back(make_job: MakeJob) -> None:
    """A job cancelled while waiting for a slot takes nothing: the next one still runs."""
    gate = Gate()
    adapter = limit(concurrency=1)
    limited = adapter(gate)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_all, limited, [make_job()])
            await anyio.wait_all_tasks_blocked()
            with anyio.move_on_after(0.01) as scope:
                await limited(make_job())
            assert scope.cancelled_caught
            gate.opened.set()
        await limited(make_job())
    assert gate.done == 2
    assert adapter._buckets == {}


async def test_idle_concurrency_buckets_are_dropped(make_job: MakeJob) -> None:
    """With concurrency only, a key's bucket goes when its last execution ends."""
    adapter = limit(concurrency=2, key=lambda job: job.args["k"])
    limited = adapter(noop)
    for k in range(100):
        await limited(make_job(args={"k": k}))
    assert adapter._buckets == {}


async def test_idle_rate_buckets_are_dropped_once_refilled(make_job: MakeJob) -> None:
    """With a rate, idle keys are swept once their tokens are full again."""
    clock = FakeClock()
    adapter = Limit(rate="5/s", key=lambda job: job.args["k"], clock=clock)
    limited = adapter(noop)
    for k in range(50):
        await limited(make_job(args={"k": k}))
    assert len(adapter._buckets) == 50
    clock.now += 1.0
    await limited(make_job(args={"k": "last"}))
    assert list(adapter._buckets) == ["last"]


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("100/s", (100, 1.0)),
        ("10/m", (10, 60.0)),
        ("5/h", (5, 3600.0)),
        ("1/d", (1, 86400.0)),
        ("3/10s", (3, 10.0)),
        (" 7 / minute ", (7, 60.0)),
        ("2/hours", (2, 3600.0)),
    ],
)
def test_parse_rate(rate: str, expected: tuple[int, float]) -> None:
    """Rates parse to (count, period in seconds)."""
    assert parse_rate(rate) == expected


@pytest.mark.parametrize(
    "rate", ["", "fast", "10", "10/x", "0/s", "10/0s", "-1/s", "1.5/s", "5/./s"]
)
def test_bad_rate_is_a_value_error_naming_it(rate: str) -> None:
    """A bad rate string is a ValueError whose message names it."""
    with pytest.raises(ValueError) as caught:
        limit(rate=rate)
    assert repr(rate) in str(caught.value)


def test_settings_are_validated() -> None:
    """No limit at all, or a concurrency below 1, is refused."""
    with pytest.raises(ValueError, match="concurrency"):
        limit()
    with pytest.raises(ValueError, match="0"):
        limit(concurrency=0)
    with pytest.raises(TypeError):
        limit(concurrency=1.5)  # type: ignore[arg-type]


def test_repr_names_the_limits() -> None:
    """The repr shows the settings."""
    assert repr(limit(concurrency=3, rate="5/m")) == (
        "limit(concurrency=3, rate='5/m', key=None, wait=True)"
    )


async def test_worker_rejection_ends_429_and_retry_defers() -> None:
    """Through a Worker: a rejection ends 429; with retry outside, it defers and then runs."""
    release = anyio.Event()

    async def hold(job: Job) -> str:
        if job.args.get("hold"):
            await release.wait()
        return "ran"

    async with Worker(adapters=[limit(concurrency=1, wait=False, retry_after=0.01)]) as plain:
        plain.register("hold", hold)
        with anyio.fail_after(5):
            first = await plain.perform(Job("hold", {"hold": True}))
            await anyio.wait_all_tasks_blocked()
            rejected = await plain.perform(Job("hold"), sync=True)
            release.set()
            await first.wait()
    assert rejected.status is Status.TOO_MANY_REQUESTS
    assert isinstance(rejected.error, RetryLater)

    release = anyio.Event()
    tries = 0

    def count_tries(handler: Handler) -> Handler:
        async def counted(job: Job) -> Any:
            nonlocal tries
            tries += 1
            return await handler(job)

        return counted

    adapters: list[Adapter] = [
        retry(backoff=Constant(0)),
        count_tries,
        limit(concurrency=1, wait=False, retry_after=0.01),
    ]
    async with Worker(adapters=adapters) as worker:
        worker.register("hold", hold)
        with anyio.fail_after(5):
            first = await worker.perform(Job("hold", {"hold": True}))
            await anyio.wait_all_tasks_blocked()
            later = await worker.perform(Job("hold"))
            await anyio.wait_all_tasks_blocked()  # rejected once, now waiting to try again
            release.set()
            await later.wait()
    assert later.status is Status.SUCCESS
    assert later.result == "ran"
    assert later.ctx.attempt == 1
    assert tries >= 3  # the first job once, the later one rejected at least once, then run


async def test_an_idle_spell_caps_the_burst_at_count(make_job: MakeJob) -> None:
    """After a long idle spell a "3/s" rate allows a burst of exactly 3, not more."""
    clock = FakeClock()
    limited = Limit(rate="3/s", wait=False, clock=clock)(noop)
    await limited(make_job())
    clock.now += 1000.0
    for _ in range(3):
        await limited(make_job())
    with pytest.raises(RetryLater):
        await limited(make_job())


async def test_a_per_minute_rate_refills_at_its_speed(make_job: MakeJob) -> None:
    """ "6/m" gives a new start every 10 s: the wait named is 10 s, then 5 s after 5 s."""
    clock = FakeClock()
    limited = Limit(rate="6/m", wait=False, clock=clock)(noop)
    for _ in range(6):
        await limited(make_job())
    with pytest.raises(RetryLater) as caught:
        await limited(make_job())
    assert caught.value.delay == pytest.approx(10.0)
    clock.now += 5.0
    with pytest.raises(RetryLater) as caught:
        await limited(make_job())
    assert caught.value.delay == pytest.approx(5.0)
    clock.now += 5.0
    await limited(make_job())
    with pytest.raises(RetryLater):
        await limited(make_job())


async def test_a_cancelled_rate_waiter_refunds_exactly_one_start(make_job: MakeJob) -> None:
    """A start reserved by a waiter that is cancelled goes back: one, not zero nor two."""
    clock = FakeClock()
    limited = Limit(rate="2/s", clock=clock)(noop)
    with anyio.fail_after(5):
        await limited(make_job())
        await limited(make_job())  # the bucket is empty now
        with anyio.move_on_after(0.05) as waiting:
            await limited(make_job())  # reserves the next start, 0.5 s away
        assert waiting.cancelled_caught
        clock.now += 0.5  # one start refilled
        with anyio.move_on_after(0.3) as first:
            await limited(make_job())
        assert not first.cancelled_caught  # refunded: this start was free at once
        with anyio.move_on_after(0.1) as second:
            await limited(make_job())
        assert second.cancelled_caught  # but only one was refunded: this one must wait
