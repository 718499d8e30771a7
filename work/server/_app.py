"""``create_app``: the Starlette app of the HTTP service (v1 API, health, metrics, OpenAPI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount

from .._durable.queue import Queue
from ..stores import Store
from . import _callback, _events, _jobs, _queues, _schedules, _workflows
from ._dashboard import create_dashboard
from ._openapi import openapi
from ._problems import problem_response
from ._routing import Call, Endpoint, json_response, starlette_route
from ._service import Service

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

DEFAULT_MAX_BODY = 1024 * 1024
"""The largest request body accepted by default (bytes); larger ones get 413."""

# /ready reads this id from the store, and gives it this long to answer.
_READY_PROBE_ID = "anywork-ready-probe"
_READY_PROBE_TIMEOUT = 2.0


async def _live(call: Call) -> Response:
    return PlainTextResponse("OK")


async def _ready(call: Call) -> Response:
    with anyio.move_on_after(_READY_PROBE_TIMEOUT):
        try:
            await call.service.store.get(_READY_PROBE_ID)
        except Exception:
            return PlainTextResponse("NOT READY: the store does not answer", status_code=503)
        return PlainTextResponse("READY")
    return PlainTextResponse("NOT READY: the store does not answer", status_code=503)


async def _metrics(call: Call) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


_HEALTH = [
    Endpoint("GET", "/live", _live, "Liveness", auth=False, media="text/plain", tag="health"),
    Endpoint(
        "GET",
        "/ready",
        _ready,
        "Readiness: the store answers",
        auth=False,
        media="text/plain",
        errors=(503,),
        tag="health",
    ),
    Endpoint(
        "GET",
        "/metrics",
        _metrics,
        "Prometheus metrics",
        auth=False,
        media="text/plain",
        tag="health",
    ),
]


def create_app(
    store: Store,
    *,
    tokens: Sequence[str] | None,
    secret: str | bytes | None = None,
    public_url: str | None = None,
    relay: Any = None,
    max_body: int = DEFAULT_MAX_BODY,
    read_only_tokens: Sequence[str] = (),
) -> Starlette:
    """The HTTP service as a Starlette app, to run with uvicorn or mount in your own
    Starlette/FastAPI app (``Mount("/jobs", app=create_app(...))``).

    The app's lifespan enters ``store`` (stores count their entries, so one you already
    entered stays open). A mounted app gets no lifespan of its own: enter the store yourself.

    Args:
        store: the store the API reads and writes.
        tokens: the bearer tokens accepted on every ``/v1/`` route; None turns auth off (for
            a service on loopback only).
        secret: the secret behind callback tokens, stored in the store when it holds none yet
            (None: the store makes one on first use). Tokens are keyed by the store's own
            secret, which every process on the store shares (the webhook handler signs with
            it): a store that already holds one keeps it.
        public_url: the URL clients reach this service at, used in the URLs it hands out.
        relay: a remote-worker relay whose ``asgi`` app is mounted at ``/v1/relay``.
        max_body: the largest request body accepted, in bytes (larger: 413).
        read_only_tokens: tokens that log in to the dashboard (served at ``/``) to look, not
            to cancel, retry or trigger; the API does not accept them.

    Raises:
        ValueError: an empty ``tokens`` list or a blank token (give None to run without
            auth), or ``max_body`` < 1.
        TypeError: ``store`` is not a store.
    """
    if not isinstance(store, Store):
        raise TypeError(f"create_app needs a store, got {type(store).__name__}")
    token_bytes: list[bytes] | None = None
    if tokens is not None:
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of str, not one str")
        token_bytes = []
        for token in tokens:
            if not isinstance(token, str) or not token.strip():
                raise ValueError(f"a token must be a non-blank str, got {token!r}")
            token_bytes.append(token.strip().encode())
        if not token_bytes:
            raise ValueError("tokens is empty: give at least one token, or None for no auth")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ValueError(f"max_body must be an int >= 1, got {max_body!r}")
    key = None if secret is None else secret.encode() if isinstance(secret, str) else bytes(secret)
    service = Service(
        store=store,
        queue=Queue(store),
        tokens=token_bytes,
        secret=key,
        public_url=public_url.rstrip("/") if public_url else None,
        max_body=max_body,
    )
    endpoints = [
        *_HEALTH,
        *_jobs.ENDPOINTS,
        *_queues.ENDPOINTS,
        *_events.ENDPOINTS,
        *_callback.ENDPOINTS,
        *_schedules.ENDPOINTS,
        *_workflows.ENDPOINTS,
    ]
    document = openapi(endpoints, secured=token_bytes is not None)
    # The document describes itself too; it is built once, from the table above.
    document["paths"]["/openapi.json"] = {
        "get": {
            "summary": "This OpenAPI document",
            "operationId": "get_openapi",
            "tags": ["health"],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }

    async def openapi_route(call: Call) -> Response:
        return json_response(document)

    routes: list[BaseRoute] = [starlette_route(ep, service) for ep in endpoints]
    routes.append(
        starlette_route(
            Endpoint("GET", "/openapi.json", openapi_route, "OpenAPI", auth=False), service
        )
    )
    if relay is not None:
        routes.append(Mount("/v1/relay", app=relay.asgi))
    # The dashboard's routes join this router, so an unknown path stays a problem+json 404.
    dashboard = create_dashboard(
        store, tokens=tokens, read_only_tokens=read_only_tokens, secret=key
    )
    routes.extend(dashboard.routes)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return problem_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return problem_response(500, "internal error: see the service's log")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with store, dashboard.router.lifespan_context(dashboard):
            yield

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.anywork = service
    app.state.dashboard = dashboard  # its HTML routes are not part of the API's document
    return app
