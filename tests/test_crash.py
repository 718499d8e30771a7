"""Crash test: SIGKILLed workers and a store restart lose no job and fail none, on every
durable store.

10,000 jobs enqueued WITHOUT a RetryPolicy (one attempt each) are run by three ``anywork
worker`` processes; five times a worker is SIGKILLed mid-run (and replaced), and once the store
itself restarts (a private PostgreSQL stopped with ``-m immediate``, a private Redis with AOF
SIGKILLed; SQLite is a file and has no server to restart). Every job must end SUCCEEDED
(losing a worker is not the job's failure), and the duplicate runs are counted and bounded by
the jobs in flight at each kill: the jobs the killed process held RUNNING in the store (read
while it is frozen with SIGSTOP, just before the SIGKILL), plus, for the restart, every job in
flight then (at most workers x concurrency).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

import work
from work import Job, JobState, SyncQueue

REPO = Path(work.__file__).resolve().parents[1]
JOBS = 10_000
CONCURRENCY = 8
WORKERS = 3
KILLS = 5
LEASE = 4  # long enough that a worker starved of CPU on a busy machine keeps its leases
# The restart comes between the third and the fourth kill.
RESTART_AFTER_KILL = 3

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
    await anyio.sleep(0.002)
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- private servers (other tests share 5432 and 6379: a restart must not touch them) ------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of its own, in a temporary directory, run as the postgres user."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        runuser = shutil.which("runuser")
        if initdb is None or pg_ctl is None or runuser is None:
            pytest.skip("a private PostgreSQL needs initdb, pg_ctl and runuser on this machine")
        self.initdb, self.pg_ctl, self.runuser = initdb, pg_ctl, runuser
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="anywork-crash-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(
            [self.runuser, "-u", "postgres", "--", *cmd],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def create(self) -> None:
        """initdb (trust, no fsync) and start the server."""
        self._as_postgres(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")
        self.start()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=100"
        )
        log = str(self.dir / "server.log")
        self._as_postgres(
            self.pg_ctl, "-D", str(self.data), "-l", log, "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: WAL recovery on the next start)."""
        self._as_postgres(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """A crash and a restart."""
        self.stop("immediate")
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs and delete its directory."""
        with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server of its own with AOF (every write fsynced), on a free port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("a private Redis needs redis-server on this machine")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="anywork-crash-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir"]
        cmd += [str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        try:
            wait_until(answers, 20, "the private redis-server")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (what survives is what the AOF holds)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """A crash and a restart."""
        self.kill()
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePgBouncer:
    """A PgBouncer of its own in transaction pooling mode in front of a private PostgreSQL,
    run as the postgres user, stopped by pid."""

    def __init__(self, server: PrivatePostgres) -> None:
        binary = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
        )
        if binary is None:
            reason = (
                "a private PgBouncer needs pgbouncer on this machine (.ci/pgbouncer installs it)"
            )
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        self.binary = binary
        self.server = server
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="anywork-crash-pgbouncer-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?listen=false"

    def start(self) -> None:
        """Write the config, start it and wait until it answers."""
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            f"[databases]\npostgres = host=127.0.0.1 port={self.server.port} dbname=postgres"
            f" user=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}"
            f"\nunix_socket_dir =\nauth_type = any\npool_mode = transaction\n"
            f"max_client_conn = 200\ndefault_pool_size = 20\nserver_login_retry = 1\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        self.server._as_postgres(self.binary, "-d", str(config))

        def answers() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(answers, 20, "the private pgbouncer")

    def remove(self) -> None:
        """Stop it by its pid and delete its directory."""
        with suppress(OSError, ValueError):
            os.kill(int((self.dir / "pgbouncer.pid").read_text()), signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- counting a process's RUNNING jobs in each store -------------------------------------------


def _owned_by(pid: int) -> str:
    # serve's owner token is "name@host:pid:random".
    return f"%:{pid}:%"


def sqlite_running_of(path: Path) -> Callable[[int], int]:
    """How many jobs process ``pid`` holds RUNNING in the SQLite file."""
    import sqlite3

    def count(pid: int) -> int:
        conn = sqlite3.connect(path, timeout=30)
        try:
            row = conn.execute(
                "SELECT count(*) FROM anywork_jobs WHERE state = 'running' AND owner LIKE ?",
                (_owned_by(pid),),
            ).fetchone()
            return int(row[0])
        finally:
            conn.close()

    return count


def postgres_running_of(url: str, schema: str) -> Callable[[int], int]:
    """How many jobs process ``pid`` holds RUNNING in the PostgreSQL schema."""

    async def query(pid: int) -> int:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(url)
        try:
            return int(
                await conn.fetchval(
                    f"SELECT count(*) FROM \"{schema}\".jobs WHERE state = 'running'"
                    " AND owner LIKE $1",
                    _owned_by(pid),
                )
            )
        finally:
            await conn.close()

    def count(pid: int) -> int:
        return anyio.run(query, pid)

    return count


def redis_running_of(url: str, prefix: str) -> Callable[[int], int]:
    """How many jobs process ``pid`` holds RUNNING in the Redis keys under ``prefix`` (a
    single server, or a cluster for a ``redis+cluster://`` URL)."""

    def count(pid: int) -> int:
        import redis
        from redis.cluster import RedisCluster

        client: Any = (
            RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1))
            if url.startswith("redis+cluster://")
            else redis.Redis.from_url(url)
        )
        try:
            ids = cast("list[bytes]", client.zrange(f"{{{prefix}}}:running", 0, -1))
            n = 0
            for id in ids:
                state, owner = cast(
                    "list[bytes | None]",
                    client.hmget(f"{{{prefix}}}:job:{id.decode()}", "state", "owner"),
                )
                if state == b"running" and owner and f":{pid}:".encode() in owner:
                    n += 1
            return n
        finally:
            client.close()

    return count


