"""The workflow forms, their compilation and the Queue and SyncQueue API, on the memory store
(the conformance suite in tests/stores runs the behaviour on every store)."""

from __future__ import annotations

import types
from datetime import timedelta
from typing import Any

import anyio
import pytest

import work.workflows
from work import Job, JobState, Queue, RetryPolicy, SyncQueue, Worker
from work.stores.memory import MemoryStore
from work.workflows import Chain, Chord, Group, WorkflowState, step

pytestmark = pytest.mark.anyio


def test_all_matches_the_contract() -> None:
    """work.workflows exports exactly the contract's names (plus Step), as a tuple."""
    public = {
        name
        for name, value in vars(work.workflows).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"annotations"}
    assert isinstance(work.workflows.__all__, tuple)
    assert set(work.workflows.__all__) == public
    assert {"Chain", "Group", "Chord", "step", "WorkflowRecord", "WorkflowState"} <= public


async def test_jobs_are_depth_first_with_the_callback_after_its_header() -> None:
    """WorkflowRecord.jobs lists every Job depth-first in definition order, a chord's
    callback after its header, on_error left out; every stored step carries workflow_id."""
    a, b, c, d, e, err = (Job("x") for _ in range(6))
    wf = Chain(a, Chord([b, Group(c, d)], e), on_error=err, name="etl")
    queue = Queue(MemoryStore())
    rec = await queue.enqueue(wf)
    assert rec.jobs == (a.id, b.id, c.id, d.id, e.id)
    assert rec.on_error == err.id
    assert rec.name == "etl"
    assert rec.current == 0
    assert rec.finished_at is None
    assert rec.created_at.tzinfo is not None
    first = await queue.get(a.id)
    assert first is not None and first.workflow_id == rec.id
    assert await queue.get(b.id) is None  # not released yet: no job runs early
    assert [j.id for j in await queue.list(workflow_id=rec.id)] == [a.id]


async def test_group_members_start_together_and_a_delayed_step_is_scheduled() -> None:
    """A Group's members are stored at once; step(delay=) makes a member SCHEDULED."""
    queue = Queue(MemoryStore())
    later = Job("x")
    rec = await queue.enqueue(Group(Job("x"), step(later, delay=timedelta(seconds=60))))
    jobs = await queue.list(workflow_id=rec.id)
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.SCHEDULED]
    assert jobs[1].scheduled_for is not None


async def test_step_retry_policy_is_stored() -> None:
    """A step's RetryPolicy becomes its record's max_attempts."""
    queue = Queue(MemoryStore())
    job = Job("x")
    await queue.enqueue(Chain(step(job, retry=RetryPolicy(max_attempts=4))))
    rec = await queue.get(job.id)
    assert rec is not None and rec.max_attempts == 4


