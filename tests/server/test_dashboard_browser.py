"""The dashboard driven in a real headless Chromium against a real server on SQLite."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import anyio
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from work import Job, JobState, SyncQueue, Worker
from work.scheduling import Schedule, SyncSchedules
from work.stores import WorkerInfo, open_store
from work.workflows import Chain, WorkflowState

from ._dashboard_server import serve_dashboard

CHROMIUM = "/usr/bin/chromium"
# Flags that keep Chromium off the network (no updates, sync, field trials or metrics).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FULL = "full-token"
LOOK = "look-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Debian Chromium for the module (.ci/run installs it when missing)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Site:
    """A served dashboard, its store URL, and a browser context that may only reach it."""

    def __init__(self, url: str, store_url: str, context: BrowserContext) -> None:
        self.url = url
        self.store_url = store_url
        self.context = context
        self.requests: list[str] = []
        self.blocked: list[str] = []

    def login(self, token: str = FULL) -> Page:
        page = self.context.new_page()
        page.on("request", lambda request: self.requests.append(request.url))
        page.goto(self.url + "/")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        page.fill("#token", token)
        page.click("button[type=submit]")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        return page


@pytest.fixture
def site(browser: Browser, tmp_path: Path) -> Iterator[Site]:
    """A dashboard on a fresh SQLite store; at the end, no request may have left 127.0.0.1."""
    store_url = f"sqlite:///{tmp_path}/dash.db"
    with SyncQueue(store_url):
        pass  # creates the schema before the server and the tests share the file
    with serve_dashboard(store_url, tokens=[FULL], read_only_tokens=[LOOK]) as running:
        context = browser.new_context()
        served = Site(running.url, store_url, context)

        def guard(route: Route) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                served.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        try:
            yield served
        finally:
            context.close()
    assert served.requests, "the browser made no request at all"
    assert served.blocked == []
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in served.requests), served.requests


def run_worker(store_url: str, until: Callable[[], bool] | None = None) -> threading.Thread:
    """Serve the store's default queue in a thread: ``ok`` succeeds, ``boom`` fails (500)."""

    async def consume() -> None:
        worker = Worker()

        @worker.handler()
        async def ok(job: Job) -> dict[str, Any]:
            return {"sent": job.args.get("customer")}

        @worker.handler()
        async def boom(job: Job) -> None:
            raise RuntimeError("the mail server said no")

        async with open_store(store_url) as store, worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            with anyio.fail_after(30):
                while not (until or (lambda: True))():
                    await anyio.sleep(0.02)
            worker.stop()

    thread = threading.Thread(target=anyio.run, args=(consume,), daemon=True)
    thread.start()
    return thread


def _final(queue: SyncQueue, job_id: str) -> bool:
    record = queue.get(job_id)
    return record is not None and record.state.is_final


def settle(store_url: str, *ids: str) -> None:
    """Run a worker until every given job has finished."""
    with SyncQueue(store_url) as queue:
        thread = run_worker(store_url, lambda: all(_final(queue, i) for i in ids))
        for job_id in ids:
            queue.wait(job_id, timeout=30)
        thread.join(30)
    assert not thread.is_alive()


def test_login_overview_jobs_and_detail_show_the_store(site: Site) -> None:
    """After logging in, each page shows what the store holds: counts, rows, args, result, error."""
    with SyncQueue(site.store_url) as queue:
        queue.enqueue(Job("ok", {"customer": "acme"}, id="good-1"))
        queue.enqueue(Job("boom", {"customer": "zeta"}, id="bad-1"))
        settle(site.store_url, "good-1", "bad-1")
        queue.enqueue(Job("ok", {"customer": "later"}, queue="mail", id="waits-1"))
        stats = queue.stats()
    page = site.login()
    nav = page.locator("header nav a")
    expect(nav).to_have_text(["Overview", "Jobs", "Schedules", "Workflows", "Workers"])
    card = page.locator("section.queue[data-queue=default]")
    for state in ("succeeded", "failed", "queued"):
        expect(card.locator(f"[data-state={state}]")).to_have_text(
            str(stats["default"].get(state, 0))
        )
    mail = page.locator("section.queue[data-queue=mail]")
    expect(mail.locator("[data-state=queued]")).to_have_text("1")
    expect(mail.locator(".oldest")).to_contain_text("waits-1")
    expect(mail.locator(".oldest")).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"))

    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("tr[data-job]")).to_have_count(3)
    page.select_option("select[name=state]", "failed")
    page.click("form.filters button")
    expect(page.locator("tr[data-job]")).to_have_count(1)
    page.click("a:text('bad-1')")
    expect(page.locator("pre.error-text")).to_contain_text("the mail server said no")
    expect(page.locator("pre.args")).to_contain_text('"customer": "zeta"')
    expect(page.locator("dl.fields")).to_contain_text("1 of 1")

    page.goto(site.url + "/jobs/good-1")
    expect(page.locator("pre.result")).to_contain_text('"sent": "acme"')
    expect(page.locator("ol.timeline").first).to_contain_text("succeeded")


