"""The relay's wire protocol: JSON text frames, their schema, and the version both ends check.

Every frame is one JSON object with a ``type``. A worker opens with ``hello``; the relay answers
``welcome`` (or ``refused`` and closes with :data:`CLOSE_VERSION` when the versions differ).
Then the relay sends ``job`` and ``cancel`` frames and the worker sends ``result`` frames, and
``bye`` when it wants to leave (the relay stops routing to it and closes once it is idle).
Either side may send several messages as one ``batch`` frame.
docs/remote.md draws the schema.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "CLOSE_GARBAGE",
    "CLOSE_RESTART",
    "CLOSE_TOKEN",
    "CLOSE_VERSION",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "batched",
    "decode",
    "encode",
    "parse_hello",
    "parse_result",
    "unbatch",
]

# Bump on any change a peer of the other version would misread; both ends refuse a mismatch.
PROTOCOL_VERSION = 1

# WebSocket close codes the relay uses (4000-4999 are the application's own range).
CLOSE_TOKEN = 1008  # policy violation: a missing or wrong bearer token (before the handshake)
CLOSE_GARBAGE = 1007  # a frame that is not a protocol message
CLOSE_RESTART = 1012  # the relay is stopping: reconnect later
CLOSE_VERSION = 4001  # the peer speaks another protocol version: do not reconnect

_MAX_CONCURRENCY = 100_000


class ProtocolError(ValueError):
    """Raised when a frame is not a valid message of this protocol version."""


# One encoder for every frame: json.dumps with options builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(message: dict[str, Any]) -> str:
    """Return ``message`` as a compact JSON text frame.

    Raises:
        TypeError: a value JSON cannot carry.
        ValueError: a non-finite float.
    """
    return _ENCODER.encode(message)


def decode(frame: str | bytes) -> dict[str, Any]:
    """Parse one frame into a message object with a string ``type``.

    Raises:
        ProtocolError: the frame is not JSON, not an object, or has no string ``type``.
    """
    try:
        message = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON ({exc}): {_clip(frame)}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"frame is not an object with a string 'type': {_clip(frame)}")
    return message


def batched(frames: list[str]) -> str:
    """One frame carrying ``frames`` (encoded messages) as a ``batch``: a busy sender drains
    its queue into one frame instead of one frame (and one system call) per message."""
    if len(frames) == 1:
        return frames[0]
    return '{"type":"batch","messages":[' + ",".join(frames) + "]}"


def unbatch(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages in ``message``: its ``messages`` when it is a batch, else itself.

    Raises:
        ProtocolError: a batch whose ``messages`` is not a list of typed objects.
    """
    if message["type"] != "batch":
        return [message]
    inner = message.get("messages")
    if not isinstance(inner, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) and m["type"] != "batch"
        for m in inner
    ):
        raise ProtocolError("a batch needs 'messages', a list of (unbatched) message objects")
    return inner


def parse_hello(message: dict[str, Any]) -> tuple[str, frozenset[str], int]:
    """Check a ``hello`` and return its worker id, handler names and concurrency.

    Raises:
        ProtocolError: a wrong type, version or field.
    """
    if message["type"] != "hello":
        raise ProtocolError(f"expected a 'hello' first, got {message['type']!r}")
    version = message.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"worker speaks protocol version {version!r}, this relay speaks {PROTOCOL_VERSION}"
        )
    worker_id = message.get("worker_id")
    handlers = message.get("handlers")
    concurrency = message.get("concurrency")
    if not isinstance(worker_id, str) or not worker_id:
        raise ProtocolError(f"hello needs a non-empty string 'worker_id', got {worker_id!r}")
    if not isinstance(handlers, list) or not all(isinstance(h, str) and h for h in handlers):
        raise ProtocolError(f"hello needs 'handlers', a list of names, got {handlers!r}")
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= _MAX_CONCURRENCY
    ):
        raise ProtocolError(
            f"hello needs 'concurrency', an int in 1..{_MAX_CONCURRENCY}, got {concurrency!r}"
        )
    return worker_id, frozenset(handlers), concurrency


def parse_result(message: dict[str, Any]) -> tuple[str, int, Any, str | None]:
    """Check a ``result`` and return its delivery id, status, result and error.

    Raises:
        ProtocolError: a missing or mistyped field, or a status outside 100..599.
    """
    delivery = message.get("id")
    status = message.get("status")
    error = message.get("error")
    if not isinstance(delivery, str):
        raise ProtocolError(f"result needs a string 'id', got {delivery!r}")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ProtocolError(f"result needs 'status', an int in 100..599, got {status!r}")
    if error is not None and not isinstance(error, str):
        raise ProtocolError(f"result 'error' must be a string or null, got {error!r}")
    return delivery, status, message.get("result"), error


def _clip(frame: str | bytes, limit: int = 80) -> str:
    text = repr(frame)
    return text if len(text) <= limit else f"{text[:limit]}..."
