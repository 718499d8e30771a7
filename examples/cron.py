"""Scheduled jobs: a cron line and a fixed interval on one in-process Worker.

Run: ``python examples/cron.py [seconds]`` (default 3). The cron line here has a sixth field,
seconds (croniter's convention), so the demo shows several runs quickly; in production you
would write ``"0 3 * * *"`` (03:00 UTC every day). Cron lines are read in UTC.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import anyio

from work import Job, Worker

worker = Worker()


@worker.handler()
async def report(job: Job) -> None:
    """Print when it ran and which schedule started it."""
    now = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    print(f"{now} {job.args['schedule']}")


async def main(run_for: float) -> None:
    """Run both schedules for ``run_for`` seconds, then stop and print the counts."""
    async with worker:
        cron = await worker.perform_every(Job("report", {"schedule": "cron */1s"}), "* * * * * *")
        interval = await worker.perform_every(
            Job("report", {"schedule": "every 0.5s"}), 0.5, sync=True
        )
        await anyio.sleep(run_for)
        cron.cancel()
        interval.cancel()
        await cron.wait()
        await interval.wait()
    print(f"cron ran {cron.count} times, interval ran {interval.count} times")


if __name__ == "__main__":
    anyio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
