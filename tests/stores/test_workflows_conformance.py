"""Workflows on every store: results flow, groups keep order, a chord joins once, failures and
cancels end the workflow, and each step's end and its successors are one atomic change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from work import Job, JobState, Queue, RetryPolicy, Worker
from work.stores import Store
from work.workflows import Chain, Chord, Group, WorkflowState, step

pytestmark = pytest.mark.anyio


def _worker(concurrency: int = 8) -> tuple[Worker, dict[str, list[Any]]]:
    """A worker with the handlers these tests use, and a log of what each handler saw."""
    worker = Worker(max_concurrency=concurrency)
    seen: dict[str, list[Any]] = {}

    def log(name: str, job: Job) -> None:
        seen.setdefault(name, []).append(dict(job.args))

    @worker.handler()
    async def add(job: Job) -> int:
        log("add", job)
        await anyio.lowlevel.checkpoint()
        return int(job.args.get("input", 0)) + int(job.args.get("n", 1))

    @worker.handler()
    async def echo(job: Job) -> Any:
        log("echo", job)
        return job.args.get("n")

    @worker.handler()
    async def total(job: Job) -> int:
        log("total", job)
        return sum(job.args["input"])

    @worker.handler()
    async def keep(job: Job) -> Any:
        log("keep", job)
        return job.args

    @worker.handler()
    async def boom(job: Job) -> None:
        log("boom", job)
        raise ValueError(f"boom {job.args.get('n')}")

    flaky_runs: dict[str, int] = {}

    @worker.handler()
    async def flaky(job: Job) -> str:
        log("flaky", job)
        flaky_runs[job.id] = flaky_runs.get(job.id, 0) + 1
        if flaky_runs[job.id] < 3:
            raise ValueError("not yet")
        return "done"

    @worker.handler()
    async def slow(job: Job) -> None:
        log("slow", job)
        await anyio.sleep(60)

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


async def test_chain_passes_each_result_as_input(store: Store) -> None:
    """Each Chain step after the first gets the previous result as args["input"]."""
    worker, seen = _worker()
    queue = Queue(store)
    wf = Chain(Job("add", {"n": 1}), Job("add", {"n": 10}), Job("add", {"n": 100}))
    rec = await queue.enqueue(wf)
    assert rec.state is WorkflowState.RUNNING
    assert rec.kind == "chain"
    assert rec.jobs == tuple(s.job.id for s in wf.steps)  # type: ignore[union-attr]
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
    assert done.state is WorkflowState.SUCCEEDED
    assert done.result == 111
    assert done.current == 3
    assert done.finished_at is not None
    assert [a.get("input") for a in seen["add"]] == [None, 1, 11]
    jobs = await queue.list(workflow_id=rec.id)
    assert [j.id for j in jobs] == list(rec.jobs)
    assert all(j.workflow_id == rec.id for j in jobs)


async def test_immutable_step_keeps_its_args(store: Store) -> None:
    """An immutable step's args stay exactly as given; the next mutable one gets input."""
    worker, seen = _worker()
    queue = Queue(store)
    wf = Chain(Job("add", {"n": 5}), step(Job("keep", {"k": 1}), immutable=True), Job("keep"))
    rec = await queue.enqueue(wf)
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
    assert seen["keep"] == [{"k": 1}, {"input": {"k": 1}}]
    assert done.result == {"input": {"k": 1}}


async def test_group_result_is_in_definition_order(store: Store) -> None:
    """A Group's result lists its members' results in definition order, not end order."""
    worker, _ = _worker()
    queue = Queue(store)
    members = [step(Job("echo", {"n": n}), delay=0.3 if n == 0 else None) for n in range(6)]
    rec = await queue.enqueue(Group(*members))
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
    assert done.kind == "group"
    assert done.result == [0, 1, 2, 3, 4, 5]


async def test_chord_of_50_runs_its_callback_once(store: Store) -> None:
    """A chord of 50 members at concurrency 8 runs its callback exactly once, with every
    result in order."""
    worker, seen = _worker(concurrency=8)
    queue = Queue(store)
    rec = await queue.enqueue(Chord([Job("echo", {"n": n}) for n in range(50)], Job("total")))
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=60)
    assert done.state is WorkflowState.SUCCEEDED
    assert len(seen["total"]) == 1
    assert seen["total"][0]["input"] == list(range(50))
    assert done.result == sum(range(50))
    assert done.jobs[-1] == (await queue.list(workflow_id=rec.id, limit=100))[-1].id


async def test_nested_chain_of_group_and_step(store: Store) -> None:
    """Chain(Group, step): the group's list goes to the step; a Group in a Chain gets the
    input of the step before it."""
    worker, seen = _worker()
    queue = Queue(store)
    wf = Chain(
        Job("add", {"n": 2}),
        Group(Job("add", {"n": 1}), Job("add", {"n": 2}), Chain(Job("add"), Job("add"))),
        Job("total"),
    )
    rec = await queue.enqueue(wf)
    assert len(rec.jobs) == 6
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
    assert seen["total"][0]["input"] == [3, 4, 4]
    assert done.result == 11


