"""``MemoryStore``: the in-process reference store (``memory://``), for tests and examples."""

from __future__ import annotations

import builtins
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import anyio

from .._core.clock import SYSTEM, Clock
from .._core.exceptions import JobStateError
from .._core.status import Status
from .._durable.events import (
    DEFAULT_EVENT_BUFFER,
    EventHub,
    EventStream,
    JobEvent,
    JobEventKind,
    check_event_filters,
    kind_for_change,
)
from ._activity import first_minute, minute_series
from ._args import args_match, check_args_filter
from ._base import (
    DEFAULT_LOST_LIMIT,
    FINAL_STATES,
    UNFINISHED_STATES,
    Claimed,
    Fired,
    JobRecord,
    JobState,
    Outcome,
    Plan,
    ScheduleRow,
    WorkerInfo,
    conflict_record,
)
from ._memory_workflows import MemoryWorkflows

__all__ = ["MemoryStore"]

_WORKER_LOST = "worker lost"
# How often a waiter re-checks for work that another thread added (same-thread adds wake it
# at once; an anyio Event cannot safely be set from another event loop's thread).
_CROSS_THREAD_POLL = 0.05


class _Notifier:
    """Wakes tasks waiting for work in this process.

    ``notify`` sets the anyio Events of the waiters in the caller's thread (its event loop) at
    once, and bumps a generation counter that waiters in other threads see on their next poll:
    an anyio Event must not be set from another event loop's thread.
    """

    __slots__ = ("_lock", "_waiters", "generation")

    def __init__(self) -> None:
        self._waiters: dict[int, set[anyio.Event]] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def notify(self) -> None:
        """Wake the waiters (at once in this thread, on their next poll elsewhere)."""
        with self._lock:
            self.generation += 1
            events = list(self._waiters.get(threading.get_ident(), ()))
        for event in events:
            event.set()

    async def wait(self, timeout: float, clock: Clock = SYSTEM) -> None:
        """Return after a ``notify`` or ``timeout`` seconds, whichever comes first."""
        if clock.virtual:
            await self._wait_virtual(timeout, clock)
            return
        ident = threading.get_ident()
        deadline = anyio.current_time() + max(timeout, 0.0)
        event = anyio.Event()
        with self._lock:
            start = self.generation
            self._waiters.setdefault(ident, set()).add(event)
        try:
            while True:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    return
                with anyio.move_on_after(min(remaining, _CROSS_THREAD_POLL)):
                    await event.wait()
                    return
                if self.generation != start:
                    return
        finally:
            with self._lock:
                waiters = self._waiters.get(ident)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[ident]

    async def _wait_virtual(self, timeout: float, clock: Clock) -> None:
        # One event loop only (a VirtualClock is driven from its test): no cross-thread poll.
        with self.listen() as event:
            await clock.wait(event, timeout)

    @contextmanager
    def listen(self) -> Iterator[anyio.Event]:
        """Register an Event that the next ``notify`` in this thread sets."""
        event = anyio.Event()
        ident = threading.get_ident()
        with self._lock:
            self._waiters.setdefault(ident, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiters = self._waiters.get(ident)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[ident]


def _event(
    kind: JobEventKind | None, rec: JobRecord, at: datetime, progress: dict[str, Any] | None = None
) -> builtins.list[JobEvent]:
    """The event for a change to ``rec`` (already changed), as a list of 0 or 1."""
    if kind is None:
        return []
    return [
        JobEvent(
            kind=kind,
            job_id=rec.id,
            queue=rec.queue,
            handler=rec.handler,
            status=rec.status,
            attempt=rec.attempts,
            at=at,
            progress=progress,
            schedule_id=rec.schedule_id,
        )
    ]


def _added_events(records: Sequence[JobRecord], at: datetime) -> builtins.list[JobEvent]:
    """The events of executions a schedule added (ENQUEUED, or FAILED for a 409 record)."""
    events: list[JobEvent] = []
    for rec in records:
        events += _event(kind_for_change(None, rec.state.value), rec, at)
    return events


@dataclass(slots=True)
class _Row:
    """A stored job: its record with args and result kept as JSON text, plus the lease."""

    record: JobRecord
    args_json: str
    result_json: str | None
    seq: int
    owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    lost: int = 0  # how many times the job's worker was lost (see Store.reap)
    unknown_since: datetime | None = None  # see Outcome.unknown_since


def _due(row: _Row) -> datetime:
    rec = row.record
    due = rec.scheduled_for or rec.enqueued_at
    return due if due is not None else datetime.min.replace(tzinfo=UTC)


class MemoryStore(MemoryWorkflows):
    """The reference store: jobs live in this process's memory and die with it.

    It implements the :class:`~work.stores.Store` protocol exactly (the conformance suite runs
    on it first) and works on asyncio and trio. Args, headers and results go through JSON on
    the way in, as in a durable store, so what a test sees here is what it would see there.

    It is meant for tests, examples and single-process programs that want the queue's
    semantics without durability. Use it from one event loop; a second thread's event loop may
    use it too, but then learns of new work by polling (every 50 ms).

    Args:
        url: ``"memory://"`` (anything after the scheme is ignored).
        clock: the time every due time, claim, lease, deadline and retention is read from
            (default: the system clock; a :class:`work.testing.VirtualClock` in tests).
    """

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a work.testing.VirtualClock or None, got {clock!r}")
        self.url = url
        self.clock: Clock = clock or SYSTEM
        self._rows: dict[str, _Row] = {}
        # The rows that are not final: claims, reaps and waits only look at these.
        self._active: dict[str, _Row] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._notifier = _Notifier()
        self._schedules: dict[str, tuple[ScheduleRow, str]] = {}  # id -> (row, spec JSON)
        self._settings: dict[str, str] = {}
        # Events are published from whichever thread changed a job: subscribers of other
        # threads look for them every 50 ms, as waiters for work do.
        self._hub = EventHub(poll=_CROSS_THREAD_POLL)
        self._workers: dict[str, WorkerInfo] = {}
        self._wf_init()

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r}, jobs={len(self._rows)})"

    async def __aenter__(self) -> Self:
        """Return the store (there is nothing to connect)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Do nothing: the jobs stay, so the store can be entered again."""

    def _wake_at(self, rec: JobRecord) -> None:
        """Tell a virtual clock when ``rec`` falls due (its due time, its deadline)."""
        if self.clock.virtual:
            for when in (rec.scheduled_for, rec.deadline):
                if when is not None:
                    self.clock.wake_at(when.timestamp())

    # -- reading ------------------------------------------------------------------------------

    def _snapshot(self, row: _Row) -> JobRecord:
        try:
            args = json.loads(row.args_json)
        except ValueError:
            args = {}
        if not isinstance(args, dict):
            args = {}
        result = json.loads(row.result_json) if row.result_json is not None else None
        return row.record.replace(
            args=args,
            headers=dict(row.record.headers),
            result=result,
            retry=_copy(row.record.retry),
            progress=_copy(row.record.progress),
        )

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None."""
        with self._lock:
            row = self._rows.get(id)
            return self._snapshot(row) if row is not None else None

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> list[JobRecord]:
        """Return up to ``limit`` records matching the filters, in enqueue order.

        ``after`` is the last id of the previous page; an id the store does not know gives an
        empty page. ``args``: see :meth:`work.stores.Store.list` (compared in Python here).
        """
        wanted = check_args_filter(args)
        with self._lock:
            start = -1
            if after is not None:
                after_row = self._rows.get(after)
                if after_row is None:
                    return []
                start = after_row.seq
            out: list[JobRecord] = []
            # Rows are inserted once, in seq order: the dict's order is enqueue order.
            for row in self._rows.values():
                if len(out) >= limit:
                    break
                rec = row.record
                if row.seq <= start:
                    continue
                if state is not None and rec.state != state:
                    continue
                if queue is not None and rec.queue != queue:
                    continue
                if handler is not None and rec.handler != handler:
                    continue
                if schedule_id is not None and rec.schedule_id != schedule_id:
                    continue
                if wanted is not None and not _args_match_row(row.args_json, wanted):
                    continue
                out.append(self._snapshot(row))
            return out

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}`` for every queue holding jobs."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for row in self._rows.values():
                counts = out.setdefault(row.record.queue, {})
                counts[row.record.state.value] = counts.get(row.record.state.value, 0) + 1
            return out

    async def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return the last hour's finished jobs per queue and minute (see
        :meth:`work.stores.Store.finished_per_minute`), counted from the rows."""
        now = self.clock.now()
        since = first_minute(now)
        with self._lock:
            found = Counter(
                (rec.queue, int(rec.finished_at.timestamp() // 60), rec.state.value)
                for rec in (row.record for row in self._rows.values())
                if rec.finished_at is not None
                and rec.state in (JobState.SUCCEEDED, JobState.FAILED)
                and rec.finished_at.timestamp() // 60 >= since
            )
        return minute_series(((q, m, st, n) for (q, m, st), n in found.items()), now)

    # -- producing ----------------------------------------------------------------------------

    async def add(self, records: Sequence[JobRecord]) -> builtins.list[JobRecord]:
        """Insert jobs; an existing id or an active job with the same unique key is returned
        instead (see :meth:`work.stores.Store.add`)."""
        out: list[JobRecord] = []
        added = False
        events: list[JobEvent] = []
        with self._lock:
            for rec in records:
                existing = self._rows.get(rec.id)
                if existing is None and rec.unique_key is not None:
                    existing = next(
                        (
                            row
                            for row in self._active.values()
                            if row.record.unique_key == rec.unique_key
                            and row.record.queue == rec.queue
                        ),
                        None,
                    )
                if existing is not None:
                    out.append(self._snapshot(existing))
                    continue
                self._seq += 1
                result_json = json.dumps(rec.result) if rec.result is not None else None
                row = _Row(
                    record=rec.replace(
                        args={},
                        result=None,
                        headers=dict(rec.headers),
                        enqueued_at=rec.enqueued_at or self.clock.now(),
                    ),
                    args_json=json.dumps(rec.args),
                    result_json=result_json,
                    seq=self._seq,
                )
                self._rows[rec.id] = self._active[rec.id] = row
                self._wake_at(row.record)
                out.append(self._snapshot(row))
                added = True
                events += _event(
                    kind_for_change(None, rec.state.value), row.record, self.clock.now()
                )
        if added:
            self._notifier.notify()
            self._hub.publish(events)
        return out

    async def cancel(self, id: str) -> bool:
        """Cancel a QUEUED, SCHEDULED or WAITING job at once, or ask a RUNNING one's owner to
        stop.

        Returns False for an unknown or already final job.
        """
        with self._lock:
            events = self._cancel_locked(id)
        if events is None:
            return False
        self._hub.publish(events)
        return True

    def _cancel_locked(self, id: str) -> builtins.list[JobEvent] | None:
        """Cancel (the lock is held); return the events to publish, or None if the job is
        unknown or final."""
        row = self._rows.get(id)
        if row is None or row.record.state.is_final:
            return None
        if row.record.state is JobState.RUNNING:
            row.cancel_requested = True
            return []
        row.record = row.record.replace(
            state=JobState.CANCELLED,
            status=Status.CANCELLED,
            error="cancelled",
            finished_at=self.clock.now(),
            deadline=None,
        )
        del self._active[id]
        self._wf_final(id, JobState.CANCELLED, int(Status.CANCELLED), None, "cancelled")
        return _event(JobEventKind.CANCELLED, row.record, self.clock.now())

    def _insert_locked(self, rec: JobRecord) -> None:
        """Add a new job (the lock is held; its id is known to be free)."""
        self._seq += 1
        row = _Row(
            record=rec.replace(
                args={},
                result=None,
                headers=dict(rec.headers),
                enqueued_at=rec.enqueued_at or self.clock.now(),
            ),
            args_json=json.dumps(rec.args),
            result_json=None,
            seq=self._seq,
        )
        self._rows[rec.id] = self._active[rec.id] = row
        # Published at once (under the lock), so a released step's ENQUEUED may come before
        # the SUCCEEDED of the step that released it.
        self._hub.publish(
            _event(JobEventKind.ENQUEUED, row.record, row.record.enqueued_at or self.clock.now())
        )

    def _notify(self) -> None:
        self._notifier.notify()

    # -- consuming ----------------------------------------------------------------------------

    def _ready(self, row: _Row, queues: Sequence[str], now: datetime) -> bool:
        rec = row.record
        if rec.queue not in queues:
            return False
        if rec.state is JobState.QUEUED:
            return True
        return (
            rec.state is JobState.SCHEDULED
            and rec.scheduled_for is not None
            and rec.scheduled_for <= now
        )

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> builtins.list[Claimed]:
        """Claim up to ``limit`` ready jobs, best first (see :meth:`work.stores.Store.claim`)."""
        if limit <= 0:
            return []
        now = self.clock.now()
        until = now + timedelta(seconds=lease)
        with self._lock:
            ready = [row for row in self._active.values() if self._ready(row, queues, now)]
            ready.sort(key=lambda r: (-r.record.priority, _due(r), r.seq))
            out: list[Claimed] = []
            events: list[JobEvent] = []
            for row in ready[:limit]:
                row.record = row.record.replace(
                    state=JobState.RUNNING, attempts=row.record.attempts + 1, started_at=now
                )
                row.owner, row.lease_until, row.cancel_requested = owner, until, False
                decode_error = _decode_error(row.args_json)
                out.append(Claimed(self._snapshot(row), decode_error, row.unknown_since))
                events += _event(JobEventKind.STARTED, row.record, now)
        self._hub.publish(events)
        return out

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        """Extend ``owner``'s leases on ``ids``; return those it must stop running."""
        until = self.clock.now() + timedelta(seconds=lease)
        stop: set[str] = set()
        with self._lock:
            for id in ids:
                row = self._rows.get(id)
                if row is None or row.record.state is not JobState.RUNNING or row.owner != owner:
                    stop.add(id)
                    continue
                row.lease_until = until
                if row.cancel_requested:
                    stop.add(id)
        return stop

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        """Apply outcomes to jobs RUNNING under ``owner``'s lease; others are left alone.
        Returns the ids whose outcome was applied."""
        now = self.clock.now()
        wake = False
        events: list[JobEvent] = []
        applied: set[str] = set()
        with self._lock:
            for outcome in outcomes:
                row = self._rows.get(outcome.id)
                if row is None or row.record.state is not JobState.RUNNING or row.owner != owner:
                    continue
                applied.add(outcome.id)
                rec = row.record
                waiting = outcome.state is JobState.WAITING
                if outcome.state is JobState.SUCCEEDED or waiting:
                    row.result_json = json.dumps(outcome.result)
                row.record = rec.replace(
                    deadline=outcome.deadline if waiting else None,
                    deferred_ttl=outcome.ttl if waiting else rec.deferred_ttl,
                    state=outcome.state,
                    status=outcome.status,
                    error=outcome.error,
                    scheduled_for=(
                        outcome.scheduled_for if outcome.state is JobState.SCHEDULED else None
                    ),
                    finished_at=now if outcome.state.is_final else None,
                    attempts=max(rec.attempts - 1, 0)
                    if outcome.give_back_attempt
                    else rec.attempts,
                    deferrals=rec.deferrals + 1 if outcome.deferral else rec.deferrals,
                )
                row.owner, row.lease_until, row.cancel_requested = None, None, False
                row.unknown_since = outcome.unknown_since
                self._wake_at(row.record)
                if outcome.state.is_final:
                    self._active.pop(outcome.id, None)
                    result_json = row.result_json if outcome.state is JobState.SUCCEEDED else None
                    # A workflow step: its barrier, successors and workflow, under this lock.
                    self._wf_final(
                        outcome.id, outcome.state, int(outcome.status), result_json, outcome.error
                    )
                    wake = wake or outcome.id in self._wf_steps
                wake = wake or not outcome.state.is_final
                kind = kind_for_change("running", outcome.state.value, attempts_kept=False)
                events += _event(kind, row.record, now)
        if wake:
            self._notifier.notify()
        self._hub.publish(events)
        return applied

    async def reap(self, *, lost_limit: int = DEFAULT_LOST_LIMIT) -> int:
        """Put back (or fail after ``lost_limit`` losses, or cancel) RUNNING jobs whose lease
        expired; return how many (see :meth:`work.stores.Store.reap`)."""
        now = self.clock.now()
        changed = 0
        events: list[JobEvent] = []
        with self._lock:
            for row in list(self._active.values()):
                rec = row.record
                if rec.state is not JobState.RUNNING:
                    continue
                if row.lease_until is not None and row.lease_until > now:
                    continue
                if row.cancel_requested:
                    row.record = rec.replace(
                        state=JobState.CANCELLED,
                        status=Status.CANCELLED,
                        error="cancelled",
                        finished_at=now,
                    )
                else:
                    row.lost += 1
                    if row.lost < lost_limit:
                        row.record = rec.replace(
                            state=JobState.QUEUED,
                            status=Status.INTERNAL_ERROR,
                            error=_WORKER_LOST,
                            scheduled_for=None,
                        )
                    else:
                        row.record = rec.replace(
                            state=JobState.FAILED,
                            status=Status.INTERNAL_ERROR,
                            error=_WORKER_LOST,
                            finished_at=now,
                        )
                row.owner, row.lease_until, row.cancel_requested = None, None, False
                if row.record.state.is_final:
                    del self._active[rec.id]
                    final = row.record
                    self._wf_final(final.id, final.state, int(final.status), None, final.error)
                changed += 1
                events += _event(kind_for_change("running", row.record.state), row.record, now)
        if changed:
            self._notifier.notify()
            self._hub.publish(events)
        return changed

    async def settle(self, outcome: Outcome, *, only_expired: bool = False) -> JobRecord | None:
        """Apply ``outcome`` to a WAITING job (see :meth:`work.stores.Store.settle`)."""
        now = self.clock.now()
        with self._lock:
            row = self._rows.get(outcome.id)
            if row is None:
                if only_expired:
                    return None
                raise LookupError(f"no job with id {outcome.id!r} in {self.url}")
            rec = row.record
            if rec.state is not JobState.WAITING:
                if only_expired:
                    return None
                raise JobStateError(rec.id, rec.state.value)
            if only_expired and (rec.deadline is None or rec.deadline > now):
                return None
            if outcome.state is JobState.SUCCEEDED:
                row.result_json = json.dumps(outcome.result)
            row.record = rec.replace(
                state=outcome.state,
                status=outcome.status,
                error=outcome.error,
                scheduled_for=(
                    outcome.scheduled_for if outcome.state is JobState.SCHEDULED else None
                ),
                finished_at=now if outcome.state.is_final else None,
                deadline=None,
            )
            if outcome.state.is_final:
                self._active.pop(outcome.id, None)
                result_json = row.result_json if outcome.state is JobState.SUCCEEDED else None
                self._wf_final(
                    outcome.id, outcome.state, int(outcome.status), result_json, outcome.error
                )
                if outcome.id in self._wf_steps:
                    self._notifier.notify()
            self._wake_at(row.record)
            settled = self._snapshot(row)
            kind = kind_for_change("waiting", outcome.state.value)
            events = _event(kind, row.record, now)
        if not outcome.state.is_final:
            self._notifier.notify()
        self._hub.publish(events)
        return settled

    async def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Push a WAITING job's deadline (see :meth:`work.stores.Store.heartbeat`)."""
        with self._lock:
            row = self._rows.get(id)
            if row is None:
                raise LookupError(f"no job with id {id!r} in {self.url}")
            rec = row.record
            if rec.state is not JobState.WAITING:
                raise JobStateError(id, rec.state.value)
            seconds = ttl if ttl is not None else rec.deferred_ttl
            row.record = rec.replace(deadline=self.clock.now() + timedelta(seconds=seconds or 0.0))
            self._wake_at(row.record)
            return self._snapshot(row)

    async def overdue(self, *, limit: int = 100) -> builtins.list[JobRecord]:
        """Return up to ``limit`` WAITING jobs whose deadline has passed, earliest first."""
        now = self.clock.now()
        with self._lock:
            rows = [
                row
                for row in self._active.values()
                if row.record.state is JobState.WAITING
                and row.record.deadline is not None
                and row.record.deadline <= now
            ]
            rows.sort(key=lambda r: (r.record.deadline or now, r.seq))
            return [self._snapshot(row) for row in rows[: max(limit, 0)]]

    async def setdefault_setting(self, key: str, value: str) -> str:
        """Return the setting ``key``, storing ``value`` first if there is none (kept as long
        as this store object)."""
        with self._lock:
            return self._settings.setdefault(key, value)

    async def get_setting(self, key: str) -> str | None:
        """Return the setting ``key``, or None."""
        with self._lock:
            return self._settings.get(key)

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` as the setting ``key`` (replacing any)."""
        with self._lock:
            self._settings[key] = value

    # -- retention ------------------------------------------------------------------------------

    def _delete(self, ids: Sequence[str]) -> None:
        workflows = self._wf_owners(ids)
        for id in ids:
            del self._rows[id]
        self._wf_forget(workflows)  # a finished workflow goes with its last job

    async def purge(
        self, *, older_than: datetime, states: Sequence[JobState], limit: int | None = None
    ) -> int:
        """Delete finished jobs in ``states`` that finished before ``older_than`` (see
        :meth:`work.stores.Store.purge`)."""
        wanted = set(states) & set(FINAL_STATES)
        with self._lock:
            ids = [
                id
                for id, row in self._rows.items()
                if row.record.state in wanted
                and row.record.finished_at is not None
                and row.record.finished_at < older_than
            ][:limit]
            self._delete(ids)
        return len(ids)

    async def expire(self, queues: Sequence[str], *, result_ttl: float, limit: int) -> int:
        """Delete up to ``limit`` finished jobs whose time is up (see
        :meth:`work.stores.Store.expire`)."""
        now = self.clock.now()
        ids: list[str] = []
        with self._lock:
            for id, row in self._rows.items():
                rec = row.record
                if len(ids) >= limit:
                    break
                if not rec.state.is_final or rec.finished_at is None:
                    continue
                if rec.result_ttl is None and rec.queue not in queues:
                    continue
                ttl = result_ttl if rec.result_ttl is None else rec.result_ttl
                if rec.finished_at + timedelta(seconds=ttl) <= now:
                    ids.append(id)
            self._delete(ids)
        return len(ids)

    async def retry(self, id: str) -> JobRecord | None:
        """Queue a FAILED or CANCELLED job again, due now (see :meth:`work.stores.Store.retry`).

        Raises:
            ValueError: the job is in another state, or its unique key is taken.
        """
        with self._lock:
            row = self._rows.get(id)
            if row is None:
                return None
            rec = row.record
            if rec.state not in (JobState.FAILED, JobState.CANCELLED):
                raise ValueError(
                    f"job {id!r} is {rec.state.value}: only a failed or cancelled job can be "
                    f"retried"
                )
            if rec.unique_key is not None:
                for other in self._active.values():
                    if (
                        other.record.unique_key == rec.unique_key
                        and other.record.queue == rec.queue
                    ):
                        raise ValueError(
                            f"job {other.record.id!r} holds unique_key {rec.unique_key!r} in "
                            f"queue {rec.queue!r} and is not finished"
                        )
            row.record = rec.replace(
                state=JobState.QUEUED,
                status=Status.UNKNOWN,
                attempts=0,
                deferrals=0,
                error=None,
                scheduled_for=None,
                started_at=None,
                finished_at=None,
                enqueued_at=self.clock.now(),  # due now: after the jobs already waiting
            )
            row.result_json = None
            row.lost, row.unknown_since = 0, None
            self._active[id] = row
            self._wf_retried(id)  # the failed step of a FAILED workflow: it runs again
            snapshot = self._snapshot(row)
            events = _event(JobEventKind.ENQUEUED, row.record, self.clock.now())
        self._notifier.notify()
        self._hub.publish(events)
        return snapshot

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job in ``queues`` may be ready, or after ``timeout`` seconds."""
        now = self.clock.now()
        with self._lock:
            next_due: datetime | None = None
            for row in self._active.values():
                if self._ready(row, queues, now):
                    return
                rec = row.record
                if (
                    rec.state is JobState.SCHEDULED
                    and rec.queue in queues
                    and rec.scheduled_for is not None
                    and (next_due is None or rec.scheduled_for < next_due)
                ):
                    next_due = rec.scheduled_for
        if next_due is not None:
            # Wake a little after the due time so the claim that follows finds it ready (on a
            # virtual clock, exactly at it: time stops there, and stands still).
            slack = 0.0 if self.clock.virtual else 0.001
            timeout = min(timeout, (next_due - now).total_seconds() + slack)
        await self._notifier.wait(timeout, self.clock)

    # -- schedules ------------------------------------------------------------------------------

    def _schedule(self, id: str) -> ScheduleRow | None:
        entry = self._schedules.get(id)
        if entry is None:
            return None
        row, spec_json = entry
        return row.replace(spec=json.loads(spec_json))

    async def get_schedule(self, id: str) -> ScheduleRow | None:
        """Return the schedule's row, or None."""
        with self._lock:
            return self._schedule(id)

    async def list_schedules(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[ScheduleRow]:
        """Return up to ``limit`` schedules ordered by id (see
        :meth:`work.stores.Store.list_schedules`)."""
        with self._lock:
            ids = sorted(self._schedules, key=lambda i: i.encode())
            out: list[ScheduleRow] = []
            for id in ids:
                if len(out) >= limit:
                    break
                if after is not None and id.encode() <= after.encode():
                    continue
                if prefix is not None and not id.startswith(prefix):
                    continue
                row = self._schedule(id)
                if row is not None and (enabled is None or row.enabled == enabled):
                    out.append(row)
            return out

    async def save_schedule(self, row: ScheduleRow, *, expected: int | None) -> bool:
        """Write ``row`` if the stored version is ``expected`` (None: only a new id)."""
        spec_json = json.dumps(row.spec)
        with self._lock:
            entry = self._schedules.get(row.id)
            current = entry[0].version if entry is not None else None
            if current != expected:
                return False
            self._schedules[row.id] = (row.replace(spec={}), spec_json)
            return True

    async def delete_schedule(self, id: str) -> bool:
        """Delete the schedule (its executions stay); False if it did not exist."""
        with self._lock:
            return self._schedules.pop(id, None) is not None

    def _add_execution(self, record: JobRecord, *, exclusive: bool, now: datetime) -> JobRecord:
        """Add a schedule's execution (under the lock); the existing record if its id is
        taken, a 409 record if ``exclusive`` and another execution is unfinished."""
        existing = self._rows.get(record.id)
        if existing is not None:
            return self._snapshot(existing)
        if exclusive and any(
            row.record.schedule_id == record.schedule_id
            and row.record.state.value in UNFINISHED_STATES
            for row in self._active.values()
        ):
            record = conflict_record(record, now)
        self._seq += 1
        row = _Row(
            record=record.replace(args={}, result=None, headers=dict(record.headers)),
            args_json=json.dumps(record.args),
            result_json=None,
            seq=self._seq,
        )
        self._rows[record.id] = row
        if not record.state.is_final:
            self._active[record.id] = row
        return self._snapshot(row)

    async def fire_schedules(
        self, now: datetime, plan: Plan, *, limit: int
    ) -> builtins.list[Fired]:
        """Fire due schedules under the store's lock (see
        :meth:`work.stores.Store.fire_schedules`)."""
        out: list[Fired] = []
        with self._lock:
            due = sorted(
                (
                    row
                    for row, _ in self._schedules.values()
                    if row.enabled and row.next_fire_at is not None and row.next_fire_at <= now
                ),
                key=lambda r: (r.next_fire_at, r.id),
            )[:limit]
            for row in due:
                full = self._schedule(row.id)
                assert full is not None
                firing = plan(full)
                if firing.version != row.version:
                    continue
                self._schedules[row.id] = (
                    row.replace(
                        next_fire_at=firing.next_fire_at,
                        last_fire_at=firing.last_fire_at or row.last_fire_at,
                        version=row.version + 1,
                    ),
                    self._schedules[row.id][1],
                )
                record = None
                if firing.job is not None and firing.job.id not in self._rows:
                    record = self._add_execution(firing.job, exclusive=firing.exclusive, now=now)
                out.append(Fired(firing, record))
        added = [f.record for f in out if f.record is not None]
        if added:
            self._notifier.notify()
            self._hub.publish(_added_events(added, now))
        return out

    async def add_execution(self, record: JobRecord, *, exclusive: bool) -> JobRecord:
        """Add one execution off the schedule's cadence (409 if exclusive and one is
        unfinished)."""
        now = self.clock.now()
        with self._lock:
            new = record.id not in self._rows
            stored = self._add_execution(record, exclusive=exclusive, now=now)
        self._notifier.notify()
        if new:
            self._hub.publish(_added_events([stored], now))
        return stored

    async def executions(
        self,
        schedule_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Return the schedule's jobs, newest first; ``before`` is the previous page's last
        id."""
        with self._lock:
            end = self._seq + 1
            if before is not None:
                before_row = self._rows.get(before)
                if before_row is None:
                    return []
                end = before_row.seq
            out: list[JobRecord] = []
            for row in reversed(self._rows.values()):
                if len(out) >= limit:
                    break
                rec = row.record
                if row.seq >= end or rec.schedule_id != schedule_id:
                    continue
                if state is not None and rec.state != state:
                    continue
                out.append(self._snapshot(row))
            return out

    async def next_schedule_due(self) -> datetime | None:
        """Return the earliest next fire of an enabled schedule, or None."""
        with self._lock:
            dues = [
                row.next_fire_at
                for row, _ in self._schedules.values()
                if row.enabled and row.next_fire_at is not None
            ]
        return min(dues, default=None)

    # -- events -------------------------------------------------------------------------------

    async def set_progress(self, owner: str, progress: Mapping[str, dict[str, Any]]) -> None:
        """Set the progress of jobs RUNNING under ``owner``'s lease; emit PROGRESS for each."""
        now = self.clock.now()
        events: list[JobEvent] = []
        with self._lock:
            for id, value in progress.items():
                row = self._rows.get(id)
                if row is None or row.record.state is not JobState.RUNNING or row.owner != owner:
                    continue
                row.record = row.record.replace(progress=dict(value))
                events += _event(JobEventKind.PROGRESS, row.record, now, dict(value))
        self._hub.publish(events)

    @asynccontextmanager
    async def events(
        self,
        *,
        kinds: Iterable[JobEventKind] | None = None,
        queues: Iterable[str] | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> AsyncIterator[EventStream]:
        """Subscribe to this store's job events (see :meth:`work.stores.Store.events`).

        In process: every change made through this store object, from any thread.
        """
        kind_set, queue_set = check_event_filters(kinds, queues)
        with self._hub.open(kinds=kind_set, queues=queue_set, buffer=buffer) as stream:
            yield stream

    # -- worker registry ------------------------------------------------------------------

    async def record_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a serving worker's registry entry."""
        with self._lock:
            self._workers[info.id] = info

    async def workers(self) -> builtins.list[WorkerInfo]:
        """Return every registered worker, by ``started_at``."""
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: (w.started_at, w.id))

    async def remove_worker(self, id: str) -> None:
        """Delete a worker's registry entry."""
        with self._lock:
            self._workers.pop(id, None)


def _decode_error(args_json: str) -> str | None:
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        return f"job args are not valid JSON: {exc}"
    if not isinstance(args, dict):
        return f"job args must be a JSON object, got {type(args).__name__}"
    return None


def _copy(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


def _args_match_row(args_json: str, wanted: Mapping[str, Any]) -> bool:
    """True when a row's stored args (JSON text) match an args filter; undecodable args
    never match."""
    try:
        args = json.loads(args_json)
    except ValueError:
        return False
    return isinstance(args, dict) and args_match(args, wanted)
