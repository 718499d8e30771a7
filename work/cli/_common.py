"""What every ``anywork`` command shares: the one-line error, opening and connecting a store."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import anyio

from .._core.retry import Exponential
from .._core.validate import INT_MAX, MAX_AHEAD
from ..stores import Store, StoreAuthenticationError, mask_url, open_store

__all__ = [
    "CLIError",
    "connect_patiently",
    "connected",
    "entered",
    "int_arg",
    "log",
    "open_store_of",
    "seconds_arg",
]

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


def seconds_arg(
    *, positive: bool, high: float = MAX_AHEAD.total_seconds()
) -> Callable[[str], float]:
    """An argparse type for a finite number of seconds, > 0 (``positive``) or >= 0, at most
    ``high`` (default: about 100 years, as far ahead as a store keeps a time).

    NaN and infinities are refused: ``float("nan")`` passes every ``<`` check.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:.0f} seconds, got {text!r}")
        return value

    parse.__name__ = "seconds"  # argparse names the type in its own messages
    return parse


def int_arg(low: int, high: int = INT_MAX) -> Callable[[str], int]:
    """An argparse type for an int within ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {low} to {high}, got {text!r}"
            )
        return value

    parse.__name__ = "int"
    return parse


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
        # open_store names the extra to install ("pip install 'anywork[postgres]'").
        raise CLIError(f"cannot open {mask_url(ns.store)}: {exc}", 2) from None


@contextlib.asynccontextmanager
async def connected(store: _S, *, create: bool = True) -> AsyncIterator[_S]:
    """Connect ``store`` for the block, turning a failure to connect into a one-line CLIError.

    With ``create=False`` (read-only commands) a URL that names no existing store is a
    CLIError (exit 1) and nothing is created: no empty SQLite file, no schema, no key.
    """
    if not create:
        await _require_existing(store)
    unreachable = await _enter(store)
    if unreachable is not None:
        raise CLIError(unreachable)
    async with entered(store):
        yield store


async def _require_existing(store: Store) -> None:
    """Raise CLIError unless ``store`` already exists (stores without ``exists()`` always do)."""
    exists = getattr(store, "exists", None)
    if exists is None:
        return
    try:
        found = await exists()
    except (OSError, ConnectionError) as exc:
        raise CLIError(f"cannot connect to {store.url}: {exc}") from None
    except StoreAuthenticationError as exc:
        raise CLIError(f"cannot open {store.url}: {exc}") from None
    except Exception as exc:
        raise CLIError(f"cannot open {store.url}: {type(exc).__name__}: {exc}") from None
    if not found:
        raise CLIError(
            f"no anywork store at {store.url} (nothing was created: `anywork enqueue` or "
            f"a worker creates one)"
        )


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
    except StoreAuthenticationError as exc:
        raise CLIError(f"cannot open {store.url}: {exc}") from None
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
