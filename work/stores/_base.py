"""The Store protocol and the records it keeps: the contract every durable store implements.

A store keeps jobs and their states; it does not run anything. ``Queue`` (the producer side)
and ``Worker.serve`` (the consumer side) are written once against this protocol, so every store
has the same semantics, proven by the shared conformance suite in ``tests/stores/``.

Life of a job in a store::

    add ──> QUEUED ─────────────┐            ┌──> SUCCEEDED
      └───> SCHEDULED (due later)┴─ claim ─> RUNNING ──┼──> FAILED
              ^                                        ├──> CANCELLED
              └────────── complete(SCHEDULED) ─────────┤    (retry wait / RetryLater)
                  QUEUED <── complete(QUEUED) ─────────┘    (hand-back on shutdown)
                  QUEUED / FAILED <── reap (lease expired: the worker was lost)

    RUNNING ── complete(WAITING) ──> WAITING ── settle ──> SUCCEEDED / FAILED / SCHEDULED
      (the handler returned Deferred)    ^  heartbeat (deadline pushed)
                                         └─ (Queue.complete, a callback, or a passed deadline)

Every time is an aware UTC datetime. Stores fence every write of a RUNNING job with the
``owner`` token given to :meth:`Store.claim`: a worker whose lease expired and whose job was
claimed again can no longer complete it.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from .._core.status import Status

if TYPE_CHECKING:
    from .._durable.events import EventStream, JobEventKind

__all__ = [
    "CONFLICT_ERROR",
    "DEFAULT_LOST_LIMIT",
    "DEFAULT_RESULT_TTL",
    "FINAL_STATES",
    "UNFINISHED_STATES",
    "Claimed",
    "Fired",
    "Firing",
    "JobRecord",
    "JobState",
    "Outcome",
    "ScheduleRow",
    "Store",
    "WorkerInfo",
    "WorkflowStore",
    "conflict_record",
]


class JobState(StrEnum):
    """Where a job is in its life in a store."""

    QUEUED = "queued"
    """Ready to be claimed now."""
    SCHEDULED = "scheduled"
    """Due later: a delay, an ETA or a retry wait (``scheduled_for`` says when)."""
    RUNNING = "running"
    """Claimed by a worker that holds its lease."""
    WAITING = "waiting"
    """The handler returned ``Deferred`` (status 202): no worker holds it; ``Queue.complete``
    finishes it, or its ``deadline`` passes (FAILED 504, or retried)."""
    SUCCEEDED = "succeeded"
    """Finished with a 2xx status; ``result`` holds the handler's return value."""
    FAILED = "failed"
    """Finished for good with a non-2xx status; ``error`` says why."""
    CANCELLED = "cancelled"
    """Cancelled through ``Queue.cancel`` (status 499)."""

    @property
    def is_final(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED: nothing will change the job again."""
        return self in _FINAL


_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A job as a store keeps it (a snapshot; stores never hand out live objects).

    Attributes:
        id: the job's own ``job.id``.
        handler, args, queue, headers: as on the Job.
        priority: higher runs first.
        state: where it is in its life.
        status: the status of the last execution (UNKNOWN until one ends; while a retry waits,
            the last one).
        attempts: how many times it has been claimed (a hand-back or a RetryLater gives the
            attempt back).
        max_attempts: attempts allowed in all (1 without a retry policy).
        result: the handler's return value once SUCCEEDED (JSON).
        error: why the last execution failed, or None.
        unique_key: while a job with this key in this queue is not final, adding another
            returns it instead.
        enqueued_at, scheduled_for, started_at, finished_at: aware UTC datetimes or None.
        timeout: the job's per-execution timeout in seconds, or None.
        retry: the retry settings kept from the RetryPolicy: ``{"backoff": {...},
            "retry_on": [codes], "max_deferrals": n}``, or None for no retries.
        deferrals: how many RetryLater deferrals it has used.
        deadline: while WAITING, when it fails 504 unless completed or heartbeated first.
        deferred_ttl: the ttl of the ``Deferred`` that made it WAITING (the default push of
            ``Queue.heartbeat``), or None.
        result_ttl: seconds the job is kept once finished, or None for the purging worker's
            ``result_ttl`` (7 days by default); see :meth:`Store.expire`.
        progress: the last progress its handler reported under ``serve``
            (``{"fraction": float, "message": str}``), or None.
        schedule_id: the id of the schedule whose execution this job is, or None.
    """

    id: str
    handler: str
    args: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    state: JobState = JobState.QUEUED
    status: Status = Status.UNKNOWN
    attempts: int = 0
    max_attempts: int = 1
    result: Any = None
    error: str | None = None
    unique_key: str | None = None
    enqueued_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timeout: float | None = None
    retry: dict[str, Any] | None = None
    deferrals: int = 0
    deadline: datetime | None = None
    deferred_ttl: float | None = None
    result_ttl: float | None = None
    progress: dict[str, Any] | None = None
    schedule_id: str | None = None

    def replace(self, **changes: Any) -> JobRecord:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def workflow_id(self) -> str | None:
        """The id of the top-level workflow this job is a step (or the ``on_error`` job) of,
        or None (kept in the ``anywork-workflow-id`` header, so every store keeps it)."""
        return self.headers.get("anywork-workflow-id")


DEFAULT_LOST_LIMIT = 3
"""How many times a job's worker may be lost before :meth:`Store.reap` fails it."""

DEFAULT_RESULT_TTL = 7 * 24 * 3600.0
"""Seconds a finished job is kept, unless the job or the serving worker says otherwise."""

FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
"""The states a job ends in; the only ones :meth:`Store.purge` and :meth:`Store.expire`
delete."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker has claimed: its record (state RUNNING, attempts counted) and, when the
    stored payload could not be decoded, why (the worker then fails it with 400).

    ``unknown_since`` is when a worker first handed the job back because it lacked its handler
    (kept by the store from :attr:`Outcome.unknown_since`), or None.
    """

    record: JobRecord
    decode_error: str | None = None
    unknown_since: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a worker tells the store when it is done with a claimed job.

    Attributes:
        id: the job id.
        state: SUCCEEDED, FAILED or CANCELLED (final); SCHEDULED (a retry after
            ``scheduled_for``); or QUEUED (handed back on shutdown, ready at once).
        status: the execution's final status.
        result: the handler's return value (SUCCEEDED only; JSON-serialisable).
        error: the failure message, or None.
        scheduled_for: when a SCHEDULED job is due again.
        give_back_attempt: True for a hand-back or a RetryLater deferral: ``attempts`` is
            decremented so the claim does not count.
        deferral: True for a RetryLater deferral: ``deferrals`` is incremented.
        deadline: for WAITING (the handler returned ``Deferred``): when the wait ends.
        ttl: for WAITING: the Deferred's ttl, kept as the record's ``deferred_ttl``.
        unknown_since: for a job handed back because this worker lacks its handler, when the
            first such hand-back happened; the store keeps it and returns it with the next
            claim (:attr:`Claimed.unknown_since`). Any other outcome clears it (None).
    """

    id: str
    state: JobState
    status: Status
    result: Any = None
    error: str | None = None
    scheduled_for: datetime | None = None
    give_back_attempt: bool = False
    deferral: bool = False
    deadline: datetime | None = None
    ttl: float | None = None
    unknown_since: datetime | None = None


DEFAULT_WORKER_HEARTBEAT = 5.0
"""Seconds between a serving worker's registry heartbeats (``anywork serve --heartbeat``)."""

WORKER_LOST_AFTER = 3
"""Missed heartbeats after which a registered worker counts as lost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A serving worker as the worker registry keeps it (see :meth:`Store.record_worker`).

    Attributes:
        id: unique per serving process.
        hostname, pid: where it runs.
        queues: the queues it serves.
        handlers: the handler names it has.
        concurrency: how many jobs it runs at once at most.
        running: executions running at its last heartbeat.
        processed: executions finished since it started.
        failed: of those, the ones that did not end 2xx.
        started_at, last_seen: aware UTC datetimes (``last_seen``: its last heartbeat).
        heartbeat: seconds between its heartbeats; unseen for :data:`WORKER_LOST_AFTER` of
            them, it is lost.
    """

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    handlers: tuple[str, ...]
    concurrency: int
    running: int = 0
    processed: int = 0
    failed: int = 0
    started_at: datetime
    last_seen: datetime
    heartbeat: float = DEFAULT_WORKER_HEARTBEAT

    def is_lost(self, now: datetime) -> bool:
        """True when it has not been seen for :data:`WORKER_LOST_AFTER` heartbeats by ``now``."""
        return (now - self.last_seen).total_seconds() > WORKER_LOST_AFTER * self.heartbeat

    def to_json(self) -> str:
        """The JSON text stores keep (times as ISO 8601)."""
        data = dataclasses.asdict(self)
        data["queues"], data["handlers"] = list(self.queues), list(self.handlers)
        data["started_at"] = self.started_at.isoformat()
        data["last_seen"] = self.last_seen.isoformat()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        """Read back what :meth:`to_json` wrote.

        Raises:
            ValueError: the text is not such a record.
        """
        try:
            data = json.loads(text)
            return cls(
                id=str(data["id"]),
                hostname=str(data["hostname"]),
                pid=int(data["pid"]),
                queues=tuple(str(q) for q in data["queues"]),
                handlers=tuple(str(h) for h in data["handlers"]),
                concurrency=int(data["concurrency"]),
                running=int(data["running"]),
                processed=int(data["processed"]),
                failed=int(data["failed"]),
                started_at=datetime.fromisoformat(data["started_at"]),
                last_seen=datetime.fromisoformat(data["last_seen"]),
                heartbeat=float(data["heartbeat"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a worker record: {text!r:.200}") from exc


UNFINISHED_STATES = ("queued", "scheduled", "running", "waiting")
"""The states of an execution that is not over yet, as stored (an exclusive schedule fires
nothing while one of its executions is in one of them)."""

CONFLICT_ERROR = "previous execution still running"
"""The error of a fire an exclusive schedule records as 409 instead of running it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    """A schedule as a store keeps it (a snapshot).

    The store does not interpret ``spec`` (the schedule's own description, JSON): it only
    keeps the columns it queries and changes.

    Attributes:
        id: the schedule id.
        spec: the schedule as JSON (``work.scheduling.Schedule``'s description of itself).
        enabled: a disabled schedule is never due.
        next_fire_at: when it fires next (aware UTC), or None when it never fires again.
        anchor: the instant ``rate()`` counts from.
        last_fire_at: the fire of its last execution made on its cadence, or None.
        created_at, updated_at: aware UTC.
        version: bumped by every change; writes are conditional on it.
    """

    id: str
    spec: dict[str, Any]
    enabled: bool = True
    next_fire_at: datetime | None = None
    anchor: datetime
    last_fire_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    version: int = 1

    def replace(self, **changes: Any) -> ScheduleRow:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Firing:
    """What to do with one due schedule, as the scheduler planned it.

    Attributes:
        schedule_id: the schedule.
        version: the schedule's version the plan was made from: the store applies the firing
            only while the schedule still has it.
        next_fire_at: its new next fire (None: it never fires again).
        last_fire_at: the fire executed (None when this firing executes nothing).
        job: the execution to add, or None.
        exclusive: add the job as FAILED 409 instead while another execution of the schedule
            is unfinished (see :data:`UNFINISHED_STATES`).
        skipped: fires missed for good (older than the misfire grace), for the caller to count.
    """

    schedule_id: str
    version: int
    next_fire_at: datetime | None
    last_fire_at: datetime | None = None
    job: JobRecord | None = None
    exclusive: bool = False
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Fired:
    """A firing a store applied, and the execution it added (a 409 record for an exclusive
    conflict; None when the firing had no job or a job with its id already existed)."""

    firing: Firing
    record: JobRecord | None


def conflict_record(record: JobRecord, now: datetime) -> JobRecord:
    """``record`` as an exclusive schedule's conflicting fire is stored: FAILED, 409, run never.

    Args:
        record: the execution the fire would have added.
        now: when it is recorded.
    """
    return record.replace(
        state=JobState.FAILED,
        status=Status.CONFLICT,
        error=CONFLICT_ERROR,
        finished_at=now,
    )


Plan = Callable[[ScheduleRow], Firing]
"""Turns a due schedule into the firing a store applies (a pure function: no I/O)."""


@runtime_checkable
class Store(Protocol):
    """A durable home for jobs. Implement every method with the semantics below; the shared
    conformance suite (``tests/stores/test_conformance.py``) checks them.

    ``async with store:`` connects and creates or migrates the schema (idempotent and safe when
    several processes start at once) and returns the store; leaving closes it.
    """

    url: str
    """The URL the store was opened with (passwords masked)."""

    async def __aenter__(self) -> Self:
        """Connect, create or migrate the schema, and return the store."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close connections."""
        ...

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Insert jobs in one round trip where the backend allows it, and return, in order,
        the stored record for each.

        Atomic per job: if a job with the same id exists, nothing is written and the existing
        record is returned; if ``unique_key`` is set and a job with that key in that queue is
        QUEUED, SCHEDULED, RUNNING or WAITING, nothing is written and that job's record is returned.
        Records arrive with state QUEUED (due now) or SCHEDULED (``scheduled_for`` in the
        future), ``enqueued_at`` set, args/headers already checked to be JSON.
        """
        ...

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None."""
        ...

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
        """Return up to ``limit`` records matching the filters, ordered by enqueue order
        (oldest first); ``after`` is the last id of the previous page.

        ``args`` keeps the jobs whose args hold every given top-level key with an equal JSON
        value (``true`` is not ``1``, ``1`` is ``1.0``, objects compare regardless of key
        order; a job whose args cannot be decoded never matches). The store filters itself
        (an index or a bounded server-side scan), never handing every job to Python."""
        ...

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}`` for every queue holding jobs (states with no jobs
        may be left out)."""
        ...

    async def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return ``{queue: [(succeeded, failed), ...]}``: the jobs that finished SUCCEEDED or
        FAILED in each of the last 60 UTC minutes by their ``finished_at`` (oldest minute
        first, the current minute last), for every queue with one in that hour. Read from
        the stored jobs (an index), so it survives restarts; jobs purged since are not
        counted."""
        ...

    async def cancel(self, id: str) -> bool:
        """Cancel a job. QUEUED, SCHEDULED or WAITING: it becomes CANCELLED (499) at once.
        RUNNING: a cancel is requested; the owner learns it from :meth:`renew` and completes the job
        CANCELLED (and if the owner is lost, :meth:`reap` makes it CANCELLED). Returns True if
        the job was cancelled or a cancel requested, False if unknown or already final."""
        ...

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> builtins.list[Claimed]:
        """Atomically claim up to ``limit`` ready jobs from ``queues``: QUEUED ones and
        SCHEDULED ones whose ``scheduled_for`` has passed. Order: higher priority first, then
        earlier due time (``scheduled_for``, else ``enqueued_at``), then enqueue order.

        Each claimed job becomes RUNNING, ``attempts`` += 1, ``started_at`` = now, held by
        ``owner`` until now + ``lease`` seconds. No two concurrent callers, in any process,
        ever claim the same job while its lease holds.
        """
        ...

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        """Extend to now + ``lease`` the leases ``owner`` holds on ``ids``. Returns the ids the
        owner must stop running: a cancel was requested, or the job is no longer its own."""
        ...

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str] | None:
        """Apply each outcome to a job that is RUNNING and held by ``owner`` (others are left
        alone: the lease was lost and the job is someone else's now). Sets ``finished_at`` for
        final states, clears the lease, and applies ``give_back_attempt`` / ``deferral``.
        A WAITING outcome stores ``result`` (the Deferred's), ``deadline`` and
        ``deferred_ttl`` (from ``ttl``); the job is then held by no one.

        Returns the ids whose outcome was applied, so the caller can report the others as
        discarded. A store may return None (as stores written before this did): it does not
        say, and every outcome is taken as applied."""
        ...

    async def reap(self, *, lost_limit: int = DEFAULT_LOST_LIMIT) -> int:
        """Handle RUNNING jobs whose lease expired (their worker was lost).

        Losing a worker is not the job's failure: whatever its retry settings (``attempts``
        and ``max_attempts`` play no part), the job goes back to QUEUED with status 500 and
        error "worker lost", ready at once; the attempt counts (``attempts`` is not given
        back). The store counts, per job, how many times its worker was lost: the
        ``lost_limit``-th time the job ends FAILED with 500 and "worker lost" instead (a job
        that kills every worker running it cannot loop forever). A job whose cancel was
        requested becomes CANCELLED (499). Returns how many jobs it changed. Safe to call from
        many workers at once."""
        ...

    async def purge(
        self, *, older_than: datetime, states: Sequence[JobState], limit: int | None = None
    ) -> int:
        """Delete finished jobs (in ``states``, of which only SUCCEEDED, FAILED and CANCELLED
        count) whose ``finished_at`` is before ``older_than``, in every queue, whatever their
        ``result_ttl``; at most ``limit`` of them (None: all, in small batches). Returns how
        many were deleted. Unfinished jobs are never deleted."""
        ...

    async def expire(self, queues: Sequence[str], *, result_ttl: float, limit: int) -> int:
        """Delete up to ``limit`` finished jobs whose time is up: those with a ``result_ttl``
        of their own (any queue) once it has passed since ``finished_at``, and those of
        ``queues`` without one ``result_ttl`` seconds after ``finished_at``. Serving workers
        call it now and then (the retention); returns how many were deleted. Finding them
        must not cost in proportion to the jobs kept."""
        ...

    async def retry(self, id: str) -> JobRecord | None:
        """Run a FAILED or CANCELLED job again: it becomes QUEUED, due now, with its attempts,
        deferrals, lost count, status, error, result and times cleared. Returns the new
        record, or None for an unknown id.

        Raises:
            ValueError: the job is in another state (the message names it), or another job
                holding its ``unique_key`` is not finished.
        """
        ...

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job in ``queues`` may have become ready (an add, a hand-back, a
        retry that fell due), or after ``timeout`` seconds at the latest. A spurious return
        is allowed only when the store changed meanwhile (say a job added to another queue,
        or claimed by another worker first): in a store where nothing happens it waits the
        whole ``timeout``. Missing a wake-up for longer than ``timeout`` is not allowed."""
        ...

    async def set_progress(self, owner: str, progress: Mapping[str, dict[str, Any]]) -> None:
        """Set ``progress`` (job id -> ``{"fraction": float, "message": str}``) on the jobs
        RUNNING under ``owner``'s lease (others are left alone, as by :meth:`complete`) and
        emit a PROGRESS event for each. The value stays on the record once the job ends."""
        ...

    def events(
        self,
        *,
        kinds: Iterable[JobEventKind] | None = None,
        queues: Iterable[str] | None = None,
        buffer: int = 1000,
    ) -> AbstractAsyncContextManager[EventStream]:
        """Subscribe to job events: ``async with store.events() as stream: async for event
        in stream:``.

        Once the ``async with`` is entered, the stream receives every state change that any
        process makes to any job in this store (filtered by ``kinds`` and ``queues``), each
        job's events in the order the changes happened: ENQUEUED for an add (or a
        hand-back), STARTED for a claim, RETRYING for a retry wait or a lost worker's job put
        back, SUCCEEDED / FAILED / CANCELLED for the end, PROGRESS for :meth:`set_progress`.
        Changes that are not state changes (a renewed lease, a cancel request to a running
        job) make no event. Publishing never waits for a subscriber: past ``buffer`` unread
        events the oldest are dropped and the stream's next event is one LOST event whose
        ``lost`` counts them (``lost == 0``: an unknown number, e.g. the connection to the
        server was lost and is back).
        """
        ...

    async def settle(self, outcome: Outcome, *, only_expired: bool = False) -> JobRecord | None:
        """Apply ``outcome`` (SUCCEEDED, FAILED or SCHEDULED) to a WAITING job, atomically, and
        return the new record. ``attempts`` is left as it is (the attempt was counted at its
        claim); ``deadline`` is cleared; ``finished_at`` is set for final states; a SUCCEEDED
        outcome stores its ``result``.

        With ``only_expired`` (a passed deadline being acted on), the outcome is applied only if
        the job is still WAITING and its deadline has passed by the store's clock; otherwise
        nothing changes and None is returned (another worker acted first, or a heartbeat
        pushed the deadline). Safe to call from many workers at once.

        Raises:
            LookupError: no job with this id.
            JobStateError: the job is not WAITING (without ``only_expired``).
        """
        ...

    async def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Push a WAITING job's deadline to now + ``ttl`` seconds (default: its
        ``deferred_ttl``), atomically, and return the new record.

        Raises:
            LookupError: no job with this id.
            JobStateError: the job is not WAITING.
        """
        ...

    async def overdue(self, *, limit: int = 100) -> builtins.list[JobRecord]:
        """Return up to ``limit`` WAITING jobs whose deadline has passed (earliest first)."""
        ...

    async def setdefault_setting(self, key: str, value: str) -> str:
        """Return the store-wide setting ``key``, storing ``value`` first if it has none
        (atomic: of concurrent callers, in any process, one value wins and all get it). Kept
        for the store's life, across restarts (e.g. the secret behind callback tokens)."""

    async def record_worker(self, info: WorkerInfo) -> None:
        """Insert or replace (by ``info.id``) a serving worker's registry entry: the worker
        registry behind ``Queue.workers``. Called at start and at every heartbeat."""
        ...

    async def workers(self) -> builtins.list[WorkerInfo]:
        """Return every registered worker, live or lost, ordered by ``started_at``."""
        ...

    async def remove_worker(self, id: str) -> None:
        """Delete a worker's registry entry (a worker that stops cleanly); unknown: no-op."""
        ...

    # -- schedules ------------------------------------------------------------------------

    async def get_schedule(self, id: str) -> ScheduleRow | None:
        """Return the schedule's row, or None."""
        ...

    async def list_schedules(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[ScheduleRow]:
        """Return up to ``limit`` schedules ordered by id: those whose id starts with
        ``prefix``, with that ``enabled``, and whose id sorts after ``after`` (the last id of
        the previous page; it need not exist). Ids compare by their UTF-8 bytes."""
        ...

    async def save_schedule(self, row: ScheduleRow, *, expected: int | None) -> bool:
        """Write ``row`` as it is, atomically, if the stored schedule's version is
        ``expected`` (``None``: only if there is no schedule with that id). Returns whether it
        was written. Callers bump ``row.version``."""
        ...

    async def delete_schedule(self, id: str) -> bool:
        """Delete the schedule (its executions stay). Returns False if it did not exist."""
        ...

    async def fire_schedules(
        self, now: datetime, plan: Plan, *, limit: int
    ) -> builtins.list[Fired]:
        """Fire due schedules: take up to ``limit`` enabled schedules whose ``next_fire_at``
        is at or before ``now`` (earliest first), call ``plan`` on each, and apply each firing
        atomically with the job it adds: the schedule's ``next_fire_at`` and
        ``last_fire_at`` change, its version is bumped, and the job is added (skipped if its id
        exists; FAILED 409 via :func:`conflict_record` when ``exclusive`` and an execution of
        the schedule is unfinished).

        Exactly once across any number of concurrent callers in any number of processes: a
        due schedule is planned by one caller at a time (row locks, a write lock, or a pick
        that hides it for a few seconds), a firing is applied only if the schedule still has
        the version it was planned from, and the job id is the second guard. A caller that
        dies before applying changes nothing (on Redis the schedule is due again a few
        seconds later). Returns the firings applied. ``plan`` runs inside the store's
        transaction: it must not block or raise (an exception aborts the whole call).
        """
        ...

    async def add_execution(self, record: JobRecord, *, exclusive: bool) -> JobRecord:
        """Add one execution of ``record.schedule_id`` off its cadence (a manual trigger):
        as ``add``, but atomically FAILED 409 when ``exclusive`` and an execution of the
        schedule is unfinished. Returns the stored record."""
        ...

    async def executions(
        self,
        schedule_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Return up to ``limit`` jobs with this ``schedule_id``, newest (last enqueued)
        first; ``before`` is the last id of the previous page (unknown: an empty page)."""
        ...

    async def next_schedule_due(self) -> datetime | None:
        """Return the earliest ``next_fire_at`` of an enabled schedule, or None."""
        ...


@runtime_checkable
class WorkflowStore(Store, Protocol):
    """A store that also keeps workflows (``work.workflows``): every built-in store does.

    The rules of a workflow (barriers, results flowing, failure) are in
    ``work/workflows/_plan.py``. The store's part is atomicity: whenever a job that is a
    workflow step becomes final, in :meth:`complete`, :meth:`cancel` or :meth:`reap`, the
    store applies the workflow's consequences (fill the step's barrier slot, enqueue what a
    firing barrier releases, end the workflow, enqueue ``on_error``) in the same transaction
    as the job's change (one Lua script on Redis). A job's end is applied once (the owner
    token fences it), so a successor is never lost nor doubled.

    Two more hooks, in the same transaction as their own change: :meth:`retry` of the step
    that failed a FAILED workflow resumes it (``work.workflows._plan.resume``: RUNNING again,
    ``on_error`` dropped, steps that ended meanwhile replayed); :meth:`purge` and
    :meth:`expire` delete a finished workflow with the last of its jobs (steps and
    ``on_error``).
    """

    async def add_workflow(self, plan: Any) -> Any:
        """Store a compiled workflow (a ``work.workflows._plan.Plan``) and add its first steps,
        atomically; return its ``WorkflowRecord``.

        Raises:
            ValueError: the workflow id, or the id of one of its jobs, is taken (nothing is
                stored).
        """
        ...

    async def get_workflow(self, id: str) -> Any:
        """Return the ``WorkflowRecord``, or None (``current`` computed from the steps that
        have ended)."""
        ...

    async def cancel_workflow(self, id: str) -> bool:
        """If the workflow is RUNNING, end it CANCELLED and cancel its unfinished jobs, in
        one transaction; return True. Return False when it had ended or is unknown."""
        ...

    async def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[Any]:
        """Return up to ``limit`` ``WorkflowRecord`` s, oldest first, optionally in one state;
        ``after`` is the last id of the previous page."""
        ...
