"""``Schedules`` and ``SyncSchedules``: create, change, list and trigger durable schedules."""

from __future__ import annotations

import builtins
import functools
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._core.clock import clock_of
from .._core.job import Job
from .._core.jsoncheck import check_json
from ..stores._base import JobRecord, JobState, ScheduleRow, Store
from ..stores._open import open_store
from ._schedule import Schedule, ScheduleRecord

__all__ = ["Schedules", "SyncSchedules"]

# A write that lost a race with another writer is redone from a fresh read, at most this often.
_CAS_TRIES = 20
_PAGE = 500


def _anchor(schedule: Schedule, now: datetime) -> datetime:
    # Whole seconds: rate() fires then land on whole seconds, like their job ids.
    return schedule.start_at or now.replace(microsecond=0)


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")
    return limit


class Schedules:
    """The CRUD side of durable schedules on a store (a scheduler fires them).

    ::

        async with open_store("sqlite:///jobs.db") as store:
            schedules = Schedules(store)
            await schedules.put(Schedule("reports/daily", "cron(0 6 * * ? *)", Job("report")))
            for record in await schedules.list(prefix="reports/"):
                print(record.schedule.id, record.next_fire_at)

    ``Schedules(store)`` works on a store that is already entered; ``async with
    Schedules(store)`` (or ``Schedules(url)``) enters it for the block as well.

    Args:
        store: a store, or a store URL.
        **options: options for :func:`~work.stores.open_store` when ``store`` is a URL.

    Raises:
        TypeError: ``store`` is neither a store nor a str.
    """

    def __init__(self, store: Store | str, **options: Any) -> None:
        if isinstance(store, str):
            store = open_store(store, **options)
        elif options:
            raise TypeError("store options are only accepted with a store URL")
        elif not isinstance(store, Store):
            raise TypeError(f"Schedules needs a store or a store URL, got {type(store).__name__}")
        self.store: Store = store

    def __repr__(self) -> str:
        return f"Schedules({self.store.url!r})"

    async def __aenter__(self) -> Self:
        """Enter the store and return this object."""
        await self.store.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave the store."""
        await self.store.__aexit__(exc_type, exc, tb)

    async def _record(self, row: ScheduleRow) -> ScheduleRecord:
        schedule = Schedule.from_spec(row.spec)
        success = await self.store.executions(row.id, state=JobState.SUCCEEDED, limit=1)
        return ScheduleRecord(
            schedule=schedule,
            next_fire_at=row.next_fire_at if row.enabled else None,
            last_fire_at=row.last_fire_at,
            last_success=success[0] if success else None,
            created_at=row.created_at,
            updated_at=row.updated_at,
            anchor=row.anchor,
        )

    async def _change(
        self, id: str, change: Callable[[ScheduleRow, datetime], ScheduleRow | None]
    ) -> ScheduleRecord:
        """Apply ``change`` (None: nothing to do) to the stored row, redone on a lost race."""
        for _ in range(_CAS_TRIES):
            old = await self.store.get_schedule(id)
            if old is None:
                raise LookupError(f"no schedule with id {id!r} in {self.store.url}")
            new = change(old, clock_of(self.store).now())
            if new is None:
                return await self._record(old)
            new = new.replace(version=old.version + 1)
            if await self.store.save_schedule(new, expected=old.version):
                return await self._record(new)
        raise RuntimeError(f"schedule {id!r} kept changing under {_CAS_TRIES} tries")

    # -- writing ------------------------------------------------------------------------------

    async def put(self, schedule: Schedule) -> ScheduleRecord:
        """Create or replace a schedule (by id). Idempotent: putting the same schedule again
        changes nothing. A changed expression, time zone or ``start_at`` recomputes the next
        fire from now and re-anchors ``rate()``; enabling a disabled one fires from now (no
        burst of missed fires); other changes keep the next fire.

        Returns:
            The stored schedule's record.

        Raises:
            TypeError: not a Schedule, or its target's args are not JSON (naming the key).
        """
        if not isinstance(schedule, Schedule):
            raise TypeError(f"put needs a Schedule, got {type(schedule).__name__}")
        if isinstance(schedule.target, Job):
            check_json(schedule.target.args, "target.args")
            check_json(schedule.target.headers, "target.headers")
        # Compared with what the store holds, which went through JSON.
        spec = json.loads(json.dumps(schedule.to_spec()))
        for _ in range(_CAS_TRIES):
            old = await self.store.get_schedule(schedule.id)
            now = clock_of(self.store).now()
            if old is None:
                anchor = _anchor(schedule, now)
                row = ScheduleRow(
                    id=schedule.id,
                    spec=spec,
                    enabled=schedule.enabled,
                    next_fire_at=schedule.next_after(now, anchor=anchor),
                    anchor=anchor,
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
                if await self.store.save_schedule(row, expected=None):
                    return await self._record(row)
                continue
            if old.spec == spec:
                return await self._record(old)
            try:
                retimed = Schedule.from_spec(old.spec).timing != schedule.timing
            except ValueError:
                retimed = True  # unreadable: start afresh
            anchor = _anchor(schedule, now) if retimed else old.anchor
            next_fire = old.next_fire_at
            if retimed or (schedule.enabled and not old.enabled):
                next_fire = schedule.next_after(now, anchor=anchor)
            row = old.replace(
                spec=spec,
                enabled=schedule.enabled,
                next_fire_at=next_fire,
                anchor=anchor,
                updated_at=now,
                version=old.version + 1,
            )
            if await self.store.save_schedule(row, expected=old.version):
                return await self._record(row)
        raise RuntimeError(f"schedule {schedule.id!r} kept changing under {_CAS_TRIES} tries")

    async def delete(self, id: str) -> bool:
        """Delete a schedule; the executions it made stay. Returns False if it did not exist."""
        return await self.store.delete_schedule(id)

    async def pause(self, id: str) -> ScheduleRecord:
        """Disable a schedule: it fires nothing until resumed.

        Raises:
            LookupError: no schedule with this id.
        """

        def change(old: ScheduleRow, now: datetime) -> ScheduleRow | None:
            if not old.enabled:
                return None
            return old.replace(enabled=False, spec={**old.spec, "enabled": False}, updated_at=now)

        return await self._change(id, change)

    async def resume(self, id: str) -> ScheduleRecord:
        """Enable a schedule again, from now: the fires it missed while paused are not made.

        Raises:
            LookupError: no schedule with this id.
        """

        def change(old: ScheduleRow, now: datetime) -> ScheduleRow | None:
            if old.enabled:
                return None
            schedule = Schedule.from_spec(old.spec)
            return old.replace(
                enabled=True,
                spec={**old.spec, "enabled": True},
                next_fire_at=schedule.next_after(now, anchor=old.anchor),
                updated_at=now,
            )

        return await self._change(id, change)

    async def trigger(self, id: str) -> JobRecord:
        """Make one execution now, off the cadence (paused or not), with id
        ``f"{id}@manual-…"``; an exclusive schedule with an unfinished execution records it
        as FAILED 409 instead.

        Raises:
            LookupError: no schedule with this id.
        """
        row = await self.store.get_schedule(id)
        if row is None:
            raise LookupError(f"no schedule with id {id!r} in {self.store.url}")
        schedule = Schedule.from_spec(row.spec)
        now = clock_of(self.store).now()
        job_id = f"{id}@manual-{now:%Y%m%dT%H%M%S}{now.microsecond:06d}Z-{uuid.uuid4().hex[:6]}"
        record = schedule.execution(job_id, fire=now, now=now)
        return await self.store.add_execution(record, exclusive=schedule.exclusive)

    async def sync(self, schedules: Iterable[Schedule], *, prefix: str) -> list[ScheduleRecord]:
        """Make the stored schedules whose id starts with ``prefix`` exactly ``schedules``:
        put each (unchanged ones stay as they are) and delete the others under ``prefix``.

        Returns:
            The records of ``schedules``, in order.

        Raises:
            ValueError: a schedule's id does not start with ``prefix``, or two share an id.
            TypeError: an item is not a Schedule, or ``prefix`` not a str.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        wanted: dict[str, Schedule] = {}
        for schedule in schedules:
            if not isinstance(schedule, Schedule):
                raise TypeError(f"sync needs Schedules, got {type(schedule).__name__}")
            if not schedule.id.startswith(prefix):
                raise ValueError(f"schedule id {schedule.id!r} does not start with {prefix!r}")
            if schedule.id in wanted:
                raise ValueError(f"two schedules with id {schedule.id!r}")
            wanted[schedule.id] = schedule
        records = [await self.put(schedule) for schedule in wanted.values()]
        after: str | None = None
        while True:
            page = await self.store.list_schedules(prefix=prefix, limit=_PAGE, after=after)
            for row in page:
                if row.id not in wanted:
                    await self.store.delete_schedule(row.id)
            if len(page) < _PAGE:
                return records
            after = page[-1].id

    # -- reading ------------------------------------------------------------------------------

    async def get(self, id: str) -> ScheduleRecord | None:
        """Return the schedule's record, or None."""
        row = await self.store.get_schedule(id)
        return await self._record(row) if row is not None else None

    async def list(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[ScheduleRecord]:
        """Return up to ``limit`` schedules ordered by id.

        Args:
            prefix: only ids starting with it.
            enabled: only enabled (True) or paused (False) ones.
            limit: the page size.
            after: the last id of the previous page.

        Raises:
            ValueError: a negative limit.
        """
        rows = await self.store.list_schedules(
            prefix=prefix, enabled=enabled, limit=_limit(limit), after=after
        )
        return [await self._record(row) for row in rows]

    async def executions(
        self,
        id: str,
        *,
        state: JobState | str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Return the schedule's executions, newest first (deleted schedules' too).

        Args:
            id: the schedule id.
            state: only executions in this state.
            limit: the page size.
            before: the last id of the previous page.

        Raises:
            ValueError: an unknown state or a negative limit.
        """
        return await self.store.executions(
            id,
            state=JobState(state) if state is not None else None,
            limit=_limit(limit),
            before=before,
        )


class SyncSchedules:
    """The synchronous twin of :class:`Schedules`: the same methods, blocking, for code with
    no event loop. Close it with :meth:`close` or use it as a context manager::

        with SyncSchedules("sqlite:///jobs.db") as schedules:
            schedules.put(Schedule("nightly", "@daily", Job("cleanup")))

    Args:
        url_or_store: a store URL, or a store object not entered yet.
        **options: options for :func:`~work.stores.open_store` when given a URL.
    """

    def __init__(self, url_or_store: str | Store, **options: Any) -> None:
        schedules = Schedules(url_or_store, **options)
        self.store = schedules.store
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._cm: AbstractContextManager[Schedules] | None = None
        try:
            cm = self._portal.wrap_async_context_manager(schedules)
            self._schedules = cm.__enter__()
            self._cm = cm
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    def __repr__(self) -> str:
        return f"SyncSchedules({self.store.url!r})"

    def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        if self._cm is None:
            raise RuntimeError(f"{self!r} is closed")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    def put(self, schedule: Schedule) -> ScheduleRecord:
        """Create or replace a schedule; see :meth:`Schedules.put`."""
        record: ScheduleRecord = self._call(self._schedules.put, schedule)
        return record

    def get(self, id: str) -> ScheduleRecord | None:
        """Return the schedule's record, or None; see :meth:`Schedules.get`."""
        record: ScheduleRecord | None = self._call(self._schedules.get, id)
        return record

    def list(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[ScheduleRecord]:
        """Return a page of schedules; see :meth:`Schedules.list`."""
        records: list[ScheduleRecord] = self._call(
            self._schedules.list, prefix=prefix, enabled=enabled, limit=limit, after=after
        )
        return records

    def delete(self, id: str) -> bool:
        """Delete a schedule; see :meth:`Schedules.delete`."""
        return bool(self._call(self._schedules.delete, id))

    def pause(self, id: str) -> ScheduleRecord:
        """Disable a schedule; see :meth:`Schedules.pause`."""
        record: ScheduleRecord = self._call(self._schedules.pause, id)
        return record

    def resume(self, id: str) -> ScheduleRecord:
        """Enable a schedule from now; see :meth:`Schedules.resume`."""
        record: ScheduleRecord = self._call(self._schedules.resume, id)
        return record

    def trigger(self, id: str) -> JobRecord:
        """Make one execution now; see :meth:`Schedules.trigger`."""
        record: JobRecord = self._call(self._schedules.trigger, id)
        return record

    def executions(
        self,
        id: str,
        *,
        state: JobState | str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Return the schedule's executions, newest first; see :meth:`Schedules.executions`."""
        records: list[JobRecord] = self._call(
            self._schedules.executions, id, state=state, limit=limit, before=before
        )
        return records

    def sync(self, schedules: Iterable[Schedule], *, prefix: str) -> builtins.list[ScheduleRecord]:
        """Make the stored schedules under ``prefix`` exactly these; see
        :meth:`Schedules.sync`."""
        records: list[ScheduleRecord] = self._call(
            self._schedules.sync, list(schedules), prefix=prefix
        )
        return records

    def close(self) -> None:
        """Leave the store and stop the background event loop. Calling it again does nothing."""
        cm, self._cm = self._cm, None
        if cm is None:
            return
        try:
            cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
