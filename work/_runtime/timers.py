"""Timing: parsing intervals and cron lines, and the one timer heap behind perform_at/in."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import anyio

from .._core.clock import SYSTEM, Clock

__all__ = ["CronSchedule", "IntervalSchedule", "Schedule", "TimerHeap", "parse_every", "seconds"]

T = TypeVar("T")


def seconds(value: float | timedelta, *, name: str) -> float:
    """Return ``value`` in seconds.

    Raises:
        TypeError: not a number or timedelta.
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be seconds (int/float) or a timedelta, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, got NaN")
    return float(value)


class IntervalSchedule:
    """Every ``interval`` seconds on a fixed grid from the start: tick n is ``start + n*interval``,
    so a slow execution never makes the schedule drift. The first tick is at once."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"an interval must be > 0 seconds, got {interval!r}")
        self.interval = interval

    def next_after(self, start: float, now: float) -> float:
        """Return the first tick strictly after ``now`` on the grid that starts at ``start``
        (anyio clock seconds)."""
        n = math.floor((now - start) / self.interval) + 1
        return start + n * self.interval

    def __repr__(self) -> str:
        return f"every {self.interval:g}s"


class CronSchedule:
    """A cron line read by croniter, in UTC (5 fields, or 6 with seconds last).

    Raises:
        ValueError: not 5 or 6 fields (croniter would also read a 7th, a year, which the docs
            do not promise), or a line croniter cannot parse.
    """

    def __init__(self, line: str) -> None:
        # Imported here: croniter is needed only by cron schedules, not by `import work`.
        from croniter import croniter

        fields = line.split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"a cron line has 5 fields (minute hour day month weekday) or 6 (seconds "
                f"last); {line!r} has {len(fields)}"
            )
        if not croniter.is_valid(line):
            raise ValueError(f"cannot parse cron line {line!r} (croniter rejected it)")
        self.line = line
        self._croniter = croniter

    def next_after_wall(self, now: datetime) -> datetime:
        """Return the first fire time strictly after ``now`` (aware UTC datetime)."""
        nxt: datetime = self._croniter(self.line, now).get_next(datetime)
        return nxt if nxt.tzinfo is not None else nxt.replace(tzinfo=UTC)

    def __repr__(self) -> str:
        return f"cron {self.line!r}"


Schedule = IntervalSchedule | CronSchedule


def parse_every(every: float | timedelta | str) -> Schedule:
    """Return the schedule for ``perform_every``'s ``every``: seconds, a timedelta or a cron line.

    Raises:
        ValueError: an interval <= 0 or a line croniter cannot parse.
        TypeError: any other type.
    """
    if isinstance(every, str):
        return CronSchedule(every)
    return IntervalSchedule(seconds(every, name="every"))


class TimerHeap(Generic[T]):
    """Items due at times of ``clock``, served by ONE task (not one sleeping task per item).

    ``push`` adds an item; ``run(fire)`` (the serving task) calls ``fire(item)`` for each item
    as it falls due, in due order, and sleeps until the next one otherwise.
    """

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._clock = clock
        # Real time: anyio's monotonic clock (blind to wall-clock jumps); virtual: the clock's.
        self.time: Callable[[], float] = clock.time if clock.virtual else anyio.current_time

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, item: T) -> None:
        """Add ``item`` due at time ``when`` (of :attr:`time`)."""
        heapq.heappush(self._heap, (when, next(self._seq), item))
        if self._heap[0][2] is item:
            self._wake.set()

    def drain(self) -> list[T]:
        """Remove and return every item, due or not."""
        items = [entry[2] for entry in self._heap]
        self._heap.clear()
        return items

    async def run(self, fire: Callable[[T], None]) -> None:
        """Serve the heap forever: call ``fire`` for each item as it falls due."""
        heap = self._heap
        while True:
            now = self.time()
            while heap and heap[0][0] <= now:
                fire(heapq.heappop(heap)[2])
            if self._wake.is_set():
                self._wake = anyio.Event()
            if heap:
                await self._clock.wait(self._wake, heap[0][0] - now, due=True)
            else:
                await self._wake.wait()


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)
