"""Tests for ConcurrentJob: ramp-up, replacement, PerformWith modes, adaptive pollers, sync use."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from work import (
    ConcurrentJob,
    Ctx,
    Job,
    PerformWith,
    Status,
    UnknownHandlerError,
    Worker,
)

# Generous deadlines: the machine has 2 cores and CI may be loaded.
DEADLINE = 10.0


async def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Wait until ``condition()`` holds, checking every few milliseconds, or fail."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


def ctx_of(job: Job) -> Ctx:
    """The Ctx of the execution ``job`` is part of."""
    assert job.ctx is not None
    return job.ctx


def make_cj(fn: Callable[[Job], Any], **kwargs: Any) -> ConcurrentJob:
    """A ConcurrentJob for Job("task") with ``fn`` registered as its handler."""
    cj = ConcurrentJob(Job("task"), **kwargs)
    cj.register("task", fn)
    return cj


# -- ramp-up, replacement, worker numbers ---------------------------------------------------


@pytest.mark.anyio
async def test_ramp_up_one_at_once_then_one_per_interval_up_to_max() -> None:
    """One poller starts at once, then one more per start_interval, never above max_workers."""
    first_seen: dict[int, float] = {}
    running_at_first_execution: list[int] = []
    peak = 0
    all_started = anyio.Event()

    async def task(job: Job) -> None:
        nonlocal peak
        number = ctx_of(job)["worker_number"]
        if not first_seen:
            running_at_first_execution.append(cj.running_workers)
        first_seen.setdefault(number, anyio.current_time())
        peak = max(peak, cj.running_workers)
        if len(first_seen) == 3:
            all_started.set()

    cj = make_cj(
        task,
        perform_with=PerformWith.EVERY,
        perform_every=0.02,
        max_workers=3,
        start_interval=0.3,
    )
    begin = anyio.current_time()
    async with cj:
        with anyio.fail_after(DEADLINE):
            await all_started.wait()
        # Keep going a little: a fourth poller would show up within one start_interval.
        await anyio.sleep(0.4)
        assert cj.running_workers == 3
    assert running_at_first_execution == [1]
    assert sorted(first_seen, key=first_seen.__getitem__) == [1, 2, 3]
    assert set(first_seen) == {1, 2, 3}
    assert peak == 3
    assert first_seen[1] - begin < 2.0
    # The ramp is a lower bound on the gaps (load only makes them longer).
    assert first_seen[2] - first_seen[1] >= 0.25
    assert first_seen[3] - first_seen[2] >= 0.25
    assert cj.running_workers == 0


@pytest.mark.anyio
async def test_once_pollers_end_and_are_replaced() -> None:
    """With ONCE each poller performs once and ends; ended pollers are replaced."""
    numbers: list[int] = []
    enough = anyio.Event()

    async def task(job: Job) -> None:
        numbers.append(ctx_of(job)["worker_number"])
        await anyio.sleep(0.005)
        if len(numbers) >= 12:
            enough.set()

    cj = make_cj(task, perform_with=PerformWith.ONCE, max_workers=2, start_interval=0.0)
    async with cj:
        with anyio.fail_after(DEADLINE):
            await enough.wait()
        assert cj.running_workers <= 2
    # Twelve executions from at most two pollers at a time: pollers were replaced.
    assert len(numbers) >= 12
    assert set(numbers) <= {1, 2}


@pytest.mark.anyio
async def test_worker_number_is_one_based_and_within_max_workers() -> None:
    """ctx["worker_number"] is 1-based and each of 1..max_workers shows up."""
    seen: set[int] = set()
    all_seen = anyio.Event()

    async def task(job: Job) -> None:
        seen.add(ctx_of(job)["worker_number"])
        if len(seen) >= 4:
            all_seen.set()
        await anyio.sleep(0.01)

    cj = make_cj(task, perform_with=PerformWith.ONCE, max_workers=4, start_interval=0.0)
    async with cj:
        with anyio.fail_after(DEADLINE):
            await all_seen.wait()
    assert seen == {1, 2, 3, 4}


# -- PerformWith.EVERY ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_runs_on_each_poller_without_overlap() -> None:
    """EVERY repeats on each poller, and a poller's executions never overlap."""
    active: collections.Counter[int] = collections.Counter()
    counts: collections.Counter[int] = collections.Counter()
    overlapped: list[int] = []
    enough = anyio.Event()

    async def task(job: Job) -> None:
        number = ctx_of(job)["worker_number"]
        active[number] += 1
        if active[number] > 1:
            overlapped.append(number)
        counts[number] += 1
        # Longer than perform_every: the next tick falls during this execution.
        await anyio.sleep(0.03)
        active[number] -= 1
        if len(counts) == 2 and min(counts.values()) >= 4:
            enough.set()

    cj = make_cj(
        task,
        perform_with=PerformWith.EVERY,
        perform_every=0.01,
        max_workers=2,
        start_interval=0.0,
    )
    async with cj:
        with anyio.fail_after(DEADLINE):
            await enough.wait()
    assert overlapped == []
    assert set(counts) == {1, 2}


