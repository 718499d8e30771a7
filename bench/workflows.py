"""Workflow benchmarks: a chord and a chain on each store, next to plain jobs in the same run.

Run ``python -m bench.workflows [--stores sqlite,postgresql,redis] [--members 10000]
[--steps 1000] [--concurrency 16]``.

For each store, through the public API (``Queue`` and one in-process ``Worker.serve``):

- **plain**: ``--members`` + 1 no-op jobs enqueued with ``enqueue_many``, then served (jobs/s
  from the start of serving until the last one ended);
- **chord**: a Chord of ``--members`` no-op members and a callback (steps/s, the same way;
  target: at least 0.5x plain);
- **chain**: a Chain of ``--steps`` no-op steps at concurrency 1, next to the same number of
  plain jobs at concurrency 1: the time each step adds (``1/chain - 1/plain``, target: at
  most one store round trip), its p50 step-to-step gap (a step's ``finished_at`` to the next
  step's ``started_at``), and the store's own round trips measured in the same run: a read
  (p50 of ``store.get``) and a write (p50 of ``store.cancel`` of a queued job, one commit).

With ``--celery`` (``pip install 'anywork[bench-celery]'``) it also runs Celery's chord of
``--members`` no-op tasks on the same Redis (a Celery worker process with a pool of
``--concurrency`` threads, its keys under a prefix of their own) and prints anywork's chord
(enqueue and run, on Redis, in process) against it.

Each measurement uses a fresh SQLite file, PostgreSQL schema or Redis key prefix, removed
afterwards. Only 127.0.0.1 is contacted. On a shared machine the figures are noisy: compare
the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

__all__ = ["main"]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/13"


@asynccontextmanager
async def fresh_store(scheme: str, workdir: Path) -> AsyncIterator[Any]:
    """An entered store of ``scheme`` in a namespace of its own, removed afterwards."""
    from work.stores import open_store

    tag = uuid.uuid4().hex[:10]
    if scheme == "sqlite":
        store = open_store(f"sqlite:///{workdir / f'wf-{tag}.db'}")
    elif scheme == "postgresql":
        store = open_store(PG_URL, schema=f"anywork_bench_wf_{tag}")
    elif scheme == "redis":
        store = open_store(REDIS_URL, prefix=f"anywork-bench-wf-{tag}")
    elif scheme == "memory":
        store = open_store("memory://")
    else:
        raise SystemExit(f"unknown store {scheme!r} (memory, sqlite, postgresql, redis)")
    try:
        async with store:
            yield store
    finally:
        await _drop(scheme, tag)


async def _drop(scheme: str, tag: str) -> None:
    if scheme == "postgresql":
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "anywork_bench_wf_{tag}" CASCADE')
        finally:
            await conn.close()
    elif scheme == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"anywork-bench-wf-{tag}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
        finally:
            await client.aclose()


def _worker(concurrency: int) -> Any:
    from work import Job, Worker

    worker = Worker(max_concurrency=concurrency)

    @worker.handler()
    async def noop(job: Job) -> int:
        return 1

    @worker.handler()
    async def count(job: Job) -> int:
        return len(job.args["input"])

    return worker


async def _serve_until(store: Any, concurrency: int, done: Any) -> float:
    """Serve ``store`` until ``await done()`` returns; the seconds it took."""
    worker = _worker(concurrency)
    async with worker, anyio.create_task_group() as tg:
        start = time.perf_counter()
        tg.start_soon(lambda: worker.serve(store, concurrency=concurrency, lease=60))
        await done()
        elapsed = time.perf_counter() - start
        worker.stop()
    return elapsed


async def _all_succeeded(store: Any, n: int, last: str) -> None:
    # The last job enqueued is claimed last: wait for it as wait_workflow waits for a
    # workflow (one cheap read at a time), then make sure every job ended.
    from work import Queue

    await Queue(store).wait(last)
    while True:
        counts = (await store.stats()).get("default", {})
        if counts.get("succeeded", 0) >= n:
            return
        await anyio.sleep(0.01)


async def plain(scheme: str, workdir: Path, n: int, concurrency: int) -> float:
    """Plain no-op jobs per second."""
    from work import Job, Queue

    async with fresh_store(scheme, workdir) as store:
        queue = Queue(store)
        last = ""
        for i in range(0, n, 1000):
            batch = [Job("noop", {"i": j}) for j in range(i, min(n, i + 1000))]
            last = (await queue.enqueue_many(batch))[-1].id
        secs = await _serve_until(store, concurrency, lambda: _all_succeeded(store, n, last))
    return n / secs


async def chord(scheme: str, workdir: Path, members: int, concurrency: int) -> float:
    """A chord's steps (members and callback) per second."""
    from work import Job, Queue
    from work.workflows import Chord, WorkflowState

    async with fresh_store(scheme, workdir) as store:
        queue = Queue(store)
        rec = await queue.enqueue(Chord([Job("noop") for _ in range(members)], Job("count")))

        async def done() -> None:
            end = await queue.wait_workflow(rec.id)
            assert end.state is WorkflowState.SUCCEEDED and end.result == members, end

        secs = await _serve_until(store, concurrency, done)
    return (members + 1) / secs


