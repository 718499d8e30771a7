"""Job, the unit of work, and Ctx, the state of one execution of it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from .status import Status

__all__ = ["Ctx", "Job", "new_id"]


def new_id() -> str:
    """Return a new unique id: 32 lowercase hex digits from 128 random bits (as a UUID4's hex,
    at a quarter of the cost)."""
    return os.urandom(16).hex()


class Ctx(MutableMapping[str, Any]):
    """The state of one execution of a job: a mutable mapping of values plus its status.

    Adapters and the handler pass values down the chain through it (``ctx["logger"]``,
    ``ctx["worker_number"]``). A new Ctx is made for every execution; retries within one
    execution (the ``retry`` adapter) share it and count ``attempt``.

    Attributes:
        job_id: the id of the job being executed.
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        deadline: the anyio clock time (``anyio.current_time()``) by which the execution must
            end, or None when the job has no timeout.
        progress_hook: called with each value :meth:`progress` records, by whoever runs the
            execution (``serve`` writes it to the store); None in process. It may be called
            from a worker thread (a sync handler's).
    """

    __slots__ = (
        "_execution_id",
        "_started",
        "_status",
        "_values",
        "attempt",
        "deadline",
        "job_id",
        "progress_hook",
    )

    def __init__(
        self,
        job_id: str,
        *,
        attempt: int = 1,
        deadline: float | None = None,
        execution_id: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.deadline = deadline
        self._execution_id = execution_id
        self._started = time.time()
        self._status = Status.UNKNOWN
        self._values: dict[str, Any] = dict(values) if values else {}
        self.progress_hook: Callable[[dict[str, Any]], None] | None = None

    def progress(self, fraction: float, message: str = "") -> None:
        """Report how far the execution has got.

        The value is kept in ``ctx["progress"]`` as ``{"fraction": fraction, "message":
        message}``; under ``Worker.serve`` it is also written to the job's record
        (``JobRecord.progress``, at most about once a second, the last call always) and a
        PROGRESS event is emitted.

        Args:
            fraction: the part done, from 0 to 1.
            message: what is going on, for people watching.

        Raises:
            ValueError: ``fraction`` is below 0, above 1 or NaN.
            TypeError: ``fraction`` is not a number or ``message`` not a str.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"progress fraction must be a number, got {type(fraction).__name__}")
        if math.isnan(fraction) or not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
        if not isinstance(message, str):
            raise TypeError(f"progress message must be a str, got {type(message).__name__}")
        value = {"fraction": float(fraction), "message": message}
        self._values["progress"] = value
        hook = self.progress_hook
        if hook is not None:
            hook(dict(value))

    @property
    def status(self) -> Status:
        """The execution's status so far (``Status.UNKNOWN`` until something sets it).

        Accepts a Status or an int equal to one (stored as the member); any other code is a
        ValueError.
        """
        return self._status

    @status.setter
    def status(self, value: Status | int) -> None:
        self._status = value if type(value) is Status else Status.coerce(value)

    @property
    def execution_id(self) -> str:
        """A unique id for this execution (made on first use)."""
        if self._execution_id is None:
            self._execution_id = new_id()
        return self._execution_id

    @property
    def started_at(self) -> datetime:
        """When the execution started (an aware UTC datetime)."""
        return datetime.fromtimestamp(self._started, UTC)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` (the same as ``ctx[key] = value``)."""
        self._values[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value for ``key``, or ``default``."""
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return (
            f"Ctx(job_id={self.job_id!r}, status={int(self._status)}, attempt={self.attempt}, "
            f"values={sorted(self._values)!r})"
        )


class Job:
    """A unit of work: which handler to run, with which arguments, on which queue.

    Think of it as an HTTP request for work. Every ``perform*`` call runs a copy of the job
    with a fresh :class:`Ctx`, available as ``job.ctx`` inside the handler and the adapters.

    Args:
        handler: the registered name of the handler to run.
        args: the arguments the handler reads (``job.args["user_id"]``).
        queue: the queue it belongs to (a label for in-process work; a real queue for stores).
        timeout: seconds each execution may take; on expiry it ends with 408.
        headers: cross-cutting metadata (trace context, correlation ids) adapters read and write.
        id: the job's id; a new unique one by default.

    Raises:
        TypeError: a value has the wrong type.
        ValueError: ``handler`` is empty or ``timeout`` is not positive.
    """

    __slots__ = ("args", "ctx", "handler", "headers", "id", "queue", "timeout")

    ctx: Ctx | None
    """The Ctx of the execution this job is part of (None on a job not being executed)."""

    def __init__(
        self,
        handler: str,
        args: dict[str, Any] | None = None,
        *,
        queue: str = "default",
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        id: str | None = None,
    ) -> None:
        if not isinstance(handler, str):
            raise TypeError(f"Job handler must be a str, got {type(handler).__name__}")
        if not handler or handler.isspace():
            raise ValueError(f"Job handler must be a non-blank name, got {handler!r}")
        if args is not None and not isinstance(args, dict):
            raise TypeError(f"Job args must be a dict, got {type(args).__name__}")
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"Job queue must be a non-empty str, got {queue!r}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float):
                raise TypeError(f"Job timeout must be a number, got {type(timeout).__name__}")
            if not timeout > 0:
                raise ValueError(f"Job timeout must be > 0 seconds, got {timeout!r}")
        if headers is not None and not isinstance(headers, dict):
            raise TypeError(f"Job headers must be a dict, got {type(headers).__name__}")
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"Job id must be a non-empty str, got {id!r}")
        self.handler = handler
        self.args: dict[str, Any] = args if args is not None else {}
        self.queue = queue
        self.timeout = float(timeout) if timeout is not None else None
        self.headers: dict[str, str] = headers if headers is not None else {}
        self.id = id if id is not None else new_id()
        self.ctx = None

    def copy(self) -> Job:
        """Return a copy with the same id, shallow copies of args and headers, and no ctx."""
        job = Job.__new__(Job)
        job.handler = self.handler
        job.args = dict(self.args)
        job.queue = self.queue
        job.timeout = self.timeout
        job.headers = dict(self.headers)
        job.id = self.id
        job.ctx = None
        return job

    def __repr__(self) -> str:
        return f"Job({self.handler!r}, id={self.id!r}, queue={self.queue!r})"
