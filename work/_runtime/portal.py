"""The blocking-portal lifecycle every synchronous twin shares (BackgroundWorker, ConcurrentJob,
SyncQueue), as APScheduler 4's ``sync.py`` does it."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["PortalTwin"]

T = TypeVar("T")
R = TypeVar("R")


class PortalTwin(Generic[T]):
    """An async context manager run on an event loop in a background thread, for sync code.

    :meth:`enter` starts a blocking portal (anyio's ``start_blocking_portal``: one event loop
    in one thread) and enters the async context manager there
    (``portal.wrap_async_context_manager``); :meth:`call` forwards one call with
    ``portal.call``; :meth:`exit` leaves the context manager, then stops the loop and joins
    its thread. Thread-safe: enter and exit may race from several threads.

    Args:
        name: what the messages call the twin (``"this BackgroundWorker"``).
        backend: the anyio backend of the background loop ("asyncio" or "trio").
    """

    def __init__(self, name: str, backend: str = "asyncio") -> None:
        self.name = name
        self.backend = backend
        self._lock = threading.Lock()
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._inner: AbstractContextManager[T] | None = None

    @property
    def entered(self) -> bool:
        """True between :meth:`enter` and :meth:`exit`."""
        return self._portal is not None

    @property
    def portal(self) -> BlockingPortal:
        """The running portal.

        Raises:
            RuntimeError: not entered.
        """
        portal = self._portal
        if portal is None:
            raise RuntimeError(f"{self.name} is not running: call start() first")
        return portal

    def enter(self, cm: AbstractAsyncContextManager[T]) -> T:
        """Start the background loop and enter ``cm`` in it; return what ``cm`` gives.

        Raises:
            RuntimeError: already entered.
            BaseException: what entering ``cm`` raised (the loop is stopped again first).
        """
        with self._lock:
            if self._portal is not None:
                raise RuntimeError(f"{self.name} is already started")
            portal_cm = start_blocking_portal(self.backend)
            portal = portal_cm.__enter__()
            try:
                inner = portal.wrap_async_context_manager(cm)
                value = inner.__enter__()
            except BaseException:
                portal_cm.__exit__(*sys.exc_info())
                raise
            self._portal_cm, self._portal, self._inner = portal_cm, portal, inner
            return value

    def exit(self) -> None:
        """Leave the context manager, then stop the loop and join its thread (both even if
        leaving raised, which then propagates). A no-op when not entered."""
        with self._lock:
            portal_cm, inner = self._portal_cm, self._inner
            self._portal_cm = self._portal = self._inner = None
        if portal_cm is None or inner is None:
            return
        try:
            inner.__exit__(None, None, None)
        finally:
            portal_cm.__exit__(None, None, None)

    def call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Await ``fn(*args, **kwargs)`` on the background loop and return its result.

        Raises:
            RuntimeError: not entered.
        """
        portal = self.portal
        return portal.call(functools.partial(fn, *args, **kwargs))
