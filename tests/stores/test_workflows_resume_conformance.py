"""Workflows on every store, after the end: a retried failed step resumes its workflow, and a
finished workflow's record goes with its last purged or expired job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from work import Job, JobState, Queue, Worker
from work.stores import Store
from work.workflows import Chain, Chord, Group, WorkflowState

pytestmark = pytest.mark.anyio

FAR = datetime(2999, 1, 1, tzinfo=UTC)


def _worker(gate: anyio.Event | None = None) -> tuple[Worker, dict[str, list[Any]]]:
    """A worker whose ``twice`` handler fails on its first two runs of a job, and a log."""
    worker = Worker(max_concurrency=4)
    seen: dict[str, list[Any]] = {}
    runs: dict[str, int] = {}

    def log(name: str, job: Job) -> None:
        seen.setdefault(name, []).append(dict(job.args))

    @worker.handler()
    async def add(job: Job) -> int:
        log("add", job)
        return int(job.args.get("input", 0)) + int(job.args.get("n", 1))

    @worker.handler()
    async def twice(job: Job) -> int:
        log("twice", job)
        runs[job.id] = runs.get(job.id, 0) + 1
        if runs[job.id] <= 2:
            raise ValueError(f"run {runs[job.id]} fails")
        return int(job.args.get("input", 0)) + 10

    @worker.handler()
    async def gated(job: Job) -> str:
        log("gated", job)
        if gate is not None:
            await gate.wait()
        return "late"

    @worker.handler()
    async def listed(job: Job) -> Any:
        log("listed", job)
        return job.args["input"]

    @worker.handler()
    async def on_error(job: Job) -> None:
        log("on_error", job)

    return worker, seen


@asynccontextmanager
async def _serving(store: Store, worker: Worker) -> AsyncIterator[None]:
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(lambda: worker.serve(store, lease=30))
        yield
        worker.stop()


async def _until_failed(queue: Queue, id: str) -> Any:
    done = await queue.wait_workflow(id, timeout=30)
    assert done.state is WorkflowState.FAILED
    return done


async def test_retrying_the_failed_step_resumes_the_workflow(store: Store) -> None:
    """Queue.retry of the step that failed its workflow makes the workflow RUNNING again; the
    step and its successors run as normal; on_error ran at the first failure only."""
    worker, seen = _worker()
    queue = Queue(store)
    wf = Chain(Job("add", {"n": 1}), Job("twice"), Job("add", {"n": 100}), on_error=Job("on_error"))
    rec = await queue.enqueue(wf)
    bad = rec.jobs[1]
    async with _serving(store, worker):
        first = await _until_failed(queue, rec.id)
        assert first.current == 1 and first.error is not None and "run 1" in first.error
        with anyio.fail_after(30):
            while "on_error" not in seen:
                await anyio.sleep(0.01)
        again = await queue.retry(bad)
        assert again is not None and again.state in (JobState.QUEUED, JobState.RUNNING)
        second = await _until_failed(queue, rec.id)  # it fails once more: no new on_error
        assert second.error is not None and "run 2" in second.error
        assert second.finished_at is not None and second.finished_at >= first.finished_at
        await queue.retry(bad)
        done = await queue.wait_workflow(rec.id, timeout=30)
        await anyio.sleep(0.2)  # room for a duplicate on_error to show up
    assert done.state is WorkflowState.SUCCEEDED
    assert done.result == 111
    assert done.current == 3 and done.error is None
    assert [a.get("input") for a in seen["add"]] == [None, 11]
    assert len(seen["twice"]) == 3
    assert len(seen["on_error"]) == 1


async def test_a_resumed_chord_counts_members_that_ended_while_it_was_failed(
    store: Store,
) -> None:
    """A chord member that ends while its workflow is FAILED counts once the failed member is
    retried: the callback runs once, with every result in definition order."""
    gate = anyio.Event()
    worker, seen = _worker(gate)
    queue = Queue(store)
    wf = Chord([Job("twice"), Job("gated"), Job("add", {"n": 5})], Job("listed"))
    rec = await queue.enqueue(wf)
    async with _serving(store, worker):
        await _until_failed(queue, rec.id)
        gate.set()
        late = await queue.wait(rec.jobs[1], timeout=30)
        assert late.state is JobState.SUCCEEDED
        await queue.retry(rec.jobs[0])
        await _until_failed(queue, rec.id)
        paused = await queue.get_workflow(rec.id)
        assert paused is not None and paused.state is WorkflowState.FAILED
        await queue.retry(rec.jobs[0])
        done = await queue.wait_workflow(rec.id, timeout=30)
        await anyio.sleep(0.2)
    assert done.state is WorkflowState.SUCCEEDED
    assert done.result == [10, "late", 5]
    assert len(seen["listed"]) == 1


async def test_a_retried_step_of_a_cancelled_workflow_runs_alone(store: Store) -> None:
    """Retrying a step of a CANCELLED workflow runs that job again; the workflow stays
    CANCELLED and no later step is enqueued."""
    worker, seen = _worker()
    queue = Queue(store)
    rec = await queue.enqueue(Chain(Job("add", {"n": 2}), Job("add", {"n": 3})))
    assert await queue.cancel_workflow(rec.id) is True
    again = await queue.retry(rec.jobs[0])
    assert again is not None and again.state is JobState.QUEUED
    async with _serving(store, worker):
        ran = await queue.wait(rec.jobs[0], timeout=30)
        await anyio.sleep(0.2)
    assert ran.state is JobState.SUCCEEDED and ran.result == 2
    after = await queue.get_workflow(rec.id)
    assert after is not None and after.state is WorkflowState.CANCELLED
    assert await queue.get(rec.jobs[1]) is None
    assert len(seen["add"]) == 1


async def test_a_finished_workflow_goes_with_its_last_purged_job(store: Store) -> None:
    """A finished workflow's record stays while any of its jobs (on_error included) is kept,
    and is deleted with the last one; a RUNNING workflow's record is never deleted."""
    gate = anyio.Event()
    worker, _ = _worker(gate)
    queue = Queue(store)
    failed = await queue.enqueue(Chain(Job("twice"), Job("add"), on_error=Job("on_error")))
    running = await queue.enqueue(Chain(Job("add"), Job("gated")))
    async with _serving(store, worker):
        await _until_failed(queue, failed.id)
        assert failed.on_error is not None
        await queue.wait(failed.on_error, timeout=30)
        await queue.wait(running.jobs[0], timeout=30)
        assert await store.purge(older_than=FAR, states=[JobState.FAILED]) == 1
        assert await queue.get_workflow(failed.id) is not None  # on_error's job is kept
        # The running chain's first step and the on_error job go; the running one stays.
        assert await store.purge(older_than=FAR, states=[JobState.SUCCEEDED]) == 2
        assert await queue.get_workflow(failed.id) is None
        still = await queue.get_workflow(running.id)
        assert still is not None and still.state is WorkflowState.RUNNING
        gate.set()
        done = await queue.wait_workflow(running.id, timeout=30)
        assert done.state is WorkflowState.SUCCEEDED
    assert await store.purge(older_than=FAR, states=[JobState.SUCCEEDED]) == 1
    assert await queue.get_workflow(running.id) is None
    assert await queue.list_workflows() == []


