"""POST /v1/workflows refuses a workflow nested deeper than 32 levels or with more than 10,000
steps: a 422 problem with the field error, nothing stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from work import Queue
from work.server import create_app
from work.stores import open_store

pytestmark = pytest.mark.anyio

TOKEN = "limits-token"


def _nested(levels: int) -> dict[str, Any]:
    """A body ``levels`` deep: groups around a chain holding a chord of one step."""
    chord = {"chord": {"header": [{"handler": "x"}], "callback": {"handler": "y"}}}
    node: dict[str, Any] = {"chain": [chord]}
    for _ in range(levels - 2):
        node = {"group": [node]}
    return node


@pytest.fixture
def anyio_backend() -> str:
    """In-process over ASGI: asyncio is enough (the routes are covered on both elsewhere)."""
    return "asyncio"


async def test_depth_and_step_limits_are_422_problems() -> None:
    """32 levels and 10,000 steps are enqueued (201); 33 levels, 200 levels and 10,001 steps
    are 422 application/problem+json naming the limit under errors["body.<form>"]."""
    async with open_store("memory://") as store:
        app = create_app(store, tokens=[TOKEN])
        transport = httpx.ASGITransport(app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as c:
            ok = await c.post("/v1/workflows", json=_nested(32))
            assert ok.status_code == 201, ok.text
            many = {"group": [{"handler": "x"} for _ in range(10_000)]}
            ok = await c.post("/v1/workflows", json=many)
            assert ok.status_code == 201, ok.text
            for body in (_nested(33), _nested(200)):
                r = await c.post("/v1/workflows", json=body)
                assert r.status_code == 422, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert "32 levels" in r.json()["errors"]["body.group"]
            more = {"chord": {"header": many["group"], "callback": {"handler": "y"}}}
            r = await c.post("/v1/workflows", json=more)
            assert r.status_code == 422, r.text
            assert "10,000 steps" in r.json()["errors"]["body.chord"]
            assert r.json()["status"] == 422 and r.json()["title"]
        assert len(await Queue(store).list_workflows()) == 2