async def test_per_step_retries(store: Store) -> None:
    """A step with its own retry policy is retried before the workflow moves on."""
    worker, seen = _worker()
    queue = Queue(store)
    retry = RetryPolicy(max_attempts=3, backoff=_no_wait())
    flaky = Job("flaky")
    rec = await queue.enqueue(Chain(step(flaky, retry=retry), Job("keep")))
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
    assert done.state is WorkflowState.SUCCEEDED
    assert len(seen["flaky"]) == 3
    assert seen["keep"] == [{"input": "done"}]
    flaky_rec = await queue.get(flaky.id)
    assert flaky_rec is not None and flaky_rec.attempts == 3


async def test_failure_fails_the_workflow_and_runs_on_error_once(store: Store) -> None:
    """A failed step fails the workflow: no later step runs, a chord's callback never runs,
    the other members finish, and on_error runs once with the first failure's details."""
    worker, seen = _worker()
    queue = Queue(store)
    bad = Job("boom", {"n": 7})
    wf = Chain(
        Job("add"),
        Chord([Job("echo", {"n": 1}), bad, Job("echo", {"n": 3})], Job("total")),
        Job("add"),
        on_error=Job("on_error", {"who": "me"}),
    )
    rec = await queue.enqueue(wf)
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
        with anyio.fail_after(30):
            while "on_error" not in seen or len(seen.get("echo", [])) < 2:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # room for a duplicate to show up
    assert done.state is WorkflowState.FAILED
    assert done.current == 2
    assert done.jobs[2] == bad.id
    assert done.error is not None and "boom 7" in done.error
    assert "total" not in seen
    assert len(seen["add"]) == 1
    assert len(seen["on_error"]) == 1
    args = seen["on_error"][0]
    assert args["who"] == "me"
    assert args["job_id"] == bad.id
    assert args["workflow_id"] == rec.id
    assert args["status"] == 500
    assert "boom 7" in args["error"]


async def test_cancel_mid_chain(store: Store) -> None:
    """cancel_workflow on a running chain cancels the running step and starts no later one;
    a second cancel, or one of an unknown id, returns False."""
    worker, seen = _worker()
    queue = Queue(store)
    wf = Chain(Job("add"), Job("slow"), Job("add"))
    rec = await queue.enqueue(wf)
    async with _serving(store, worker):
        with anyio.fail_after(30):
            while "slow" not in seen:
                await anyio.sleep(0.01)
        assert await queue.cancel_workflow(rec.id) is True
        done = await queue.wait_workflow(rec.id, timeout=5)
        slow = await queue.wait(rec.jobs[1], timeout=30)
    assert done.state is WorkflowState.CANCELLED
    assert done.current == 1
    assert slow.state is JobState.CANCELLED
    assert len(seen["add"]) == 1
    assert await queue.get(rec.jobs[2]) is None
    assert await queue.cancel_workflow(rec.id) is False
    assert await queue.cancel_workflow("no-such-workflow") is False


async def test_wait_workflow_timeout_and_unknown(store: Store) -> None:
    """wait_workflow raises TimeoutError while it runs and LookupError for an unknown id."""
    queue = Queue(store)
    rec = await queue.enqueue(Chain(Job("add")))
    with pytest.raises(TimeoutError):
        await queue.wait_workflow(rec.id, timeout=0.05)
    with pytest.raises(LookupError):
        await queue.wait_workflow("nope", timeout=1)
    assert await queue.get_workflow("nope") is None
    listed = await queue.list_workflows()
    assert [w.id for w in listed] == [rec.id]


async def test_bad_workflows_store_nothing(store: Store) -> None:
    """A reused Job, an id already taken, or a bad step is refused at enqueue, storing
    nothing."""
    queue = Queue(store)
    job = Job("add")
    with pytest.raises(ValueError, match="used twice"):
        await queue.enqueue(Chain(job, job))
    with pytest.raises(ValueError, match="used twice"):
        await queue.enqueue(Group(Job("add", id="x1"), Job("add", id="x1")))
    await queue.enqueue(Job("add", id="taken"))
    with pytest.raises(ValueError, match="taken"):
        await queue.enqueue(Chain(Job("add", id="fresh"), Job("add", id="taken")))
    with pytest.raises(TypeError, match="must be a Job"):
        Chain(Job("add"), "add")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        Group()
    with pytest.raises(TypeError, match="not JSON"):
        await queue.enqueue(Chain(Job("add", {"x": object()})))
    assert await queue.get("fresh") is None
    assert await queue.list_workflows() == []


def _no_wait() -> Any:
    from work import Constant

    return Constant(0.0)