async def test_a_workflow_goes_with_its_last_expired_job(store: Store) -> None:
    """Retention by expire deletes a finished workflow's record with its jobs; another one
    (here still RUNNING, on a queue nobody serves) stays."""
    worker, _ = _worker()
    queue = Queue(store)
    gone = await queue.enqueue(Chain(Job("add"), Job("add")))
    kept = await queue.enqueue(Chain(Job("add", queue="other")))
    async with _serving(store, worker):
        await queue.wait_workflow(gone.id, timeout=30)
    assert await store.expire(["default"], result_ttl=0, limit=100) == 2
    assert await queue.get_workflow(gone.id) is None
    assert [w.id for w in await queue.list_workflows()] == [kept.id]


async def test_only_the_step_at_current_resumes_and_failures_meanwhile_count(
    store: Store,
) -> None:
    """Retrying a failed member that is not the workflow's ``current`` runs it alone; retrying
    the one at ``current`` resumes the workflow, where a member that failed meanwhile fails it
    again at once (now at its index, on_error not again); once every member succeeds, the
    group's result is complete."""
    worker, seen = _worker()
    queue = Queue(store)
    rec = await queue.enqueue(Group(Job("twice"), Job("twice"), on_error=Job("on_error")))

    async def ended(i: int, state: JobState) -> None:
        done = await queue.wait(rec.jobs[i], timeout=30)
        assert done.state is state

    async def workflow() -> Any:
        got = await queue.get_workflow(rec.id)
        assert got is not None
        return got

    async with _serving(store, worker):
        cur = (await _until_failed(queue, rec.id)).current
        other = 1 - cur
        await ended(other, JobState.FAILED)
        await queue.retry(rec.jobs[other])  # not at current: it runs alone
        await ended(other, JobState.FAILED)
        after = await workflow()
        assert (after.state, after.current) == (WorkflowState.FAILED, cur)
        await queue.retry(rec.jobs[cur])  # resumes; the other's second failure counts now
        after = await workflow()
        assert (after.state, after.current) == (WorkflowState.FAILED, other)
        await ended(cur, JobState.FAILED)
        await queue.retry(rec.jobs[other])  # resumes; fails at cur again; other succeeds
        await ended(other, JobState.SUCCEEDED)
        after = await workflow()
        assert (after.state, after.current) == (WorkflowState.FAILED, cur)
        await queue.retry(rec.jobs[cur])
        done = await queue.wait_workflow(rec.id, timeout=30)
        await anyio.sleep(0.2)
    assert done.state is WorkflowState.SUCCEEDED
    assert done.result == [10, 10]
    assert len(seen["twice"]) == 6
    assert len(seen["on_error"]) == 1
