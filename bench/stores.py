"""Store benchmarks: each store's throughput, latency and memory next to its raw driver floor.

Run ``python -m bench.stores [--stores sqlite,postgresql,redis] [--jobs N] [--profile]
[--strict]``: it exits 1 on a missed target only with ``--strict``.

``python -m bench.stores --breakdown`` prints instead the CPU per job of each store call on
the per-job path (``Queue``'s checks, ``add``, ``claim`` + ``complete``, ``complete_and_claim``,
``renew``), in process.

``python -m bench.stores --redis-cluster`` compares a Redis Cluster with one Redis server
(see :mod:`bench.redis_cluster`).

``python -m bench.stores --pgbouncer [--jobs N]`` measures PostgreSQL through PgBouncer in
transaction pooling mode (127.0.0.1:6432, ``.ci/pgbouncer start``; ``?listen=false``) next to
direct PostgreSQL in the same run: enqueue one by one (``Queue`` and ``SyncQueue``),
``enqueue_many``, the drain of ``--jobs``
no-op jobs by one worker process (target: >= 0.8x direct; best of 3 alternating rounds), enqueue
one by one again with both stores open and blocks of 50 jobs taking turns (medians: the ratio
least moved by the load of a shared machine) and the idle pickup latency.

``python -m bench.stores --history [--million]`` measures instead what history costs: claim
throughput (``claim`` of 10 then ``complete``, in process) and the CPU an idle worker process
uses, with 0, 100,000 (and with ``--million`` 1,000,000) finished jobs in the store, each
against the empty store's figure measured in the same run (target: within 20% at the largest
size). Finished jobs are written in bulk (SQL ``INSERT ... SELECT``, Redis pipelines).

For every store it measures, through the public API (``Queue`` and ``Worker.serve``):

- enqueue one by one and with ``enqueue_many`` (jobs/s);
- processing of ``--jobs`` no-op jobs by one worker process (jobs/s, leases and results on);
- idle pickup latency: one job into an idle worker, until its handler starts (p50/p99 ms);
- the worker process's peak RSS (``VmHWM`` of that process, see :func:`peak_rss_mb`), with
  anywork imported from bytecode as an installed wheel would be (see
  :func:`compile_like_an_install`);
- CPU per job (``getrusage``: user + system, every thread) of the worker process over the
  processing run, and of the producer over the one-by-one enqueues (``Queue.enqueue`` and
  ``SyncQueue.enqueue``);
- with huey installed (the ``bench`` extra), huey on the same SQLite file settings and Redis
  with the same ``--jobs`` no-op jobs: its producer enqueueing them one by one, and a worker
  process draining them with huey's own loop (``dequeue`` then ``execute``, which pops the job:
  a crash loses it);

and, in the same run, the raw floor of the same backend with the same driver: SQLite insert /
claim by ``UPDATE ... RETURNING`` then ack by ``UPDATE``, one job per transaction
(``synchronous=NORMAL``); PostgreSQL insert / ``FOR UPDATE SKIP LOCKED`` claim then ack, one
job per statement (asyncpg); Redis ``LPUSH`` / ``BLMOVE`` into a processing list then
``LREM``. It prints one table with each figure, its baseline (the floor, huey, or
``Queue.enqueue``), the ratio and whether it meets its target (issue #14's). Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from ._worker import child_process, cpu_seconds, peak_rss_mb

__all__ = ["Row", "cpu_seconds", "main", "peak_rss_mb"]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PGBOUNCER_URL = "postgresql://postgres@127.0.0.1:6432/test?listen=false"
PGBOUNCER_TARGET = 0.8
PGBOUNCER_PICKUPS = 40
PGBOUNCER_ROUNDS = 3
INTERLEAVED_BLOCKS = 40
INTERLEAVED_BLOCK = 50
PG_SCHEMA = "anywork_bench"
REDIS_URL = "redis://127.0.0.1:6379/13"
REDIS_PREFIX = "anywork-bench"
ONE_BY_ONE = 2000
BATCH = 500
PICKUP_SAMPLES = 200
FLOOR_RUNS = 3
PAYLOAD = json.dumps({"handler": "noop", "args": {"i": 0, "pad": "x" * 64}, "queue": "default"})

# target kinds: a minimum ratio to the baseline ("ratio"), a maximum ratio to it
# ("max_ratio"), or a maximum absolute value ("max"). Issue #14's targets, and the earlier
# ones it did not replace (pickup, enqueue_many).
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("sqlite", "processing vs huey"): ("ratio", 1.5),
    ("sqlite", "worker CPU/job"): ("max_ratio", 2.0),
    ("redis", "processing"): ("ratio", 1.0),
    ("redis", "producer CPU/job"): ("max_ratio", 2.0),
    ("postgresql", "processing"): ("ratio", 3.0),
    ("postgresql", "pickup p50"): ("max", 5.0),
    ("redis", "pickup p50"): ("max", 5.0),
    ("sqlite", "pickup p50"): ("max", 50.0),
}
GENERIC_TARGETS: dict[str, tuple[str, float]] = {
    "enqueue one": ("ratio", 0.80),
    "SyncQueue.enqueue": ("ratio", 0.80),
    "enqueue_many": ("ratio", 0.30),
    "worker RSS": ("max", 35.0),
}


@dataclass
class Row:
    """One measured figure of one store, with its floor and target.

    Attributes:
        store: the store's scheme.
        name: what was measured ("processing", "pickup p50", ...).
        value: the figure.
        unit: its unit ("jobs/s", "ms", "MB").
        floor: the baseline measured in the same run (the raw driver's floor unless
            ``basis`` names another), or None.
        basis: what the baseline is ("floor", "huey", "Queue.enqueue").
    """

    store: str
    name: str
    value: float
    unit: str
    floor: float | None = None
    basis: str = "floor"

    @property
    def target(self) -> tuple[str, float] | None:
        """("ratio", minimum) or ("max", ceiling), or None when the figure has no target."""
        return TARGETS.get((self.store, self.name)) or GENERIC_TARGETS.get(self.name)

    @property
    def ratio(self) -> float | None:
        """value / floor, when there is a floor."""
        return self.value / self.floor if self.floor else None

    @property
    def verdict(self) -> str:
        """PASS, MISS, or "" without a target."""
        target = self.target
        if target is None:
            return ""
        kind, bound = target
        if kind in ("ratio", "max_ratio"):
            ratio = self.ratio
            if ratio is None:
                return ""
            return "PASS" if (ratio >= bound if kind == "ratio" else ratio <= bound) else "MISS"
        return "PASS" if self.value <= bound else "MISS"

    def cells(self) -> list[str]:
        """The row's cells for the printed table."""
        target = self.target
        target_text = ""
        if target is not None:
            kind, bound = target
            target_text = {
                "ratio": f">= {bound:g}x {self.basis}",
                "max_ratio": f"<= {bound:g}x {self.basis}",
            }.get(kind, f"<= {bound:g}")
        return [
            self.store,
            self.name,
            f"{self.value:,.1f} {self.unit}",
            "" if self.floor is None else f"{self.floor:,.1f} {self.unit} ({self.basis})",
            "" if self.ratio is None else f"{self.ratio:.2f}x",
            target_text,
            self.verdict,
        ]


