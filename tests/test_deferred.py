"""Deferred in process: the 202 status, its validation, and the JobStateError it pairs with."""

from __future__ import annotations

from typing import Any

import pytest

from work import Deferred, Job, JobState, JobStateError, Queue, Status, Worker, WorkError
from work.adapters import retry
from work.stores.memory import MemoryStore

from .stores.test_conformance import serving

pytestmark = pytest.mark.anyio


async def test_perform_deferred_ends_202_with_the_deferred() -> None:
    """In process, a handler's Deferred ends the execution 202 (a success) and is its result."""
    worker = Worker()

    @worker.handler()
    async def start(job: Job) -> Deferred:
        return Deferred(5, result={"ref": 1})

    @worker.handler()
    def start_sync(job: Job) -> Deferred:
        return Deferred(2.5)

    async with worker:
        execution = await worker.perform(Job("start"), sync=True)
        threaded = await worker.perform(Job("start_sync"), sync=True)
    assert execution.status is Status.ACCEPTED and execution.status.is_success
    assert execution.result == Deferred(5, result={"ref": 1})
    assert execution.raise_for_status() is execution
    assert threaded.status is Status.ACCEPTED and threaded.result.ttl == 2.5


async def test_adapters_see_202_as_success() -> None:
    """The retry adapter treats a Deferred's 202 as a success: the handler runs once."""
    worker = Worker(adapters=[retry(max_attempts=3)])
    calls: list[int] = []

    @worker.handler()
    async def start(job: Job) -> Deferred:
        calls.append(1)
        return Deferred(1)

    async with worker:
        execution = await worker.perform(Job("start"), sync=True)
    assert execution.status is Status.ACCEPTED and calls == [1]


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan"), True, "5", None])
def test_deferred_ttl_must_be_positive(ttl: Any) -> None:
    """Deferred refuses a ttl that is not a finite number > 0, naming it."""
    with pytest.raises(ValueError, match="ttl"):
        Deferred(ttl)


def test_deferred_repr_and_equality() -> None:
    """Deferred shows and compares its ttl and result."""
    assert repr(Deferred(3, result="x")) == "Deferred(ttl=3, result='x')"
    assert Deferred(3) == Deferred(3.0) and Deferred(3) != Deferred(4)


def test_job_state_error_is_a_work_error_and_a_value_error() -> None:
    """JobStateError is both a WorkError and a ValueError, and names the job and state."""
    error = JobStateError("j1", "succeeded")
    assert isinstance(error, WorkError) and isinstance(error, ValueError)
    assert error.job_id == "j1" and error.state == "succeeded" and error.expected == "waiting"
    assert str(error) == "job 'j1' is succeeded, not waiting"


async def test_unstorable_deferred_result_fails_500() -> None:
    """Under serve, a Deferred whose provisional result JSON cannot carry fails the job 500,
    naming the bad part, instead of leaving it WAITING."""
    worker = Worker()

    @worker.handler()
    async def start(job: Job) -> Deferred:
        return Deferred(5, result={"bad": {1}})

    store = MemoryStore()
    queue = Queue(store)
    rec = await queue.enqueue(Job("start"))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.INTERNAL_ERROR
    assert done.error is not None and "Deferred result" in done.error and "set" in done.error
