"""The Handler and Adapter type aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from .job import Job

__all__ = ["Adapter", "Handler", "SyncHandler"]

Handler: TypeAlias = Callable[[Job], Awaitable[Any]]
"""An async function that does the work of a job: ``async def h(job: Job) -> Any``.

It reads ``job.args``, may set ``job.ctx.status`` and returns a result (kept on the Execution).
"""

SyncHandler: TypeAlias = Callable[[Job], Any]
"""A plain ``def h(job: Job) -> Any``; accepted when registering, run in a worker thread."""

Adapter: TypeAlias = Callable[[Handler], Handler]
"""Middleware: takes a handler and returns one that wraps it (``chain(a, b)(h) == a(b(h))``)."""
