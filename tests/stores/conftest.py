"""Store fixtures: every conformance test runs on each store, on each backend it supports.

The combinations are generated rather than skipped: memory and SQLite run on asyncio and trio,
PostgreSQL and Redis (asyncio-only drivers) on asyncio. Servers default to the local ones and can
be pointed elsewhere with ``ANYWORK_TEST_POSTGRES_URL`` and ``ANYWORK_TEST_REDIS_URL``. The
``redis-cluster`` kind runs on the three-primary cluster ``.ci/redis-cluster start`` brings up
(``ANYWORK_TEST_REDIS_CLUSTER_URL``); without it those tests skip, except under ``CI=true``.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from work.stores import Store, open_store

POSTGRES_URL = os.environ.get(
    "ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ANYWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_CLUSTER_URL = os.environ.get(
    "ANYWORK_TEST_REDIS_CLUSTER_URL", "redis+cluster://127.0.0.1:7001"
)
_cluster_up: bool | None = None


def require_redis_cluster() -> str:
    """Return the test cluster's URL; skip the test when no cluster answers there (fail
    under ``CI=true``, where ``.ci/run`` starts one)."""
    global _cluster_up
    if _cluster_up is None:
        import redis
        from redis.exceptions import RedisError

        parts = urlsplit(REDIS_CLUSTER_URL)
        try:
            client = redis.Redis(
                host=parts.hostname or "127.0.0.1", port=parts.port or 7001, socket_timeout=2
            )
            with client:
                info = client.cluster("info")
            _cluster_up = b"cluster_state:ok" in (
                info if isinstance(info, bytes) else str(info).encode()
            ) or (isinstance(info, dict) and info.get("cluster_state") == "ok")
        except (RedisError, OSError):
            _cluster_up = False
    if not _cluster_up:
        reason = f"no Redis Cluster at {REDIS_CLUSTER_URL} (run .ci/redis-cluster start)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_CLUSTER_URL


def is_redis(kind: str) -> bool:
    """True for the Redis kinds (a single server or the cluster)."""
    return kind in ("redis", "redis-cluster")


# PostgreSQL through PgBouncer in transaction pooling mode (.ci/pgbouncer start).
PGBOUNCER_URL = os.environ.get(
    "ANYWORK_TEST_PGBOUNCER_URL", "postgresql://postgres@127.0.0.1:6432/test"
)

STORE_BACKENDS = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    pytest.param(("sqlite", "trio"), id="sqlite-trio"),
    pytest.param(("postgresql", "asyncio"), id="postgresql-asyncio"),
    pytest.param(("postgresql-pgbouncer", "asyncio"), id="postgresql-pgbouncer-asyncio"),
    pytest.param(("redis", "asyncio"), id="redis-asyncio"),
    pytest.param(("redis-cluster", "asyncio"), id="redis-cluster-asyncio"),
]


def require_pgbouncer() -> str:
    """Return the PgBouncer URL (without ``?listen=false``) if PgBouncer answers there; skip
    the test if not, except in CI (``CI=true``), where its absence fails the test."""
    if "error" not in _PGBOUNCER_STATE:
        parts = urlsplit(PGBOUNCER_URL)
        try:
            socket.create_connection((parts.hostname, parts.port or 5432), timeout=5).close()
            _PGBOUNCER_STATE["error"] = ""
        except OSError as exc:
            _PGBOUNCER_STATE["error"] = f"{type(exc).__name__}: {exc}"
    error = _PGBOUNCER_STATE["error"]
    if error:
        reason = f"PgBouncer does not answer at {PGBOUNCER_URL} ({error}): run .ci/pgbouncer start"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PGBOUNCER_URL


_PGBOUNCER_STATE: dict[str, str] = {}


@pytest.fixture(scope="session")
def pgbouncer_url() -> str:
    """The URL of PostgreSQL through PgBouncer in transaction pooling mode, without
    ``?listen=false`` (skipped if PgBouncer does not answer, failed in CI)."""
    return require_pgbouncer()


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
    """The store kind of the current combination: memory, sqlite, postgresql,
    postgresql-pgbouncer, redis or redis-cluster."""
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
    if store_kind == "redis-cluster":
        return require_redis_cluster()
    if store_kind == "postgresql-pgbouncer":
        # Polling often keeps the suite quick; test_postgres_pgbouncer.py checks the default.
        return require_pgbouncer() + "?listen=false&poll_interval=0.05"
    return REDIS_URL


@pytest.fixture
def store_options(store_kind: str) -> dict[str, Any]:
    """Options that give this test a namespace of its own in a shared server."""
    tag = uuid.uuid4().hex[:12]
    if store_kind.startswith("postgresql"):
        return {"schema": f"anywork_test_{tag}"}
    if is_redis(store_kind):
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


async def corrupt_args(store: Store, id: str, raw: str = "{not json") -> None:
    """Overwrite a job's stored args with ``raw`` directly in the backend (what a buggy or
    foreign writer might leave), bypassing the store's own checks."""
    from work.stores.memory import MemoryStore
    from work.stores.postgres import PostgresStore
    from work.stores.redis import RedisStore
    from work.stores.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        store._rows[id].args_json = raw
    elif isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path, timeout=10) as conn:
            conn.execute("UPDATE anywork_jobs SET args = ? WHERE id = ?", (raw, id))
        conn.close()
    elif isinstance(store, PostgresStore):
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'UPDATE "{store.schema}".jobs SET args = $2 WHERE id = $1', id, raw)
        finally:
            await conn.close()
    elif isinstance(store, RedisStore):
        await store._require().hset(store._key("job", id), "args", raw)
    else:
        pytest.fail(f"no way to corrupt a job in {type(store).__name__}")


@pytest.fixture
def corrupt() -> Callable[[Store, str], Awaitable[None]]:
    """Write an undecodable payload into a job's stored args, directly in the backend."""
    return corrupt_args


async def poison_record(store: Store, id: str) -> None:
    """Break a job's stored record directly in the backend so that it cannot be decoded into
    a JobRecord (a time out of range, a broken field), as a foreign writer might."""
    from work.stores.memory import MemoryStore
    from work.stores.postgres import PostgresStore
    from work.stores.redis import RedisStore
    from work.stores.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        # Rows are Python objects: only the JSON payload can be broken.
        store._rows[id].args_json = "{not json"
    elif isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path, timeout=10) as conn:
            conn.execute("UPDATE anywork_jobs SET enqueued_at = 1e300 WHERE id = ?", (id,))
        conn.close()
    elif isinstance(store, PostgresStore):
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(
                f"UPDATE \"{store.schema}\".jobs SET enqueued_at = '-infinity' WHERE id = $1", id
            )
        finally:
            await conn.close()
    elif isinstance(store, RedisStore):
        await store._require().hset(store._key("job", id), "enqueued_at", "not-a-time")
    else:
        pytest.fail(f"no way to poison a job in {type(store).__name__}")


@pytest.fixture
def poison() -> Callable[[Store, str], Awaitable[None]]:
    """Break a job's stored record directly in the backend (see ``poison_record``)."""
    return poison_record