def format_table(rows: Sequence[Row]) -> str:
    """Return the rows as an aligned text table (Markdown-compatible pipes)."""
    headers = ["store", "figure", "value", "baseline", "ratio", "target", ""]
    cells = [r.cells() for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(items, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(c) for c in cells)])


# --------------------------------------------------------------------------- stores under test


def store_url(scheme: str, workdir: Path) -> tuple[str, dict[str, Any]]:
    """The URL and options of the store to benchmark for ``scheme``."""
    if scheme == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}", {}
    if scheme == "postgresql":
        return PG_URL, {"schema": PG_SCHEMA}
    if scheme == "redis":
        return REDIS_URL, {"prefix": REDIS_PREFIX}
    raise SystemExit(f"unknown store {scheme!r} (sqlite, postgresql, redis)")


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database file and its WAL companions."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def reset_store(scheme: str, workdir: Path) -> None:
    """Remove whatever a previous measurement left in the store."""
    if scheme == "sqlite":
        remove_sqlite(workdir / "bench.db")
    elif scheme == "postgresql":
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        finally:
            await conn.close()
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
        finally:
            await client.aclose()


def make_jobs(n: int, queue: str = "default") -> list[Any]:
    """``n`` no-op jobs for ``queue``."""
    from work import Job

    return [Job("noop", {"i": i, "pad": "x" * 64}, queue=queue) for i in range(n)]


def sync_enqueue(url: str, options: dict[str, Any], n: int) -> tuple[float, float]:
    """(jobs/s, CPU µs per job) of ``n`` ``SyncQueue.enqueue`` calls, from a thread with no
    event loop (as a script or a WSGI view calls it)."""
    from work import SyncQueue

    with SyncQueue(url, **options) as queue:
        jobs = make_jobs(n, queue="sync-one-by-one")
        queue.enqueue(make_jobs(1, queue="warmup")[0])
        started, cpu = time.perf_counter(), cpu_seconds()
        for job in jobs:
            queue.enqueue(job)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return n / seconds, cpu / n * 1e6


async def measure_enqueue(
    url: str, options: dict[str, Any], jobs: int, *, profile: bool = False
) -> tuple[dict[str, float], str]:
    """Enqueue figures through ``Queue`` and ``SyncQueue``: jobs/s one by one and the
    producer's CPU µs per job, jobs/s with enqueue_many; leaves ``jobs`` queued jobs from the
    enqueue_many part for the processing measurement. With ``profile``, also the cProfile of
    the ``Queue.enqueue`` loop (top 15 by own time)."""
    from work import Queue
    from work.stores import open_store

    text = ""
    async with open_store(url, **options) as store:
        queue = Queue(store)
        one = make_jobs(ONE_BY_ONE, queue="one-by-one")
        await queue.enqueue(make_jobs(1, queue="warmup")[0])
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        started, cpu = time.perf_counter(), cpu_seconds()
        for job in one:
            await queue.enqueue(job)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        if profiler is not None:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            text = out.getvalue()
        many = make_jobs(jobs)
        started = time.perf_counter()
        for i in range(0, len(many), BATCH):
            await queue.enqueue_many(many[i : i + BATCH])
        many_rate = len(many) / (time.perf_counter() - started)
    sync_rate, sync_cpu = await anyio.to_thread.run_sync(sync_enqueue, url, options, ONE_BY_ONE)
    figures = {
        "enqueue one": len(one) / seconds,
        "producer CPU/job": cpu / len(one) * 1e6,
        "enqueue_many": many_rate,
        "SyncQueue.enqueue": sync_rate,
        "SyncQueue CPU/job": sync_cpu,
    }
    return figures, text


def compile_like_an_install() -> None:
    """Write the bytecode of this repository's ``work`` and ``bench`` packages, as pip does
    for a package it installs from a wheel.

    A deployed worker imports anywork from bytecode. Run from a checkout where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on this project's machines), the worker process would
    compile every module it imports, and its peak RSS would count the compiler's work (~2 MB at
    the first ``serve``). The third-party packages in the environment were compiled by pip.
    """
    repo = Path(__file__).resolve().parents[1]
    for package in ("work", "bench"):
        compileall.compile_dir(repo / package, quiet=1)


def _child_env() -> dict[str, str]:
    """The environment of a child process: this repository first on the import path."""
    repo = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{path}" if path else repo}


