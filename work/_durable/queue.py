"""``Queue`` and ``SyncQueue``: the producer side of a durable store (enqueue, wait, cancel)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from .._core.job import Job
from .._core.jsoncheck import check_json
from .._core.retry import RetryPolicy
from .._core.status import Status
from .._core.validate import check_at, check_delay, check_int, check_name, check_payload
from .._runtime.portal import PortalTwin
from ..stores._base import JobRecord, JobState, Store
from ..stores._open import open_store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Queue", "SyncQueue"]

# Queue.wait polls the store: first after 10 ms, then 1.5 times longer each time, up to this.
_WAIT_MAX_INTERVAL = 0.25


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
    ) -> JobRecord:
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
        # Imported here, not at the top, so that `import work` does not load OpenTelemetry;
        # after the first enqueue this is a dictionary lookup.
        from opentelemetry import propagate

        propagate.inject(headers)
        check_payload(headers, "job.headers")
        check_json(headers, "job.headers")
        for key, value in headers.items():
            if not isinstance(value, str):
                raise TypeError(f"job.headers[{key!r}] must be a str, got {type(value).__name__}")
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
        )

    async def enqueue(
        self,
        job: Job,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
    ) -> JobRecord:
        """Store ``job`` to be run by a worker serving its queue.

        The current OpenTelemetry trace context is written into the stored headers, so the
        consumer's span continues the producer's trace.

        Args:
            job: the job; ``job.id`` becomes the record's id.
            delay: run no sooner than this many seconds (or a timedelta) from now.
            at: run no sooner than this aware datetime.
            priority: higher runs first; a 32-bit signed int (-2**31 to 2**31 - 1).
            retry: the policy for failed executions (default: no retries; RetryLater still
                defers up to 20 times).
            unique_key: while a job with this key in the same queue is QUEUED, SCHEDULED or
                RUNNING, return that job's record instead of adding another.

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
                ``at``; nothing is stored.
        """
        (record,) = await self.enqueue_many(
            [job], delay=delay, at=at, priority=priority, retry=retry, unique_key=unique_key
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
    ) -> list[JobRecord]:
        """Store several jobs with the same options in one store round trip.

        Every job is checked before any is stored: one bad job stores none.

        Returns:
            The stored records, in order (existing ones where an id or unique key is taken).

        Raises:
            TypeError, ValueError: as for :meth:`enqueue`.
        """
        now = datetime.now(UTC)
        records = [
            self._record(
                job,
                now=now,
                delay=delay,
                at=at,
                priority=priority,
                retry=retry,
                unique_key=unique_key,
            )
            for job in jobs
        ]
        if not records:
            return []
        return await self.store.add(records)

    # -- following ----------------------------------------------------------------------------

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None if the store does not know it."""
        return await self.store.get(id)

    async def wait(self, id: str, timeout: float | None = None) -> JobRecord:
        """Wait until the job is SUCCEEDED, FAILED or CANCELLED, and return its record.

        Args:
            id: the job id.
            timeout: seconds to wait at most (None: no limit).

        Raises:
            TimeoutError: the job was not final within ``timeout``.
            LookupError: the store does not know the job.
        """
        interval = 0.01
        state = "unknown"
        with anyio.move_on_after(timeout):
            while True:
                record = await self.store.get(id)
                if record is None:
                    raise LookupError(f"no job with id {id!r} in {self.store.url}")
                if record.state.is_final:
                    return record
                state = record.state.value
                await anyio.sleep(interval)
                interval = min(interval * 1.5, _WAIT_MAX_INTERVAL)
        raise TimeoutError(f"job {id!r} was not finished after {timeout:g}s (it is {state})")

    async def cancel(self, id: str) -> bool:
        """Cancel a job: a QUEUED or SCHEDULED one at once; a RUNNING one's execution is
        cancelled within about a second (it ends CANCELLED, 499).

        Returns:
            True if it was cancelled (or the cancel requested), False if unknown or final.
        """
        return await self.store.cancel(id)

    async def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
    ) -> list[JobRecord]:
        """Return up to ``limit`` records matching the filters, oldest first.

        Args:
            state: only jobs in this state.
            queue: only jobs in this queue.
            handler: only jobs for this handler.
            limit: the page size.
            after: the last id of the previous page.
            schedule_id: only the executions of this schedule.

        Raises:
            ValueError: an unknown state or a negative limit.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        return await self.store.list(
            state=JobState(state) if state is not None else None,
            queue=queue,
            handler=handler,
            limit=limit,
            after=after,
            schedule_id=schedule_id,
        )

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}``."""
        return await self.store.stats()


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

    def enqueue(
        self,
        job: Job,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
    ) -> JobRecord:
        """Store ``job``; see :meth:`Queue.enqueue`."""
        record: JobRecord = self._call(
            self._queue.enqueue,
            job,
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
        )
        return record

    def enqueue_many(
        self,
        jobs: Iterable[Job],
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        unique_key: str | None = None,
    ) -> list[JobRecord]:
        """Store several jobs in one round trip; see :meth:`Queue.enqueue_many`."""
        records: list[JobRecord] = self._call(
            self._queue.enqueue_many,
            list(jobs),
            delay=delay,
            at=at,
            priority=priority,
            retry=retry,
            unique_key=unique_key,
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

    def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
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
        )
        return records

    def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}``; see :meth:`Queue.stats`."""
        counts: dict[str, dict[str, int]] = self._call(self._queue.stats)
        return counts

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
