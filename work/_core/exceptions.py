"""The error tree: every exception anywork raises of its own.

::

    WorkError
    ├── StatusError                  carries .status (a Status)
    │   ├── JobTimeoutError          also a builtin TimeoutError; status 408
    │   └── RetryLater               status 429; asks for another try after .delay seconds
    ├── UnknownHandlerError          also a builtin LookupError; no handler by that name
    └── JobStateError                also a builtin ValueError; the job is not in the state
                                     an operation needs (complete/heartbeat on a non-WAITING job)

Validation errors on the public API are builtin ``ValueError`` / ``TypeError`` with a message
naming the bad value; a worker that is not running raises ``RuntimeError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .status import Status

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "JobStateError",
    "JobTimeoutError",
    "RetryLater",
    "StatusError",
    "UnknownHandlerError",
    "WorkError",
]


class WorkError(Exception):
    """Raised for errors of anywork's own; the base of every exception it defines."""


class StatusError(WorkError):
    """Raised by a handler (or adapter) to end an execution with a given status.

    ``raise StatusError(Status.BAD_REQUEST, "no such user")`` ends the execution with 400.
    The message defaults to the status phrase ("Bad Request"). Raising says the execution
    failed: a StatusError whose code is not an error (1xx, 2xx, 3xx) ends it with 500, as any
    other exception does; to end with 204 or 202, set ``job.ctx.status`` and return.

    Attributes:
        status: the Status the execution ends with.
        message: the human-readable reason.

    Raises:
        ValueError: ``status`` is not a known code, or is -1 (UNKNOWN: not an outcome).
        TypeError: ``status`` is not an int.
    """

    def __init__(self, status: Status | int, message: str = "") -> None:
        self.status = Status.coerce(status)
        if self.status is Status.UNKNOWN:
            raise ValueError("StatusError needs the code an execution ends with, not -1 (UNKNOWN)")
        self.message = message or self.status.phrase
        super().__init__(f"{int(self.status)} {self.message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by its own arguments (a handler run in a worker process sends it back).
        return (type(self), (int(self.status), self.message))


class JobTimeoutError(StatusError, TimeoutError):
    """Raised when an execution outlives its job's ``timeout``; its status is 408.

    Attributes:
        timeout: the timeout in seconds that expired.
        job: the job whose execution timed out, when known.
    """

    def __init__(self, timeout: float, job: Job | None = None) -> None:
        self.timeout = timeout
        self.job = job
        name = f" {job.handler!r}" if job is not None else ""
        super().__init__(Status.TIMEOUT, f"job{name} timed out after {timeout:g}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JobTimeoutError, (self.timeout,))


class RetryLater(StatusError):
    """Raised by a handler (or the ``limit`` adapter) to ask for another try after ``delay`` s.

    It ends the execution with 429. Retry policies treat it as a deferral: it does not use up
    an attempt, up to the policy's ``max_deferrals``.

    Attributes:
        delay: seconds to wait before the next try (>= 0).
    """

    def __init__(self, delay: float, message: str = "") -> None:
        if delay < 0:
            raise ValueError(f"RetryLater delay must be >= 0, got {delay!r}")
        self.delay = float(delay)
        super().__init__(Status.TOO_MANY_REQUESTS, message or f"retry in {self.delay:g}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (RetryLater, (self.delay, self.message))


class UnknownHandlerError(WorkError, LookupError):
    """Raised when a job names a handler the worker has not registered.

    Attributes:
        handler: the name that was looked up.
        known: the names that are registered.
    """

    def __init__(self, handler: str, known: list[str] | None = None) -> None:
        self.handler = handler
        self.known = sorted(known or [])
        listed = ", ".join(repr(k) for k in self.known) or "none"
        super().__init__(f"no handler named {handler!r} is registered (registered: {listed})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnknownHandlerError, (self.handler, self.known))


class JobStateError(WorkError, ValueError):
    """Raised when a job is not in the state an operation needs, e.g. ``Queue.complete`` or
    ``Queue.heartbeat`` on a job that is not WAITING.

    Attributes:
        job_id: the job's id.
        state: the state the job is in (a ``JobState`` value, such as ``"succeeded"``).
        expected: the state the operation needs.
    """

    def __init__(self, job_id: str, state: str, expected: str = "waiting") -> None:
        self.job_id = job_id
        self.state = str(state)
        self.expected = expected
        super().__init__(f"job {job_id!r} is {self.state}, not {expected}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JobStateError, (self.job_id, self.state, self.expected))
