"""The request and response schemas: pydantic models that both validate requests and
generate ``/openapi.json``, so the two cannot drift."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ..stores import JobRecord, JobState, WorkerInfo

__all__ = [
    "EventQuery",
    "JobIn",
    "JobList",
    "JobOut",
    "JobsQuery",
    "ProblemOut",
    "QueueList",
    "QueueOut",
    "RetryIn",
    "WorkerList",
    "WorkerOut",
    "iso",
    "job_json",
    "worker_json",
]

# Names and keys: what the core's check_name accepts is checked again by the Queue; this
# bound only keeps absurd inputs out early.
_NAME = Field(min_length=1, max_length=200)

State = Literal[tuple(str(s) for s in JobState)]  # type: ignore[valid-type]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryIn(_In):
    """A retry policy: up to ``max_attempts`` attempts, exponential backoff by default, or a
    constant ``delay`` between attempts."""

    max_attempts: int = Field(3, ge=1, le=1000)
    delay: float | None = Field(None, ge=0, le=86400, description="constant seconds between")


class JobIn(_In):
    """``POST /v1/jobs``: a job to enqueue."""

    handler: str = _NAME
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field("default", min_length=1, max_length=200)
    headers: dict[str, str] = Field(default_factory=dict)
    id: str | None = Field(None, min_length=1, max_length=200)
    delay: float | None = Field(None, ge=0, le=10 * 365 * 86400, description="seconds")
    at: AwareDatetime | None = None
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)
    timeout: float | None = Field(None, gt=0, le=10 * 365 * 86400, description="seconds")
    retry: RetryIn | None = None
    unique_key: str | None = Field(None, min_length=1, max_length=200)


class JobsQuery(_In):
    """``GET /v1/jobs`` filters."""

    state: State | None = None  # type: ignore[valid-type]
    queue: str | None = Field(None, min_length=1, max_length=200)
    handler: str | None = Field(None, min_length=1, max_length=200)
    args: str | None = Field(
        None, max_length=10_000, description="a JSON object: jobs whose args hold those keys"
    )
    limit: int = Field(100, ge=1, le=1000)
    after: str | None = Field(None, min_length=1, max_length=200)


class EventQuery(_In):
    """``GET /v1/events`` filters (comma-separated)."""

    kinds: str | None = Field(None, max_length=1000, description="comma-separated event kinds")
    queues: str | None = Field(None, max_length=10_000, description="comma-separated queues")


class ProblemOut(BaseModel):
    """An RFC 9457 problem (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    errors: dict[str, str] | None = Field(None, description="field -> message (422)")


class JobOut(BaseModel):
    """A job: its JobRecord's fields."""

    id: str
    handler: str
    args: dict[str, Any]
    queue: str
    headers: dict[str, str]
    priority: int
    state: str
    status: int
    attempts: int
    max_attempts: int
    result: Any = None
    error: str | None
    unique_key: str | None
    enqueued_at: datetime | None
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    deadline: datetime | None
    progress: dict[str, Any] | None
    schedule_id: str | None
    workflow_id: str | None


class JobList(BaseModel):
    """A page of jobs."""

    items: list[JobOut]
    next_cursor: str | None


class UnservedOut(BaseModel):
    """Queued jobs of a handler that no live worker serving the queue has."""

    handler: str
    queued: int


class QueueOut(BaseModel):
    """One queue's counts by state, and its unserved handlers."""

    name: str
    counts: dict[str, int]
    total: int
    unserved: list[UnservedOut]


class QueueList(BaseModel):
    """Every queue holding jobs."""

    items: list[QueueOut]
    next_cursor: str | None


class WorkerOut(BaseModel):
    """A registered serving worker."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    handlers: list[str]
    concurrency: int
    running: int
    processed: int
    failed: int
    started_at: datetime
    last_seen: datetime
    heartbeat: float
    state: Literal["live", "lost"]


class WorkerList(BaseModel):
    """The registered workers, oldest first."""

    items: list[WorkerOut]
    next_cursor: str | None


# -- serialising (plain dicts: the hot path builds no model; the schemathesis test checks
#    these against the models above) -------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_json(record: JobRecord) -> dict[str, Any]:
    """A JobRecord as the API shows it (fields later versions add are read when present)."""
    return {
        "id": record.id,
        "handler": record.handler,
        "args": record.args,
        "queue": record.queue,
        "headers": record.headers,
        "priority": record.priority,
        "state": str(record.state),
        "status": int(record.status),
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "result": record.result,
        "error": record.error,
        "unique_key": record.unique_key,
        "enqueued_at": iso(record.enqueued_at),
        "scheduled_for": iso(record.scheduled_for),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "deadline": iso(getattr(record, "deadline", None)),
        "progress": getattr(record, "progress", None),
        "schedule_id": getattr(record, "schedule_id", None),
        "workflow_id": getattr(record, "workflow_id", None),
    }


def worker_json(info: WorkerInfo, now: datetime) -> dict[str, Any]:
    """A registry entry as the API shows it, with ``state`` live or lost at ``now``."""
    return {
        "id": info.id,
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": list(info.queues),
        "handlers": list(info.handlers),
        "concurrency": info.concurrency,
        "running": info.running,
        "processed": info.processed,
        "failed": info.failed,
        "started_at": iso(info.started_at),
        "last_seen": iso(info.last_seen),
        "heartbeat": info.heartbeat,
        "state": "lost" if info.is_lost(now) else "live",
    }
