"""The route table's entries and the wrapper every route runs in: auth, body limit,
validation against the route's schemas, problem details for every error."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._auth import check_bearer
from ._problems import Problem, field_errors, problem_response
from ._service import Service

__all__ = ["Call", "Endpoint", "json_response", "starlette_route"]


@dataclass(frozen=True, slots=True)
class Call:
    """What a route function gets: the request, the validated body and query, the path
    parameters, and the service (store, queue, settings)."""

    request: Request
    service: Service
    path: dict[str, str]
    body: Any = None
    query: Any = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: the same entry makes the Starlette route and its OpenAPI operation.

    Attributes:
        method, path: the HTTP method and the OpenAPI path (``/v1/jobs/{id}``); each path
            parameter matches the rest of the path, so ids holding ``/`` (sent as ``%2F``)
            work.
        fn: the route function.
        summary: one line for the OpenAPI operation.
        ok: the success status; ``response`` its body's model (None: no JSON body).
        body, query: the models the request body and query string must satisfy.
        auth: needs a bearer token.
        errors: further statuses the route answers with a problem.
        media: the success response's media type.
        tag: the OpenAPI tag.
        extra_ok: further success statuses answering the same ``response`` model.
        raw_body: hand the route the decoded JSON as it came (the route validates it, in its
            own order); ``body`` still describes it in OpenAPI.
    """

    method: str
    path: str
    fn: Callable[[Call], Awaitable[Response]]
    summary: str
    ok: int = 200
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    auth: bool = True
    errors: tuple[int, ...] = ()
    media: str = "application/json"
    tag: str = "jobs"
    raw_body: bool = False
    extra_ok: tuple[int, ...] = ()

    @property
    def path_params(self) -> list[str]:
        """The names of the ``{...}`` parameters in ``path``."""
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


def json_response(content: Any, status: int = 200) -> Response:
    """A compact JSON response (no spaces: the payloads are for programs)."""
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Response(body, status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) past ``limit`` bytes before reading more than that."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Problem(413, f"the request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except RecursionError:
        raise Problem(
            422, f"the request {where} is nested too deeply", errors={where: "too deep"}
        ) from None
    except ValidationError as exc:
        raise Problem(
            422, f"the request {where} is not valid", errors=field_errors(exc, where)
        ) from None


def starlette_route(endpoint: Endpoint, service: Service) -> Route:
    """The Starlette route running ``endpoint`` inside the common wrapper."""
    path = endpoint.path
    # Only an ``id`` may hold "/" (sent as %2F, decoded before routing): it takes the rest of
    # the path up to the segments that follow it.
    if "id" in endpoint.path_params:
        path = path.replace("{id}", "{id:path}")

    async def run(request: Request) -> Response:
        try:
            if endpoint.auth:
                check_bearer(request, service.tokens)
            query = None
            if endpoint.query is not None:
                query = _validate(endpoint.query, dict(request.query_params), "query")
            body = None
            if endpoint.body is not None:
                raw = await _read_body(request, service.max_body)
                try:
                    data = json.loads(raw) if raw else None
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    raise Problem(
                        422, "the request body is not JSON", errors={"body": str(exc)}
                    ) from None
                if endpoint.raw_body:
                    body = data
                elif not isinstance(data, dict):
                    raise Problem(
                        422,
                        "the request body must be a JSON object",
                        errors={"body": "expected an object"},
                    )
                else:
                    body = _validate(endpoint.body, data, "body")
            params = {k: str(v) for k, v in request.path_params.items()}
            return await endpoint.fn(Call(request, service, params, body, query))
        except Problem as problem:
            return problem_response(
                problem.status, problem.detail, errors=problem.errors, headers=problem.headers
            )

    return Route(path, run, methods=[endpoint.method], name=f"{endpoint.method} {endpoint.path}")
