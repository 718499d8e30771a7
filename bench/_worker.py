"""One worker process of ``bench.stores``: serve N no-op jobs, then print seconds, CPU and RSS.

Run by ``bench.stores`` as ``python -m bench._worker URL OPTIONS N``. It imports only what a
worker needs (anyio, ``work`` and the store's driver), not the benchmark harness (argparse,
cProfile, statistics...), so that the peak RSS it prints is the worker's own.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import anyio

__all__ = ["child_process", "cpu_seconds", "main", "peak_rss_mb"]


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def child_process(url: str, options: dict[str, Any], expect: int) -> dict[str, Any]:
    """Serve until ``expect`` no-op jobs have succeeded; return seconds and peak RSS."""
    from work import Job, Worker
    from work.stores import open_store

    worker = Worker()
    ran = 0
    all_ran = anyio.Event()

    async def noop(job: Job) -> None:
        nonlocal ran
        ran += 1
        if ran == expect:
            all_ran.set()

    worker.register("noop", noop)
    async with open_store(url, **options) as store, anyio.create_task_group() as tg, worker:
        started, cpu = time.perf_counter(), cpu_seconds()
        tg.start_soon(lambda: worker.serve(store))
        await all_ran.wait()
        # No event says "the last result is stored"; polling the store's counts is the check.
        while (await store.stats()).get("default", {}).get("succeeded", 0) < expect:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        worker.stop()
    return {"seconds": seconds, "jobs": expect, "rss_mb": peak_rss_mb(), "cpu": cpu}


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` from ``/proc/self/status`` where there is one.

    Not ``getrusage``'s ``ru_maxrss`` there: on Linux it carries over fork and exec, so a child
    started by a parent holding N MB reports at least N (the benchmark's parent holds every
    job it enqueued, which made the worker's figure grow with ``--jobs``). ``VmHWM`` is the
    high-water mark of this process's own address space.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Serve ``N`` no-op jobs of store ``URL`` (``OPTIONS``: JSON keyword arguments of
    ``open_store``) and print the figures as one JSON line."""
    url, options_json, expect = sys.argv[1:] if argv is None else argv
    options = json.loads(options_json)
    result = anyio.run(child_process, url, options, int(expect))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
