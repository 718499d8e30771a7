"""Helpers the built-in adapters share (private)."""

from __future__ import annotations

from work import Ctx, Job

__all__ = ["job_ctx"]


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
