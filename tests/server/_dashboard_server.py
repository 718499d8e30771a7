"""The HTTP service with its dashboard, served for real on 127.0.0.1 in a thread (uvicorn)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import uvicorn

from work.server import create_app
from work.stores import open_store


@dataclass
class Running:
    """A dashboard being served: its base URL."""

    url: str


@contextmanager
def serve_dashboard(
    store_url: str, *, tokens: Sequence[str], read_only_tokens: Sequence[str] = ()
) -> Iterator[Running]:
    """Serve the dashboard over ``store_url`` on a free 127.0.0.1 port until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    started = threading.Event()
    failed: list[BaseException] = []
    holder: list[uvicorn.Server] = []

    async def main() -> None:
        async with open_store(store_url) as store:
            # The whole service, as `anywork serve` builds it: the dashboard is at /.
            app = create_app(store, tokens=list(tokens), read_only_tokens=read_only_tokens)
            config = uvicorn.Config(
                app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
            )
            server = uvicorn.Server(config)
            holder.append(server)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                while not server.started:
                    await anyio.sleep(0.01)
                started.set()

    def run() -> None:
        try:
            anyio.run(main, backend="asyncio")
        except BaseException as exc:  # surfaced to the test below
            failed.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="dashboard-server", daemon=True)
    thread.start()
    if not started.wait(30) or failed:
        raise RuntimeError(f"the dashboard server did not start: {failed!r}")
    try:
        yield Running(f"http://127.0.0.1:{port}")
    finally:
        holder[0].should_exit = True
        thread.join(15)
        sock.close()
        if failed:
            raise failed[0]
