"""Tests for the ``anywork`` program: queue commands in-process, workers as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import work
from work import JobState, SyncQueue
from work.cli import CLIError, load_worker, main, mask_url
from work.stores import open_store

from .stores.conftest import POSTGRES_URL, require_pgbouncer

REPO = Path(work.__file__).resolve().parents[1]

WORKER_MODULE = """
from __future__ import annotations

import anyio

from work import Job, Worker

worker = Worker(max_concurrency=4, shutdown_grace=float({grace!r}))


@worker.handler()
async def add(job: Job) -> int:
    return job.args["a"] + job.args["b"]


@worker.handler()
async def nap(job: Job) -> None:
    await anyio.sleep(job.args["seconds"])


def make_worker() -> Worker:
    return worker


not_a_worker = 42
"""


# --------------------------------------------------------------------------- helpers


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the program in-process and return (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite store file for one test."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def state_of(queue: SyncQueue, job_id: str) -> JobState | None:
    """The job's state, or None if the store does not know it."""
    record = queue.get(job_id)
    return None if record is None else record.state


def free_port() -> int:
    """A TCP port the OS says is free on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerProcess:
    """``anywork worker`` run as a real process, its stderr collected in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log = cwd / f"worker-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "work.cli", "worker", *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text()

    def wait_for_output(self, text: str, timeout: float = 20.0) -> str:
        """Wait until ``text`` was printed (failing early if the process has exited)."""

        def seen() -> bool:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.output()}")
            return False

        wait_for(seen, timeout, repr(text))
        return self.output()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the process and return its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def worker_dir(tmp_path: Path) -> Path:
    """tmp_path holding ``tasks.py``, a small worker module (shutdown grace 0.5 s)."""
    (tmp_path / "tasks.py").write_text(WORKER_MODULE.format(grace=0.5))
    return tmp_path