@pytest.mark.anyio
async def test_a_failing_execution_does_not_end_an_every_poller() -> None:
    """A handler that raises (500) does not end its EVERY poller: it keeps performing."""
    calls = 0
    enough = anyio.Event()

    async def task(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls >= 5:
            enough.set()
        raise ValueError("broken")

    cj = make_cj(
        task, perform_with=PerformWith.EVERY, perform_every=0.01, max_workers=1, start_interval=0
    )
    async with cj:
        with anyio.fail_after(DEADLINE):
            await enough.wait()
        assert cj.running_workers == 1
    assert calls >= 5


# -- PerformWith.RECEIVE --------------------------------------------------------------------


@pytest.mark.anyio
async def test_receive_from_a_memory_stream_delivers_each_item_once() -> None:
    """RECEIVE puts every stream item in args[key] exactly once; run() returns at the end."""
    received: list[int] = []
    numbers: set[int] = set()
    send, receive = anyio.create_memory_object_stream[int](100)

    async def task(job: Job) -> None:
        received.append(job.args["item"])
        numbers.add(ctx_of(job)["worker_number"])
        await anyio.sleep(0.001)

    cj = make_cj(
        task,
        perform_with=PerformWith.RECEIVE,
        source=receive,
        key="item",
        max_workers=3,
        start_interval=0.0,
    )
    async with send:
        for i in range(60):
            await send.send(i)
    with anyio.fail_after(DEADLINE):
        async with receive:
            await cj.run()
    assert sorted(received) == list(range(60))
    assert numbers <= {1, 2, 3}
    assert cj.running_workers == 0


@pytest.mark.anyio
async def test_receive_from_an_async_generator_delivers_each_item_once() -> None:
    """RECEIVE reads an async generator safely from several pollers; run() returns at its end."""
    received: list[str] = []

    async def source() -> AsyncIterator[str]:
        for i in range(40):
            await anyio.lowlevel.checkpoint()
            yield f"item-{i}"

    async def task(job: Job) -> None:
        received.append(job.args["received_data"])
        await anyio.sleep(0.001)

    cj = make_cj(
        task,
        perform_with=PerformWith.RECEIVE,
        source=source(),
        max_workers=3,
        start_interval=0.0,
    )
    with anyio.fail_after(DEADLINE):
        await cj.run()
    assert sorted(received) == sorted(f"item-{i}" for i in range(40))
    assert len(received) == 40


@pytest.mark.anyio
async def test_receive_stop_while_waiting_for_items_returns() -> None:
    """A stop ends RECEIVE pollers that are waiting for an item; items left stay in the source."""
    send, receive = anyio.create_memory_object_stream[int](10)
    received: list[int] = []
    got_one = anyio.Event()

    async def task(job: Job) -> None:
        received.append(job.args["received_data"])
        got_one.set()

    cj = make_cj(
        task, perform_with=PerformWith.RECEIVE, source=receive, max_workers=2, start_interval=0
    )
    async with send, receive:
        async with cj:
            await send.send(1)
            with anyio.fail_after(DEADLINE):
                await got_one.wait()
        assert received == [1]
        await send.send(2)
        assert receive.receive_nowait() == 2


# -- adaptive pollers -----------------------------------------------------------------------


class Outbox:
    """An in-memory work source: handlers take one row each, 444 when it is empty."""

    def __init__(self) -> None:
        self.rows: collections.deque[int] = collections.deque()
        self.done: list[int] = []
        self.empty_polls = 0

    async def handle(self, job: Job) -> None:
        """Take one row (a little work) or answer 444 when there is none."""
        if not self.rows:
            self.empty_polls += 1
            ctx_of(job).status = Status.NO_RESPONSE
            return
        row = self.rows.popleft()
        await anyio.sleep(0.01)
        self.done.append(row)


@pytest.mark.anyio
async def test_adaptive_pool_grows_under_load_and_shrinks_to_min_workers() -> None:
    """Adaptive: the pool grows while work succeeds and retires to min_workers when idle."""
    outbox = Outbox()
    outbox.rows.extend(range(300))
    peak = 0

    async def task(job: Job) -> None:
        nonlocal peak
        peak = max(peak, cj.running_workers)
        await outbox.handle(job)

    cj = make_cj(
        task,
        perform_with=PerformWith.ONCE,
        max_workers=4,
        min_workers=1,
        adaptive=True,
        start_interval=0.02,
        backoff_cap=0.1,
        retire_after=2,
    )
    async with cj:
        await wait_until(lambda: not outbox.rows and cj.running_workers == 1)
        grown = peak
        # It stays at min_workers while idle, polling (backed off) all the while.
        polls = outbox.empty_polls
        await anyio.sleep(0.4)
        assert cj.running_workers == 1
        assert outbox.empty_polls > polls
        # New work: the pool grows again.
        peak = 0
        outbox.rows.extend(range(300, 500))
        await wait_until(lambda: peak >= 2)
    assert grown > 1
    assert sorted(outbox.done) == list(range(len(outbox.done)))
    assert len(set(outbox.done)) == len(outbox.done)


@pytest.mark.anyio
async def test_adaptive_pool_keeps_min_workers_running() -> None:
    """Adaptive with min_workers=2 ramps to two pollers even with nothing to do, and keeps them."""
    outbox = Outbox()
    cj = make_cj(
        outbox.handle,
        perform_with=PerformWith.ONCE,
        max_workers=4,
        min_workers=2,
        adaptive=True,
        start_interval=0.01,
        backoff_cap=0.05,
        retire_after=1,
    )
    async with cj:
        await wait_until(lambda: cj.running_workers == 2 and outbox.empty_polls >= 10)
        assert cj.running_workers == 2


@pytest.mark.anyio
async def test_adaptive_back_off_slows_idle_pollers() -> None:
    """Adaptive pollers back off (exponentially, capped) on 444: far fewer empty polls."""
    counts = {"plain": 0, "adaptive": 0}

    def counting(name: str) -> Callable[[Job], Any]:
        async def task(job: Job) -> None:
            counts[name] += 1
            ctx_of(job).status = Status.NO_RESPONSE

        return task

    plain = make_cj(
        counting("plain"), perform_with=PerformWith.ONCE, max_workers=1, start_interval=0.01
    )
    adaptive = make_cj(
        counting("adaptive"),
        perform_with=PerformWith.ONCE,
        max_workers=1,
        start_interval=0.01,
        adaptive=True,
        backoff_cap=0.2,
    )
    async with plain, adaptive:
        await anyio.sleep(1.0)
    # Pauses 0.01, 0.02, 0.04, 0.08, 0.16, then 0.2: at most 9 executions in one second
    # (load only makes it fewer); the plain poller is replaced every 10 ms.
    assert 1 <= counts["adaptive"] <= 10
    assert counts["plain"] >= 2 * counts["adaptive"]


@pytest.mark.anyio
async def test_adaptive_statuses_429_and_503_also_back_off() -> None:
    """429 and 503 count as "nothing to do" for an adaptive poller, like 444."""
    for status in (Status.TOO_MANY_REQUESTS, Status.UNAVAILABLE):
        calls = 0

        async def task(job: Job, status: Status = status) -> None:
            nonlocal calls
            calls += 1
            ctx_of(job).status = status

        cj = make_cj(
            task,
            perform_with=PerformWith.ONCE,
            max_workers=2,
            start_interval=0.01,
            adaptive=True,
            backoff_cap=0.1,
        )
        async with cj:
            await anyio.sleep(0.5)
            # No success, no demand: the pool never grew past min_workers.
            assert cj.running_workers == 1
        # Without back-off one poller would have run ~50 times.
        assert 1 <= calls <= 10


@pytest.mark.anyio
async def test_adaptive_back_off_survives_a_long_idle_streak() -> None:
    """A poller idle for a very long streak keeps backing off (no float overflow)."""
    calls = 0
    enough = anyio.Event()

    async def task(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls >= 1100:
            enough.set()
        ctx_of(job).status = Status.NO_RESPONSE

    # backoff_cap=0 makes the 1,100 idle outcomes quick; the exponent still climbs.
    cj = make_cj(
        task,
        perform_with=PerformWith.ONCE,
        max_workers=1,
        start_interval=0.0,
        adaptive=True,
        backoff_cap=0.0,
    )
    async with cj:
        with anyio.fail_after(DEADLINE):
            await enough.wait()
        assert cj.running_workers == 1


# -- lifecycle -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_with_starts_and_stops_its_own_worker() -> None:
    """`async with cj` starts its worker and pollers; leaving stops them all."""
    ran = anyio.Event()

    async def task(job: Job) -> None:
        ran.set()

    cj = make_cj(task, perform_every=0.01, max_workers=2, start_interval=0.0)
    async with cj:
        assert cj.worker.running
        with anyio.fail_after(DEADLINE):
            await ran.wait()
    assert cj.running_workers == 0
    assert not cj.worker.running


@pytest.mark.anyio
async def test_run_returns_after_stop_from_a_task_and_from_a_sync_handler() -> None:
    """`await cj.run()` runs until cj.stop(), called from a task or from a sync handler."""
    ran = anyio.Event()

    async def task(job: Job) -> None:
        ran.set()

    cj = make_cj(task, perform_every=0.01, max_workers=2, start_interval=0.0)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cj.run)
            await ran.wait()
            cj.stop()
    assert cj.running_workers == 0

    def stopping(job: Job) -> None:
        cj2.stop()

    cj2 = make_cj(stopping, perform_every=0.01, max_workers=1, start_interval=0.0)
    with anyio.fail_after(DEADLINE):
        await cj2.run()
    assert not cj2.worker.running


@pytest.mark.anyio
async def test_stop_lets_running_executions_finish() -> None:
    """Stopping lets an execution in progress finish (within the worker's shutdown_grace)."""
    started = anyio.Event()
    finished: list[Status] = []

    async def task(job: Job) -> None:
        started.set()
        await anyio.sleep(0.1)
        finished.append(Status.SUCCESS)

    cj = make_cj(task, perform_with=PerformWith.ONCE, max_workers=1, start_interval=0.0)
    with anyio.fail_after(DEADLINE):
        async with cj:
            await started.wait()
    assert finished == [Status.SUCCESS]


@pytest.mark.anyio
async def test_waiting_for_running_executions_on_stop_does_not_spin() -> None:
    """While a stop waits for executions to finish, the supervisor sleeps (no busy loop)."""
    started = anyio.Event()

    async def task(job: Job) -> None:
        started.set()
        await anyio.sleep(0.5)

    cj = make_cj(task, perform_with=PerformWith.ONCE, max_workers=1, start_interval=0.0)
    with anyio.fail_after(DEADLINE):
        async with cj:
            await started.wait()
            cpu = time.process_time()
    # A spinning wait would burn about the whole half second of CPU.
    assert time.process_time() - cpu < 0.25


@pytest.mark.anyio
async def test_a_given_worker_not_running_is_started_and_stopped() -> None:
    """A given worker that is not running is started for the run and stopped after it."""
    worker = Worker()
    seen_running: list[bool] = []

    async def task(job: Job) -> None:
        seen_running.append(worker.running)
        cj.stop()

    worker.register("task", task)
    cj = ConcurrentJob(
        Job("task"), perform_every=0.01, max_workers=1, start_interval=0, worker=worker
    )
    assert cj.worker is worker
    with anyio.fail_after(DEADLINE):
        await cj.run()
    assert seen_running[:1] == [True]
    assert not worker.running


@pytest.mark.anyio
async def test_a_given_running_worker_is_used_as_is_and_left_running() -> None:
    """A given worker that is already running is used as it is and keeps running after."""
    ran = anyio.Event()

    async def task(job: Job) -> Any:
        ran.set()
        return "ok"

    async with Worker() as worker:
        worker.register("task", task)
        cj = ConcurrentJob(
            Job("task"), perform_every=0.01, max_workers=1, start_interval=0, worker=worker
        )
        async with cj:
            with anyio.fail_after(DEADLINE):
                await ran.wait()
        assert worker.running
        execution = await worker.perform(Job("task"), sync=True)
        assert execution.result == "ok"


@pytest.mark.anyio
async def test_run_ends_when_a_given_running_worker_stops() -> None:
    """When the worker it was given stops, run() returns (pollers end like the worker's loops)."""
    ran = anyio.Event()

    async def task(job: Job) -> None:
        ran.set()

    async with Worker() as worker:
        worker.register("task", task)
        cj = ConcurrentJob(
            Job("task"), perform_every=0.01, max_workers=2, start_interval=0, worker=worker
        )
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cj.run)
                await ran.wait()
                worker.stop()
    assert cj.running_workers == 0


