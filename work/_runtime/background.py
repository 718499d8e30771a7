"""BackgroundWorker: the synchronous twin of Worker, for programs with no event loop."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import anyio
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.job import Job
from .portal import PortalTwin
from .worker import Execution, RecurringHandle, Worker

__all__ = ["BackgroundWorker", "SyncRecurringHandle"]

F = TypeVar("F", bound=Callable[..., Any])


class SyncRecurringHandle:
    """The blocking view of a :class:`RecurringHandle`, usable from any thread."""

    def __init__(self, handle: RecurringHandle, portal: anyio.from_thread.BlockingPortal) -> None:
        self._handle = handle
        self._portal = portal

    @property
    def count(self) -> int:
        """How many executions the loop has started."""
        return self._handle.count

    @property
    def done(self) -> bool:
        """True once the loop has ended and its executions have finished."""
        return self._handle.done

    @property
    def error(self) -> Exception | None:
        """The exception that ended the loop early (a failing source), or None."""
        return self._handle.error

    def cancel(self) -> None:
        """End the loop; executions already started finish."""
        self._portal.call(self._handle.cancel)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the loop has ended and its executions have finished.

        Args:
            timeout: give up after this many seconds (None: wait as long as it takes).

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the loop goes on).
        """

        async def wait() -> None:
            with anyio.fail_after(timeout):
                await self._handle.wait()

        self._portal.call(wait)


