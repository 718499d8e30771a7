"""What the stores that talk to a server share: the unreachable-server error, the asyncio check."""

from __future__ import annotations

import asyncio

from .._core.exceptions import WorkError

__all__ = ["StoreAuthenticationError", "StoreUnavailableError", "require_asyncio"]


class StoreUnavailableError(WorkError, ConnectionError):
    """Raised when a store's server cannot be reached (refused, unresolvable, timed out).

    Each server store raises its own subclass (``PostgresUnavailableError``,
    ``RedisUnavailableError``); catch this one to handle any of them.

    Attributes:
        host: the host the store tried.
        port: the port the store tried.
    """

    server = "the server"
    """The server's name in the message, set by each subclass."""

    def __init__(self, host: str, port: int | str, reason: BaseException) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"cannot connect to {self.server} at {host}:{port}: {reason or type(reason).__name__}"
        )


class StoreAuthenticationError(WorkError):
    """Raised when a store's server refuses the credentials (a wrong or missing password or
    user).

    Not a ``ConnectionError``: waiting cannot heal it, so a worker exits (code 1) instead of
    retrying, the same on every store.

    Attributes:
        host: the host the store tried.
        port: the port the store tried.
    """

    def __init__(self, server: str, host: str, port: int | str, reason: BaseException) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"{server} at {host}:{port} refused the credentials: {reason or type(reason).__name__}"
        )


def require_asyncio(store: str, driver: str) -> None:
    """Raise RuntimeError unless asyncio runs the caller: ``driver`` is asyncio-only.

    Args:
        store: the store's name for the message ("the PostgreSQL store").
        driver: why it needs asyncio ("asyncpg is asyncio-only").
    """
    # anyio 4 no longer depends on sniffio; asyncio itself says whether its loop runs us.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(f"{store} needs the asyncio backend ({driver})") from None
