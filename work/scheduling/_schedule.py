"""``Schedule`` (what fires, when) and ``ScheduleRecord`` (a schedule as a store keeps it)."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._core.job import Job
from .._core.retry import RetryPolicy, backoff_from_dict
from .._core.status import Status
from ..stores._base import JobRecord
from ._webhook import WEBHOOK_HANDLER, Webhook

if TYPE_CHECKING:
    from ._expressions import Expression

__all__ = ["Schedule", "ScheduleRecord"]

_ID = re.compile(r"[A-Za-z0-9._:/-]{1,200}")
_MICROSECOND = timedelta(microseconds=1)


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=4096)
def _parse(expression: str, timezone: str) -> Expression:
    """Parse an expression once per (text, zone): expressions are immutable, and a scheduler
    rebuilds a schedule from its stored form at every fire."""
    # Imported here: the parser needs croniter, and `import work` stays light.
    from ._expressions import parse_expression

    return parse_expression(expression, timezone)


def _retry_spec(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "max_attempts": policy.max_attempts,
        "backoff": policy.backoff.to_dict(),
        "retry_on": policy.retry_statuses(),
        "max_deferrals": policy.max_deferrals,
    }


def _retry_from_spec(spec: dict[str, Any]) -> RetryPolicy:
    codes = frozenset(int(code) for code in spec["retry_on"])

    def retry_on(status: Status) -> bool:
        return int(status) in codes

    return RetryPolicy(
        max_attempts=int(spec["max_attempts"]),
        backoff=backoff_from_dict(dict(spec["backoff"])),
        retry_on=retry_on,
        max_deferrals=int(spec["max_deferrals"]),
    )


class Schedule:
    """A durable schedule: an expression saying when, and the job each fire enqueues.

    ::

        Schedule("reports/daily", "cron(0 6 * * ? *)", Job("report"), timezone="Europe/Berlin")
        Schedule("sync/pull", "rate(5 minutes)", Job("pull"), exclusive=True, ttl=240)

    Each fire enqueues a copy of ``target`` as a durable job with id
    ``f"{id}@{fire:%Y%m%dT%H%M%SZ}"``. Attributes carry the constructor's names; a schedule
    is immutable (build a new one and ``put`` it to change a stored one).

    Args:
        id: 1-200 characters of ``[A-Za-z0-9._:/-]`` (``service/name`` by convention).
        expression: ``cron(...)``, ``rate(...)``, ``at(...)``, a five-field crontab line or an
            ``@daily``-style macro (see docs/schedules.md).
        target: the job each fire enqueues (its ``id`` is not used).
        timezone: the IANA zone cron and at() read wall time in.
        enabled: a disabled schedule fires nothing.
        exclusive: a fire while an execution is unfinished is recorded as FAILED 409 and runs
            nothing.
        ttl: seconds each execution may take (the job's timeout), or None.
        misfire_grace: fires missed by at most this many seconds still run (coalesced into
            one); older ones are skipped and counted.
        retry: the retry policy of each execution (default: none).
        start_at: no fire before it; ``rate()`` counts from it.
        description: free text.

    Raises:
        ValueError: a bad id, expression, time zone or number (the message names it).
        TypeError: a value of the wrong type.
    """

    __slots__ = (
        "_expr",
        "description",
        "enabled",
        "exclusive",
        "expression",
        "id",
        "misfire_grace",
        "retry",
        "start_at",
        "target",
        "timezone",
        "ttl",
    )

    def __init__(
        self,
        id: str,
        expression: str,
        target: Job | Webhook,
        *,
        timezone: str = "UTC",
        enabled: bool = True,
        exclusive: bool = False,
        ttl: float | None = None,
        misfire_grace: float = 60.0,
        retry: RetryPolicy | None = None,
        start_at: datetime | None = None,
        description: str = "",
    ) -> None:
        if not isinstance(id, str) or not _ID.fullmatch(id):
            raise ValueError(
                f"schedule id must be 1-200 characters of [A-Za-z0-9._:/-], got {id!r}"
            )
        if not isinstance(expression, str):
            raise TypeError(f"expression must be a str, got {type(expression).__name__}")
        if not isinstance(timezone, str):
            raise TypeError(f"timezone must be a str, got {type(timezone).__name__}")
        if not isinstance(target, Job | Webhook):
            raise TypeError(f"target must be a Job or a Webhook, got {type(target).__name__}")
        try:
            expr = _parse(expression, timezone)
        except ValueError as exc:
            raise ValueError(f"schedule {id!r}: {exc}") from None
        if ttl is not None:
            ttl = _number(ttl, "ttl")
            if not ttl > 0:
                raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        misfire_grace = _number(misfire_grace, "misfire_grace")
        if misfire_grace < 0:
            raise ValueError(f"misfire_grace must be >= 0 seconds, got {misfire_grace!r}")
        if isinstance(target, Webhook) and target.callback and ttl is None:
            raise ValueError(
                f"schedule {id!r}: a Webhook(callback=True) target needs a ttl (seconds to "
                f"wait for the callback)"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        if start_at is not None:
            start_at = _aware(start_at, "start_at")
        if not isinstance(description, str):
            raise TypeError(f"description must be a str, got {type(description).__name__}")
        self.id = id
        self.expression = expression
        self.target: Job | Webhook = (
            target.copy() if isinstance(target, Job) else Webhook.from_dict(target.to_dict())
        )
        self.timezone = timezone
        self.enabled = bool(enabled)
        self.exclusive = bool(exclusive)
        self.ttl = ttl
        self.misfire_grace = misfire_grace
        self.retry = retry
        self.start_at = start_at
        self.description = description
        self._expr: Expression = expr

    def __repr__(self) -> str:
        return (
            f"Schedule({self.id!r}, {self.expression!r}, {self.target!r}, "
            f"timezone={self.timezone!r}, enabled={self.enabled!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.to_spec() == other.to_spec()

    __hash__ = None  # type: ignore[assignment]  # mutable parts (args): not hashable

    # -- timing -------------------------------------------------------------------------------

    def next_after(self, after: datetime, *, anchor: datetime) -> datetime | None:
        """The first fire strictly later than ``after`` (aware UTC), or None.

        Args:
            after: an aware datetime.
            anchor: where ``rate()`` counts from (the stored schedule's anchor).
        """
        after = _aware(after, "after")
        if self.start_at is not None and after < self.start_at:
            # No fire before start_at; one exactly at start_at is allowed.
            after = self.start_at - _MICROSECOND
        return self._expr.next_after(after, anchor=anchor)

    def next_fires(self, after: datetime, n: int = 1) -> list[datetime]:
        """The next ``n`` fires strictly later than ``after``, aware UTC (fewer when the
        expression ends). Pure: ``rate()`` counts from ``start_at``, else from ``after``.

        Raises:
            ValueError: a naive ``after`` or ``n`` < 0.
        """
        after = _aware(after, "after")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        anchor = self.start_at or after
        out: list[datetime] = []
        when: datetime | None = after
        while len(out) < n and when is not None:
            when = self.next_after(when, anchor=anchor)
            if when is not None:
                out.append(when)
        return out

    def describe(self) -> str:
        """The expression in words (from the expression parser)."""
        return self._expr.describe()

    @property
    def timing(self) -> tuple[str, str, datetime | None]:
        """What decides the fires: expression, time zone and start: a change re-anchors."""
        return (self.expression, self.timezone, self.start_at)

    # -- storage ------------------------------------------------------------------------------

    def to_spec(self) -> dict[str, Any]:
        """The schedule as JSON, as stores keep it (:meth:`from_spec` reads it back)."""
        target = self.target
        spec_target: dict[str, Any]
        if isinstance(target, Webhook):
            spec_target = {"webhook": target.to_dict()}
        else:
            job: dict[str, Any] = {"handler": target.handler, "args": target.args}
            if target.queue != "default":
                job["queue"] = target.queue
            if target.timeout is not None:
                job["timeout"] = target.timeout
            if target.headers:
                job["headers"] = target.headers
            spec_target = {"job": job}
        return {
            "id": self.id,
            "expression": self.expression,
            "target": spec_target,
            "timezone": self.timezone,
            "enabled": self.enabled,
            "exclusive": self.exclusive,
            "ttl": self.ttl,
            "misfire_grace": self.misfire_grace,
            "retry": _retry_spec(self.retry) if self.retry is not None else None,
            "start_at": self.start_at.isoformat() if self.start_at is not None else None,
            "description": self.description,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_spec` output.

        Raises:
            ValueError: the description is not one (a field is missing or bad).
        """
        try:
            target: Job | Webhook
            if "webhook" in spec["target"]:
                target = Webhook.from_dict(spec["target"]["webhook"])
            else:
                job = spec["target"]["job"]
                target = Job(
                    job["handler"],
                    dict(job.get("args") or {}),
                    queue=job.get("queue", "default"),
                    timeout=job.get("timeout"),
                    headers=dict(job.get("headers") or {}),
                    id=spec["id"],  # unused (each fire has its own id): skips making a new one
                )
            start_at = spec.get("start_at")
            return cls(
                spec["id"],
                spec["expression"],
                target,
                timezone=spec.get("timezone", "UTC"),
                enabled=bool(spec.get("enabled", True)),
                exclusive=bool(spec.get("exclusive", False)),
                ttl=spec.get("ttl"),
                misfire_grace=spec.get("misfire_grace", 60.0),
                retry=_retry_from_spec(spec["retry"]) if spec.get("retry") else None,
                start_at=datetime.fromisoformat(start_at) if start_at else None,
                description=spec.get("description", ""),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a stored schedule: {exc!r} in {spec!r}") from None

    def execution(self, job_id: str, *, fire: datetime, now: datetime) -> JobRecord:
        """The job record of one execution: the target with ``job_id``, this schedule's id,
        ``scheduled_for=fire``, the retry policy, and ``ttl`` (else the target's timeout) as
        the timeout. A Webhook target's job is its ``anywork.webhook`` job, on the webhook's
        queue, whose callback wait ``ttl`` bounds (the POST itself has the webhook's timeout);
        so does a target that is such a job already (``Webhook.job``) with a callback: its
        ``ttl`` is the wait, never the time its POST may take."""
        target = self.target
        retry = self.retry
        timeout: float | None
        if isinstance(target, Webhook):
            target = target.job(
                id=job_id,
                ttl=self.ttl,
                schedule_id=self.id,
                schedule=self.expression,
                scheduled_time=fire,
            )
            timeout = None
        elif target.handler == WEBHOOK_HANDLER and target.args.get("callback"):
            timeout = target.timeout
        else:
            timeout = self.ttl if self.ttl is not None else target.timeout
        return JobRecord(
            id=job_id,
            handler=target.handler,
            args=dict(target.args),
            queue=target.queue,
            headers=dict(target.headers),
            max_attempts=retry.max_attempts if retry is not None else 1,
            enqueued_at=now,
            scheduled_for=fire,
            timeout=timeout,
            retry=(
                {
                    "backoff": retry.backoff.to_dict(),
                    "retry_on": retry.retry_statuses(),
                    "max_deferrals": retry.max_deferrals,
                }
                if retry is not None
                else None
            ),
            schedule_id=self.id,
        )


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A stored schedule and where it stands (a snapshot).

    Attributes:
        schedule: the schedule.
        next_fire_at: its next fire (aware UTC), or None (disabled, or no more fires).
        last_fire_at: the fire of its last execution on its cadence, or None.
        last_success: its last SUCCEEDED execution, or None.
        created_at: when it was first stored.
        updated_at: when it was last changed by a put, pause or resume.
        anchor: where ``rate()`` counts from (an extra: the contract's fields come first).
    """

    schedule: Schedule
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_success: JobRecord | None
    created_at: datetime
    updated_at: datetime
    anchor: datetime | None = None