class BackgroundWorker:
    """Runs a :class:`Worker` on a background thread, for Flask, Django and scripts.

    ::

        bg = BackgroundWorker(worker)
        with bg:                                   # or bg.start() ... bg.stop()
            execution = bg.perform(Job("resize", {"id": 7}), sync=True)
            future = bg.perform(Job("resize", {"id": 8}))   # concurrent.futures.Future
            future.result(timeout=5)

    Every method may be called from any thread, except the background loop's own (an
    ``async def`` handler of the same worker: anyio raises RuntimeError there). One event
    loop (asyncio by default) runs in one background thread, owned through an anyio blocking
    portal.

    Args:
        worker: the Worker to run (a new one, with no adapters, by default).
        backend: the anyio backend of the background loop ("asyncio" or "trio").

    Raises:
        TypeError: ``worker`` is not a Worker.
        ValueError: an unknown ``backend``.
    """

    def __init__(self, worker: Worker | None = None, *, backend: str = "asyncio") -> None:
        if worker is not None and not isinstance(worker, Worker):
            raise TypeError(f"BackgroundWorker needs a Worker, got {type(worker).__name__}")
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
        self.worker = worker if worker is not None else Worker(name="background")
        self.backend = backend
        self._twin: PortalTwin[Worker] = PortalTwin("this BackgroundWorker", backend)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background loop and the worker in it.

        Raises:
            RuntimeError: already started.
        """
        self._twin.enter(self.worker)

    def stop(self) -> None:
        """Stop the worker gracefully (see ``Worker``: in-flight executions get
        ``shutdown_grace``) and the background loop. No-op when not started."""
        self._twin.exit()

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._twin.entered

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _require_portal(self) -> anyio.from_thread.BlockingPortal:
        return self._twin.portal

    # -- registry ---------------------------------------------------------------------------

    def register(self, name: str, fn: Callable[[Job], Any]) -> None:
        """Register a handler (see :meth:`Worker.register`)."""
        self.worker.register(name, fn)

    def handler(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register` (see :meth:`Worker.handler`)."""
        return self.worker.handler(name)

    # -- perform family ---------------------------------------------------------------------

    @overload
    def perform(self, job: Job, *, sync: Literal[True]) -> Execution: ...

    @overload
    def perform(self, job: Job, *, sync: Literal[False] = False) -> Future[Execution]: ...

    @overload
    def perform(self, job: Job, *, sync: bool) -> Execution | Future[Execution]: ...

    def perform(self, job: Job, *, sync: bool = False) -> Execution | Future[Execution]:
        """Run a copy of ``job``.

        Returns:
            ``sync=True``: the finished :class:`Execution`. Otherwise a
            ``concurrent.futures.Future[Execution]`` that completes when it has finished.

        Raises:
            UnknownHandlerError, TypeError: as :meth:`Worker.perform` (at once, in the caller).
            RuntimeError: not started.
        """
        portal = self._require_portal()
        if sync:
            return portal.call(functools.partial(self.worker.perform, job, sync=True))
        execution: Execution = portal.call(self.worker.perform, job)
        return self._future_of(portal, execution)

    def perform_at(self, job: Job, when: datetime) -> Future[Execution]:
        """Run a copy of ``job`` at ``when`` (aware datetime); a Future of its Execution.

        Raises:
            ValueError: naive ``when``.
        """
        portal = self._require_portal()
        return self._future_of(portal, portal.call(self.worker.perform_at, job, when))

    def perform_in(self, job: Job, delay: float | timedelta) -> Future[Execution]:
        """Run a copy of ``job`` after ``delay``; a Future of its Execution.

        Raises:
            ValueError: a negative delay.
        """
        portal = self._require_portal()
        return self._future_of(portal, portal.call(self.worker.perform_in, job, delay))

    def perform_every(
        self, job: Job, every: float | timedelta | str, *, sync: bool = False
    ) -> SyncRecurringHandle:
        """Run copies of ``job`` on a schedule (see :meth:`Worker.perform_every`)."""
        portal = self._require_portal()
        handle = portal.call(functools.partial(self.worker.perform_every, job, every, sync=sync))
        return SyncRecurringHandle(handle, portal)

    def perform_receive(
        self,
        job: Job,
        source: Iterable[Any],
        *,
        sync: bool = False,
        key: str = "received_data",
    ) -> SyncRecurringHandle:
        """Run one copy of ``job`` per item of a plain iterable, with the item in
        ``args[key]`` (see :meth:`Worker.perform_receive`).

        The iterable is read on a daemon thread of its own, one item ahead at most, so a
        blocking iterator such as ``iter(queue.get, None)`` is fine: the handle finishes when
        it ends. Cancelling the handle or stopping never waits for a blocked ``next()``; an
        item the iterator yields after that is not run. An exception raised by the iterator
        ends the loop and is kept as the handle's ``error``.

        Raises:
            TypeError: ``source`` is not iterable.
            UnknownHandlerError, RuntimeError: as :meth:`Worker.perform_receive`.
        """
        portal = self._require_portal()
        iterator = iter(source)
        send, receive = anyio.create_memory_object_stream[tuple[bool, Any]](0)
        try:
            handle = portal.call(
                functools.partial(
                    self.worker.perform_receive, job, _Received(receive), sync=sync, key=key
                )
            )
        except BaseException:
            send.close()
            receive.close()
            raise
        # The reader blocks in its send until the loop takes the item, or fails once the
        # loop has ended and this closes the receiving end.
        portal.start_task_soon(_close_when_done, handle, receive)
        reader = threading.Thread(
            target=_pump,
            args=(iterator, send, portal),
            name=f"anywork receive {job.handler}",
            daemon=True,  # a reader blocked in next() must never keep the process alive
        )
        reader.start()
        return SyncRecurringHandle(handle, portal)

    @staticmethod
    def _future_of(
        portal: anyio.from_thread.BlockingPortal, execution: Execution
    ) -> Future[Execution]:
        return portal.start_task_soon(execution.wait)

    def __repr__(self) -> str:
        return f"<BackgroundWorker {self.worker!r} running={self.running}>"


class _Received:
    """The async iterator a thread-fed perform_receive loop reads: items, or the
    iterator's error, sent by :func:`_pump`; it ends when the sending end closes."""

    def __init__(self, receive: MemoryObjectReceiveStream[tuple[bool, Any]]) -> None:
        self._receive = receive

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            ok, value = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if not ok:
            raise value
        return value


async def _close_when_done(
    handle: RecurringHandle, receive: MemoryObjectReceiveStream[tuple[bool, Any]]
) -> None:
    try:
        await handle.wait()
    finally:
        receive.close()


def _pump(
    iterator: Iterator[Any],
    send: MemoryObjectSendStream[tuple[bool, Any]],
    portal: anyio.from_thread.BlockingPortal,
) -> None:
    """Feed ``iterator``'s items (then its end, or its error) to a receive loop."""
    try:
        while True:
            try:
                message: tuple[bool, Any] = (True, next(iterator))
            except StopIteration:
                return
            except Exception as exc:
                message = (False, exc)
            try:
                portal.call(send.send, message)
            except Exception:
                return  # the loop has ended (cancelled, worker stopped): stop reading
            if not message[0]:
                return
    finally:
        try:
            portal.call(send.close)
        except Exception:
            # The portal is gone, and its loop with it: nobody waits on this stream.
            send.close()
