"""``Queue`` and ``SyncQueue``: the producer side of a durable store (enqueue, wait, cancel)."""

from __future__ import annotations

import builtins
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, overload

import anyio

from .._core.clock import clock_of
from .._core.job import Job
from .._core.jsoncheck import check_json
from .._core.retry import RetryPolicy
from .._core.status import Status
from .._core.validate import check_at, check_delay, check_int, check_name, check_payload
from .._runtime.portal import PortalTwin
from .._runtime.timers import seconds
from ..stores._args import args_match, check_args_filter
from ..stores._base import FINAL_STATES, JobRecord, JobState, Store, WorkerInfo, WorkflowStore
from ..stores._open import open_store
from .deferred import complete_waiting, heartbeat_waiting
from .events import DEFAULT_EVENT_BUFFER, EventStream, JobEventKind, check_event_filters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..workflows._model import Chain, Chord, Group, WorkflowRecord

    Workflow = Chain | Group | Chord

__all__ = ["Queue", "SyncQueue"]

# Queue.wait_workflow polls the store: first after 10 ms, then 1.5 times longer each time, up
# to this.
_WAIT_MAX_INTERVAL = 0.25
# What Queue.wait listens for (LOST events always come too).
_END_KINDS = (JobEventKind.SUCCEEDED, JobEventKind.FAILED, JobEventKind.CANCELLED)


