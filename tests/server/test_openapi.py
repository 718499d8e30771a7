"""schemathesis against ``/openapi.json``: generated requests (valid and not) find no 5xx and
no response that breaks the schema the service publishes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from work.server import create_app
from work.stores import open_store

TOKEN = "schema-token"


# POST /v1/workflows takes a recursive body (a step, or a chain, group or chord of nodes).
# Schemathesis' coverage phase builds its boundary cases of such a schema up front: for this
# one it ran about five minutes before its first request (measured), so it is off for this
# operation only; its examples and fuzzing phases (generated requests, valid and not) run.
CONFIG = SchemathesisConfig.from_dict(
    {
        "operations": [
            {
                "include-path": "/v1/workflows",
                "include-method": "POST",
                "phases": {"coverage": {"enabled": False}},
            }
        ]
    }
)

# A memory store: nothing to create or clean up at import, and the app is loaded once.
APP = create_app(open_store("memory://"), tokens=[TOKEN])
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


# The SSE stream never ends by itself: it is tested over HTTP in test_service.py.
@schema.exclude(path="/v1/events").parametrize()
@pytest.mark.timeout(600)  # the safety net, generous on a loaded machine
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_responses_match_the_schema(case: Any) -> None:
    """Every generated request gets a documented status, never a 5xx, with a body that
    matches the published schema and media type."""
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ],
    )


@pytest.mark.anyio
async def test_the_document_covers_every_route() -> None:
    """/openapi.json names every route of the table with its schemas (no hand-written copy)."""
    app = create_app(open_store("memory://"), tokens=[TOKEN])
    html = {r.path for r in app.state.dashboard.routes}  # the dashboard's pages: no API
    paths = {r.path for r in app.routes} - html  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        doc = (await client.get("/openapi.json")).json()
    published = {p.replace("{id}", "{id:path}") for p in doc["paths"]}
    assert paths == published
    job = doc["components"]["schemas"]["JobOut"]["properties"]
    assert {"state", "status", "deadline", "workflow_id", "schedule_id"} <= set(job)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
