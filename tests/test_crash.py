"""Crash test: worker processes SIGKILLed mid-run lose no job, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import work
from work import Job, JobState, RetryPolicy, SyncQueue

REPO = Path(work.__file__).resolve().parents[1]
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
JOBS = 2000
CONCURRENCY = 8
WORKERS = 3
KILLS = 4
LEASE = 2

# The handler appends its job id to a file opened with O_APPEND: each line is one write(2) of
# a few bytes, atomic and on disk (in the page cache) before the process can be killed.
CRASH_MODULE = """
from __future__ import annotations

import os

import anyio

from work import Job, Worker

RUNS = os.open(os.environ["CRASH_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
worker = Worker(max_concurrency={concurrency}, shutdown_grace=2.0)


@worker.handler()
async def record(job: Job) -> None:
    os.write(RUNS, f"{{job.id}}\\n".encode())
    await anyio.sleep(0.005)
"""


class Cluster:
    """A set of ``anywork worker`` processes on one store, output collected in files."""

    def __init__(self, workdir: Path, store_args: list[str]) -> None:
        self.workdir = workdir
        self.store_args = store_args
        self.runs = workdir / "runs.log"
        (workdir / "crashtasks.py").write_text(CRASH_MODULE.format(concurrency=CONCURRENCY))
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "CRASH_RUNS": str(self.runs)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen[bytes]:
        """Start one more worker process."""
        log = self.workdir / f"worker-{len(self.procs)}.log"
        cmd = [sys.executable, "-m", "work.cli", "worker", "crashtasks:worker", *self.store_args]
        cmd += ["--concurrency", str(CONCURRENCY), "--lease", str(LEASE)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes still running, oldest first."""
        return [p for p in self.procs if p.poll() is None]

    def serving(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once ``proc`` has printed its startup line."""
        return "serving" in self.logs[self.procs.index(proc)].read_text()

    def output(self) -> str:
        """Everything every worker printed."""
        return "\n".join(log.read_text() for log in self.logs)

    def kill_all(self) -> None:
        """SIGKILL whatever still runs."""
        for proc in self.alive():
            proc.kill()
            proc.wait(timeout=10)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def succeeded(queue: SyncQueue) -> int:
    """How many jobs of the default queue have succeeded."""
    return int(queue.stats().get("default", {}).get("succeeded", 0))


def crash_run(cluster: Cluster, queue: SyncQueue) -> None:
    """Enqueue JOBS jobs, SIGKILL a worker KILLS times mid-run (starting a new one each time),
    then check that every job succeeded, and report and bound the duplicate runs."""
    started = time.monotonic()
    for _ in range(WORKERS):
        cluster.start()
    policy = RetryPolicy(max_attempts=KILLS + 5)
    jobs = [Job("record", {"n": n}) for n in range(JOBS)]
    for i in range(0, JOBS, 500):
        queue.enqueue_many(jobs[i : i + 500], retry=policy)

    running_at_kill: list[int] = []
    for kill in range(KILLS):
        # Spread the kills over the run: the k-th once (k+1)/(KILLS+2) of the jobs are done.
        goal = JOBS * (kill + 1) // (KILLS + 2)
        wait_until(lambda goal=goal: succeeded(queue) >= goal, 40, f"{goal} jobs done")
        victim = next(p for p in cluster.alive() if cluster.serving(p))
        running_at_kill.append(int(queue.stats().get("default", {}).get("running", 0)))
        victim.kill()
        victim.wait(timeout=10)
        cluster.start()

    wait_until(lambda: succeeded(queue) == JOBS, 45, "all jobs to succeed")
    elapsed = time.monotonic() - started
    alive = cluster.alive()
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(timeout=30) for proc in alive]

    records = {r.id: r for r in _all_records(queue)}
    runs = Counter(cluster.runs.read_text().split())
    duplicates = sum(n - 1 for n in runs.values() if n > 1)
    print(
        f"\ncrash test on {queue.store.url}: {JOBS} jobs, {KILLS} kills (jobs RUNNING in the "
        f"store at each kill: {running_at_kill}), {len(cluster.procs)} worker processes, "
        f"{elapsed:.1f}s; runs {sum(runs.values())}, jobs run more than once "
        f"{sum(1 for n in runs.values() if n > 1)}, duplicate runs {duplicates}"
    )
    assert codes == [0] * WORKERS, cluster.output()
    assert len(records) == JOBS
    assert {r.state for r in records.values()} == {JobState.SUCCEEDED}
    assert set(runs) == set(records), "a job succeeded without its handler recording a run"
    # Only a job in flight in a killed process can run twice: at most its concurrency each.
    assert duplicates <= KILLS * CONCURRENCY
    assert all(r.attempts >= 1 for r in records.values())


def _all_records(queue: SyncQueue) -> Iterator[Any]:
    after = None
    while True:
        page = queue.list(queue="default", limit=500, after=after)
        yield from page
        if len(page) < 500:
            return
        after = page[-1].id


@pytest.mark.timeout(90)
def test_sqlite_workers_killed_mid_run_lose_no_job(tmp_path: Path) -> None:
    """SQLite: SIGKILLed workers' jobs are re-delivered after their lease; all 2,000 succeed."""
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    cluster = Cluster(tmp_path, ["--store", url])
    try:
        with SyncQueue(url) as queue:
            crash_run(cluster, queue)
    finally:
        cluster.kill_all()


async def _drop_schema(schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.mark.timeout(90)
def test_postgres_workers_killed_mid_run_lose_no_job(tmp_path: Path) -> None:
    """PostgreSQL (its own schema): SIGKILLed workers lose no job; all 2,000 succeed."""
    pytest.importorskip("asyncpg")
    schema = f"crash_{uuid.uuid4().hex[:12]}"
    cluster = Cluster(tmp_path, ["--store", PG_URL, "--store-option", f"schema={schema}"])
    try:
        with SyncQueue(PG_URL, schema=schema) as queue:
            crash_run(cluster, queue)
    finally:
        cluster.kill_all()
        anyio.run(_drop_schema, schema)
