"""A PostgreSQL store made before workflow retry and retention (no ``jobs_workflow_retry`` or
``jobs_workflow_purge`` trigger, no ``workflow_apply``) gets them when a newer anywork opens it,
without a schema version change."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest

from work import Job, JobState, Queue
from work.stores.postgres import SCHEMA_VERSION, PostgresStore
from work.workflows import Chain, WorkflowState

URL = os.environ.get("ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only."""
    return "asyncio"


async def test_an_older_store_gets_the_new_triggers_when_opened() -> None:
    """With the new triggers and function dropped (as in a store of the previous release),
    opening the store again creates them: a retried failed step resumes its workflow and a
    purge deletes the finished workflow."""
    schema = f"anywork_pgtest_{uuid.uuid4().hex[:12]}"
    s = f'"{schema}"'
    first = PostgresStore(URL, schema=schema)
    try:
        async with first:
            for trigger in ("jobs_workflow_retry", "jobs_workflow_purge"):
                await first._pool.execute(f"DROP TRIGGER {trigger} ON {s}.jobs")
            await first._pool.execute(f"DROP FUNCTION {s}.workflow_step_retried() CASCADE")
            version = await first._pool.fetchval(f"SELECT max(version) FROM {s}.schema_version")
        assert version == SCHEMA_VERSION
        async with PostgresStore(URL, schema=schema) as store:
            queue = Queue(store)
            rec = await queue.enqueue(Chain(Job("a"), Job("b")))
            await store._pool.execute(
                f"UPDATE {s}.jobs SET state = 'failed', status = 500, error = 'x',"
                " finished_at = now() WHERE id = $1",
                rec.jobs[0],
            )
            failed = await queue.get_workflow(rec.id)
            assert failed is not None and failed.state is WorkflowState.FAILED
            await queue.retry(rec.jobs[0])
            resumed = await queue.get_workflow(rec.id)
            assert resumed is not None and resumed.state is WorkflowState.RUNNING
            await queue.cancel_workflow(rec.id)
            far = datetime(2999, 1, 1, tzinfo=UTC)
            assert await store.purge(older_than=far, states=[JobState.CANCELLED]) == 1
            assert await queue.get_workflow(rec.id) is None
    finally:
        await first.drop()
