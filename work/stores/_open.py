"""``open_store``: pick the store implementation from a URL's scheme."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._base import Store

__all__ = ["SCHEMES", "mask_url", "open_store"]

# The driver each store module imports, and the extra that installs it.
_DRIVERS: dict[str, tuple[str, str]] = {
    "work.stores.postgres": ("asyncpg", "postgres"),
    "work.stores.redis": ("redis", "redis"),
}

# The stores that take a `clock` option (a VirtualClock in tests).
_CLOCKED = frozenset({"MemoryStore", "SQLiteStore"})

# scheme -> (module, class); imported only when used, so a driver is needed only for its store.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("work.stores.memory", "MemoryStore"),
    "sqlite": ("work.stores.sqlite", "SQLiteStore"),
    "postgresql": ("work.stores.postgres", "PostgresStore"),
    "postgres": ("work.stores.postgres", "PostgresStore"),
    "redis": ("work.stores.redis", "RedisStore"),
    "rediss": ("work.stores.redis", "RedisStore"),
    "redis+cluster": ("work.stores.redis", "RedisStore"),
    "rediss+cluster": ("work.stores.redis", "RedisStore"),
}


def mask_url(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``.

    Args:
        url: a store URL such as ``postgresql://user:secret@host/db``.

    Returns:
        The URL safe to print or log (``postgresql://user:***@host/db``).
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def open_store(url: str, **options: Any) -> Store:
    """Return the store for ``url`` (not yet connected: use ``async with store:``).

    URLs: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
    ``postgresql://user@host:port/db``, ``redis://host:port/db``,
    ``redis+cluster://host:port`` (any node of a Redis Cluster). ``options`` go to the
    store's constructor (see each store's docs); ``clock`` (a
    :class:`work.testing.VirtualClock`) is taken by the memory and SQLite stores only.

    Raises:
        ValueError: the URL has no scheme, or one no store handles (the message lists them);
            a ``clock`` for a store other than memory and SQLite.
        TypeError: ``url`` is not a str.
        ImportError: the store's driver is not installed (the message names the extra:
            ``pip install 'anywork[postgres]'``).
    """
    if not isinstance(url, str):
        raise TypeError(f"a store URL must be a str, got {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ValueError(f"unknown store URL scheme in {mask_url(url)!r}; known schemes: {known}")
    module_name, class_name = SCHEMES[scheme]
    if options.get("clock") is not None and class_name not in _CLOCKED:
        raise ValueError(
            f"the {scheme}:// store cannot run on a clock other than the system's (a "
            f"VirtualClock works with memory:// and sqlite:// only)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        driver, extra = _DRIVERS.get(module_name, ("", ""))
        if not driver or (exc.name or "").partition(".")[0] != driver:
            raise
        raise ImportError(
            f"the {scheme}:// store needs {driver}, which is not installed: "
            f"pip install 'anywork[{extra}]'",
            name=driver,
        ) from exc
    store: Store = getattr(module, class_name)(url, **options)
    return store
