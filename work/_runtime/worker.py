"""The Worker: runs jobs through their handler chains, now, later, on a schedule or per item."""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .._core.chain import compose, is_async_callable
from .._core.clock import SYSTEM, Clock
from .._core.exceptions import StatusError, UnknownHandlerError
from .._core.job import Ctx, Job
from .._core.status import Status
from .._core.types import Adapter, Handler
from .sync_handlers import ProcessRunner, SyncMode, ThreadRunner
from .timers import CronSchedule, IntervalSchedule, TimerHeap, parse_every, seconds

if TYPE_CHECKING:
    from ..stores._base import Store

__all__ = ["Execution", "RecurringHandle", "Worker"]

F = TypeVar("F", bound=Callable[..., Any])

# Phases of an Execution.
_SCHEDULED, _ADMITTED, _RUNNING, _DONE = range(4)

# At most this many runner tasks are spawned and not yet running at any time. Runners are
# spawned only as jobs turn out to wait: a burst of jobs that end without waiting is run back to
# back by one runner (plus one spare), while a burst of long jobs doubles its runners each
# event-loop turn (one more per runner already held up in a job), so all start within a few turns.
_MAX_STARTING = 32
# A runner yields to the event loop after this many back-to-back executions, so a burst of
# jobs that never await anything cannot starve other tasks.
_YIELD_EVERY = 64

_log = logging.getLogger("anywork.worker")


