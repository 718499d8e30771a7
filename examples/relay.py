"""A Starlette app whose route answers through a Relay, with workers started on demand.

``GET /?name=ada`` hands a job to a remote worker and answers with its result, as jobber's
example serves ``curl localhost:8000/``. No worker runs at first: the ProcessScaler starts
``anywork remote`` processes (this module's ``worker``) when requests come in, and they exit
after 5 idle seconds.

    python examples/relay.py               # serve on 127.0.0.1:8000; then: curl localhost:8000/
    python examples/relay.py --once 8123   # serve on port 8123, ask / three times, stop
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from work import Job, Worker
from work.remote import ProcessScaler, Relay

ROOT = Path(__file__).resolve().parent.parent

# The worker the scaler's processes run (`anywork remote URL examples.relay:worker`).
worker = Worker(name="greeter")


@worker.handler("greet")
async def greet(job: Job) -> str:
    """Greet ``args["name"]`` from the worker's own process."""
    return f"hello {job.args.get('name', 'world')} from pid {os.getpid()}"


async def serve(port: int, once: bool) -> None:
    """Serve the app on 127.0.0.1:``port``; with ``once``, ask / three times and stop."""
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute

    scaler = ProcessScaler(
        "examples.relay:worker",
        url=f"ws://127.0.0.1:{port}/v1/relay",
        max_processes=2,
        idle_exit=5.0,
        cwd=str(ROOT),
    )
    relay = Relay(scaler=scaler, timeout=20.0)

    async def hello(request: Request) -> PlainTextResponse:
        name = request.query_params.get("name", "world")
        result = await relay.do(Job("greet", {"name": name}))
        if not result.status.is_success:
            return PlainTextResponse(f"{result.error}\n", status_code=int(result.status))
        return PlainTextResponse(f"{result.result}\n")

    app = Starlette(routes=[Route("/", hello), WebSocketRoute("/v1/relay", relay.asgi)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    try:
        async with relay, anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            if not once:
                return
            # uvicorn offers no event for "listening": poll its flag (a few turns at most).
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            async with httpx.AsyncClient(timeout=30) as client:
                for name in ("ada", "grace", "edsger"):
                    response = await client.get(f"http://127.0.0.1:{port}/?name={name}")
                    print(response.status_code, response.text.strip())
            server.should_exit = True
    finally:
        scaler.close()
    print(f"worker processes started: {scaler.started}")


if __name__ == "__main__":
    once = "--once" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--once"]
    anyio.run(serve, int(args[0]) if args else 8000, once)
