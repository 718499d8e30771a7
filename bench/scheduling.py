"""Scheduler benchmarks: burst throughput, steady lateness and memory, per store.

Run ``python -m bench.scheduling [--stores sqlite,postgresql,redis] [--schedules N]
[--steady-seconds S] [--rss-schedules N]``.

For every store it measures, with real ``anywork scheduler`` processes (``--poll 1``):

- burst: ``--schedules`` (10,000) schedules all due in the same second; the time from that
  second until every execution is enqueued, with 1 and with 3 schedulers (the jobs are
  counted, so each fire also proves to happen once); and the ratio 3 / 1;
- steady: 100 ``rate(1 second)`` schedules whose anchors are spread over the second (100 fires
  a second, evenly), one scheduler, for ``--steady-seconds``; fire lateness (``enqueued_at -
  scheduled_for`` of each execution) p50 / p99;
- memory: the scheduler process's peak RSS (``VmHWM``) with ``--rss-schedules`` (100,000)
  stored schedules, one of them due every second, over 3 s.

With ``--apscheduler`` (and APScheduler 4 installed), the PostgreSQL burst is also run by
APScheduler 4's own scheduler and SQLAlchemy data store on the same server, and the ratio
printed.

Targets (issue 9): burst within 2 s on PostgreSQL and Redis and 5 s on SQLite; lateness p99
<= 1 s + poll; RSS <= 60 MB. The machine is shared: read the figures as ratios and orders of
magnitude. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from work import Job, Queue, Schedule
from work.stores import Store, open_store
from work.stores._base import ScheduleRow

__all__ = ["main"]

Process = subprocess.Popen[bytes]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/13"
POLL = 1.0
TARGETS = {"sqlite": 5.0, "postgresql": 2.0, "redis": 2.0}
RSS_TARGET_MB = 60.0


def _namespace(kind: str, folder: Path, tag: str) -> tuple[str, dict[str, Any]]:
    if kind == "sqlite":
        return f"sqlite:///{folder / f'{tag}.db'}", {}
    if kind == "postgresql":
        return PG_URL, {"schema": f"anywork_bench_{tag}"}
    return REDIS_URL, {"prefix": f"anywork-bench-{tag}"}


async def _drop(url: str, options: dict[str, Any]) -> None:
    store = open_store(url, **options)
    drop = getattr(store, "drop", None)
    if drop is not None:
        await drop()


def _row(schedule: Schedule, next_fire: datetime, anchor: datetime) -> ScheduleRow:
    return ScheduleRow(
        id=schedule.id,
        spec=schedule.to_spec(),
        next_fire_at=next_fire,
        anchor=anchor,
        created_at=anchor,
        updated_at=anchor,
        version=1,
    )


async def _save_all(store: Store, rows: list[ScheduleRow]) -> None:
    """Store rows, 32 at a time (one connection serialises them on SQLite anyway)."""
    limiter = anyio.Semaphore(32)

    async def save(row: ScheduleRow) -> None:
        async with limiter:
            await store.save_schedule(row, expected=None)

    async with anyio.create_task_group() as tg:
        for row in rows:
            tg.start_soon(save, row)


@contextmanager
def _schedulers(
    url: str, options: dict[str, Any], n: int
) -> Iterator[list[subprocess.Popen[bytes]]]:
    cmd = [sys.executable, "-m", "work.cli", "scheduler", "--store", url, "--poll", str(POLL)]
    for key, value in options.items():
        cmd += ["--store-option", f"{key}={value}"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for _ in range(n)]
    try:
        for proc in procs:  # each reports once its store is open
            assert proc.stderr is not None
            proc.stderr.readline()
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=60)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _count(store: Store, queue: str) -> int:
    return sum((await Queue(store).stats()).get(queue, {}).values())


async def burst(kind: str, folder: Path, n: int, schedulers: int) -> dict[str, float]:
    """``n`` schedules due in one second; seconds until all are enqueued, and peak RSS."""
    url, options = _namespace(kind, folder, f"burst{schedulers}")
    await _drop(url, options)
    try:
        async with open_store(url, **options) as store:
            target = Job("noop", queue="burst")
            schedules = [Schedule(f"b/{i:06d}", "rate(1 hour)", target) for i in range(n)]
            # Due a whole second far enough ahead for the setup and the processes' start.
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
            anchor = due - timedelta(hours=1)
            started = time.monotonic()
            await _save_all(store, [_row(s, due, anchor) for s in schedules])
            setup = time.monotonic() - started
            with _schedulers(url, options, schedulers) as procs:
                await anyio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
                with anyio.fail_after(120):
                    # Polling the store is the point: the jobs appear from other processes.
                    while await _count(store, "burst") < n:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                elapsed = (datetime.now(UTC) - due).total_seconds()
                rss = max(_peak_rss_mb(p.pid) for p in procs)
            count = await _count(store, "burst")
        assert count == n, f"{count} executions for {n} fires"
        return {"seconds": elapsed, "rss_mb": rss, "setup_s": setup}
    finally:
        await _drop(url, options)


async def steady(kind: str, folder: Path, seconds: float) -> dict[str, float]:
    """100 fires a second, evenly spread; lateness p50 / p99 in ms."""
    url, options = _namespace(kind, folder, "steady")
    await _drop(url, options)
    try:
        async with open_store(url, **options) as store:
            base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
            rows = []
            for i in range(100):
                start = base + timedelta(milliseconds=10 * i)
                schedule = Schedule(
                    f"s/{i:03d}", "rate(1 second)", Job("noop", queue="steady"), start_at=start
                )
                rows.append(_row(schedule, start + timedelta(seconds=1), start))
            await _save_all(store, rows)
            with _schedulers(url, options, 1):
                await anyio.sleep((base - datetime.now(UTC)).total_seconds() + 1 + seconds)
            lateness: list[float] = []
            after: str | None = None
            while True:
                page = await Queue(store).list(queue="steady", limit=1000, after=after)
                lateness += [
                    (r.enqueued_at - r.scheduled_for).total_seconds() * 1000
                    for r in page
                    if r.enqueued_at is not None and r.scheduled_for is not None
                ]
                if len(page) < 1000:
                    break
                after = page[-1].id
        cuts = statistics.quantiles(lateness, n=100)
        return {"fires": len(lateness), "p50_ms": cuts[49], "p99_ms": cuts[98]}
    finally:
        await _drop(url, options)


async def memory(kind: str, folder: Path, n: int) -> dict[str, float]:
    """Peak RSS of one scheduler over 3 s with ``n`` stored schedules (one due each second)."""
    url, options = _namespace(kind, folder, "rss")
    await _drop(url, options)
    try:
        async with open_store(url, **options) as store:
            now = datetime.now(UTC).replace(microsecond=0)
            later = datetime(2030, 1, 1, tzinfo=UTC)
            target = Job("noop", queue="rss")
            rows = [
                _row(Schedule(f"m/{i:06d}", "rate(1 day)", target), later, now)
                for i in range(n - 1)
            ]
            every = Schedule("m/every-second", "rate(1 second)", target)
            rows.append(_row(every, now + timedelta(seconds=1), now))
            await _save_all(store, rows)
            with _schedulers(url, options, 1) as (proc,):
                await anyio.sleep(3)
                rss = _peak_rss_mb(proc.pid)
            fired = await _count(store, "rss")
        return {"rss_mb": rss, "fired": fired}
    finally:
        await _drop(url, options)


def aps_noop() -> None:
    """The task APScheduler's schedules run (they are only enqueued here)."""


