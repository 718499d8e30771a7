"""Job events: what happened to a job in a store, and the bounded fan-out that delivers them.

Every store turns its job state changes into :class:`JobEvent` objects and hands them to an
:class:`EventHub`; each subscriber reads from its own bounded buffer, so a slow one never
blocks the store or the workers: past the buffer its oldest events are dropped, and the next
thing it reads is one :attr:`JobEventKind.LOST` event saying how many.

This module imports nothing but the core, so the stores (which produce events) and the queue
(which subscribes) can both use it.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import anyio

from .._core.status import Status

__all__ = [
    "DEFAULT_EVENT_BUFFER",
    "EventHub",
    "EventStream",
    "JobEvent",
    "JobEventKind",
    "check_event_filters",
    "kind_for_change",
]

DEFAULT_EVENT_BUFFER = 1000
"""Events a subscriber may fall behind by before its oldest are dropped."""


class JobEventKind(StrEnum):
    """What happened to a job."""

    ENQUEUED = "enqueued"
    """Added to the store (QUEUED or SCHEDULED), handed back on a worker's shutdown, run
    again by ``Queue.retry``, or due again after a WAITING job's failed completion."""
    STARTED = "started"
    """Claimed by a worker: RUNNING (``attempt`` counts this claim)."""
    PROGRESS = "progress"
    """The running handler reported progress (``JobEvent.progress``)."""
    RETRYING = "retrying"
    """The execution ended and the job will run again: a retry wait, a ``RetryLater``, or a
    lost worker's job put back (``status`` is the status that caused it)."""
    WAITING = "waiting"
    """The handler returned ``Deferred``: the job waits for an outside completion
    (``Queue.complete``, a callback) until its deadline."""
    SUCCEEDED = "succeeded"
    """Finished with a 2xx status."""
    FAILED = "failed"
    """Finished for good with a non-2xx status."""
    CANCELLED = "cancelled"
    """Cancelled (499)."""
    LOST = "lost"
    """Not a job's event: this subscriber fell behind and ``JobEvent.lost`` events were dropped
    (or, with ``lost == 0``, an unknown number: the store's connection was lost)."""


_FINAL_KINDS = {
    "succeeded": JobEventKind.SUCCEEDED,
    "failed": JobEventKind.FAILED,
    "cancelled": JobEventKind.CANCELLED,
    "running": JobEventKind.STARTED,
    "waiting": JobEventKind.WAITING,
}


