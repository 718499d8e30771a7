"""Store fixtures: every conformance test runs on each store, on each backend it supports.

The combinations are generated rather than skipped: memory and SQLite run on asyncio and trio,
PostgreSQL and Redis (asyncio-only drivers) on asyncio. Servers default to the local ones and can
be pointed elsewhere with ``ANYWORK_TEST_POSTGRES_URL`` and ``ANYWORK_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from work.stores import Store, open_store

POSTGRES_URL = os.environ.get(
    "ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ANYWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

STORE_BACKENDS = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    pytest.param(("sqlite", "trio"), id="sqlite-trio"),
    pytest.param(("postgresql", "asyncio"), id="postgresql-asyncio"),
    pytest.param(("redis", "asyncio"), id="redis-asyncio"),
]


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """One (store kind, anyio backend) combination."""
    kind, backend = request.param
    return str(kind), str(backend)


@pytest.fixture
def anyio_backend(store_backend: tuple[str, str]) -> str:
    """The anyio backend of the current combination (overrides the root fixture here)."""
    return store_backend[1]


@pytest.fixture
def store_kind(store_backend: tuple[str, str]) -> str:
    """The store kind of the current combination: memory, sqlite, postgresql or redis."""
    return store_backend[0]


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path) -> str:
    """A URL for a fresh store of the current kind (a new SQLite file per test)."""
    if store_kind == "memory":
        return "memory://"
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    if store_kind == "postgresql":
        return POSTGRES_URL
    return REDIS_URL


@pytest.fixture
def store_options(store_kind: str) -> dict[str, Any]:
    """Options that give this test a namespace of its own in a shared server."""
    tag = uuid.uuid4().hex[:12]
    if store_kind == "postgresql":
        return {"schema": f"anywork_test_{tag}"}
    if store_kind == "redis":
        return {"prefix": f"anywork-test-{tag}:"}
    return {}


@pytest.fixture
def make_store(store_url: str, store_options: dict[str, Any]) -> Callable[[], Store]:
    """Build another (not yet entered) store on the same data as ``store``: a second process's
    view for SQLite, PostgreSQL and Redis; for memory, the data lives in one object, so the
    same object is returned."""
    shared: list[Store] = []

    def build() -> Store:
        if store_url.startswith("memory") and shared:
            return shared[0]
        new = open_store(store_url, **store_options)
        shared.append(new)
        return new

    return build


@pytest.fixture
async def store(
    make_store: Callable[[], Store], store_kind: str, store_options: dict[str, Any]
) -> AsyncIterator[Store]:
    """An entered store of the current kind, empty, removed again after the test."""
    new = make_store()
    try:
        async with new:
            yield new
    finally:
        await _drop(new, store_kind, store_options)


async def _drop(store: Store, kind: str, options: dict[str, Any]) -> None:
    drop = getattr(store, "drop", None)
    if drop is not None:
        await drop()
    elif kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{options['prefix']}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
def corrupt() -> Callable[[Store, str], Awaitable[None]]:
    """Write an undecodable payload into a job's stored args, directly in the backend."""

    async def corrupt_args(store: Store, id: str) -> None:
        seam = getattr(store, "corrupt_args", None)
        if seam is None:
            pytest.fail(f"{type(store).__name__} needs a corrupt_args(id) test seam")
        await seam(id)

    return corrupt_args
