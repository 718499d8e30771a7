"""Plain ``def`` handlers that overrun: abandoned threads (counted, capped) or killed processes."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import anyio
import pytest

from work import Job, JobTimeoutError, Status, StatusError, Worker

from . import process_handlers

pytestmark = pytest.mark.anyio


async def test_a_hung_sync_handler_times_out_and_gives_its_slot_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At its timeout a sync handler that never returns ends 408 at once; its slot is free,
    its thread is abandoned, counted and warned about, and its late result is dropped."""
    release = threading.Event()
    finished = threading.Event()
    worker = Worker(max_concurrency=1)

    @worker.handler()
    def hang(job: Job) -> str:
        release.wait(30)
        finished.set()
        return "late"

    @worker.handler()
    def quick(job: Job) -> str:
        return "quick"

    with caplog.at_level(logging.WARNING, logger="anywork.worker"):
        async with worker:
            with anyio.fail_after(10):
                hung = await worker.perform(Job("hang", timeout=0.2), sync=True)
                assert hung.status is Status.TIMEOUT
                assert isinstance(hung.error, JobTimeoutError) and hung.result is None
                assert worker.abandoned_threads == 1
                # The only slot is free again although the thread still runs.
                ok = await worker.perform(Job("quick"), sync=True)
                assert ok.status is Status.SUCCESS and ok.result == "quick"
            release.set()
            with anyio.fail_after(10):
                while worker.abandoned_threads:
                    await anyio.to_thread.run_sync(finished.wait, 1)
                    await anyio.sleep(0.01)
    assert finished.is_set() and hung.result is None and hung.status is Status.TIMEOUT
    assert any("abandoned the thread of sync handler 'hang'" in r.message for r in caplog.records)


async def test_a_sync_handler_returning_after_its_timeout_is_a_timeout() -> None:
    """A sync handler that returns after its deadline ends 408 (JobTimeoutError), not 200."""
    worker = Worker()

    @worker.handler()
    def slow(job: Job) -> str:
        threading.Event().wait(0.3)
        return "too late"

    async with worker:
        with anyio.fail_after(10):
            execution = await worker.perform(Job("slow", timeout=0.05), sync=True)
    assert execution.status is Status.TIMEOUT and isinstance(execution.error, JobTimeoutError)
    assert execution.result is None


async def test_cancelling_a_sync_execution_ends_it_at_once() -> None:
    """Execution.cancel() of a running sync handler ends it 499 without waiting the thread."""
    release = threading.Event()
    started = threading.Event()
    worker = Worker()

    @worker.handler()
    def block(job: Job) -> None:
        started.set()
        release.wait(30)

    try:
        async with worker:
            with anyio.fail_after(10):
                execution = await worker.perform(Job("block"))
                await anyio.to_thread.run_sync(started.wait, 5)
                execution.cancel()
                await execution.wait()
            assert execution.status is Status.CANCELLED
            assert worker.abandoned_threads == 1
    finally:
        release.set()


async def test_the_abandoned_thread_cap_refuses_new_sync_executions() -> None:
    """With max_abandoned_threads abandoned threads still running, a sync execution ends 503
    at once (async handlers are not affected); once they end, sync handlers run again."""
    release = threading.Event()
    worker = Worker(max_abandoned_threads=2)

    @worker.handler()
    def hang(job: Job) -> None:
        release.wait(30)

    @worker.handler()
    async def fine(job: Job) -> str:
        return "ok"

    try:
        async with worker:
            with anyio.fail_after(10):
                for _ in range(2):
                    timed_out = await worker.perform(Job("hang", timeout=0.05), sync=True)
                    assert timed_out.status is Status.TIMEOUT
                refused = await worker.perform(Job("hang", timeout=0.05), sync=True)
                assert refused.status is Status.UNAVAILABLE
                assert isinstance(refused.error, StatusError)
                assert "cap is 2" in str(refused.error)
                assert (await worker.perform(Job("fine"), sync=True)).result == "ok"
                release.set()
                while worker.abandoned_threads:
                    await anyio.sleep(0.01)
                release.clear()
                again = await worker.perform(Job("hang", timeout=0.05), sync=True)
                assert again.status is Status.TIMEOUT
    finally:
        release.set()


def test_worker_options_are_checked() -> None:
    """An unknown sync_handlers or a max_abandoned_threads below 1 is refused at once."""
    with pytest.raises(ValueError, match="'fork'"):
        Worker(sync_handlers="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0"):
        Worker(max_abandoned_threads=0)
    with pytest.raises(TypeError, match="pickled"):
        Worker(sync_handlers="process").register("lam", lambda job: None)


async def test_process_mode_kills_a_hung_handler_at_its_timeout(tmp_path: Path) -> None:
    """sync_handlers="process": at its timeout the child is killed and the execution ends 408."""
    worker = Worker(sync_handlers="process")
    worker.register("pid_then_hang", process_handlers.pid_then_hang)
    pidfile = tmp_path / "pid"
    async with worker:
        with anyio.fail_after(30):
            execution = await worker.perform(
                Job("pid_then_hang", {"pidfile": str(pidfile)}, timeout=2), sync=True
            )
    assert execution.status is Status.TIMEOUT
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_process_mode_carries_results_statuses_and_errors() -> None:
    """A result and a status set in the child come back; a StatusError comes back pickled."""
    worker = Worker(sync_handlers="process")
    worker.register("add", process_handlers.add)
    worker.register("conflict", process_handlers.conflict)
    async with worker:
        with anyio.fail_after(30):
            added = await worker.perform(Job("add", {"a": 2, "b": 3}), sync=True)
            failed = await worker.perform(Job("conflict"), sync=True)
    assert added.result == 5 and added.status is Status.CREATED
    assert failed.status is Status.CONFLICT and isinstance(failed.error, StatusError)
    assert failed.error.message == "taken"