def test_the_overview_chart_survives_a_restart(site: Site) -> None:
    """The last hour's chart comes from the store: a dashboard started again over the same
    store shows the same succeeded and failed counts."""
    with SyncQueue(site.store_url) as queue:
        ids = [queue.enqueue(Job(name, {})).id for name in ("ok", "ok", "boom")]
        settle(site.store_url, *ids)
    page = site.login()
    card = page.locator("section.queue[data-queue=default]")
    expect(card.locator(".throughput")).to_have_text("2")
    expect(card.locator(".failures")).to_have_text("1")
    expect(card.locator("rect.ok")).not_to_have_count(0)
    with serve_dashboard(site.store_url, tokens=[FULL]) as again:
        page.goto(again.url + "/")
        page.fill("#token", FULL)
        page.click("button[type=submit]")
        card = page.locator("section.queue[data-queue=default]")
        expect(card.locator(".throughput")).to_have_text("2")
        expect(card.locator(".failures")).to_have_text("1")
        expect(card.locator("rect.bad")).not_to_have_count(0)


def test_cancel_and_retry_buttons_change_the_store(site: Site) -> None:
    """The Cancel button cancels a queued job and Retry requeues a failed one, as the store says."""
    with SyncQueue(site.store_url) as queue:
        queue.enqueue(Job("boom", {}, id="to-retry"))
        settle(site.store_url, "to-retry")
        queue.enqueue(Job("ok", {}, queue="idle", id="to-cancel"))
        page = site.login()
        page.goto(site.url + "/jobs/to-cancel")
        page.get_by_role("button", name="Cancel").click()
        expect(page.get_by_role("status")).to_have_text("Cancel requested.")
        assert queue.get("to-cancel").state is JobState.CANCELLED  # type: ignore[union-attr]

        page.goto(site.url + "/jobs/to-retry")
        page.get_by_role("button", name="Retry").click()
        expect(page.get_by_role("status")).to_have_text("The job was queued again.")
        record = queue.get("to-retry")
        assert record is not None and record.state is JobState.QUEUED and record.attempts == 0


def test_search_by_args_and_paging(site: Site) -> None:
    """The args box finds jobs by key=value; Next pages through the store's cursor."""
    with SyncQueue(site.store_url) as queue:
        tiers = ["gold" if i % 10 == 0 else "free" for i in range(120)]
        queue.enqueue_many([Job("ok", {"customer": i, "tier": t}) for i, t in enumerate(tiers)])
        page = site.login()
        page.goto(site.url + "/jobs")
        expect(page.locator("tr[data-job]")).to_have_count(50)
        page.get_by_role("link", name="Next").click()
        expect(page.locator("tr[data-job]")).to_have_count(50)
        page.get_by_role("link", name="Next").click()
        expect(page.locator("tr[data-job]")).to_have_count(20)
        expect(page.get_by_role("link", name="Next")).to_have_count(0)

        page.fill("input[name=q]", "customer=70")
        page.click("form.filters button")
        expect(page.locator("tr[data-job]")).to_have_count(1)
        expect(page.locator("td.args")).to_have_text('{"customer": 70, "tier": "gold"}')
        page.fill("input[name=q]", "tier=gold")
        page.click("form.filters button")
        expect(page.locator("tr[data-job]")).to_have_count(12)
        page.fill("input[name=q]", "tier")
        page.click("form.filters button")
        expect(page.get_by_role("alert")).to_contain_text("key=value")


