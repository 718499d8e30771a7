"""What the routes share: the store, its Queue and the app's settings."""

from __future__ import annotations

from dataclasses import dataclass

from .._durable.queue import Queue
from ..stores import Store

__all__ = ["Service"]


@dataclass(slots=True)
class Service:
    """The state behind one app.

    Attributes:
        store, queue: where jobs live.
        tokens: accepted bearer tokens (bytes), or None when auth is off.
        secret: the key of callback tokens.
        public_url: the URL others reach this service at (for callback URLs).
        max_body: the largest request body accepted, in bytes.
    """

    store: Store
    queue: Queue
    tokens: list[bytes] | None
    secret: bytes
    public_url: str | None
    max_body: int
