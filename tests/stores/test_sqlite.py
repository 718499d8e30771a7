"""The SQLite store's own behaviour: URLs, options, the file's settings and schema, and several
processes sharing one file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from tests.stores.test_conformance import record, seconds_from_now, state_of, until
from work import Job, JobState, Status, SyncQueue
from work.stores import Outcome, open_store
from work.stores.sqlite import SCHEMA_VERSION, SQLiteStore, path_from_url

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The SQLite store works on both anyio backends."""
    return str(request.param)


def run_processes(script: str, args: list[list[str]], timeout: float = 60) -> list[str]:
    """Run ``script`` in one Python process per argument list, all at once; return their
    outputs (failing the test if any process fails)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *a],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for a in args
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


# -- URLs and options ---------------------------------------------------------------------------


def test_url_paths() -> None:
    """sqlite:///rel.db is relative, sqlite:////abs.db absolute, :memory: is kept."""
    assert path_from_url("sqlite:///jobs.db") == "jobs.db"
    assert path_from_url("sqlite:///data/jobs.db") == "data/jobs.db"
    assert path_from_url("sqlite:////var/lib/jobs.db") == "/var/lib/jobs.db"
    assert path_from_url("sqlite:///:memory:") == ":memory:"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "no database file"),
        ("sqlite://host/jobs.db", "no host"),
        ("postgresql:///jobs.db", "not a sqlite URL"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    """URLs without a file, with a host or of another scheme are ValueErrors."""
    with pytest.raises(ValueError, match=match):
        path_from_url(url)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"busy_timeout": -1}, "busy_timeout"),
        ({"synchronous": "SOMETIMES"}, "synchronous"),
        ({"poll_interval": 0}, "poll_interval"),
    ],
)
def test_bad_options(options: dict[str, object], match: str) -> None:
    """Out-of-range options are ValueErrors naming the option."""
    with pytest.raises(ValueError, match=match):
        SQLiteStore("sqlite:///x.db", **options)  # type: ignore[arg-type]


def test_old_sqlite_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite library older than 3.35 (no RETURNING) is refused with a clear error."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    with pytest.raises(RuntimeError, match=r"3\.35"):
        SQLiteStore("sqlite:///x.db")


@pytest.mark.anyio
async def test_relative_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///name.db creates the file in the current directory."""
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///rel.db") as store:
        await store.add([record()])
    assert (tmp_path / "rel.db").exists()


@pytest.mark.anyio
async def test_memory_database_is_supported() -> None:
    """sqlite:///:memory: works, private to the store object."""
    async with open_store("sqlite:///:memory:") as store:
        (rec,) = await store.add([record()])
        assert await store.get(rec.id) == rec


