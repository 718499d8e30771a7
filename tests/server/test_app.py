"""``create_app`` in process: mounted in a user's Starlette app, its arguments checked."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from work.server import create_app
from work.stores import open_store

pytestmark = pytest.mark.anyio


async def test_mounted_in_a_starlette_app() -> None:
    """Mounted under /jobs, the API answers there with auth and problem details (the user's
    code enters the store)."""
    store = open_store("memory://")
    app = Starlette(routes=[Mount("/jobs", app=create_app(store, tokens=["t"]))])
    transport = httpx.ASGITransport(app)
    async with store, httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/jobs/v1/jobs")).status_code == 401
        auth = {"Authorization": "Bearer t"}
        r = await c.post("/jobs/v1/jobs", json={"handler": "h"}, headers=auth)
        assert r.status_code == 201
        r = await c.get(f"/jobs/v1/jobs/{r.json()['id']}", headers=auth)
        assert r.json()["state"] == "queued"
        assert (await c.get("/jobs/live")).text == "OK"


def test_arguments_are_checked() -> None:
    """An empty token list, a blank token, one str for tokens, a bad max_body or a non-store
    are refused with the value named."""
    store = open_store("memory://")
    with pytest.raises(ValueError, match="tokens is empty"):
        create_app(store, tokens=[])
    with pytest.raises(ValueError, match="non-blank"):
        create_app(store, tokens=[" "])
    with pytest.raises(TypeError, match="list of str"):
        create_app(store, tokens="abc")
    with pytest.raises(ValueError, match="max_body"):
        create_app(store, tokens=None, max_body=0)
    with pytest.raises(TypeError, match="needs a store"):
        create_app("memory://", tokens=None)  # type: ignore[arg-type]
