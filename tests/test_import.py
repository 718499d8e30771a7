"""`import work` stays light: no OpenTelemetry, structlog, croniter or prometheus_client."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.stores.conftest import REDIS_URL


def _run(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (nothing imported yet).

    Without coverage: under ``pytest --cov`` coverage measures child processes too (its
    ``patch = ["subprocess"]``, set through the environment), and it imports ``sqlite3`` and
    ``pickle`` for its data file, which are among what these tests check is not loaded.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "COV_CORE_"))}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return done.stdout


def test_import_work_loads_no_optional_library() -> None:
    """A fresh interpreter that imports work (and work.stores) has none of the heavy libraries."""
    code = (
        "import sys, work, work.stores\n"
        "heavy = ('opentelemetry', 'structlog', 'croniter', 'prometheus_client')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    assert _run(code).strip() == "[]"


def test_enqueue_still_injects_the_trace_context() -> None:
    """The lazy OpenTelemetry import still puts the current span's context in the headers."""
    code = (
        "import anyio\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from work import Job, Queue\n"
        "from work.stores.memory import MemoryStore\n"
        "async def main() -> None:\n"
        "    tracer = TracerProvider().get_tracer('t')\n"
        "    async with MemoryStore() as store:\n"
        "        with tracer.start_as_current_span('producer'):\n"
        "            rec = await Queue(store).enqueue(Job('x'))\n"
        "    print('traceparent' in rec.headers)\n"
        "anyio.run(main)\n"
    )
    assert _run(code).strip() == "True"


def test_a_worker_serving_jobs_loads_no_logging_library_until_it_logs() -> None:
    """A worker that serves jobs without trouble never imports structlog (several MB of RSS
    with what structlog pulls in); its first line to log loads it, bound to worker and owner."""
    code = (
        "import sys, anyio\n"
        "from work import Job, Queue, Worker\n"
        "from work.stores.memory import MemoryStore\n"
        "async def main() -> None:\n"
        "    worker = Worker(name='w1')\n"
        "    done = anyio.Event()\n"
        "    worker.register('noop', lambda job: done.set())\n"
        "    async with MemoryStore() as store, worker, anyio.create_task_group() as tg:\n"
        "        await Queue(store).enqueue(Job('noop'))\n"
        "        tg.start_soon(lambda: worker.serve(store, lease=0.2))\n"
        "        await done.wait()\n"
        "        while (await store.stats()).get('default', {}).get('succeeded') != 1:\n"
        "            await anyio.sleep(0.01)\n"
        "        print('structlog' in sys.modules)\n"
        "        from structlog.testing import capture_logs\n"
        "        async def broken(*args: object, **kwargs: object) -> int:\n"
        "            raise RuntimeError('bad statement')\n"
        "        store.reap = broken\n"
        "        with capture_logs() as logs, anyio.fail_after(30):\n"
        "            while not logs:\n"
        "                await anyio.sleep(0.05)\n"
        "        print(logs[0]['event'], logs[0]['worker'], bool(logs[0]['owner']))\n"
        "        worker.stop()\n"
        "anyio.run(main)\n"
    )
    assert _run(code).splitlines() == ["False", "reaping expired leases failed; retrying w1 True"]


def test_a_redis_worker_serving_jobs_loads_no_other_store_nor_pickle() -> None:
    """A worker serving jobs from Redis imports neither the other stores and their drivers
    nor pickle (only ``sync_handlers="process"`` needs it) nor structlog: each is RSS a
    Redis worker, already the heaviest for redis-py's own imports, would carry for nothing."""
    code = (
        "import sys, uuid, anyio\n"
        "from work import Job, Queue, Worker\n"
        "from work.stores import open_store\n"
        "async def main() -> None:\n"
        "    worker = Worker()\n"
        "    done = anyio.Event()\n"
        "    worker.register('noop', lambda job: done.set())\n"
        "    prefix = 'anywork-import-' + uuid.uuid4().hex[:12]\n"
        f"    store = open_store({REDIS_URL!r}, prefix=prefix)\n"
        "    async with store:\n"
        "        try:\n"
        "            async with worker, anyio.create_task_group() as tg:\n"
        "                await Queue(store).enqueue(Job('noop'))\n"
        "                tg.start_soon(lambda: worker.serve(store, lease=5))\n"
        "                with anyio.fail_after(30):\n"
        "                    await done.wait()\n"
        "                    while (await store.stats())['default'].get('succeeded') != 1:\n"
        "                        await anyio.sleep(0.01)\n"
        "                worker.stop()\n"
        "        finally:\n"
        "            await store.drop()\n"
        "    unneeded = ('pickle', 'structlog', 'sqlite3', 'asyncpg', 'work.stores.sqlite',\n"
        "                'work.stores.postgres')\n"
        "    print(sorted(set(unneeded) & set(sys.modules)))\n"
        "anyio.run(main)\n"
    )
    assert _run(code).strip() == "[]"


def test_the_postgres_store_loads_no_psycopg_until_a_blocking_add() -> None:
    """Importing the PostgreSQL store and making one (as a worker does) leaves psycopg, the
    driver of SyncQueue's blocking adds only, unloaded."""
    code = (
        "import sys, work, work.stores\n"
        "from work.stores import open_store\n"
        "from work.stores.postgres import PostgresStore\n"
        "open_store('postgresql://u@127.0.0.1:1/db')\n"
        "PostgresStore('postgresql://u@127.0.0.1:1/db', listen=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))\n"
    )
    assert _run(code).strip() == "[]"
