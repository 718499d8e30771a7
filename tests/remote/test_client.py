"""The worker side against a fake relay (a plain websockets server on 127.0.0.1): what it
answers to odd jobs, cancels, garbage, a restart and a refusal, and its argument checks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest
import sniffio

from work import Job, Worker
from work.remote import ProcessScaler, RelayState
from work.remote._messages import (
    ProtocolError,
    batched,
    decode,
    parse_hello,
    parse_result,
    unbatch,
)

from .procs import free_port

pytestmark = pytest.mark.anyio

Handler = Callable[[Any], Awaitable[None]]


@asynccontextmanager
async def fake_relay(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` for each WebSocket connection on 127.0.0.1; yield its URL."""
    if sniffio.current_async_library() == "trio":
        from websockets.trio.server import serve as trio_serve

        port = free_port()
        async with anyio.create_task_group() as tg:
            await tg.start(partial(trio_serve, handler, port, host="127.0.0.1"))
            yield f"ws://127.0.0.1:{port}/"
            tg.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve

        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/"


async def _close(ws: Any, code: int, reason: str) -> None:
    """Close a server connection (websockets' trio flavour calls it ``aclose``)."""
    close = getattr(ws, "aclose", None) or ws.close
    await close(code, reason)


def _worker() -> Worker:
    worker = Worker(name="client-test")

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        await anyio.sleep(30)

    @worker.handler("odd")
    async def odd(job: Job) -> object:
        return object()

    return worker


async def test_worker_answers_odd_jobs_cancels_and_survives_garbage_and_a_restart() -> None:
    """Unknown handler: 404; malformed job: 400; a non-JSON result: 500; a cancel: 499;
    garbage frames are ignored; after a 1012 close it reconnects; a 4001 close (another
    version) makes it give up with ConnectionRefusedError."""
    answers: list[dict[str, Any]] = []
    sessions = 0

    async def relay(ws: Any) -> None:
        nonlocal sessions
        sessions += 1
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and sorted(hello["handlers"]) == ["odd", "slow"]
        if sessions == 2:
            await _close(ws, 4001, "this relay speaks protocol 9")
            return
        await ws.send(json.dumps({"type": "welcome", "version": 1}))
        jobs = [
            {"id": "a", "job": {"id": "j1", "handler": "missing", "args": {}}},
            {"id": "b", "job": {"id": "j2", "handler": "slow", "args": "not a dict"}},
            {"id": "c", "job": {"id": "j3", "handler": "odd", "args": {}}},
            {"id": "d", "job": {"id": "j4", "handler": "slow", "args": {}}},
        ]
        await ws.send("garbage")
        await ws.send(json.dumps({"type": "job"}))
        for job in jobs:
            await ws.send(json.dumps({"type": "job", **job}))
        await ws.send(json.dumps({"type": "cancel", "id": "d"}))
        while len(answers) < 4:
            answers.extend(unbatch(json.loads(await ws.recv())))
        await _close(ws, 1012, "restarting")

    worker = _worker()
    with anyio.fail_after(20):
        async with fake_relay(relay) as url, worker:
            with pytest.raises(ConnectionRefusedError, match="protocol 9"):
                await worker.connect(url)
    by_id = {a["id"]: a for a in answers}
    assert by_id["a"]["status"] == 404
    assert by_id["b"]["status"] == 400 and "bad job" in by_id["b"]["error"]
    assert by_id["c"]["status"] == 500 and "not JSON" in by_id["c"]["error"]
    assert by_id["d"]["status"] == 499
    assert sessions == 2


async def test_worker_gives_up_on_an_unreachable_relay_after_idle_exit() -> None:
    """No relay listening: the worker retries with backoff and returns after idle_exit."""
    worker = _worker()
    with anyio.fail_after(10):
        async with worker:
            await worker.connect(f"ws://127.0.0.1:{free_port()}/", idle_exit=0.3)


async def test_connect_refuses_bad_arguments() -> None:
    """Bad url, concurrency, idle_exit, or a worker without handlers: ValueError/TypeError."""
    worker = _worker()
    async with worker:
        with pytest.raises(ValueError, match="ftp://x"):
            await worker.connect("ftp://x")
        with pytest.raises(TypeError, match="url must be a str"):
            await worker.connect(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="concurrency"):
            await worker.connect("ws://127.0.0.1:1/", concurrency=0)
        with pytest.raises(ValueError, match="idle_exit"):
            await worker.connect("ws://127.0.0.1:1/", idle_exit=-1)
    async with Worker() as empty:
        with pytest.raises(ValueError, match="no handlers"):
            await empty.connect("http://127.0.0.1:1/")


def test_messages_refuse_malformed_hellos_and_results() -> None:
    """Each malformed field of a hello or a result is a ProtocolError naming it."""
    good = {"type": "hello", "version": 1, "worker_id": "w", "handlers": ["h"], "concurrency": 2}
    assert parse_hello(good) == ("w", frozenset({"h"}), 2)
    for field, value in [("worker_id", ""), ("handlers", "h"), ("concurrency", True)]:
        with pytest.raises(ProtocolError, match=field):
            parse_hello({**good, field: value})
    with pytest.raises(ProtocolError, match="hello"):
        parse_hello({"type": "result"})
    result = {"type": "result", "id": "d", "status": 200, "result": [1], "error": None}
    assert parse_result(result) == ("d", 200, [1], None)
    for field, value in [("id", 3), ("status", 99), ("error", 5)]:
        with pytest.raises(ProtocolError, match=field):
            parse_result({**result, field: value})
    with pytest.raises(ProtocolError, match="not JSON"):
        decode(b"\xff")
    two = decode(batched(['{"type":"bye"}', '{"type":"bye"}']))
    assert unbatch(two) == [{"type": "bye"}] * 2
    with pytest.raises(ProtocolError, match="batch"):
        unbatch({"type": "batch", "messages": [two]})


def test_process_scaler_checks_its_arguments_and_builds_its_command() -> None:
    """ProcessScaler refuses a bad target, max_processes or idle_exit; its command runs
    `anywork remote` with --idle-exit and --concurrency; with nothing started it is empty."""
    with pytest.raises(ValueError, match="module:attr"):
        ProcessScaler("app", url="ws://x")
    with pytest.raises(TypeError, match="max_processes"):
        ProcessScaler("app:w", url="ws://x", max_processes=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_processes"):
        ProcessScaler("app:w", url="ws://x", max_processes=0)
    with pytest.raises(ValueError, match="idle_exit"):
        ProcessScaler("app:w", url="ws://x", idle_exit=0)
    scaler = ProcessScaler("app:w", url="ws://127.0.0.1:1/", concurrency=3, idle_exit=2)
    assert scaler.command()[-7:] == [
        "remote", "ws://127.0.0.1:1/", "app:w", "--idle-exit", "2", "--concurrency", "3",
    ]  # fmt: skip
    idle = RelayState(pending=0, in_flight=0, connected=0, capacity=0)
    scaler.inbound(idle)  # nothing pending: nothing started
    scaler.done(idle)
    scaler.timed_out(idle)
    assert scaler.processes == 0 and scaler.started == 0
    assert "processes=0/4" in repr(scaler)
    scaler.close()