@pytest.fixture
def spawn(worker_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``anywork worker`` processes in worker_dir; kill whatever is left at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess(worker_dir, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


class RedisServer:
    """A private ``redis-server`` on a free port of 127.0.0.1, that a test may stop and start."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def accepting() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, 20, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Kill the server (as a crash would) and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private Redis servers (``redis_server("--requirepass", "pw")``); all are killed at
    the end. Never the shared one on 6379: a test may kill its own."""
    servers: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        server = RedisServer(tmp_path, *extra)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


class PostgresServer:
    """A private PostgreSQL instance (initdb into a temp dir as the postgres user, pg_ctl on
    a free port) that a test may stop and start: never the shared server on 5432."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="anywork-pg-"))
        shutil.chown(self.directory, user="postgres")
        self.data = self.directory / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        auth = ["-A", "trust"]
        if password is not None:  # password authentication (scram) for user postgres
            pwfile = self.directory / "pw"
            pwfile.write_text(password)
            shutil.chown(pwfile, user="postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        self._as_postgres("initdb", "-D", str(self.data), *auth, "-U", "postgres")

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (pg_ctl -w)."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options,
                          "-l", str(self.directory / "log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast: connections are cut, as in a restart or a failover)."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL instance, started; removed at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def http_get(url: str) -> tuple[int, str]:
    """GET ``url``; return (status, body) for any HTTP status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --------------------------------------------------------------------------- queue commands


def test_enqueue_then_get_as_json(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """`enqueue --json` prints the stored record and `jobs get --json` reads it back."""
    code, out, _ = run(
        capsys, "enqueue", "add", "--args", '{"a": 1, "b": 2}', "--store", store_url,
        "--queue", "q1", "--priority", "5", "--max-attempts", "3", "--json",
    )  # fmt: skip
    assert code == 0
    record = json.loads(out)
    assert record["handler"] == "add"
    assert record["args"] == {"a": 1, "b": 2}
    assert (record["queue"], record["priority"], record["max_attempts"]) == ("q1", 5, 3)
    assert record["state"] == "queued"

    code, out, _ = run(capsys, "jobs", "get", record["id"], "--store", store_url, "--json")
    assert code == 0
    again = json.loads(out)
    assert again["id"] == record["id"]
    assert again["args"] == {"a": 1, "b": 2}
    assert again["status"] == -1


def test_enqueue_plain_output_and_delay(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """A delayed job is SCHEDULED, and plain output names the id, handler, queue and state."""
    code, out, _ = run(capsys, "enqueue", "nap", "--delay", "60", "--store", store_url)
    assert code == 0
    job_id, handler, queue, state = out.split()
    assert (handler, queue, state) == ("nap", "queue=default", "scheduled")
    code, out, _ = run(capsys, "jobs", "get", job_id, "--store", store_url)
    assert code == 0
    assert f"id             {job_id}" in out
    assert "state          scheduled" in out


def test_enqueue_unique_key_returns_existing(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """A second enqueue with the same --unique-key returns the first job's id."""
    ids = []
    for _ in range(2):
        code, out, _ = run(capsys, "enqueue", "add", "--unique-key", "k", "--store", store_url)
        assert code == 0
        ids.append(out.split()[0])
    assert ids[0] == ids[1]


def test_jobs_list_table_filters_and_pages(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """`jobs list` prints an aligned table, filters, and pages with --after."""
    ids = []
    for handler, queue in [("add", "a"), ("nap", "a"), ("add", "b")]:
        code, out, _ = run(capsys, "enqueue", handler, "--queue", queue, "--store", store_url)
        assert code == 0
        ids.append(out.split()[0])

    code, out, _ = run(capsys, "jobs", "list", "--store", store_url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "HANDLER", "QUEUE", "STATE", "STATUS", "ATTEMPTS", "ENQUEUED", "FINISHED",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ids
    assert len({line.index("queued") for line in lines[1:]}) == 1  # aligned columns
    assert lines[1].split()[4:6] == ["-", "0/1"]

    code, out, _ = run(capsys, "jobs", "list", "--queue", "a", "--handler", "add", "--json",
                       "--store", store_url)  # fmt: skip
    assert [r["id"] for r in json.loads(out)] == [ids[0]]

    code, out, _ = run(capsys, "jobs", "list", "--limit", "2", "--json", "--store", store_url)
    page = json.loads(out)
    assert [r["id"] for r in page] == ids[:2]
    code, out, _ = run(capsys, "jobs", "list", "--after", page[-1]["id"], "--json",
                       "--store", store_url)  # fmt: skip
    assert [r["id"] for r in json.loads(out)] == ids[2:]

    code, out, _ = run(capsys, "jobs", "list", "--state", "running", "--store", store_url)
    assert (code, out) == (0, "no jobs\n")


def test_cancel_then_cancel_again(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """`jobs cancel` cancels a queued job; a second cancel fails with exit 1 and one line."""
    _, out, _ = run(capsys, "enqueue", "add", "--store", store_url)
    job_id = out.split()[0]
    code, out, _ = run(capsys, "jobs", "cancel", job_id, "--store", store_url)
    assert (code, out) == (0, f"cancelled {job_id}\n")
    code, out, err = run(capsys, "jobs", "cancel", job_id, "--store", store_url)
    assert code == 1
    assert err == f"anywork: error: job {job_id} is already cancelled; nothing to cancel\n"


def test_unknown_job_is_a_runtime_error(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """`jobs get` and `jobs cancel` of an unknown id exit 1 with one line naming the id."""
    assert run(capsys, "enqueue", "add", "--store", store_url)[0] == 0
    for command in ("get", "cancel"):
        code, out, err = run(capsys, "jobs", command, "nope", "--store", store_url)
        assert (code, out) == (1, "")
        assert "no job with id 'nope'" in err
        assert err.count("\n") == 1


READ_ONLY = [
    ["stats"],
    ["stats", "--json"],
    ["jobs", "list"],
    ["jobs", "get", "some-id"],
    ["jobs", "cancel", "some-id"],
    ["jobs", "retry", "some-id"],
    ["jobs", "purge", "--older-than", "1d"],
]


def test_read_only_commands_create_no_sqlite_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """stats and jobs on a SQLite file that does not exist say so, exit 1, and create nothing;
    a file that is not an anywork store is not turned into one."""
    missing = tmp_path / "typo.db"
    url = f"sqlite:///{missing}"
    for argv in READ_ONLY:
        code, out, err = run(capsys, *argv, "--store", url)
        assert (code, out) == (1, ""), err
        assert err == (
            f"anywork: error: no anywork store at {url} (nothing was created: "
            "`anywork enqueue` or a worker creates one)\n"
        )
    assert not missing.exists() and not list(tmp_path.glob("typo.db*"))
    other = tmp_path / "other.db"
    other.write_bytes(b"not a database at all")
    code, _, err = run(capsys, "stats", "--store", f"sqlite:///{other}")
    assert code == 1 and "no anywork store" in err
    assert other.read_bytes() == b"not a database at all"


@pytest.fixture(params=["direct", "pgbouncer"])
def pg_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL directly, and through PgBouncer in transaction pooling (``?listen=false``)."""
    if request.param == "pgbouncer":
        return require_pgbouncer() + "?listen=false"
    return POSTGRES_URL


def test_read_only_commands_create_no_postgres_schema(
    capsys: pytest.CaptureFixture[str], pg_schema: str, pg_url: str
) -> None:
    """On PostgreSQL, stats and jobs on a schema that does not exist exit 1 and create none."""
    store = ["--store", pg_url, "--store-option", f"schema={pg_schema}"]
    for argv in READ_ONLY:
        code, _, err = run(capsys, *argv, *store)
        assert code == 1 and f"no anywork store at {pg_url}" in err, err

    async def schema_exists() -> bool:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            query = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
            return bool(await conn.fetchval(query, pg_schema))
        finally:
            await conn.close()

    assert not anyio.run(schema_exists)
    assert run(capsys, "enqueue", "add", *store)[0] == 0
    code, out, _ = run(capsys, "stats", "--json", *store)
    assert (code, json.loads(out)) == (0, {"default": {"queued": 1}})


def test_read_only_commands_write_no_redis_key(
    capsys: pytest.CaptureFixture[str], redis_server: Callable[..., RedisServer]
) -> None:
    """On Redis, stats and jobs under a prefix holding no store exit 1 and write no key."""
    server = redis_server()
    url = f"redis://127.0.0.1:{server.port}/0"
    for argv in READ_ONLY:
        code, _, err = run(capsys, *argv, "--store", url, "--store-option", "prefix=mine")
        assert code == 1 and f"no anywork store at {url}" in err, err
    keys = subprocess.run(
        ["redis-cli", "-p", str(server.port), "--scan"], capture_output=True, check=True
    )
    assert keys.stdout == b""
    assert run(capsys, "enqueue", "add", "--store", url, "--store-option", "prefix=mine")[0] == 0
    code, out, _ = run(capsys, "jobs", "list", "--json", "--store", url, "--store-option",
                       "prefix=mine")  # fmt: skip
    assert code == 0 and len(json.loads(out)) == 1


def test_stats_table_and_json(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """`stats` prints a queue x state table with totals; `--json` the raw counts."""
    for queue in ("a", "a", "b"):
        run(capsys, "enqueue", "add", "--queue", queue, "--store", store_url)
    code, out, _ = run(capsys, "stats", "--json", "--store", store_url)
    assert code == 0
    stats = json.loads(out)
    assert stats["a"]["queued"] == 2
    assert stats["b"]["queued"] == 1

    code, out, _ = run(capsys, "stats", "--store", store_url)
    assert code == 0
    header, *rows = [line.split() for line in out.splitlines()]
    assert header == [
        "QUEUE", "QUEUED", "SCHEDULED", "RUNNING", "WAITING", "SUCCEEDED", "FAILED",
        "CANCELLED", "TOTAL",
    ]  # fmt: skip
    assert rows == [
        ["a", "2", "0", "0", "0", "0", "0", "0", "2"],
        ["b", "1", "0", "0", "0", "0", "0", "0", "1"],
        ["TOTAL", "3", "0", "0", "0", "0", "0", "0", "3"],
    ]


def test_store_from_environment(
    capsys: pytest.CaptureFixture[str], store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --store, ANYWORK_STORE names the store."""
    monkeypatch.setenv("ANYWORK_STORE", store_url)
    code, out, _ = run(capsys, "enqueue", "add")
    assert code == 0
    code, out, _ = run(capsys, "stats", "--json", "--store", store_url)
    assert json.loads(out)["default"]["queued"] == 1


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["enqueue", "add", "--args", "{oops"], 2, "--args is not valid JSON"),
        (["enqueue", "add", "--args", "[1, 2]"], 2, "--args must be a JSON object"),
        (["enqueue", "add", "--delay", "-1"], 2, "argument --delay: must be >= 0 seconds"),
        (["enqueue", "add", "--delay", "nan"], 2, "--delay: must be a finite number of seconds"),
        (["enqueue", "add", "--delay", "inf"], 2, "--delay: must be a finite number of seconds"),
        (["enqueue", "add", "--delay", "1e300"], 2, "--delay: must be at most 3155760000"),
        (["enqueue", "add", "--max-attempts", "0"], 2, "--max-attempts: must be an integer from 1"),
        (["enqueue", "add", "--max-attempts", "2147483648"], 2, "to 2147483647, got '2147483648'"),
        (["enqueue", "add", "--priority", "2147483648"], 2, "to 2147483647, got '2147483648'"),
        (["enqueue", "add", "--priority", "-2147483649"], 2, "from -2147483648 to 2147483647"),
        (["enqueue", "add", "--queue", "a\x00b"], 2, "job.queue must not contain control"),
        (["enqueue", "add", "--queue", "q" * 300], 2, "job.queue must be at most 255 characters"),
        (["enqueue", " "], 2, "handler must be a non-blank name, got ' '"),
        (["enqueue", "add", "--unique-key", "k\n"], 2, "unique_key must not contain control"),
        (["enqueue", "add", "--args", '{"s": "\\u0000"}'], 2, "job.args['s'] holds a NUL"),
        (["enqueue", "add", "--args", "[" * 100 + "]" * 100], 2, "must be a JSON object"),
        (
            ["enqueue", "add", "--args", '{"a":' * 100 + "1" + "}" * 100],
            2,
            "job.args nests deeper than 64 levels",
        ),
        (["jobs", "list", "--state", "sleeping"], 2, "invalid choice: 'sleeping'"),
        (["jobs", "list", "--limit", "ten"], 2, "--limit: must be an integer, got 'ten'"),
        (["jobs", "list", "--limit", "-1"], 2, "--limit: must be an integer from 0"),
        (["jobs", "list", "--limit", "1" + "0" * 20], 2, "--limit: must be an integer from 0"),
        (["enqueue", "add", "--unique-key", ""], 2, "unique_key must not be blank"),
        (["enqueue", "add", "--args", '{"x": NaN}'], 2, "job.args['x'] is nan"),
        (["stats", "--store", "ftp://x"], 2, "unknown store URL scheme"),
        (["stats", "--store-option", "no-equals"], 2, "--store-option must look like key=value"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["worker", "tasks:worker", "--concurrency", "0"], 2, "--concurrency: must be an int"),
        (["worker", "tasks:worker", "--processes", "0"], 2, "--processes: must be an integer"),
        (["worker", "tasks:worker", "--processes", "x"], 2, "--processes: must be an integer"),
        (["worker", "tasks:worker", "--lease", "nan"], 2, "--lease: must be a finite number"),
        (["worker", "tasks:worker", "--lease", "inf"], 2, "--lease: must be a finite number"),
        (["worker", "tasks:worker", "--lease=-inf"], 2, "--lease: must be a finite number"),
        (["worker", "tasks:worker", "--lease", "0"], 2, "--lease: must be > 0 seconds, got '0'"),
        (["worker", "tasks:worker", "--lease", "-5"], 2, "--lease: must be > 0 seconds"),
        (["worker", "tasks:worker", "--lease", "1e300"], 2, "--lease: must be at most"),
        (["worker", "tasks:worker", "--lease", "soon"], 2, "--lease: must be a number of sec"),
        (["worker", "tasks:worker", "--http", "nowhere"], 2, "expected HOST:PORT"),
        (["worker", "tasks", "--store", "memory://"], 2, "must be given as module:attr"),
        (
            ["worker", "tasks:worker", "--store", "redis://127.0.0.1/0", "--backend", "trio"],
            2,
            "runs on asyncio only",
        ),
        (
            ["stats", "--store", "postgresql://postgres@127.0.0.1:1/test"],
            1,
            "cannot connect to postgresql://postgres@127.0.0.1:1/test",
        ),
        (["stats", "--store", "redis://127.0.0.1:1/0"], 1, "redis://127.0.0.1:1/0"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str],
    store_url: str,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    """Bad input exits 2, an unreachable store 1; either way one line on stderr, no traceback."""
    if "--store" not in argv:
        argv = [*argv, "--store", store_url] if argv[0] != "frobnicate" else argv
    got, out, err = run(capsys, *argv)
    assert got == code, err
    assert out == ""
    assert err.startswith("anywork: error: ")
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err
    # Bad input is refused before the store is opened: no empty SQLite file is left behind.
    assert not Path(store_url.removeprefix("sqlite:///")).exists()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema name of this test's own, dropped afterwards."""
    schema = f"anywork_cli_{uuid.uuid4().hex[:12]}"
    yield schema
    from work.stores.postgres import PostgresStore

    anyio.run(PostgresStore(POSTGRES_URL, schema=schema).drop)


def test_listen_through_pgbouncer_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], pg_schema: str
) -> None:
    """A store URL through PgBouncer in transaction pooling without ?listen=false: one line
    that says what is wrong and how to fix it, exit 1, for writing and read-only commands."""
    store = ["--store", require_pgbouncer(), "--store-option", f"schema={pg_schema}"]
    for argv in (["enqueue", "add"], ["stats"]):
        code, _, err = run(capsys, *argv, *store)
        assert code == 1 and err.count("\n") == 1, err
        assert "transaction pooling" in err and "?listen=false" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--priority", "2147483647", "--queue", "a\x00b"], "job.queue must not contain"),
        (["--args", '{"s": "nul \\u0000"}'], "job.args['s'] holds a NUL"),
        (["--args", '{"s": "\\ud800"}'], "job.args['s'] holds a NUL or a lone surrogate"),
        (["--unique-key", "k\x00"], "unique_key must not contain control characters"),
    ],
)
def test_enqueue_poison_on_postgres_exits_2(
    capsys: pytest.CaptureFixture[str],
    pg_schema: str,
    pg_url: str,
    options: list[str],
    message: str,
) -> None:
    """On PostgreSQL, a value its driver would refuse is bad input (2), never a driver error."""
    store = ["--store", pg_url, "--store-option", f"schema={pg_schema}"]
    code, _, err = run(capsys, "enqueue", "add", *options, *store)
    assert (code, err.count("\n")) == (2, 1), err
    assert message in err and "Error:" not in err
    code, out, err = run(capsys, "enqueue", "add", "--json", "--priority", "-2147483648", *store)
    assert code == 0, err
    code, out, _ = run(capsys, "stats", "--json", *store)
    assert json.loads(out) == {"default": {"queued": 1}}


def test_store_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], store_url: str, tmp_path: Path
) -> None:
    """--store and --store-option are accepted before the sub-command as well as after it."""
    code, _, err = run(capsys, "--store", store_url, "enqueue", "add")
    assert code == 0, err
    code, out, _ = run(capsys, "--store", store_url, "stats", "--json")
    assert json.loads(out) == {"default": {"queued": 1}}
    code, out, _ = run(
        capsys, "--store", "sqlite:///elsewhere.db", "jobs", "list", "--json", "--store", store_url
    )
    assert code == 0 and len(json.loads(out)) == 1  # the later, more specific one wins
    code, _, err = run(capsys, "--store-option", "bogus", "stats", "--store", store_url)
    assert code == 2 and "--store-option must look like key=value" in err


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("postgresql://127.0.0.1/x", "asyncpg", "postgres"),
        ("redis://127.0.0.1/0", "redis", "redis"),
    ],
)
def test_missing_driver_names_the_extra(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    driver: str,
    extra: str,
) -> None:
    """A store whose driver is not installed says which extra installs it, and exits 2."""
    monkeypatch.setitem(sys.modules, driver, None)  # what `import driver` meets when absent
    for name in [m for m in sys.modules if m.startswith(f"{driver}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    module = "work.stores.postgres" if extra == "postgres" else "work.stores.redis"
    monkeypatch.delitem(sys.modules, module, raising=False)
    for argv in (["stats", "--store", url], ["worker", "tasks:worker", "--store", url]):
        code, _, err = run(capsys, *argv)
        assert code == 2, err
        assert f"needs {driver}, which is not installed: pip install 'anywork[{extra}]'" in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` prints usage and returns 0 instead of raising SystemExit."""
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "worker" in out and "enqueue" in out


def test_mask_url_hides_only_the_password() -> None:
    """mask_url replaces a password with *** and leaves URLs without one alone."""
    assert mask_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_load_worker_instance_factory_and_errors(
    worker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_worker takes an instance or a factory and names the module/attr when it cannot."""
    monkeypatch.chdir(worker_dir)
    monkeypatch.delitem(sys.modules, "tasks", raising=False)
    assert load_worker("tasks:worker") is load_worker("tasks:make_worker")
    cases = {
        "no_such_module:worker": "cannot import module 'no_such_module'",
        "tasks:missing": "module 'tasks' has no attribute 'missing'",
        "tasks:not_a_worker": "tasks:not_a_worker is a int, not a Worker",
        "tasks:": "must be given as module:attr",
    }
    for spec, message in cases.items():
        with pytest.raises(CLIError, match=message) as info:
            load_worker(spec)
        assert info.value.code == 2
    monkeypatch.delitem(sys.modules, "tasks", raising=False)


# --------------------------------------------------------------------------- worker processes


def test_worker_runs_jobs_and_drains_on_sigterm(
    spawn: Callable[..., WorkerProcess], store_url: str
) -> None:
    """A worker process runs jobs; SIGTERM hands the unfinished job back and exits 0."""
    proc = spawn("tasks:worker", "--store", store_url, "--concurrency", "4", "--lease", "5")
    startup = proc.wait_for_output("serving", timeout=30)
    assert f"store={store_url} queues=default concurrency=4" in startup
    assert f"pid={proc.proc.pid}" in startup
    with SyncQueue(store_url) as queue:
        quick = [queue.enqueue(work.Job("add", {"a": i, "b": 1})) for i in range(5)]
        for record in quick:
            done = queue.wait(record.id, timeout=20)
            assert (done.state, done.result) == (JobState.SUCCEEDED, record.args["a"] + 1)
        long = queue.enqueue(work.Job("nap", {"seconds": 60}))
        wait_for(lambda: state_of(queue, long.id) is JobState.RUNNING, 20, "the long job")
        assert proc.stop() == 0
        back = queue.get(long.id)
    assert back is not None
    assert (back.state, back.attempts) == (JobState.QUEUED, 0)
    output = proc.output()
    assert "SIGTERM: draining" in output
    assert "processed 6 jobs: succeeded 5 (200x5); handed back 1" in output


def test_worker_on_trio(spawn: Callable[..., WorkerProcess], store_url: str) -> None:
    """--backend trio serves a SQLite store and drains on SIGTERM like asyncio."""
    proc = spawn("tasks:worker", "--store", store_url, "--backend", "trio")
    proc.wait_for_output("serving", timeout=30)
    with SyncQueue(store_url) as queue:
        record = queue.enqueue(work.Job("add", {"a": 2, "b": 3}))
        assert queue.wait(record.id, timeout=20).result == 5
    assert proc.stop() == 0
    assert "processed 1 job: succeeded 1 (200x1)" in proc.output()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_worker_waits_for_a_store_that_is_not_up_yet(
    tmp_path: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    """A worker whose store is down retries with backoff, then serves once it comes up."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = spawn("tasks:worker", "--store", url)
    proc.wait_for_output(f"cannot connect to {url}", timeout=30)
    output = proc.wait_for_output("retrying in 1s", timeout=30)
    assert "127.0.0.1" in output and str(port) in output and "serving" not in output
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc.wait_for_output("serving", timeout=60)
        with SyncQueue(url) as queue:
            record = queue.enqueue(work.Job("add", {"a": 20, "b": 22}))
            assert queue.wait(record.id, timeout=20).result == 42
        assert proc.stop() == 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_worker_stops_while_waiting_for_its_store(spawn: Callable[..., WorkerProcess]) -> None:
    """SIGTERM while the store is unreachable ends the worker at once, exit 0."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = spawn("tasks:worker", "--store", url)
    proc.wait_for_output("retrying in", timeout=30)
    assert proc.stop(timeout=20) == 0
    assert "serving" not in proc.output()


def test_second_signal_stops_at_once(
    tmp_path: Path, spawn: Callable[..., WorkerProcess], store_url: str
) -> None:
    """With a long shutdown grace, a second SIGTERM stops at once and still hands jobs back."""
    (tmp_path / "tasks.py").write_text(WORKER_MODULE.format(grace=60.0))
    proc = spawn("tasks:worker", "--store", store_url)
    proc.wait_for_output("serving", timeout=30)
    with SyncQueue(store_url) as queue:
        long = queue.enqueue(work.Job("nap", {"seconds": 60}))
        wait_for(lambda: state_of(queue, long.id) is JobState.RUNNING, 20, "the long job")
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for_output("draining")
        started = time.monotonic()
        assert proc.stop(timeout=20) == 0
        assert time.monotonic() - started < 15
        back = queue.get(long.id)
    assert back is not None
    assert (back.state, back.attempts) == (JobState.QUEUED, 0)
    assert "stopping at once" in proc.output()


def test_worker_http_endpoints(spawn: Callable[..., WorkerProcess], store_url: str) -> None:
    """--http serves /live, /ready and Prometheus /metrics while the worker runs."""
    port = free_port()
    proc = spawn("tasks:worker", "--store", store_url, "--http", f"127.0.0.1:{port}")
    proc.wait_for_output("serving", timeout=30)
    base = f"http://127.0.0.1:{port}"
    assert http_get(f"{base}/live") == (200, "OK")
    assert http_get(f"{base}/ready") == (200, "READY")
    status, body = http_get(f"{base}/metrics")
    assert status == 200
    assert "python_info" in body or "process_cpu_seconds_total" in body
    assert http_get(f"{base}/nope")[0] == 404
    assert proc.stop() == 0


def test_bad_redis_credentials_exit_1(
    capsys: pytest.CaptureFixture[str],
    spawn: Callable[..., WorkerProcess],
    redis_server: Callable[..., RedisServer],
) -> None:
    """A Redis server that refuses the password ends a command and a worker with exit 1 and
    one clear line, as PostgreSQL does, instead of retrying forever."""
    server = redis_server("--requirepass", "sekret")
    wrong = f"redis://:wrong@127.0.0.1:{server.port}/0"
    none = f"redis://127.0.0.1:{server.port}/0"
    code, _, err = run(capsys, "stats", "--store", wrong)
    assert code == 1, err
    assert err == (
        f"anywork: error: cannot open redis://:***@127.0.0.1:{server.port}/0: Redis at "
        f"127.0.0.1:{server.port} refused the credentials: invalid username-password pair or "
        "user is disabled.\n"
    )
    code, _, err = run(capsys, "stats", "--store", none)
    assert code == 1 and "refused the credentials: the URL gives no password" in err, err
    for url in (wrong, none):
        proc = spawn("tasks:worker", "--store", url)
        assert proc.proc.wait(timeout=30) == 1, proc.output()
        assert "refused the credentials" in proc.output()
        assert "retrying" not in proc.output() and "Traceback" not in proc.output()
    good = f"redis://:sekret@127.0.0.1:{server.port}/0"
    assert run(capsys, "enqueue", "add", "--store", good)[0] == 0
    code, out, err = run(capsys, "stats", "--json", "--store", good)
    assert (code, json.loads(out)) == (0, {"default": {"queued": 1}}), err


def test_ready_reports_503_while_the_store_is_down(
    spawn: Callable[..., WorkerProcess], redis_server: Callable[..., RedisServer]
) -> None:
    """/ready is 503 while the worker's store cannot be reached and 200 again once it is back;
    /live stays 200 throughout."""
    server = redis_server()
    url = f"redis://127.0.0.1:{server.port}/0"
    port = free_port()
    proc = spawn("tasks:worker", "--store", url, "--http", f"127.0.0.1:{port}")
    proc.wait_for_output("serving", timeout=30)
    base = f"http://127.0.0.1:{port}"
    assert http_get(f"{base}/ready") == (200, "READY")
    server.stop()
    down = wait_for(lambda: http_get(f"{base}/ready")[0] == 503, 20, "/ready to say 503")
    assert down
    assert http_get(f"{base}/ready") == (503, "NOT READY: the store does not answer")
    assert http_get(f"{base}/live") == (200, "OK")
    server.start()
    wait_for(lambda: http_get(f"{base}/ready") == (200, "READY"), 30, "/ready to say 200")
    with SyncQueue(url) as queue:
        record = queue.enqueue(work.Job("add", {"a": 1, "b": 2}))
        assert queue.wait(record.id, timeout=30).result == 3
    assert proc.stop() == 0
    # The outage is one line (a RedisUnavailableError naming the server) and one more after.
    output = proc.output()
    assert output.count("store unreachable") == 1, output
    assert f"cannot connect to Redis at 127.0.0.1:{server.port}" in output
    assert output.count("store reachable again") == 1, output


def test_worker_counts_and_logs_a_discarded_outcome(
    spawn: Callable[..., WorkerProcess], store_url: str
) -> None:
    """A worker paused past its lease, whose job was taken over, does not count the job as
    its own result: it logs the discarded outcome and its summary says "discarded 1"."""
    proc = spawn("tasks:worker", "--store", store_url, "--lease", "1")
    proc.wait_for_output("serving", timeout=30)
    with SyncQueue(store_url) as queue:
        record = queue.enqueue(work.Job("nap", {"seconds": 2}))
        wait_for(lambda: state_of(queue, record.id) is JobState.RUNNING, 20, "the job to run")
    proc.proc.send_signal(signal.SIGSTOP)  # as a long GC pause or a frozen VM would
    try:

        async def take_over() -> None:
            async with open_store(store_url) as store:
                with anyio.fail_after(20):
                    while (rec := await store.get(record.id)) and rec.state is JobState.RUNNING:
                        await store.reap()
                        await anyio.sleep(0.1)
                if rec is not None and rec.state is JobState.QUEUED:
                    await store.claim(["default"], limit=1, lease=60, owner="another-worker")

        anyio.run(take_over)
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    output = proc.wait_for_output("outcome discarded", timeout=20)
    assert record.id in output
    assert proc.stop() == 0
    summary = proc.output().splitlines()[-1]
    assert summary.endswith("processed 0 jobs; discarded 1 (lease lost)"), proc.output()


def test_postgres_outage_is_one_line_and_one_more_on_recovery(
    spawn: Callable[..., WorkerProcess], postgres_server: PostgresServer
) -> None:
    """A worker whose PostgreSQL goes away says so in one line, says it once more when the
    server is back, and serves again: no asyncpg tracebacks, no InterfaceError."""
    url = postgres_server.url
    proc = spawn("tasks:worker", "--store", url)
    proc.wait_for_output("serving", timeout=30)
    with SyncQueue(url) as queue:
        record = queue.enqueue(work.Job("add", {"a": 1, "b": 1}))
        assert queue.wait(record.id, timeout=20).result == 2
    postgres_server.stop()
    proc.wait_for_output("store unreachable", timeout=30)
    # Down for a few seconds: long enough for several retries of every loop (claim, renew,
    # reap) and for asyncpg's pool to try to restore its floor, which the test then checks
    # were folded into the one line.
    time.sleep(3)
    postgres_server.start()
    output = proc.wait_for_output("store reachable again", timeout=60)
    with SyncQueue(url) as queue:
        record = queue.enqueue(work.Job("add", {"a": 2, "b": 2}))
        assert queue.wait(record.id, timeout=30).result == 4
    assert proc.stop() == 0
    output = proc.output()
    assert output.count("store unreachable") == 1, output
    assert output.count("store reachable again") == 1, output
    (down,) = [line for line in output.splitlines() if "store unreachable" in line]
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{postgres_server.port}" in down
    (back,) = [line for line in output.splitlines() if "store reachable again" in line]
    failed_calls = int(back.split("failed_calls=")[1].split()[0])
    assert failed_calls >= 3, back
    for noise in ("Traceback", "InterfaceError", "InternalClientError", "pool connection floor"):
        assert noise not in output, output
    assert "processed 2 jobs: succeeded 2" in output


def test_bad_postgres_credentials_exit_1(
    capsys: pytest.CaptureFixture[str], spawn: Callable[..., WorkerProcess]
) -> None:
    """A PostgreSQL server that refuses the password ends a command and a worker with exit 1
    and the same one line as Redis's refusal."""
    server = PostgresServer(password="sekret")
    try:
        server.start()
        wrong = f"postgresql://postgres:wrong@127.0.0.1:{server.port}/postgres"
        code, _, err = run(capsys, "stats", "--store", wrong)
        assert code == 1, err
        assert err == (
            f"anywork: error: cannot open postgresql://postgres:***@127.0.0.1:{server.port}/"
            f"postgres: PostgreSQL at 127.0.0.1:{server.port} refused the credentials: "
            'password authentication failed for user "postgres"\n'
        )
        proc = spawn("tasks:worker", "--store", wrong)
        assert proc.proc.wait(timeout=30) == 1, proc.output()
        assert "refused the credentials" in proc.output() and "retrying" not in proc.output()
        good = f"postgresql://postgres:sekret@127.0.0.1:{server.port}/postgres"
        assert run(capsys, "enqueue", "add", "--store", good)[0] == 0
    finally:
        server.remove()


def test_worker_that_cannot_be_loaded_exits_2(
    spawn: Callable[..., WorkerProcess], store_url: str
) -> None:
    """A worker process whose module:attr is wrong prints one line and exits 2."""
    proc = spawn("tasks:missing", "--store", store_url)
    assert proc.proc.wait(timeout=30) == 2
    assert proc.output() == "anywork: error: module 'tasks' has no attribute 'missing'\n"


def test_processes_restart_a_killed_child(
    spawn: Callable[..., WorkerProcess], store_url: str
) -> None:
    """--processes 2 restarts a child killed with SIGKILL, and jobs still finish."""
    proc = spawn("tasks:worker", "--store", store_url, "--processes", "2", "--lease", "2")

    def children() -> dict[str, str]:
        found: dict[str, str] = {}
        for line in proc.output().splitlines():
            if "supervisor: started worker" in line:
                index, pid = line.split("started worker ")[1].split(" pid=")
                found[index] = pid
        return found

    first = wait_for(lambda: len(children()) == 2 and children(), 30, "two children")
    wait_for(lambda: proc.output().count("serving") == 2, 30, "both children serving")
    os.kill(int(first["0"]), signal.SIGKILL)
    restarted = wait_for(
        lambda: children().get("0") not in (None, first["0"]) and children(), 30, "a restart"
    )
    assert restarted["1"] == first["1"]
    assert f"pid={first['0']} exited with -9; restarting" in proc.output()
    wait_for(lambda: proc.output().count("serving") == 3, 30, "the new child serving")
    with SyncQueue(store_url) as queue:
        records = [queue.enqueue(work.Job("add", {"a": i, "b": i})) for i in range(20)]
        for record in records:
            assert queue.wait(record.id, timeout=30).state is JobState.SUCCEEDED
    code = proc.stop()
    output = proc.output()
    assert code == 0, output
    assert f"worker 0 pid={restarted['0']} exited with 0" in output
    assert f"worker 1 pid={first['1']} exited with 0" in output


def test_store_commands_and_a_worker_on_redis_cluster(
    capsys: pytest.CaptureFixture[str], spawn: Callable[..., WorkerProcess]
) -> None:
    """On a Redis Cluster (``redis+cluster://``): enqueue, jobs get/list/cancel and stats
    work as on one server, and a worker process runs jobs and drains on SIGTERM."""
    from .stores.conftest import require_redis_cluster

    url = require_redis_cluster()
    prefix = f"anywork-cli-{uuid.uuid4().hex[:10]}"
    store = ["--store", url, "--store-option", f"prefix={prefix}"]
    try:
        code, out, _ = run(capsys, "enqueue", "add", "--args", '{"a": 1, "b": 2}', "--queue",
                           "q1", "--json", *store)  # fmt: skip
        assert code == 0
        first = json.loads(out)
        code, out, _ = run(capsys, "jobs", "get", first["id"], "--json", *store)
        assert (code, json.loads(out)["args"]) == (0, {"a": 1, "b": 2})
        _, out, _ = run(capsys, "enqueue", "nap", "--queue", "q2", *store)
        second = out.split()[0]
        code, out, _ = run(capsys, "jobs", "list", "--json", *store)
        assert [r["id"] for r in json.loads(out)] == [first["id"], second]
        code, out, _ = run(capsys, "jobs", "cancel", second, *store)
        assert (code, out) == (0, f"cancelled {second}\n")
        code, out, _ = run(capsys, "stats", "--json", *store)
        assert json.loads(out) == {"q1": {"queued": 1}, "q2": {"cancelled": 1}}

        proc = spawn("tasks:worker", *store, "--queues", "q1", "--concurrency", "2")
        proc.wait_for_output("serving", timeout=30)
        with SyncQueue(url, prefix=prefix) as queue:
            done = queue.wait(first["id"], timeout=20)
            assert (done.state, done.result) == (JobState.SUCCEEDED, 3)
        assert proc.stop() == 0
    finally:
        from work.stores.redis import RedisStore

        anyio.run(RedisStore(url, prefix=prefix).drop)
