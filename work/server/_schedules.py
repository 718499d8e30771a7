"""serverless-job-manager's routes: jobs (schedules) under ``/v1/services/{service}/jobs``,
their executions, ``trigger``, and ``GET /v1/executions/{id}``."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from .._core.retry import Constant, RetryPolicy
from ..scheduling import Schedule, ScheduleRecord, Schedules, Webhook
from ..stores import JobRecord, JobState
from ._jobs import valid_id
from ._problems import Problem
from ._routing import Call, Endpoint, json_response
from ._schemas import RetryIn, iso, job_json

__all__ = ["ENDPOINTS", "execution_json"]

# A service or job name: one path segment of the schedule id's characters.
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,100}")

_STATUS_WORDS = {
    JobState.QUEUED: "pending",
    JobState.SCHEDULED: "pending",
    JobState.RUNNING: "running",
    JobState.WAITING: "waiting",
    JobState.SUCCEEDED: "success",
    JobState.FAILED: "failure",
    JobState.CANCELLED: "cancelled",
}
ExecutionStatus = Literal["pending", "running", "waiting", "success", "failure", "cancelled"]


class SjmJobIn(BaseModel):
    """serverless-job-manager's job config (``PUT /v1/services/{service}/jobs/{name}``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    async_: bool = Field(True, alias="async", description="wait for the service's callback")
    enabled: bool = True
    exclusive: bool = False
    invocation_target: str = Field(min_length=1, max_length=2000, description="webhook URL")
    invocation_type: Literal["http"] = "http"
    payload: str = Field("", max_length=100_000)
    schedule: str = Field(min_length=1, max_length=500, description="cron(), rate() or at()")
    ttl_seconds: float | None = Field(None, gt=0, le=30 * 86400)
    timezone: str = Field("UTC", min_length=1, max_length=100)
    retry: RetryIn | None = None


class SjmRetryOut(BaseModel):
    """The job's retry policy."""

    max_attempts: int
    delay: float | None


class SjmJobOut(BaseModel):
    """A job config as stored, with where its schedule stands."""

    model_config = ConfigDict(populate_by_name=True)

    service: str
    name: str
    async_: bool = Field(alias="async")
    enabled: bool
    exclusive: bool
    invocation_target: str
    invocation_type: str
    payload: str
    schedule: str
    ttl_seconds: float | None
    timezone: str
    retry: SjmRetryOut | None
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SjmJobList(BaseModel):
    """A page of job configs, ordered by name."""

    items: list[SjmJobOut]
    next_cursor: str | None


