"""Job events across processes: ``anywork jobs watch`` in a subprocess sees a job's life."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process

from tests.stores.test_conformance import fast_retry, serving
from work import Job, Queue, Status, StatusError, Worker
from work.stores import Store

pytestmark = pytest.mark.anyio

# Memory lives in one process: its events are covered by the conformance suite.
PROCESS_STORES = [
    pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    pytest.param(("sqlite", "trio"), id="sqlite-trio"),
    pytest.param(("postgresql", "asyncio"), id="postgresql-asyncio"),
    pytest.param(("redis", "asyncio"), id="redis-asyncio"),
    pytest.param(("redis-cluster", "asyncio"), id="redis-cluster-asyncio"),
]


@pytest.fixture(params=PROCESS_STORES)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A store another process can share, with the anyio backend of both processes."""
    kind, backend = request.param
    return str(kind), str(backend)


class Lines:
    """Reads whole lines from a subprocess's output stream."""

    def __init__(self, stream: ByteReceiveStream | None) -> None:
        assert stream is not None
        self._stream = stream
        self._buffer = b""

    async def line(self) -> str:
        """The next line (without its newline)."""
        while b"\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


@asynccontextmanager
async def watching(
    store_url: str, store_options: dict[str, Any], backend: str, *extra: str
) -> AsyncIterator[tuple[Process, Lines]]:
    """Run ``anywork jobs watch`` on the store until the block ends; yield it and its stdout,
    once it says it is subscribed."""
    options = [f"--store-option={key}={value}" for key, value in store_options.items()]
    command = [sys.executable, "-m", "work.cli", "jobs", "watch", "--store", store_url]
    command += [*options, "--backend", backend, *extra]
    process = await anyio.open_process(command)
    try:
        errors = Lines(process.stderr)
        with anyio.fail_after(30):
            while "watching" not in await errors.line():
                pass
        yield process, Lines(process.stdout)
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()


async def job_kinds(out: Lines, job_id: str, last: str) -> list[dict[str, Any]]:
    """The JSON events printed for ``job_id``, up to the first of kind ``last``."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        while True:
            event = json.loads(await out.line())
            if event["job_id"] == job_id:
                seen.append(event)
                if event["kind"] == last:
                    return seen


async def test_another_process_sees_a_job_in_order(
    store: Store, store_url: str, store_options: dict[str, Any], anyio_backend: str
) -> None:
    """A subscriber in another process sees ENQUEUED -> STARTED -> SUCCEEDED, then RETRYING
    and FAILED for a failing job, and exits 0 on SIGTERM."""
    worker = Worker()
    worker.register("add", lambda job: job.args["a"] + 1)

    def broken(job: Job) -> None:
        raise StatusError(Status.BAD_GATEWAY, "upstream")

    worker.register("broken", broken)
    queue = Queue(store)
    async with (
        watching(store_url, store_options, anyio_backend, "--json") as (process, out),
        serving(store, worker),
    ):
        ok = await queue.enqueue(Job("add", {"a": 1}))
        seen = await job_kinds(out, ok.id, "succeeded")
        assert [e["kind"] for e in seen] == ["enqueued", "started", "succeeded"]
        assert [(e["status"], e["attempt"], e["handler"]) for e in seen] == [
            (-1, 0, "add"),
            (-1, 1, "add"),
            (200, 1, "add"),
        ]
        bad = await queue.enqueue(Job("broken"), retry=fast_retry(2))
        kinds = [e["kind"] for e in await job_kinds(out, bad.id, "failed")]
        assert kinds == ["enqueued", "started", "retrying", "started", "failed"]
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0


async def test_watch_prints_lines_filtered_by_kind(
    store: Store, store_url: str, store_options: dict[str, Any], anyio_backend: str
) -> None:
    """``anywork jobs watch --kind`` prints one readable line per event of those kinds."""
    queue = Queue(store)
    extra = ("--kind", "cancelled", "--queue", "mail")
    async with watching(store_url, store_options, anyio_backend, *extra) as (_, out):
        await queue.enqueue(Job("send", queue="other"))
        rec = await queue.enqueue(Job("send", queue="mail"))
        assert await queue.cancel(rec.id)
        with anyio.fail_after(20):
            line = await out.line()
    assert f"cancelled  {rec.id}  handler=send queue=mail status=499 attempt=0" in line
