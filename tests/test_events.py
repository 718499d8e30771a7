"""Job events in process: JobEvent, worker.subscribe, ctx.progress, and how the CLI shows them."""

from __future__ import annotations

import functools
import logging
import math
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from work import Execution, Job, JobEvent, JobEventKind, Queue, Status, Worker
from work._core.job import Ctx
from work._durable.events import EventHub, kind_for_change
from work.cli import main
from work.cli.jobs import format_event
from work.stores import open_store

pytestmark = pytest.mark.anyio


# -- JobEvent ---------------------------------------------------------------------------------


def test_job_event_is_frozen_and_serialises() -> None:
    """JobEvent is frozen; to_dict gives JSON values (status as its code, ``at`` with Z)."""
    event = JobEvent(
        kind=JobEventKind.SUCCEEDED,
        job_id="j1",
        queue="q",
        handler="h",
        status=Status.SUCCESS,
        attempt=2,
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    with pytest.raises(AttributeError):
        event.job_id = "other"  # type: ignore[misc]
    assert event.to_dict() == {
        "kind": "succeeded",
        "job_id": "j1",
        "queue": "q",
        "handler": "h",
        "status": 200,
        "attempt": 2,
        "at": "2026-01-02T03:04:05Z",
        "workflow_id": None,
        "schedule_id": None,
        "progress": None,
        "lost": 0,
    }


def test_kind_for_change_rules() -> None:
    """The state-change rule every store follows (SQL and Lua spell out the same)."""
    assert kind_for_change(None, "queued") is JobEventKind.ENQUEUED
    assert kind_for_change(None, "scheduled") is JobEventKind.ENQUEUED
    assert kind_for_change("queued", "running") is JobEventKind.STARTED
    assert kind_for_change("running", "scheduled") is JobEventKind.RETRYING
    assert kind_for_change("running", "queued") is JobEventKind.RETRYING  # a lost worker's job
    assert kind_for_change("running", "queued", attempts_kept=False) is JobEventKind.ENQUEUED
    assert kind_for_change("running", "failed") is JobEventKind.FAILED
    assert kind_for_change("queued", "cancelled") is JobEventKind.CANCELLED
    assert kind_for_change("running", "running") is None
    assert kind_for_change("running", "waiting") is JobEventKind.WAITING  # Deferred
    assert kind_for_change("waiting", "succeeded") is JobEventKind.SUCCEEDED
    assert kind_for_change("waiting", "scheduled") is JobEventKind.ENQUEUED  # a retry's wait


async def test_hub_drops_oldest_and_reports_count() -> None:
    """Past its buffer a stream drops the oldest events; it then yields one LOST event
    with the count, followed by the newest events."""
    hub = EventHub()
    at = datetime.now(UTC)
    events = [
        JobEvent(kind=JobEventKind.ENQUEUED, job_id=str(i), queue="q", handler="h", at=at)
        for i in range(10)
    ]
    with hub.open(buffer=3) as stream:
        hub.publish(events)
        with anyio.fail_after(5):
            lost = await stream.__anext__()
            rest = [(await stream.__anext__()).job_id for _ in range(3)]
        assert (lost.kind, lost.lost) == (JobEventKind.LOST, 7)
        assert rest == ["7", "8", "9"]
        assert await stream.get(timeout=0.05) is None
    assert not hub.subscribed


# -- worker.subscribe -------------------------------------------------------------------------


async def test_subscribe_sees_start_and_finish() -> None:
    """A subscriber gets each execution as it starts (done False) and as it finishes (done
    True, final status); after unsubscribing it gets nothing."""
    seen: list[tuple[str, bool, Status]] = []
    worker = Worker()
    worker.register("ok", lambda job: "fine")
    unsubscribe = worker.subscribe(lambda e: seen.append((e.job.id, e.done, e.status)))
    async with worker:
        execution = await worker.perform(Job("ok", id="a"), sync=True)
        assert execution.result == "fine"
        unsubscribe()
        unsubscribe()  # twice is harmless
        await worker.perform(Job("ok", id="b"), sync=True)
    assert seen == [("a", False, Status.UNKNOWN), ("a", True, Status.SUCCESS)]


async def test_subscribe_sees_an_execution_cancelled_before_it_started() -> None:
    """An execution cancelled before it ran is seen once, done, with 499."""
    seen: list[tuple[bool, Status]] = []
    worker = Worker()
    worker.register("ok", lambda job: None)
    worker.subscribe(lambda e: seen.append((e.done, e.status)))
    async with worker:
        execution = await worker.perform_in(Job("ok"), 60)
        execution.cancel()
    assert seen == [(True, Status.CANCELLED)]


async def test_a_raising_subscriber_is_logged_and_harmless(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A callback that raises is logged; the execution and the other callbacks go on."""
    others: list[bool] = []

    def bad(execution: Execution) -> None:
        raise RuntimeError("subscriber bug")

    worker = Worker()
    worker.register("ok", lambda job: 7)
    worker.subscribe(bad)
    worker.subscribe(lambda e: others.append(e.done))
    with caplog.at_level(logging.ERROR, logger="anywork.worker"):
        async with worker:
            execution = await worker.perform(Job("ok"), sync=True)
    assert (execution.status, execution.result) == (Status.SUCCESS, 7)
    assert others == [False, True]
    # Logged twice: at the start and at the end.
    assert sum("subscriber bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info) == 2


def test_subscribe_needs_a_callable() -> None:
    """subscribe(non-callable) is a TypeError."""
    with pytest.raises(TypeError, match="callable"):
        Worker().subscribe(42)  # type: ignore[arg-type]


# -- ctx.progress ------------------------------------------------------------------------------


def test_progress_is_validated() -> None:
    """Fractions outside [0, 1], NaN, non-numbers and non-str messages are refused."""
    ctx = Ctx("job")
    for bad in (-0.01, 1.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ctx.progress(bad)
    with pytest.raises(TypeError, match="number"):
        ctx.progress("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="number"):
        ctx.progress(True)
    with pytest.raises(TypeError, match="message"):
        ctx.progress(0.5, 3)  # type: ignore[arg-type]
    assert "progress" not in ctx


async def test_progress_in_process_is_kept_in_ctx() -> None:
    """In process, ctx.progress keeps the last value in ctx["progress"]."""

    async def handler(job: Job) -> Any:
        assert job.ctx is not None
        job.ctx.progress(0, "start")
        job.ctx.progress(1, "end")
        return job.ctx["progress"]

    worker = Worker()
    worker.register("h", handler)
    async with worker:
        execution = await worker.perform(Job("h"), sync=True)
    assert execution.result == {"fraction": 1.0, "message": "end"}


async def test_progress_from_a_sync_handler_is_stored(anyio_backend: str) -> None:
    """A sync handler (a worker thread) reporting progress under serve gets it stored."""
    threads: list[int] = []

    def crunch(job: Job) -> None:
        assert job.ctx is not None
        threads.append(threading.get_ident())
        job.ctx.progress(0.25, "quarter")

    worker = Worker()
    worker.register("crunch", crunch)
    async with open_store("memory://") as store, worker, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(worker.serve, store))
        queue = Queue(store)
        rec = await queue.enqueue(Job("crunch"))
        done = await queue.wait(rec.id, timeout=10)
        worker.stop()
    assert threads and threads[0] != threading.get_ident()
    assert done.progress == {"fraction": 0.25, "message": "quarter"}


# -- the CLI ----------------------------------------------------------------------------------


def test_format_event_lines() -> None:
    """Watch lines show time, kind, id, handler, queue, status, attempt and progress."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    event = JobEvent(
        kind=JobEventKind.PROGRESS,
        job_id="j1",
        queue="q",
        handler="h",
        attempt=1,
        at=at,
        progress={"fraction": 0.5, "message": "half"},
    )
    assert format_event(event) == (
        "03:04:05.678  progress   j1  handler=h queue=q status=- attempt=1 progress=50% half"
    )
    lost = JobEvent(kind=JobEventKind.LOST, job_id="", queue="", handler="", at=at, lost=3)
    assert format_event(lost) == "03:04:05.678  lost       3 events were dropped"


def test_jobs_get_shows_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``anywork jobs get`` shows the progress a handler reported under serve."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"

    async def run_one() -> str:
        def crunch(job: Job) -> None:
            assert job.ctx is not None
            job.ctx.progress(0.75, "nearly")

        worker = Worker()
        worker.register("crunch", crunch)
        async with open_store(url) as store, worker, anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(worker.serve, store))
            rec = await Queue(store).enqueue(Job("crunch"))
            await Queue(store).wait(rec.id, timeout=10)
            worker.stop()
        return rec.id

    job_id = anyio.run(run_one)
    assert main(["jobs", "get", job_id, "--store", url]) == 0
    out = capsys.readouterr().out
    assert 'progress       {"fraction": 0.75, "message": "nearly"}' in out


# -- docs/events.md and examples/events.py ----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_events_example_runs_and_is_the_docs_example() -> None:
    """examples/events.py prints a job's events in order; docs/events.md shows that file."""
    example = ROOT / "examples" / "events.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    kinds = [line.split()[0] for line in done.stdout.splitlines()]
    assert kinds[:3] == ["enqueued", "started", "progress"]
    assert kinds[-2:] == ["progress", "succeeded"]
    assert "'fraction': 1.0, 'message': 'size 3 of 3'" in done.stdout.splitlines()[-2]
    assert _python_blocks(ROOT / "docs" / "events.md")[0] == example.read_text()