def run_child(
    args: list[str], *, profile: Path | None = None, timeout: float = 600
) -> dict[str, Any]:
    """Run this module as a child worker process and return the JSON it prints last."""
    if args[0] == "process" and profile is None:
        # The worker whose RSS is measured imports nothing but itself and the worker.
        cmd = [sys.executable, "-m", "bench._worker", *args[1:]]
    else:
        cmd = [sys.executable, "-m", "bench.stores", "--child", *args]
    if profile is not None:
        cmd += ["--profile-to", str(profile)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env=_child_env()
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def measure_pickup(url: str, options: dict[str, Any]) -> list[float]:
    """Latencies (ms) from enqueue into an idle worker process until the handler starts."""
    from work import Job, Queue
    from work.stores import open_store

    cmd = [sys.executable, "-m", "bench.stores", "--child", "pickup", url, json.dumps(options)]
    async with await anyio.open_process(cmd, stdin=None, stderr=None, env=_child_env()) as child:
        assert child.stdout is not None
        first = b""
        while not first.endswith(b"\n"):
            first += await child.stdout.receive()
        if first.strip() != b"ready":
            raise RuntimeError(f"the pickup worker did not start: {first!r}")
        samples: list[float] = []
        try:
            async with open_store(url, **options) as store:
                queue = Queue(store)
                for _ in range(PICKUP_SAMPLES):
                    await anyio.sleep(0.02)  # let the worker settle into waiting for work
                    sent = time.time()
                    record = await queue.enqueue(Job("stamp", queue="pickup"))
                    done = await queue.wait(record.id, timeout=10)
                    samples.append((float(done.result) - sent) * 1000)
        finally:
            child.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await child.wait()
    return samples


# --------------------------------------------------------------------------- child processes


async def child_pickup(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Serve the ``pickup`` queue until SIGTERM; the handler returns when it started."""
    from work import Job, Worker
    from work.stores import open_store

    worker = Worker()

    def stamp(job: Job) -> float:
        return time.time()

    async def stamp_async(job: Job) -> float:
        return stamp(job)

    worker.register("stamp", stamp_async)
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with open_store(url, **options) as store, anyio.create_task_group() as tg, worker:
            tg.start_soon(lambda: worker.serve(store, queues=("pickup",)))
            print("ready", flush=True)
            async for _ in signals:
                worker.stop()
                break
    return {}


# --------------------------------------------------------------------------- huey


def _huey_noop(i: int, pad: str) -> None:
    """huey's no-op task (its registry names it ``noop`` in producer and worker alike)."""


def huey_app(scheme: str, workdir: Path) -> tuple[Any, Any] | None:
    """huey on ``scheme`` with its defaults (SQLite: WAL, its default ``synchronous``,
    FULL), and its no-op task; None without huey or for a store it has no backend for here."""
    try:
        import huey  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    if scheme == "sqlite":
        app = huey.SqliteHuey("anywork-bench", filename=str(workdir / "huey.db"))
    elif scheme == "redis":
        app = huey.RedisHuey("anywork-bench", url=REDIS_URL)
    else:
        return None
    return app, app.task(name="noop")(_huey_noop)


async def measure_huey(scheme: str, workdir: Path, jobs: int) -> dict[str, float] | None:
    """huey's figures on ``scheme``: enqueue ``jobs`` no-op tasks one by one (jobs/s, producer
    CPU µs per job), then drain them in a worker process (jobs/s, worker CPU µs per job)."""
    made = huey_app(scheme, workdir)
    if made is None:
        return None
    app, noop = made
    app.flush()
    pad = "x" * 64
    started, cpu = time.perf_counter(), cpu_seconds()
    for i in range(jobs):
        noop(i, pad)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    drained = run_child(["huey", scheme, json.dumps({"workdir": str(workdir)}), str(jobs)])
    app.flush()
    return {
        "enqueue one": jobs / seconds,
        "producer CPU/job": cpu / jobs * 1e6,
        "processing": jobs / drained["seconds"],
        "worker CPU/job": drained["cpu"] / jobs * 1e6,
    }


def child_huey(scheme: str, workdir: Path, expect: int) -> dict[str, Any]:
    """Drain ``expect`` queued huey tasks with huey's worker loop (``dequeue``, ``execute``)."""
    made = huey_app(scheme, workdir)
    assert made is not None
    app, _ = made
    done = 0
    started, cpu = time.perf_counter(), cpu_seconds()
    while done < expect:
        task = app.dequeue()
        if task is None:
            continue
        app.execute(task)
        done += 1
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {"seconds": seconds, "cpu": cpu, "rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------- raw floors


async def sqlite_floor(workdir: Path, n: int, *, hop: bool = True) -> dict[str, float]:
    """SQLite with the stdlib driver, one connection, ``synchronous=NORMAL``: insert one per
    transaction, executemany per batch, and claim by ``UPDATE ... RETURNING`` then ack by
    ``UPDATE``, one job per transaction (the at-least-once shape: the claim is committed
    before the job runs); also the CPU µs per claimed and acked job.

    With ``hop`` each transaction is one ``anyio.to_thread.run_sync`` call from the event loop:
    the embedded store's round trip, which any SQLite store on an event loop pays. Without it,
    the loops run in the calling thread (the driver's own ceiling, printed as a note).
    """
    path = workdir / "floor.db"
    remove_sqlite(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, "
        "state TEXT NOT NULL DEFAULT 'queued', owner TEXT, lease REAL)"
    )
    conn.execute("CREATE INDEX jobs_ready ON jobs (state, id)")
    claim_sql = (
        "UPDATE jobs SET state = 'running', owner = 'w', lease = ? WHERE id = "
        "(SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1) RETURNING id, payload"
    )

    def transaction(sql: str, params: Any = (), many: bool = False) -> Any:
        conn.execute("BEGIN IMMEDIATE")
        if many:
            conn.executemany(sql, params)
            row = None
        else:
            row = conn.execute(sql, params).fetchone()
        conn.execute("COMMIT")
        return row

    async def call(sql: str, params: Any = (), many: bool = False) -> Any:
        if hop:
            return await anyio.to_thread.run_sync(transaction, sql, params, many)
        return transaction(sql, params, many)

    started = time.perf_counter()
    for _ in range(ONE_BY_ONE):
        await call("INSERT INTO jobs (payload, state) VALUES (?, 'warmup')", (PAYLOAD,))
    one = ONE_BY_ONE / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(0, n, BATCH):
        await call("INSERT INTO jobs (payload) VALUES (?)", [(PAYLOAD,)] * BATCH, many=True)
    many = n / (time.perf_counter() - started)
    ack_sql = "UPDATE jobs SET state = 'done', owner = NULL, lease = NULL WHERE id = ?"
    started, cpu = time.perf_counter(), cpu_seconds()
    claimed = 0
    while (row := await call(claim_sql, (time.time() + 30,))) is not None:
        json.loads(row[1])
        await call(ack_sql, (row[0],))
        claimed += 1
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    conn.close()
    return {
        "enqueue one": one,
        "enqueue_many": many,
        "processing": claimed / seconds,
        "cpu/job": cpu / claimed * 1e6,
    }


async def postgres_floor(n: int) -> dict[str, float]:
    """asyncpg: one INSERT per round trip, one INSERT ... unnest per batch, and a
    ``FOR UPDATE SKIP LOCKED`` claim of one job per statement, then its ack (an UPDATE)."""
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute("DROP TABLE IF EXISTS anywork_bench_floor")
        await conn.execute(
            "CREATE TABLE anywork_bench_floor (id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
            " state text NOT NULL DEFAULT 'queued', owner text, lease timestamptz)"
        )
        await conn.execute("CREATE INDEX ON anywork_bench_floor (state, id)")
        insert = "INSERT INTO anywork_bench_floor (payload, state) VALUES ($1::jsonb, 'warmup')"
        started = time.perf_counter()
        for _ in range(ONE_BY_ONE):
            await conn.execute(insert, PAYLOAD)
        one = ONE_BY_ONE / (time.perf_counter() - started)
        batch = "INSERT INTO anywork_bench_floor (payload) SELECT unnest($1::jsonb[])"
        started = time.perf_counter()
        for _ in range(0, n, BATCH):
            await conn.execute(batch, [PAYLOAD] * BATCH)
        many = n / (time.perf_counter() - started)
        claim = (
            "UPDATE anywork_bench_floor SET state = 'running', owner = 'w', "
            "lease = now() + interval '30 seconds' WHERE id = (SELECT id FROM "
            "anywork_bench_floor WHERE state = 'queued' ORDER BY id "
            "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id, payload"
        )
        ack = (
            "UPDATE anywork_bench_floor SET state = 'done', owner = NULL, lease = NULL "
            "WHERE id = $1"
        )
        started, cpu = time.perf_counter(), cpu_seconds()
        claimed = 0
        while (row := await conn.fetchrow(claim)) is not None:
            json.loads(row[1])
            await conn.execute(ack, row[0])
            claimed += 1
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        await conn.execute("DROP TABLE anywork_bench_floor")
    finally:
        await conn.close()
    return {
        "enqueue one": one,
        "enqueue_many": many,
        "processing": claimed / seconds,
        "cpu/job": cpu / claimed * 1e6,
    }


async def redis_floor(n: int) -> dict[str, float]:
    """redis-py asyncio: one LPUSH per round trip, pipelined LPUSH per batch, and per job one
    ``BLMOVE`` into a processing list (the claim) and one ``LREM`` from it (the ack)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    key = "anywork_bench_floor"
    try:
        await client.delete(key, f"{key}:warmup", f"{key}:processing")
        started = time.perf_counter()
        for _ in range(ONE_BY_ONE):
            await client.lpush(f"{key}:warmup", PAYLOAD)
        one = ONE_BY_ONE / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(0, n, BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(BATCH):
                    pipe.lpush(key, PAYLOAD)
                await pipe.execute()
        many = n / (time.perf_counter() - started)
        started, cpu = time.perf_counter(), cpu_seconds()
        claimed = 0
        while claimed < n:
            item = await client.blmove(key, f"{key}:processing", 1, "RIGHT", "LEFT")
            if item is None:
                break
            json.loads(item)
            await client.lrem(f"{key}:processing", 1, item)  # type: ignore[arg-type]  # bytes work
            claimed += 1
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        await client.delete(key, f"{key}:warmup", f"{key}:processing")
    finally:
        await client.aclose()
    return {
        "enqueue one": one,
        "enqueue_many": many,
        "processing": claimed / seconds,
        "cpu/job": cpu / claimed * 1e6,
    }


# --------------------------------------------------------------------------- driver


async def best_of(
    runs: int, measure: Callable[[], Awaitable[dict[str, float]]]
) -> dict[str, float]:
    """The best of ``runs`` measurements, figure by figure (a floor is a best case; on a
    small shared machine a single run can be far off): the highest rate, the lowest CPU."""
    results = [await measure() for _ in range(runs)]
    return {
        name: (min if name.startswith("cpu") else max)(r[name] for r in results)
        for name in results[0]
    }


async def bench_store(
    scheme: str, workdir: Path, jobs: int, profile: bool
) -> tuple[list[Row], str]:
    """All figures of one store, and notes on it (the worker's and the producer's profiles
    with ``profile``)."""
    url, options = store_url(scheme, workdir)
    await reset_store(scheme, workdir)
    enq, enqueue_profile = await measure_enqueue(url, options, jobs, profile=profile)
    prof_path = workdir / f"{scheme}.prof" if profile else None
    processed = run_child(["process", url, json.dumps(options), str(jobs)], profile=prof_path)
    await reset_store(scheme, workdir)
    pickups = await measure_pickup(url, options)
    await reset_store(scheme, workdir)
    huey = await measure_huey(scheme, workdir, jobs)
    notes = ""
    if scheme == "sqlite":
        floor = await best_of(FLOOR_RUNS, lambda: sqlite_floor(workdir, jobs))
        raw = await best_of(FLOOR_RUNS, lambda: sqlite_floor(workdir, jobs, hop=False))
        notes = "sqlite floor without the thread hop (the driver alone): " + ", ".join(
            f"{name} {value:,.0f} {'µs' if name.startswith('cpu') else 'jobs/s'}"
            for name, value in raw.items()
        )
    elif scheme == "postgresql":
        floor = await best_of(FLOOR_RUNS, lambda: postgres_floor(jobs))
    else:
        floor = await best_of(FLOOR_RUNS, lambda: redis_floor(jobs))
    pickups.sort()
    drain = jobs / processed["seconds"]
    worker_cpu = processed["cpu"] / jobs * 1e6
    rows = [
        Row(scheme, "enqueue one", enq["enqueue one"], "jobs/s", floor["enqueue one"]),
        Row(
            scheme,
            "SyncQueue.enqueue",
            enq["SyncQueue.enqueue"],
            "jobs/s",
            enq["enqueue one"],
            "Queue.enqueue",
        ),
        Row(scheme, "enqueue_many", enq["enqueue_many"], "jobs/s", floor["enqueue_many"]),
        Row(scheme, "processing", drain, "jobs/s", floor["processing"]),
        Row(scheme, "worker CPU/job", worker_cpu, "µs", floor["cpu/job"]),
    ]
    if huey is not None:
        rows += [
            Row(scheme, "processing vs huey", drain, "jobs/s", huey["processing"], "huey"),
            Row(scheme, "worker CPU vs huey", worker_cpu, "µs", huey["worker CPU/job"], "huey"),
            Row(
                scheme,
                "producer CPU/job",
                enq["producer CPU/job"],
                "µs",
                huey["producer CPU/job"],
                "huey",
            ),
            Row(
                scheme, "enqueue vs huey", enq["enqueue one"], "jobs/s", huey["enqueue one"], "huey"
            ),
        ]
    else:
        rows.append(Row(scheme, "producer CPU/job", enq["producer CPU/job"], "µs"))
    rows += [
        Row(scheme, "SyncQueue CPU/job", enq["SyncQueue CPU/job"], "µs"),
        Row(scheme, "pickup p50", statistics.median(pickups), "ms"),
        Row(scheme, "pickup p99", pickups[int(len(pickups) * 0.99) - 1], "ms"),
        Row(scheme, "worker RSS", processed["rss_mb"], "MB"),
    ]
    text = notes
    if prof_path is not None:
        out = io.StringIO()
        pstats.Stats(str(prof_path), stream=out).sort_stats("tottime").print_stats(20)
        text += f"\n--- {scheme}: worker profile (top 20 by own time)\n{out.getvalue()}"
        text += f"\n--- {scheme}: Queue.enqueue profile (top 15 by own time)\n{enqueue_profile}"
    return rows, text


async def run_all(stores: Sequence[str], jobs: int, profile: bool) -> list[Row]:
    """Benchmark every store in ``stores``; print the table (and profiles); return the rows."""
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="anywork-bench-") as tmp:
        for scheme in stores:
            print(f"benchmarking {scheme} ...", file=sys.stderr, flush=True)
            store_rows, store_notes = await bench_store(scheme, Path(tmp), jobs, profile)
            rows += store_rows
            if store_notes:
                notes.append(store_notes)
    print(format_table(rows))
    for note in notes:
        print(note)
    return rows


# --------------------------------------------------------------------------- history


HISTORY_CLAIM_JOBS = 2000
HISTORY_CLAIM_BATCH = 10
HISTORY_IDLE_SECONDS = 5.0
# Idle CPU is a small, noisy figure: within 20% of the empty store's, or within this many
# percentage points of a core, is a pass.
HISTORY_IDLE_SLACK = 1.0


async def fill_finished(scheme: str, url: str, options: dict[str, Any], start: int, n: int) -> None:
    """Add finished (SUCCEEDED, an hour old) jobs ``start`` .. ``start + n - 1`` in bulk."""
    from work.stores import open_store

    if n <= 0:
        return
    async with open_store(url, **options):
        pass  # create the schema
    hour_ago = time.time() - 3600
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, timeout=60)
        try:
            with conn:
                conn.execute(
                    "WITH RECURSIVE c(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM c WHERE i < ?)"
                    " INSERT INTO anywork_jobs (id, handler, queue, args, headers, priority,"
                    " state, status, attempts, max_attempts, result, enqueued_at, due_at,"
                    " started_at, finished_at)"
                    " SELECT 'done-' || i, 'noop', 'default', '{\"i\": 0}', '{}', 0,"
                    " 'succeeded', 200, 1, 1, 'null', ?, ?, ?, ? FROM c",
                    (start, start + n - 1, hour_ago, hour_ago, hour_ago, hour_ago),
                )
            conn.execute("ANALYZE")
        finally:
            conn.close()
    elif scheme == "postgresql":
        import asyncpg

        schema = options["schema"]
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(
                f"""INSERT INTO {schema}.jobs (id, handler, queue, args, state, status,
                        attempts, enqueued_at, started_at, finished_at)
                    SELECT 'done-' || g, 'noop', 'default', '{{"i": 0}}', 'succeeded', 200, 1,
                        now() - interval '1 hour', now() - interval '1 hour',
                        now() - interval '1 hour'
                    FROM generate_series($1::int, $2::int) AS g""",
                start,
                start + n - 1,
            )
            await conn.execute(f"VACUUM ANALYZE {schema}.jobs")
        finally:
            await conn.close()
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        p = options["prefix"]
        us = str(int(hour_ago * 1_000_000))
        spec = json.dumps({"handler": "noop", "headers": {}})
        try:
            first = int(await client.incrby(f"{p}:seq", n)) - n + 1
            for chunk in range(0, n, 5000):
                pipe = client.pipeline(transaction=False)
                for k in range(chunk, min(chunk + 5000, n)):
                    id = f"done-{start + k}"
                    seq = first + k
                    pipe.hset(
                        f"{p}:job:{id}",
                        mapping={
                            "id": id,
                            "queue": "default",
                            "state": "succeeded",
                            "priority": "0",
                            "enqueued_at": us,
                            "max_attempts": "1",
                            "args": '{"i": 0}',
                            "spec": spec,
                            "seq": str(seq),
                            "status": "200",
                            "attempts": "1",
                            "deferrals": "0",
                            "started_at": us,
                            "finished_at": us,
                            "result": "null",
                        },
                    )
                    pipe.zadd(f"{p}:all", {id: seq})
                    pipe.zadd(f"{p}:done:default", {id: int(us)})
                pipe.hincrby(f"{p}:stats", "default\0succeeded", min(5000, n - chunk))
                await pipe.execute()
        finally:
            await client.aclose()


async def measure_claims(url: str, options: dict[str, Any]) -> float:
    """Claim-and-complete throughput (jobs/s) over HISTORY_CLAIM_JOBS fresh jobs, claimed
    HISTORY_CLAIM_BATCH at a time, in this process."""
    from work import Queue, Status
    from work.stores import JobState, Outcome, open_store

    async with open_store(url, **options) as store:
        await Queue(store).enqueue_many(make_jobs(HISTORY_CLAIM_JOBS, queue="default"))
        done = 0
        started = time.perf_counter()
        while done < HISTORY_CLAIM_JOBS:
            claimed = await store.claim(
                ["default"], limit=HISTORY_CLAIM_BATCH, lease=30, owner="bench"
            )
            if not claimed:
                raise RuntimeError("the store ran out of ready jobs early")
            await store.complete(
                "bench",
                [
                    Outcome(id=c.record.id, state=JobState.SUCCEEDED, status=Status.SUCCESS)
                    for c in claimed
                ],
            )
            done += len(claimed)
        return done / (time.perf_counter() - started)


async def child_idle(url: str, options: dict[str, Any], secs: float) -> dict[str, Any]:
    """Serve an empty queue for ``secs`` seconds (after a second to settle); return the share
    of one core this process used meanwhile."""
    from work import Worker
    from work.stores import open_store

    worker = Worker()
    worker.register("noop", lambda job: None)
    async with open_store(url, **options) as store, anyio.create_task_group() as tg, worker:
        tg.start_soon(lambda: worker.serve(store))
        await anyio.sleep(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter()
        await anyio.sleep(secs)
        after = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - wall
        worker.stop()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu": cpu / wall}


HISTORY_ROUNDS = 3


def history_store(scheme: str, workdir: Path, size: int) -> tuple[str, dict[str, Any]]:
    """A store of its own for the history of ``size`` finished jobs."""
    if scheme == "sqlite":
        return f"sqlite:///{workdir / f'history-{size}.db'}", {}
    if scheme == "postgresql":
        return PG_URL, {"schema": f"{PG_SCHEMA}_h{size}"}
    return REDIS_URL, {"prefix": f"{REDIS_PREFIX}-h{size}"}


async def drop_history(scheme: str, url: str, options: dict[str, Any]) -> None:
    """Remove a history store."""
    if scheme == "sqlite":
        remove_sqlite(Path(url.removeprefix("sqlite:///")))
        return
    from work.stores import open_store

    store = open_store(url, **options)
    await store.drop()  # type: ignore[attr-defined]


async def run_history(stores: Sequence[str], sizes: Sequence[int]) -> list[list[str]]:
    """The history benchmark: per store and size of history, claim throughput and idle
    worker CPU against the empty store's; prints the table and returns its rows.

    Each size has a store of its own, filled first; the measurements then alternate between
    the sizes, HISTORY_ROUNDS times, keeping each size's best: on a shared machine, noise
    then hits every size alike instead of whichever ran in a busy moment.
    """
    rows: list[list[str]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="anywork-bench-") as tmp:
        workdir = Path(tmp)
        for scheme in stores:
            places = {size: history_store(scheme, workdir, size) for size in sizes}
            filled: dict[int, float] = {}
            for size, (url, options) in places.items():
                print(f"history: {scheme}: {size:,} finished jobs ...", file=sys.stderr)
                await drop_history(scheme, url, options)
                started = time.perf_counter()
                await fill_finished(scheme, url, options, 0, size)
                filled[size] = time.perf_counter() - started
            claims = dict.fromkeys(sizes, 0.0)
            cpus = {size: float("inf") for size in sizes}
            try:
                for _ in range(HISTORY_ROUNDS):
                    for size, (url, options) in places.items():
                        claims[size] = max(claims[size], await measure_claims(url, options))
                        args = ["idle", url, json.dumps(options), str(HISTORY_IDLE_SECONDS)]
                        cpus[size] = min(cpus[size], float(run_child(args)["cpu"]))
            finally:
                for url, options in places.values():
                    await drop_history(scheme, url, options)
            base_claim, base_cpu = claims[sizes[0]], cpus[sizes[0]]
            for size in sizes:
                claim, cpu = claims[size], cpus[size]
                claim_ratio = claim / base_claim
                cpu_ratio = cpu / base_cpu if base_cpu else float("nan")
                passed = claim_ratio >= 0.8 and (
                    cpu <= base_cpu * 1.2 or (cpu - base_cpu) * 100 <= HISTORY_IDLE_SLACK
                )
                if size == sizes[-1]:
                    ok = ok and passed
                rows.append(
                    [
                        scheme,
                        f"{size:,}",
                        f"{claim:,.0f} jobs/s",
                        f"{1000 * HISTORY_CLAIM_BATCH / claim:.2f} ms",
                        f"{claim_ratio:.2f}x",
                        f"{cpu * 100:.1f}%",
                        f"{cpu_ratio:.2f}x",
                        f"{filled[size]:.0f} s",
                        "PASS" if passed else "MISS",
                    ]
                )
    headers = [
        "store",
        "finished jobs",
        "claim+complete",
        f"per claim of {HISTORY_CLAIM_BATCH}",
        "vs empty",
        "idle worker CPU",
        "vs empty",
        "fill time",
        "",
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(items, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print(
        f"best of {HISTORY_ROUNDS} alternating rounds; target: at the largest size, claims "
        f"within 20% of the empty store's rate and idle CPU within 20% (or "
        f"{HISTORY_IDLE_SLACK:g} point of a core) of its figure: " + ("PASS" if ok else "MISS")
    )
    return rows


BREAKDOWN_JOBS = 4000
BREAKDOWN_BATCH = 16  # serve's default concurrency: the size of a busy worker's batches


async def measure_breakdown(url: str, options: dict[str, Any]) -> dict[str, float]:
    """CPU µs per job of each store call on the per-job path, in this process (every thread
    counted, so SQLite's work in anyio's worker threads is included): ``Queue``'s checks
    alone (building the record), ``Store.add`` of one record, ``claim`` then ``complete`` of
    batches of BREAKDOWN_BATCH, ``complete_and_claim`` of the same batches where the store
    has it, and one ``renew`` of a batch's leases."""
    from work import Queue, Status
    from work.stores import JobState, Outcome, open_store

    def outcomes(claimed: Sequence[Any]) -> list[Any]:
        return [
            Outcome(id=c.record.id, state=JobState.SUCCEEDED, status=Status.SUCCESS)
            for c in claimed
        ]

    out: dict[str, float] = {}
    async with open_store(url, **options) as store:
        queue = Queue(store)
        jobs = make_jobs(BREAKDOWN_JOBS, queue="breakdown")
        now = datetime.now(UTC)
        cpu = cpu_seconds()
        records = [
            queue._record(
                job, now=now, delay=None, at=None, priority=0, retry=None, unique_key=None
            )
            for job in jobs
        ]
        out["Queue checks (record)"] = (cpu_seconds() - cpu) / len(jobs) * 1e6
        cpu = cpu_seconds()
        for rec in records[:ONE_BY_ONE]:
            await store.add([rec])
        out["Store.add, one job"] = (cpu_seconds() - cpu) / ONE_BY_ONE * 1e6
        await store.add(records[ONE_BY_ONE:])
        half = BREAKDOWN_JOBS // 2
        done, renewals = 0, 0
        renew_cpu = 0.0
        cpu = cpu_seconds()
        while done < half:
            claimed = await store.claim(
                ["breakdown"], limit=BREAKDOWN_BATCH, lease=30, owner="bench"
            )
            if renewals < 50:
                before = cpu_seconds()
                await store.renew("bench", [c.record.id for c in claimed], lease=30)
                renew_cpu += cpu_seconds() - before
                renewals += 1
            await store.complete("bench", outcomes(claimed))
            done += len(claimed)
        out["claim + complete"] = (cpu_seconds() - cpu - renew_cpu) / done * 1e6
        out[f"renew of {BREAKDOWN_BATCH} leases, per call"] = renew_cpu / renewals * 1e6
        combined = getattr(store, "complete_and_claim", None)
        if combined is not None:
            claimed = await store.claim(
                ["breakdown"], limit=BREAKDOWN_BATCH, lease=30, owner="bench"
            )
            done = 0
            cpu = cpu_seconds()
            while claimed:
                _, claimed = await combined(
                    "bench", outcomes(claimed), ["breakdown"], limit=BREAKDOWN_BATCH, lease=30
                )
                done += len(claimed)
            out["complete_and_claim"] = (cpu_seconds() - cpu) / max(done, 1) * 1e6
    return out


async def run_breakdown(stores: Sequence[str]) -> None:
    """Print :func:`measure_breakdown` for each store."""
    with tempfile.TemporaryDirectory(prefix="anywork-bench-") as tmp:
        for scheme in stores:
            url, options = store_url(scheme, Path(tmp))
            await reset_store(scheme, Path(tmp))
            figures = await measure_breakdown(url, options)
            await reset_store(scheme, Path(tmp))
            for name, value in figures.items():
                print(f"| {scheme} | {name} | {value:,.1f} µs |")


# --------------------------------------------------------------------------- pgbouncer


async def run_pgbouncer(jobs: int) -> list[list[str]]:
    """PostgreSQL through PgBouncer (transaction pooling, ``?listen=false``) next to direct
    PostgreSQL, in the same run; print the table and return its rows (the verdict last).

    The two alternate, ``PGBOUNCER_ROUNDS`` times, and each figure is the best of its rounds:
    on a small shared machine the load drifts between two back-to-back measurements. "enqueue
    one, interleaved" (:func:`measure_enqueue_interleaved`) measures the two side by side,
    blocks of jobs taking turns, which the drift moves far less."""
    global PICKUP_SAMPLES
    modes = (("direct", PG_URL), ("pgbouncer", PGBOUNCER_URL))
    figures: dict[str, dict[str, float]] = {name: {} for name, _ in modes}
    options = {"schema": f"{PG_SCHEMA}_pgb"}
    for round in range(PGBOUNCER_ROUNDS):
        for name, url in modes:
            print(f"postgresql ({name}), round {round + 1} ...", file=sys.stderr, flush=True)
            await _drop_schema(options["schema"])
            enqueued, _ = await measure_enqueue(url, options, jobs)
            processed = run_child(["process", url, json.dumps(options), str(jobs)])
            best = figures[name]
            for figure in ("enqueue one", "SyncQueue.enqueue", "enqueue_many"):
                best[figure] = max(best.get(figure, 0.0), enqueued[figure])
            best["drain"] = max(best.get("drain", 0.0), jobs / processed["seconds"])
    for name, url in modes:
        await _drop_schema(options["schema"])
        saved, PICKUP_SAMPLES = PICKUP_SAMPLES, PGBOUNCER_PICKUPS
        try:
            pickups = sorted(await measure_pickup(url, options))
        finally:
            PICKUP_SAMPLES = saved
        figures[name]["pickup p50"] = statistics.median(pickups)
    await _drop_schema(options["schema"])
    interleaved = await measure_enqueue_interleaved(dict(modes), options)
    await _drop_schema(options["schema"])
    for name, rate in interleaved.items():
        figures[name]["enqueue one, interleaved"] = rate
    rows = []
    for figure, unit in (
        ("enqueue one", "jobs/s"),
        ("enqueue one, interleaved", "jobs/s"),
        ("SyncQueue.enqueue", "jobs/s"),
        ("enqueue_many", "jobs/s"),
        ("drain", "jobs/s"),
        ("pickup p50", "ms"),
    ):
        direct, pooled = figures["direct"][figure], figures["pgbouncer"][figure]
        if unit == "ms":  # no target: polling every poll_interval (0.5 s) sets it
            rows.append([figure, f"{direct:,.1f} {unit}", f"{pooled:,.1f} {unit}", "", "", ""])
            continue
        ratio = pooled / direct
        verdict = "PASS" if ratio >= PGBOUNCER_TARGET else "MISS"
        target = f">= {PGBOUNCER_TARGET:g}x"
        cells = [f"{direct:,.0f} {unit}", f"{pooled:,.0f} {unit}", f"{ratio:.2f}x"]
        rows.append([figure, *cells, target, verdict])
    header = ["figure", "direct", "through PgBouncer", "ratio", "target", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return rows


async def measure_enqueue_interleaved(
    urls: dict[str, str], options: dict[str, Any]
) -> dict[str, float]:
    """``Queue.enqueue`` one by one through each of ``urls`` (one store each, all open at
    once), in blocks of ``INTERLEAVED_BLOCK`` jobs taking turns, ``INTERLEAVED_BLOCKS`` blocks
    each: jobs/s from the median block. Blocks a fraction of a second apart see the same load
    on a shared machine, where whole rounds minutes apart do not."""
    from work import Queue
    from work.stores import open_store

    async with contextlib.AsyncExitStack() as stack:
        queues = {}
        for name, url in urls.items():
            store = await stack.enter_async_context(open_store(url, **options))
            queues[name] = Queue(store)
        jobs = iter(make_jobs(len(urls) * (INTERLEAVED_BLOCKS + 1) * INTERLEAVED_BLOCK, "one"))
        seconds: dict[str, list[float]] = {name: [] for name in urls}
        for block in range(INTERLEAVED_BLOCKS + 1):  # the first block of each warms up
            for name, queue in queues.items():
                started = time.perf_counter()
                for _ in range(INTERLEAVED_BLOCK):
                    await queue.enqueue(next(jobs))
                if block:
                    seconds[name].append(time.perf_counter() - started)
    return {name: INTERLEAVED_BLOCK / statistics.median(s) for name, s in seconds.items()}


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _child_main(argv: list[str]) -> int:
    """Entry of a child worker process: ``process URL OPTIONS N`` or ``pickup URL OPTIONS``."""
    profile_to: str | None = None
    if "--profile-to" in argv:
        i = argv.index("--profile-to")
        profile_to = argv[i + 1]
        del argv[i : i + 2]
    mode, url, options_json, *rest = argv
    options = json.loads(options_json)
    if mode == "huey":
        print(json.dumps(child_huey(url, Path(options["workdir"]), int(rest[0]))), flush=True)
        return 0

    async def body() -> dict[str, Any]:
        if mode == "process":
            return await child_process(url, options, int(rest[0]))
        if mode == "idle":
            return await child_idle(url, options, float(rest[0]))
        return await child_pickup(url, options)

    if profile_to is not None:
        profiler = cProfile.Profile()
        result = profiler.runcall(anyio.run, body)
        profiler.dump_stats(profile_to)
    else:
        result = anyio.run(body)
    print(json.dumps(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks (or, with ``--child``, one worker process of them).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code: 1 with ``--strict`` when a figure misses its target, else 0.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        return _child_main(args[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.stores", description=__doc__)
    parser.add_argument("--stores", default="sqlite,postgresql,redis")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to process (10,000)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the worker process and the producer"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a figure misses its target"
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="measure claims and idle CPU with 0 and 100,000 finished jobs instead",
    )
    parser.add_argument(
        "--million", action="store_true", help="with --history: also with 1,000,000"
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="compare the Redis Cluster of .ci/redis-cluster with one server instead",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="CPU µs per job of each store call on the per-job path, in process, instead",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="PostgreSQL through PgBouncer (127.0.0.1:6432) next to direct, instead",
    )
    ns = parser.parse_args(args)
    if ns.redis_cluster:
        from bench.redis_cluster import main as cluster_main

        return cluster_main(ns.jobs)
    if ns.breakdown:
        anyio.run(run_breakdown, [s for s in ns.stores.split(",") if s])
        return 0
    if ns.pgbouncer:
        table = anyio.run(run_pgbouncer, ns.jobs)
        return 0 if all(row[-1] != "MISS" for row in table) else 1
    if ns.history:
        sizes = [0, 100_000, *([1_000_000] if ns.million else [])]
        history = anyio.run(run_history, [s for s in ns.stores.split(",") if s], sizes)
        return 0 if all(row[-1] == "PASS" for row in history if row[1] == f"{sizes[-1]:,}") else 1
    compile_like_an_install()
    rows = anyio.run(run_all, [s for s in ns.stores.split(",") if s], ns.jobs, ns.profile)
    return 1 if ns.strict and any(r.verdict == "MISS" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
