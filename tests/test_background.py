"""Tests for BackgroundWorker: the thread-safe synchronous twin of Worker."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from work import (
    BackgroundWorker,
    Execution,
    Job,
    Status,
    StatusError,
    UnknownHandlerError,
    Worker,
)

# Generous deadlines: the machine has 2 cores and CI may be loaded.
DEADLINE = 10.0


def make_background(backend: str = "asyncio", **worker_kwargs: Any) -> BackgroundWorker:
    """A BackgroundWorker (not started) with the handlers the tests share."""
    bg = BackgroundWorker(Worker(**worker_kwargs), backend=backend)

    @bg.handler()
    async def double(job: Job) -> int:
        await anyio.lowlevel.checkpoint()
        return int(job.args["x"]) * 2

    @bg.handler()
    def sync_double(job: Job) -> int:
        return int(job.args["x"]) * 2

    @bg.handler()
    async def echo(job: Job) -> Any:
        return job.args["received_data"]

    @bg.handler()
    async def sleepy(job: Job) -> None:
        await anyio.sleep(job.args.get("seconds", 60))

    @bg.handler()
    async def refuse(job: Job) -> None:
        raise StatusError(Status.BAD_REQUEST, "no")

    return bg


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test with the background loop on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def bg(backend: str) -> Iterator[BackgroundWorker]:
    """A started BackgroundWorker, stopped after the test."""
    with make_background(backend) as started:
        yield started


# -- lifecycle -------------------------------------------------------------------------------


def test_start_and_stop(backend: str) -> None:
    """start() runs the worker on a background thread; stop() stops both; stop is idempotent."""
    bg = make_background(backend)
    assert not bg.running
    bg.start()
    try:
        assert bg.running
        assert bg.worker.running
        with pytest.raises(RuntimeError, match="already started"):
            bg.start()
    finally:
        bg.stop()
    assert not bg.running
    assert not bg.worker.running
    bg.stop()


def test_context_manager_and_restart() -> None:
    """`with bg:` starts and stops it, and a stopped BackgroundWorker can start again."""
    bg = make_background()
    for _ in range(2):
        with bg as entered:
            assert entered is bg
            assert bg.perform(Job("double", {"x": 1}), sync=True).result == 2
        assert not bg.running


def test_not_started_is_a_runtime_error() -> None:
    """perform* before start() (or after stop()) raise RuntimeError."""
    bg = make_background()
    job = Job("double", {"x": 1})
    with pytest.raises(RuntimeError, match=r"not running.*start\(\)"):
        bg.perform(job, sync=True)
    with pytest.raises(RuntimeError, match="not running"):
        bg.perform(job)
    with pytest.raises(RuntimeError, match="not running"):
        bg.perform_in(job, 1)
    with pytest.raises(RuntimeError, match="not running"):
        bg.perform_every(job, 1)
    with pytest.raises(RuntimeError, match="not running"):
        bg.perform_receive(Job("echo"), [1])


def test_start_fails_cleanly_when_the_worker_already_runs() -> None:
    """start() with a worker that is already running raises and leaves nothing behind."""
    worker = Worker()
    with BackgroundWorker(worker) as first:
        second = BackgroundWorker(worker)
        with pytest.raises(RuntimeError, match="already running"):
            second.start()
        assert not second.running
        assert first.running


# -- perform ---------------------------------------------------------------------------------


def test_perform_sync_returns_the_finished_execution(bg: BackgroundWorker) -> None:
    """perform(job, sync=True) blocks and returns the finished Execution (async and sync fns)."""
    execution = bg.perform(Job("double", {"x": 21}), sync=True)
    assert isinstance(execution, Execution)
    assert execution.done
    assert execution.status == Status.SUCCESS
    assert execution.result == 42
    assert bg.perform(Job("sync_double", {"x": 4}), sync=True).result == 8
    refused = bg.perform(Job("refuse"), sync=True)
    assert refused.status == Status.BAD_REQUEST
    with pytest.raises(StatusError):
        refused.raise_for_status()


def test_perform_returns_a_future_that_completes_when_finished(bg: BackgroundWorker) -> None:
    """perform(job) returns a concurrent.futures.Future of the Execution, done when finished."""
    future = bg.perform(Job("sleepy", {"seconds": 0.05}))
    assert isinstance(future, Future)
    execution = future.result(timeout=DEADLINE)
    assert execution.done
    assert execution.status == Status.SUCCESS
    assert bg.perform(Job("double", {"x": 5}), sync=False).result(DEADLINE).result == 10


def test_perform_at_and_perform_in_return_futures(bg: BackgroundWorker) -> None:
    """perform_at / perform_in return Futures that complete once the delayed run has finished."""
    start = time.monotonic()
    later = bg.perform_in(Job("double", {"x": 1}), 0.1)
    at = bg.perform_at(Job("double", {"x": 2}), datetime.now(UTC) + timedelta(seconds=0.1))
    delta = bg.perform_in(Job("double", {"x": 3}), timedelta(milliseconds=50))
    assert later.result(DEADLINE).result == 2
    assert at.result(DEADLINE).result == 4
    assert delta.result(DEADLINE).result == 6
    assert time.monotonic() - start >= 0.09


def test_perform_at_and_in_reject_bad_times(bg: BackgroundWorker) -> None:
    """A naive datetime or a negative delay is a ValueError raised in the caller."""
    with pytest.raises(ValueError, match="naive"):
        bg.perform_at(Job("double", {"x": 1}), datetime.now())
    with pytest.raises(ValueError, match="-1"):
        bg.perform_in(Job("double", {"x": 1}), -1)


def test_unknown_handler_is_raised_in_the_caller(bg: BackgroundWorker) -> None:
    """A job for an unregistered handler raises UnknownHandlerError in the calling thread."""
    with pytest.raises(UnknownHandlerError, match="nope"):
        bg.perform(Job("nope"), sync=True)
    with pytest.raises(UnknownHandlerError):
        bg.perform(Job("nope"))
    with pytest.raises(UnknownHandlerError):
        bg.perform_in(Job("nope"), 0)
    with pytest.raises(UnknownHandlerError):
        bg.perform_every(Job("nope"), 1)
    with pytest.raises(UnknownHandlerError):
        bg.perform_receive(Job("nope"), [1, 2])


def test_stop_drops_pending_timed_jobs() -> None:
    """Stopping ends a pending perform_in as 499; its Future completes."""
    bg = make_background()
    bg.start()
    future = bg.perform_in(Job("double", {"x": 1}), 60)
    bg.stop()
    assert future.result(DEADLINE).status == Status.CANCELLED


def test_stop_gives_in_flight_executions_their_grace() -> None:
    """Stopping lets an in-flight execution finish within shutdown_grace, else cancels it."""
    bg = make_background(shutdown_grace=0.1)
    bg.start()
    quick = bg.perform(Job("sleepy", {"seconds": 0.01}))
    slow = bg.perform(Job("sleepy", {"seconds": 60}))
    bg.stop()
    assert quick.result(DEADLINE).status == Status.SUCCESS
    assert slow.result(DEADLINE).status == Status.CANCELLED


# -- many threads ----------------------------------------------------------------------------


def test_many_threads_perform_at_once(bg: BackgroundWorker) -> None:
    """8 threads x 50 performs at once (sync and futures): every result is right."""
    errors: list[BaseException] = []
    results: dict[int, int] = {}
    lock = threading.Lock()

    def submit(thread: int) -> None:
        try:
            futures: list[tuple[int, Future[Execution]]] = []
            for i in range(50):
                x = thread * 1000 + i
                if i % 2:
                    execution = bg.perform(Job("double", {"x": x}), sync=True)
                    with lock:
                        results[x] = execution.result
                else:
                    futures.append((x, bg.perform(Job("sync_double", {"x": x}))))
            for x, future in futures:
                value = future.result(DEADLINE).result
                with lock:
                    results[x] = value
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 3)
    assert errors == []
    assert len(results) == 400
    assert all(value == 2 * x for x, value in results.items())


# -- perform_every ----------------------------------------------------------------------------


def test_perform_every_handle_counts_cancels_and_waits(bg: BackgroundWorker) -> None:
    """perform_every gives a handle: count grows, wait(timeout) times out, cancel ends it."""
    handle = bg.perform_every(Job("double", {"x": 1}), 0.01)
    deadline = time.monotonic() + DEADLINE
    while handle.count < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.count >= 3
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.05)
    assert not handle.done
    handle.cancel()
    handle.wait(timeout=DEADLINE)
    assert handle.done
    assert handle.error is None
    count = handle.count
    time.sleep(0.05)
    assert handle.count == count


def test_perform_every_ends_when_the_worker_stops() -> None:
    """Stopping the BackgroundWorker ends its perform_every loops."""
    bg = make_background()
    bg.start()
    handle = bg.perform_every(Job("double", {"x": 1}), timedelta(milliseconds=10), sync=True)
    bg.stop()
    assert handle.done


# -- perform_receive --------------------------------------------------------------------------


def test_perform_receive_from_a_plain_iterable(bg: BackgroundWorker) -> None:
    """perform_receive runs one execution per item of a plain iterable; the handle finishes."""
    seen: list[int] = []

    def record(job: Job) -> None:
        seen.append(job.args["n"])

    bg.register("record", record)
    handle = bg.perform_receive(Job("record"), range(20), key="n", sync=True)
    handle.wait(timeout=DEADLINE)
    assert handle.done
    assert handle.count == 20
    assert seen == list(range(20))


def test_perform_receive_from_a_blocking_iterator(bg: BackgroundWorker) -> None:
    """A blocking iterator (iter(queue.get, None)) is fine: items run as they are put."""
    inbox: queue.Queue[int | None] = queue.Queue()
    seen: list[int] = []
    got = threading.Event()

    def record(job: Job) -> None:
        seen.append(job.args["received_data"])
        if len(seen) == 3:
            got.set()

    bg.register("record", record)
    handle = bg.perform_receive(Job("record"), iter(inbox.get, None))

    def produce() -> None:
        for i in range(3):
            inbox.put(i)
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    assert got.wait(DEADLINE)
    producer.join(DEADLINE)
    assert not handle.done
    inbox.put(None)
    handle.wait(timeout=DEADLINE)
    assert sorted(seen) == [0, 1, 2]


def test_stop_and_cancel_do_not_wait_for_a_blocked_iterator(backend: str) -> None:
    """cancel() and stop() return at once even while the iterator is blocked in next()."""
    bg = make_background(backend)
    bg.start()
    blocked: queue.Queue[int | None] = queue.Queue()
    first = bg.perform_receive(Job("echo"), iter(blocked.get, None))
    first.cancel()
    first.wait(timeout=DEADLINE)
    second = bg.perform_receive(Job("echo"), iter(blocked.get, None))
    stopper = threading.Thread(target=bg.stop)
    stopper.start()
    stopper.join(DEADLINE)
    assert not stopper.is_alive()
    assert second.done
    # Release the reader threads so they end.
    blocked.put(None)
    blocked.put(None)


def test_perform_receive_keeps_the_iterator_error_on_the_handle(bg: BackgroundWorker) -> None:
    """An exception raised by the iterable ends the loop and is kept on handle.error."""

    def items() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    handle = bg.perform_receive(Job("echo"), items())
    handle.wait(timeout=DEADLINE)
    assert handle.count == 1
    assert isinstance(handle.error, OSError)


def test_perform_receive_rejects_a_non_iterable(bg: BackgroundWorker) -> None:
    """A source that is not iterable is a TypeError in the caller."""
    with pytest.raises(TypeError):
        bg.perform_receive(Job("echo"), 42)  # type: ignore[arg-type]


def test_bad_arguments_raise_errors_naming_the_value() -> None:
    """A worker that is not a Worker or an unknown backend is refused, naming the value."""
    with pytest.raises(TypeError, match="needs a Worker, got str"):
        BackgroundWorker("worker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'curio'"):
        BackgroundWorker(backend="curio")


def test_repr() -> None:
    """repr shows the worker and whether it is running."""
    bg = BackgroundWorker(Worker(name="bg-test"))
    assert repr(bg) == "<BackgroundWorker <Worker 'bg-test' stopped handlers=[]> running=False>"
    assert BackgroundWorker().worker.name == "background"
