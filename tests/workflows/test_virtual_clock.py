"""Workflows on a VirtualClock: the memory and SQLite stores stamp them with the store's time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from work import Job, JobState, Queue, Worker
from work.stores import open_store
from work.stores._base import Store
from work.testing import VirtualClock
from work.workflows import Chain, WorkflowState, step

pytestmark = pytest.mark.anyio

START = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture(params=["memory", "sqlite"])
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A memory or SQLite store on a VirtualClock (the clock is ``store.clock``)."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_store(url, clock=VirtualClock(START)) as store:
        yield store


async def test_workflow_times_follow_the_virtual_clock(clocked: Store) -> None:
    """created_at, a released step's due time and finished_at are the clock's, and a step
    delayed by an hour is due when the clock has moved an hour on, not before."""
    clock = clocked.clock  # type: ignore[attr-defined]
    assert isinstance(clock, VirtualClock)
    queue = Queue(clocked)
    worker = Worker(clock=clock)
    worker.register("echo", lambda job: job.args.get("input", 0) + 1)
    rec = await queue.enqueue(Chain(Job("echo"), step(Job("echo"), delay=3600)))
    assert rec.created_at == START
    with anyio.fail_after(30):
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(lambda: worker.serve(clocked))
            while (first := await queue.get(rec.jobs[0])) is None or not first.state.is_final:
                await anyio.sleep(0.01)
            later = await queue.get(rec.jobs[1])
            assert later is not None and later.state is JobState.SCHEDULED
            assert later.enqueued_at == START
            assert later.scheduled_for == START + HOUR
            await clock.advance(HOUR)
            while (wf := await queue.get_workflow(rec.id)) is None or not wf.state.is_final:
                await anyio.sleep(0.01)
            worker.stop()
    done = await queue.get_workflow(rec.id)
    assert done is not None and done.state is WorkflowState.SUCCEEDED
    assert done.result == 2
    assert done.created_at == START
    assert done.finished_at == START + HOUR
