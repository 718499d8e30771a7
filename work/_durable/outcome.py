"""The outcome rules: what a store records for a claimed job once its execution has ended."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._core.clock import current_clock
from .._core.deferred import Deferred
from .._core.exceptions import RetryLater, StatusError
from .._core.jsoncheck import check_json, json_ok
from .._core.retry import backoff_from_dict
from .._core.status import Status
from ..stores._base import JobRecord, JobState, Outcome

if TYPE_CHECKING:
    from .._runtime.worker import Execution

__all__ = [
    "DEFAULT_MAX_DEFERRALS",
    "decide",
    "final",
    "hand_back",
    "resolve",
    "retry_or_fail",
    "waiting",
]

DEFAULT_MAX_DEFERRALS = 20
"""RetryLater deferrals allowed to a job enqueued without a RetryPolicy (RetryPolicy's default)."""


def _now() -> datetime:
    # The clock of the serve that decides (a VirtualClock in tests), else the system's.
    return current_clock().now()


def _describe(error: BaseException | None, status: Status) -> str:
    if error is None:
        return f"{int(status)} {status.phrase}"
    if isinstance(error, StatusError):
        return error.message
    return f"{type(error).__name__}: {error}"


def final(rec: JobRecord, state: JobState, status: Status, error: str | None) -> Outcome:
    """An outcome that ends the job for good (or CANCELLED / FAILED with that status)."""
    return Outcome(id=rec.id, state=state, status=status, error=error)


def _later(
    rec: JobRecord, status: Status, error: str, delay: float, *, deferral: bool = False
) -> Outcome:
    return Outcome(
        id=rec.id,
        state=JobState.SCHEDULED,
        status=status,
        error=error,
        scheduled_for=_now() + timedelta(seconds=delay),
        give_back_attempt=deferral,
        deferral=deferral,
    )


def hand_back(rec: JobRecord) -> Outcome:
    """The outcome that gives a claimed job back, ready at once, without using an attempt."""
    return Outcome(
        id=rec.id,
        state=JobState.QUEUED,
        status=rec.status,
        error=rec.error,
        give_back_attempt=True,
    )


def _why_unstorable(result: Any) -> str:
    """Name the part of ``result`` JSON cannot carry, as enqueue does for args."""
    try:
        check_json(result, "the result")
    except TypeError as named:
        return str(named)
    return "not JSON-serialisable"  # pragma: no cover - json_ok and check_json agree


def decide(rec: JobRecord, execution: Execution, *, stopping: bool) -> Outcome:
    """Return what to store for a claimed job whose execution has ended.

    Args:
        rec: the job's record as claimed (``attempts`` counts this claim).
        execution: the finished execution.
        stopping: the worker is shutting down (a 499 then means "hand it back").
    """
    status = execution.status
    error = execution.error
    if status is Status.CANCELLED and stopping and not isinstance(error, StatusError):
        # Cancelled by the stop (not a StatusError(499) the handler raised): hand it back.
        return hand_back(rec)
    if status.is_success:
        if isinstance(execution.result, Deferred):
            return waiting(rec, execution.result)
        # The same rule as for args at enqueue (str keys, finite floats, JSON types), so that
        # a result is stored exactly as returned or refused, never silently changed.
        if not json_ok(execution.result):
            message = (
                f"the result of handler {rec.handler!r} cannot be stored as JSON: "
                f"{_why_unstorable(execution.result)}"
            )
            return final(rec, JobState.FAILED, Status.INTERNAL_ERROR, message)
        return Outcome(id=rec.id, state=JobState.SUCCEEDED, status=status, result=execution.result)
    if status is Status.UNKNOWN:
        status = Status.INTERNAL_ERROR
    message = _describe(error, status)
    retry = rec.retry or {}
    if isinstance(error, RetryLater):
        max_deferrals = retry.get("max_deferrals", DEFAULT_MAX_DEFERRALS)
        if rec.deferrals < max_deferrals:
            return _later(rec, status, message, error.delay, deferral=True)
    return retry_or_fail(rec, status, message)


def retry_or_fail(rec: JobRecord, status: Status, message: str) -> Outcome:
    """A failed execution's outcome: SCHEDULED for a retry when the job's stored policy
    retries ``status`` and attempts remain, else FAILED."""
    retry = rec.retry or {}
    if int(status) in retry.get("retry_on", ()) and rec.attempts < rec.max_attempts:
        try:
            delay = backoff_from_dict(retry["backoff"]).delay(rec.attempts)
        except (KeyError, TypeError, ValueError) as exc:
            message = f"{message} (not retried: the stored backoff is invalid: {exc})"
        else:
            return _later(rec, status, message, delay)
    return final(rec, JobState.FAILED, status, message)


def waiting(rec: JobRecord, deferred: Deferred) -> Outcome:
    """The outcome of a handler that returned ``Deferred``: WAITING until a deadline ``ttl``
    seconds ahead (FAILED 500 if its provisional result cannot be stored)."""
    if not json_ok(deferred.result):
        message = (
            f"the Deferred result of handler {rec.handler!r} cannot be stored as JSON: "
            f"{_why_unstorable(deferred.result)}"
        )
        return final(rec, JobState.FAILED, Status.INTERNAL_ERROR, message)
    return Outcome(
        id=rec.id,
        state=JobState.WAITING,
        status=Status.ACCEPTED,
        result=deferred.result,
        deadline=_now() + timedelta(seconds=deferred.ttl),
        ttl=deferred.ttl,
    )


def resolve(rec: JobRecord, status: Status, result: Any, error: str | None) -> Outcome:
    """The outcome of finishing a WAITING job with ``status`` (``Queue.complete``, a callback,
    or 504 for a passed deadline): SUCCEEDED with ``result`` for 2xx, else retried or FAILED by
    the job's stored policy, exactly as a handler's status would be."""
    if status.is_success:
        return Outcome(id=rec.id, state=JobState.SUCCEEDED, status=status, result=result)
    if status is Status.UNKNOWN:
        status = Status.INTERNAL_ERROR
    return retry_or_fail(rec, status, error or f"{int(status)} {status.phrase}")
