"""ConcurrentJob: looping pollers that ramp up to a maximum (and, adaptively, back down)."""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any, NoReturn, Self

import anyio
import anyio.from_thread
from anyio.abc import ObjectReceiveStream

from .._core.exceptions import UnknownHandlerError
from .._core.job import Job
from .._core.status import Status
from .portal import PortalTwin
from .timers import seconds
from .worker import Worker

__all__ = ["ConcurrentJob", "PerformWith"]

# Statuses that say "nothing to do here right now": an adaptive poller backs off on them.
_IDLE_STATUSES = frozenset({Status.NO_RESPONSE, Status.TOO_MANY_REQUESTS, Status.UNAVAILABLE})
# The shortest adaptive back-off base, for start_interval == 0 and no perform_every.
_MIN_BACKOFF = 0.001
# "No item received" (None is a valid item).
_NOTHING: Any = object()


class PerformWith(enum.Enum):
    """How each poller of a ConcurrentJob performs its job."""

    ONCE = "once"
    """Each poller performs the job once and ends (and is replaced)."""
    EVERY = "every"
    """Each poller performs the job every ``perform_every``, never overlapping itself."""
    RECEIVE = "receive"
    """Pollers share ``source``: one execution per item; they end when it is exhausted."""


class ConcurrentJob:
    """Runs one job on several looping pollers, ramping up to ``max_workers``.

    One poller starts at once and one more every ``start_interval`` until ``max_workers``
    run; a poller that ends is replaced (except once a RECEIVE source is exhausted), also at
    most one per ``start_interval``. Each execution sees its poller's number in
    ``ctx["worker_number"]`` (1-based, the lowest number free when the poller starts).

    With ``adaptive=True`` (ONCE and EVERY) the pool follows the work. ``min_workers``
    pollers ramp up as usual; beyond them, one more starts (at most one per
    ``start_interval``) only while the pool's latest outcome is a 2xx. Each poller loops:
    after a 2xx (or any status other than 444, 429, 503) it goes on at once (ONCE) or after
    ``perform_every`` (EVERY). After the n-th 444 (nothing to do), 429 or 503 in a row it
    retires if n >= ``retire_after`` and more than ``min_workers`` pollers run, otherwise it
    pauses ``min(backoff_cap, max(start_interval, perform_every or 0, 0.001) * 2 ** (n - 1))``
    seconds. A retired poller is not replaced until demand shows again. With RECEIVE,
    ``adaptive`` only gates growth on 2xx; pollers wait on the source and never retire.

    Stopping (:meth:`stop`, leaving ``async with``) starts no new execution, interrupts
    pauses and waits for items, and lets running executions finish within the worker's
    ``shutdown_grace`` before cancelling them (499).

    Args:
        job: the job each poller performs (copied per execution).
        perform_with: ONCE, EVERY or RECEIVE.
        perform_every: the interval for EVERY (seconds, timedelta).
        max_workers: the most pollers at once (>= 1).
        start_interval: seconds between starting pollers (>= 0).
        source: the anyio receive stream or async iterable for RECEIVE.
        key: the args key each RECEIVE item lands in.
        worker: the Worker to run on: started (and stopped after) if it is not running,
            used as it is if it is; a new one by default.
        min_workers: adaptive mode retires pollers down to this many (1..max_workers).
        adaptive: grow on 2xx, back off and retire on 444/429/503.
        backoff_cap: the longest adaptive back-off pause, in seconds (>= 0).
        retire_after: idle outcomes in a row after which an adaptive poller retires (>= 1).

    Raises:
        ValueError: max_workers < 1, EVERY without perform_every (or one <= 0), RECEIVE
            without source, a negative start_interval or backoff_cap, min_workers outside
            1..max_workers, retire_after < 1, an empty key.
        TypeError: a value of the wrong type (a job that is not a Job, max_workers that is
            not an int, a source that is not async-iterable, ...).
    """

    def __init__(
        self,
        job: Job,
        *,
        perform_with: PerformWith = PerformWith.EVERY,
        perform_every: float | timedelta | None = None,
        max_workers: int,
        start_interval: float,
        source: AsyncIterable[Any] | None = None,
        key: str = "received_data",
        worker: Worker | None = None,
        min_workers: int = 1,
        adaptive: bool = False,
        backoff_cap: float = 30.0,
        retire_after: int = 3,
    ) -> None:
        if not isinstance(job, Job):
            raise TypeError(f"ConcurrentJob needs a Job, got {type(job).__name__}")
        if not isinstance(perform_with, PerformWith):
            raise TypeError(f"perform_with must be a PerformWith, got {perform_with!r}")
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, got {max_workers!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers!r}")
        if isinstance(min_workers, bool) or not isinstance(min_workers, int):
            raise TypeError(f"min_workers must be an int, got {min_workers!r}")
        if not 1 <= min_workers <= max_workers:
            raise ValueError(
                f"min_workers must be in 1..max_workers ({max_workers}), got {min_workers!r}"
            )
        interval = seconds(start_interval, name="start_interval")
        if interval < 0:
            raise ValueError(f"start_interval must be >= 0, got {start_interval!r}")
        every: float | None = None
        if perform_with is PerformWith.EVERY:
            if perform_every is None:
                raise ValueError("PerformWith.EVERY needs perform_every (seconds or a timedelta)")
            every = seconds(perform_every, name="perform_every")
            if not every > 0:
                raise ValueError(f"perform_every must be > 0, got {perform_every!r}")
        if perform_with is PerformWith.RECEIVE:
            if source is None:
                raise ValueError("PerformWith.RECEIVE needs a source (a receive stream)")
            if not hasattr(source, "__aiter__"):
                raise TypeError(f"source must be an async iterable, got {source!r}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str, got {key!r}")
        if worker is not None and not isinstance(worker, Worker):
            raise TypeError(f"worker must be a Worker, got {type(worker).__name__}")
        cap = seconds(backoff_cap, name="backoff_cap")
        if cap < 0:
            raise ValueError(f"backoff_cap must be >= 0, got {backoff_cap!r}")
        if isinstance(retire_after, bool) or not isinstance(retire_after, int):
            raise TypeError(f"retire_after must be an int, got {retire_after!r}")
        if retire_after < 1:
            raise ValueError(f"retire_after must be >= 1, got {retire_after!r}")
        self.job = job
        self.perform_with = perform_with
        self.perform_every = every
        self.max_workers = max_workers
        self.min_workers = min_workers
        self.start_interval = interval
        self.source = source
        self.key = key
        self.worker = worker if worker is not None else Worker(name="concurrent-job")
        self.adaptive = adaptive
        self.backoff_cap = cap
        self.retire_after = retire_after
        self._numbers: set[int] = set()
        self._stop: anyio.Event | None = None
        self._active = False
        self._loop_thread: int | None = None
        self._exhausted = False
        self._demand = False
        self._source_iter: AsyncIterator[Any] | None = None
        self._source_lock: anyio.Lock | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._runner: anyio.abc.TaskGroup | None = None
        self._twin: PortalTwin[ConcurrentJob] | None = None
        self._thread_lock = threading.Lock()
        self._changed = anyio.Event()

    def register(self, name: str, fn: Callable[[Job], Any]) -> None:
        """Register a handler on the underlying worker (see :meth:`Worker.register`)."""
        self.worker.register(name, fn)

    @property
    def running_workers(self) -> int:
        """How many pollers are running now."""
        return len(self._numbers)

    # -- async use --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the pollers until :meth:`stop` (or cancellation); for RECEIVE, until the
        source is exhausted and every poller has ended.

        Starts the worker first if it is not running (and stops it again at the end); a
        worker that is already running is used as it is and left running.

        Raises:
            UnknownHandlerError: the worker has no handler for the job.
            RuntimeError: this ConcurrentJob is already running.
        """
        await self._run()

    async def _run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._active:
            raise RuntimeError(f"{self!r} is already running")
        if self.job.handler not in self.worker.handlers:
            # Said once, here, rather than by every poller's first perform.
            raise UnknownHandlerError(self.job.handler, list(self.worker.handlers))
        self._active = True
        self._stop = anyio.Event()
        self._exhausted = False
        self._demand = False
        self._loop_thread = threading.get_ident()
        try:
            async with AsyncExitStack() as stack:
                if not self.worker.running:
                    await stack.enter_async_context(self.worker)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._supervise, tg)
                        task_status.started()
                except BaseExceptionGroup as group:
                    _raise_single(group)
        finally:
            self._active = False
            self._loop_thread = None

    async def __aenter__(self) -> Self:
        if self._active:
            raise RuntimeError(f"{self!r} is already running")
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            # Returns once the worker runs and the supervisor is started.
            await tg.start(self._run)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        self._runner = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._request_stop()
        stack, self._exit_stack = self._exit_stack, None
        self._runner = None
        assert stack is not None
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            _raise_single(group)

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._changed.set()

    # -- sync use ---------------------------------------------------------------------------

    def start(self, *, backend: str = "asyncio") -> None:
        """Run the ConcurrentJob on a background thread (for code with no event loop).

        Returns once its worker runs and the first poller is on its way. Give it no
        ``worker``, or one that is not running: a worker already running in another event
        loop cannot be driven from this one.

        Args:
            backend: the anyio backend of the background loop ("asyncio" or "trio").

        Raises:
            RuntimeError: it is already started (or running in an event loop).
        """
        with self._thread_lock:
            if self._twin is not None or self._active:
                raise RuntimeError(f"{self!r} is already started")
            twin: PortalTwin[ConcurrentJob] = PortalTwin(repr(self), backend)
            twin.enter(self)  # `async with self` on the background loop
            self._twin = twin

    def stop(self) -> None:
        """Stop the pollers: they start no new execution, running ones finish (within the
        worker's ``shutdown_grace``, then they are cancelled).

        After :meth:`start`, this blocks until everything has ended and the background
        thread is gone, and re-raises an error that ended the run. Called while
        :meth:`run` (or ``async with``) runs in an event loop, from that loop or from one of
        its worker threads (a sync handler), it asks :meth:`run` to return and returns at
        once. A no-op when not running.
        """
        with self._thread_lock:
            twin, self._twin = self._twin, None
        if twin is None:
            loop_thread = self._loop_thread
            if loop_thread is None:
                return
            if threading.get_ident() == loop_thread:
                self._request_stop()
            else:
                # anyio.Event is not thread-safe: set it from the loop's own thread.
                anyio.from_thread.run_sync(self._request_stop)
            return
        twin.exit()  # leaving `async with self` asks the pollers to stop and waits for them

    # -- the pollers ------------------------------------------------------------------------

    async def _supervise(self, tg: anyio.abc.TaskGroup) -> None:
        assert self._stop is not None
        stop = self._stop
        self._changed = anyio.Event()
        if self.perform_with is PerformWith.RECEIVE:
            assert self.source is not None
            self._source_iter = aiter(self.source)
            self._source_lock = anyio.Lock()
        while not stop.is_set():
            if self._exhausted and not self._numbers:
                break
            can_grow = (
                not self._exhausted
                and self.running_workers < self.max_workers
                and (not self.adaptive or self._demand or self.running_workers < self.min_workers)
            )
            if can_grow:
                self._demand = False
                self._start_poller(tg)
                # The ramp: one more poller per start_interval at most.
                with anyio.move_on_after(self.start_interval):
                    await stop.wait()
                continue
            # Full (or, adaptively, no demand yet): wait for a poller to end, for demand to
            # show up (adaptive: checked every start_interval), or for a stop.
            timeout = max(self.start_interval, 0.01) if self.adaptive else math.inf
            with anyio.move_on_after(timeout):
                await self._wait_changed()
        # Stopping: pollers start nothing new; give running executions the worker's grace.
        with anyio.move_on_after(self.worker.shutdown_grace):
            while self._numbers:
                await self._wait_changed()
        tg.cancel_scope.cancel()

    async def _wait_changed(self) -> None:
        """Wait until a poller ends or a stop is asked for (both set ``_changed``).

        Callers check the state they wait on right before calling, with no await in
        between, so an event set before the reset below has already been seen.
        """
        if self._changed.is_set():
            self._changed = anyio.Event()
        await self._changed.wait()

    def _start_poller(self, tg: anyio.abc.TaskGroup) -> None:
        number = next(n for n in range(1, self.max_workers + 2) if n not in self._numbers)
        self._numbers.add(number)
        tg.start_soon(self._poller, number, name=f"poller {number}")

    async def _wait_or_stop(self, delay: float) -> bool:
        """Pause ``delay`` seconds; True if a stop was asked for meanwhile."""
        assert self._stop is not None
        if delay > 0:
            with anyio.move_on_after(delay):
                await self._stop.wait()
        return self._stop.is_set()

    async def _poller(self, number: int) -> None:
        try:
            if self.perform_with is PerformWith.RECEIVE:
                await self._receive(number)
            elif self.adaptive:
                await self._adaptive_loop(number)
            elif self.perform_with is PerformWith.ONCE:
                await self._perform(number)
            else:
                await self._every(number)
        finally:
            self._numbers.discard(number)
            self._changed.set()

    async def _perform(self, number: int, args: dict[str, Any] | None = None) -> Status:
        if not self.worker.running:
            # The worker was stopped under us (a worker given already running): end the run
            # as its own loops end, instead of failing on perform.
            self._request_stop()
            return Status.CANCELLED
        job = self.job
        if args is not None:
            job = job.copy()
            job.args.update(args)
        execution = await self.worker.perform(job, sync=True, values={"worker_number": number})
        status = execution.status
        # Demand is the latest news: a success asks for one more poller, "nothing to do"
        # takes the request back (so a pool that has just shrunk does not grow again).
        if status.is_success:
            self._demand = True
        elif status in _IDLE_STATUSES:
            self._demand = False
        return status

    async def _every(self, number: int) -> None:
        assert self.perform_every is not None and self._stop is not None
        start = anyio.current_time()
        every = self.perform_every
        while not self._stop.is_set():
            await self._perform(number)
            # Fixed grid from this poller's start: a tick that falls during an execution is
            # skipped, and the schedule never drifts.
            now = anyio.current_time()
            nxt = start + (math.floor((now - start) / every) + 1) * every
            if await self._wait_or_stop(nxt - now):
                return

    async def _adaptive_loop(self, number: int) -> None:
        idle = 0
        pace = self.perform_every or 0.0
        while True:
            status = await self._perform(number)
            if status in _IDLE_STATUSES:
                idle += 1
                if idle >= self.retire_after and self.running_workers > self.min_workers:
                    return  # retire: there is not enough work for this many pollers
                # The exponent is capped so a poller idle for days cannot overflow a float.
                base = max(self.start_interval, pace, _MIN_BACKOFF)
                pause = min(self.backoff_cap, base * 2.0 ** min(idle - 1, 64))
            else:
                idle = 0
                pause = pace
            if await self._wait_or_stop(pause):
                return

    async def _receive(self, number: int) -> None:
        assert self._source_iter is not None and self._source_lock is not None
        assert self._stop is not None
        stream = self.source if isinstance(self.source, ObjectReceiveStream) else None
        while not self._stop.is_set():
            item: Any = _NOTHING
            # Stop interrupts the wait for an item, never a running execution.
            async with anyio.create_task_group() as waiter:
                waiter.start_soon(self._cancel_on_stop, waiter.cancel_scope)
                try:
                    if stream is not None:
                        item = await stream.receive()
                    else:
                        async with self._source_lock:
                            item = await anext(self._source_iter)
                except (StopAsyncIteration, anyio.EndOfStream, anyio.ClosedResourceError):
                    self._exhausted = True
                    self._changed.set()
                    return
                finally:
                    waiter.cancel_scope.cancel()
            if item is _NOTHING:
                return  # stopped while waiting for an item
            # An item received is always performed, even if a stop came meanwhile: it has
            # left the source and would otherwise be lost.
            await self._perform(number, {self.key: item})

    async def _cancel_on_stop(self, scope: anyio.CancelScope) -> None:
        assert self._stop is not None
        await self._stop.wait()
        scope.cancel()

    def __repr__(self) -> str:
        return (
            f"<ConcurrentJob {self.job.handler!r} {self.perform_with.name} "
            f"running={self.running_workers}/{self.max_workers}"
            f"{' adaptive' if self.adaptive else ''}>"
        )


def _raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise ``group``, or its only exception as itself (one failure, such as a source that
    raised, surfaces as that exception rather than as a group of one)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if error is group:
        raise group
    raise error from None
