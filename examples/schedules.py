"""Durable schedules on the embedded SQLite store: declare them, see their next fires, let a
scheduler fire them and a worker run them, then read the executions back.

Run: ``python examples/schedules.py [path/to/jobs.db] [seconds]`` (default: a fresh file in a
temporary folder, 3.5 seconds). No server to start.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import anyio

from work import Job, Schedule, Scheduler, Schedules, Worker
from work.stores import open_store

worker = Worker()


@worker.handler()
async def heartbeat(job: Job) -> str:
    """Runs every second: returns the time it ran."""
    return f"alive at {datetime.now(UTC):%H:%M:%S}"


@worker.handler()
async def report(job: Job) -> str:
    """A daily report (it only runs here when triggered by hand)."""
    return f"{job.args['kind']} report built"


# Declared in code: `sync` makes the store's "demo/" schedules exactly these.
SCHEDULES = [
    Schedule("demo/heartbeat", "rate(1 second)", Job("heartbeat"), exclusive=True, ttl=5),
    Schedule(
        "demo/daily-report",
        "cron(30 6 ? * MON-FRI *)",  # 06:30 on weekdays, Berlin wall time
        Job("report", {"kind": "daily"}),
        timezone="Europe/Berlin",
    ),
    Schedule("demo/new-year", "at(2030-01-01T00:00:00)", Job("report", {"kind": "yearly"})),
]


async def main(path: Path, seconds: float) -> None:
    """Sync the schedules, print their next fires, fire and run them for ``seconds``."""
    async with open_store(f"sqlite:///{path}") as store:
        schedules = Schedules(store)
        await schedules.sync(SCHEDULES, prefix="demo/")
        now = datetime.now(UTC)
        for record in await schedules.list(prefix="demo/"):
            schedule = record.schedule
            fires = ", ".join(f"{f:%Y-%m-%d %H:%M:%S}" for f in schedule.next_fires(now, 3))
            print(f"{schedule.id:20} {schedule.expression:26} next (UTC): {fires}")

        await schedules.trigger("demo/daily-report")  # once now, off its cadence
        async with worker, anyio.create_task_group() as tg, Scheduler(store, poll=0.2):
            tg.start_soon(worker.serve, store)
            await anyio.sleep(seconds)  # let a few fires happen
            worker.stop()

        for id in ("demo/heartbeat", "demo/daily-report"):
            executions = await schedules.executions(id, limit=3)
            print(f"{id}: {len(await schedules.executions(id, limit=1000))} executions, newest:")
            for job in executions:
                print(f"  {job.id:38} {job.state:9} {job.result or job.error}")


if __name__ == "__main__":
    folder = tempfile.mkdtemp()
    db = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(folder) / "jobs.db"
    anyio.run(main, db, float(sys.argv[2]) if len(sys.argv) > 2 else 3.5)