async def test_a_stale_owner_cannot_complete_a_step_twice(store: Store) -> None:
    """A step whose lease expired and was claimed again: the old owner's completion is
    refused, the new owner's releases the next step exactly once, with its result."""
    from work import Status
    from work.stores import Outcome

    queue = Queue(store)
    first, second = Job("add"), Job("add")
    rec = await queue.enqueue(Chain(first, second))
    (claimed,) = await store.claim(["default"], limit=1, lease=0, owner="old")
    assert claimed.record.id == first.id
    assert await store.reap() == 1
    (again,) = await store.claim(["default"], limit=1, lease=30, owner="new")
    assert again.record.id == first.id
    ok = Outcome(id=first.id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result=1)
    assert await store.complete("old", [ok]) in (set(), None)
    assert await queue.get(second.id) is None
    stale = await queue.get_workflow(rec.id)
    assert stale is not None and stale.current == 0
    done = Outcome(id=first.id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result=41)
    await store.complete("new", [done])
    released = await queue.get(second.id)
    assert released is not None and released.state is JobState.QUEUED
    assert released.args == {"input": 41}
    await store.complete("new", [done])  # a repeated completion changes nothing
    assert [j.id for j in await queue.list(workflow_id=rec.id)] == [first.id, second.id]
    now = await queue.get_workflow(rec.id)
    assert now is not None and now.current == 1 and now.state is WorkflowState.RUNNING


async def test_a_step_lost_too_often_fails_the_workflow_and_runs_on_error(store: Store) -> None:
    """A step failed by reap (its worker lost at the lost limit) fails the workflow and
    enqueues on_error once, in the reap's own change."""
    queue = Queue(store)
    first, alert = Job("add"), Job("on_error", {"k": "v"})
    rec = await queue.enqueue(Chain(first, Job("add"), on_error=alert))
    await store.claim(["default"], limit=1, lease=0, owner="w")
    assert await store.reap(lost_limit=1) == 1
    done = await queue.get_workflow(rec.id)
    assert done is not None and done.state is WorkflowState.FAILED
    assert done.error == "worker lost" and done.current == 0
    queued = await queue.get(alert.id)
    assert queued is not None and queued.state is JobState.QUEUED
    assert queued.args == {
        "k": "v",
        "error": "worker lost",
        "status": 500,
        "job_id": first.id,
        "workflow_id": rec.id,
    }
    assert queued.workflow_id == rec.id


async def test_cancelling_one_step_cancels_the_workflow(store: Store) -> None:
    """Queue.cancel of a queued step ends the workflow CANCELLED at that step; no on_error."""
    queue = Queue(store)
    alert = Job("on_error")
    members = [Job("add") for _ in range(3)]
    rec = await queue.enqueue(Chord(members, Job("total"), on_error=alert))
    assert await queue.cancel(members[1].id) is True
    done = await queue.get_workflow(rec.id)
    assert done is not None and done.state is WorkflowState.CANCELLED
    assert done.current == 1 and done.finished_at is not None
    assert await queue.get(alert.id) is None
    assert await queue.get(rec.jobs[-1]) is None


async def test_a_result_that_is_not_json_fails_the_workflow(store: Store) -> None:
    """A step returning something JSON cannot carry ends FAILED, and so does its workflow."""
    worker, _ = _worker()

    @worker.handler()
    async def unstorable(job: Job) -> object:
        return object()

    queue = Queue(store)
    rec = await queue.enqueue(Chain(Job("unstorable"), Job("add")))
    async with _serving(store, worker):
        done = await queue.wait_workflow(rec.id, timeout=30)
    assert done.state is WorkflowState.FAILED
    assert done.error is not None and "JSON" in done.error
    assert await queue.get(rec.jobs[1]) is None


async def test_a_deferred_step_settled_later_releases_the_next(store: Store) -> None:
    """A step that went WAITING (a Deferred) and is settled SUCCEEDED later releases the
    next step with the settled result, in the settle's own change; cancel_workflow cancels a
    WAITING step."""
    from datetime import UTC, datetime, timedelta

    from work import Status
    from work.stores import Outcome

    queue = Queue(store)
    first, second = Job("add"), Job("add")
    rec = await queue.enqueue(Chain(first, second))
    await store.claim(["default"], limit=1, lease=30, owner="w")
    deadline = datetime.now(UTC) + timedelta(hours=1)
    waiting = Outcome(
        id=first.id, state=JobState.WAITING, status=Status.ACCEPTED, deadline=deadline, ttl=3600
    )
    await store.complete("w", [waiting])
    assert await queue.get(second.id) is None
    ok = Outcome(id=first.id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result={"r": 1})
    await store.settle(ok)
    released = await queue.get(second.id)
    assert released is not None and released.args == {"input": {"r": 1}}
    running = await queue.get_workflow(rec.id)
    assert running is not None and running.current == 1

    other = await queue.enqueue(Chain(Job("add"), Job("add")))
    await store.claim(["default"], limit=2, lease=30, owner="w")
    parked = Outcome(
        id=other.jobs[0],
        state=JobState.WAITING,
        status=Status.ACCEPTED,
        deadline=deadline,
        ttl=3600,
    )
    await store.complete("w", [parked])
    assert await queue.cancel_workflow(other.id) is True
    step = await queue.get(other.jobs[0])
    assert step is not None and step.state is JobState.CANCELLED
