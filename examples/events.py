"""Follow a job through its events: enqueued, started, progress, succeeded."""

from __future__ import annotations

import anyio

from work import Job, JobEventKind, Queue, Worker
from work.stores import open_store

worker = Worker()


@worker.handler()
async def resize(job: Job) -> str:
    assert job.ctx is not None
    for step in range(1, 4):
        job.ctx.progress(step / 3, f"size {step} of 3")
        await anyio.sleep(0.01)
    return "done"


async def main() -> None:
    async with open_store("memory://") as store:
        queue = Queue(store)
        async with queue.events() as events, worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            record = await queue.enqueue(Job("resize", {"path": "a.png"}))
            async for event in events:
                print(event.kind, event.job_id == record.id, int(event.status), event.progress)
                if event.kind is JobEventKind.SUCCEEDED:
                    break
            worker.stop()


if __name__ == "__main__":
    anyio.run(main)
