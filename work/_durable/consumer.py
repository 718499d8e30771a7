"""``serve_store``, the loop behind ``Worker.serve``: claim, run, renew, reap, complete."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
from anyio.abc import TaskGroup

from .._core.clock import _current, clock_of
from .._core.exceptions import UnknownHandlerError
from .._core.job import Job
from .._core.retry import Exponential
from .._core.status import Status
from .._runtime.timers import seconds
from ..stores._base import (
    DEFAULT_LOST_LIMIT,
    DEFAULT_RESULT_TTL,
    Claimed,
    JobRecord,
    JobState,
    Outcome,
    Store,
)
from .deferred import expire_waiting
from .outcome import decide, final, hand_back

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._runtime.worker import Execution, Worker

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LOST_LIMIT",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_UNKNOWN_HANDLER_GRACE",
    "serve_store",
]

DEFAULT_CONCURRENCY = 16
"""Jobs run at once by ``serve`` when neither ``concurrency`` nor ``max_concurrency`` is set."""

DEFAULT_UNKNOWN_HANDLER_GRACE = 300.0
"""Seconds a job whose handler no worker has may wait for one before it fails 404."""


# How long an idle claim loop waits on the store before claiming again anyway.
_IDLE_WAIT = 1.0
# The longest pause between lease renewals: a RUNNING job's cancel is noticed within this.
_MAX_RENEW_INTERVAL = 1.0
# How long serve, once stopped or cancelled, keeps trying to write the last outcomes.
_FINAL_FLUSH_TIMEOUT = 10.0
# How long a cancelled serve waits for an execution it cancelled to end.
_CANCEL_WAIT = 5.0
# How often serve looks for WAITING jobs whose deadline passed ("within about a second").
_DEADLINE_INTERVAL = 0.5
# A job's progress is written at most this often (the last value always, before its outcome).
_PROGRESS_INTERVAL = 1.0
# A job handed back for lack of its handler is due again after this pause, growing with the
# time it has waited (a tenth of it) up to the cap: a worker without the handler never claims
# the same job in a hot loop, and one that has it gets it within seconds.
_UNKNOWN_PAUSE = 1.0
_UNKNOWN_PAUSE_CAP = 30.0
# Retention: every interval, delete finished jobs whose time is up, a small batch per store
# call (a short transaction); while batches come back full, the next follows after a pause.
_EXPIRE_INTERVAL = 30.0
_EXPIRE_FIRST = 1.0
_EXPIRE_BATCH = 200
_EXPIRE_PAUSE = 0.05


class _LazyLog:
    """The serve loop's structlog logger, bound to its worker and owner, loaded on the first
    line logged: a worker that has nothing to say never imports structlog, nor what structlog
    imports when it is installed (rich, colorama, greenlet: several MB of a worker's RSS)."""

    __slots__ = ("_bound", "_context")

    def __init__(self, **context: Any) -> None:
        self._context = context
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            import structlog

            self._bound = structlog.get_logger("anywork.serve").bind(**self._context)
        return getattr(self._bound, name)


class _Backoff:
    """Pauses after store errors: 50 ms doubling up to 5 s, reset by a success."""

    _PAUSES = Exponential(0.05, cap=5.0, jitter=False)

    def __init__(self) -> None:
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    async def sleep(self) -> None:
        self._failures += 1
        await anyio.sleep(self._PAUSES.delay(self._failures))


class _Outage:
    """Says once that the store stopped answering and once that it answers again, instead
    of one line (and a traceback) per failed call while it is down.

    A store error that is not a lost connection (a bug, a bad statement) is still logged
    every time: retrying will not heal it and each one matters.
    """

    def __init__(self, log: Any) -> None:
        self.log = log
        self.since: float | None = None  # anyio clock time of the first failure
        self.failures = 0

    def failed(self, call: str, exc: Exception) -> None:
        """Report a failed store call (``call`` names it: "claim", "storing outcomes")."""
        if not isinstance(exc, ConnectionError | OSError):
            self.log.warning(f"{call} failed; retrying", error=repr(exc))
            return
        self.failures += 1
        if self.since is None:
            self.since = anyio.current_time()
            self.log.warning(
                "store unreachable; retrying until it is back", call=call, error=str(exc)
            )

    def ok(self) -> None:
        """Report a store call that succeeded: the end of an outage, if there was one."""
        if self.since is None:
            return
        down = anyio.current_time() - self.since
        self.log.info("store reachable again", down_for=round(down, 1), failed_calls=self.failures)
        self.since, self.failures = None, 0


@dataclass(slots=True, eq=False)
class _Slot:
    """One claimed job, from its claim until its outcome is written."""

    record: JobRecord
    decode_error: str | None
    unknown_since: datetime | None = None
    execution: Execution | None = None
    perform_scope: anyio.CancelScope | None = None
    cancel_requested: bool = False  # the store said stop (a cancel, or the lease is lost)
    lost: bool = False  # the same job was claimed again by this owner: drop this run
    outcome: Outcome | None = None
    progress: dict[str, Any] | None = None  # the last value ctx.progress reported
    progress_sent: dict[str, Any] | None = None  # the last value written to the store
    progress_at: float = -math.inf  # when it was written (anyio clock)
    settled: bool = False  # started inline: its outcome was decided (see settle_inline)


class _Server:
    """The state of one ``serve`` call."""

    def __init__(
        self,
        worker: Worker,
        store: Store,
        queues: tuple[str, ...],
        concurrency: int,
        lease: float,
        *,
        lost_limit: int = DEFAULT_LOST_LIMIT,
        unknown_handler_grace: float = DEFAULT_UNKNOWN_HANDLER_GRACE,
        result_ttl: float | None = DEFAULT_RESULT_TTL,
        on_discarded: Callable[[Outcome], object] | None = None,
    ) -> None:
        self.worker = worker
        # A store given a clock sets the time (a VirtualClock in tests), else the worker's.
        self.clock = clock_of(store) if clock_of(store).virtual else worker.clock
        self.on_discarded = on_discarded
        self.result_ttl = result_ttl
        self.store = store
        self.queues = queues
        self.concurrency = concurrency
        self.lease = lease
        self.lost_limit = lost_limit
        self.unknown_handler_grace = unknown_handler_grace
        # Fences every write: a lease this serve lost can never be completed by it.
        self.owner = f"{worker.name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.slots: dict[str, _Slot] = {}  # claimed, outcome not yet written
        # Claimed jobs holding a place. By default a place frees only once the job's outcome
        # is stored (or the job dropped), so a killed process never holds more than
        # `concurrency` jobs that may run again. A store whose concurrent calls run in
        # parallel (`parallel_calls`: PostgreSQL and Redis, a connection each) gets the next
        # jobs claimed while the last outcomes are written: a place frees when the outcome is
        # queued, and up to `concurrency` queued outcomes (`unacked`) may wait to be written,
        # so a killed process holds at most twice `concurrency` jobs that may run again.
        self.active = 0
        self.overlap = bool(getattr(store, "parallel_calls", False))
        self.unacked = 0
        self.capacity = anyio.Event()
        self.pending: list[_Slot] = []  # outcomes waiting for complete()
        self.pending_event = anyio.Event()
        self.flush_lock = anyio.Lock()
        self.progress_event = anyio.Event()
        self.thread = threading.get_ident()
        # Jobs started inline (no task of their own, see start_inline) not yet settled.
        self.inline = 0
        self.inline_idle = anyio.Event()
        self.cancelling = False  # serve itself is being cancelled: hand unfinished jobs back
        # While the claim loop waits for room, the flush claims for it (combined_claim).
        self.claim_waiting: TaskGroup | None = None
        self.log = _LazyLog(worker=worker.name, owner=self.owner)
        self.outage = _Outage(self.log)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self.renew_loop, name="anywork serve: renew leases")
                background.start_soon(self.reap_loop, name="anywork serve: reap leases")
                background.start_soon(self.deadline_loop, name="anywork serve: deadlines")
                background.start_soon(self.flush_loop, name="anywork serve: complete")
                background.start_soon(self.progress_loop, name="anywork serve: progress")
                background.start_soon(self.expire_loop, name="anywork serve: retention")
                try:
                    async with anyio.create_task_group() as jobs:
                        await self.claim_until_stopped(jobs)
                    # The worker stopping ends every execution, then its outcome is queued.
                    await self.wait_inline()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self.abandon_inline()
                    raise
                # Every claimed job has ended or been handed back: stop the helpers.
                background.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_FINAL_FLUSH_TIMEOUT):
                await self.flush_all()
            if self.pending:
                self.log.error(
                    "serve could not store outcomes; their leases will expire and the jobs "
                    "will be retried",
                    job_ids=[slot.record.id for slot in self.pending],
                )

    # -- claiming -----------------------------------------------------------------------------

    async def claim_until_stopped(self, jobs: TaskGroup) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.watch_stop, tg.cancel_scope)
            await self.claim_loop(jobs)

    async def watch_stop(self, scope: anyio.CancelScope) -> None:
        await self.worker.wait_stopping()
        scope.cancel()
        # Jobs claimed but still waiting for a worker slot never start: hand them back.
        for slot in self.slots.values():
            if slot.perform_scope is not None:
                slot.perform_scope.cancel()

    async def claim_loop(self, jobs: TaskGroup) -> None:
        backoff = _Backoff()
        while not self.worker.stopping:
            free = self.concurrency - self.active
            if free <= 0 or self.unacked > self.concurrency:
                self.capacity = anyio.Event()
                self.claim_waiting = jobs
                try:
                    await self.capacity.wait()
                finally:
                    self.claim_waiting = None
                continue
            try:
                # Shielded: a claim the store made must reach us, or its jobs would sit
                # RUNNING until their lease expired (and lose an attempt).
                with anyio.CancelScope(shield=True):
                    got = await self.claim_batch(jobs, free)
            except Exception as exc:
                self.outage.failed("claim", exc)
                await backoff.sleep()
                continue
            self.outage.ok()
            backoff.reset()
            if got < free:
                try:
                    await self.store.wait_for_work(self.queues, _IDLE_WAIT)
                except Exception as exc:
                    self.outage.failed("waiting for work", exc)
                    await backoff.sleep()

    async def claim_batch(self, jobs: TaskGroup, free: int) -> int:
        """Claim up to ``free`` jobs and start them; return how many were claimed.

        The claimed list lives only here: the loop must not keep the last batch's records
        (and their args) alive while it waits for work, possibly for hours.
        """
        claimed = await self.store.claim(
            self.queues, limit=free, lease=self.lease, owner=self.owner
        )
        for item in claimed:
            self.start_job(jobs, item)
        return len(claimed)

    def start_job(self, jobs: TaskGroup, claimed: Claimed) -> None:
        rec = claimed.record
        old = self.slots.get(rec.id)
        if old is not None:
            # Our own earlier claim of this job lost its lease and the job came back to us.
            old.lost = True
            if old.execution is not None:
                old.execution.cancel()
        slot = _Slot(rec, claimed.decode_error, claimed.unknown_since)
        self.slots[rec.id] = slot
        self.active += 1
        if not self.start_inline(slot):
            jobs.start_soon(self.run_job, slot, name=f"anywork serve: {rec.handler} {rec.id}")

    def start_inline(self, slot: _Slot) -> bool:
        """Start a claimed job with no task of its own: the worker's runners execute it and
        its done-callback (:meth:`settle_inline`) queues the outcome. False for the rare
        cases ``run_job`` handles in a task: a row that did not decode, a bad job, a handler
        this worker lacks, a worker stopping or with no ``max_concurrency`` slot free."""
        rec = slot.record
        if slot.decode_error is not None or self.worker.stopping:
            return False

        def prepare(execution: Execution) -> None:
            slot.execution = execution
            execution.ctx.progress_hook = functools.partial(self.on_progress, slot)
            execution._add_done_callback(functools.partial(self.settle_inline, slot))
            self.inline += 1

        try:
            job = _job_of(rec)
            return (
                self.worker._perform_nowait(job, attempt=rec.attempts, prepare=prepare) is not None
            )
        except (TypeError, ValueError, UnknownHandlerError, RuntimeError):
            return False

    def settle_inline(self, slot: _Slot, execution: Execution) -> None:
        """Decide the outcome of a job started inline once its execution ended, and queue
        it (what ``run_job`` does after ``execute``). Runs in the task that ended it."""
        if slot.settled:
            return  # handed back already by a cancelled serve
        slot.settled = True
        rec = slot.record
        token = _current.set(self.clock)
        try:
            if self.cancelling:
                if execution.status is Status.CANCELLED:
                    slot.outcome = hand_back(rec)
                else:
                    slot.outcome = decide(rec, execution, stopping=True)
            elif slot.cancel_requested:
                slot.outcome = final(rec, JobState.CANCELLED, Status.CANCELLED, "cancelled")
            else:
                slot.outcome = decide(rec, execution, stopping=self.worker.stopping)
        except Exception:  # never break the worker's runner; the job is handed back
            self.log.exception("deciding a job's outcome failed; handing it back", job_id=rec.id)
        finally:
            _current.reset(token)
        self.queue_outcome(slot)
        self.inline -= 1
        if self.inline == 0:
            self.inline_idle.set()

    async def wait_inline(self) -> None:
        """Wait until every job started inline has been settled."""
        while self.inline:
            self.inline_idle = anyio.Event()
            await self.inline_idle.wait()

    async def abandon_inline(self) -> None:
        """serve is being cancelled: cancel the inline executions, give them ``_CANCEL_WAIT``
        seconds to end (one that finished anyway keeps its outcome), then hand back the rest
        (as ``execute`` does for a job in a task of its own)."""
        self.cancelling = True
        for slot in list(self.slots.values()):
            if slot.execution is not None and not slot.settled:
                slot.execution.cancel()
        with anyio.move_on_after(_CANCEL_WAIT):
            await self.wait_inline()
        for slot in list(self.slots.values()):
            if slot.execution is not None and not slot.settled and slot.outcome is None:
                slot.settled = True
                self.inline -= 1
                self.queue_outcome(slot)

    # -- running ------------------------------------------------------------------------------

    async def run_job(self, slot: _Slot) -> None:
        try:
            await self.execute(slot)
        finally:
            self.queue_outcome(slot)

    def queue_outcome(self, slot: _Slot) -> None:
        """Queue the slot's outcome (a hand-back when it has none) for the flush loop, or free
        its place at once when this run of the job was superseded."""
        if slot.outcome is None:
            slot.outcome = hand_back(slot.record)
        if not slot.lost and self.slots.get(slot.record.id) is slot:
            self.pending.append(slot)
            self.pending_event.set()
            if self.overlap:
                self.unacked += 1
                self.release(1)
        else:
            self.release(1)

    def release(self, n: int) -> None:
        """Free ``n`` slots for new claims."""
        self.active -= n
        self.capacity.set()

    async def execute(self, slot: _Slot) -> None:
        rec = slot.record
        if slot.decode_error is not None:
            slot.outcome = final(rec, JobState.FAILED, Status.BAD_REQUEST, slot.decode_error)
            return
        try:
            job = _job_of(rec)
        except (TypeError, ValueError) as exc:
            slot.outcome = final(rec, JobState.FAILED, Status.BAD_REQUEST, f"bad job: {exc}")
            return
        execution: Execution | None = None
        try:
            with anyio.CancelScope() as scope:
                slot.perform_scope = scope
                if self.worker.stopping:
                    return  # handed back
                execution = await self.worker.perform(job, attempt=rec.attempts)
        except UnknownHandlerError as exc:
            slot.outcome = self.unknown_handler(slot, exc)
            return
        except RuntimeError:
            return  # the worker stopped before the job started: handed back
        finally:
            slot.perform_scope = None
        if execution is None:
            if slot.cancel_requested:
                slot.outcome = final(rec, JobState.CANCELLED, Status.CANCELLED, "cancelled")
            return  # stopped while waiting for a slot: handed back
        slot.execution = execution
        # Set before the handler can run: perform() returned with no checkpoint since.
        execution.ctx.progress_hook = functools.partial(self.on_progress, slot)
        if slot.cancel_requested or slot.lost:
            execution.cancel()
        try:
            await execution.wait()
        except BaseException:
            # serve itself is being cancelled: stop the execution, then keep its outcome if it
            # finished anyway, else hand the job back.
            with anyio.CancelScope(shield=True):
                execution.cancel()
                with anyio.move_on_after(_CANCEL_WAIT):
                    await execution.wait()
                if execution.done and execution.status is not Status.CANCELLED:
                    slot.outcome = decide(rec, execution, stopping=True)
            raise
        if slot.cancel_requested:
            slot.outcome = final(rec, JobState.CANCELLED, Status.CANCELLED, "cancelled")
        else:
            slot.outcome = decide(rec, execution, stopping=self.worker.stopping)

    def unknown_handler(self, slot: _Slot, exc: UnknownHandlerError) -> Outcome:
        """Hand a job whose handler this worker lacks back for another worker, without using
        an attempt and a little later (growing pauses); FAILED 404 once no worker has run it
        for ``unknown_handler_grace`` seconds since the first such hand-back."""
        rec = slot.record
        now = self.clock.now()
        since = slot.unknown_since or now
        waited = (now - since).total_seconds()
        if waited >= self.unknown_handler_grace:
            message = (
                f"{exc} on {self.worker.name}; no worker ran it within "
                f"{self.unknown_handler_grace:g} s"
            )
            return final(rec, JobState.FAILED, Status.NOT_FOUND, message)
        pause = min(max(_UNKNOWN_PAUSE, waited / 10), _UNKNOWN_PAUSE_CAP)
        due = min(
            now + timedelta(seconds=pause), since + timedelta(seconds=self.unknown_handler_grace)
        )
        return Outcome(
            id=rec.id,
            state=JobState.SCHEDULED,
            status=rec.status,
            error=f"{exc} on {self.worker.name}: handed back for a worker that has it",
            scheduled_for=due,
            give_back_attempt=True,
            unknown_since=since,
        )

    # -- leases -------------------------------------------------------------------------------

    async def renew_loop(self) -> None:
        interval = min(self.lease / 3, _MAX_RENEW_INTERVAL)
        while True:
            await self.clock.sleep(interval, due=False)
            ids = list(self.slots)
            if not ids:
                continue
            try:
                stop = await self.store.renew(self.owner, ids, lease=self.lease)
            except Exception as exc:
                self.outage.failed("renewing leases", exc)
                continue
            self.outage.ok()
            for id in stop:
                slot = self.slots.get(id)
                if slot is None or slot.outcome is not None:
                    continue
                # A cancel was requested or the lease is gone: either way, stop running it. A
                # lost job's CANCELLED outcome is fenced off by the store.
                slot.cancel_requested = True
                if slot.execution is not None:
                    slot.execution.cancel()
                elif slot.perform_scope is not None:
                    slot.perform_scope.cancel()

    async def reap_loop(self) -> None:
        interval = self.lease / 2
        while True:
            try:
                reaped = await self.store.reap(lost_limit=self.lost_limit)
            except Exception as exc:
                self.outage.failed("reaping expired leases", exc)
            else:
                self.outage.ok()
                if reaped:
                    self.log.info("put back jobs whose worker was lost", count=reaped)
            await self.clock.sleep(interval, due=False)

    async def deadline_loop(self) -> None:
        """Fail or retry WAITING jobs whose deadline passed (504 "no callback within ttl")."""
        while True:
            try:
                expired = await expire_waiting(self.store)
            except Exception as exc:
                self.outage.failed("acting on passed deadlines", exc)
            else:
                self.outage.ok()
                for rec in expired:
                    self.log.info(
                        "no callback within ttl",
                        job_id=rec.id,
                        handler=rec.handler,
                        state=rec.state.value,
                    )
            await self.clock.sleep(_DEADLINE_INTERVAL, due=False)

    # -- progress -------------------------------------------------------------------------------

    def on_progress(self, slot: _Slot, value: dict[str, Any]) -> None:
        """ctx.progress's hook: note the value and wake the progress loop (from any thread)."""
        slot.progress = value
        if threading.get_ident() == self.thread:
            self.progress_event.set()
            return
        # A sync handler runs in one of anyio's worker threads; in a thread of the handler's
        # own (RuntimeError) the value is written with the next one, or before the outcome.
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(self.wake_progress)

    def wake_progress(self) -> None:
        self.progress_event.set()

    def unsent_progress(self, slots: list[_Slot]) -> dict[str, dict[str, Any]]:
        return {
            slot.record.id: slot.progress
            for slot in slots
            if slot.progress is not None and slot.progress is not slot.progress_sent
        }

    async def write_progress(self, slots: list[_Slot]) -> None:
        """Write the unsent progress of ``slots`` (under the flush lock, so a value never
        overtakes a later one or the outcome)."""
        values = self.unsent_progress(slots)
        if not values:
            return
        now = anyio.current_time()
        await self.store.set_progress(self.owner, values)
        for slot in slots:
            if slot.record.id in values:
                slot.progress_sent, slot.progress_at = values[slot.record.id], now

    def progress_due(self, now: float) -> tuple[list[_Slot], float]:
        """The slots whose unsent progress may be written now, and when the next one may."""
        due: list[_Slot] = []
        next_at = math.inf
        for slot in self.slots.values():
            if slot.outcome is not None or slot.progress is slot.progress_sent:
                continue
            at = slot.progress_at + _PROGRESS_INTERVAL
            if at <= now:
                due.append(slot)
            else:
                next_at = min(next_at, at)
        return due, next_at

    async def progress_loop(self) -> None:
        # Slots are only ever held in locals while written: a finished job's slot, execution
        # and args must not stay reachable from this loop while it waits.
        while True:
            self.progress_event = event = anyio.Event()
            now = anyio.current_time()
            due, next_at = self.progress_due(now)
            if due:
                try:
                    async with self.flush_lock:
                        await self.write_progress([s for s in due if s.outcome is None])
                except Exception as exc:
                    self.log.warning("storing progress failed; retrying", error=repr(exc))
                    await anyio.sleep(_PROGRESS_INTERVAL)
                continue
            del due
            with anyio.move_on_after(next_at - now):
                await event.wait()

    # -- retention ----------------------------------------------------------------------------

    async def expire_loop(self) -> None:
        """Delete finished jobs whose time is up (the job's own result_ttl, else this serve's
        for its queues), in small batches."""
        if self.result_ttl is None:
            return
        await self.clock.sleep(_EXPIRE_FIRST, due=False)
        while True:
            try:
                deleted = await self.store.expire(
                    self.queues, result_ttl=self.result_ttl, limit=_EXPIRE_BATCH
                )
            except Exception as exc:
                self.log.warning("deleting expired jobs failed; retrying", error=repr(exc))
                deleted = 0
            if deleted:
                self.log.debug("deleted finished jobs past their result_ttl", count=deleted)
            pause = _EXPIRE_PAUSE if deleted >= _EXPIRE_BATCH else _EXPIRE_INTERVAL
            await self.clock.sleep(pause, due=False)

    # -- completing ---------------------------------------------------------------------------

    async def flush_loop(self) -> None:
        backoff = _Backoff()
        while True:
            await self.pending_event.wait()
            if await self.flush():
                backoff.reset()
            else:
                await backoff.sleep()

    async def flush(self) -> bool:
        """Write every pending outcome in one ``complete`` call; False if the store failed."""
        async with self.flush_lock:
            batch, self.pending = self.pending, []
            self.pending_event = anyio.Event()
            if not batch:
                return True
            outcomes = [slot.outcome for slot in batch if slot.outcome is not None]
            jobs, combined = self.combined_claim()
            claimed: list[Claimed] = []
            reserved = 0
            try:
                with anyio.CancelScope(shield=True):
                    # The last progress reported is stored before the outcome.
                    await self.write_progress(batch)
                    if combined is None:
                        applied = await self.store.complete(self.owner, outcomes)
                    else:
                        room = self.concurrency - self.active
                        if self.overlap:
                            # The batch's places are free already and the claim loop may
                            # claim beside this call: hold the room it claims for.
                            reserved = max(room, 0)
                            self.active += reserved
                        else:
                            room += len(batch)
                        applied, claimed = await combined(
                            self.owner, outcomes, self.queues, limit=room, lease=self.lease
                        )
            except Exception as exc:
                if reserved:
                    self.release(reserved)
                self.outage.failed("storing outcomes", exc)
                self.pending[:0] = batch
                self.pending_event.set()
                return False
            self.active -= reserved  # each claimed job counts itself as it starts
            self.outage.ok()
            if applied is not None:
                self.log_discarded([o for o in outcomes if o.id not in applied])
            for slot in batch:
                if self.slots.get(slot.record.id) is slot:
                    del self.slots[slot.record.id]
                # The slot and its execution refer to each other (through the ctx's progress
                # hook): dropping that edge frees both, with the job's record and args, as the
                # batch goes, instead of at the next cyclic collection (a fast drain used to
                # keep a few hundred finished jobs' objects alive between collections).
                slot.execution = None
            if self.overlap:
                self.unacked -= len(batch)
                self.capacity.set()
            else:
                self.release(len(batch))
            for item in claimed:
                running = not (self.worker.stopping or self.cancelling)
                if jobs is not None and self.claim_waiting is jobs and running:
                    self.start_job(jobs, item)
                else:
                    # The claim loop ended (a stop, a cancel) while the call was on its way:
                    # its task group may be closed; give the jobs straight back.
                    self.hand_back_claimed(item)
            return True

    def hand_back_claimed(self, claimed: Claimed) -> None:
        """Queue a hand-back for a job claimed that this serve will not start."""
        rec = claimed.record
        old = self.slots.get(rec.id)
        if old is not None:
            old.lost = True
            if old.execution is not None:
                old.execution.cancel()
        slot = _Slot(rec, claimed.decode_error, claimed.unknown_since, outcome=hand_back(rec))
        self.slots[rec.id] = slot
        self.active += 1
        self.queue_outcome(slot)

    def combined_claim(self) -> tuple[TaskGroup | None, Any]:
        """The store's ``complete_and_claim`` (outcomes written and the next jobs claimed in
        one transaction, where a store has it) with the claim loop's task group, when that
        loop is waiting for the places these outcomes free; else (None, None)."""
        jobs = self.claim_waiting
        combined = getattr(self.store, "complete_and_claim", None)
        if jobs is None or combined is None or self.worker.stopping:
            return None, None
        return jobs, combined

    def log_discarded(self, outcomes: list[Outcome]) -> None:
        """One line per outcome the store refused: the lease was lost (the worker paused or
        was cut off longer than the lease) and the job was reaped or claimed by another."""
        for o in outcomes:
            self.log.warning(
                "outcome discarded: the job's lease was lost and the job taken over",
                job_id=o.id,
                state=str(o.state),
                status=int(o.status),
            )
            if self.on_discarded is not None:
                try:
                    self.on_discarded(o)
                except Exception:
                    self.log.exception("an on_discarded callback raised; ignored")

    async def flush_all(self) -> None:
        backoff = _Backoff()
        while self.pending:
            if not await self.flush():
                await backoff.sleep()