# -- the run ------------------------------------------------------------------------------------


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


def _count(queue: SyncQueue, state: str) -> int:
    """How many jobs of the default queue are in ``state`` (-1 while the store is down)."""
    try:
        return int(queue.stats().get("default", {}).get(state, 0))
    except Exception:  # the store is restarting: try again on the next poll
        return -1


def _at_least(queue: SyncQueue, goal: int) -> bool:
    return _count(queue, "succeeded") >= goal


@dataclass
class Figures:
    """What one crash run measured."""

    store: str
    elapsed: float = 0.0
    in_flight_at_kills: list[int] = field(default_factory=list)
    running_at_restart: int | None = None
    runs: int = 0
    run_twice: int = 0
    duplicates: int = 0
    failed: int = 0
    lost: int = 0

    @property
    def bound(self) -> int:
        """The most duplicate runs the kills and the restart can explain."""
        restart = 0
        if self.running_at_restart is not None:
            # Claims may land between the count and the stop: at most every slot's worth.
            restart = max(self.running_at_restart, WORKERS * CONCURRENCY)
        return sum(self.in_flight_at_kills) + restart

    def line(self) -> str:
        """One line for the test output and docs/stores.md."""
        restart = (
            "no restart"
            if self.running_at_restart is None
            else f"restart with {self.running_at_restart} RUNNING"
        )
        return (
            f"{self.store}: {JOBS} jobs, {KILLS} kills (jobs held by the killed process: "
            f"{self.in_flight_at_kills}), {restart}, {self.elapsed:.0f} s: lost {self.lost}, "
            f"failed {self.failed}, duplicate runs {self.duplicates} (jobs run twice "
            f"{self.run_twice}) <= bound {self.bound}"
        )


def crash_run(
    cluster: Cluster,
    queue: SyncQueue,
    running_of: Callable[[int], int],
    restart: Callable[[], None] | None,
    name: str,
) -> Figures:
    """Enqueue JOBS jobs without a RetryPolicy, SIGKILL a worker KILLS times mid-run (a new
    one started each time), restart the store once (if ``restart``), then check that every
    job succeeded, and report and bound the duplicate runs."""
    figures = Figures(name)
    started = time.monotonic()
    jobs = [Job("record", {"n": n}) for n in range(JOBS)]
    for i in range(0, JOBS, 1000):
        queue.enqueue_many(jobs[i : i + 1000])
    for _ in range(WORKERS):
        cluster.start()

    events = KILLS + (1 if restart is not None else 0)
    for step in range(events):
        # Spread the kills (and the restart) over the run.
        goal = JOBS * (step + 1) // (events + 2)
        wait_until(functools.partial(_at_least, queue, goal), 60, f"{goal} jobs done")
        if restart is not None and step == RESTART_AFTER_KILL:
            figures.running_at_restart = _count(queue, "running")
            restart()
            continue
        victim = next(p for p in cluster.alive() if cluster.serving(p))
        # Freeze it, read what it holds, then kill it: nothing changes in between.
        victim.send_signal(signal.SIGSTOP)
        figures.in_flight_at_kills.append(running_of(victim.pid))
        victim.kill()
        victim.wait(timeout=10)
        cluster.start()

    wait_until(lambda: _count(queue, "succeeded") == JOBS, 90, "all jobs to succeed")
    figures.elapsed = time.monotonic() - started
    alive = cluster.alive()
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(timeout=30) for proc in alive]

    records = {r.id: r for r in _all_records(queue)}
    runs = Counter(cluster.runs.read_text().split())
    figures.runs = sum(runs.values())
    figures.run_twice = sum(1 for n in runs.values() if n > 1)
    figures.duplicates = sum(n - 1 for n in runs.values() if n > 1)
    figures.failed = sum(1 for r in records.values() if r.state is JobState.FAILED)
    figures.lost = JOBS - sum(1 for r in records.values() if r.state is JobState.SUCCEEDED)
    print(f"\ncrash test, {figures.line()}")
    assert codes == [0] * WORKERS, cluster.output()
    assert len(records) == JOBS
    assert figures.failed == 0 and figures.lost == 0
    assert {r.state for r in records.values()} == {JobState.SUCCEEDED}
    assert set(runs) == set(records), "a job succeeded without its handler recording a run"
    # Only a job in flight when its process died (or the store restarted) can run twice.
    assert figures.duplicates <= figures.bound, figures.line()
    return figures


