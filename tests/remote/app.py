"""The Worker the remote tests run in `anywork remote` processes, and their relay server."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from work import Job, Status, StatusError, Worker
from work.remote import Relay, RelayState

worker = Worker(name="remote-test")


@worker.handler("noop")
async def noop(job: Job) -> None:
    """Do nothing: the round trip alone."""


@worker.handler("echo")
async def echo(job: Job) -> dict[str, Any]:
    """Return the args, the process id and the job's headers."""
    await anyio.sleep(float(job.args.get("sleep", 0)))
    return {"args": job.args, "pid": os.getpid(), "headers": job.headers}


@worker.handler("hold")
def hold(job: Job) -> int:
    """Write this pid into the file named by ``args["marks"]``; the first runner then hangs,
    a later one returns its pid (so a test can SIGKILL the first mid-job)."""
    marks = Path(job.args["marks"])
    first = not marks.exists()
    with marks.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        time.sleep(60)  # a plain def: runs in a thread, killed with its process
    return os.getpid()


@worker.handler("not_json")
async def not_json(job: Job) -> set[int]:
    """Return a set, which JSON cannot carry."""
    return {1, 2}


@worker.handler("refuse")
async def refuse(job: Job) -> None:
    """Fail with 422 and a reason."""
    raise StatusError(Status.UNPROCESSABLE_ENTITY, "no such thing")


class Recording:
    """A Scaler that records each hook call with the state it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, RelayState]] = []

    def inbound(self, state: RelayState) -> None:
        """Record the call."""
        self.calls.append(("inbound", state))

    def done(self, state: RelayState) -> None:
        """Record the call."""
        self.calls.append(("done", state))

    def timed_out(self, state: RelayState) -> None:
        """Record the call."""
        self.calls.append(("timed_out", state))


def build(token: str | None, scaler: Any = None) -> Any:
    """A Starlette app: the relay at /v1/relay, POST /do/{handler} answering through
    relay.do, GET /state and GET /hooks to look inside."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute

    recording = scaler if scaler is not None else Recording()
    relay = Relay(token=token, scaler=recording, timeout=10.0)

    async def do(request: Request) -> JSONResponse:
        body = await request.json()
        timeout = body.pop("_timeout", None)
        result = await relay.do(Job(request.path_params["handler"], body), timeout=timeout)
        return JSONResponse(
            {
                "status": int(result.status),
                "result": result.result,
                "error": result.error,
                "worker_id": result.worker_id,
            }
        )

    async def state(request: Request) -> JSONResponse:
        s = relay.state
        return JSONResponse(
            {
                "pending": s.pending,
                "in_flight": s.in_flight,
                "connected": s.connected,
                "capacity": s.capacity,
                "workers": sorted(c.worker_id for c in relay._conns.values()),
                "processes": getattr(recording, "processes", None),
                "started": getattr(recording, "started", None),
            }
        )

    async def hooks(request: Request) -> JSONResponse:
        calls = getattr(recording, "calls", [])
        return JSONResponse([[name, s.pending, s.in_flight, s.connected] for name, s in calls])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with relay:
            yield
        close = getattr(recording, "close", None)
        if close is not None:
            close()

    return Starlette(
        routes=[
            Route("/do/{handler}", do, methods=["POST"]),
            Route("/state", state),
            Route("/hooks", hooks),
            WebSocketRoute("/v1/relay", relay.asgi),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    """``python -m tests.remote.app PORT [TOKEN] [--process-scaler] [--hypercorn-trio]``: serve
    on 127.0.0.1 with uvicorn (asyncio), or with Hypercorn on trio."""
    port = int(sys.argv[1])
    token = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    scaler = None
    if "--process-scaler" in sys.argv:
        from work.remote import ProcessScaler

        scaler = ProcessScaler(
            "tests.remote.app:worker",
            url=f"ws://127.0.0.1:{port}/v1/relay",
            token=token,
            max_processes=2,
            idle_exit=1.5,
        )
        scaler.calls = []  # type: ignore[attr-defined]
    app = build(token, scaler)
    if "--hypercorn-trio" in sys.argv:
        import hypercorn.trio
        import trio
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.loglevel = "WARNING"
        trio.run(hypercorn.trio.serve, app, config)
    else:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
