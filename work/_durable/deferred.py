"""Finishing WAITING jobs: ``complete`` and ``heartbeat`` for one job, and passed deadlines."""

from __future__ import annotations

import math
from typing import Any

from .._core.exceptions import JobStateError
from .._core.jsoncheck import check_json
from .._core.status import Status
from ..stores._base import JobRecord, JobState, Store
from .outcome import resolve

__all__ = ["NO_CALLBACK", "complete_waiting", "expire_waiting", "heartbeat_waiting"]

NO_CALLBACK = "no callback within ttl"
"""The error of a WAITING job whose deadline passed (status 504)."""


async def _waiting(store: Store, id: str) -> JobRecord:
    if not isinstance(id, str):
        raise TypeError(f"a job id must be a str, got {type(id).__name__}")
    record = await store.get(id)
    if record is None:
        raise LookupError(f"no job with id {id!r} in {store.url}")
    if record.state is not JobState.WAITING:
        raise JobStateError(id, record.state.value)
    return record


async def complete_waiting(
    store: Store,
    id: str,
    *,
    status: Status | int = Status.SUCCESS,
    result: Any = None,
    error: str | None = None,
) -> JobRecord:
    """Finish a WAITING job with ``status``; see :meth:`work.Queue.complete`."""
    status = Status.coerce(status)
    if status is Status.UNKNOWN:
        raise ValueError("complete needs a final status, got UNKNOWN (-1)")
    if error is not None and not isinstance(error, str):
        raise TypeError(f"error must be a str or None, got {type(error).__name__}")
    if status.is_success:
        check_json(result, "the result")
    elif result is not None:
        raise ValueError(
            f"a result is only kept for a 2xx status, got status {int(status)} with a result"
        )
    record = await _waiting(store, id)
    settled = await store.settle(resolve(record, status, result, error))
    assert settled is not None  # settle returns None only with only_expired
    return settled


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValueError(f"heartbeat ttl must be a number of seconds > 0 or None, got {ttl!r}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"heartbeat ttl must be a number of seconds > 0 or None, got {ttl!r}")
    return float(ttl)


async def heartbeat_waiting(store: Store, id: str, ttl: float | None = None) -> JobRecord:
    """Push a WAITING job's deadline; see :meth:`work.Queue.heartbeat`."""
    seconds = _check_ttl(ttl)
    if not isinstance(id, str):
        raise TypeError(f"a job id must be a str, got {type(id).__name__}")
    return await store.heartbeat(id, seconds)


async def expire_waiting(store: Store, *, limit: int = 100) -> list[JobRecord]:
    """Fail (504 "no callback within ttl") or retry, by each job's policy, the WAITING jobs
    whose deadline has passed, and return their new records (the ones this call changed).

    Safe to run from every worker and scheduler at once: each job is settled only if it is
    still WAITING with a passed deadline (a heartbeat in between wins).
    """
    changed: list[JobRecord] = []
    for record in await store.overdue(limit=limit):
        outcome = resolve(record, Status.GATEWAY_TIMEOUT, None, NO_CALLBACK)
        settled = await store.settle(outcome, only_expired=True)
        if settled is not None:
            changed.append(settled)
    return changed