class Execution:
    """One execution of a job: its outcome once ``done``.

    Attributes:
        job: the copy of the job being executed (``job.ctx is ctx``).
        ctx: the execution's Ctx.
        result: what the handler returned (None until it has, or if it failed).
        error: the exception that ended it, or None.
    """

    __slots__ = (
        "_callbacks",
        "_event",
        "_handler",
        "_holds_slot",
        "_phase",
        "_scope",
        "_worker",
        "ctx",
        "error",
        "job",
        "result",
    )

    def __init__(self, worker: Worker, job: Job, ctx: Ctx, handler: Handler) -> None:
        self.job = job
        self.ctx = ctx
        self.result: Any = None
        self.error: BaseException | None = None
        self._worker = worker
        self._handler = handler
        self._phase = _SCHEDULED
        self._holds_slot = False
        self._scope: anyio.CancelScope | None = None
        self._event: anyio.Event | None = None
        self._callbacks: list[Callable[[Execution], None]] | None = None

    @property
    def status(self) -> Status:
        """The execution's status (UNKNOWN until it ends, then final)."""
        return self.ctx.status

    @property
    def done(self) -> bool:
        """True once the execution has ended (whatever its status)."""
        return self._phase == _DONE

    async def wait(self) -> Execution:
        """Wait until the execution has ended and return it."""
        if self._phase != _DONE:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        return self

    def cancel(self) -> None:
        """Cancel the execution: a running one is cancelled (499, the handler sees the
        cancellation), one not started yet ends as 499 without running. No-op once done."""
        if self._phase == _DONE:
            return
        if self._phase == _RUNNING:
            if self._scope is not None:
                self._scope.cancel()
            return
        self.ctx.status = Status.CANCELLED
        self._worker._finish(self)

    def raise_for_status(self) -> Execution:
        """Return the execution if its status is 2xx; otherwise raise.

        Raises:
            BaseException: the stored error, if any.
            StatusError: with the execution's status, when no error was stored.
            RuntimeError: the execution has not ended yet.
        """
        if self._phase != _DONE:
            raise RuntimeError(f"execution of {self.job!r} has not finished yet")
        if self.ctx.status.is_success:
            return self
        if self.error is not None:
            raise self.error
        raise StatusError(self.ctx.status)

    def _add_done_callback(self, fn: Callable[[Execution], None]) -> None:
        if self._phase == _DONE:
            fn(self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def __repr__(self) -> str:
        state = ("scheduled", "admitted", "running", "done")[self._phase]
        return (
            f"<Execution {self.job.handler!r} job_id={self.job.id!r} {state} "
            f"status={int(self.status)}>"
        )


class RecurringHandle:
    """The handle of a ``perform_every`` / ``perform_receive`` loop.

    Attributes:
        count: how many executions the loop has started.
        error: the exception that ended the loop early (a failing source), or None.
    """

    def __init__(self, description: str) -> None:
        self.count = 0
        self.error: Exception | None = None
        self.description = description
        self._scope = anyio.CancelScope()
        self._loop_done = False
        self._outstanding = 0
        self._event = anyio.Event()

    @property
    def done(self) -> bool:
        """True once the loop has ended and every execution it started has finished."""
        return self._loop_done and self._outstanding == 0

    def cancel(self) -> None:
        """End the loop; executions it already started go on to finish."""
        self._scope.cancel()

    async def wait(self) -> None:
        """Wait until the loop has ended and the executions it started have finished."""
        if not self.done:
            await self._event.wait()

    def _started(self, execution: Execution) -> None:
        self.count += 1
        self._outstanding += 1
        execution._add_done_callback(self._execution_done)

    def _execution_done(self, execution: Execution) -> None:
        self._outstanding -= 1
        if self.done:
            self._event.set()

    def _end_loop(self) -> None:
        self._loop_done = True
        if self.done:
            self._event.set()

    def __repr__(self) -> str:
        return f"<RecurringHandle {self.description} count={self.count} done={self.done}>"


class Worker:
    """Runs jobs through their handler chains: now, later, on a schedule, or per item.

    ::

        async with Worker(adapters=[logging, metrics]) as worker:
            worker.register("send_email", send_email)
            execution = await worker.perform(Job("send_email", {"to": "a@b.c"}), sync=True)

    Args:
        adapters: middleware around every handler; the first listed is the outermost.
        max_concurrency: at most this many executions at once (None: no limit).
        name: a label for logs and metrics (default ``worker-<n>``).
        shutdown_grace: seconds in-flight executions get to finish when the worker stops,
            before they are cancelled (499).
        sync_handlers: where plain ``def`` handlers run. ``"thread"`` (the default): in
            worker threads; a thread cannot be interrupted, so when its execution times out
            (408) or is cancelled (499) the execution ends at once and its thread is
            abandoned (it runs on; its result is dropped). ``"process"``: in worker
            processes, killed when the execution times out or is cancelled; the handler must
            be a module-level function and the job's args and its result picklable.
        max_abandoned_threads: with ``"thread"``, while this many abandoned threads are
            still running, new sync executions end 503 at once instead of starting another.
        clock: the time ``perform_at``, ``perform_in``, ``perform_every`` and
            ``ctx.started_at`` run on (default: the system clock); a
            :class:`work.testing.VirtualClock` in tests.

    Raises:
        ValueError: ``max_concurrency`` < 1, a negative ``shutdown_grace``, an unknown
            ``sync_handlers`` or ``max_abandoned_threads`` < 1.
        TypeError: a ``clock`` that is not a Clock.
    """

    _names = itertools.count(1)

    def __init__(
        self,
        *,
        adapters: tuple[Adapter, ...] | list[Adapter] = (),
        max_concurrency: int | None = None,
        name: str | None = None,
        shutdown_grace: float = 10.0,
        sync_handlers: SyncMode = "thread",
        max_abandoned_threads: int = 16,
        clock: Clock | None = None,
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a work.testing.VirtualClock or None, got {clock!r}")
        self.clock: Clock = clock or SYSTEM
        if sync_handlers not in ("thread", "process"):
            raise ValueError(f"sync_handlers must be 'thread' or 'process', got {sync_handlers!r}")
        if isinstance(max_abandoned_threads, bool) or not isinstance(max_abandoned_threads, int):
            raise TypeError(f"max_abandoned_threads must be an int, got {max_abandoned_threads!r}")
        if max_abandoned_threads < 1:
            raise ValueError(f"max_abandoned_threads must be >= 1, got {max_abandoned_threads}")
        if max_concurrency is not None:
            if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
                raise TypeError(f"max_concurrency must be an int or None, got {max_concurrency!r}")
            if max_concurrency < 1:
                raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        grace = seconds(shutdown_grace, name="shutdown_grace")
        if grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0, got {shutdown_grace!r}")
        self.adapters: tuple[Adapter, ...] = tuple(adapters)
        for i, adapter in enumerate(self.adapters):
            if not callable(adapter):
                raise TypeError(f"adapter #{i} ({adapter!r}) is not callable")
        self.max_concurrency = max_concurrency
        self.name = name or f"worker-{next(self._names)}"
        self.shutdown_grace = grace
        self.sync_handlers: SyncMode = sync_handlers
        self._threads = ThreadRunner(max_abandoned=max_abandoned_threads, name=self.name)
        self._processes = ProcessRunner()
        self._handlers: dict[str, Callable[[Job], Any]] = {}
        self._chains: dict[str, Handler] = {}
        self._subscribers: tuple[Callable[[Execution], object], ...] = ()
        self._reset()

    def _reset(self) -> None:
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._stopping: anyio.Event | None = None
        self._drained: anyio.Event | None = None
        self._sem: anyio.Semaphore | None = None
        self._pending: collections.deque[Execution] = collections.deque()
        self._starting = 0
        self._blocked = 0
        self._inflight: set[Execution] = set()
        self._idle: anyio.Event | None = None
        self._timers: TimerHeap[Execution] | None = None
        self._waiting_slot: set[Execution] = set()
        self._handles: set[RecurringHandle] = set()
        self._services = 0
        self._services_done: anyio.Event | None = None

    @property
    def abandoned_threads(self) -> int:
        """Threads of sync handlers abandoned after a timeout or cancel that still run."""
        return self._threads.abandoned

    # -- registry ---------------------------------------------------------------------------

    @property
    def handlers(self) -> Mapping[str, Callable[[Job], Any]]:
        """The registered handlers by name (read-only view)."""
        return dict(self._handlers)

    def register(self, name: str, fn: Callable[[Job], Any]) -> None:
        """Register ``fn`` (``async def`` or plain ``def``) as the handler named ``name``.

        Raises:
            ValueError: ``name`` is blank or already registered.
            TypeError: ``fn`` is not callable or ``name`` not a str; with
                ``sync_handlers="process"``, a plain ``def`` that cannot be pickled.
        """
        if not isinstance(name, str):
            raise TypeError(f"a handler name must be a str, got {type(name).__name__}")
        if not name or name.isspace():
            raise ValueError(f"a handler name must not be blank, got {name!r}")
        if name in self._handlers:
            raise ValueError(f"a handler named {name!r} is already registered on {self.name}")
        if not callable(fn):
            raise TypeError(f"a handler must be callable, got {fn!r}")
        if is_async_callable(fn):
            handler = fn
        elif self.sync_handlers == "process":
            handler = self._processes.wrap(fn)
        else:
            handler = self._threads.wrap(fn)
        self._handlers[name] = fn
        self._chains[name] = compose(self.adapters, handler)

    def handler(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register`; the default name is the function's ``__name__``.

        ::

            @worker.handler()
            async def resize(job: Job) -> None: ...
        """
        if callable(name):
            raise TypeError("use @worker.handler() or @worker.handler('name'), with parentheses")

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn)
            return fn

        return decorate

    # -- observing --------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Execution], object]) -> Callable[[], None]:
        """Call ``callback(execution)`` as each execution starts and as it finishes.

        ``execution.done`` tells the two apart: False when it starts (before the handler
        runs), True when it has finished (``status``, ``result`` and ``error`` are final). An
        execution cancelled before it started is seen only once, done. The callback runs in
        the worker's event loop thread and must not block; one that raises is logged (logger
        ``anywork.worker``) and does not disturb the worker or the other callbacks.

        Args:
            callback: a plain function taking the Execution.

        Returns:
            A function that unsubscribes the callback (calling it twice does nothing).
        """
        if not callable(callback):
            raise TypeError(f"subscribe needs a callable, got {callback!r}")
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def _notify(self, execution: Execution) -> None:
        for callback in self._subscribers:
            try:
                callback(execution)
            except Exception:
                _log.exception("a worker.subscribe callback raised; ignored: %r", callback)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the worker accepts work (between start and the beginning of its stop)."""
        return self._accepting

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._reset()
        self._stopping = anyio.Event()
        self._drained = anyio.Event()
        self._services_done = anyio.Event()
        self._services_done.set()
        if self.max_concurrency is not None:
            self._sem = anyio.Semaphore(self.max_concurrency, fast_acquire=True)
        self._timers = TimerHeap(self.clock)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._accepting = True
        tg.start_soon(self._timers.run, self._fire_timer, name=f"{self.name} timers")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None and self._drained is not None and self._services_done is not None
        with anyio.CancelScope(shield=True):
            if exc_type is not None:
                # Leaving because of an error or a cancellation: no grace.
                self._begin_stop(grace=0.0)
            else:
                self._begin_stop(grace=self.shutdown_grace)
            await self._drained.wait()
            await self._services_done.wait()
            tg.cancel_scope.cancel()
        try:
            # The task group holds only the worker's own tasks (none of which raises), so the
            # body's exception, if any, propagates as itself rather than in an ExceptionGroup.
            await tg.__aexit__(None, None, None)
        finally:
            self._tg = None
        return None

    def stop(self) -> None:
        """Begin a graceful stop without leaving ``async with``: no new work is accepted,
        pending timed jobs are dropped (499), loops end, in-flight executions get
        ``shutdown_grace`` seconds and are then cancelled; ``serve`` loops hand their
        unfinished jobs back and return. Leaving ``async with`` then waits for all of it."""
        if self._tg is not None:
            self._begin_stop(grace=self.shutdown_grace)

    def _begin_stop(self, grace: float) -> None:
        if not self._accepting:
            if grace == 0:
                self._cancel_inflight()
            return
        self._accepting = False
        assert self._stopping is not None and self._tg is not None and self._timers is not None
        self._stopping.set()
        for handle in list(self._handles):
            handle.cancel()
        for execution in self._timers.drain():
            execution.cancel()
        for execution in list(self._waiting_slot):
            execution.cancel()
        self._tg.start_soon(self._drain, grace, name=f"{self.name} drain")

    async def _drain(self, grace: float) -> None:
        assert self._drained is not None
        with anyio.CancelScope(shield=True):
            if grace > 0 and self._inflight:
                with anyio.move_on_after(grace):
                    await self._wait_idle()
            while self._inflight:
                self._cancel_inflight()
                await self._wait_idle()
            self._drained.set()

    def _cancel_inflight(self) -> None:
        for execution in list(self._inflight):
            execution.cancel()

    async def _wait_idle(self) -> None:
        while self._inflight:
            self._idle = anyio.Event()
            await self._idle.wait()

    @property
    def stopping(self) -> bool:
        """True once the worker has begun to stop (``stop()``, or leaving ``async with``)."""
        return self._stopping is not None and self._stopping.is_set()

    async def wait_stopping(self) -> None:
        """Return once the worker begins to stop: the signal a loop running beside the worker
        (a consumer, a scheduler) uses to wind down.

        Raises:
            RuntimeError: the worker was never started.
        """
        if self._stopping is None:
            raise RuntimeError(f"{self.name} was never started: use `async with worker:`")
        await self._stopping.wait()

    @asynccontextmanager
    async def lifetime(self) -> AsyncIterator[None]:
        """Run a loop inside the worker's lifetime: leaving ``async with worker`` waits, after
        the in-flight executions have ended, until every such block has exited. ``serve``
        uses it so that its hand-back of unfinished jobs is part of the worker's stop; a
        feature that drives the worker (a scheduler, a relay connection) does the same.

        Raises:
            RuntimeError: the worker is not running.
        """
        if self._services_done is None or self._tg is None:
            raise RuntimeError(f"{self.name} is not running: use `async with worker:`")
        self._services += 1
        self._services_done = anyio.Event()
        try:
            yield
        finally:
            self._services -= 1
            if self._services == 0:
                self._services_done.set()

    # -- perform family ---------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._accepting:
            raise RuntimeError(
                f"{self.name} is not running: use `async with worker:` before performing jobs"
            )

    def _new_execution(
        self, job: Job, attempt: int = 1, values: Mapping[str, Any] | None = None
    ) -> Execution:
        if not isinstance(job, Job):
            raise TypeError(f"perform needs a Job, got {type(job).__name__}")
        self._check_running()
        handler = self._chains.get(job.handler)
        if handler is None:
            raise UnknownHandlerError(job.handler, list(self._chains))
        copy = job.copy()
        ctx = Ctx(copy.id, attempt=attempt, values=values)
        copy.ctx = ctx
        return Execution(self, copy, ctx, handler)

    async def perform(
        self,
        job: Job,
        *,
        sync: bool = False,
        attempt: int = 1,
        values: Mapping[str, Any] | None = None,
    ) -> Execution:
        """Run a copy of ``job`` with a fresh Ctx.

        Args:
            job: the job; its handler must be registered.
            sync: True: return once the execution has finished. False: return once it has
                started, i.e. holds its slot (waiting for one under ``max_concurrency``).
            attempt: the Ctx's starting attempt number (durable queues pass their count).
            values: initial Ctx values (e.g. ``{"worker_number": 3}``).

        Returns:
            The Execution (finished when ``sync``).

        Raises:
            UnknownHandlerError: no handler is registered under ``job.handler``.
            RuntimeError: the worker is not running.
            TypeError: ``job`` is not a Job.
        """
        execution = self._new_execution(job, attempt, values)
        await self._admit(execution)
        if sync:
            try:
                await execution.wait()
            except BaseException:
                # The caller stopped waiting for a sync execution: it is theirs, cancel it.
                execution.cancel()
                raise
        return execution

    def _perform_nowait(
        self, job: Job, *, attempt: int = 1, prepare: Callable[[Execution], None] | None = None
    ) -> Execution | None:
        """``perform(job)`` for a caller that must neither wait nor spawn a task of its own
        (``serve``): the execution is queued for the worker's runners at once, after
        ``prepare(execution)`` (a done-callback, a progress hook), and returned; None when
        ``max_concurrency`` has no slot free (nothing is started: the caller waits with
        ``perform`` instead).

        Raises:
            UnknownHandlerError: no handler is registered under ``job.handler``.
            RuntimeError: the worker is not running.
            TypeError: ``job`` is not a Job.
        """
        execution = self._new_execution(job, attempt)
        if self._sem is not None:
            try:
                self._sem.acquire_nowait()
            except anyio.WouldBlock:
                return None
            execution._holds_slot = True
        if prepare is not None:
            prepare(execution)
        self._start(execution)
        return execution

    async def perform_at(self, job: Job, when: datetime) -> Execution:
        """Run a copy of ``job`` at ``when`` (an aware datetime; a past time runs now).

        Returns the Execution at once; it is dropped (499) if the worker stops first.

        Raises:
            ValueError: ``when`` is naive.
            TypeError: ``when`` is not a datetime.
        """
        if not isinstance(when, datetime):
            raise TypeError(f"perform_at needs a datetime, got {type(when).__name__}")
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"perform_at needs an aware datetime (with tzinfo), got naive {when.isoformat()}"
            )
        delay = (when - self.clock.now()).total_seconds()
        return self._schedule(job, max(delay, 0.0))

    async def perform_in(self, job: Job, delay: float | timedelta) -> Execution:
        """Run a copy of ``job`` after ``delay`` seconds (or a timedelta).

        Returns the Execution at once; it is dropped (499) if the worker stops first.

        Raises:
            ValueError: a negative delay.
        """
        secs = seconds(delay, name="delay")
        if secs < 0:
            raise ValueError(f"perform_in needs a delay >= 0, got {delay!r}")
        return self._schedule(job, secs)

    def _schedule(self, job: Job, delay: float) -> Execution:
        execution = self._new_execution(job)
        assert self._timers is not None
        self._timers.push(self._timers.time() + delay, execution)
        return execution

    async def perform_every(
        self, job: Job, every: float | timedelta | str, *, sync: bool = False
    ) -> RecurringHandle:
        """Run copies of ``job`` on a schedule until cancelled or the worker stops.

        Args:
            job: the job.
            every: seconds or a timedelta (first run at once, then on a fixed grid that does
                not drift), or a cron line (croniter, read in UTC; first run at the next match).
            sync: True: executions never overlap; a tick that falls during a running
                execution is skipped.

        Returns:
            A handle with ``cancel()``, ``await wait()`` and ``count``.

        Raises:
            ValueError: an interval <= 0 or a line croniter cannot parse.
            UnknownHandlerError, RuntimeError: as for :meth:`perform`.
        """
        schedule = parse_every(every)
        self._validate(job)
        handle = RecurringHandle(f"{job.handler} {schedule!r}")
        self._start_loop(handle, self._every_loop, handle, job, schedule, sync)
        return handle

    async def perform_receive(
        self,
        job: Job,
        source: AsyncIterable[Any],
        *,
        sync: bool = False,
        key: str = "received_data",
    ) -> RecurringHandle:
        """Run one copy of ``job`` per item of ``source``, with the item in ``args[key]``.

        Args:
            job: the job.
            source: an anyio receive stream or any async iterable; the loop ends when it is
                exhausted.
            sync: True: one execution after another.
            key: the args key that receives each item.

        Returns:
            A handle with ``cancel()``, ``await wait()`` and ``count``.

        Raises:
            TypeError: ``source`` is not async-iterable.
            UnknownHandlerError, RuntimeError: as for :meth:`perform`.
        """
        if not hasattr(source, "__aiter__"):
            raise TypeError(
                f"perform_receive needs an async iterable or receive stream, got {source!r}"
            )
        self._validate(job)
        handle = RecurringHandle(f"{job.handler} receive")
        self._start_loop(handle, self._receive_loop, handle, job, source, sync, key)
        return handle

    def _validate(self, job: Job) -> None:
        if not isinstance(job, Job):
            raise TypeError(f"perform needs a Job, got {type(job).__name__}")
        self._check_running()
        if job.handler not in self._chains:
            raise UnknownHandlerError(job.handler, list(self._chains))

    def _start_loop(self, handle: RecurringHandle, fn: Callable[..., Any], *args: Any) -> None:
        assert self._tg is not None
        self._handles.add(handle)
        self._tg.start_soon(fn, *args, name=f"{self.name} {handle.description}")

    async def _every_loop(
        self,
        handle: RecurringHandle,
        job: Job,
        schedule: IntervalSchedule | CronSchedule,
        sync: bool,
    ) -> None:
        try:
            with handle._scope:
                clock = self.clock
                if isinstance(schedule, IntervalSchedule):
                    # Real time: anyio's monotonic clock, blind to wall-clock jumps.
                    now = clock.time if clock.virtual else anyio.current_time
                    start = now()
                    while True:
                        execution = await self.perform(job)
                        handle._started(execution)
                        if sync:
                            await execution.wait()
                        nxt = schedule.next_after(start, now())
                        await clock.sleep(nxt - now())
                else:
                    while True:
                        await clock.sleep_until(schedule.next_after_wall(clock.now()))
                        execution = await self.perform(job)
                        handle._started(execution)
                        if sync:
                            await execution.wait()
        except Exception as exc:
            # A loop never takes the worker down: a stop between two ticks simply ends it,
            # anything else is kept on the handle.
            if self._accepting:
                handle.error = exc
        finally:
            self._handles.discard(handle)
            handle._end_loop()

    async def _receive_loop(
        self,
        handle: RecurringHandle,
        job: Job,
        source: AsyncIterable[Any],
        sync: bool,
        key: str,
    ) -> None:
        try:
            with handle._scope:
                async for item in source:
                    copy = job.copy()
                    copy.args[key] = item
                    execution = await self.perform(copy)
                    handle._started(execution)
                    if sync:
                        await execution.wait()
        except Exception as exc:
            # A failing source ends the loop, not the worker; the error is kept on the handle.
            if self._accepting:
                handle.error = exc
        finally:
            self._handles.discard(handle)
            handle._end_loop()

    # -- durable queues ---------------------------------------------------------------------

    async def serve(
        self,
        store: Store,
        *,
        queues: tuple[str, ...] | list[str] = ("default",),
        concurrency: int | None = None,
        lease: float = 30.0,
        lost_limit: int = 3,
        unknown_handler_grace: float = 300.0,
        result_ttl: float | timedelta | None = 7 * 24 * 3600.0,
    ) -> None:
        """Consume jobs from a durable store until cancelled or the worker stops.

        Claims ready jobs from ``queues`` (higher priority first, then earlier due time, then
        enqueue order), holds a lease of ``lease`` seconds on each (renewed while it runs),
        applies the job's retry policy by status, stores results and errors, honours
        ``Queue.cancel`` of running jobs, and on stop hands unfinished jobs back without using
        an attempt. Leaving ``async with worker`` returns only after that hand-back.

        Args:
            store: an entered store (``async with open_store(url) as store``).
            queues: the queues to consume.
            concurrency: at most this many of the store's jobs at once (default: the worker's
                ``max_concurrency``, else 16).
            lease: seconds a claim holds before another worker may take the job over.
            lost_limit: a job whose worker was lost (its lease expired) goes back whatever its
                retry policy, until this many losses; then it fails 500 "worker lost".
            unknown_handler_grace: a job for a handler this worker lacks goes back for another
                worker without using an attempt; it fails 404 only when no worker has run it
                within this many seconds of the first hand-back.
            result_ttl: finished jobs of ``queues`` are deleted (a small batch at a time) this
                long after they finished (default 7 days), unless a job was enqueued with a
                ``result_ttl`` of its own; None keeps them for ever.
        """
        from .._durable.consumer import serve_store

        await serve_store(
            self,
            store,
            queues=queues,
            concurrency=concurrency,
            lease=lease,
            lost_limit=lost_limit,
            unknown_handler_grace=unknown_handler_grace,
            result_ttl=result_ttl,
        )

    # -- remote relay -----------------------------------------------------------------------

    async def connect(
        self,
        url: str,
        *,
        token: str | None = None,
        concurrency: int | None = None,
        idle_exit: float | None = None,
    ) -> None:
        """Join the relay at ``url`` and run the jobs it hands over until the worker stops.

        Announces the handlers and ``concurrency``, runs each job through this worker's
        adapters, answers with its status, result and error, and reconnects with backoff when
        the relay goes (see docs/remote.md). Needs the ``remote`` extra (``websockets``).

        Args:
            url: the relay's WebSocket URL (``ws://host:8000/v1/relay``; http(s) works too).
            token: the relay's bearer token.
            concurrency: jobs at once (default: ``max_concurrency``, else 16).
            idle_exit: return after this many seconds without a job (None: never).

        Raises:
            PermissionError: the relay refused the token.
            ConnectionRefusedError: the relay speaks another protocol version.
            ValueError: a bad url, concurrency or idle_exit, or no handler registered.
            RuntimeError: the worker is not running.
        """
        from ..remote._client import connect_worker

        await connect_worker(self, url, token=token, concurrency=concurrency, idle_exit=idle_exit)

    # -- running executions -----------------------------------------------------------------

    async def _admit(self, execution: Execution) -> None:
        """Take a slot for ``execution`` (waiting under max_concurrency) and queue it to run."""
        if self._sem is not None:
            await self._sem.acquire()
            if execution._phase == _DONE:  # cancelled while waiting for the slot
                self._sem.release()
                return
            execution._holds_slot = True
        self._start(execution)

    def _start(self, execution: Execution) -> None:
        execution._phase = _ADMITTED
        self._inflight.add(execution)
        self._pending.append(execution)
        self._spawn_runners()

    def _spawn_runners(self) -> None:
        """Spawn runners for the pending executions: one while none is starting, and one more
        per runner held up in an execution (``_blocked``: they are waiting, not running)."""
        pending = self._pending
        while (
            self._starting < len(pending)
            and self._starting < _MAX_STARTING
            and self._starting <= self._blocked
        ):
            self._starting += 1
            assert self._tg is not None
            self._tg.start_soon(self._runner)

    def _fire_timer(self, execution: Execution) -> None:
        if execution._phase == _DONE:
            return
        if self._sem is None:
            self._start(execution)
            return
        try:
            self._sem.acquire_nowait()
        except anyio.WouldBlock:
            self._waiting_slot.add(execution)
            assert self._tg is not None
            self._tg.start_soon(self._admit_later, execution)
        else:
            execution._holds_slot = True
            self._start(execution)

    async def _admit_later(self, execution: Execution) -> None:
        try:
            await self._admit(execution)
        finally:
            self._waiting_slot.discard(execution)

    async def _runner(self) -> None:
        self._starting -= 1
        pending = self._pending
        n = 0
        while pending:
            execution = pending.popleft()
            if pending:
                # Another runner takes over the rest should this execution wait.
                self._spawn_runners()
            if execution._phase == _DONE:
                continue
            await self._execute(execution)
            n += 1
            if n % _YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def _execute(self, execution: Execution) -> None:
        ctx = execution.ctx
        execution._phase = _RUNNING
        self._blocked += 1
        ctx._started = self.clock.time()
        if self._subscribers:
            self._notify(execution)
        try:
            with anyio.CancelScope() as scope:
                execution._scope = scope
                try:
                    execution.result = await execution._handler(execution.job)
                except Exception as exc:
                    # The settle steps have set the status already; keep the cause.
                    execution.error = exc
            if scope.cancelled_caught:
                ctx.status = Status.CANCELLED
        except BaseException as exc:
            ctx.status = Status.CANCELLED
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                execution.error = exc  # KeyboardInterrupt and the like: keep the cause
            raise
        finally:
            self._blocked -= 1
            execution._scope = None
            self._finish(execution)

    def _finish(self, execution: Execution) -> None:
        if execution._phase == _DONE:
            return
        execution._phase = _DONE
        if execution._holds_slot:
            execution._holds_slot = False
            assert self._sem is not None
            self._sem.release()
        self._inflight.discard(execution)
        if self._subscribers:
            self._notify(execution)
        if execution._event is not None:
            execution._event.set()
        if execution._callbacks is not None:
            for fn in execution._callbacks:
                fn(execution)
            execution._callbacks = None
        if not self._inflight and self._idle is not None:
            self._idle.set()

    def __repr__(self) -> str:
        state = "running" if self._accepting else "stopped"
        limit = "" if self.max_concurrency is None else f" max_concurrency={self.max_concurrency}"
        return f"<Worker {self.name!r} {state} handlers={sorted(self._handlers)}{limit}>"