def test_a_job_moves_from_queued_to_succeeded_without_a_reload(site: Site) -> None:
    """The jobs page follows the store's events: a finished job shows without reloading."""
    with SyncQueue(site.store_url) as queue:
        queue.enqueue(Job("ok", {"customer": 1}, id="live-1"))
        page = site.login()
        page.goto(site.url + "/jobs")
        row = page.locator("tr[data-job=live-1] td.job-state")
        expect(row).to_have_text("queued")
        expect(page.locator("body")).to_have_attribute("data-live", "open")
        page.evaluate("window.notReloaded = true")
        settle(site.store_url, "live-1")
        expect(row).to_have_text("succeeded", timeout=15000)
        assert page.evaluate("window.notReloaded") is True


def test_a_read_only_token_cannot_act(site: Site) -> None:
    """A read-only token sees no buttons, and a forged POST with its session is refused."""
    with SyncQueue(site.store_url) as queue:
        queue.enqueue(Job("ok", {}, queue="idle", id="keep-me"))
        page = site.login(LOOK)
        expect(page.locator(".badge")).to_have_text("read-only")
        page.goto(site.url + "/jobs/keep-me")
        expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
        answer = page.request.post(
            site.url + "/actions/cancel",
            form={"id": "keep-me", "csrf": "x"},
            headers={"Origin": site.url},
        )
        assert answer.status == 403
        assert queue.get("keep-me").state is JobState.QUEUED  # type: ignore[union-attr]


