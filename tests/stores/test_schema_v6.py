"""Schema version 6: a version 5 store upgrades with its jobs kept, and the listing, counting
and per-minute queries are served by indexes."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from work.stores import JobState
from work.stores.postgres import PostgresStore
from work.stores.sqlite import _MIGRATIONS, SQLiteStore

URL = os.environ.get("ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only; SQLite's threads are the same on both backends."""
    return "asyncio"


def _sqlite_v5(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE anywork_schema_version (version INTEGER NOT NULL)")
        for version, statements in enumerate(_MIGRATIONS[:5], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO anywork_schema_version VALUES (?)", (version,))
        for i in range(6):
            state = "succeeded" if i % 2 else "queued"
            conn.execute(
                "INSERT INTO anywork_jobs (id, handler, queue, args, headers, priority, state,"
                " status, attempts, max_attempts, enqueued_at, due_at, finished_at)"
                " VALUES (?, 'h', 'q', ?, '{}', 0, ?, -1, 0, 1, 1.0, 1.0, ?)",
                (f"old{i}", f'{{"n": {i % 3}}}', state, 2.0 if i % 2 else None),
            )
    finally:
        conn.close()


async def test_sqlite_version_5_upgrades_with_its_jobs(tmp_path: Path) -> None:
    """A version 5 file gains the version 6 indexes; its jobs are kept, listed and counted."""
    path = tmp_path / "v5.db"
    _sqlite_v5(path)
    async with SQLiteStore(f"sqlite:///{path}") as store:
        assert await store.stats() == {"q": {"queued": 3, "succeeded": 3}}
        assert [r.id for r in await store.list(args={"n": 0})] == ["old0", "old3"]
        page = await store.list(state=JobState.SUCCEEDED, limit=2)
        assert [r.id for r in page] == ["old1", "old3"]
    conn = sqlite3.connect(path)
    try:
        assert [v for (v,) in conn.execute("SELECT version FROM anywork_schema_version")] == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]

        def plan(sql: str) -> str:
            return " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))

        select = "SELECT * FROM anywork_jobs"
        assert "anywork_jobs_state" in plan(f"{select} WHERE state = 'failed' ORDER BY seq")
        assert "anywork_jobs_handler" in plan(f"{select} WHERE handler = 'h' ORDER BY seq")
        counts = plan("SELECT queue, state, COUNT(*) FROM anywork_jobs GROUP BY queue, state")
        assert "COVERING INDEX anywork_jobs_queue_state" in counts
        # No temporary b-tree: each page is read in enqueue order straight off an index.
        assert "TEMP B-TREE" not in plan(f"{select} WHERE state = 'succeeded' ORDER BY seq")
        # Deadlines: a partial index of WAITING jobs replaces version 4's over every job.
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "anywork_jobs_waiting" in indexes and "anywork_jobs_deadline" not in indexes
    finally:
        conn.close()


async def test_postgres_version_5_upgrades_with_its_jobs_and_counts() -> None:
    """A version 5 schema gains the GIN args index, listing indexes and the counts table
    (filled from the jobs it holds); stats then follow the triggers."""
    from work.stores import postgres as pg

    schema = f"anywork_pgtest_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(URL, schema=schema)
    s = f'"{schema}"'
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(f"CREATE TABLE {s}.schema_version (version integer NOT NULL)")
        steps = [
            pg._migration_v1(s, store._channel),
            pg._migration_v2(s),
            pg._migration_v3(s, store._events_channel),
            pg._migration_v4(s),
            pg._migration_v5(s),
        ]
        for version, statements in enumerate(steps, start=1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(f"INSERT INTO {s}.schema_version VALUES ({version})")
        for i in range(6):
            await conn.execute(
                f"INSERT INTO {s}.jobs (id, handler, queue, args, state, enqueued_at)"
                " VALUES ($1, 'h', 'q', $2, $3, now())",
                f"old{i}",
                f'{{"n": {i % 3}}}',
                "succeeded" if i % 2 else "queued",
            )
        async with store:
            assert await store.stats() == {"q": {"queued": 3, "succeeded": 3}}
            assert [r.id for r in await store.list(args={"n": 0})] == ["old0", "old3"]
            await store.cancel("old0")
            assert await store.stats() == {"q": {"queued": 2, "succeeded": 3, "cancelled": 1}}
            versions = await conn.fetch(f"SELECT version FROM {s}.schema_version")
            assert [row["version"] for row in versions] == [1, 2, 3, 4, 5, 6, 7, 8]
            # The planner takes the GIN index for an args filter once the table is not tiny.
            await conn.execute(
                f"INSERT INTO {s}.jobs (id, handler, queue, args, state, enqueued_at)"
                " SELECT 'bulk' || g, 'h', 'q', json_build_object('n', g)::text, 'succeeded',"
                " now() FROM generate_series(1, 20000) g"
            )
            await conn.execute(f"ANALYZE {s}.jobs")
            assert await store.stats() == {"q": {"queued": 2, "succeeded": 20003, "cancelled": 1}}
            plan = "\n".join(
                row[0]
                for row in await conn.fetch(
                    f"EXPLAIN SELECT * FROM {s}.jobs WHERE {s}.jobs_args(args) @> $1::jsonb"
                    " ORDER BY seq LIMIT 50",
                    '{"n": 777}',
                )
            )
            assert "jobs_args" in plan and "Bitmap Index Scan" in plan
            with anyio.fail_after(5):
                assert [r.id for r in await store.list(args={"n": 777})] == ["bulk777"]
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await conn.close()
