"""Clocks: the system clock everything runs on by default, and the virtual one tests drive."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from time import time as _system_time

import anyio
import anyio.lowlevel

__all__ = ["SYSTEM", "Clock", "VirtualClock", "clock_of", "current_clock"]

# A long wall-clock wait is made of hops this long, so that a jump of the wall clock (a
# suspend, an NTP step) is noticed within one hop.
_WALL_HOP = 60.0


def _noop() -> None:
    pass


class Clock:
    """The time source of a worker, store or scheduler: real time (the system clock).

    ``now()`` is the wall clock as an aware UTC datetime, ``time()`` the same in epoch
    seconds; ``sleep``, ``sleep_until`` and ``wait`` pause on it. A :class:`VirtualClock`
    replaces it in tests.
    """

    virtual = False

    def now(self) -> datetime:
        """Return the current time (aware UTC)."""
        return datetime.now(UTC)

    def time(self) -> float:
        """Return the current time in seconds since the epoch."""
        return _system_time()

    async def sleep(self, seconds: float, *, due: bool = True) -> None:
        """Pause ``seconds``. ``due`` tells a virtual clock whether something falls due at the
        end (True: it stops there) or whether this is a poll that may wake late (False)."""
        await anyio.sleep(max(seconds, 0.0))

    async def sleep_until(self, when: datetime) -> None:
        """Pause until the wall clock reaches ``when`` (an aware datetime)."""
        # Short hops: a long monotonic sleep would miss a wall-clock jump.
        while (left := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await anyio.sleep(min(left, _WALL_HOP))

    async def wait(self, event: anyio.Event, timeout: float, *, due: bool = False) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds; True if it was set. ``due``: as
        for :meth:`sleep` (here False by default: a wait with a timeout is usually a poll)."""
        with anyio.move_on_after(max(timeout, 0.0)):
            await event.wait()
            return True
        return False

    def wake_at(self, when: float) -> None:
        """Note that something falls due at epoch time ``when`` (a virtual clock stops there)."""

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark work in progress that an idle check cannot see (a call in a worker thread)."""
        yield

    def __repr__(self) -> str:
        return "Clock()"


SYSTEM = Clock()
"""The system clock: what every worker, store and scheduler uses unless given another."""

_current: ContextVar[Clock] = ContextVar("anywork_clock", default=SYSTEM)


def current_clock() -> Clock:
    """Return the clock of the ``serve`` (or other loop) this task runs under."""
    return _current.get()


def clock_of(obj: object) -> Clock:
    """Return ``obj.clock`` if it is a Clock (a store or worker given one), else the system's."""
    clock = getattr(obj, "clock", None)
    return clock if isinstance(clock, Clock) else SYSTEM


def use_clock(clock: Clock) -> None:
    """Make ``clock`` the current clock of this task and the tasks it starts from now on."""
    _current.set(clock)


async def _all_tasks_blocked() -> None:
    """Return once every other task is blocked (waiting on an event, a lock, I/O, a thread or
    a sleep) and none can run."""
    try:
        me = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio's own check, exact and without polling
        await anyio.wait_all_tasks_blocked()
        return
    # anyio's asyncio version polls every 0.1 s; a virtual clock settles after every step, so
    # it yields to the loop instead, as often as runnable tasks remain.
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            if task is me:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                break
        else:
            return


