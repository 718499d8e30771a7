"""Composing adapters (``chain``) and the settle step that owns the status rules."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio

from .deferred import Deferred
from .exceptions import JobTimeoutError, StatusError, WorkError
from .job import Job
from .status import Status
from .types import Adapter, Handler

__all__ = [
    "chain",
    "compose",
    "handler_exit",
    "is_async_callable",
    "settled",
    "status_of_error",
]


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


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for an ``async def`` function, a ``functools.partial`` of one, or an object whose
    ``__call__`` is ``async def``: handlers that are awaited rather than run in a thread."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def status_of_error(status: Status, exc: BaseException) -> Status:
    """Return the status an execution ends with when ``exc`` escaped with ``status`` set.

    A StatusError with an error code (4xx, 5xx) gives its own code. Any other exception, and a
    StatusError whose code is not an error (1xx, 2xx, 3xx: raising says the execution failed,
    so a "raised success" is a bug in the handler), gives 500 unless an error status was
    already set (a handler that set 503 and then raised keeps 503).
    """
    if isinstance(exc, StatusError) and exc.status.is_error:
        return exc.status
    if status.is_error:
        return status
    return Status.INTERNAL_ERROR


def handler_exit(exc: SystemExit) -> WorkError:
    """The error an execution records when its handler (or an adapter) raised SystemExit."""
    return WorkError(f"the handler raised SystemExit({exc.code!r}); the worker goes on")


def settled(handler: Handler, *, timed: bool = False) -> Handler:
    """Wrap ``handler`` (an adapter's output, or the handler) so ``ctx.status`` is final after it.

    The Worker puts this step around the handler and around every adapter, as Starlette's
    ``ExceptionMiddleware`` turns errors into responses: whatever the inner part does, an
    adapter that awaited it reads a final ``job.ctx.status`` and needs no rules of its own.

    - returns without a status: 200 (a status set by the handler is kept);
    - raises: :func:`status_of_error` (the exception propagates);
    - raises SystemExit: 500, re-raised as a :class:`WorkError` (the worker goes on);
    - cancelled (or KeyboardInterrupt): 499, and it is always re-raised;
    - with ``timed`` (the step around the handler itself), outlives ``job.timeout``: 408 and
      :class:`JobTimeoutError` (the timeout covers the handler only, not the adapters). A sync
      handler (run in a thread) that returns after its deadline is a timeout too, and its
      return value is dropped.
    """

    async def settle(job: Job) -> Any:
        ctx = job.ctx
        assert ctx is not None, "settled() runs only inside an execution (job.ctx is set)"
        try:
            timeout = job.timeout
            if timeout is None or not timed:
                result = await handler(job)
            else:
                deadline = anyio.current_time() + timeout
                ctx.deadline = deadline
                with anyio.CancelScope(deadline=deadline) as scope:
                    result = await handler(job)
                # A thread cannot be interrupted: its late return counts as a timeout too.
                if scope.cancelled_caught or anyio.current_time() >= deadline:
                    raise JobTimeoutError(timeout, job)
        except Exception as exc:
            ctx.status = status_of_error(ctx.status, exc)
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

    settle.__name__ = getattr(handler, "__name__", "handler")
    return settle


def compose(adapters: tuple[Adapter, ...], handler: Handler) -> Handler:
    """The Worker's chain: ``adapters`` around ``handler``, with a settle step between each.

    ``compose((a, b), h) == settled(a(settled(b(settled(h, timed=True)))))``: every adapter
    reads a final status after awaiting the inner part, and the outermost one's errors are
    settled too.
    """
    handler = settled(handler, timed=True)
    for adapter in reversed(adapters):
        handler = settled(adapter(handler))
    return handler
