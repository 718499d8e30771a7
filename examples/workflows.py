"""Workflows on the embedded SQLite store: fetch pages, parse them in parallel, and aggregate
the results in a chord's callback.

Run: ``python examples/workflows.py [path/to/jobs.db]`` (default: a fresh file in a temporary
folder). Nothing is fetched from the network: the "pages" are made up.

::

    fetch(a) ──> parse ─┐
    fetch(b) ──> parse ─┼──> aggregate     (a Chord whose header members are Chains)
    fetch(c) ──> parse ─┘
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import anyio

from work import Constant, Job, Queue, RetryPolicy, Worker
from work.stores import open_store
from work.workflows import Chain, Chord, step

PAGES = {
    "https://example.test/a": "the quick brown fox jumps over the lazy dog",
    "https://example.test/b": "the dog sleeps and the fox runs",
    "https://example.test/c": "a quick fox is a happy fox",
}

worker = Worker(max_concurrency=4, shutdown_grace=5)
flaky = {"https://example.test/b": 1}  # this page fails once: its step retries


@worker.handler()
async def fetch(job: Job) -> str:
    """'Download' a page (its text is the step's result, the next step's input)."""
    url = job.args["url"]
    if flaky.get(url, 0) > 0:
        flaky[url] -= 1
        raise ConnectionError(f"{url}: connection reset")
    await anyio.sleep(0.05)
    return PAGES[url]


@worker.handler()
async def parse(job: Job) -> dict[str, int]:
    """Count the words of the page fetched by the step before (``args["input"]``)."""
    return dict(Counter(job.args["input"].split()))


@worker.handler()
async def aggregate(job: Job) -> list[list[object]]:
    """The chord's callback: every page's counts, in definition order, summed."""
    total: Counter[str] = Counter()
    for counts in job.args["input"]:
        total.update(counts)
    return [[word, n] for word, n in total.most_common(3)]


@worker.handler()
async def alert(job: Job) -> None:
    """on_error: runs once if a step fails for good."""
    print(f"workflow {job.args['workflow_id']} failed: {job.args['error']}")


async def main(db_path: Path) -> None:
    """Enqueue the workflow, serve it, and print its result."""
    url = f"sqlite:///{db_path}"
    print(f"store: {url}")
    retry = RetryPolicy(max_attempts=3, backoff=Constant(0.1))
    workflow = Chord(
        [Chain(step(Job("fetch", {"url": u}), retry=retry), Job("parse")) for u in PAGES],
        Job("aggregate"),
        on_error=Job("alert"),
        name="word-count",
    )
    async with open_store(url) as store:
        queue = Queue(store)
        record = await queue.enqueue(workflow)
        print(f"enqueued workflow {record.id} ({record.kind}, {len(record.jobs)} steps)")
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(lambda: worker.serve(store, lease=10))
            done = await queue.wait_workflow(record.id, timeout=30)
            worker.stop()
        for job in await queue.list(workflow_id=record.id):
            print(f"  {job.handler:<9} {job.state.value:<9} attempts={job.attempts}")
        print(f"{done.state.value}: top words {done.result}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            anyio.run(main, Path(tmp) / "jobs.db")
