"""The dashboard's HTTP behaviour: login cookie, cross-site and read-only refusals, bad input."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from work import Job, JobState, Queue, Worker
from work.server import create_app
from work.server._dashboard import create_dashboard
from work.server._dashboard._app import _Counts
from work.stores import open_store
from work.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

ORIGIN = "http://dash.test"


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """A fresh memory store."""
    async with open_store("memory://") as opened:
        assert isinstance(opened, MemoryStore)
        yield opened


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)


@asynccontextmanager
async def logged_in(app: Starlette, token: str = "full") -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as c:
        answer = await c.post(
            "/login", data={"token": token, "next": "/"}, headers={"origin": ORIGIN}
        )
        assert answer.status_code == 303
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None
    return found.group(1)


async def test_pages_need_a_login_and_the_cookie_is_httponly_strict(store: MemoryStore) -> None:
    """Pages redirect to the login form; a good token sets an HttpOnly SameSite=Strict cookie."""
    app = create_dashboard(store, tokens=["full"])
    async with client(app) as c:
        answer = await c.get("/jobs?state=queued")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Dqueued"
        bad = await c.post("/login", data={"token": "nope"}, headers={"origin": ORIGIN})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        good = await c.post(
            "/login", data={"token": "full", "next": "/jobs"}, headers={"origin": ORIGIN}
        )
        assert good.status_code == 303 and good.headers["location"] == "/jobs"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "full" not in cookie.split(";")[0]
        assert (await c.get("/jobs")).status_code == 200
        assert (await c.get("/events", headers={"cookie": "anywork_dashboard=forged"})).status_code


async def test_login_refuses_other_origins_and_foreign_next(store: MemoryStore) -> None:
    """A login posted from another site fails; ``next`` never leads off the dashboard."""
    app = create_dashboard(store, tokens=["full"])
    async with client(app) as c:
        crossed = await c.post("/login", data={"token": "full"}, headers={"origin": "http://evil"})
        assert crossed.status_code == 401
        away = await c.post(
            "/login", data={"token": "full", "next": "//evil.test/x"}, headers={"origin": ORIGIN}
        )
        assert away.headers["location"] == "/"


async def test_actions_refuse_cross_site_and_missing_csrf(store: MemoryStore) -> None:
    """A cancel without the page's CSRF token or from another origin is 403 and changes nothing."""
    queue = Queue(store)
    await queue.enqueue(Job("ok", {}, id="j1"))
    app = create_dashboard(store, tokens=["full"])
    async with logged_in(app) as c:
        page = await c.get("/jobs/j1")
        token = csrf_of(page.text)
        missing = await c.post("/actions/cancel", data={"id": "j1"}, headers={"origin": ORIGIN})
        crossed = await c.post(
            "/actions/cancel", data={"id": "j1", "csrf": token}, headers={"origin": "http://evil"}
        )
        assert missing.status_code == crossed.status_code == 403
        assert (await queue.get("j1")).state is JobState.QUEUED  # type: ignore[union-attr]
        done = await c.post(
            "/actions/cancel", data={"id": "j1", "csrf": token}, headers={"origin": ORIGIN}
        )
        assert done.status_code == 303 and done.headers["location"] == "/jobs/j1?msg=cancelled"
        assert (await queue.get("j1")).state is JobState.CANCELLED  # type: ignore[union-attr]
        again = await c.post(
            "/actions/retry", data={"id": "j1", "csrf": token}, headers={"origin": ORIGIN}
        )
        assert again.headers["location"] == "/jobs/j1?msg=retried"
        assert (await queue.get("j1")).state is JobState.QUEUED  # type: ignore[union-attr]
        refused = await c.post(
            "/actions/retry", data={"id": "j1", "csrf": token}, headers={"origin": ORIGIN}
        )
        assert refused.headers["location"] == "/jobs/j1?msg=not-retried"
        unknown = await c.post(
            "/actions/delete", data={"id": "j1", "csrf": token}, headers={"origin": ORIGIN}
        )
        assert unknown.status_code == 404


async def test_a_read_only_token_is_refused_actions(store: MemoryStore) -> None:
    """A read-only token's session, with a valid CSRF token, still cannot cancel."""
    queue = Queue(store)
    await queue.enqueue(Job("ok", {}, id="j1"))
    app = create_dashboard(store, tokens=["full"], read_only_tokens=["look"])
    async with logged_in(app, "look") as c:
        page = await c.get("/jobs/j1")
        assert "Cancel" not in page.text and "read-only" in page.text
        digest = c.cookies["anywork_dashboard"]
        # The CSRF token the pages would carry is not shown to a read-only session; forge none.
        answer = await c.post(
            "/actions/cancel", data={"id": "j1", "csrf": digest}, headers={"origin": ORIGIN}
        )
        assert answer.status_code == 403
    assert (await queue.get("j1")).state is JobState.QUEUED  # type: ignore[union-attr]


