"""``drain``: serve a worker on a store until no job of some queues is runnable or running."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio

from .._core.clock import clock_of
from ..stores._base import JobState

if TYPE_CHECKING:
    from .._runtime.worker import Worker
    from ..stores._base import Store
    from .queue import Queue

__all__ = ["drain"]

# How often drain looks at the store while jobs are still runnable or running (real time).
_DRAIN_POLL = 0.01


async def _runnable(store: Store, queues: tuple[str, ...]) -> bool:
    """True while a job of ``queues`` is QUEUED, RUNNING, or SCHEDULED and due now."""
    stats = await store.stats()
    now = clock_of(store).now()
    for name in queues:
        counts = stats.get(name, {})
        if counts.get(JobState.QUEUED.value, 0) or counts.get(JobState.RUNNING.value, 0):
            return True
        if not counts.get(JobState.SCHEDULED.value, 0):
            continue
        after: str | None = None
        while True:
            page = await store.list(state=JobState.SCHEDULED, queue=name, limit=500, after=after)
            if any(r.scheduled_for is None or r.scheduled_for <= now for r in page):
                return True
            if len(page) < 500:
                break
            after = page[-1].id
    # Nothing runnable in what was read, but the reads were not one snapshot: a job claimed
    # (or finished) between the counts and the listing would look like "nothing left" while
    # it runs. Counts that moved meanwhile mean "look again".
    again = await store.stats()
    return any(again.get(name, {}) != stats.get(name, {}) for name in queues)


async def drain(
    queue: Queue,
    worker: Worker,
    *,
    queues: tuple[str, ...] | list[str] = ("default",),
) -> None:
    """Run ``worker`` on ``queue``'s store until no job in ``queues`` is runnable now or running.

    The eager mode of tests: enqueue, ``await drain(queue, worker)``, then look at the results.
    Jobs due later (a ``delay``, a retry's backoff) and WAITING ones do not hold it; jobs a
    handler enqueues on ``queues`` do. The worker is started (and stopped again at the end) if
    it is not running. With a :class:`VirtualClock`, "now" is the clock's.

    Args:
        queue: the Queue whose store holds the jobs (entered).
        worker: the Worker with the handlers.
        queues: the queues to serve and wait for.

    Raises:
        ValueError: no queues, or a queue name that is not a non-empty str.
    """
    if isinstance(queues, str):
        queues = (queues,)
    names = tuple(queues)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"queues must be a non-empty list of queue names, got {queues!r}")
    store = queue.store
    async with AsyncExitStack() as stack:
        if not worker.running:
            await stack.enter_async_context(worker)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(worker.serve, store, queues=names))
            # The condition is the store's state, which jobs, handlers and other tasks all
            # change: there is no one event to wait on, so look again after a short pause.
            while await _runnable(store, names):  # noqa: ASYNC110
                await anyio.sleep(_DRAIN_POLL)
            tg.cancel_scope.cancel()
