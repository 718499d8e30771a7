"""What every ``anywork`` command shares: the one-line error, opening and connecting a store."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import anyio

from .._core.retry import Exponential
from ..stores import Store, mask_url, open_store

__all__ = ["CLIError", "connect_patiently", "connected", "entered", "log", "open_store_of"]

_S = TypeVar("_S", bound=Store)
# The longest wait between a worker's attempts to reach an unreachable store.
_CONNECT_BACKOFF_CAP = 30.0


class CLIError(Exception):
    """Raised for a failure the program reports as one line on stderr.

    Attributes:
        message: what went wrong, naming the bad value.
        code: the exit code: 2 for bad input, 1 for a runtime failure.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _parse_store_options(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``k=v`` strings into keyword options; a value that reads as JSON is decoded."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--store-option must look like key=value, got {item!r}", 2)
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def open_store_of(ns: argparse.Namespace) -> Store:
    """Make (not connect) the store the command line names; a bad URL is a usage error."""
    options = _parse_store_options(ns.store_option)
    try:
        return open_store(ns.store, **options)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc), 2) from None
    except ImportError as exc:
        raise CLIError(f"the store for {mask_url(ns.store)} needs a driver: {exc}", 2) from None


@contextlib.asynccontextmanager
async def connected(store: _S) -> AsyncIterator[_S]:
    """Connect ``store`` for the block, turning a failure to connect into a one-line CLIError."""
    unreachable = await _enter(store)
    if unreachable is not None:
        raise CLIError(unreachable)
    async with entered(store):
        yield store


async def _enter(store: Store) -> str | None:
    """Enter ``store``; return why its server cannot be reached, or None once connected.

    An unreachable server (``OSError``, ``ConnectionError``) may come back; any other error
    (bad credentials, a newer schema, a driver that needs asyncio) cannot heal by waiting and
    is a CLIError at once.
    """
    try:
        await store.__aenter__()
    except (OSError, ConnectionError) as exc:
        return f"cannot connect to {store.url}: {exc}"
    except Exception as exc:
        # Drivers raise their own error types (asyncpg, redis-py); name them in one line.
        raise CLIError(f"cannot open {store.url}: {type(exc).__name__}: {exc}") from None
    return None


@contextlib.asynccontextmanager
async def entered(store: _S) -> AsyncIterator[_S]:
    """Leave an already connected ``store`` when the block ends, passing on its error."""
    try:
        yield store
    except BaseException as exc:
        await store.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await store.__aexit__(None, None, None)


async def connect_patiently(
    store: Store, stop: anyio.Event, *, first: float = 0.5, cap: float = _CONNECT_BACKOFF_CAP
) -> bool:
    """Connect ``store`` for a worker, retrying an unreachable server with backoff.

    A server that cannot be reached (``ConnectionError``, ``OSError``: down, restarting, not
    up yet) is retried after 0.5 s, 1 s, 2 s, … up to ``cap`` seconds, each failure logged in
    one line; any other error (bad credentials, a newer schema, a driver that needs asyncio)
    cannot heal by waiting and ends the worker with a CLIError. Returns False when ``stop``
    is set (SIGTERM) before the store was reached, True once it is connected.
    """
    backoff = Exponential(first, cap=cap, jitter=False)
    attempt = 0
    while True:
        attempt += 1
        unreachable = await _enter(store)
        if unreachable is None:
            return True
        delay = backoff.delay(attempt)
        log(f"{unreachable} (retrying in {delay:g}s)")
        with anyio.move_on_after(delay):
            await stop.wait()
        if stop.is_set():
            return False


def log(message: str) -> None:
    """Print one progress line on stderr, tagged with the process id (workers run side by side)."""
    print(f"anywork[{os.getpid()}]: {message}", file=sys.stderr, flush=True)
