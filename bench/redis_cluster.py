"""Redis Cluster benchmark: one store on the cluster next to one Redis server, then several.

Run ``python -m bench.stores --redis-cluster [--jobs N]`` with the three-primary cluster of
``.ci/redis-cluster start`` on 127.0.0.1:7001-7003 and the Redis server on 127.0.0.1:6379.

- One queue: ``enqueue_many`` and the processing of ``--jobs`` no-op jobs by one worker
  process, on the cluster and on the single server in the same run, best of 3 each,
  alternating (target: the cluster at >= 0.8x the single server), and the idle pickup
  latency (p50 / p99) of each. A store's keys share one hash tag, so one primary serves one
  store: redis-py's cluster client sends each command straight to it (no redirection once
  it knows the slots).
- Spread: three stores (prefixes picked so that each lands on a different primary), each
  drained by its own worker process at the same time, against the same three stores on the
  single server: jobs/s summed over the stores, and the ratio.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence

import anyio
import anyio.to_thread

__all__ = ["main", "spread_prefixes"]

SINGLE_URL = "redis://127.0.0.1:6379/13"
CLUSTER_URL = "redis+cluster://127.0.0.1:7001"
PREFIX = "anywork-bench-cluster"
SPREAD = 3
RUNS = 3
TARGET = 0.8


def spread_prefixes(n: int, base: str = PREFIX) -> list[str]:
    """``n`` prefixes whose hash tags fall on different primaries of the cluster (by the
    slot ranges of ``CLUSTER SLOTS``), so that ``n`` stores use ``n`` nodes."""
    import redis
    from redis.crc import key_slot

    client = redis.Redis(host="127.0.0.1", port=7001)
    try:
        ranges = [(int(r[0]), int(r[1]), int(r[2][1])) for r in client.cluster("slots")]
    finally:
        client.close()

    def port_of(prefix: str) -> int:
        slot = key_slot(("{" + prefix + "}").encode())
        return next(port for low, high, port in ranges if low <= slot <= high)

    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < min(n, len({port for _, _, port in ranges})):
        prefix = f"{base}-{i}"
        chosen.setdefault(port_of(prefix), prefix)
        i += 1
    return list(chosen.values())


async def _drop(url: str, prefix: str) -> None:
    from work.stores.redis import RedisStore

    await RedisStore(url, prefix=prefix).drop()


async def _fill(url: str, prefix: str, jobs: int) -> float:
    """Enqueue ``jobs`` no-op jobs with ``enqueue_many``; jobs/s."""
    from bench.stores import BATCH, make_jobs
    from work import Queue
    from work.stores import open_store

    async with open_store(url, prefix=prefix) as store:
        queue = Queue(store)
        many = make_jobs(jobs)
        started = time.perf_counter()
        for i in range(0, len(many), BATCH):
            await queue.enqueue_many(many[i : i + BATCH])
        return len(many) / (time.perf_counter() - started)


async def _drain(url: str, prefixes: Sequence[str], jobs: int) -> float:
    """One worker process per prefix drains its ``jobs`` jobs, all at once; jobs/s summed
    over the processes (each timed from serving to its last result, as ``bench.stores``
    times one)."""
    from bench.stores import run_child

    rates: list[float] = []

    async def one(prefix: str) -> None:
        args = ["process", url, json.dumps({"prefix": prefix}), str(jobs)]
        result = await anyio.to_thread.run_sync(run_child, args)
        rates.append(jobs / float(result["seconds"]))

    async with anyio.create_task_group() as tg:
        for prefix in prefixes:
            tg.start_soon(one, prefix)
    return sum(rates)


async def _measure(url: str, prefixes: Sequence[str], jobs: int) -> tuple[float, float]:
    """(enqueue_many jobs/s of the first store, processing jobs/s over ``prefixes``)."""
    for prefix in prefixes:
        await _drop(url, prefix)
    rates = [await _fill(url, prefix, jobs) for prefix in prefixes]
    try:
        processed = await _drain(url, prefixes, jobs)
    finally:
        for prefix in prefixes:
            await _drop(url, prefix)
    return rates[0], processed


async def run(jobs: int) -> list[list[str]]:
    """Measure both parts; return the table's rows."""
    from bench.stores import measure_pickup

    rows: list[list[str]] = []
    one = [f"{PREFIX}-one"]
    # Best of RUNS, alternating, each figure on its own: on a small shared machine one run
    # can be far off (as bench.stores takes the best of its floors).
    singles, clusters = [], []
    for _ in range(RUNS):
        singles.append(await _measure(SINGLE_URL, one, jobs))
        clusters.append(await _measure(CLUSTER_URL, one, jobs))
    single = (max(r[0] for r in singles), max(r[1] for r in singles))
    cluster = (max(r[0] for r in clusters), max(r[1] for r in clusters))
    for name, a, b in (
        ("enqueue_many, 1 store", single[0], cluster[0]),
        ("processing, 1 store", single[1], cluster[1]),
    ):
        ratio = b / a
        rows.append(
            [name, f"{a:,.0f}", f"{b:,.0f}", f"{ratio:.2f}x", "PASS" if ratio >= TARGET else "MISS"]
        )
    pickups = []
    for url in (SINGLE_URL, CLUSTER_URL):
        await _drop(url, one[0])
        samples = sorted(await measure_pickup(url, {"prefix": one[0]}))
        await _drop(url, one[0])
        pickups.append((statistics.median(samples), samples[int(len(samples) * 0.99) - 1]))
    (a50, a99), (b50, b99) = pickups
    rows.append(["pickup p50 / p99 (ms)", f"{a50:.1f} / {a99:.1f}", f"{b50:.1f} / {b99:.1f}"])
    rows[-1] += [f"{b50 / a50:.2f}x", "-"]
    spread = spread_prefixes(SPREAD)
    per = max(jobs // len(spread), 1)
    single_spread = await _measure(SINGLE_URL, spread, per)
    cluster_spread = await _measure(CLUSTER_URL, spread, per)
    a, b = single_spread[1], cluster_spread[1]
    rows.append(
        [f"processing, {len(spread)} stores", f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}x", "-"]
    )
    return rows


def main(jobs: int) -> int:
    """Run the cluster benchmark and print its table.

    Args:
        jobs: jobs per measurement (split over the stores in the spread part).

    Returns:
        0 when the one-store figures meet their target, 1 otherwise.
    """
    rows = anyio.run(run, jobs)
    header = ["figure (jobs/s)", "single node", "cluster", "ratio", "target 0.8x"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0 if all(r[-1] != "MISS" for r in rows) else 1