@pytest.mark.anyio
async def test_an_error_from_the_source_ends_run_with_that_error() -> None:
    """A RECEIVE source that raises ends run() with that exception, not an exception group."""

    async def source() -> AsyncIterator[int]:
        yield 1
        raise OSError("broker gone")

    cj = make_cj(
        lambda job: None,
        perform_with=PerformWith.RECEIVE,
        source=source(),
        max_workers=2,
        start_interval=0,
    )
    with anyio.fail_after(DEADLINE), pytest.raises(OSError, match="broker gone"):
        await cj.run()
    assert not cj.worker.running

    cj = make_cj(
        lambda job: None,
        perform_with=PerformWith.RECEIVE,
        source=source(),
        max_workers=2,
        start_interval=0,
    )
    with anyio.fail_after(DEADLINE), pytest.raises(OSError, match="broker gone"):
        async with cj:
            await anyio.sleep_forever()


@pytest.mark.anyio
async def test_running_twice_at_once_is_a_runtime_error() -> None:
    """run() or `async with` on a ConcurrentJob that is already running: RuntimeError."""
    cj = make_cj(lambda job: None, perform_every=0.05, max_workers=1, start_interval=0.0)
    async with cj:
        with pytest.raises(RuntimeError, match="already running"):
            await cj.run()
        with pytest.raises(RuntimeError, match="already running"):
            async with cj:
                pass
        with pytest.raises(RuntimeError, match="already started"):
            cj.start()


