"""Composing adapters (``chain``) and the innermost wrapper that finalises every status."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from .deferred import Deferred
from .exceptions import JobTimeoutError, StatusError, WorkError
from .job import Job
from .status import Status
from .types import Adapter, Handler

__all__ = ["as_async", "chain", "core", "finalise_error", "handler_exit"]


def chain(*adapters: Adapter) -> Adapter:
    """Compose adapters into one: ``chain(a, b, c)(h) == a(b(c(h)))``.

    The first adapter listed is the outermost: it sees the job first and the final status last::

        a ─> b ─> c ─> handler
        a <─ b <─ c <─ (status, result)

    Raises:
        TypeError: an adapter is not callable.
    """
    for i, adapter in enumerate(adapters):
        if not callable(adapter):
            raise TypeError(f"adapter #{i} ({adapter!r}) is not callable")

    def composed(handler: Handler) -> Handler:
        for adapter in reversed(adapters):
            handler = adapter(handler)
        return handler

    return composed


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def as_async(fn: Callable[[Job], Any]) -> Handler:
    """Return ``fn`` as an async handler: a plain ``def`` runs in a worker thread.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"a handler must be callable, got {fn!r}")
    if _is_async_callable(fn):
        return fn

    async def in_thread(job: Job) -> Any:
        result = await anyio.to_thread.run_sync(fn, job)
        # The thread could not be interrupted: a cancellation that arrived while it ran is
        # delivered now (499), as anyio delivers it at the next checkpoint, never dropped.
        await anyio.lowlevel.checkpoint_if_cancelled()
        return result

    in_thread.__name__ = getattr(fn, "__name__", "handler")
    in_thread.__anywork_sync__ = True  # type: ignore[attr-defined]
    return in_thread


def finalise_error(status: Status, exc: BaseException) -> Status:
    """Return the status an execution ends with when ``exc`` escaped with ``status`` set.

    A StatusError gives its own code; any other exception gives 500 unless a non-2xx status
    was already set (a handler that set 503 and then raised keeps 503).
    """
    if isinstance(exc, StatusError):
        return exc.status
    if status is Status.UNKNOWN or status.is_success:
        return Status.INTERNAL_ERROR
    return status


def handler_exit(exc: SystemExit) -> WorkError:
    """The error an execution records when its handler (or an adapter) raised SystemExit."""
    return WorkError(f"the handler raised SystemExit({exc.code!r}); the worker goes on")


def core(handler: Handler) -> Handler:
    """Wrap ``handler`` so that every adapter around it sees the final status.

    - returns without a status: 200;
    - raises StatusError: its status (the exception propagates);
    - raises anything else: 500 unless a non-2xx status was set (the exception propagates);
    - outlives ``job.timeout``: 408 and JobTimeoutError (the timeout covers the handler only);
    - raises SystemExit: 500, re-raised as a :class:`WorkError` (the worker goes on);
    - cancelled: 499, and the cancellation is always re-raised (KeyboardInterrupt too).

    A sync handler (see :func:`as_async`) cannot be interrupted: it is waited for, and reported
    as 408 if it returns after its deadline, or 499 if the execution was cancelled meanwhile
    (its return value is dropped).
    """

    async def run(job: Job) -> Any:
        ctx = job.ctx
        assert ctx is not None, "core() runs only inside an execution (job.ctx is set)"
        try:
            if job.timeout is None:
                result = await handler(job)
            else:
                deadline = anyio.current_time() + job.timeout
                ctx.deadline = deadline
                with anyio.CancelScope(deadline=deadline) as scope:
                    result = await handler(job)
                # A thread cannot be interrupted: its late return counts as a timeout too.
                if scope.cancelled_caught or anyio.current_time() >= deadline:
                    raise JobTimeoutError(job.timeout, job)
        except Exception as exc:
            ctx.status = finalise_error(ctx.status, exc)
            raise
        except SystemExit as exc:
            # sys.exit() in a handler is a bad job, not an order to stop the worker: a 500 that
            # every adapter sees as an ordinary error.
            ctx.status = Status.INTERNAL_ERROR
            raise handler_exit(exc) from exc
        except BaseException:
            # Cancellation (a stop, Execution.cancel()) or KeyboardInterrupt: recorded, never
            # swallowed.
            ctx.status = Status.CANCELLED
            raise
        if ctx.status is Status.UNKNOWN:
            # A Deferred says "accepted, finished later": 202, still a success.
            ctx.status = Status.ACCEPTED if isinstance(result, Deferred) else Status.SUCCESS
        return result

    run.__name__ = getattr(handler, "__name__", "handler")
    return run