async def test_bad_filters_and_unknown_jobs_are_4xx_with_a_reason(store: MemoryStore) -> None:
    """An unknown state is a 400 naming it; an unknown job a 404 naming its id."""
    app = create_dashboard(store, tokens=["full"])
    async with logged_in(app) as c:
        bad = await c.get("/jobs?state=sleeping")
        assert bad.status_code == 400 and "sleeping" in bad.text
        missing = await c.get("/jobs/who%2Fknows")
        assert missing.status_code == 404 and "who/knows" in missing.text


async def test_no_token_is_a_value_error(store: MemoryStore) -> None:
    """A dashboard nobody could log in to is refused at build time."""
    with pytest.raises(ValueError, match="at least one token"):
        create_dashboard(store, tokens=[])


async def test_mounted_under_a_prefix_links_and_cookie_follow_it(store: MemoryStore) -> None:
    """Mounted at /dash, the links, redirects and cookie path all carry the prefix."""
    host = Starlette(routes=[Mount("/dash", create_dashboard(store, tokens=["full"]))])
    async with client(host) as c:
        first = await c.get("/dash/")
        assert first.headers["location"].startswith("/dash/login?next=")
        login = await c.post("/dash/login", data={"token": "full"}, headers={"origin": ORIGIN})
        assert (
            login.headers["location"] == "/dash/" and "Path=/dash/" in login.headers["set-cookie"]
        )
        page = await c.get("/dash/")
        assert 'href="/dash/jobs"' in page.text and 'src="/dash/static/dashboard.js"' in page.text


async def test_overview_counts_the_last_hours_finished_jobs(store: MemoryStore) -> None:
    """The chart shows each queue's succeeded and failed jobs by minute, from the store: a
    dashboard built after the jobs ran (a restart) shows them too."""
    queue = Queue(store)
    worker = Worker()

    @worker.handler()
    async def ok(job: Job) -> int:
        return 1

    @worker.handler()
    async def boom(job: Job) -> None:
        raise RuntimeError("no")

    ids = [(await queue.enqueue(Job(name, {}))).id for name in ("ok", "ok", "ok", "boom")]
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(worker.serve, store)
        for job_id in ids:
            await queue.wait(job_id, timeout=10)
        worker.stop()
    app = create_dashboard(store, tokens=["full"])  # started after the jobs ran
    async with app.router.lifespan_context(app), logged_in(app) as c:
        text = (await c.get("/")).text
        assert '<span class="throughput">3</span>' in text
        assert '<span class="failures">1</span>' in text
        # A minute's bar, above the axis for successes and below it for the failure.
        assert re.search(r'<rect x="\d+" y="1.0" width="3" height="20.0" class="ok"/>', text)
        assert re.search(r'<rect x="\d+" y="21" width="3" height="6.7" class="bad"/>', text)


async def test_slow_counts_are_taken_in_the_background(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When counting is slow, the overview shows the last background count and its age."""
    monkeypatch.setattr(_Counts, "SLOW", 0.0)  # every count now counts as slow
    queue = Queue(store)
    app = create_dashboard(store, tokens=["full"])
    async with app.router.lifespan_context(app), logged_in(app) as c:
        first = await c.get("/")
        assert "Counts as of" in first.text
        await queue.enqueue(Job("ok", {}, id="new-1"))
        with anyio.fail_after(10):  # the background count catches up, with no request's help
            while 'data-state="queued">1<' not in (await c.get("/")).text:
                await anyio.sleep(0.05)
    async with logged_in(app) as c:
        # Without the lifespan nobody refreshes in the background: each request counts.
        await queue.enqueue(Job("ok", {}, id="new-2"))
        page = await c.get("/")
        assert 'data-state="queued">2<' in page.text and "Counts as of" not in page.text


async def test_create_app_serves_the_dashboard_at_the_root(store: MemoryStore) -> None:
    """create_app serves the dashboard at / beside the API; unknown paths stay problem 404s."""
    app = create_app(store, tokens=["full"], read_only_tokens=["look"])
    async with client(app) as c:
        assert (await c.get("/")).headers["location"] == "/login?next=%2F"
        missing = await c.get("/nowhere")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        api = await c.get("/v1/queues", headers={"authorization": "Bearer look"})
        assert api.status_code == 401  # a read-only dashboard token is no API token
    async with logged_in(app, "look") as c:
        assert "read-only" in (await c.get("/")).text


async def test_without_tokens_there_is_no_login(store: MemoryStore) -> None:
    """tokens=None (``anywork serve --insecure``, loopback only) opens the pages directly."""
    await Queue(store).enqueue(Job("ok", {}, id="j1"))
    app = create_dashboard(store, tokens=None)
    async with client(app) as c:
        assert (await c.get("/login")).headers["location"] == "/"
        page = await c.get("/jobs/j1")
        assert page.status_code == 200 and "Log out" not in page.text
        crossed = await c.post(
            "/actions/cancel",
            data={"id": "j1", "csrf": csrf_of(page.text)},
            headers={"origin": "http://evil"},
        )
        assert crossed.status_code == 403