@pytest.mark.anyio
async def test_calls_need_an_open_store(tmp_path: Path) -> None:
    """Using a store that is not entered is a RuntimeError saying so."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("x")


@pytest.mark.anyio
async def test_add_leaves_the_callers_objects_alone(tmp_path: Path) -> None:
    """The record add() returns is what get() reads back and shares no mutable value with the
    record given to it."""
    async with open_store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        rec = record(args={"items": [1]}, headers={"h": "v"}, retry={"retry_on": [500]})
        (stored,) = await store.add([rec])
        assert stored == await store.get(rec.id)
        assert stored.args is not rec.args and stored.headers is not rec.headers
        assert stored.retry is not rec.retry
        rec.args["items"].append(2)
        rec.headers["h"] = "changed"
        assert stored.args == {"items": [1]} and stored.headers == {"h": "v"}


@pytest.mark.anyio
async def test_big_batch_with_taken_ids_is_added_job_by_job(tmp_path: Path) -> None:
    """A batch longer than one lookup chunk, some of whose ids exist, adds the others."""
    async with open_store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        taken = [record(id=f"j{i}", args={"old": True}) for i in (3, 700, 1199)]
        await store.add(taken)
        batch = [record(id=f"j{i}") for i in range(1200)]
        out = await store.add(batch)
        assert [r.id for r in out] == [r.id for r in batch]
        assert [r.args for r in out] == [
            {"old": True} if r.id in {"j3", "j700", "j1199"} else {} for r in batch
        ]
        assert len(await store.list(limit=2000)) == 1200


# -- the file -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_file_settings_and_schema_version(tmp_path: Path) -> None:
    """The file is in WAL mode with the schema version recorded once, however often opened."""
    path = tmp_path / "jobs.db"
    for _ in range(2):
        async with SQLiteStore(f"sqlite:///{path}", synchronous="full") as store:
            assert store.synchronous == "FULL"
            await store.add([record()])
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        versions = conn.execute("SELECT version FROM anywork_schema_version").fetchall()
        # One row per migration applied, each once.
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("SELECT COUNT(*) FROM anywork_jobs").fetchone() == (2,)
    finally:
        conn.close()


@pytest.mark.anyio
async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer anywork (a higher schema version) is refused."""
    path = tmp_path / "jobs.db"
    async with SQLiteStore(f"sqlite:///{path}"):
        pass
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("INSERT INTO anywork_schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="upgrade anywork"):
        async with SQLiteStore(f"sqlite:///{path}"):
            pass


@pytest.mark.anyio
async def test_nested_enter_shares_the_connection(tmp_path: Path) -> None:
    """Entering an open store again shares it; it closes with the outermost exit."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'x.db'}")
    async with store:
        async with store:
            await store.add([record()])
        assert len(await store.list()) == 1
    with pytest.raises(RuntimeError, match="not open"):
        await store.list()


@pytest.mark.anyio
async def test_garbage_written_by_someone_else(tmp_path: Path) -> None:
    """Rows with garbage args or headers are claimed with a decode_error; get() still works."""
    path = tmp_path / "jobs.db"
    async with SQLiteStore(f"sqlite:///{path}") as store:
        (bad_args,) = await store.add([record("a")])
        (bad_headers,) = await store.add([record("b")])
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute("UPDATE anywork_jobs SET args = 'oops' WHERE id = ?", (bad_args.id,))
                conn.execute(
                    "UPDATE anywork_jobs SET headers = '[1]' WHERE id = ?", (bad_headers.id,)
                )
        finally:
            conn.close()
        claimed = await store.claim(["default"], limit=2, lease=30, owner="w")
        errors = {c.record.handler: c.decode_error for c in claimed}
        assert errors["a"] is not None and "args" in errors["a"]
        assert errors["b"] is not None and "headers" in errors["b"]
        got = await store.get(bad_args.id)
        assert got is not None and got.args == {}


# -- several processes --------------------------------------------------------------------------

_ADD_AT_ONCE = """
    import sys, anyio
    from work import Job, Queue
    from work.stores import open_store

    async def main(url):
        async with open_store(url) as store:
            await Queue(store).enqueue_many([Job("noop") for _ in range(10)])

    anyio.run(main, sys.argv[1])
"""


def test_processes_creating_the_schema_at_once(tmp_path: Path) -> None:
    """Several processes opening a fresh file at once all succeed; the schema is made once."""
    path = tmp_path / "fresh.db"
    run_processes(_ADD_AT_ONCE, [[f"sqlite:///{path}"]] * 6)
    conn = sqlite3.connect(path)
    try:
        count = conn.execute("SELECT COUNT(*) FROM anywork_schema_version").fetchone()
        assert count == (SCHEMA_VERSION,)
        assert conn.execute("SELECT COUNT(*) FROM anywork_jobs").fetchone() == (60,)
    finally:
        conn.close()


_CLAIM_ALL = """
    import json, os, sys, time, anyio
    from work.stores import open_store

    async def main(url, owner, go):
        seen = []
        async with open_store(url) as store:
            while not os.path.exists(go):
                time.sleep(0.005)
            while claimed := await store.claim(["default"], limit=3, lease=60, owner=owner):
                seen.extend(c.record.id for c in claimed)
        print(json.dumps(seen))

    anyio.run(main, *sys.argv[1:])
"""


def test_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    """Processes claiming from one file at the same moment never share a job."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    go = tmp_path / "go"
    with SyncQueue(url) as queue:
        ids = [r.id for r in queue.enqueue_many([Job("noop") for _ in range(300)])]
    args = [[url, f"p{n}", str(go)] for n in range(4)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_CLAIM_ALL), *a],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for a in args
    ]
    go.touch()
    seen: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        seen.extend(json.loads(out))
    assert sorted(seen) == sorted(ids)


_SERVE = """
    import os, sys, anyio
    from work import Job, Worker
    from work.stores import open_store

    async def main(url, runs, stop):
        worker = Worker(name=f"proc-{os.getpid()}")

        @worker.handler()
        async def note(job: Job) -> int:
            with open(runs, "a") as f:
                f.write(job.id + "\\n")
            await anyio.sleep(0.005)
            return os.getpid()

        async with open_store(url) as store, worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            while not os.path.exists(stop):
                await anyio.sleep(0.02)
            worker.stop()

    anyio.run(main, *sys.argv[1:])
"""


