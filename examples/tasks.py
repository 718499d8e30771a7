"""Tasks for the ``anywork`` command line: the worker that every example in docs/cli.md runs.

Run it (from this folder, so that ``tasks`` is importable)::

    anywork worker tasks:worker --store sqlite:///demo.db
    anywork enqueue add --args '{"a": 1, "b": 2}' --store sqlite:///demo.db   # another shell

``python examples/tasks.py`` runs each handler once in-process and prints the outcomes.
"""

from __future__ import annotations

import anyio

from work import Job, Status, StatusError, Worker
from work.adapters import prometheus

worker = Worker(adapters=[prometheus()], max_concurrency=8, shutdown_grace=30)


@worker.handler()
async def add(job: Job) -> float:
    """Return ``a + b``; ends 400 when either is missing or not a number."""
    a, b = job.args.get("a"), job.args.get("b")
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        raise StatusError(Status.BAD_REQUEST, "a and b must be numbers")
    return a + b


@worker.handler()
async def nap(job: Job) -> float:
    """Sleep ``seconds`` (default 1), then return them: a job that takes a while."""
    seconds = float(job.args.get("seconds", 1))
    await anyio.sleep(seconds)
    return seconds


async def main() -> None:
    """Run each handler once, in this process, and print how each execution ended."""
    async with worker:
        for job in (
            Job("add", {"a": 1, "b": 2}),
            Job("add", {"a": 1}),
            Job("nap", {"seconds": 0.1}),
        ):
            execution = await worker.perform(job, sync=True)
            print(f"{job.handler} {job.args}: {int(execution.status)} {execution.result!r}")


if __name__ == "__main__":
    anyio.run(main)