@pytest.mark.anyio
async def test_unknown_handler_is_raised_by_run() -> None:
    """run() / `async with` for an unregistered handler raise UnknownHandlerError at once."""
    cj = ConcurrentJob(Job("missing"), perform_every=1.0, max_workers=1, start_interval=0)
    with pytest.raises(UnknownHandlerError, match="missing"):
        await cj.run()
    with pytest.raises(UnknownHandlerError, match="missing"):
        async with cj:
            pass
    assert not cj.worker.running


@pytest.mark.anyio
async def test_can_run_again_after_a_stop() -> None:
    """A stopped ConcurrentJob can run again."""
    runs = 0
    ran = anyio.Event()

    async def task(job: Job) -> None:
        nonlocal runs
        runs += 1
        ran.set()

    cj = make_cj(task, perform_every=0.01, max_workers=1, start_interval=0)
    for _ in range(2):
        ran = anyio.Event()
        async with cj:
            with anyio.fail_after(DEADLINE):
                await ran.wait()
    assert runs >= 2


# -- sync start/stop -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_start_and_stop_from_plain_threads(backend: str) -> None:
    """cj.start()/cj.stop() run the pollers on a background thread, no event loop needed."""
    seen = threading.Event()
    numbers: set[int] = set()

    def task(job: Job) -> None:
        numbers.add(ctx_of(job)["worker_number"])
        if len(numbers) == 2:
            seen.set()

    cj = make_cj(task, perform_every=0.01, max_workers=2, start_interval=0.0)
    cj.start(backend=backend)
    try:
        assert seen.wait(DEADLINE)
        with pytest.raises(RuntimeError, match="already started"):
            cj.start(backend=backend)
    finally:
        stopper = threading.Thread(target=cj.stop)
        stopper.start()
        stopper.join(DEADLINE)
    assert not stopper.is_alive()
    assert numbers == {1, 2}
    assert cj.running_workers == 0
    cj.stop()  # a second stop is a no-op


