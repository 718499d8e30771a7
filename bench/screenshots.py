"""Regenerate docs/img/dashboard-*.png: each dashboard page in headless Chromium, on demo data.

Run ``python -m bench.screenshots [--out docs/img]`` (needs /usr/bin/chromium; see
docs/dashboard.md). It serves the dashboard on a temporary SQLite store on 127.0.0.1, runs a
worker over a few hundred jobs (some fail, some wait in a queue no worker serves), and takes a
laptop-sized screenshot of the login form, the overview, the jobs list, an args search and a
job's detail, the schedules, a schedule, the workflows, a workflow and the workers, and a
phone-sized one of the overview and the jobs list.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from playwright.sync_api import sync_playwright

from tests.server._dashboard_server import serve_dashboard
from work import Job, SyncQueue, Worker
from work.scheduling import Schedule, SyncSchedules
from work.stores import WorkerInfo, open_store
from work.workflows import Chord

__all__ = ["main"]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "demo"


def demo_data(store_url: str) -> None:
    """Enqueue demo jobs, run the runnable ones to the end, and leave some queued."""
    with SyncQueue(store_url) as queue:
        jobs = []
        for i in range(240):
            handler = ("send_email", "resize_image", "charge_card")[i % 3]
            jobs.append(Job(handler, {"customer": f"c{i % 17}", "order": 1000 + i}))
        queue.enqueue_many(jobs)
        queue.enqueue_many(
            [
                Job("build_report", {"customer": f"c{i}", "month": "2026-11"}, queue="reports")
                for i in range(12)
            ]
        )
        ids = [job.id for job in jobs]

    async def consume() -> None:
        worker = Worker()

        @worker.handler()
        async def send_email(job: Job) -> dict[str, Any]:
            return {"message_id": f"m-{job.args['order']}"}

        @worker.handler()
        async def resize_image(job: Job) -> dict[str, Any]:
            assert job.ctx is not None  # a served job always has its Ctx
            job.ctx.progress(1.0, "3 sizes")
            return {"sizes": [64, 256, 1024]}

        @worker.handler()
        async def charge_card(job: Job) -> dict[str, Any]:
            if job.args["order"] % 7 == 0:
                raise RuntimeError("card declined: insufficient funds")
            return {"charged": True}

        async with open_store(store_url) as store, worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            queue = SyncQueue(store_url)
            try:
                for job_id in ids:
                    await anyio.to_thread.run_sync(queue.wait, job_id, 60.0)
            finally:
                queue.close()
            worker.stop()
            # Two registry entries for the Workers page: one live, one lost an hour ago.
            now = datetime.now(UTC)
            for name, host, seen, done in (
                ("web-1:4711", "web-1", now, 240),
                ("web-2:815", "web-2", now - timedelta(hours=1), 1175),
            ):
                await store.record_worker(
                    WorkerInfo(
                        id=name,
                        hostname=host,
                        pid=int(name.split(":")[1]),
                        queues=("default",),
                        handlers=("charge_card", "resize_image", "send_email"),
                        concurrency=8,
                        processed=done,
                        failed=done // 20,
                        started_at=now - timedelta(hours=3),
                        last_seen=seen,
                        heartbeat=600.0,  # stays live while the screenshots are taken
                    )
                )

    thread = threading.Thread(target=anyio.run, args=(consume,))
    thread.start()
    thread.join(120)

    with SyncSchedules(store_url) as schedules:
        schedules.put(
            Schedule(
                "billing/nightly",
                "cron(30 2 * * ? *)",
                Job("charge_card", {"order": 1}),
                timezone="Europe/Paris",
                description="charge the day's orders",
            )
        )
        schedules.put(Schedule("reports/hourly", "rate(1 hour)", Job("build_report", {})))
        schedules.put(
            Schedule("mail/digest", "0 8 * * 1", Job("send_email", {}), timezone="America/New_York")
        )
        manual = schedules.trigger("billing/nightly")
    with SyncQueue(store_url) as queue:
        flow = queue.enqueue(
            Chord(
                [Job("resize_image", {"customer": f"c{i}", "order": i}) for i in range(3)],
                Job("send_email", {"customer": "c0", "order": 99}),
            )
        )
        ids = [manual.id, *flow.jobs]

    async def run_flow() -> None:
        worker = Worker()

        @worker.handler()
        async def resize_image(job: Job) -> dict[str, Any]:
            return {"sizes": [64, 256]}

        @worker.handler()
        async def send_email(job: Job) -> dict[str, Any]:
            return {"message_id": "m-99"}

        @worker.handler()
        async def charge_card(job: Job) -> dict[str, Any]:
            return {"charged": True}

        async with open_store(store_url) as store, worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            queue = SyncQueue(store_url)
            try:
                for job_id in ids:
                    await anyio.to_thread.run_sync(queue.wait, job_id, 60.0)
            finally:
                queue.close()
            worker.stop()

    thread = threading.Thread(target=anyio.run, args=(run_flow,))
    thread.start()
    thread.join(120)


def shoot(out: Path) -> list[Path]:
    """Take the screenshots into ``out`` and return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        store_url = f"sqlite:///{tmp}/demo.db"
        with SyncQueue(store_url):
            pass
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        with serve_dashboard(store_url, tokens=[TOKEN]) as running:
            demo_data(store_url)
            with SyncQueue(store_url) as queue:
                failed = queue.list(state="failed", limit=1)[0].id
                workflow = queue.list_workflows(limit=1)[0].id

            def page_for(width: int, height: int, scale: float) -> Any:
                context = browser.new_context(
                    viewport={"width": width, "height": height}, device_scale_factor=scale
                )
                page = context.new_page()
                page.goto(running.url + "/login")
                return page

            laptop = page_for(1280, 800, 1)
            laptop.screenshot(path=str(out / "dashboard-login.png"))
            made.append(out / "dashboard-login.png")
            laptop.fill("#token", TOKEN)
            laptop.click("button[type=submit]")
            laptop.wait_for_selector("section.queue")
            shots = [
                ("dashboard-overview.png", "/"),
                ("dashboard-jobs.png", "/jobs"),
                ("dashboard-search.png", "/jobs?q=customer%3Dc3"),
                ("dashboard-job.png", f"/jobs/{failed}"),
                ("dashboard-schedules.png", "/schedules"),
                ("dashboard-schedule.png", "/schedules/billing%2Fnightly"),
                ("dashboard-workflows.png", "/workflows"),
                ("dashboard-workflow.png", f"/workflows/{workflow}"),
                ("dashboard-workers.png", "/workers"),
            ]
            for name, path in shots:
                laptop.goto(running.url + path)
                laptop.wait_for_selector("body[data-live=open]")
                laptop.screenshot(path=str(out / name), full_page=name != "dashboard-jobs.png")
                made.append(out / name)
            phone = page_for(390, 844, 2)
            phone.fill("#token", TOKEN)
            phone.click("button[type=submit]")
            phone.wait_for_selector("section.queue")
            for name, path in (("dashboard-phone.png", "/"), ("dashboard-phone-jobs.png", "/jobs")):
                phone.goto(running.url + path)
                phone.wait_for_selector("body[data-live=open]")
                phone.screenshot(path=str(out / name))
                made.append(out / name)
            # Closed before the server stops, so no live stream holds its shutdown.
            browser.close()
    return made


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and take the screenshots."""
    parser = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    for path in shoot(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