def _check_queues(queues: object) -> tuple[str, ...]:
    if isinstance(queues, str):
        queues = (queues,)
    if not isinstance(queues, tuple | list) or not queues:
        raise ValueError(f"queues must be a non-empty list of queue names, got {queues!r}")
    for name in queues:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a queue name must be a non-empty str, got {name!r}")
    return tuple(queues)


async def serve_store(
    worker: Worker,
    store: Store,
    *,
    queues: tuple[str, ...] | list[str] = ("default",),
    concurrency: int | None = None,
    lease: float = 30.0,
    lost_limit: int = DEFAULT_LOST_LIMIT,
    unknown_handler_grace: float = DEFAULT_UNKNOWN_HANDLER_GRACE,
    result_ttl: float | timedelta | None = DEFAULT_RESULT_TTL,
    on_discarded: Callable[[Outcome], object] | None = None,
) -> None:
    """Consume jobs from ``store`` with ``worker`` until cancelled or the worker stops.

    This is ``Worker.serve``. It claims ready jobs in batches up to its free capacity (on a
    store with ``parallel_calls``, PostgreSQL and Redis, while the last outcomes are being
    written: at most ``2 * concurrency`` jobs held), each
    under a lease of ``lease`` seconds that it renews while the job runs (at least every
    second, which is also how soon a ``Queue.cancel`` of a running job is noticed), reaps
    other workers' expired leases every ``lease / 2`` seconds, runs each job with
    ``worker.perform`` and stores the outcome by status (see ``docs/stores.md``). A store error
    is logged and retried with backoff; it never ends ``serve``. When the worker stops, jobs
    not finished (or not started) go back to QUEUED without using an attempt, and leaving
    ``async with worker`` waits for that.

    Losing a worker is not a job's failure: a job whose lease expired goes back whatever its
    RetryPolicy (the attempt counts) until its worker has been lost ``lost_limit`` times, then
    it fails 500 "worker lost". A job whose handler this worker lacks goes back, without using
    an attempt and due again after a growing pause, for a worker that has it (a rolling
    deploy); it fails 404 only when no worker has run it within ``unknown_handler_grace``
    seconds of the first hand-back.

    Args:
        worker: a running Worker holding the handlers.
        store: an entered store.
        queues: the queues to consume (a single name is accepted too).
        concurrency: at most this many of the store's jobs at once (default: the worker's
            ``max_concurrency``, else 16).
        lease: seconds a claim holds before another worker may take the job over.
        lost_limit: how many times a job's worker may be lost before the job fails (applied by
            this worker's reaper to every job it reaps).
        unknown_handler_grace: seconds a job for a handler no worker has may wait for one.
        result_ttl: seconds (or a timedelta) finished jobs of ``queues`` are kept before this
            worker deletes them, a small batch at a time (a job enqueued with a
            ``result_ttl`` of its own keeps that); None keeps them for ever.
        on_discarded: called with each outcome the store refused because the job's lease was
            lost (the job was taken over); the CLI's exit summary counts them.

    Raises:
        RuntimeError: the worker was never started (a worker already stopping makes ``serve``
            return at once).
        ValueError: no queues, a concurrency below 1, a lease or grace that is not positive,
            or a lost_limit below 1.
    """
    names = _check_queues(queues)
    if concurrency is None:
        concurrency = worker.max_concurrency or DEFAULT_CONCURRENCY
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease > 0:
        raise ValueError(f"lease must be a number of seconds > 0, got {lease!r}")
    if isinstance(lost_limit, bool) or not isinstance(lost_limit, int) or lost_limit < 1:
        raise ValueError(f"lost_limit must be an int >= 1, got {lost_limit!r}")
    if (
        isinstance(unknown_handler_grace, bool)
        or not isinstance(unknown_handler_grace, int | float)
        or not 0 <= unknown_handler_grace < float("inf")
    ):
        raise ValueError(
            f"unknown_handler_grace must be a finite number of seconds >= 0, "
            f"got {unknown_handler_grace!r}"
        )
    if not worker.running:
        if worker.stopping:
            # Started just as the worker began to stop (e.g. start_soon then stop()): there
            # is nothing to serve and nothing to hand back.
            return
        raise RuntimeError(f"{worker.name} is not running: call serve inside `async with worker:`")
    ttl: float | None = None
    if result_ttl is not None:
        ttl = seconds(result_ttl, name="result_ttl")
        if not 0 <= ttl < float("inf"):
            raise ValueError(f"result_ttl must be a finite duration >= 0, got {result_ttl!r}")
    server = _Server(
        worker,
        store,
        names,
        concurrency,
        float(lease),
        lost_limit=lost_limit,
        unknown_handler_grace=float(unknown_handler_grace),
        result_ttl=ttl,
        on_discarded=on_discarded,
    )
    # decide() and the other outcome rules read the time from the serve's clock.
    token = _current.set(server.clock)
    try:
        async with worker.lifetime():
            await server.run()
    finally:
        _current.reset(token)


def _job_of(rec: JobRecord) -> Job:
    """The Job a claimed record runs as (raises TypeError or ValueError for a bad one)."""
    return Job(
        rec.handler,
        rec.args,
        queue=rec.queue,
        timeout=rec.timeout,
        headers=rec.headers,
        id=rec.id,
    )