class Queue:
    """Put jobs into a durable store and follow them: the producer side of a store.

    ::

        async with open_store("sqlite:///jobs.db") as store:
            queue = Queue(store)
            record = await queue.enqueue(Job("send_email", {"to": "a@b.c"}))
            done = await queue.wait(record.id, timeout=30)

    ``Queue(store)`` works on a store that is already entered. ``async with Queue(store)`` (or
    ``Queue("sqlite:///jobs.db")``, a URL for :func:`~work.stores.open_store`) enters the store
    for the block as well.

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
            raise TypeError(f"Queue needs a store or a store URL, got {type(store).__name__}")
        self.store: Store = store

    def __repr__(self) -> str:
        return f"Queue({self.store.url!r})"

    async def __aenter__(self) -> Self:
        """Enter the store (connect, create the schema) and return the queue."""
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

    # -- producing ----------------------------------------------------------------------------

    def _record(
        self,
        job: Job,
        *,
        now: datetime,
        delay: float | timedelta | None,
        at: datetime | None,
        priority: int,
        retry: RetryPolicy | None,
        unique_key: str | None,
        result_ttl: float | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> JobRecord:
        """The checked record of ``job``; ``trace``: the trace context headers, when the
        caller read them once for a batch (else they are read here)."""
        if not isinstance(job, Job):
            raise TypeError(f"enqueue needs a Job, got {type(job).__name__}")
        if delay is not None and at is not None:
            raise ValueError("give delay or at, not both")
        check_int(priority, "priority")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        if retry is not None:
            check_int(retry.max_attempts, "retry.max_attempts", low=1)
            check_int(retry.max_deferrals, "retry.max_deferrals", low=0)
        if unique_key is not None:
            check_name(unique_key, "unique_key")
        check_name(job.handler, "job.handler")
        check_name(job.queue, "job.queue")
        check_name(job.id, "job.id")
        if job.timeout is not None and not math.isfinite(job.timeout):
            raise ValueError(f"job.timeout must be a finite number of seconds, got {job.timeout!r}")
        due: datetime | None = None
        if delay is not None:
            secs = check_delay(delay)
            if secs > 0:
                due = now + timedelta(seconds=secs)
        elif at is not None:
            due = check_at(at, now)
        check_payload(job.args, "job.args")
        check_json(job.args, "job.args")
        headers = dict(job.headers)
        # Continue the producer's trace in the consumer (the tracing adapter extracts it).
        headers.update(_trace_context() if trace is None else trace)
        if headers:
            check_payload(headers, "job.headers")
            check_json(headers, "job.headers")
            for key, value in headers.items():
                if not isinstance(value, str):
                    raise TypeError(
                        f"job.headers[{key!r}] must be a str, got {type(value).__name__}"
                    )
        retry_settings = None
        if retry is not None:
            retry_settings = retry.stored_settings()  # TypeError for a custom backoff
            check_json(retry_settings, "the retry policy's settings")
        later = due is not None and due > now
        return JobRecord(
            id=job.id,
            handler=job.handler,
            args=job.args,
            queue=job.queue,
            headers=headers,
            priority=priority,
            state=JobState.SCHEDULED if later else JobState.QUEUED,
            status=Status.UNKNOWN,
            max_attempts=retry.max_attempts if retry is not None else 1,
            unique_key=unique_key,
            enqueued_at=now,
            scheduled_for=due,
            timeout=job.timeout,
            retry=retry_settings,
            result_ttl=result_ttl,
        )

    def check(
        self,
        job: Job,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
    ) -> None:
        """Raise what :meth:`enqueue` would raise for these arguments, without touching the
        store (which need not be entered): a form or a command line can refuse bad input
        before it connects.

        Raises:
            TypeError, ValueError: as for :meth:`enqueue`.
        """
        self._record(
            job,
            now=clock_of(self.store).now(),
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
        )

    @overload
    async def enqueue(
        self,
        job: Job,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
        result_ttl: float | timedelta | None = None,
    ) -> JobRecord: ...

    @overload
    async def enqueue(
        self,
        job: Workflow,
        *,
        delay: None = None,
        at: None = None,
        priority: int = 0,
        retry: None = None,
        unique_key: None = None,
        result_ttl: float | timedelta | None = None,
    ) -> WorkflowRecord: ...

    async def enqueue(
        self,
        job: Job | Workflow,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
        result_ttl: float | timedelta | None = None,
    ) -> JobRecord | WorkflowRecord:
        """Store ``job`` to be run by a worker serving its queue.

        ``job`` may also be a workflow (``work.workflows``: a Chain, Group or Chord): its
        first steps are stored at once, the others when their turn comes, and its
        :class:`~work.workflows.WorkflowRecord` is returned. ``priority`` and ``result_ttl``
        then apply to every step; per-step retries and delays are given with
        ``work.workflows.step``.

        The current OpenTelemetry trace context is written into the stored headers, so the
        consumer's span continues the producer's trace.

        Args:
            job: the job; ``job.id`` becomes the record's id.
            delay: run no sooner than this many seconds (or a timedelta) from now.
            at: run no sooner than this aware datetime.
            priority: higher runs first; a 32-bit signed int (-2**31 to 2**31 - 1).
            retry: the policy for failed executions (default: no retries; RetryLater still
                defers up to 20 times).
            unique_key: while a job with this key in the same queue is QUEUED, SCHEDULED,
                RUNNING or WAITING, return that job's record instead of adding another.
            result_ttl: keep the job this long (seconds or a timedelta) once finished, instead
                of the serving worker's ``result_ttl`` (7 days by default).

        Every store keeps the same ranges (``work._core.validate``): ``delay`` finite, from 0
        to 36525 days (about 100 years); ``at`` aware, from 1970-01-01 UTC to 36525 days from now;
        handler, queue, id and unique key non-blank strs of at most 255 characters without
        control characters; args and headers nested at most 64 levels, with no NUL or lone
        surrogate in any str; headers str to str; ``max_attempts`` at most 2**31 - 1.

        Returns:
            The stored record; the existing one if the id (or the active unique key) is taken.

        Raises:
            TypeError: args, headers or a setting is not JSON-serialisable, or a value has the
                wrong type (the message names it); nothing is stored.
            ValueError: a value out of the ranges above, a naive ``at``, or both ``delay`` and
                ``at``; nothing is stored. For a workflow also: a Job (or job id) used twice,
                an id already taken, or ``delay``, ``at``, ``retry`` or ``unique_key`` given.
        """
        if not isinstance(job, Job):
            from ..workflows._model import Chain, Chord, Group

            if not isinstance(job, Chain | Group | Chord):
                raise TypeError(
                    f"enqueue needs a Job or a workflow (Chain, Group, Chord), got "
                    f"{type(job).__name__}"
                )
            if delay is not None or at is not None or retry is not None or unique_key is not None:
                raise ValueError(
                    "delay, at, retry and unique_key apply to one Job: give a workflow's steps "
                    "their own with work.workflows.step(job, retry=..., delay=...)"
                )
            return await self._enqueue_workflow(job, priority=priority, result_ttl=result_ttl)
        (record,) = await self.enqueue_many(
            [job],
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
            result_ttl=result_ttl,
        )
        return record

    async def enqueue_many(
        self,
        jobs: Iterable[Job],
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
        result_ttl: float | timedelta | None = None,
    ) -> list[JobRecord]:
        """Store several jobs with the same options in one store round trip.

        Every job is checked before any is stored: one bad job stores none.

        Returns:
            The stored records, in order (existing ones where an id or unique key is taken).

        Raises:
            TypeError, ValueError: as for :meth:`enqueue`.
        """
        records = self._records(jobs, delay, at, priority, retry, unique_key, result_ttl)
        if not records:
            return []
        return await self.store.add(records)

    def _records(
        self,
        jobs: Iterable[Job],
        delay: float | timedelta | None,
        at: datetime | None,
        priority: int,
        retry: RetryPolicy | None,
        unique_key: str | None,
        result_ttl: float | timedelta | None,
    ) -> list[JobRecord]:
        """The checked records ``enqueue_many`` stores (every job checked before any is
        stored), stamped with the store's clock; shared with SyncQueue's in-thread path."""
        now = clock_of(self.store).now()
        ttl = _result_ttl(result_ttl)
        trace = _trace_context()  # one trace context for the batch: read it once
        return [
            self._record(
                job,
                now=now,
                delay=delay,
                at=at,
                priority=priority,
                retry=retry,
                unique_key=unique_key,
                result_ttl=ttl,
                trace=trace,
            )
            for job in jobs
        ]

    async def _enqueue_workflow(
        self, workflow: Workflow, *, priority: int, result_ttl: float | timedelta | None
    ) -> WorkflowRecord:
        from ..workflows._plan import compile_workflow

        store = self._workflow_store()
        now = clock_of(self.store).now()  # a VirtualClock's time on a store given one
        ttl = _result_ttl(result_ttl)

        def make(job: Job, retry: RetryPolicy | None) -> JobRecord:
            return self._record(
                job,
                now=now,
                delay=None,
                at=None,
                priority=priority,
                retry=retry,
                unique_key=None,
                result_ttl=ttl,
            )

        plan = compile_workflow(workflow, make, now)
        record: WorkflowRecord = await store.add_workflow(plan)
        return record

    def _workflow_store(self) -> WorkflowStore:
        if not isinstance(self.store, WorkflowStore):
            raise TypeError(f"{self.store!r} does not keep workflows (no add_workflow)")
        return self.store

    async def get_workflow(self, id: str) -> WorkflowRecord | None:
        """Return the workflow's record, or None if the store does not know it."""
        record: WorkflowRecord | None = await self._workflow_store().get_workflow(id)
        return record

    async def wait_workflow(self, id: str, timeout: float | None = None) -> WorkflowRecord:
        """Wait until the workflow is SUCCEEDED, FAILED or CANCELLED, and return its record.

        Raises:
            TimeoutError: it had not ended within ``timeout`` seconds.
            LookupError: the store does not know the workflow.
        """
        interval = 0.01
        with anyio.move_on_after(timeout):
            while True:
                record = await self.get_workflow(id)
                if record is None:
                    raise LookupError(f"no workflow with id {id!r} in {self.store.url}")
                if record.state.is_final:
                    return record
                await anyio.sleep(interval)
                interval = min(interval * 1.5, _WAIT_MAX_INTERVAL)
        raise TimeoutError(f"workflow {id!r} had not ended after {timeout:g}s")

    async def cancel_workflow(self, id: str) -> bool:
        """Cancel a workflow: its running steps are cancelled, no later step starts, and it
        ends CANCELLED.

        Returns:
            True if it was unfinished, False if it had already ended or is unknown.
        """
        return await self._workflow_store().cancel_workflow(id)

    async def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[WorkflowRecord]:
        """Return up to ``limit`` workflow records, oldest first (``after``: the last id of
        the previous page).

        Raises:
            ValueError: an unknown state or a negative limit.
        """
        from ..workflows._model import WorkflowState

        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        wanted = WorkflowState(state).value if state is not None else None
        records: builtins.list[WorkflowRecord] = await self._workflow_store().list_workflows(
            state=wanted, limit=limit, after=after
        )
        return records

    async def _list_workflow_jobs(
        self,
        workflow_id: str,
        *,
        state: JobState | None,
        queue: str | None,
        handler: str | None,
        limit: int,
        after: str | None,
    ) -> list[JobRecord]:
        wf = await self.get_workflow(workflow_id)
        if wf is None:
            return []
        ids = [*wf.jobs, *([wf.on_error] if wf.on_error is not None else [])]
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        out: list[JobRecord] = []
        for job_id in ids:
            if len(out) >= limit:
                break
            rec = await self.store.get(job_id)
            if rec is None:
                continue  # not released yet (or purged)
            if state is not None and rec.state is not state:
                continue
            if (queue is not None and rec.queue != queue) or (
                handler is not None and rec.handler != handler
            ):
                continue
            out.append(rec)
        return out

    # -- following ----------------------------------------------------------------------------

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None if the store does not know it.

        Raises:
            TypeError, ValueError: ``id`` is not a str a job id can be (as for enqueue).
        """
        check_name(id, "id")
        return await self.store.get(id)

    async def wait(self, id: str, timeout: float | None = None) -> JobRecord:
        """Wait until the job is SUCCEEDED, FAILED or CANCELLED, and return its record.

        It follows the store's events (:meth:`events`), reading the record again only when
        one says the job ended: it does not poll the store.

        Args:
            id: the job id.
            timeout: seconds to wait at most (None: no limit).

        Raises:
            TimeoutError: the job was not final within ``timeout``.
            LookupError: the store does not know the job.
        """
        check_name(id, "id")
        state = "unknown"
        with anyio.move_on_after(timeout):
            # Subscribed before the first look, so an end that happens after it is seen; the
            # record is read again only when an event says this job ended (or events were
            # lost): no polling.
            while True:
                async with self.store.events(kinds=_END_KINDS) as events:
                    lost = False
                    while not lost:
                        record = await self.store.get(id)
                        if record is None:
                            raise LookupError(f"no job with id {id!r} in {self.store.url}")
                        if record.state.is_final:
                            return record
                        state = record.state.value
                        async for event in events:
                            # LOST: look again, subscribed anew (a lost connection reopens).
                            lost = event.kind is JobEventKind.LOST
                            if lost or event.job_id == id:
                                break
        raise TimeoutError(f"job {id!r} was not finished after {timeout:g}s (it is {state})")

    @asynccontextmanager
    async def events(
        self,
        *,
        kinds: Iterable[JobEventKind | str] | None = None,
        queues: Iterable[str] | str | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> AsyncIterator[EventStream]:
        """Follow job state changes as they happen, made by any process on this store::

            async with queue.events(kinds=["succeeded", "failed"]) as events:
                async for event in events:
                    print(event.kind, event.job_id, event.status)

        Every change made after the ``async with`` is entered is delivered, each job's in
        order (see ``docs/events.md`` for the kinds and each store's mechanism). A subscriber
        that does not keep up never slows the store or the workers: past ``buffer`` unread
        events its oldest are dropped, and it next receives one ``JobEventKind.LOST`` event
        whose ``lost`` says how many.

        Args:
            kinds: only these kinds (names or members; None: all). LOST always comes.
            queues: only jobs of these queues (a single name is accepted; None: all).
            buffer: the most unread events kept.

        Raises:
            ValueError: an unknown kind, an empty queue name or a buffer below 1.
        """
        kind_set, queue_set = check_event_filters(kinds, queues)
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        async with self.store.events(kinds=kind_set, queues=queue_set, buffer=buffer) as stream:
            yield stream

    async def cancel(self, id: str) -> bool:
        """Cancel a job: a QUEUED, SCHEDULED or WAITING one at once; a RUNNING one's execution is
        cancelled within about a second (it ends CANCELLED, 499).

        Returns:
            True if it was cancelled (or the cancel requested), False if unknown or final.

        Raises:
            TypeError, ValueError: ``id`` is not a str a job id can be (as for enqueue).
        """
        check_name(id, "id")
        return await self.store.cancel(id)

    async def complete(
        self,
        id: str,
        *,
        status: Status | int = Status.SUCCESS,
        result: Any = None,
        error: str | None = None,
    ) -> JobRecord:
        """Finish a WAITING job (one whose handler returned ``Deferred``).

        A 2xx ``status`` makes it SUCCEEDED with ``result``; any other status is handled as a
        handler's would be: retried (the handler runs again) if the job's RetryPolicy retries
        it and attempts remain, else FAILED with ``error`` (default: the status phrase).

        Args:
            id: the job id.
            status: how the work ended.
            result: the final result (JSON; 2xx only).
            error: why it failed (non-2xx only).

        Returns:
            The job's new record.

        Raises:
            LookupError: the store does not know the job.
            JobStateError: the job is not WAITING (the message names its state).
            TypeError: ``result`` is not JSON-serialisable (the message names the part), or
                ``status`` is not an int.
            ValueError: an unknown status, or a result given with a non-2xx status.
        """
        return await complete_waiting(self.store, id, status=status, result=result, error=error)

    async def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Keep a WAITING job waiting: push its deadline to ``ttl`` seconds from now.

        Args:
            id: the job id.
            ttl: seconds from now (default: the ttl of the job's ``Deferred``).

        Returns:
            The job's new record (``deadline`` updated).

        Raises:
            LookupError: the store does not know the job.
            JobStateError: the job is not WAITING (the message names its state).
            ValueError: ``ttl`` is not a number > 0.
        """
        return await heartbeat_waiting(self.store, id, ttl)

    async def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
        workflow_id: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> list[JobRecord]:
        """Return up to ``limit`` records matching the filters, oldest first.

        Args:
            state: only jobs in this state.
            queue: only jobs in this queue.
            handler: only jobs for this handler.
            limit: the page size.
            after: the last id of the previous page.
            schedule_id: only the executions of this schedule.
            workflow_id: only the jobs of this workflow that were stored (steps not released
                yet are not jobs yet), in the order of its ``jobs``, its ``on_error`` last.
            args: only jobs whose args hold every given top-level key with an equal JSON
                value (``{"user": 42}``; ``true`` is not ``1``). The store filters (an index
                on PostgreSQL, SQL on SQLite, a bounded Lua scan on Redis).

        Raises:
            ValueError: an unknown state, a limit below 0 or above 2**31 - 1, or a name or
                id that no job can have (as for enqueue).
            TypeError: ``args`` is not a mapping of str keys to JSON values.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        check_int(limit, "limit", low=0)
        for value, what in ((queue, "queue"), (handler, "handler"), (after, "after")):
            if value is not None:
                check_name(value, what)
        wanted = check_args_filter(args)
        if wanted is not None and workflow_id is not None:
            found = await self._list_workflow_jobs(
                workflow_id,
                state=JobState(state) if state is not None else None,
                queue=queue,
                handler=handler,
                limit=2**31 - 1,
                after=after,
            )
            return [r for r in found if args_match(r.args, wanted)][:limit]
        if workflow_id is not None:
            return await self._list_workflow_jobs(
                workflow_id,
                state=JobState(state) if state is not None else None,
                queue=queue,
                handler=handler,
                limit=limit,
                after=after,
            )
        return await self.store.list(
            state=JobState(state) if state is not None else None,
            queue=queue,
            handler=handler,
            limit=limit,
            after=after,
            schedule_id=schedule_id,
            **({"args": wanted} if wanted is not None else {}),
        )

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}``."""
        return await self.store.stats()

    async def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return ``{queue: [(succeeded, failed), ...]}``: the jobs that finished in each of
        the last 60 UTC minutes, oldest first, the current minute last (read from the store,
        so it survives restarts)."""
        return await self.store.finished_per_minute()

    async def workers(self, *, lost: bool = True) -> builtins.list[WorkerInfo]:
        """Return the serving workers registered in the store (``anywork serve`` and
        ``anywork worker`` register themselves and heartbeat), oldest first.

        A worker unseen for 3 heartbeats is lost: ``info.is_lost(now)`` says so.

        Args:
            lost: also return the lost ones.
        """
        found = await self.store.workers()
        if lost:
            return found
        now = datetime.now(UTC)
        return [info for info in found if not info.is_lost(now)]

    # -- history ------------------------------------------------------------------------------

    async def purge(
        self,
        *,
        older_than: datetime | timedelta | float,
        states: Iterable[JobState | str] = FINAL_STATES,
    ) -> int:
        """Delete finished jobs now, whatever their ``result_ttl`` (serving workers delete
        them anyway once it has passed). A finished workflow goes with the last of its jobs.

        Args:
            older_than: jobs that finished before this aware datetime, or more than this long
                ago (seconds or a timedelta).
            states: which finished states to delete (default: SUCCEEDED, FAILED and
                CANCELLED).

        Returns:
            How many jobs were deleted.

        Raises:
            ValueError: a state that is not final (unfinished jobs are never purged), an
                unknown state, a naive datetime or a negative duration.
        """
        wanted: list[JobState] = []
        for state in states:
            st = JobState(state)
            if not st.is_final:
                raise ValueError(
                    f"only finished jobs can be purged (succeeded, failed, cancelled), "
                    f"got state {st.value!r}"
                )
            wanted.append(st)
        if isinstance(older_than, datetime):
            if older_than.tzinfo is None or older_than.utcoffset() is None:
                raise ValueError(
                    f"older_than must be an aware datetime (with tzinfo), got naive {older_than!r}"
                )
            cutoff = older_than.astimezone(UTC)
        else:
            age = seconds(older_than, name="older_than")
            if not 0 <= age < float("inf"):
                raise ValueError(f"older_than must be a duration >= 0, got {older_than!r}")
            cutoff = clock_of(self.store).now() - timedelta(seconds=age)
        return await self.store.purge(older_than=cutoff, states=wanted)

    async def retry(self, id: str) -> JobRecord:
        """Run a FAILED or CANCELLED job again now: it is QUEUED with its attempts, status,
        error and result cleared (the same id, args and options).

        Retrying the step that failed a FAILED workflow resumes the workflow in the same
        transaction: it is RUNNING again and what follows the step runs as normal; its
        ``on_error`` does not run again (docs/workflows.md, "Retrying a failed step").

        Returns:
            The job's new record.

        Raises:
            LookupError: the store does not know the job.
            ValueError: the job is not FAILED or CANCELLED (the message names its state), or
                another unfinished job holds its unique_key.
        """
        record = await self.store.retry(id)
        if record is None:
            raise LookupError(f"no job with id {id!r} in {self.store.url}")
        return record


_propagate: Any = None


def _trace_context() -> dict[str, str]:
    """The current OpenTelemetry trace context as the headers a job carries (empty with no
    active span or propagator)."""
    global _propagate
    if _propagate is None:
        # Imported on first use, not at the top, so that `import work` does not load
        # OpenTelemetry.
        from opentelemetry import propagate

        _propagate = propagate
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return carrier


def _result_ttl(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    ttl = seconds(value, name="result_ttl")
    if not 0 <= ttl < float("inf"):
        raise ValueError(f"result_ttl must be a finite duration >= 0, got {value!r}")
    return ttl


class SyncQueue:
    """The synchronous twin of :class:`Queue`, for code with no event loop (scripts, Flask,
    Django): the same methods, blocking.

    It runs an event loop on a background thread (an anyio blocking portal), enters the
    store there, and forwards each call to a :class:`Queue`. Close it with :meth:`close` or use
    it as a context manager::

        with SyncQueue("sqlite:///jobs.db") as queue:
            record = queue.enqueue(Job("send_email", {"to": "a@b.c"}))

    Args:
        url_or_store: a store URL, or a store object not entered yet (SyncQueue enters it on
            its own event loop and leaves it on close).
        **options: options for :func:`~work.stores.open_store` when given a URL.
    """

    def __init__(self, url_or_store: str | Store, **options: Any) -> None:
        queue = Queue(url_or_store, **options)
        self.store = queue.store
        self._twin: PortalTwin[Queue] = PortalTwin("this SyncQueue")
        self._queue = self._twin.enter(queue)

    def __repr__(self) -> str:
        return f"SyncQueue({self.store.url!r})"

    def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        if not self._twin.entered:
            raise RuntimeError(f"{self!r} is closed")
        return self._twin.call(fn, *args, **kwargs)

    @overload
    def enqueue(
        self,
        job: Job,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
        result_ttl: float | timedelta | None = None,
    ) -> JobRecord: ...

    @overload
    def enqueue(
        self,
        job: Workflow,
        *,
        delay: None = None,
        at: None = None,
        priority: int = 0,
        retry: None = None,
        unique_key: None = None,
        result_ttl: float | timedelta | None = None,
    ) -> WorkflowRecord: ...

    def enqueue(
        self,
        job: Job | Workflow,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
        result_ttl: float | timedelta | None = None,
    ) -> JobRecord | WorkflowRecord:
        """Store ``job`` (or a workflow); see :meth:`Queue.enqueue`.

        On a store that can add in the calling thread (``add_blocking``: SQLite in the
        calling thread over its connection, Redis with redis-py's synchronous client,
        PostgreSQL over a psycopg 3 connection), a Job is checked and stored here, with no
        round trip through the portal's event loop.
        """
        if isinstance(job, Job):
            here = self._add_here(
                [job],
                delay=delay,
                at=at,
                priority=priority,
                retry=retry,
                unique_key=unique_key,
                result_ttl=result_ttl,
            )
            if here is not None:
                return here[0]
        record: JobRecord | WorkflowRecord = self._call(
            self._queue.enqueue,
            job,
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
            result_ttl=result_ttl,
        )
        return record

    def _add_here(
        self,
        jobs: list[Job],
        *,
        delay: float | timedelta | None,
        at: datetime | None,
        priority: int,
        retry: RetryPolicy | None,
        unique_key: str | None,
        result_ttl: float | timedelta | None,
    ) -> list[JobRecord] | None:
        """``Queue.enqueue_many`` in the calling thread, when the store has ``add_blocking``
        and a real clock; None otherwise, or when ``add_blocking`` answers None (it cannot
        add here: the caller goes through the portal)."""
        add_blocking = getattr(self.store, "add_blocking", None)
        if add_blocking is None or clock_of(self.store).virtual:
            return None
        if not self._twin.entered:
            raise RuntimeError(f"{self!r} is closed")
        queue = self._queue
        records = queue._records(jobs, delay, at, priority, retry, unique_key, result_ttl)
        if not records:
            return []
        stored: list[JobRecord] | None = add_blocking(records)
        return stored

    def check(
        self,
        job: Job,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
    ) -> None:
        """Raise what :meth:`enqueue` would raise, without touching the store; see
        :meth:`Queue.check`."""
        self._queue.check(
            job, delay=delay, at=at, priority=priority, retry=retry, unique_key=unique_key
        )

    def enqueue_many(
        self,
        jobs: Iterable[Job],
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
        result_ttl: float | timedelta | None = None,
    ) -> list[JobRecord]:
        """Store several jobs in one round trip; see :meth:`Queue.enqueue_many` (in the
        calling thread where :meth:`enqueue` is)."""
        jobs = list(jobs)
        here = self._add_here(
            jobs,
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
            result_ttl=result_ttl,
        )
        if here is not None:
            return here
        records: list[JobRecord] = self._call(
            self._queue.enqueue_many,
            jobs,
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
            result_ttl=result_ttl,
        )
        return records

    def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None; see :meth:`Queue.get`."""
        record: JobRecord | None = self._call(self._queue.get, id)
        return record

    def wait(self, id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job is final; see :meth:`Queue.wait`.

        Raises:
            TimeoutError: the job was not final within ``timeout``.
            LookupError: the store does not know the job.
        """
        record: JobRecord = self._call(self._queue.wait, id, timeout)
        return record

    def cancel(self, id: str) -> bool:
        """Cancel a job; see :meth:`Queue.cancel`."""
        return bool(self._call(self._queue.cancel, id))

    def complete(
        self,
        id: str,
        *,
        status: Status | int = Status.SUCCESS,
        result: Any = None,
        error: str | None = None,
    ) -> JobRecord:
        """Finish a WAITING job; see :meth:`Queue.complete`."""
        record: JobRecord = self._call(
            self._queue.complete, id, status=status, result=result, error=error
        )
        return record

    def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Push a WAITING job's deadline; see :meth:`Queue.heartbeat`."""
        record: JobRecord = self._call(self._queue.heartbeat, id, ttl)
        return record

    def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
        workflow_id: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> list[JobRecord]:
        """Return a page of records; see :meth:`Queue.list`."""
        records: list[JobRecord] = self._call(
            self._queue.list,
            state=state,
            queue=queue,
            handler=handler,
            limit=limit,
            after=after,
            schedule_id=schedule_id,
            workflow_id=workflow_id,
            args=args,
        )
        return records

    def get_workflow(self, id: str) -> WorkflowRecord | None:
        """Return the workflow's record, or None; see :meth:`Queue.get_workflow`."""
        record: WorkflowRecord | None = self._call(self._queue.get_workflow, id)
        return record

    def wait_workflow(self, id: str, timeout: float | None = None) -> WorkflowRecord:
        """Block until the workflow has ended; see :meth:`Queue.wait_workflow`.

        Raises:
            TimeoutError: it had not ended within ``timeout``.
            LookupError: the store does not know the workflow.
        """
        record: WorkflowRecord = self._call(self._queue.wait_workflow, id, timeout)
        return record

    def cancel_workflow(self, id: str) -> bool:
        """Cancel a workflow; see :meth:`Queue.cancel_workflow`."""
        return bool(self._call(self._queue.cancel_workflow, id))

    def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[WorkflowRecord]:
        """Return a page of workflow records; see :meth:`Queue.list_workflows`."""
        records: builtins.list[WorkflowRecord] = self._call(
            self._queue.list_workflows, state=state, limit=limit, after=after
        )
        return records

    def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}``; see :meth:`Queue.stats`."""
        counts: dict[str, dict[str, int]] = self._call(self._queue.stats)
        return counts

    def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return the last hour's finished jobs per queue and minute; see
        :meth:`Queue.finished_per_minute`."""
        series: dict[str, builtins.list[tuple[int, int]]] = self._call(
            self._queue.finished_per_minute
        )
        return series

    def workers(self, *, lost: bool = True) -> builtins.list[WorkerInfo]:
        """Return the workers registered in the store; see :meth:`Queue.workers`."""
        found: builtins.list[WorkerInfo] = self._call(self._queue.workers, lost=lost)
        return found

    def purge(
        self,
        *,
        older_than: datetime | timedelta | float,
        states: Iterable[JobState | str] = FINAL_STATES,
    ) -> int:
        """Delete finished jobs now; see :meth:`Queue.purge`."""
        return int(self._call(self._queue.purge, older_than=older_than, states=list(states)))

    def retry(self, id: str) -> JobRecord:
        """Run a FAILED or CANCELLED job again now; see :meth:`Queue.retry`."""
        record: JobRecord = self._call(self._queue.retry, id)
        return record

    def close(self) -> None:
        """Leave the store and stop the background event loop. Calling it again does nothing."""
        self._twin.exit()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
