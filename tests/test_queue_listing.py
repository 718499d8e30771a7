"""Queue.list by args, with a workflow's jobs and through SyncQueue, on the memory store (the
conformance suite in tests/stores runs the filter on every store)."""

from __future__ import annotations

import pytest

from work import Job, Queue, SyncQueue
from work.stores.memory import MemoryStore
from work.workflows import Group

pytestmark = pytest.mark.anyio


async def test_a_workflows_jobs_filtered_by_args() -> None:
    """list(workflow_id=, args=) keeps the workflow's stored jobs whose args match."""
    queue = Queue(MemoryStore())
    jobs = [Job("x", {"n": i % 2}) for i in range(5)]
    rec = await queue.enqueue(Group(*jobs))
    found = await queue.list(workflow_id=rec.id, args={"n": 0})
    assert [j.id for j in found] == [jobs[0].id, jobs[2].id, jobs[4].id]
    assert [j.id for j in await queue.list(workflow_id=rec.id, args={"n": 0}, limit=1)] == [
        jobs[0].id
    ]
    with pytest.raises(TypeError):
        await queue.list(args={"n": {1, 2}})


def test_sync_queue_lists_by_args_and_reads_the_chart_and_registry() -> None:
    """SyncQueue.list(args=), finished_per_minute() and workers() forward to the Queue."""
    with SyncQueue(MemoryStore()) as queue:
        queue.enqueue(Job("x", {"k": "a"}, id="a"))
        queue.enqueue(Job("x", {"k": "b"}, id="b"))
        assert [r.id for r in queue.list(args={"k": "b"})] == ["b"]
        assert queue.finished_per_minute() == {}
        assert queue.workers() == []
