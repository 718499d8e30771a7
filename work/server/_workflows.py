"""Workflow routes: ``POST/GET /v1/workflows`` (a JSON form of Chain, Group and Chord) and
async's function chains, ``POST /v1/job`` and ``GET /v1/job/{id}``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from .._core.job import Job
from .._core.retry import Constant, RetryPolicy
from ..workflows import Chain, Chord, Group, Step, WorkflowRecord
from ..workflows._plan import check_limits
from ._jobs import valid_id
from ._problems import Problem
from ._routing import Call, Endpoint, json_response
from ._schemas import RetryIn, iso

__all__ = ["ENDPOINTS"]

# The first function's job carries async's function list (names and retry limits), so that
# GET /v1/job/{id} can describe steps not released yet (they are not jobs until then).
_FUNCTIONS_HEADER = "anywork-async-functions"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpecIn(_In):
    """A job inside a workflow (an ``on_error`` job, or a step's job)."""

    handler: str = Field(min_length=1, max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field("default", min_length=1, max_length=200)
    id: str | None = Field(None, min_length=1, max_length=200)
    timeout: float | None = Field(None, gt=0, le=10 * 365 * 86400)
    headers: dict[str, str] = Field(default_factory=dict)


class StepIn(JobSpecIn):
    """One step: a job with its own retry policy, ``immutable`` (no ``input`` added) and
    ``delay`` (seconds once ready)."""

    retry: RetryIn | None = None
    immutable: bool = False
    delay: float | None = Field(None, ge=0, le=10 * 365 * 86400)


class ChordBody(_In):
    """A chord: a header of parallel steps and a callback getting their results."""

    header: list[Node] = Field(min_length=1, max_length=10_000)
    callback: Node


class ChainIn(_In):
    """Steps one after another."""

    chain: list[Node] = Field(min_length=1, max_length=10_000)


class GroupIn(_In):
    """Steps in parallel."""

    group: list[Node] = Field(min_length=1, max_length=10_000)


class ChordIn(_In):
    """A nested chord."""

    chord: ChordBody


Node = StepIn | ChainIn | GroupIn | ChordIn


class WorkflowIn(_In):
    """``POST /v1/workflows``: exactly one of ``chain``, ``group``, ``chord``."""

    chain: list[Node] | None = Field(None, min_length=1, max_length=10_000)
    group: list[Node] | None = Field(None, min_length=1, max_length=10_000)
    chord: ChordBody | None = None
    on_error: JobSpecIn | None = None
    id: str | None = Field(None, min_length=1, max_length=200)
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_form(self) -> WorkflowIn:
        given = [f for f in ("chain", "group", "chord") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of chain, group, chord (got {given or 'none'})")
        return self


class WorkflowOut(BaseModel):
    """A workflow's record."""

    id: str
    kind: str
    state: str
    jobs: list[str]
    current: int
    result: Any = None
    error: str | None
    created_at: str
    finished_at: str | None
    name: str | None
    on_error: str | None


class FunctionIn(BaseModel):
    """async's function: a handler name and its retries."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    retry_options: RetryOptions | None = None


class RetryOptions(BaseModel):
    """async's retry options."""

    model_config = ConfigDict(extra="forbid")

    retry_limit: int = Field(0, ge=0, le=1000)


class AsyncJobIn(BaseModel):
    """async's ``POST /v1/job`` body."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    data: Any = None
    functions: list[FunctionIn] = Field(min_length=1, max_length=1000)


class AsyncJobId(BaseModel):
    """async's answer to ``POST /v1/job``."""

    job_id: str


class FunctionOut(BaseModel):
    """One function of an async job and the retries it made."""

    name: str
    retry_count: int
    retry_options: RetryOptions


class AsyncJobBody(BaseModel):
    """async's job."""

    job_id: str
    name: str | None
    data: Any = None
    functions: list[FunctionOut]
    current_function: int
    created_at: str
    scheduled_at: str | None
    state: str


class AsyncJobOut(BaseModel):
    """async's ``GET /v1/job/{id}`` answer."""

    Job: AsyncJobBody


ChordBody.model_rebuild()
ChainIn.model_rebuild()
GroupIn.model_rebuild()
ChordIn.model_rebuild()
WorkflowIn.model_rebuild()
FunctionIn.model_rebuild()


def _policy(retry: RetryIn | None) -> RetryPolicy | None:
    if retry is None:
        return None
    if retry.delay is not None:
        return RetryPolicy(retry.max_attempts, backoff=Constant(retry.delay))
    return RetryPolicy(retry.max_attempts)


def _job(spec: JobSpecIn) -> Job:
    extra = {"id": spec.id} if spec.id is not None else {}
    return Job(
        spec.handler,
        spec.args,
        queue=spec.queue,
        timeout=spec.timeout,
        headers=spec.headers,
        **extra,
    )


def _node(node: Node) -> Step | Chain | Group | Chord:
    if isinstance(node, StepIn):
        return Step(
            _job(node), retry=_policy(node.retry), immutable=node.immutable, delay=node.delay
        )
    if isinstance(node, ChainIn):
        return Chain(*map(_node, node.chain))
    if isinstance(node, GroupIn):
        return Group(*map(_node, node.group))
    return Chord([_node(n) for n in node.chord.header], _node(node.chord.callback))


def workflow_json(record: WorkflowRecord) -> dict[str, Any]:
    """A WorkflowRecord as the API shows it."""
    return {
        "id": record.id,
        "kind": record.kind,
        "state": str(record.state),
        "jobs": list(record.jobs),
        "current": record.current,
        "result": record.result,
        "error": record.error,
        "created_at": iso(record.created_at),
        "finished_at": iso(record.finished_at),
        "name": record.name,
        "on_error": record.on_error,
    }


def _body_children(node: Any) -> list[Any] | None:
    """A parsed node's nodes (for check_limits), None for a step."""
    if isinstance(node, StepIn):
        return None
    if isinstance(node, ChainIn):
        return list(node.chain)
    if isinstance(node, GroupIn):
        return list(node.group)
    if isinstance(node, ChordIn | ChordBody):
        body = node.chord if isinstance(node, ChordIn) else node
        return [*body.header, body.callback]
    assert isinstance(node, WorkflowIn)
    if node.chain is not None:
        return list(node.chain)
    if node.group is not None:
        return list(node.group)
    assert node.chord is not None
    return _body_children(node.chord)


async def _enqueue(call: Call) -> Response:
    body: WorkflowIn = call.body
    form = next(f for f in ("chain", "group", "chord") if getattr(body, f) is not None)
    try:  # before building anything: a tree too deep for the stack is refused, not a 500
        check_limits(body, _body_children)
    except ValueError as exc:
        raise Problem(422, str(exc), errors={f"body.{form}": str(exc)}) from None
    try:
        on_error = _job(body.on_error) if body.on_error is not None else None
        options: dict[str, Any] = {"on_error": on_error, "id": body.id, "name": body.name}
        workflow: Chain | Group | Chord
        if body.chain is not None:
            workflow = Chain(*map(_node, body.chain), **options)
        elif body.group is not None:
            workflow = Group(*map(_node, body.group), **options)
        else:
            assert body.chord is not None
            header = [_node(n) for n in body.chord.header]
            workflow = Chord(header, _node(body.chord.callback), **options)
        record = await call.service.queue.enqueue(workflow)
    except (TypeError, ValueError) as exc:
        raise Problem(422, str(exc), errors={"body": str(exc)}) from None
    return json_response(workflow_json(record), 201)


async def _get(call: Call) -> Response:
    id = valid_id(call.path["id"], "workflow")
    record = await call.service.queue.get_workflow(id)
    if record is None:
        raise Problem(404, f"no workflow with id {id!r}")
    return json_response(workflow_json(record))


async def _async_enqueue(call: Call) -> Response:
    body: AsyncJobIn = call.body
    functions = [
        {
            "name": f.name,
            "retry_options": {"retry_limit": f.retry_options.retry_limit if f.retry_options else 0},
        }
        for f in body.functions
    ]
    try:
        chain = Chain.from_functions(body.name, body.data, functions)
        first = chain.steps[0]
        assert isinstance(first, Step)
        first.job.headers[_FUNCTIONS_HEADER] = json.dumps(functions, separators=(",", ":"))
        record = await call.service.queue.enqueue(chain)
    except (TypeError, ValueError) as exc:
        raise Problem(422, str(exc), errors={"body": str(exc)}) from None
    return json_response({"job_id": record.id})


async def _async_get(call: Call) -> Response:
    id = valid_id(call.path["id"], "job")
    queue = call.service.queue
    record = await queue.get_workflow(id)
    if record is None or not record.jobs:
        raise Problem(404, f"no job with id {id!r}")
    first = await queue.get(record.jobs[0])
    spec: list[dict[str, Any]] = []
    if first is not None and _FUNCTIONS_HEADER in first.headers:
        spec = json.loads(first.headers[_FUNCTIONS_HEADER])
    else:
        raise Problem(404, f"no job with id {id!r} (a workflow, not an async job)")
    functions = []
    for index, fn in enumerate(spec):
        step = await queue.get(record.jobs[index]) if index < len(record.jobs) else None
        # retry_count: the retries made, 0 for a function that ran once or not yet.
        retries = max(step.attempts - 1, 0) if step is not None else 0
        functions.append(
            {"name": fn["name"], "retry_count": retries, "retry_options": fn["retry_options"]}
        )
    data = first.args.get("input")
    return json_response(
        {
            "Job": {
                "job_id": record.id,
                "name": record.name,
                "data": data,
                "functions": functions,
                "current_function": record.current,
                "created_at": iso(record.created_at),
                "scheduled_at": iso(first.scheduled_for or first.enqueued_at),
                "state": str(record.state),
            }
        }
    )


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/workflows",
        _enqueue,
        "Enqueue a workflow: a chain, group or chord of steps",
        ok=201,
        response=WorkflowOut,
        body=WorkflowIn,
        tag="workflows",
    ),
    Endpoint(
        "GET",
        "/v1/workflows/{id}",
        _get,
        "Get a workflow",
        response=WorkflowOut,
        errors=(404,),
        tag="workflows",
    ),
    Endpoint(
        "POST",
        "/v1/job",
        _async_enqueue,
        "async: run functions in order, each result the next one's input",
        response=AsyncJobId,
        body=AsyncJobIn,
        tag="async",
    ),
    Endpoint(
        "GET",
        "/v1/job/{id}",
        _async_get,
        "async: a function-chain job's state",
        response=AsyncJobOut,
        errors=(404,),
        tag="async",
    ),
]
