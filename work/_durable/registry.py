"""The worker registry's writer: a serving worker records itself and heartbeats.

``anywork serve`` and ``anywork worker`` run :func:`keep_registered` beside the worker; it
counts executions through the Worker's public ``subscribe`` seam and writes a
:class:`~work.stores.WorkerInfo` every ``heartbeat`` seconds. Readers (``Queue.workers``,
``GET /v1/workers``, ``anywork workers``) call a worker unseen for 3 heartbeats lost.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio

from .._runtime.worker import Execution, Worker
from ..stores import Store, WorkerInfo

__all__ = ["keep_registered"]

# Removing the entry on the way out gets this long (the store may be slow or gone).
_REMOVE_TIMEOUT = 5.0


class _Counts:
    """Running, processed and failed executions, fed by ``worker.subscribe``."""

    def __init__(self) -> None:
        self._running: set[str] = set()
        self.processed = 0
        self.failed = 0

    @property
    def running(self) -> int:
        """Executions started and not finished."""
        return len(self._running)

    def __call__(self, execution: Execution) -> None:
        key = execution.ctx.execution_id
        if not execution.done:
            self._running.add(key)
            return
        # An execution cancelled before it started is seen once, done: discard is a no-op.
        self._running.discard(key)
        self.processed += 1
        if not execution.status.is_success:
            self.failed += 1


async def keep_registered(
    store: Store,
    worker: Worker,
    *,
    queues: Sequence[str],
    concurrency: int,
    heartbeat: float,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Record ``worker`` in ``store``'s registry and heartbeat until cancelled; on the way
    out, remove the entry (a clean stop is not a lost worker).

    A failed heartbeat write is retried at the next beat (the store may be back by then); the
    readers see the worker as lost meanwhile, which is the truth as far as they can tell.

    Args:
        store: an entered store.
        worker: the serving worker (its handlers and executions are reported).
        queues: the queues it serves.
        concurrency: its limit of jobs at once.
        heartbeat: seconds between writes.
        task_status: gets the registry id once the first entry is written.
    """
    counts = _Counts()
    unsubscribe = worker.subscribe(counts)
    started = datetime.now(UTC)
    id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    first = True
    try:
        while True:
            info = WorkerInfo(
                id=id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=tuple(queues),
                handlers=tuple(sorted(worker.handlers)),
                concurrency=concurrency,
                running=counts.running,
                processed=counts.processed,
                failed=counts.failed,
                started_at=started,
                last_seen=datetime.now(UTC),
                heartbeat=heartbeat,
            )
            try:
                await store.record_worker(info)
            except Exception:
                if first:
                    raise
            if first:
                task_status.started(id)
                first = False
            await anyio.sleep(heartbeat)
    finally:
        unsubscribe()
        # A failure leaves it to show as lost: the truth as far as anyone can tell.
        with anyio.move_on_after(_REMOVE_TIMEOUT, shield=True), contextlib.suppress(Exception):
            await store.remove_worker(id)
