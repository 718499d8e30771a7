"""The Handler and Adapter type aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from .job import Job

__all__ = ["Adapter", "Handler"]

Handler: TypeAlias = Callable[[Job], Awaitable[Any]]
"""An async function that does the work of a job: ``async def h(job: Job) -> Any``.

It reads ``job.args``, may set ``job.ctx.status`` and returns a result (kept on the Execution).
A plain ``def h(job: Job) -> Any`` is accepted when registering and runs in a worker thread.
"""

Adapter: TypeAlias = Callable[[Handler], Handler]
"""Middleware: takes a handler and returns one that wraps it (``chain(a, b)(h) == a(b(h))``)."""
