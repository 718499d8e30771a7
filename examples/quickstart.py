"""Quickstart: durable jobs on the embedded SQLite store — enqueue, serve, watch them finish.

Run: ``python examples/quickstart.py [path/to/jobs.db]`` (default: a fresh file in a temporary
folder). No server to start.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import anyio

from work import Constant, Job, JobRecord, Queue, RetryPolicy, Status, StatusError, Worker
from work.stores import open_store

worker = Worker(max_concurrency=4, shutdown_grace=5)


@worker.handler()
async def resize_image(job: Job) -> dict[str, int]:
    """Pretend to resize an image; the result is stored with the job."""
    await anyio.sleep(random.uniform(0.05, 0.2))
    width = int(job.args["width"])
    return {"width": width // 2, "height": int(job.args["height"]) // 2}


@worker.handler()
async def charge_card(job: Job) -> str:
    """Fails with 503 on its first attempt (a flaky payment API), succeeds on the second."""
    assert job.ctx is not None
    if job.ctx.attempt == 1:
        raise StatusError(Status.UNAVAILABLE, "payment API unavailable")
    return f"charged {job.args['amount']} EUR"


@worker.handler()
def send_receipt(job: Job) -> str:
    """A plain ``def`` handler: it runs in a worker thread."""
    if "email" not in job.args:
        # 400: a bad job is recorded as FAILED with its reason, never retried, never lost.
        raise StatusError(Status.BAD_REQUEST, "no email address")
    return f"receipt sent to {job.args['email']}"


def describe(record: JobRecord) -> str:
    """One line per finished job."""
    outcome = record.result if record.state == "succeeded" else record.error
    return (
        f"{record.handler:<13} {record.state.value:<9} {int(record.status)}  "
        f"attempts={record.attempts}  {outcome}"
    )


async def main(db_path: Path) -> None:
    """Enqueue a few jobs, serve them, and print each one as it finishes."""
    url = f"sqlite:///{db_path}"
    print(f"store: {url}")
    async with open_store(url) as store:
        queue = Queue(store)
        retry = RetryPolicy(max_attempts=3, backoff=Constant(0.2))
        jobs = [
            Job("resize_image", {"width": 1024, "height": 768}),
            Job("resize_image", {"width": 640, "height": 480}),
            Job("charge_card", {"amount": 42}),
            Job("send_receipt", {"email": "ada@example.com"}),
            Job("send_receipt", {}),
        ]
        records = [await queue.enqueue(job, retry=retry) for job in jobs]
        delayed = await queue.enqueue(Job("resize_image", {"width": 10, "height": 10}), delay=0.5)
        records.append(delayed)
        print(f"enqueued {len(records)} jobs: {await queue.stats()}")

        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)

            async def report(job_id: str) -> None:
                print(describe(await queue.wait(job_id, timeout=30)))

            async with anyio.create_task_group() as waiters:
                for record in records:
                    waiters.start_soon(report, record.id)
            tg.cancel_scope.cancel()
        print(f"done: {await queue.stats()}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(main, Path(tmp) / "quickstart.db")