class SjmJobsQuery(BaseModel):
    """``GET /v1/services/{service}/jobs`` filters."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, min_length=1, max_length=300)


class ExecutionsQuery(BaseModel):
    """``.../executions`` filters."""

    model_config = ConfigDict(extra="forbid")

    status: ExecutionStatus | None = None
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, min_length=1, max_length=300)


class ExecutionOut(BaseModel):
    """An execution: the job's fields, with serverless-job-manager's on top (``state`` is the
    service's reported state, ``status`` the outcome word, ``http_status`` the code;
    ``job_state`` the job's own state)."""

    id: str
    name: str
    service: str
    job_name: str
    handler: str
    args: dict[str, Any]
    queue: str
    attempts: int
    max_attempts: int
    result: Any = None
    error: str | None
    scheduled_time: datetime | None
    scheduled_time_ms: int | None
    service_invoked_at_ms: int | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    deadline: datetime | None
    schedule_id: str | None
    job_state: str
    state: str | None
    summary: str | None
    correlation_id: str | None
    http_status: int
    status: ExecutionStatus


class ExecutionList(BaseModel):
    """A page of executions, newest first."""

    items: list[ExecutionOut]
    next_cursor: str | None


def _ms(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value is not None else None


def execution_json(record: JobRecord) -> dict[str, Any]:
    """A schedule's job as serverless-job-manager shows an execution."""
    job = job_json(record)
    schedule_id = record.schedule_id or record.id.split("@", 1)[0]
    service, _, job_name = schedule_id.rpartition("/")
    result = record.result if isinstance(record.result, dict) else {}
    summary = result.get("summary")
    if summary is None and record.state is JobState.FAILED:
        summary = record.error
    scheduled = record.scheduled_for or record.enqueued_at
    return {
        "id": record.id,
        "name": record.id,
        "service": service,
        "job_name": job_name,
        "handler": record.handler,
        "args": record.args,
        "queue": record.queue,
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "result": record.result,
        "error": record.error,
        "scheduled_time": iso(scheduled),
        "scheduled_time_ms": _ms(scheduled),
        "service_invoked_at_ms": _ms(record.started_at),
        "enqueued_at": job["enqueued_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "deadline": job["deadline"],
        "schedule_id": record.schedule_id,
        "job_state": job["state"],
        "state": _text(result.get("state")),
        "summary": _text(summary),
        "correlation_id": _text(result.get("correlation_id")),
        "http_status": int(record.status),
        "status": _STATUS_WORDS.get(record.state, "pending"),
    }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _config_json(found: ScheduleRecord) -> dict[str, Any]:
    schedule = found.schedule
    service, _, name = schedule.id.rpartition("/")
    target = schedule.target
    # A Webhook target (Python or CLI) or the webhook Job this API stores: the same fields.
    args = target.to_dict() if isinstance(target, Webhook) else target.args
    retry = schedule.retry
    return {
        "service": service,
        "name": name,
        "async": bool(args.get("callback", True)),
        "enabled": schedule.enabled,
        "exclusive": schedule.exclusive,
        "invocation_target": str(args.get("url", "")),
        "invocation_type": "http",
        "payload": str(args.get("payload", "")),
        "schedule": schedule.expression,
        "ttl_seconds": schedule.ttl,
        "timezone": schedule.timezone,
        "retry": (
            {
                "max_attempts": retry.max_attempts,
                "delay": retry.backoff.seconds if isinstance(retry.backoff, Constant) else None,
            }
            if retry is not None
            else None
        ),
        "next_fire_at": iso(found.next_fire_at),
        "last_fire_at": iso(found.last_fire_at),
        "created_at": iso(found.created_at),
        "updated_at": iso(found.updated_at),
    }


def _schedule_id(call: Call, *, status: int = 404) -> str:
    service, name = call.path["service"], call.path["name"]
    for what, value in (("service", service), ("name", name)):
        if not _NAME.fullmatch(value):
            if status == 422:
                message = "1-100 characters of A-Z a-z 0-9 . _ : -"
                raise Problem(422, f"bad {what} {value!r}", errors={f"path.{what}": message})
            raise Problem(404, f"no job {service}/{name}")
    return f"{service}/{name}"


async def _put(call: Call) -> Response:
    id = _schedule_id(call, status=422)
    body: SjmJobIn = call.body
    schedules = Schedules(call.service.store)
    retry = None
    if body.retry is not None:
        retry = (
            RetryPolicy(body.retry.max_attempts, backoff=Constant(body.retry.delay))
            if body.retry.delay is not None
            else RetryPolicy(body.retry.max_attempts)
        )
    try:
        hook = Webhook(body.invocation_target, payload=body.payload, callback=body.async_)
        target = hook.job(ttl=body.ttl_seconds) if body.async_ else hook.job()
        schedule = Schedule(
            id,
            body.schedule,
            target,
            timezone=body.timezone,
            enabled=body.enabled,
            exclusive=body.exclusive,
            ttl=body.ttl_seconds,
            retry=retry,
        )
    except (TypeError, ValueError) as exc:
        field = _field_of(str(exc))
        raise Problem(422, str(exc), errors={field: str(exc)}) from None
    existed = await schedules.get(id) is not None
    stored = await schedules.put(schedule)
    return json_response(_config_json(stored), 200 if existed else 201)


def _field_of(message: str) -> str:
    lowered = message.lower()
    for word, field in (
        ("ttl", "body.ttl_seconds"),
        ("url", "body.invocation_target"),
        ("time zone", "body.timezone"),
        ("timezone", "body.timezone"),
    ):
        if word in lowered:
            return field
    return "body.schedule"


async def _get(call: Call) -> Response:
    id = _schedule_id(call)
    found = await Schedules(call.service.store).get(id)
    if found is None:
        raise Problem(404, f"no job {id}")
    return json_response(_config_json(found))


async def _delete(call: Call) -> Response:
    id = _schedule_id(call)
    schedules = Schedules(call.service.store)
    found = await schedules.get(id)
    if found is None or not await schedules.delete(id):
        raise Problem(404, f"no job {id}")
    return json_response(_config_json(found))


async def _list(call: Call) -> Response:
    service = call.path["service"]
    if not _NAME.fullmatch(service):
        return json_response({"items": [], "next_cursor": None})
    query: SjmJobsQuery = call.query
    after = f"{service}/{query.cursor}" if query.cursor is not None else None
    found = await Schedules(call.service.store).list(
        prefix=f"{service}/", enabled=query.enabled, limit=query.limit, after=after
    )
    items = [_config_json(r) for r in found]
    cursor = items[-1]["name"] if len(items) == query.limit else None
    return json_response({"items": items, "next_cursor": cursor})


async def _executions(call: Call) -> Response:
    id = _schedule_id(call)
    query: ExecutionsQuery = call.query
    schedules = Schedules(call.service.store)
    if await schedules.get(id) is None:
        raise Problem(404, f"no job {id}")
    states = [s for s, word in _STATUS_WORDS.items() if word == query.status]
    before = query.cursor
    if query.cursor is not None:
        valid_id(query.cursor, "execution")
    if len(states) == 1:
        records = await schedules.executions(id, state=states[0], limit=query.limit, before=before)
        cursor = records[-1].id if len(records) == query.limit else None
    else:
        # "pending" is two states (queued, scheduled): filtered here, page by page.
        records, cursor = [], None
        while len(records) < query.limit:
            page = await schedules.executions(id, limit=query.limit, before=before)
            for record in page:
                before = record.id
                if not states or record.state in states:
                    records.append(record)
                    if len(records) == query.limit:
                        cursor = record.id
                        break
            if len(page) < query.limit:
                break
    return json_response({"items": [execution_json(r) for r in records], "next_cursor": cursor})


async def _trigger(call: Call) -> Response:
    id = _schedule_id(call)
    try:
        record = await Schedules(call.service.store).trigger(id)
    except LookupError:
        raise Problem(404, f"no job {id}") from None
    return json_response(execution_json(record), 201)


async def _execution(call: Call) -> Response:
    id = valid_id(call.path["id"], "execution")
    record = await call.service.queue.get(id)
    if record is None or record.schedule_id is None:
        raise Problem(404, f"no execution with id {id!r}")
    return json_response(execution_json(record))


_JOB = "/v1/services/{service}/jobs/{name}"

ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/services/{service}/jobs",
        _list,
        "A service's jobs, by name (filter: enabled)",
        response=SjmJobList,
        query=SjmJobsQuery,
        tag="services",
    ),
    Endpoint(
        "GET",
        f"{_JOB}/executions",
        _executions,
        "A job's executions, newest first (filter: status)",
        response=ExecutionList,
        query=ExecutionsQuery,
        errors=(404,),
        tag="services",
    ),
    Endpoint(
        "POST",
        f"{_JOB}/trigger",
        _trigger,
        "Run the job once now, off its schedule",
        ok=201,
        response=ExecutionOut,
        errors=(404,),
        tag="services",
    ),
    Endpoint(
        "PUT",
        _JOB,
        _put,
        "Create (201) or replace (200) a job: a schedule firing a webhook",
        response=SjmJobOut,
        body=SjmJobIn,
        tag="services",
        extra_ok=(200,),
    ),
    Endpoint("GET", _JOB, _get, "Get a job", response=SjmJobOut, errors=(404,), tag="services"),
    Endpoint(
        "DELETE",
        _JOB,
        _delete,
        "Delete a job (its executions stay)",
        response=SjmJobOut,
        errors=(404,),
        tag="services",
    ),
    Endpoint(
        "GET",
        "/v1/executions/{id}",
        _execution,
        "Get an execution",
        response=ExecutionOut,
        errors=(404,),
        tag="services",
    ),
]