def test_worker_processes_run_each_job_once(tmp_path: Path) -> None:
    """Three worker processes serving one file run every job exactly once."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    runs, stop = tmp_path / "runs.txt", tmp_path / "stop"
    with SyncQueue(url) as queue:
        records = queue.enqueue_many([Job("note") for _ in range(90)])
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(_SERVE), url, str(runs), str(stop)],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(3)
        ]
        try:
            done = [queue.wait(r.id, timeout=60) for r in records]
        finally:
            stop.touch()
            for proc in procs:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
    assert all(d.state is JobState.SUCCEEDED and d.attempts == 1 for d in done)
    lines = runs.read_text().split()
    assert sorted(lines) == sorted(r.id for r in records)
    assert {d.result for d in done} <= {p.pid for p in procs}


@pytest.mark.anyio
async def test_version_1_file_migrates_to_deferred_columns(tmp_path: Path) -> None:
    """A file made by schema version 1 gains the deadline columns and settings table, keeps its
    jobs, and a unique key held by a WAITING job then blocks a duplicate."""
    from work.stores.sqlite import _MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE anywork_schema_version (version INTEGER NOT NULL)")
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO anywork_schema_version VALUES (1)")
        conn.commit()
    finally:
        conn.close()
    async with SQLiteStore(f"sqlite:///{path}") as store:
        (old,) = await store.add([record(unique_key="k")])
        (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="o")
        waiting = Outcome(
            id=old.id,
            state=JobState.WAITING,
            status=Status.ACCEPTED,
            deadline=seconds_from_now(60),
            ttl=60.0,
        )
        await store.complete("o", [waiting])
        got = await store.get(old.id)
        assert got is not None and got.state is JobState.WAITING and got.deferred_ttl == 60.0
        (same,) = await store.add([record(unique_key="k")])
        assert same.id == old.id
        assert await store.setdefault_setting("k", "v") == "v"
        assert claimed.record.id == old.id


@pytest.mark.anyio
async def test_events_are_written_only_while_someone_listens(tmp_path: Path) -> None:
    """With no subscriber registered the triggers write no event rows; a subscription
    registers (and its end unregisters) the store in anywork_event_listeners."""
    path = tmp_path / "jobs.db"

    def rows(table: str) -> int:
        conn = sqlite3.connect(path)
        try:
            (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            return int(count)
        finally:
            conn.close()

    async with open_store(f"sqlite:///{path}") as store:
        await store.add([record()])
        assert rows("anywork_events") == 0
        async with store.events():
            assert rows("anywork_event_listeners") == 1
            await store.add([record()])
            assert rows("anywork_events") == 1
        # The watcher thread unregisters as it ends, about a second after the last subscriber.
        with anyio.fail_after(5):
            while rows("anywork_event_listeners"):  # another thread's write: polled
                await anyio.sleep(0.01)
        await store.add([record()])
        assert rows("anywork_events") == 1


# -- schema version 1 (anywork before the lost counter and the claim index) --------------------

# Version 1's statements, as `git show main~2:work/stores/sqlite.py` has them.
_V1_SCHEMA = (
    """
    CREATE TABLE anywork_jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, handler TEXT NOT NULL,
        queue TEXT NOT NULL, args TEXT NOT NULL, headers TEXT NOT NULL,
        priority INTEGER NOT NULL, state TEXT NOT NULL, status INTEGER NOT NULL,
        attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, result TEXT, error TEXT,
        unique_key TEXT, enqueued_at REAL NOT NULL, scheduled_for REAL, started_at REAL,
        finished_at REAL, timeout REAL, retry TEXT, deferrals INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL, owner TEXT, lease_until REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX anywork_jobs_ready ON anywork_jobs (state, queue, priority DESC, due_at, seq)",
    "CREATE INDEX anywork_jobs_lease ON anywork_jobs (state, lease_until)",
    "CREATE INDEX anywork_jobs_queue ON anywork_jobs (queue, seq)",
    "CREATE UNIQUE INDEX anywork_jobs_unique ON anywork_jobs (queue, unique_key)"
    " WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')",
    "CREATE TABLE anywork_schema_version (version INTEGER NOT NULL)",
    "INSERT INTO anywork_schema_version VALUES (1)",
)