async def apscheduler_burst(n: int) -> float | None:
    """APScheduler 4 on the same PostgreSQL: ``n`` date-triggered schedules due in one second,
    one scheduler (role ``scheduler``: it makes jobs, runs none); seconds from the due time
    until its data store holds ``n`` jobs. None when APScheduler 4 is not installed."""
    try:
        from apscheduler import AsyncScheduler, SchedulerRole  # type: ignore[import-not-found,unused-ignore]
        from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore  # type: ignore[import-not-found,unused-ignore]
        from apscheduler.triggers.date import DateTrigger  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    import asyncpg  # type: ignore[import-untyped]

    schema = "anywork_bench_aps"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        store_url = PG_URL.replace("postgresql://", "postgresql+asyncpg://")

        def data_store() -> Any:
            return SQLAlchemyDataStore(store_url, schema=schema)

        # A worker-role scheduler stores schedules without processing them.
        async with AsyncScheduler(data_store(), role=SchedulerRole.worker) as adder:
            far = datetime.now(UTC) + timedelta(days=1)
            started = time.monotonic()
            for i in range(200):
                await adder.add_schedule(aps_noop, DateTrigger(far), id=f"probe-{i}")
            per = (time.monotonic() - started) / 200
            for i in range(200):
                await adder.remove_schedule(f"probe-{i}")
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=per * n * 1.5 + 10)
            for i in range(n):
                await adder.add_schedule(aps_noop, DateTrigger(due), id=f"b-{i:06d}")
        async with AsyncScheduler(data_store(), role=SchedulerRole.scheduler) as scheduler:
            await scheduler.start_in_background()
            await anyio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
            with anyio.fail_after(300):
                # Polling the table is the point: APScheduler writes the jobs.
                while await conn.fetchval(f"SELECT count(*) FROM {schema}.jobs") < n:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            elapsed = (datetime.now(UTC) - due).total_seconds()
            await scheduler.stop()
        return elapsed
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


