"""A plain-threads program using BackgroundWorker: no async code outside the handlers.

Several ordinary threads (think request handlers in Flask or Django) submit jobs to one
BackgroundWorker, get ``concurrent.futures.Future`` objects back and collect the results.
A recurring heartbeat and a ``queue.Queue`` consumer run alongside.

Run: ``python examples/threads.py`` (ends by itself in about a second).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import anyio

from work import BackgroundWorker, Execution, Job, Worker

worker = Worker(max_concurrency=8, shutdown_grace=5)


@worker.handler()
async def word_count(job: Job) -> int:
    """An async handler: runs in the background event loop."""
    await anyio.sleep(0.01)  # pretend to fetch the document
    return len(str(job.args["text"]).split())


@worker.handler()
def checksum(job: Job) -> int:
    """A plain ``def`` handler: runs in a worker thread of the background loop."""
    return sum(str(job.args["text"]).encode()) % 65_521


@worker.handler()
async def heartbeat(job: Job) -> None:
    """A recurring job."""


@worker.handler()
def audit(job: Job) -> str:
    """Consumes the items a queue.Queue delivers."""
    return f"audited {job.args['received_data']}"


def client(bg: BackgroundWorker, name: str, texts: list[str], results: list[str]) -> None:
    """One plain thread: submit jobs, then wait for each Future."""
    futures: list[tuple[str, Future[Execution]]] = [
        (text, bg.perform(Job("word_count", {"text": text}))) for text in texts
    ]
    for text, future in futures:
        execution = future.result(timeout=10)
        execution.raise_for_status()
        results.append(f"{name}: {text!r} has {execution.result} words")
    # sync=True blocks until the execution has finished and returns it.
    total = bg.perform(Job("checksum", {"text": " ".join(texts)}), sync=True)
    results.append(f"{name}: checksum {total.result}")


def main() -> None:
    """Start the BackgroundWorker, run four client threads, a heartbeat and a queue consumer."""
    texts = {
        "alice": ["the quick brown fox", "jumps over"],
        "bob": ["the lazy dog", "and keeps sleeping all day"],
        "carol": ["hello", "hello world"],
        "dave": ["one two three four five"],
    }
    results: list[str] = []
    inbox: queue.Queue[str | None] = queue.Queue()

    with BackgroundWorker(worker) as bg:
        beats = bg.perform_every(Job("heartbeat"), 0.1)
        audits = bg.perform_receive(Job("audit"), iter(inbox.get, None), sync=True)

        threads = [
            threading.Thread(target=client, args=(bg, name, lines, results), name=name)
            for name, lines in texts.items()
        ]
        for thread in threads:
            thread.start()
        for event in ("login", "upload", "logout"):
            inbox.put(event)
        for thread in threads:
            thread.join()

        inbox.put(None)  # ends the queue consumer
        audits.wait(timeout=10)
        beats.cancel()
        beats.wait(timeout=10)

        for line in sorted(results):
            print(line)
        print(f"audited {audits.count} events")
        print(f"heartbeats: {'yes' if beats.count >= 1 else 'no'}")
    print(f"stopped cleanly: {not bg.running}")


if __name__ == "__main__":
    main()