async def chain(scheme: str, workdir: Path, steps: int) -> tuple[float, float, float, float]:
    """(steps/s, p50 step-to-step latency, p50 read round trip, p50 write round trip; in
    ms) of a chain."""
    from work import Job, Queue
    from work.workflows import Chain, WorkflowState

    async with fresh_store(scheme, workdir) as store:
        queue = Queue(store)
        rec = await queue.enqueue(Chain(*(Job("noop") for _ in range(steps))))

        async def done() -> None:
            end = await queue.wait_workflow(rec.id)
            assert end.state is WorkflowState.SUCCEEDED, end

        secs = await _serve_until(store, 1, done)
        jobs = await queue.list(workflow_id=rec.id, limit=steps)
        gaps = [
            (b.started_at - a.finished_at).total_seconds() * 1000
            for a, b in itertools.pairwise(jobs)
            if a.finished_at is not None and b.started_at is not None
        ]
        trips = []
        for _ in range(200):
            t = time.perf_counter()
            await store.get(rec.jobs[0])
            trips.append((time.perf_counter() - t) * 1000)
        # A write round trip: one committed change (a cancel) per call.
        writes = []
        for job in await queue.enqueue_many([Job("noop", queue="rt") for _ in range(200)]):
            t = time.perf_counter()
            await store.cancel(job.id)
            writes.append((time.perf_counter() - t) * 1000)
    return (
        steps / secs,
        statistics.median(gaps),
        statistics.median(trips),
        statistics.median(writes),
    )


async def run(stores: Sequence[str], members: int, steps: int, concurrency: int) -> None:
    """Measure and print one table."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="anywork-bench-wf-") as tmp:
        workdir = Path(tmp)
        for scheme in stores:
            base = await plain(scheme, workdir, members + 1, concurrency)
            fan = await chord(scheme, workdir, members, concurrency)
            one_by_one = await plain(scheme, workdir, steps, 1)
            rate, gap, trip, write = await chain(scheme, workdir, steps)
            rows.append(
                [
                    scheme,
                    f"{base:,.0f}",
                    f"{fan:,.0f}",
                    f"{fan / base:.2f}x",
                    f"{one_by_one:,.0f}",
                    f"{rate:,.0f}",
                    f"{1000 / rate - 1000 / one_by_one:.2f}",
                    f"{gap:.2f}",
                    f"{trip:.2f}",
                    f"{write:.2f}",
                ]
            )
            print(f"{scheme}: done", flush=True)
    head = [
        "store",
        "plain/s",
        "chord/s",
        "chord:plain",
        "plain c=1/s",
        "chain/s",
        "added ms/step",
        "gap p50 ms",
        "read rt ms",
        "write rt ms",
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"chord of {members:,} members + callback, chain of {steps:,} steps")
    for r in [head, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


CELERY_APP = """
from celery import Celery

URL = {url!r}
OPTIONS = {{"global_keyprefix": {prefix!r}}}
app = Celery("wfcelery", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options=OPTIONS,
    result_backend_transport_options=OPTIONS,
    worker_prefetch_multiplier=64,
    result_expires=600,
)


@app.task
def noop(i):
    return 1


@app.task
def count(results):
    return len(results)
"""


async def anywork_chord_total(members: int, concurrency: int) -> float:
    """anywork's chord on Redis, enqueue included: steps per second."""
    from work import Job, Queue

    with tempfile.TemporaryDirectory() as tmp:
        async with fresh_store("redis", Path(tmp)) as store:
            queue = Queue(store)
            from work.workflows import Chord

            start = time.perf_counter()
            rec = await queue.enqueue(Chord([Job("noop") for _ in range(members)], Job("count")))
            worker = _worker(concurrency)
            async with worker, anyio.create_task_group() as tg:
                tg.start_soon(lambda: worker.serve(store, concurrency=concurrency, lease=60))
                await queue.wait_workflow(rec.id)
                secs = time.perf_counter() - start
                worker.stop()
    return (members + 1) / secs


def celery_chord(members: int, concurrency: int) -> float:
    """Celery's chord of ``members`` no-op tasks and a callback on the same Redis: steps per
    second, from the chord's apply until its result."""
    prefix = f"anywork-bench-celery-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="anywork-bench-celery-") as tmp:
        Path(tmp, "wfcelery.py").write_text(CELERY_APP.format(url=REDIS_URL, prefix=prefix))
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = [sys.executable, "-m", "celery", "-A", "wfcelery", "worker", "--pool", "threads"]
        cmd += [
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ]
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        sys.path.insert(0, tmp)
        try:
            import celery  # type: ignore[import-untyped, import-not-found, unused-ignore]

            wfcelery = __import__("wfcelery")
            wfcelery.noop.delay(0).get(timeout=60)  # the worker is up
            start = time.perf_counter()
            header = [wfcelery.noop.s(i) for i in range(members)]
            result = celery.chord(header)(wfcelery.count.s())
            assert result.get(timeout=1800) == members
            secs = time.perf_counter() - start
        finally:
            sys.path.remove(tmp)
            proc.terminate()
            proc.wait(timeout=30)
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            client.close()
    return (members + 1) / secs


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m bench.workflows --help``."""
    parser = argparse.ArgumentParser(prog="python -m bench.workflows", description=__doc__)
    parser.add_argument("--stores", default="sqlite,postgresql,redis")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--celery", action="store_true", help="compare with Celery's chord")
    ns = parser.parse_args(argv)
    if ns.stores:
        anyio.run(run, ns.stores.split(","), ns.members, ns.steps, ns.concurrency)
    if ns.celery:
        ours = anyio.run(anywork_chord_total, ns.members, ns.concurrency)
        theirs = celery_chord(ns.members, ns.concurrency)
        print(
            f"chord of {ns.members:,} on Redis, enqueue included: anywork {ours:,.0f} steps/s, "
            f"Celery {theirs:,.0f} steps/s: {ours / theirs:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