async def test_bad_input_is_refused() -> None:
    """Options meant for one Job, a non-workflow, a reused on_error id and bad step settings
    are clear errors, and nothing is stored."""
    queue = Queue(MemoryStore())
    with pytest.raises(ValueError, match="step"):
        await queue.enqueue(Chain(Job("x")), delay=5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="Job or a workflow"):
        await queue.enqueue(object())  # type: ignore[call-overload]
    job = Job("x")
    with pytest.raises(ValueError, match="on_error"):
        await queue.enqueue(Chain(job, on_error=Job("y", id=job.id)))
    with pytest.raises(TypeError, match="on_error"):
        Chain(Job("x"), on_error="y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        step(Job("x"), delay=-1)
    with pytest.raises(TypeError, match="Job"):
        step("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Group"):
        Chord([], Job("x"))
    with pytest.raises(TypeError, match="header"):
        Chord("abc", Job("x"))  # type: ignore[arg-type]
    assert await queue.list() == []
    assert await queue.list_workflows() == []


def test_from_functions_builds_async_function_chains() -> None:
    """Chain.from_functions: data is the first function's input, retry_limit N gives N + 1
    attempts, and malformed entries are refused by name."""
    chain = Chain.from_functions(
        "pipeline",
        {"x": 1},
        [{"name": "f1", "retry_options": {"retry_limit": 2}}, {"name": "f2"}],
        queue="q",
    )
    assert chain.name == "pipeline"
    first, second = chain.steps
    assert isinstance(first, work.workflows.Step) and isinstance(second, work.workflows.Step)
    assert first.job.args == {"input": {"x": 1}}
    assert first.retry is not None and first.retry.max_attempts == 3
    assert second.retry is None and second.job.args == {}
    assert first.job.queue == "q"
    with pytest.raises(ValueError, match="at least one"):
        Chain.from_functions("p", 1, [])
    with pytest.raises(ValueError, match=r"functions\[0\]"):
        Chain.from_functions("p", 1, [{"nom": "f"}])
    with pytest.raises(ValueError, match="retry_limit"):
        Chain.from_functions("p", 1, [{"name": "f", "retry_options": {"retry_limit": -1}}])


async def test_from_functions_runs_in_order_with_retries() -> None:
    """A function chain runs each function with the previous result, retrying as set."""
    worker = Worker()
    calls: list[tuple[str, Any]] = []
    fails = {"n": 0}

    @worker.handler()
    async def double(job: Job) -> int:
        calls.append(("double", job.args["input"]))
        return int(job.args["input"]) * 2

    @worker.handler()
    async def shaky(job: Job) -> int:
        calls.append(("shaky", job.args["input"]))
        fails["n"] += 1
        if fails["n"] < 2:
            raise ValueError("once")
        return int(job.args["input"]) + 1

    store = MemoryStore()
    queue = Queue(store)
    chain = Chain.from_functions(
        "job", 5, [{"name": "double"}, {"name": "shaky", "retry_options": {"retry_limit": 1}}]
    )
    rec = await queue.enqueue(chain)
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(lambda: worker.serve(store))
        done = await queue.wait_workflow(rec.id, timeout=30)
        worker.stop()
    assert done.result == 11
    assert calls == [("double", 5), ("shaky", 10), ("shaky", 10)]
    steps = await queue.list(workflow_id=rec.id)
    assert [s.attempts for s in steps] == [1, 2]


async def test_list_workflows_pages_and_filters() -> None:
    """list_workflows returns records oldest first, by page and by state."""
    queue = Queue(MemoryStore())
    ids = [(await queue.enqueue(Chain(Job("x")))).id for _ in range(3)]
    assert await queue.cancel_workflow(ids[1]) is True
    assert [w.id for w in await queue.list_workflows(limit=2)] == ids[:2]
    assert [w.id for w in await queue.list_workflows(after=ids[0])] == ids[1:]
    cancelled = await queue.list_workflows(state="cancelled")
    assert [w.id for w in cancelled] == [ids[1]]
    assert cancelled[0].state is WorkflowState.CANCELLED
    with pytest.raises(ValueError):
        await queue.list_workflows(state="nope")


def test_sync_queue_twins() -> None:
    """SyncQueue has enqueue(workflow), get/wait/cancel_workflow and list(workflow_id=)."""
    with SyncQueue("memory://") as queue:
        rec = queue.enqueue(Chain(Job("x"), Job("y")))
        got = queue.get_workflow(rec.id)
        assert got is not None and got.state is WorkflowState.RUNNING
        assert [j.id for j in queue.list(workflow_id=rec.id)] == [rec.jobs[0]]
        with pytest.raises(TimeoutError):
            queue.wait_workflow(rec.id, timeout=0.05)
        assert queue.cancel_workflow(rec.id) is True
        done = queue.wait_workflow(rec.id, timeout=5)
        assert done.state is WorkflowState.CANCELLED and done.current == 0
        assert [w.id for w in queue.list_workflows()] == [rec.id]


async def test_a_store_without_workflows_is_refused() -> None:
    """A store lacking the workflow methods gives a TypeError naming it."""

    class Plain:
        """Only what Queue's constructor checks: the Store protocol, no workflows."""

        def __init__(self) -> None:
            self._inner = MemoryStore()

        def __getattr__(self, name: str) -> Any:
            if "workflow" in name:
                raise AttributeError(name)
            return getattr(self._inner, name)

    queue = Queue(Plain())
    with pytest.raises(TypeError, match="does not keep workflows"):
        await queue.enqueue(Chain(Job("x")))
