"""``Deferred``: what a handler returns to end its execution now and let the job finish later."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Deferred"]


class Deferred:
    """Return this from a handler to say "accepted: someone else will finish this job".

    The execution ends 202 (``Status.ACCEPTED``, a success). In process (``perform``) that is
    all. Under ``serve`` the job's record goes to ``JobState.WAITING`` with ``result`` as a
    provisional result and a deadline ``ttl`` seconds ahead, and the worker slot is freed; then
    ``Queue.complete`` finishes the job, ``Queue.heartbeat`` pushes the deadline, and a deadline
    that passes fails it with 504 "no callback within ttl" (retried by the job's RetryPolicy)::

        async def start_export(job: Job) -> Deferred:
            ref = await batch_system.submit(job.args, notify=job.id)
            return Deferred(ttl=3600, result={"ref": ref})

    Args:
        ttl: seconds to wait for ``complete`` (or the next ``heartbeat``); > 0.
        result: a provisional value kept while WAITING (JSON), e.g. an external reference.

    Raises:
        ValueError: ``ttl`` is not a finite number > 0.
    """

    __slots__ = ("result", "ttl")

    def __init__(self, ttl: float, result: Any = None) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ValueError(f"Deferred ttl must be a number of seconds > 0, got {ttl!r}")
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"Deferred ttl must be a number of seconds > 0, got {ttl!r}")
        self.ttl = float(ttl)
        self.result = result

    def __repr__(self) -> str:
        return f"Deferred(ttl={self.ttl:g}, result={self.result!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Deferred):
            return NotImplemented
        return self.ttl == other.ttl and self.result == other.result

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value
