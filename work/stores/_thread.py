"""A thread of a store's own that runs its blocking driver calls for asyncio callers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["CallThread"]

_T = TypeVar("_T")


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    # A future cancelled by asyncio itself (not through anyio's shield) takes no result.
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class CallThread:
    """One worker thread, started on first use, that runs calls handed to it in order.

    ``anyio.to_thread.run_sync`` costs about twice the CPU of a bare hand-off (its
    checkpoint, which also waits a turn of the event loop, the capacity limiter, picking and
    pruning idle workers): for a store whose calls are serialised on one connection anyway,
    a thread of its own and a queue do the same job. Semantics are ``run_sync``'s: a
    cancelled caller does not start a call, a started call runs to its end and the caller
    waits for it (shielded), the caller's context variables are seen by the call.

    Only for asyncio (a future resolved with ``call_soon_threadsafe``); :meth:`run` falls
    back to ``anyio.to_thread.run_sync`` on any other event loop (trio).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0  # the process that started the thread (a forked child has none)
        self._lock = threading.Lock()

    @staticmethod
    def _serve(calls: queue.SimpleQueue[Any]) -> None:
        while (item := calls.get()) is not None:
            context, fn, loop, future = item
            try:
                value = context.run(fn)
                ok = True
            except BaseException as exc:  # handed to the caller, as run_sync does
                value, ok = exc, False
            # RuntimeError: the caller's loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, ok, value)
            del item, value, fn, future  # keep no reference to a result or an exception

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                # A queue per thread: calls handed to a stopped thread are still its own.
                calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
                self._calls = calls
                self._thread = threading.Thread(
                    target=self._serve, args=(calls,), name=self._name, daemon=True
                )
                self._thread.start()
                self._pid = os.getpid()

    async def run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in the thread and return its result (or raise its exception).

        Raises:
            anyio.get_cancelled_exc_class(): the caller was cancelled before the call
                started (a started call is waited for).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: anyio's worker threads
            return await anyio.to_thread.run_sync(fn)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._thread is None or self._pid != os.getpid():
            self._start()
        future: asyncio.Future[_T] = loop.create_future()
        self._calls.put((contextvars.copy_context(), fn, loop, future))
        with anyio.CancelScope(shield=True):
            value = await future
        return value

    def stop(self) -> None:
        """Let the thread end once the calls handed to it so far are done (it starts again
        on the next :meth:`run`)."""
        with self._lock:
            if self._thread is not None:
                self._calls.put(None)
                self._thread = None
