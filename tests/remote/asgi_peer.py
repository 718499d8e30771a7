"""A fake remote worker that talks to ``relay.asgi`` in memory: ASGI messages, no socket.

The relay's own side (Starlette's WebSocket over ASGI) runs for real; only the worker is
played by the test, so it can send what a real worker never would (garbage, wrong versions).
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from work.remote import Relay

__all__ = ["Peer", "close_peers", "hello"]

_open: list[Peer] = []


def close_peers() -> None:
    """Close the streams of every Peer made so far (a fixture calls it after each test)."""
    for peer in _open:
        for stream in (peer._to_app, peer._app_in, peer._app_out, peer._from_app):
            stream.close()
    _open.clear()


def hello(handlers: list[str], concurrency: int = 4, worker_id: str = "w1") -> dict[str, Any]:
    """A valid hello message."""
    return {
        "type": "hello",
        "version": 1,
        "worker_id": worker_id,
        "handlers": handlers,
        "concurrency": concurrency,
    }


class Peer:
    """One WebSocket connection to ``relay.asgi``, played by the test."""

    def __init__(self, relay: Relay, token: str | None = None) -> None:
        self.relay = relay
        self.token = token
        self._to_app, self._app_in = anyio.create_memory_object_stream[dict[str, Any]](1000)
        self._app_out, self._from_app = anyio.create_memory_object_stream[MutableMapping[str, Any]](
            1000
        )
        self.closed: int | None = None
        self._batched: list[dict[str, Any]] = []
        _open.append(self)

    async def open(self, tg: TaskGroup) -> bool:
        """Start the connection; True when the relay accepted it."""
        headers = []
        if self.token is not None:
            headers.append((b"authorization", f"Bearer {self.token}".encode()))
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": "/",
            "root_path": "",
            "scheme": "ws",
            "query_string": b"",
            "headers": headers,
            "subprotocols": [],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        tg.start_soon(self._run_app, scope)
        await self._to_app.send({"type": "websocket.connect"})
        message = await self._from_app.receive()
        if message["type"] == "websocket.close":
            self.closed = message.get("code", 1000)
            return False
        return bool(message["type"] == "websocket.accept")

    async def _run_app(self, scope: dict[str, Any]) -> None:
        await self.relay.asgi(scope, self._app_in.receive, self._app_out.send)

    async def join(self, tg: TaskGroup, message: dict[str, Any]) -> dict[str, Any]:
        """Open, say hello and return the relay's answer."""
        assert await self.open(tg)
        await self.send(message)
        answer = await self.recv()
        assert answer is not None
        return answer

    async def send(self, message: dict[str, Any] | str) -> None:
        """Send a message (a dict as JSON, a str as it is)."""
        text = message if isinstance(message, str) else json.dumps(message)
        await self._to_app.send({"type": "websocket.receive", "text": text})

    async def recv(self) -> dict[str, Any] | None:
        """The next message from the relay (a batch frame's messages one at a time), or None
        once it closed the connection."""
        if self._batched:
            return self._batched.pop(0)
        data = await self.recv_frame()
        if data is None:
            return None
        if data["type"] == "batch":
            self._batched.extend(data["messages"][1:])
            first: dict[str, Any] = data["messages"][0]
            return first
        return data

    async def recv_frame(self) -> dict[str, Any] | None:
        """The next frame from the relay as it came (a batch is not split), or None once it
        closed the connection."""
        assert not self._batched, "recv() has messages of a batch frame left"
        message = await self._from_app.receive()
        if message["type"] == "websocket.close":
            self.closed = message.get("code", 1000)
            return None
        assert message["type"] == "websocket.send", message
        data: dict[str, Any] = json.loads(message["text"])
        return data

    async def answer(self, job: dict[str, Any], status: int = 200, result: Any = None) -> None:
        """Answer a job message."""
        await self.send(
            {"type": "result", "id": job["id"], "status": status, "result": result, "error": None}
        )

    async def disconnect(self) -> None:
        """Drop the connection, as a killed worker does."""
        await self._to_app.send({"type": "websocket.disconnect", "code": 1006})
