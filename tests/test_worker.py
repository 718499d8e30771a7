"""Tests for Worker and Execution: registry, status rules, perform family, shutdown."""

from __future__ import annotations

import functools
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from work import (
    Ctx,
    Handler,
    Job,
    JobTimeoutError,
    Status,
    StatusError,
    UnknownHandlerError,
    Worker,
    WorkError,
    chain,
)

pytestmark = pytest.mark.anyio


def make_worker(**kwargs: Any) -> Worker:
    """A worker with a few handlers the tests share."""
    worker = Worker(**kwargs)

    @worker.handler()
    async def ok(job: Job) -> Any:
        return job.args.get("value", "done")

    @worker.handler()
    async def sleepy(job: Job) -> None:
        await anyio.sleep(job.args.get("seconds", 60))

    @worker.handler("fail")
    async def failing(job: Job) -> None:
        raise ValueError("broken")

    return worker


# -- registry -------------------------------------------------------------------------------


def test_register_and_decorator_names() -> None:
    """register() and @handler() register under the given name or the function's name."""
    worker = Worker()

    @worker.handler()
    async def first(job: Job) -> None: ...

    @worker.handler("custom")
    def second(job: Job) -> None: ...

    worker.register("third", first)
    assert set(worker.handlers) == {"first", "custom", "third"}