def test_sync_stop_reraises_the_error_that_ended_the_run() -> None:
    """stop() after start() re-raises what ended the run (here: an exhausted RECEIVE is fine,
    an unknown handler is not)."""
    cj = ConcurrentJob(Job("missing"), perform_every=1.0, max_workers=1, start_interval=0)
    with pytest.raises(UnknownHandlerError):
        cj.start()

    async def items() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    received: list[int] = []
    done = threading.Event()

    def task(job: Job) -> None:
        received.append(job.args["received_data"])
        if len(received) == 3:
            done.set()

    cj = make_cj(
        task, perform_with=PerformWith.RECEIVE, source=items(), max_workers=2, start_interval=0
    )
    cj.start()
    assert done.wait(DEADLINE)
    cj.stop()
    assert sorted(received) == [0, 1, 2]


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, r"max_workers must be >= 1, got 0"),
        ({"max_workers": -2}, ValueError, r"max_workers.*-2"),
        ({"max_workers": "3"}, TypeError, r"max_workers.*'3'"),
        ({"max_workers": True}, TypeError, r"max_workers.*True"),
        ({"start_interval": -1}, ValueError, r"start_interval.*-1"),
        ({"start_interval": "1s"}, TypeError, r"start_interval.*'1s'"),
        ({"perform_every": None}, ValueError, r"perform_every"),
        ({"perform_every": 0}, ValueError, r"perform_every must be > 0, got 0"),
        ({"min_workers": 0}, ValueError, r"min_workers.*got 0"),
        ({"min_workers": 5}, ValueError, r"min_workers.*got 5"),
        ({"min_workers": 1.5}, TypeError, r"min_workers.*1\.5"),
        ({"backoff_cap": -1}, ValueError, r"backoff_cap.*-1"),
        ({"retire_after": 0}, ValueError, r"retire_after.*got 0"),
        ({"retire_after": 2.0}, TypeError, r"retire_after.*2\.0"),
        ({"key": ""}, ValueError, r"key.*''"),
        ({"worker": "w"}, TypeError, r"worker must be a Worker, got str"),
        ({"perform_with": "every"}, TypeError, r"perform_with.*'every'"),
        ({"perform_with": PerformWith.RECEIVE}, ValueError, r"RECEIVE needs a source"),
        (
            {"perform_with": PerformWith.RECEIVE, "source": [1, 2]},
            TypeError,
            r"source must be an async iterable, got \[1, 2\]",
        ),
    ],
)
def test_bad_arguments_raise_errors_naming_the_value(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad arguments raise ValueError/TypeError whose message names the bad value."""
    arguments: dict[str, Any] = {
        "perform_with": PerformWith.EVERY,
        "perform_every": 1.0,
        "max_workers": 3,
        "start_interval": 0.1,
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        ConcurrentJob(Job("task"), **arguments)


def test_job_must_be_a_job() -> None:
    """Something other than a Job is a TypeError naming its type."""
    with pytest.raises(TypeError, match="needs a Job, got str"):
        ConcurrentJob("task", max_workers=1, start_interval=0, perform_every=1)  # type: ignore[arg-type]


def test_register_and_repr() -> None:
    """register() goes to the worker; repr shows handler, mode and pollers."""
    cj = ConcurrentJob(Job("task"), perform_with=PerformWith.ONCE, max_workers=3, start_interval=0)
    cj.register("task", lambda job: None)
    assert "task" in cj.worker.handlers
    assert repr(cj) == "<ConcurrentJob 'task' ONCE running=0/3>"