async def run(ns: argparse.Namespace) -> None:
    """Run every measurement on every store asked for and print one table."""
    folder = Path(tempfile.mkdtemp(prefix="anywork-bench-"))
    lines: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    for kind in ns.stores.split(","):
        one = await burst(kind, folder, ns.schedules, 1)
        if kind == "postgresql" and ns.apscheduler:
            aps = await apscheduler_burst(ns.schedules)
            if aps is None:
                report("postgresql APScheduler 4 is not installed: no comparison")
            else:
                report(
                    f"postgresql burst {ns.schedules} due, APScheduler 4 (1 scheduler, same "
                    f"server): {aps:.2f} s; anywork / APScheduler = {one['seconds'] / aps:.2f}"
                )
        three = await burst(kind, folder, ns.schedules, 3)
        target = TARGETS[kind]
        report(
            f"{kind:10} burst {ns.schedules} due: 1 scheduler {one['seconds']:.2f} s "
            f"[{_verdict(one['seconds'] <= target)} <= {target:g} s], 3 schedulers "
            f"{three['seconds']:.2f} s [{_verdict(three['seconds'] <= target)}], "
            f"3/1 = {three['seconds'] / one['seconds']:.2f}; scheduler peak RSS "
            f"{max(one['rss_mb'], three['rss_mb']):.0f} MB"
        )
        lat = await steady(kind, folder, ns.steady_seconds)
        limit = (1 + POLL) * 1000
        report(
            f"{kind:10} steady 100 fires/s ({lat['fires']:.0f} fires): lateness p50 "
            f"{lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms "
            f"[{_verdict(lat['p99_ms'] <= limit)} <= {limit:.0f} ms]"
        )
        if ns.rss_schedules:
            mem = await memory(kind, folder, ns.rss_schedules)
            report(
                f"{kind:10} {ns.rss_schedules} stored schedules: scheduler peak RSS "
                f"{mem['rss_mb']:.1f} MB [{_verdict(mem['rss_mb'] <= RSS_TARGET_MB)} <= "
                f"{RSS_TARGET_MB:g} MB], {mem['fired']:.0f} fires in 3 s"
            )
    print("\n".join(["", "summary:", *lines]))


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the benchmarks."""
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling", description=__doc__)
    parser.add_argument("--stores", default="sqlite,postgresql,redis")
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--rss-schedules", type=int, default=100_000)
    parser.add_argument(
        "--apscheduler",
        action="store_true",
        help="compare with APScheduler 4 on PostgreSQL (pip install --pre 'apscheduler>=4.0.0a6' "
        "'sqlalchemy[asyncio]')",
    )
    ns = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    anyio.run(run, ns)


if __name__ == "__main__":
    main()