def _all_records(queue: SyncQueue) -> Iterator[Any]:
    after = None
    while True:
        page = queue.list(queue="default", limit=1000, after=after)
        yield from page
        if len(page) < 1000:
            return
        after = page[-1].id


@pytest.mark.timeout(240)
def test_sqlite_workers_killed_mid_run_lose_no_job(tmp_path: Path) -> None:
    """SQLite: 10,000 jobs without a RetryPolicy, 5 SIGKILLed workers: none lost or FAILED,
    duplicate runs bounded by the jobs the killed processes held."""
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    cluster = Cluster(tmp_path, ["--store", url])
    try:
        with SyncQueue(url) as queue:
            crash_run(cluster, queue, sqlite_running_of(path), None, "SQLite")
    finally:
        cluster.kill_all()


@pytest.mark.timeout(240)
def test_postgres_workers_killed_and_server_restarted_lose_no_job(tmp_path: Path) -> None:
    """PostgreSQL (a private server): 10,000 jobs without a RetryPolicy, 5 SIGKILLed workers
    and a server crash and restart: none lost or FAILED, duplicates bounded."""
    pytest.importorskip("asyncpg")
    server = PrivatePostgres()
    try:
        server.create()
        schema = f"crash_{uuid.uuid4().hex[:12]}"
        cluster = Cluster(tmp_path, ["--store", server.url, "--store-option", f"schema={schema}"])
        try:
            with SyncQueue(server.url, schema=schema) as queue:
                crash_run(
                    cluster,
                    queue,
                    postgres_running_of(server.url, schema),
                    server.restart,
                    "PostgreSQL",
                )
        finally:
            cluster.kill_all()
    finally:
        server.remove()


@pytest.mark.timeout(240)
def test_redis_workers_killed_and_server_restarted_lose_no_job(tmp_path: Path) -> None:
    """Redis (a private server, AOF): 10,000 jobs without a RetryPolicy, 5 SIGKILLed workers
    and a server SIGKILL and restart: none lost or FAILED, duplicates bounded."""
    pytest.importorskip("redis")
    server = PrivateRedis()
    try:
        server.start()
        prefix = f"crash-{uuid.uuid4().hex[:8]}"
        cluster = Cluster(tmp_path, ["--store", server.url, "--store-option", f"prefix={prefix}"])
        try:
            with SyncQueue(server.url, prefix=prefix) as queue:
                crash_run(
                    cluster, queue, redis_running_of(server.url, prefix), server.restart, "Redis"
                )
        finally:
            cluster.kill_all()
    finally:
        server.remove()


@pytest.mark.timeout(240)
def test_redis_cluster_workers_killed_lose_no_job(tmp_path: Path) -> None:
    """Redis Cluster (the three primaries of .ci/redis-cluster): 10,000 jobs, 5 SIGKILLed
    workers: none lost or FAILED, duplicates bounded (the shared cluster is not restarted)."""
    pytest.importorskip("redis")
    from tests.stores.conftest import require_redis_cluster

    url = require_redis_cluster()
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(tmp_path, ["--store", url, "--store-option", f"prefix={prefix}"])
    try:
        with SyncQueue(url, prefix=prefix) as queue:
            crash_run(cluster, queue, redis_running_of(url, prefix), None, "Redis Cluster")
    finally:
        cluster.kill_all()
        from work.stores.redis import RedisStore

        anyio.run(RedisStore(url, prefix=prefix).drop)


def test_postgres_through_pgbouncer_workers_killed_and_server_restarted_lose_no_job(
    tmp_path: Path,
) -> None:
    """PostgreSQL behind PgBouncer in transaction pooling (private ones, ``?listen=false``):
    10,000 jobs without a RetryPolicy, 5 SIGKILLed workers and a server crash and restart
    behind the pooler: none lost or FAILED, duplicates bounded."""
    pytest.importorskip("asyncpg")
    server = PrivatePostgres()
    bouncer = PrivatePgBouncer(server)
    try:
        server.create()
        bouncer.start()
        schema = f"crash_{uuid.uuid4().hex[:12]}"
        cluster = Cluster(tmp_path, ["--store", bouncer.url, "--store-option", f"schema={schema}"])
        try:
            with SyncQueue(bouncer.url, schema=schema) as queue:
                crash_run(
                    cluster,
                    queue,
                    postgres_running_of(server.url, schema),
                    server.restart,
                    "PostgreSQL through PgBouncer",
                )
        finally:
            cluster.kill_all()
    finally:
        bouncer.remove()
        server.remove()