def kind_for_change(
    old_state: str | None, new_state: str, *, attempts_kept: bool = True
) -> JobEventKind | None:
    """The event a state change makes (the rule every store applies; SQL triggers and Lua
    scripts spell the same rule out).

    Args:
        old_state: the state before (None for a new job).
        new_state: the state after.
        attempts_kept: for RUNNING -> QUEUED, whether the attempt still counts (a lost worker's
            job put back: RETRYING) or was given back (a hand-back: ENQUEUED).

    Returns:
        The kind, or None when the state did not change.
    """
    if old_state == new_state:
        return None
    kind = _FINAL_KINDS.get(new_state)
    if kind is not None:
        return kind
    if old_state == "running" and (new_state == "scheduled" or attempts_kept):
        return JobEventKind.RETRYING
    return JobEventKind.ENQUEUED


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    """One change to one job in a store, as a subscriber sees it.

    Attributes:
        kind: what happened.
        job_id: the job's id (``""`` for a LOST event).
        queue: the job's queue.
        handler: the job's handler name.
        status: the job's status after the change (UNKNOWN until an execution ends).
        attempt: the job's attempts so far (claims that counted).
        at: when the store recorded the change (aware UTC).
        workflow_id: the workflow the job belongs to (None: not part of one).
        schedule_id: the schedule that fired the job (None: not fired by one).
        progress: for PROGRESS, ``{"fraction": float, "message": str}``; else None.
        lost: for LOST, how many events were dropped (0: unknown); else 0.
    """

    kind: JobEventKind
    job_id: str
    queue: str
    handler: str
    status: Status = Status.UNKNOWN
    attempt: int = 0
    at: datetime
    workflow_id: str | None = None
    schedule_id: str | None = None
    progress: dict[str, Any] | None = None
    lost: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (``at`` in ISO 8601, ``status`` as its code)."""
        return {
            "kind": str(self.kind),
            "job_id": self.job_id,
            "queue": self.queue,
            "handler": self.handler,
            "status": int(self.status),
            "attempt": self.attempt,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "workflow_id": self.workflow_id,
            "schedule_id": self.schedule_id,
            "progress": self.progress,
            "lost": self.lost,
        }


def event_from_values(
    kind: str,
    job_id: str,
    queue: str,
    handler: str,
    status: Any,
    attempt: Any,
    at: float | datetime,
    progress: Any = None,
) -> JobEvent:
    """Build an event from the loosely typed values a store row or message carries."""
    try:
        code = Status.coerce(int(status))
    except (TypeError, ValueError):
        code = Status.UNKNOWN
    when = at if isinstance(at, datetime) else datetime.fromtimestamp(float(at), UTC)
    return JobEvent(
        kind=JobEventKind(kind),
        job_id=job_id,
        queue=queue,
        handler=handler,
        status=code,
        attempt=int(attempt or 0),
        at=when.astimezone(UTC),
        progress=progress if isinstance(progress, dict) else None,
    )


def check_event_filters(
    kinds: Iterable[JobEventKind | str] | None, queues: Iterable[str] | str | None
) -> tuple[frozenset[JobEventKind] | None, frozenset[str] | None]:
    """Validate the ``kinds`` and ``queues`` filters of a subscription.

    Raises:
        ValueError: an unknown kind, or an empty queue name.
        TypeError: a queue name that is not a str.
    """
    kind_set: frozenset[JobEventKind] | None = None
    if kinds is not None:
        if isinstance(kinds, str):
            kinds = [kinds]
        found = set()
        for kind in kinds:
            try:
                found.add(JobEventKind(kind))
            except ValueError:
                known = ", ".join(k.value for k in JobEventKind)
                raise ValueError(f"unknown event kind {kind!r} (known: {known})") from None
        kind_set = frozenset(found)
    queue_set: frozenset[str] | None = None
    if queues is not None:
        if isinstance(queues, str):
            queues = [queues]
        names = set()
        for name in queues:
            if not isinstance(name, str):
                raise TypeError(f"a queue name must be a str, got {type(name).__name__}")
            if not name:
                raise ValueError("a queue name must not be empty")
            names.add(name)
        queue_set = frozenset(names)
    return kind_set, queue_set


class EventStream:
    """One subscriber's view of a store's events: an async iterator over a bounded buffer.

    Get one from ``queue.events(...)`` (``async with`` it, then ``async for``). It holds at most
    ``buffer`` events; when more arrive than it has read, the oldest are dropped, and the next
    event it yields is a :attr:`JobEventKind.LOST` event whose ``lost`` says how many.

    Attributes:
        kinds: the kinds it receives (None: all). LOST events are always delivered.
        queues: the queues it receives (None: all).
        buffer: the most events it holds unread.
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        kinds: frozenset[JobEventKind] | None = None,
        queues: frozenset[str] | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        self.kinds = kinds
        self.queues = queues
        self.buffer = buffer
        self._hub = hub
        self._events: deque[JobEvent] = deque()
        self._dropped = 0
        self._unknown_loss = False
        self._lock = threading.Lock()
        self._thread = threading.get_ident()
        self._wakeup: anyio.Event | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<EventStream unread={len(self._events)} dropped={self._dropped}>"

    def matches(self, event: JobEvent) -> bool:
        """True if this subscriber wants ``event``."""
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        return self.queues is None or event.queue in self.queues

    def put(self, event: JobEvent) -> None:
        """Buffer ``event`` (dropping the oldest past ``buffer``); never blocks. Any thread."""
        with self._lock:
            self._events.append(event)
            if len(self._events) > self.buffer:
                self._events.popleft()
                self._dropped += 1
            wakeup = self._wakeup if threading.get_ident() == self._thread else None
        if wakeup is not None:
            wakeup.set()

    def lose(self, count: int | None) -> None:
        """Record that ``count`` events were missed before reaching this buffer (None: an
        unknown number, such as across a lost connection)."""
        with self._lock:
            if count is None:
                self._unknown_loss = True
            else:
                self._dropped += count
            wakeup = self._wakeup if threading.get_ident() == self._thread else None
        if wakeup is not None:
            wakeup.set()

    def _take(self) -> JobEvent | None:
        with self._lock:
            if self._dropped or self._unknown_loss:
                lost, self._dropped, self._unknown_loss = self._dropped, 0, False
                return JobEvent(
                    kind=JobEventKind.LOST,
                    job_id="",
                    queue="",
                    handler="",
                    at=datetime.now(UTC),
                    lost=lost,
                )
            if self._events:
                return self._events.popleft()
            self._wakeup = anyio.Event()
            return None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JobEvent:
        """Return the next event, waiting for one.

        Raises:
            StopAsyncIteration: the subscription was closed.
        """
        while True:
            if self._closed:
                raise StopAsyncIteration
            event = self._take()
            if event is not None:
                return event
            wakeup = self._wakeup
            assert wakeup is not None
            # A publish from another thread cannot set an anyio Event: a hub fed from other
            # threads (the memory store) makes its subscribers look again this often.
            with anyio.move_on_after(math.inf if self._hub.poll is None else self._hub.poll):
                await wakeup.wait()

    async def get(self, timeout: float | None = None) -> JobEvent | None:
        """Return the next event, or None if none came within ``timeout`` seconds."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            return await self.__anext__()
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving events; iteration ends."""
        self._closed = True
        self._hub.discard(self)


class EventHub:
    """The fan-out of one store object: every event published reaches each matching
    subscriber's buffer. ``publish`` never blocks and may be called from any thread.

    Args:
        poll: for a hub published to from other threads than its subscribers', how often (in
            seconds) a waiting subscriber looks for events put there; None: never (every
            publish comes from the subscribers' own event loop thread).
    """

    def __init__(self, *, poll: float | None = None) -> None:
        self.poll = poll
        self._streams: set[EventStream] = set()
        self._lock = threading.Lock()

    @property
    def subscribed(self) -> bool:
        """True while at least one subscriber is open."""
        return bool(self._streams)

    def open(
        self,
        *,
        kinds: frozenset[JobEventKind] | None = None,
        queues: frozenset[str] | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> EventStream:
        """Add a subscriber and return its stream (close it when done)."""
        stream = EventStream(self, kinds=kinds, queues=queues, buffer=buffer)
        with self._lock:
            self._streams.add(stream)
        return stream

    def discard(self, stream: EventStream) -> None:
        """Remove a subscriber (closing it twice is harmless)."""
        with self._lock:
            self._streams.discard(stream)

    def publish(self, events: Iterable[JobEvent]) -> None:
        """Deliver ``events``, in order, to every subscriber that wants them."""
        with self._lock:
            streams = list(self._streams)
        if not streams:
            return
        for event in events:
            for stream in streams:
                if stream.matches(event):
                    stream.put(event)

    def lose(self, count: int | None = None) -> None:
        """Tell every subscriber that ``count`` events were missed (None: an unknown number)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.lose(count)
