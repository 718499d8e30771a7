"""Crash test: a chord of 200 members while worker processes are SIGKILLed, on SQLite,
PostgreSQL and Redis: the callback runs exactly once, with every member's result in order.

Two ``anywork worker`` processes (concurrency 8, a 2 s lease) run the members; four times, while
members are finishing, one of them is SIGKILLed and replaced. The members it held are reaped
when their lease expires and run again; each member's end is fenced by its owner token, so
only one completion applies, and the chord's counter is decremented in the same transaction.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.stores.conftest import POSTGRES_URL, REDIS_URL
from tests.test_crash import REPO, wait_until
from work import Job, SyncQueue
from work.workflows import Chord, WorkflowState

MEMBERS = 200
KILLS = 4
TASKS = """
from __future__ import annotations

import json
import os

import anyio

from work import Job, Worker

RUNS = os.open(os.environ["CRASH_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
worker = Worker(max_concurrency=8, shutdown_grace=1.0)


@worker.handler()
async def member(job: Job) -> int:
    await anyio.sleep(0.05)
    os.write(RUNS, f"m {job.id}\\n".encode())
    return int(job.args["n"])


@worker.handler()
async def callback(job: Job) -> int:
    os.write(RUNS, f"c {json.dumps(job.args['input'])}\\n".encode())
    return sum(job.args["input"])
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _run(tmp_path: Path, url: str, options: list[str]) -> None:
    runs = tmp_path / "runs.log"
    (tmp_path / "wftasks.py").write_text(TASKS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CRASH_RUNS": str(runs)}
    cmd = [sys.executable, "-m", "work.cli", "worker", "wftasks:worker", "--store", url]
    cmd += [*options, "--concurrency", "8", "--lease", "2", "--lost-limit", "100"]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log))
        log.close()

    store_options = dict(o.split("=", 1) for o in options[1::2])
    try:
        with SyncQueue(url, **store_options) as queue:
            chord = Chord([Job("member", {"n": n}) for n in range(MEMBERS)], Job("callback"))
            rec = queue.enqueue(chord)
            start()
            start()
            rng = random.Random(7)
            for k in range(KILLS):
                # Kill at spread-out points while members are still finishing.
                goal = (k + 1) * MEMBERS // (KILLS + 2)

                def reached(goal: int = goal) -> bool:
                    return sum(1 for x in _lines(runs) if x[0] == "m") >= goal

                wait_until(reached, 60, f"{goal} member runs")
                victim = rng.choice([p for p in procs if p.poll() is None])
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(timeout=10)
                start()
            done = queue.wait_workflow(rec.id, timeout=90)
        assert done.state is WorkflowState.SUCCEEDED, (done, _logs(tmp_path))
        callbacks = [x for x in _lines(runs) if x[0] == "c"]
        assert len(callbacks) == 1, callbacks
        assert json.loads(callbacks[0][2:]) == list(range(MEMBERS))
        assert done.result == sum(range(MEMBERS))
        members = {x[2:] for x in _lines(runs) if x[0] == "m"}
        assert len(members) == MEMBERS
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("worker-*.log")))


@pytest.mark.timeout(180)
def test_sqlite_chord_survives_killed_workers(tmp_path: Path) -> None:
    """SQLite: 200 members, 4 SIGKILLed workers: the callback runs once with every result."""
    _run(tmp_path, f"sqlite:///{tmp_path / 'wf.db'}", [])


@pytest.mark.timeout(180)
def test_postgres_chord_survives_killed_workers(tmp_path: Path) -> None:
    """PostgreSQL: 200 members, 4 SIGKILLed workers: the callback runs once with every
    result."""
    schema = f"anywork_wfcrash_{uuid.uuid4().hex[:10]}"
    try:
        _run(tmp_path, POSTGRES_URL, ["--store-option", f"schema={schema}"])
    finally:
        import anyio
        import asyncpg  # type: ignore[import-untyped]

        async def drop() -> None:
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        anyio.run(drop)


@pytest.mark.timeout(180)
def test_redis_chord_survives_killed_workers(tmp_path: Path) -> None:
    """Redis: 200 members, 4 SIGKILLed workers: the callback runs once with every result."""
    prefix = f"anywork-wfcrash-{uuid.uuid4().hex[:10]}"
    try:
        _run(tmp_path, REDIS_URL, ["--store-option", f"prefix={prefix}"])
    finally:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{{{prefix}}}:*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
