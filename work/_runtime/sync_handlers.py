"""Running plain ``def`` handlers: in threads (abandoned when they overrun) or in processes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

import anyio
import anyio.to_thread

from .._core.exceptions import StatusError
from .._core.job import Ctx, Job
from .._core.status import Status
from .._core.types import Handler

__all__ = ["ProcessRunner", "SyncMode", "ThreadRunner", "run_in_child"]

SyncMode = Literal["thread", "process"]
"""Where a Worker runs plain ``def`` handlers."""

# States of a _ThreadCall.
_RUNNING, _FINISHED, _ABANDONED = range(3)


class _ThreadCall:
    """One sync call on a worker thread: running, finished, or abandoned while running."""

    __slots__ = ("fn", "job", "runner", "state")

    def __init__(self, runner: ThreadRunner, fn: Callable[[Job], Any], job: Job) -> None:
        self.runner = runner
        self.fn = fn
        self.job = job
        self.state = _RUNNING

    def run(self) -> Any:
        try:
            return self.fn(self.job)
        finally:
            self.runner._finished(self)


class ThreadRunner:
    """Runs a Worker's plain ``def`` handlers in anyio worker threads.

    A thread cannot be interrupted. When the execution is cancelled while its thread runs
    (its timeout expired: 408; ``Execution.cancel()`` or a stop: 499), the execution ends
    at once and gives its slot back; the thread is *abandoned*: it runs on to its end, and
    what it returns or raises is dropped. Abandoned threads still running are counted
    (:attr:`abandoned`); each abandonment logs a warning on the ``anywork.worker`` logger.
    While ``max_abandoned`` of them are still running, a new sync execution is not started
    and ends 503 at once (another try may find the threads gone), so a handler that hangs
    for good cannot pile up threads without bound.

    Args:
        max_abandoned: the cap on abandoned threads still running.
        name: the worker's name, for the messages.
    """

    def __init__(self, *, max_abandoned: int, name: str) -> None:
        self.max_abandoned = max_abandoned
        self.name = name
        self._lock = threading.Lock()
        self._abandoned = 0
        self.abandoned_total = 0

    @property
    def abandoned(self) -> int:
        """Abandoned threads that are still running."""
        return self._abandoned

    def _finished(self, call: _ThreadCall) -> None:
        with self._lock:
            if call.state == _ABANDONED:
                self._abandoned -= 1
            call.state = _FINISHED

    def wrap(self, fn: Callable[[Job], Any]) -> Handler:
        """Return ``fn`` as an async handler that runs it in a worker thread."""

        async def in_thread(job: Job) -> Any:
            if self._abandoned >= self.max_abandoned:
                raise StatusError(
                    Status.UNAVAILABLE,
                    f"{self._abandoned} threads of sync handlers that overran are still running "
                    f"on {self.name} (the cap is {self.max_abandoned}): not starting another",
                )
            call = _ThreadCall(self, fn, job)
            try:
                return await anyio.to_thread.run_sync(call.run, abandon_on_cancel=True)
            except BaseException:
                self._abandon(call)
                raise

        in_thread.__name__ = getattr(fn, "__name__", "handler")
        return in_thread

    def _abandon(self, call: _ThreadCall) -> None:
        with self._lock:
            if call.state != _RUNNING:
                return  # the thread finished (the handler raised): nothing left behind
            call.state = _ABANDONED
            self._abandoned += 1
            self.abandoned_total += 1
            running = self._abandoned
        # Imported here: logging is needed only when a thread is abandoned, not by `import work`.
        import logging

        logging.getLogger("anywork.worker").warning(
            "abandoned the thread of sync handler %r (job %s) after its execution was "
            "cancelled or timed out; it runs on, its result will be dropped "
            "(%d abandoned threads running on %s, cap %d)",
            call.job.handler,
            call.job.id,
            running,
            self.name,
            self.max_abandoned,
        )


def run_in_child(fn: Callable[[Job], Any], job: Job, attempt: int) -> tuple[Any, int]:
    """Run ``fn`` in a worker process with a fresh Ctx; return its result and status.

    The handler sees ``job.ctx`` with ``status`` and ``attempt`` (no values set by adapters:
    they live in the parent process).
    """
    ctx = Ctx(job.id, attempt=attempt)
    job.ctx = ctx
    result = fn(job)
    return result, int(ctx.status)


class ProcessRunner:
    """Runs a Worker's plain ``def`` handlers in worker processes (``anyio.to_process``).

    When the execution is cancelled (its timeout expired: 408; a cancel or a stop: 499) the
    child process is killed, so a handler that hangs gives back its slot *and* its CPU. The
    handler must be a module-level function (pickled by reference), and the job's args, the
    result and any exception must be picklable. The child gets a copy of the job with a
    fresh ``ctx`` (its status and attempt travel back, values adapters put in ctx do not).
    """

    def wrap(self, fn: Callable[[Job], Any]) -> Handler:
        """Return ``fn`` as an async handler that runs it in a worker process.

        Raises:
            TypeError: ``fn`` cannot be pickled (a lambda, a closure, a bound method of an
                unpicklable object).
        """
        # Imported here, once per handler: only process mode needs them, not `import work`
        # (pickle alone is ~0.4 MB of every worker's RSS).
        import pickle

        import anyio.to_process

        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"sync_handlers='process' needs a handler that can be pickled (a module-level "
                f"function); {fn!r} cannot: {exc}"
            ) from None

        async def in_process(job: Job) -> Any:
            ctx = job.ctx
            attempt = ctx.attempt if ctx is not None else 1
            result, status = await anyio.to_process.run_sync(
                run_in_child, fn, job.copy(), attempt, cancellable=True
            )
            if ctx is not None and status != Status.UNKNOWN:
                ctx.status = status
            return result

        in_process.__name__ = getattr(fn, "__name__", "handler")
        return in_process
