"""A connection's outgoing frames: queued without awaiting, sent by one task as batch frames."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ._messages import batched

__all__ = ["Outbox"]

# At most this many queued messages go out as one batch frame.
_BATCH = 256


class Outbox:
    """Frames for one connection, in order: ``put`` never waits, ``pump`` sends them.

    Whatever was queued while the pump was away (sending, or waiting for its turn in the event
    loop) goes out as one batch frame: a busy connection pays one send (one system call, one
    wake-up of the peer) for many messages, a quiet one a frame per message.
    """

    __slots__ = ("_closed", "_frames", "_wake")

    def __init__(self) -> None:
        self._frames: list[str] = []
        self._wake: anyio.Event | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: str) -> None:
        """Queue ``frame`` (an encoded message); dropped once the outbox is closed."""
        if self._closed:
            return
        self._frames.append(frame)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def close(self) -> None:
        """Drop what is queued and every later ``put`` (the connection is gone)."""
        self._closed = True
        self._frames.clear()

    async def pump(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send the queued frames with ``send``, in order, batched, until cancelled."""
        while True:
            while not self._frames:
                wake = self._wake = anyio.Event()
                await wake.wait()
            frames = self._frames
            self._frames = []
            for start in range(0, len(frames), _BATCH):
                await send(batched(frames[start : start + _BATCH]))
