"""Workflow limits: nesting deeper than MAX_DEPTH or more than MAX_STEPS steps is refused at
enqueue with a ValueError naming the limit, and nothing is stored."""

from __future__ import annotations

import pytest

from work import Job, Queue
from work.stores import open_store
from work.workflows import Chain, Group
from work.workflows._plan import MAX_DEPTH, MAX_STEPS

pytestmark = pytest.mark.anyio


def _nested(levels: int) -> Chain | Group:
    """A workflow ``levels`` deep: Groups around one Chain."""
    node: Chain | Group = Chain(Job("x"))
    for _ in range(levels - 1):
        node = Group(node)
    return node


async def test_depth_and_step_limits() -> None:
    """32 levels and 10,000 steps are accepted; one level or one step more is a ValueError
    naming the limit, however deep the tree (no RecursionError), and stores nothing."""
    assert (MAX_DEPTH, MAX_STEPS) == (32, 10_000)
    async with open_store("memory://") as store:
        queue = Queue(store)
        await queue.enqueue(_nested(MAX_DEPTH))
        await queue.enqueue(Group(*[Job("x") for _ in range(MAX_STEPS)]))
        for workflow in (_nested(MAX_DEPTH + 1), _nested(5_000)):
            with pytest.raises(ValueError, match=r"at most 32 levels deep \(MAX_DEPTH\)"):
                await queue.enqueue(workflow)
        too_many = Chain(Group(*[Job("x") for _ in range(MAX_STEPS)]), Job("y"))
        with pytest.raises(ValueError, match=r"at most 10,000 steps \(MAX_STEPS\)"):
            await queue.enqueue(too_many)
        assert len(await queue.list_workflows()) == 2
        assert (await store.stats())["default"]["queued"] == 1 + MAX_STEPS