class VirtualClock(Clock):
    """A clock that moves only when told, for tests: a month of timers in a few seconds.

    Give it to ``Worker(clock=...)``, ``open_store("memory://" or "sqlite:///...",
    clock=...)`` and ``Scheduler(store, clock=...)``; then ``perform_at``, ``perform_in``,
    ``perform_every``, ``Deferred`` deadlines, retry and due times, leases and schedules all
    run on its time. :meth:`advance` moves time forward to each next instant something falls
    due, in order, and lets the program run there until every task is blocked again.

    Limits: a task blocked on real I/O (a socket, a subprocess) or a real-time sleep looks
    idle, so ``advance`` may step on before it is answered (wait for such work with an event);
    job timeouts and store retry pauses stay in real time; a job that is RUNNING while time
    jumps past its lease loses the lease, as under a worker that froze; only the memory and
    SQLite stores take a clock.

    Args:
        start: the starting time (an aware datetime).

    Raises:
        ValueError: ``start`` is naive.
        TypeError: ``start`` is not a datetime.
    """

    virtual = True

    def __init__(self, start: datetime) -> None:
        if not isinstance(start, datetime):
            raise TypeError(f"VirtualClock needs a datetime start, got {type(start).__name__}")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"VirtualClock needs an aware start datetime, got {start!r}")
        self._now = start.timestamp()
        self._seq = itertools.count()
        # Entries (when, seq, callback): `_due` ones are stops for advance; `_polls` only run
        # once time has passed them.
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._polls: list[tuple[float, int, Callable[[], None]]] = []
        self._busy = 0
        self._unbusy: anyio.Event | None = None
        self._advancing = False

    def now(self) -> datetime:
        """Return the virtual time (aware UTC)."""
        return datetime.fromtimestamp(self._now, UTC)

    def time(self) -> float:
        """Return the virtual time in seconds since the epoch."""
        return self._now

    def _at(self, when: float, fn: Callable[[], None], due: bool) -> None:
        heapq.heappush(self._due if due else self._polls, (when, next(self._seq), fn))

    async def sleep(self, seconds: float, *, due: bool = True) -> None:
        """Pause until the virtual time has moved ``seconds`` on."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        with anyio.CancelScope() as scope:
            self._at(self._now + seconds, scope.cancel, due)
            await anyio.sleep_forever()

    async def sleep_until(self, when: datetime) -> None:
        """Pause until the virtual time reaches ``when``."""
        await self.sleep(when.timestamp() - self._now)

    async def wait(self, event: anyio.Event, timeout: float, *, due: bool = False) -> bool:
        """Wait for ``event``, or until the virtual time has moved ``timeout`` seconds on
        (by default a poll: advance does not stop for it); True if the event was set."""
        with anyio.CancelScope() as scope:
            self._at(self._now + max(timeout, 0.0), scope.cancel, due)
            await event.wait()
            return True
        return False

    def wake_at(self, when: float) -> None:
        """Make ``advance`` stop at epoch time ``when`` (a due time, a deadline)."""
        self._at(when, _noop, True)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark work in progress that looks blocked but is not (a store call in a thread):
        ``advance`` waits for it before it moves time on."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0 and self._unbusy is not None:
                self._unbusy.set()

    async def _settle(self) -> None:
        """Return once every task is blocked and no marked work is in progress."""
        while True:
            await _all_tasks_blocked()
            if self._busy == 0:
                return
            self._unbusy = anyio.Event()
            await self._unbusy.wait()

    def _fire_until(self, now: float) -> None:
        for heap in (self._due, self._polls):
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]()

    async def advance(self, delta: timedelta | float) -> None:
        """Move time ``delta`` (a timedelta or seconds >= 0) on; see :meth:`advance_to`."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError(f"advance needs a delta >= 0, got {delta!r}")
        await self.advance_to(datetime.fromtimestamp(self._now + seconds, UTC))

    async def advance_to(self, when: datetime) -> None:
        """Move time on to ``when``, stopping at each instant something falls due (in order)
        and letting the program run there until it is idle; return when it is idle at ``when``.

        Raises:
            ValueError: ``when`` is naive or earlier than the clock's time.
            RuntimeError: another advance is in progress.
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"advance_to needs an aware datetime, got {when!r}")
        target = when.timestamp()
        if target < self._now:
            raise ValueError(f"advance_to cannot go back: {when.isoformat()} < {self.now()}")
        if self._advancing:
            raise RuntimeError("VirtualClock.advance is already running in another task")
        self._advancing = True
        try:
            await self._settle()
            while True:
                step = self._due[0][0] if self._due and self._due[0][0] <= target else target
                self._now = max(self._now, step)
                self._fire_until(self._now)
                await self._settle()
                if self._now >= target and not (self._due and self._due[0][0] <= target):
                    return
        finally:
            self._advancing = False

    def __repr__(self) -> str:
        return f"VirtualClock({self.now().isoformat()})"