def test_register_rejects_bad_input() -> None:
    """Duplicate names, empty names, non-callables and a bare @handler are refused."""
    worker = make_worker()
    with pytest.raises(ValueError, match="'ok' is already registered"):
        worker.register("ok", lambda job: None)
    with pytest.raises(ValueError, match="blank"):
        worker.register("", lambda job: None)
    with pytest.raises(ValueError, match="blank"):
        worker.register("  ", lambda job: None)
    with pytest.raises(TypeError, match="callable"):
        worker.register("x", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parentheses"):
        worker.handler(lambda job: None)  # type: ignore[arg-type]


def test_constructor_validation() -> None:
    """max_concurrency < 1 and a negative shutdown_grace are ValueErrors naming the value."""
    with pytest.raises(ValueError, match="0"):
        Worker(max_concurrency=0)
    with pytest.raises(ValueError, match="-1"):
        Worker(shutdown_grace=-1)


async def test_perform_requires_running_worker_and_known_handler() -> None:
    """perform* raise RuntimeError when not running, UnknownHandlerError for unknown names."""
    worker = make_worker()
    with pytest.raises(RuntimeError, match="not running"):
        await worker.perform(Job("ok"))
    async with worker:
        with pytest.raises(UnknownHandlerError, match="'nope'"):
            await worker.perform(Job("nope"))
        with pytest.raises(UnknownHandlerError):
            await worker.perform_every(Job("nope"), 1)
        with pytest.raises(TypeError, match="Job"):
            await worker.perform("ok")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await worker.perform_in(Job("ok"), 1)


# -- status rules ---------------------------------------------------------------------------


async def test_return_gives_200_and_result() -> None:
    """A handler that returns without a status ends 200 with its result kept."""
    async with make_worker() as worker:
        execution = await worker.perform(Job("ok", {"value": 42}), sync=True)
    assert execution.done and execution.status is Status.SUCCESS and execution.result == 42
    assert execution.error is None
    assert execution.raise_for_status() is execution


async def test_status_set_by_handler_is_kept() -> None:
    """A status the handler sets (444 here) is the execution's status."""
    worker = Worker()

    @worker.handler()
    async def nothing(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = 444

    async with worker:
        execution = await worker.perform(Job("nothing"), sync=True)
    assert execution.status is Status.NO_RESPONSE
    with pytest.raises(StatusError) as info:
        execution.raise_for_status()
    assert info.value.status is Status.NO_RESPONSE


async def test_status_error_sets_its_code() -> None:
    """raise StatusError(400) ends the execution 400 with the error stored."""
    worker = Worker()

    @worker.handler()
    async def reject(job: Job) -> None:
        raise StatusError(Status.BAD_REQUEST, "missing user_id")

    async with worker:
        execution = await worker.perform(Job("reject"), sync=True)
    assert execution.status is Status.BAD_REQUEST
    assert isinstance(execution.error, StatusError) and "missing user_id" in str(execution.error)
    with pytest.raises(StatusError, match="missing user_id"):
        execution.raise_for_status()


async def test_exception_gives_500_and_worker_survives() -> None:
    """Any other exception ends 500, is stored, and never kills the worker."""
    async with make_worker() as worker:
        failed = await worker.perform(Job("fail"), sync=True)
        after = await worker.perform(Job("ok"), sync=True)
    assert failed.status is Status.INTERNAL_ERROR and isinstance(failed.error, ValueError)
    with pytest.raises(ValueError, match="broken"):
        failed.raise_for_status()
    assert after.status is Status.SUCCESS


async def test_exception_keeps_a_non_2xx_status() -> None:
    """A handler that set 503 and then raised keeps 503."""
    worker = Worker()

    @worker.handler()
    async def unavailable(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = Status.UNAVAILABLE
        raise ConnectionError("db down")

    async with worker:
        execution = await worker.perform(Job("unavailable"), sync=True)
    assert execution.status is Status.UNAVAILABLE


async def test_timeout_gives_408() -> None:
    """A handler that outlives job.timeout ends 408 with JobTimeoutError (a TimeoutError)."""
    async with make_worker() as worker:
        execution = await worker.perform(Job("sleepy", timeout=0.05), sync=True)
    assert execution.status is Status.TIMEOUT
    assert isinstance(execution.error, JobTimeoutError)
    assert isinstance(execution.error, TimeoutError)


async def test_timeout_sets_ctx_deadline() -> None:
    """ctx.deadline is the anyio clock time by which the execution must end."""
    worker = Worker()
    seen: list[float | None] = []

    @worker.handler()
    async def look(job: Job) -> None:
        assert job.ctx is not None
        seen.append(job.ctx.deadline)

    async with worker:
        before = anyio.current_time()
        await worker.perform(Job("look", timeout=5), sync=True)
        await worker.perform(Job("look"), sync=True)
    deadline = seen[0]
    assert deadline is not None and before + 4 < deadline < anyio.current_time() + 5
    assert seen[1] is None


async def test_sync_handler_runs_in_a_thread() -> None:
    """A plain def handler runs in a worker thread, not the event loop's."""
    worker = Worker()
    loop_thread = threading.get_ident()

    @worker.handler()
    def blocking(job: Job) -> int:
        return threading.get_ident()

    async with worker:
        execution = await worker.perform(Job("blocking"), sync=True)
    assert execution.status is Status.SUCCESS and execution.result != loop_thread


async def test_sync_handler_returning_late_is_408() -> None:
    """A sync handler cannot be interrupted: it is waited for and reported as 408."""
    worker = Worker()

    @worker.handler()
    def slow(job: Job) -> str:
        time.sleep(0.2)
        return "late"

    async with worker:
        execution = await worker.perform(Job("slow", timeout=0.05), sync=True)
    assert execution.status is Status.TIMEOUT


async def test_cancel_running_execution_gives_499() -> None:
    """Execution.cancel() on a running execution ends it 499; the worker goes on."""
    started = anyio.Event()
    worker = Worker()

    @worker.handler()
    async def wait_forever(job: Job) -> None:
        started.set()
        await anyio.sleep_forever()

    async with worker:
        execution = await worker.perform(Job("wait_forever"))
        with anyio.fail_after(5):
            await started.wait()
            execution.cancel()
            await execution.wait()
    assert execution.status is Status.CANCELLED and execution.error is None
    with pytest.raises(StatusError):
        execution.raise_for_status()


async def test_cancel_running_sync_handler_gives_499_once_its_thread_returns() -> None:
    """A plain def handler's thread cannot be interrupted: cancel() waits for it, then the
    execution ends 499 (the cancellation is delivered, not dropped) and its result is not kept."""
    started = threading.Event()
    release = threading.Event()
    worker = Worker()

    @worker.handler()
    def blocking(job: Job) -> str:
        started.set()
        release.wait(10)
        return "done"

    async with worker:
        execution = await worker.perform(Job("blocking"))
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(started.wait)
            execution.cancel()
            release.set()
            await execution.wait()
    assert execution.status is Status.CANCELLED and execution.result is None


async def test_handler_calling_sys_exit_is_a_500_and_the_worker_goes_on() -> None:
    """sys.exit() in a handler (async or sync) is a bad job: 500 with the cause kept, other
    executions unaffected, the worker still serving."""
    worker = Worker()

    @worker.handler()
    async def quits(job: Job) -> None:
        raise SystemExit(3)

    @worker.handler()
    def quits_in_thread(job: Job) -> None:
        sys.exit("bye")

    @worker.handler()
    async def fine(job: Job) -> str:
        await anyio.sleep(0.05)
        return "ok"

    async with worker:
        other = await worker.perform(Job("fine"))
        first = await worker.perform(Job("quits"), sync=True)
        second = await worker.perform(Job("quits_in_thread"), sync=True)
        after = await worker.perform(Job("fine"), sync=True)
        await other.wait()
    for execution, code in ((first, "3"), (second, "'bye'")):
        assert execution.status is Status.INTERNAL_ERROR
        assert isinstance(execution.error, WorkError)
        assert isinstance(execution.error.__cause__, SystemExit)
        assert f"SystemExit({code})" in str(execution.error)
    assert (other.status, after.status, after.result) == (Status.SUCCESS, Status.SUCCESS, "ok")


async def test_raise_for_status_before_done() -> None:
    """raise_for_status() on an unfinished execution is a RuntimeError."""
    async with make_worker(shutdown_grace=0) as worker:
        execution = await worker.perform(Job("sleepy"))
        with pytest.raises(RuntimeError, match="not finished"):
            execution.raise_for_status()


async def test_caller_cancelled_during_sync_perform_cancels_execution() -> None:
    """A sync perform whose caller is cancelled cancels its execution (499)."""
    contexts: list[Ctx] = []
    worker = make_worker()

    @worker.handler()
    async def record(job: Job) -> None:
        assert job.ctx is not None
        contexts.append(job.ctx)
        await anyio.sleep(60)

    async with worker:
        with anyio.move_on_after(0.05):
            await worker.perform(Job("record"), sync=True)
        with anyio.fail_after(5):
            while worker._inflight:
                await anyio.sleep(0.01)
    assert contexts[0].status is Status.CANCELLED


# -- adapters -------------------------------------------------------------------------------


def recorder(name: str, log: list[str]) -> Any:
    """An adapter that logs entry and exit with the status it sees."""

    def adapter(handler: Handler) -> Handler:
        async def wrapped(job: Job) -> Any:
            log.append(f"{name}>")
            try:
                return await handler(job)
            finally:
                assert job.ctx is not None
                log.append(f"<{name}:{int(job.ctx.status)}")

        return wrapped

    return adapter


async def test_first_adapter_is_outermost_and_sees_final_status() -> None:
    """Worker(adapters=[a, b]) runs a(b(handler)) and each sees the final status."""
    log: list[str] = []
    worker = make_worker(adapters=[recorder("a", log), recorder("b", log)])
    async with worker:
        await worker.perform(Job("fail"), sync=True)
        await worker.perform(Job("sleepy", {"seconds": 1}, timeout=0.01), sync=True)
    assert log == ["a>", "b>", "<b:500", "<a:500", "a>", "b>", "<b:408", "<a:408"]


async def test_chain_composes_in_order() -> None:
    """chain(a, b, c)(h) == a(b(c(h)))."""
    log: list[str] = []
    a, b, c = (recorder(n, log) for n in "abc")

    async def handler(job: Job) -> str:
        assert job.ctx is not None
        job.ctx.status = 200
        return "r"

    job = Job("h")
    job.ctx = Ctx(job.id)
    assert await chain(a, b, c)(handler)(job) == "r"
    nested_log = list(log)
    log.clear()
    job.ctx = Ctx(job.id)
    await a(b(c(handler)))(job)
    assert log == nested_log == ["a>", "b>", "c>", "<c:200", "<b:200", "<a:200"]
    with pytest.raises(TypeError, match="not callable"):
        chain(a, 3)  # type: ignore[arg-type]


async def test_adapter_exceptions_become_statuses() -> None:
    """An adapter's StatusError ends with its code; any other adapter error ends 500."""

    def refuse(handler: Handler) -> Handler:
        async def wrapped(job: Job) -> Any:
            if job.args.get("refuse"):
                raise StatusError(Status.FORBIDDEN)
            if job.args.get("crash"):
                raise KeyError("adapter bug")
            return await handler(job)

        return wrapped

    async with make_worker(adapters=[refuse]) as worker:
        forbidden = await worker.perform(Job("ok", {"refuse": True}), sync=True)
        crashed = await worker.perform(Job("ok", {"crash": True}), sync=True)
        fine = await worker.perform(Job("ok"), sync=True)
    assert forbidden.status is Status.FORBIDDEN
    assert crashed.status is Status.INTERNAL_ERROR and isinstance(crashed.error, KeyError)
    assert fine.status is Status.SUCCESS


async def test_each_execution_gets_a_fresh_ctx_and_job_copy() -> None:
    """perform runs a copy of the job with a fresh Ctx; values and attempt seed it."""
    seen: list[tuple[str, str, int, Any]] = []
    worker = Worker()

    @worker.handler()
    async def look(job: Job) -> None:
        assert job.ctx is not None
        job.args["touched"] = True
        seen.append((job.id, job.ctx.execution_id, job.ctx.attempt, job.ctx.get("worker_number")))

    job = Job("look")
    async with worker:
        one = await worker.perform(job, sync=True)
        two = await worker.perform(job, sync=True, attempt=3, values={"worker_number": 2})
    assert "touched" not in job.args and job.ctx is None
    assert one.job is not job and one.job.id == job.id and one.job.ctx is one.ctx
    assert seen[0][0] == seen[1][0] == job.id and seen[0][1] != seen[1][1]
    assert (seen[0][2], seen[1][2], seen[1][3]) == (1, 3, 2)
    assert two.ctx.job_id == job.id


# -- concurrency ----------------------------------------------------------------------------


async def test_max_concurrency_is_respected() -> None:
    """Never more than max_concurrency at once; perform waits for a slot."""
    worker = Worker(max_concurrency=3)
    running = 0
    peak = 0

    @worker.handler()
    async def busy(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    async with worker:
        executions = [await worker.perform(Job("busy")) for _ in range(20)]
        with anyio.fail_after(10):
            for execution in executions:
                await execution.wait()
    assert peak == 3
    assert all(e.status is Status.SUCCESS for e in executions)


async def _arrived_before_gate(count: int, *, turns: int | None = None) -> int:
    """Perform ``count`` executions that wait on a gate, let them start, open the gate, wait for
    every one: how many had started when the gate opened.

    They are given ``turns`` event-loop turns to start, or without ``turns`` up to 10 s.
    """
    worker = Worker()
    gate = anyio.Event()
    arrived = 0

    @worker.handler()
    async def wait_gate(job: Job) -> None:
        nonlocal arrived
        arrived += 1
        await gate.wait()

    async with worker:
        executions = [await worker.perform(Job("wait_gate")) for _ in range(count)]
        if turns is None:
            with anyio.move_on_after(10):
                while arrived < count:
                    await anyio.sleep(0.01)
        else:
            for _ in range(turns):
                await anyio.lowlevel.checkpoint()
        started = arrived
        gate.set()
        for execution in executions:
            await execution.wait()
    return started


async def test_async_perform_returns_started_executions_running_concurrently() -> None:
    """Without a limit, long executions all run at once."""
    assert await _arrived_before_gate(200) == 200


async def test_a_burst_of_long_executions_all_start_within_a_few_event_loop_turns() -> None:
    """32 executions that wait all start within 10 event-loop turns (runners double each
    turn while the jobs hold them up), not one more per turn."""
    assert await _arrived_before_gate(32, turns=10) == 32


async def test_a_burst_of_short_executions_spawns_at_most_two_runner_tasks() -> None:
    """32 executions queued at once are run back to back: at most two tasks are spawned for
    them (a runner and a spare), not a task per execution."""
    worker = make_worker()
    async with worker:
        before = len(anyio.get_running_tasks())
        executions = [await worker.perform(Job("ok")) for _ in range(32)]
        assert len(anyio.get_running_tasks()) - before == 1
        await executions[0].wait()
        assert len(anyio.get_running_tasks()) - before <= 2
        for execution in executions:
            await execution.wait()
        assert all(e.status is Status.SUCCESS for e in executions)


# -- timing ---------------------------------------------------------------------------------


async def test_perform_in_and_at_run_later() -> None:
    """perform_in and perform_at run after the delay (generous bounds)."""
    async with make_worker() as worker:
        start = anyio.current_time()
        later = await worker.perform_in(Job("ok"), 0.2)
        at = await worker.perform_at(Job("ok"), datetime.now(UTC) + timedelta(seconds=0.1))
        delta = await worker.perform_in(Job("ok"), timedelta(milliseconds=50))
        assert not later.done
        with anyio.fail_after(10):
            await later.wait()
            await at.wait()
            await delta.wait()
        assert anyio.current_time() - start >= 0.19
    assert later.status is at.status is delta.status is Status.SUCCESS


async def test_perform_at_past_runs_now() -> None:
    """A past time runs at once."""
    async with make_worker() as worker:
        execution = await worker.perform_at(Job("ok"), datetime.now(UTC) - timedelta(hours=1))
        with anyio.fail_after(5):
            await execution.wait()
    assert execution.status is Status.SUCCESS


async def test_timing_validation() -> None:
    """Naive datetimes, negative delays, non-positive intervals and bad cron lines are refused."""
    async with make_worker() as worker:
        with pytest.raises(ValueError, match="naive"):
            await worker.perform_at(Job("ok"), datetime.now())
        with pytest.raises(ValueError, match="-1"):
            await worker.perform_in(Job("ok"), -1)
        with pytest.raises(TypeError, match="'soon'"):
            await worker.perform_in(Job("ok"), "soon")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="0"):
            await worker.perform_every(Job("ok"), 0)
        with pytest.raises(ValueError, match="-2"):
            await worker.perform_every(Job("ok"), timedelta(seconds=-2))
        with pytest.raises(ValueError, match="'every tuesday'"):
            await worker.perform_every(Job("ok"), "every tuesday")
        # croniter would read a 7th field (a year); the docs promise 5 or 6.
        with pytest.raises(ValueError, match="has 7"):
            await worker.perform_every(Job("ok"), "0 0 * * * 0 2030")
        with pytest.raises(ValueError, match="has 4"):
            await worker.perform_every(Job("ok"), "* * * *")


async def test_cancel_scheduled_execution_finishes_it_at_once() -> None:
    """Cancelling a perform_in execution ends it 499 at once; it never runs."""
    ran: list[str] = []
    worker = Worker()

    @worker.handler()
    async def mark(job: Job) -> None:
        ran.append(job.id)

    async with worker:
        execution = await worker.perform_in(Job("mark"), 0.1)
        execution.cancel()
        with anyio.fail_after(1):
            await execution.wait()
        await anyio.sleep(0.2)
    assert execution.status is Status.CANCELLED and not ran


async def test_perform_every_interval_runs_at_once_on_a_fixed_grid() -> None:
    """An interval runs at once, then on start + n*interval without drifting: each execution
    takes 0.15 s of a 0.2 s interval, so a schedule that counted from the end of the last run
    would be 0.6 s behind by the fifth. The bounds leave 0.4 s for a loaded machine."""
    worker = Worker()
    times: list[float] = []

    @worker.handler()
    async def tick(job: Job) -> None:
        times.append(anyio.current_time())
        await anyio.sleep(0.15)  # slow executions must not push the schedule back

    async with worker:
        start = anyio.current_time()
        handle = await worker.perform_every(Job("tick"), 0.2)
        with anyio.fail_after(10):
            while len(times) < 5:
                await anyio.sleep(0.01)
        handle.cancel()
        await handle.wait()
    assert times[0] - start < 0.15, "the first run waits for no interval"
    for n, t in enumerate(times[:5]):
        assert t >= start + n * 0.2 - 0.001, f"run {n} came early: {times}"
    assert times[4] - start < 0.8 + 0.4, f"the schedule drifted: {times}"
    assert handle.count == len(times) and handle.done


async def test_perform_every_sync_never_overlaps() -> None:
    """With sync=True, executions never overlap; ticks during a running one are skipped."""
    worker = Worker()
    running = 0
    peak = 0
    count = 0

    @worker.handler()
    async def long(job: Job) -> None:
        nonlocal running, peak, count
        running += 1
        count += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1

    async with worker:
        handle = await worker.perform_every(Job("long"), 0.01, sync=True)
        with anyio.fail_after(10):
            while count < 4:
                await anyio.sleep(0.01)
        handle.cancel()
        await handle.wait()
    assert peak == 1


async def test_perform_every_async_overlaps() -> None:
    """With sync=False, a tick starts even while the previous execution runs."""
    worker = Worker()
    running = 0
    peak = 0

    @worker.handler()
    async def long(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.1)
        running -= 1

    async with worker:
        handle = await worker.perform_every(Job("long"), 0.02)
        with anyio.fail_after(10):
            while peak < 2:
                await anyio.sleep(0.01)
        handle.cancel()
        await handle.wait()
    assert peak >= 2 and running == 0


async def test_perform_every_cron_waits_for_the_next_match() -> None:
    """A cron line does not run at once; it runs at the next match (6 fields: seconds)."""
    worker = Worker()
    fired: list[datetime] = []

    @worker.handler()
    async def cron(job: Job) -> None:
        fired.append(datetime.now(UTC))

    async with worker:
        handle = await worker.perform_every(Job("cron"), "* * * * * *")
        assert handle.count == 0
        await anyio.lowlevel.checkpoint()
        assert not fired
        with anyio.fail_after(5):
            while len(fired) < 2:
                await anyio.sleep(0.02)
        handle.cancel()
        await handle.wait()
    # Each run lands just after a whole second.
    assert all(f.microsecond < 300_000 for f in fired[:2]), fired


# -- receive --------------------------------------------------------------------------------


async def test_perform_receive_one_execution_per_item() -> None:
    """Each item of a stream lands in args[key]; the handle ends when the source does."""
    worker = Worker()
    got: list[Any] = []

    @worker.handler()
    async def take(job: Job) -> None:
        got.append(job.args["item"])

    send, receive = anyio.create_memory_object_stream[int](10)
    async with worker:
        handle = await worker.perform_receive(Job("take"), receive, key="item")
        async with send:
            for i in range(10):
                await send.send(i)
        with anyio.fail_after(5):
            await handle.wait()
        receive.close()
    assert sorted(got) == list(range(10)) and handle.count == 10 and handle.done


async def test_perform_receive_sync_runs_one_after_another() -> None:
    """With sync=True, items from an async generator are handled in order, one at a time."""
    worker = Worker()
    order: list[int] = []
    running = 0
    peak = 0

    @worker.handler()
    async def take(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.005)
        order.append(job.args["received_data"])
        running -= 1

    async def numbers() -> Any:
        for i in range(8):
            yield i

    async with worker:
        handle = await worker.perform_receive(Job("take"), numbers(), sync=True)
        with anyio.fail_after(5):
            await handle.wait()
    assert order == list(range(8)) and peak == 1


async def test_failing_source_ends_loop_not_worker() -> None:
    """A source that raises ends its loop (error kept on the handle); the worker goes on."""

    async def broken() -> Any:
        yield 1
        raise OSError("source gone")

    async with make_worker() as worker:
        handle = await worker.perform_receive(Job("ok"), broken())
        with anyio.fail_after(5):
            await handle.wait()
        assert isinstance(handle.error, OSError) and handle.count == 1
        assert (await worker.perform(Job("ok"), sync=True)).status is Status.SUCCESS
        with pytest.raises(TypeError, match="async iterable"):
            await worker.perform_receive(Job("ok"), [1, 2])  # type: ignore[arg-type]


# -- shutdown -------------------------------------------------------------------------------


async def test_stop_drops_timers_and_cancels_after_grace() -> None:
    """Leaving drops pending timed jobs (499), ends loops, and cancels in-flight after grace."""
    worker = make_worker(shutdown_grace=0.1)
    async with worker:
        long = await worker.perform(Job("sleepy", {"seconds": 60}))
        short = await worker.perform(Job("sleepy", {"seconds": 0.02}))
        later = await worker.perform_in(Job("ok"), 3600)
        handle = await worker.perform_every(Job("ok"), 3600)
        with anyio.fail_after(5):
            while handle.count < 1:
                await anyio.sleep(0.01)
        start = anyio.current_time()
    elapsed = anyio.current_time() - start
    assert short.status is Status.SUCCESS
    assert long.status is Status.CANCELLED and later.status is Status.CANCELLED
    assert handle.done and handle.count == 1
    assert 0.05 < elapsed < 5
    assert not worker.running


async def test_exception_exit_cancels_at_once() -> None:
    """Leaving because of an exception cancels in-flight executions without grace."""
    worker = make_worker(shutdown_grace=60)
    with pytest.raises(ZeroDivisionError):
        async with worker:
            execution = await worker.perform(Job("sleepy"))
            await anyio.lowlevel.checkpoint()
            start = anyio.current_time()
            1 / 0  # noqa: B018
    assert anyio.current_time() - start < 5
    assert execution.status is Status.CANCELLED


async def test_stop_then_restart() -> None:
    """stop() begins a graceful stop inside the block; the worker can be started again."""
    worker = make_worker()
    async with worker:
        worker.stop()
        assert not worker.running
        with pytest.raises(RuntimeError):
            await worker.perform(Job("ok"))
    async with worker:
        assert (await worker.perform(Job("ok"), sync=True)).status is Status.SUCCESS


async def test_double_start_is_refused() -> None:
    """Entering a running worker again is a RuntimeError."""
    async with make_worker() as worker:
        with pytest.raises(RuntimeError, match="already running"):
            await worker.__aenter__()


async def test_stopping_and_wait_stopping_are_the_stop_signal() -> None:
    """`stopping` turns True and `wait_stopping()` returns once a stop begins, not before."""
    worker = make_worker()
    with pytest.raises(RuntimeError, match="never started"):
        await worker.wait_stopping()
    seen: list[bool] = []
    async with worker, anyio.create_task_group() as tg:
        assert worker.stopping is False

        async def watch() -> None:
            await worker.wait_stopping()
            seen.append(worker.stopping)

        tg.start_soon(watch)
        await anyio.wait_all_tasks_blocked()
        assert seen == []
        worker.stop()
        with anyio.fail_after(5):
            while not seen:
                await anyio.lowlevel.checkpoint()
    assert seen == [True] and worker.stopping is True


async def test_lifetime_holds_the_stop_until_the_block_exits() -> None:
    """Leaving `async with worker` waits for a `lifetime()` block, which sees the stop first."""
    worker = make_worker()
    with pytest.raises(RuntimeError, match="not running"):
        async with worker.lifetime():
            pass  # pragma: no cover
    order: list[str] = []

    async def service() -> None:
        async with worker.lifetime():
            await worker.wait_stopping()
            order.append("service saw the stop")
            await anyio.sleep(0.05)  # hand-back work that the stop must wait for
            order.append("service done")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with worker:
                tg.start_soon(service)
                await anyio.wait_all_tasks_blocked()
            order.append("worker left")
    assert order == ["service saw the stop", "service done", "worker left"]


async def test_async_partials_and_async_callables_are_awaited_on_the_loop() -> None:
    """An async functools.partial and an object with an async __call__ run on the event loop
    thread (awaited), not in a worker thread."""
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}

    async def note(label: str, job: Job) -> None:
        seen[label] = threading.get_ident()

    class Callable_:
        async def __call__(self, job: Job) -> None:
            seen["object"] = threading.get_ident()

    worker = Worker()
    worker.register("partial", functools.partial(note, "partial"))
    worker.register("object", Callable_())
    async with worker:
        with anyio.fail_after(5):
            for name in ("partial", "object"):
                assert (await worker.perform(Job(name), sync=True)).status is Status.SUCCESS
    assert seen == {"partial": loop_thread, "object": loop_thread}


async def test_a_timer_due_before_the_head_fires_on_time() -> None:
    """perform_in(30 s) then perform_in(0.05 s): the earlier one wakes the timer runner and
    runs at once, not after the first."""
    worker = make_worker()
    async with worker:
        late = await worker.perform_in(Job("ok"), 30)
        early = await worker.perform_in(Job("ok"), 0.05)
        with anyio.fail_after(5):
            await early.wait()
        assert early.status is Status.SUCCESS and not late.done
