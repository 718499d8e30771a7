"""The Worker the service tests serve: handlers that succeed, fail and wait."""

from __future__ import annotations

from typing import Any

import anyio

from work import Job, Status, StatusError, Worker

worker = Worker(name="service-test")


@worker.handler()
async def echo(job: Job) -> dict[str, Any]:
    """Return the job's args."""
    return job.args


@worker.handler()
async def fail(job: Job) -> None:
    """Fail with 400 (not retried)."""
    raise StatusError(Status.BAD_REQUEST, "told to fail")


@worker.handler()
async def slow(job: Job) -> str:
    """Sleep ``args["seconds"]`` seconds."""
    await anyio.sleep(float(job.args.get("seconds", 30)))
    return "slept"


@worker.handler()
async def add_one(job: Job) -> int:
    """Return ``input + 1``."""
    return int(job.args["input"]) + 1


@worker.handler()
async def flaky(job: Job) -> int:
    """Fail (500, retryable) on the first attempt; then return ``input * 10``."""
    assert job.ctx is not None
    if job.ctx.attempt < 2:
        raise StatusError(Status.INTERNAL_ERROR, "first attempt fails")
    return int(job.args["input"]) * 10


@worker.handler()
async def total(job: Job) -> int:
    """Return the sum of ``input`` (a chord's results)."""
    return sum(job.args["input"])