def _make_v1_file(path: Path) -> None:
    """A database as anywork with schema version 1 left it: two jobs, one finished."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            for statement in _V1_SCHEMA:
                conn.execute(statement)
            now = time.time()
            for id, state in (("old-queued", "queued"), ("old-done", "succeeded")):
                conn.execute(
                    "INSERT INTO anywork_jobs (id, handler, queue, args, headers, priority,"
                    " state, status, attempts, max_attempts, enqueued_at, due_at)"
                    " VALUES (?, 'noop', 'default', '{\"a\": 1}', '{}', 0, ?, -1, 0, 1, ?, ?)",
                    (id, state, now, now),
                )
    finally:
        conn.close()


_OPEN_AND_CLAIM = """
    import sys, anyio
    from work.stores import open_store

    async def main(url):
        async with open_store(url) as store:
            await store.claim(["nothing-here"], limit=1, lease=30, owner="x")

    anyio.run(main, sys.argv[1])
"""


def test_version_1_file_upgrades_from_several_processes(tmp_path: Path) -> None:
    """A file with schema version 1 upgrades on open, once, with six processes opening it at
    the same moment; its jobs survive and the new claim indexes replace the old one."""
    path = tmp_path / "v1.db"
    _make_v1_file(path)
    run_processes(_OPEN_AND_CLAIM, [[f"sqlite:///{path}"]] * 6)
    conn = sqlite3.connect(path)
    try:
        versions = conn.execute("SELECT version FROM anywork_schema_version ORDER BY version")
        assert versions.fetchall() == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(anywork_jobs)")}
        assert {"lost", "unknown_since", "schedule_id"} <= columns
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "anywork_schedules" in tables
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(anywork_jobs)")}
        assert {"anywork_jobs_claim", "anywork_jobs_leases"} <= indexes
        assert not {"anywork_jobs_ready", "anywork_jobs_lease"} & indexes
    finally:
        conn.close()


@pytest.mark.anyio
async def test_version_1_jobs_run_after_the_upgrade(tmp_path: Path) -> None:
    """A job queued under schema version 1 is claimed intact after the upgrade, and its lost
    counter starts at zero."""
    path = tmp_path / "v1.db"
    _make_v1_file(path)
    async with SQLiteStore(f"sqlite:///{path}") as store:
        (claimed,) = await store.claim(["default"], limit=5, lease=0.05, owner="w")
        assert claimed.record.id == "old-queued" and claimed.record.args == {"a": 1}
        assert claimed.decode_error is None

        async def reaped() -> bool:
            return await store.reap() == 1

        await until(reaped)
        assert await state_of(store, "old-queued") is JobState.QUEUED


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    return "\n".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_claim_and_idle_poll_never_scan_finished_rows(tmp_path: Path) -> None:
    """The claim's and the idle poll's query plans search the partial claim index (which holds
    unfinished jobs only) in claim order: no full scan and no temporary b-tree to sort."""
    from work.stores import sqlite as sqlite_store

    path = tmp_path / "plan.db"
    anyio.run(_open_and_close, f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    try:
        # Give the planner statistics that make the finished rows the bulk of the table.
        now = time.time()
        with conn:
            conn.executemany(
                "INSERT INTO anywork_jobs (id, handler, queue, args, headers, priority, state,"
                " status, attempts, max_attempts, enqueued_at, due_at, finished_at)"
                " VALUES (?, 'noop', 'default', '{}', '{}', 0, 'succeeded', 200, 1, 1, ?, ?, ?)",
                [(f"done-{n}", now, now, now) for n in range(2000)],
            )
        conn.execute("ANALYZE")
        claim = (
            "SELECT seq FROM anywork_jobs WHERE queue IN (?) AND "
            + sqlite_store._CLAIMABLE
            + " ORDER BY priority DESC, due_at, seq LIMIT ?"
        )
        poll = "SELECT 1 FROM anywork_jobs WHERE queue IN (?) AND " + sqlite_store._CLAIMABLE
        for sql, params in ((claim, ("default", now, 10)), (poll + " LIMIT 1", ("default", now))):
            plan = _plan(conn, sql, params)
            assert "USING COVERING INDEX anywork_jobs_claim" in plan, plan
            assert "TEMP B-TREE" not in plan and "SCAN anywork_jobs" not in plan, plan
        # The reaper's search holds RUNNING jobs only.
        reap = "SELECT seq FROM anywork_jobs WHERE state = 'running' AND lease_until <= ?"
        plan = _plan(conn, reap, (now,))
        assert "anywork_jobs_leases" in plan and "SCAN anywork_jobs" not in plan, plan
    finally:
        conn.close()


async def _open_and_close(url: str) -> None:
    async with SQLiteStore(url):
        pass
