"""``Scheduler``: fires due schedules as durable jobs, exactly once however many run."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from .._core.clock import Clock, clock_of
from .._durable.deferred import expire_waiting
from ..stores._base import Firing, JobRecord, ScheduleRow, Store
from ._schedule import Schedule

__all__ = ["Scheduler", "plan_firing"]


@functools.cache
def _log() -> Any:
    # Imported on first use: `import work` stays light.
    import structlog

    return structlog.get_logger("anywork.scheduler")


_MICROSECOND = timedelta(microseconds=1)
# Missed fires counted one by one after downtime, at most this many; past it the walk jumps
# to the grace window (the count then says "at least").
_MAX_WALK = 100_000
# The least pause between ticks: a due schedule another scheduler is firing right now must not
# make this one spin.
_MIN_PAUSE = 0.005
# Pause after a tick that failed (the store unreachable), at most.
_MAX_BACKOFF = 30.0


def plan_firing(row: ScheduleRow, *, now: datetime) -> Firing:
    """Decide what a due schedule does at ``now`` (pure: no I/O, never raises).

    The fires from ``row.next_fire_at`` up to ``now`` that are at most ``misfire_grace``
    seconds old coalesce into one execution, for the latest of them; older ones are skipped
    (``Firing.skipped``). The next fire is the first one after ``now``.

    Args:
        row: the due schedule as its store keeps it.
        now: the scheduler's time (aware UTC).
    """
    try:
        schedule = Schedule.from_spec(row.spec)
        oldest = now - timedelta(seconds=schedule.misfire_grace)
        fire = row.next_fire_at
        latest: datetime | None = None
        skipped = steps = 0
        while fire is not None and fire <= now:
            steps += 1
            if fire >= oldest:
                latest = fire
            else:
                skipped += 1
                if steps >= _MAX_WALK:
                    fire = schedule.next_after(oldest - _MICROSECOND, anchor=row.anchor)
                    continue
            fire = schedule.next_after(fire, anchor=row.anchor)
        job = None
        if latest is not None:
            job_id = f"{schedule.id}@{latest:%Y%m%dT%H%M%SZ}"
            job = schedule.execution(job_id, fire=latest, now=now)
        return Firing(
            schedule_id=row.id,
            version=row.version,
            next_fire_at=fire,
            last_fire_at=latest,
            job=job,
            exclusive=schedule.exclusive,
            skipped=skipped,
        )
    except Exception:
        # A stored schedule this version cannot read: stop it rather than fail every tick.
        _log().exception("schedule cannot be planned: it will not fire again", schedule=row.id)
        return Firing(schedule_id=row.id, version=row.version, next_fire_at=None)


@functools.cache
def _misfire_counter() -> Any:
    # Imported here: prometheus-client is needed only once a misfire happens.
    from prometheus_client import REGISTRY, Counter

    try:
        return Counter(
            "anywork_schedule_misfires",
            "Fires of a schedule skipped because they were older than its misfire grace.",
            ["schedule"],
        )
    except ValueError:
        # Already registered in this process (a module reloaded in tests): reuse it.
        return REGISTRY._names_to_collectors["anywork_schedule_misfires_total"]


class Scheduler:
    """Fires the due schedules of a store as durable jobs.

    ::

        async with open_store("postgresql://db/jobs") as store, Scheduler(store):
            ...  # fires in the background until the block ends

    Run as many as you like, in any number of processes: each fire happens exactly once (the
    store advances a schedule atomically with the job it adds, and the job id
    ``f"{schedule.id}@{fire:%Y%m%dT%H%M%SZ}"`` is the second guard). No leader, no lock
    held between ticks. A scheduler holds no schedules in memory: each tick asks the store
    for the due ones, ``batch`` at a time.

    Args:
        store: an entered store.
        clock: the time it fires on (default: the store's clock, else the system's); a
            :class:`work.testing.VirtualClock` in tests.
        poll: seconds between looks at the store at most (a schedule stored by another
            process is seen within this); a fire known to be due sooner wakes it sooner.
        batch: due schedules taken per store call.

    Raises:
        ValueError: ``poll`` <= 0 or ``batch`` < 1.
        TypeError: a ``clock`` that is not a Clock.
    """

    def __init__(
        self, store: Store, *, clock: Clock | None = None, poll: float = 1.0, batch: int = 500
    ) -> None:
        if not isinstance(store, Store):
            raise TypeError(f"Scheduler needs a store, got {type(store).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a work.testing.VirtualClock or None, got {clock!r}")
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not poll > 0:
            raise ValueError(f"poll must be > 0 seconds, got {poll!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        self.store = store
        self.poll = float(poll)
        self.batch = batch
        self.clock: Clock = clock or clock_of(store)
        self._tg: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"Scheduler({self.store.url!r}, poll={self.poll!r})"

    async def tick(self, now: datetime | None = None) -> list[JobRecord]:
        """Fire everything due at ``now`` (default: the clock's now) once.

        Returns:
            Every execution record it made, the 409 ones of exclusive schedules included
            (not those another scheduler made).
        """
        when = self.clock.now() if now is None else now.astimezone(UTC)
        plan = functools.partial(plan_firing, now=when)
        out: list[JobRecord] = []
        while True:
            fired = await self.store.fire_schedules(when, plan, limit=self.batch)
            for done in fired:
                firing = done.firing
                if firing.skipped:
                    _misfire_counter().labels(schedule=firing.schedule_id).inc(firing.skipped)
                    _log().warning(
                        "schedule missed fires older than its misfire grace",
                        schedule=firing.schedule_id,
                        skipped=firing.skipped,
                        fired=firing.last_fire_at.isoformat() if firing.last_fire_at else None,
                    )
                if done.record is not None:
                    out.append(done.record)
            if len(fired) < self.batch:
                return out

    async def run(self) -> None:
        """Fire due schedules until cancelled. A tick that fails (the store unreachable) is
        logged and retried with growing pauses; it never ends the loop."""
        failures = 0
        while True:
            try:
                await self.tick()
                # WAITING executions whose callback never came end 504 at their ttl even when
                # no worker serves the store (a lone scheduler).
                await expire_waiting(self.store)
                due = await self.store.next_schedule_due()
                failures = 0
            except Exception:
                failures += 1
                pause = min(self.poll * 2**failures, _MAX_BACKOFF)
                _log().exception("scheduler tick failed", retry_in=pause)
                await self.clock.sleep(pause, due=False)
                continue
            pause = self.poll
            if due is not None:
                pause = min(pause, (due - self.clock.now()).total_seconds())
                self.clock.wake_at(due.timestamp())  # a virtual clock stops at the next fire
            # A poll: a virtual clock need not stop at it (it does at the next fire).
            await self.clock.sleep(max(pause, _MIN_PAUSE), due=False)

    async def __aenter__(self) -> Self:
        """Start firing in the background."""
        tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self.run, name="anywork scheduler")
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop firing (a tick in progress is cancelled: its store call commits or not)."""
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(exc_type, exc, tb)
