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
        secret: seeds the store's callback secret (None: the store makes its own).
        public_url: the URL others reach this service at (for callback URLs).
        max_body: the largest request body accepted, in bytes.
    """

    store: Store
    queue: Queue
    tokens: list[bytes] | None
    secret: bytes | None
    public_url: str | None
    max_body: int
    _secret_set: bool = False

    async def ensure_secret(self) -> None:
        """Seed the store's callback secret with ``secret`` (when one was given and the store
        has none yet); the store's own secret is the one every process's tokens use."""
        if self._secret_set:
            return
        if self.secret is not None:
            from ..scheduling._callbacks import SECRET_SETTING

            await self.store.setdefault_setting(SECRET_SETTING, self.secret.decode())
        self._secret_set = True
