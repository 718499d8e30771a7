"""Job event latency: from a state change to a subscriber on another store object.

Run ``python -m bench.events [--stores memory,sqlite,postgresql,redis] [--samples N]``.

For each store, a producer adds jobs one at a time through one store object while a
subscriber listens through another (for SQLite, PostgreSQL and Redis that is another
connection, as another process would have; memory has only one object). The latency of one
sample runs from the moment ``enqueue`` returns (the change is committed) until the subscriber
holds the job's ENQUEUED event; a second figure runs from the call to ``enqueue`` (so it adds
the write's own round trip). It prints p50 / p95 / max in milliseconds. Only 127.0.0.1 is ever
contacted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from work import Job, JobEventKind, Queue
from work.stores import Store, open_store

__all__ = ["main", "measure"]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/13"


async def measure(make: Any, samples: int) -> tuple[list[float], list[float]]:
    """Latencies (seconds) of ``samples`` ENQUEUED events, from the commit and from the call,
    producer and subscriber each on a store from ``make()``."""
    producer: Store = make()
    subscriber: Store = make()
    out: list[float] = []
    whole: list[float] = []
    async with producer, subscriber:
        queue = Queue(producer)
        async with Queue(subscriber).events(kinds=[JobEventKind.ENQUEUED]) as events:
            for i in range(samples):
                called = time.perf_counter()
                record = await queue.enqueue(Job("noop", {"i": i}))
                committed = time.perf_counter()
                with anyio.fail_after(10):
                    async for event in events:
                        if event.job_id == record.id:
                            break
                received = time.perf_counter()
                out.append(received - committed)
                whole.append(received - called)
        drop = getattr(producer, "drop", None)
        if drop is not None:
            await drop()
    return out, whole


def _maker(kind: str, tmp: Path) -> Any:
    if kind == "memory":
        store = open_store("memory://")
        return lambda: store
    if kind == "sqlite":
        return lambda: open_store(f"sqlite:///{tmp / 'events.db'}")
    if kind == "postgresql":
        return lambda: open_store(PG_URL, schema="anywork_bench_events")
    return lambda: open_store(REDIS_URL, prefix="anywork-bench-events")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the event latency of each store."""
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--stores", default="memory,sqlite,postgresql,redis")
    parser.add_argument("--samples", type=int, default=200)
    ns = parser.parse_args(argv)
    print(f"{'store':<12}{'from':<8}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ns.stores.split(","):
            figures = anyio.run(measure, _maker(kind, Path(tmp)), ns.samples)
            for label, latencies in zip(("commit", "call"), figures, strict=True):
                ms = sorted(x * 1000 for x in latencies)
                p95 = ms[int(len(ms) * 0.95) - 1]
                print(
                    f"{kind:<12}{label:<8}{statistics.median(ms):>10.2f}{p95:>10.2f}{ms[-1]:>10.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
