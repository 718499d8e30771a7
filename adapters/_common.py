"""Helpers the built-in adapters share (private)."""

from __future__ import annotations

from work import Ctx, Job, Status
from work._core.chain import finalise_error

__all__ = ["finalise_error", "job_ctx", "settle"]


def job_ctx(job: Job) -> Ctx:
    """Return ``job.ctx``, which every adapter needs.

    Args:
        job: a job being executed (the Worker gives it a fresh Ctx).

    Returns:
        The Ctx of the execution.

    Raises:
        RuntimeError: the job has no Ctx, i.e. it is not being executed by a Worker.
    """
    ctx = job.ctx
    if ctx is None:
        raise RuntimeError(
            f"{job!r} has no ctx: adapters run inside a Worker (or set job.ctx = Ctx(job.id))"
        )
    return ctx


def settle(ctx: Ctx, error: Exception | None, returned: bool) -> Status:
    """Return (and store in ``ctx.status``) the status the execution ends with, as seen here.

    The core wrapper has normally set it already. But an adapter listed inside this one
    may have raised (``limit``'s RetryLater) or been cancelled while waiting, past the core:
    the Worker settles those only around the whole chain, after every adapter is done, so an
    adapter that records outcomes applies the same rules itself.

    Args:
        ctx: the execution's Ctx.
        error: the exception that escaped the inner chain, if any.
        returned: True when the inner chain returned; False with no error means cancelled.

    Returns:
        The final status.
    """
    status = ctx.status
    if returned:
        if status is not Status.UNKNOWN:
            return status
        final = Status.SUCCESS
    elif error is not None:
        final = finalise_error(status, error)
    else:
        final = Status.CANCELLED
    if final is not status:
        ctx.status = final
    return final