def test_workers_live_and_lost_and_queues_no_live_worker_serves(site: Site) -> None:
    """Workers shows each registered worker as live or lost with its handlers and counts; the
    overview flags queued handlers that no live worker on their queue has."""
    now = datetime.now(UTC)

    async def register() -> None:
        async with open_store(site.store_url) as store:
            await store.record_worker(
                WorkerInfo(
                    id="w-live",
                    hostname="alpha",
                    pid=11,
                    queues=("default",),
                    handlers=("ok",),
                    concurrency=4,
                    running=1,
                    processed=42,
                    failed=2,
                    started_at=now - timedelta(minutes=5),
                    last_seen=now + timedelta(hours=1),
                )
            )
            await store.record_worker(
                WorkerInfo(
                    id="w-lost",
                    hostname="beta",
                    pid=12,
                    queues=("default", "mail"),
                    handlers=("ok", "boom"),
                    concurrency=2,
                    processed=7,
                    started_at=now - timedelta(hours=2),
                    last_seen=now - timedelta(hours=1),
                )
            )

    # Playwright's sync API holds this thread's event loop: run the store calls in another.
    thread = threading.Thread(target=anyio.run, args=(register,))
    thread.start()
    thread.join(30)
    with SyncQueue(site.store_url) as queue:
        queue.enqueue(Job("ok", {}, queue="default"))
        queue.enqueue(Job("boom", {}, queue="default"))
        queue.enqueue(Job("ok", {}, queue="mail"))
    page = site.login()
    default = page.locator("section.queue[data-queue=default] .unserved")
    expect(default).to_contain_text("boom (1 queued)")
    expect(default).not_to_contain_text("ok")
    # Only the lost worker serves mail: nothing live can run its job.
    expect(page.locator("section.queue[data-queue=mail] .unserved")).to_contain_text("ok")

    page.get_by_role("link", name="Workers", exact=True).click()
    live = page.locator("tr[data-worker=w-live]")
    expect(live.locator(".worker-state")).to_have_text("live")
    expect(live.locator(".processed")).to_have_text("42")
    expect(live.locator(".running")).to_have_text("1/4")
    lost = page.locator("tr[data-worker=w-lost]")
    expect(lost.locator(".worker-state")).to_have_text("lost")
    expect(lost).to_contain_text("ok, boom")
    expect(lost).to_contain_text((now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"))


def test_a_jobs_page_lists_its_events_as_they_happen(site: Site) -> None:
    """An open job page adds the job's events to its timeline and shows its new state, live."""
    with SyncQueue(site.store_url) as queue:
        queue.enqueue(Job("ok", {"customer": 2}, id="live-2"))
        page = site.login()
        page.goto(site.url + "/jobs/live-2")
        expect(page.locator("body")).to_have_attribute("data-live", "open")
        expect(page.get_by_role("button", name="Cancel")).to_be_visible()
        settle(site.store_url, "live-2")
        events = page.locator("#live-events li")
        expect(events.last).to_contain_text("succeeded (status 200, attempt 1)", timeout=15000)
        expect(events.first).to_contain_text("started")
        expect(page.locator("pre.result")).to_contain_text('"sent": 2')
        expect(page.get_by_role("button", name="Cancel")).to_have_count(0)


def test_schedules_page_shows_fires_and_acts(site: Site) -> None:
    """A schedule shows in words and as written, with its zone and next five fires in UTC and
    in its zone; Disable and Trigger now change the store; executions show their latency."""
    schedule = Schedule(
        "billing/nightly",
        "cron(30 2 * * ? *)",
        Job("ok", {"customer": "all"}),
        timezone="Europe/Paris",
        description="charge every card",
    )
    with SyncSchedules(site.store_url) as schedules:
        schedules.put(schedule)
        page = site.login()
        page.get_by_role("link", name="Schedules", exact=True).click()
        row = page.locator("tr[data-schedule='billing/nightly']")
        expect(row).to_contain_text(schedule.describe())
        expect(row).to_contain_text("cron(30 2 * * ? *)")
        expect(row).to_contain_text("Europe/Paris")
        row.get_by_role("link", name="billing/nightly").click()
        expect(page.locator(".describe")).to_have_text(schedule.describe())
        fires = schedule.next_fires(datetime.now(UTC), 5)
        cells = page.locator("table.fires tbody tr")
        expect(cells).to_have_count(5)
        paris = ZoneInfo("Europe/Paris")
        for i, when in enumerate(fires):
            expect(cells.nth(i)).to_contain_text(when.strftime("%Y-%m-%d %H:%M:%S"))
            expect(cells.nth(i)).to_contain_text(
                when.astimezone(paris).strftime("%Y-%m-%d 02:30:00")
            )

        page.get_by_role("button", name="Trigger now").click()
        expect(page.get_by_role("status")).to_have_text("One execution was started now.")
        runs = schedules.executions("billing/nightly")
        assert len(runs) == 1 and runs[0].schedule_id == "billing/nightly"
        settle(site.store_url, runs[0].id)
        page.reload()
        execution = page.locator(f"tr[data-job='{runs[0].id}']")
        expect(execution.locator(".job-state")).to_have_text("succeeded")
        expect(execution.locator(".latency")).to_have_text(re.compile(r"^\d+\.\d{3} s$"))

        page.get_by_role("button", name="Disable").click()
        expect(page.get_by_role("status")).to_contain_text("disabled")
        record = schedules.get("billing/nightly")
        assert record is not None and record.schedule.enabled is False
        page.get_by_role("button", name="Enable").click()
        record = schedules.get("billing/nightly")
        expect(page.get_by_role("button", name="Disable")).to_be_visible()
        assert schedules.get("billing/nightly").schedule.enabled is True  # type: ignore[union-attr]


def test_workflows_page_draws_the_steps_with_their_states(site: Site) -> None:
    """A chain's steps are drawn in order, each box with its job's state; the list shows it."""
    with SyncQueue(site.store_url) as queue:
        flow = queue.enqueue(
            Chain(Job("ok", {"customer": 1}), Job("boom", {}), Job("ok", {"customer": 3}))
        )
        thread = run_worker(site.store_url, lambda: _workflow_ended(queue, flow.id))
        ended = queue.wait_workflow(flow.id, timeout=30)
        thread.join(30)
        assert ended.state is WorkflowState.FAILED
        page = site.login()
        page.get_by_role("link", name="Workflows", exact=True).click()
        row = page.locator(f"tr[data-workflow='{flow.id}']")
        expect(row.locator(".workflow-state")).to_have_text("failed")
        row.get_by_role("link").click()
        nodes = page.locator("svg a.node")
        expect(nodes).to_have_count(3)
        expect(nodes.nth(0)).to_have_class(re.compile("node-succeeded"))
        expect(nodes.nth(1)).to_have_class(re.compile("node-failed"))
        expect(nodes.nth(2)).to_contain_text("not started")
        expect(page.locator("svg line.edge")).to_have_count(2)
        expect(page.locator("pre.error-text")).to_contain_text("the mail server said no")


def _workflow_ended(queue: SyncQueue, id: str) -> bool:
    record = queue.get_workflow(id)
    return record is not None and record.state is not WorkflowState.RUNNING
