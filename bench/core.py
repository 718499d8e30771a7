"""Core benchmark: Worker.perform throughput, perform_at lateness, memory of pending timers.

Run: ``.venv/bin/python -m bench.core [--jobs 100000] [--backend asyncio]``. Every figure is
printed next to a baseline measured in the same run, with the ratio and the target.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from work import Adapter, Handler, Job, Worker


def passthrough(handler: Handler) -> Handler:
    """An adapter that only calls through (what a minimal real adapter costs)."""

    async def wrapped(job: Job) -> Any:
        return await handler(job)

    return wrapped


async def noop(job: Job) -> None:
    """The no-op handler."""


async def _noop_raw() -> None:
    pass


async def baseline_task_per_job(n: int) -> float:
    """Jobs/s with one anyio task per job in one task group."""
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(_noop_raw)
    return n / (time.perf_counter() - start)


async def baseline_stream_pool(n: int, consumers: int = 16) -> float:
    """Jobs/s with ``consumers`` tasks reading an anyio memory object stream."""
    send, receive = anyio.create_memory_object_stream[Callable[[], Awaitable[None]]](1024)

    async def consume() -> None:
        async for fn in receive:
            await fn()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consume)
        async with send:
            for _ in range(n):
                await send.send(_noop_raw)
    receive.close()
    return n / (time.perf_counter() - start)


async def worker_throughput(n: int, adapters: list[Adapter]) -> float:
    """Jobs/s through ``Worker.perform`` (async mode), until every execution has finished."""
    worker = Worker(adapters=adapters)
    worker.register("noop", noop)
    job = Job("noop")
    async with worker:
        start = time.perf_counter()
        last = None
        for _ in range(n):
            last = await worker.perform(job)
        assert last is not None
        while worker._inflight:
            await last.wait()
            if worker._inflight:
                await next(iter(worker._inflight)).wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


async def perform_at_lateness(n: int = 1000, spread: float = 2.0) -> list[float]:
    """Lateness in ms of ``n`` perform_at jobs spread evenly over ``spread`` seconds."""
    worker = Worker()
    late: list[float] = []

    async def mark(job: Job) -> None:
        due = datetime.fromisoformat(job.args["due"])
        late.append((datetime.now(UTC) - due).total_seconds() * 1000)

    worker.register("mark", mark)
    async with worker:
        base = datetime.now(UTC) + timedelta(seconds=0.2)
        executions = []
        for i in range(n):
            due = base + timedelta(seconds=spread * i / n)
            executions.append(await worker.perform_at(Job("mark", {"due": due.isoformat()}), due))
        for execution in executions:
            await execution.wait()
    return late


async def pending_memory(n: int) -> tuple[float, float]:
    """(MB above the idle worker for ``n`` pending perform_in jobs, MB of the idle worker)."""
    gc.collect()
    tracemalloc.start()
    worker = Worker()
    worker.register("noop", noop)
    async with worker:
        gc.collect()
        idle, _ = tracemalloc.get_traced_memory()
        for i in range(n):
            await worker.perform_in(Job("noop", {"i": i}), 3600)
        gc.collect()
        loaded, _ = tracemalloc.get_traced_memory()
        worker.shutdown_grace = 0
    tracemalloc.stop()
    return (loaded - idle) / 1e6, idle / 1e6


def row(name: str, value: str, baseline: str, ratio: str, target: str, ok: bool | None) -> None:
    """Print one aligned result line."""
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    print(f"{name:<34} {value:>14} {baseline:>14} {ratio:>8}  {target:<18} {verdict}")


async def main_async(jobs: int) -> None:
    """Run every measurement and print the table."""
    # Warm up code paths once so the first measurement is not penalised.
    await worker_throughput(2000, [])
    await baseline_task_per_job(2000)

    task_rate = max([await baseline_task_per_job(jobs) for _ in range(2)])
    pool_rate = max([await baseline_stream_pool(jobs) for _ in range(2)])
    bare = max([await worker_throughput(jobs, []) for _ in range(2)])
    four = max([await worker_throughput(jobs, [passthrough] * 4) for _ in range(2)])

    print(f"{'measure':<34} {'value':>14} {'baseline':>14} {'ratio':>8}  {'target':<18}")
    row("task-per-job baseline", f"{task_rate:,.0f}/s", "", "", "", None)
    row("16-consumer stream baseline", f"{pool_rate:,.0f}/s", "", "", "", None)
    row("perform, 0 adapters", f"{bare:,.0f}/s", f"{task_rate:,.0f}/s",
        f"{bare / task_rate:.2f}x", "", None)  # fmt: skip
    row("perform, 4 adapters vs task/job", f"{four:,.0f}/s", f"{task_rate:,.0f}/s",
        f"{four / task_rate:.2f}x", ">= 1.00x", four / task_rate >= 1.0)  # fmt: skip
    row("perform, 4 adapters vs stream", f"{four:,.0f}/s", f"{pool_rate:,.0f}/s",
        f"{four / pool_rate:.2f}x", ">= 0.40x", four / pool_rate >= 0.4)  # fmt: skip

    late = sorted(await perform_at_lateness())
    p50 = statistics.median(late)
    p99 = late[int(len(late) * 0.99) - 1]
    row("perform_at lateness p50", f"{p50:.2f} ms", "", "", "", None)
    row("perform_at lateness p99", f"{p99:.2f} ms", "", "", "<= 5 ms", p99 <= 5)
    row("perform_at lateness max", f"{late[-1]:.2f} ms", "", "", "", None)

    extra, idle = await pending_memory(100_000)
    row("100k pending perform_in", f"{extra:.1f} MB", f"{idle:.1f} MB idle", "", "<= 100 MB",
        extra <= 100)  # fmt: skip


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    print(f"anywork core benchmark: {args.jobs:,} jobs, backend {args.backend}")
    anyio.run(main_async, args.jobs, backend=args.backend)


if __name__ == "__main__":
    main()
