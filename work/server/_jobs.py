"""Native job routes: enqueue, list (with an ``args`` filter), get, cancel, retry."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from .._core.job import Job
from .._core.retry import Constant, RetryPolicy
from .._core.validate import check_name
from ..stores import JobState
from ._problems import Problem
from ._routing import Call, Endpoint, json_response
from ._schemas import JobIn, JobList, JobOut, JobsQuery, job_json

__all__ = ["ENDPOINTS", "valid_id"]


def valid_id(value: str, what: str = "job") -> str:
    """``value`` if a job could have it as its id, else a 404 (no job can)."""
    try:
        return check_name(value, "id")
    except (TypeError, ValueError):
        raise Problem(404, f"no {what} with id {value!r}") from None


async def _enqueue(call: Call) -> Response:
    body: JobIn = call.body
    retry = None
    if body.retry is not None:
        retry = (
            RetryPolicy(body.retry.max_attempts, backoff=Constant(body.retry.delay))
            if body.retry.delay is not None
            else RetryPolicy(body.retry.max_attempts)
        )
    try:
        job = Job(
            body.handler,
            body.args,
            queue=body.queue,
            timeout=body.timeout,
            headers=body.headers,
            **({"id": body.id} if body.id is not None else {}),
        )
        record = await call.service.queue.enqueue(
            job,
            delay=body.delay,
            at=body.at,
            priority=body.priority,
            retry=retry,
            unique_key=body.unique_key,
        )
    except (TypeError, ValueError) as exc:
        raise Problem(422, str(exc), errors={"body": str(exc)}) from None
    return json_response(job_json(record), 201)


async def _list(call: Call) -> Response:
    query: JobsQuery = call.query
    wanted: dict[str, Any] | None = None
    if query.args is not None:
        try:
            wanted = json.loads(query.args)
        except ValueError as exc:
            raise Problem(
                422, "args must be a JSON object", errors={"query.args": str(exc)}
            ) from None
        if not isinstance(wanted, dict):
            raise Problem(
                422, "args must be a JSON object", errors={"query.args": "expected an object"}
            )
    queue = call.service.queue
    filters: dict[str, Any] = {
        "state": JobState(query.state) if query.state is not None else None,
        "queue": query.queue,
        "handler": query.handler,
    }
    try:
        # The store filters on args itself (an index, SQL or a bounded server-side scan).
        records = await queue.list(**filters, args=wanted, limit=query.limit, after=query.after)
        cursor = records[-1].id if len(records) == query.limit else None
    except (TypeError, ValueError) as exc:
        raise Problem(422, str(exc), errors={"query": str(exc)}) from None
    return json_response({"items": [job_json(r) for r in records], "next_cursor": cursor})


async def _get(call: Call) -> Response:
    id = valid_id(call.path["id"])
    record = await call.service.queue.get(id)
    if record is None:
        raise Problem(404, f"no job with id {id!r}")
    return json_response(job_json(record))


async def _cancel(call: Call) -> Response:
    id = valid_id(call.path["id"])
    queue = call.service.queue
    if not await queue.cancel(id):
        record = await queue.get(id)
        if record is None:
            raise Problem(404, f"no job with id {id!r}")
        raise Problem(409, f"job {id!r} is already {record.state.value}")
    record = await queue.get(id)
    if record is None:  # deleted meanwhile (retention)
        raise Problem(404, f"no job with id {id!r}")
    return json_response(job_json(record))


async def _retry(call: Call) -> Response:
    id = valid_id(call.path["id"])
    try:
        record = await call.service.queue.retry(id)
    except LookupError:
        raise Problem(404, f"no job with id {id!r}") from None
    except ValueError as exc:
        raise Problem(409, str(exc)) from None
    return json_response(job_json(record))


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/jobs",
        _enqueue,
        "Enqueue a job",
        ok=201,
        response=JobOut,
        body=JobIn,
    ),
    Endpoint(
        "GET",
        "/v1/jobs",
        _list,
        "List jobs, oldest first (filters: state, queue, handler, args)",
        response=JobList,
        query=JobsQuery,
    ),
    Endpoint(
        "POST",
        "/v1/jobs/{id}/retry",
        _retry,
        "Run a failed or cancelled job again now",
        response=JobOut,
        errors=(404, 409),
    ),
    Endpoint("GET", "/v1/jobs/{id}", _get, "Get a job", response=JobOut, errors=(404,)),
    Endpoint(
        "DELETE",
        "/v1/jobs/{id}",
        _cancel,
        "Cancel a job",
        response=JobOut,
        errors=(404, 409),
    ),
]
