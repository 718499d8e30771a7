"""The PostgreSQL store's blocking producer path: ``add_blocking``, ``add`` run over psycopg 3
connections from the calling thread, which ``SyncQueue`` uses with no portal round trip
(real PostgreSQL, direct and through PgBouncer in transaction mode)."""

from __future__ import annotations

import ssl
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import psycopg
import pytest

from tests.stores.conftest import POSTGRES_URL, require_pgbouncer
from work import Job, JobEvent, JobState, SyncQueue
from work.stores import JobRecord
from work.stores._postgres_sync import SyncConnections, SyncRunner, sync_connect_options
from work.stores.postgres import PostgresStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only: a store is entered on asyncio."""
    return "asyncio"


class Spied(PostgresStore):
    """A PostgreSQL store on a schema of its own that counts the adds made on its loop."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, schema=f"anywork_synctest_{uuid.uuid4().hex[:12]}", **options)
        self.async_adds = 0

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        self.async_adds += 1
        return await super().add(records)


@pytest.fixture(params=["direct", "pgbouncer"])
def url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL directly, or through PgBouncer in transaction mode with ``listen=false``."""
    if request.param == "direct":
        return POSTGRES_URL
    return require_pgbouncer() + "?listen=false&poll_interval=0.05"


@pytest.fixture
def spied(url: str) -> Iterator[Spied]:
    """A store not entered yet (a SyncQueue enters it), its schema dropped after the test."""
    store = Spied(url)
    try:
        yield store
    finally:
        anyio.run(store.drop)


@pytest.fixture
async def entered(url: str) -> AsyncIterator[Spied]:
    """An entered store on a fresh schema, dropped after the test (asyncio: asyncpg)."""
    store = Spied(url)
    try:
        async with store:
            yield store
    finally:
        await store.drop()


def _sync(store: PostgresStore) -> SyncConnections:
    sync = store._sync
    assert isinstance(sync, SyncConnections)
    return sync


def _idle(store: PostgresStore) -> list[psycopg.Connection[dict[str, Any]]]:
    """The store's idle psycopg connections."""
    return [runner.conn for runner in _sync(store)._idle]


def _job(id: str, **changes: Any) -> JobRecord:
    return JobRecord(id=id, handler="h", enqueued_at=datetime.now(UTC)).replace(**changes)


def test_sync_enqueue_on_postgres_runs_in_the_calling_thread(spied: Spied, url: str) -> None:
    """SyncQueue.enqueue on PostgreSQL stores jobs over psycopg from the calling thread (the
    portal's loop sees no add), with add's answers: the stored record, the existing one for
    a taken id or an active unique key, a batch (repeating an id), a TypeError before
    anything is stored; behind PgBouncer its connection prepares no statement."""
    with SyncQueue(spied) as queue:
        rec = queue.enqueue(Job("noop", {"k": 1}, id="one"), priority=3, unique_key="u")
        assert rec.id == "one" and rec.priority == 3 and rec.state is JobState.QUEUED
        assert queue.enqueue(Job("noop", {"k": 2}, id="one")) == rec
        assert queue.enqueue(Job("noop", id="other"), unique_key="u") == rec
        many = queue.enqueue_many([Job("noop", id="two"), Job("noop", id="two")])
        assert [r.id for r in many] == ["two", "two"] and many[0] == many[1]
        with pytest.raises(TypeError):
            queue.enqueue(Job("noop", {"bad": object()}))
        assert queue.get("one") == rec
        assert queue.get("other") is None
        assert queue.stats()["default"]["queued"] == 2
        assert spied.async_adds == 0
        (conn,) = _idle(spied)
        assert conn.prepare_threshold == (None if "listen=false" in url else 5)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sync_enqueue_from_a_worker_thread_of_either_backend(
    anyio_backend: str, url: str
) -> None:
    """A SyncQueue used from a worker thread of an asyncio or a trio program (a thread with
    no event loop of its own) adds there, with no portal round trip."""
    store = Spied(url)

    def produce() -> JobRecord:
        with SyncQueue(store) as queue:
            rec = queue.enqueue(Job("noop", {"x": 1}, id="one"))
            assert queue.get("one") == rec
            return rec

    try:
        rec = await anyio.to_thread.run_sync(produce)
        assert rec.args == {"x": 1} and store.async_adds == 0
    finally:
        await anyio.to_thread.run_sync(anyio.run, store.drop)


def _records(tag: str) -> list[JobRecord]:
    """Jobs with every column add writes set, some left at their defaults."""
    at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    return [
        _job(f"{tag}-plain"),
        _job(
            f"{tag}-full",
            handler="mail",
            args={"to": "a@b.c", "n": [1, 2.5, None], "s": "\u00e9$q$"},
            queue="q1",
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            priority=-7,
            max_attempts=5,
            unique_key=f"{tag}-key",
            state=JobState.SCHEDULED,
            scheduled_for=at,
            timeout=2.5,
            retry={"delay": 1.0, "backoff": 2.0},
            result_ttl=60.0,
        ),
        _job(
            f"{tag}-done",
            state=JobState.FAILED,
            status=409,
            attempts=2,
            error="boom",
            result={"r": [1]},
            started_at=at - timedelta(seconds=3),
            finished_at=at,
        ),
    ]


def _blocking(store: PostgresStore, records: Sequence[JobRecord]) -> list[JobRecord]:
    stored = store.add_blocking(records)
    assert stored is not None
    return stored


async def _in_thread(store: PostgresStore, records: Sequence[JobRecord]) -> list[JobRecord]:
    return await anyio.to_thread.run_sync(_blocking, store, records)


async def test_add_blocking_answers_as_add_does(entered: Spied) -> None:
    """add_blocking returns what add returns for the same jobs and stores what add stores
    (read back with get), and answers a taken id and an active unique key with the existing
    job, as add does, whichever of the two stored it."""
    by_add = await entered.add(_records("a"))
    by_thread = await _in_thread(entered, _records("b"))
    for a, b in zip(by_add, by_thread, strict=True):
        assert b == a.replace(
            id=b.id,
            enqueued_at=b.enqueued_at,
            unique_key=b.unique_key,
        )
        assert await entered.get(b.id) == b
        assert b.enqueued_at is not None and b.enqueued_at.tzinfo is UTC
    # Taken ids and active unique keys, each answered by the other path's record.
    again = [_job("a-plain", handler="other"), _job("new", queue="q1", unique_key="b-key")]
    assert await _in_thread(entered, again) == [by_add[0], by_thread[1]]
    again = [_job("b-plain", handler="other"), _job("new2", queue="q1", unique_key="a-key")]
    assert await entered.add(again) == [by_thread[0], by_add[1]]
    # A repeated id within one call: the second is the first's record.
    twice = await _in_thread(entered, [_job("dup", args={"n": 1}), _job("dup", args={"n": 2})])
    assert twice[0] == twice[1] and twice[1].args == {"n": 1}
    assert entered.async_adds == 2


async def test_add_blocking_notifies_workers_and_sends_the_event(entered: Spied) -> None:
    """A job added from a thread sends the work NOTIFY on the store's channel and emits its
    ENQUEUED event (the insert trigger's NOTIFY, or the event log behind a pooler), as one
    added by add does."""
    notified = anyio.Event()
    payloads: list[str] = []

    def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
        payloads.append(payload)
        notified.set()

    listener = await asyncpg.connect(POSTGRES_URL)  # LISTEN needs a direct session
    try:
        await listener.add_listener(entered._channel, on_notify)
        async with entered.events() as events:
            await _in_thread(entered, [_job("one", queue="q1", handler="mail")])
            with anyio.fail_after(10):
                await notified.wait()
                seen = [event async for event in _first(events)]
    finally:
        await listener.close()
    assert payloads == ["q1"]
    (event,) = seen
    assert (event.kind, event.job_id, event.queue, event.handler) == (
        "enqueued",
        "one",
        "q1",
        "mail",
    )


async def _first(events: AsyncIterator[JobEvent]) -> AsyncIterator[JobEvent]:
    async for event in events:
        yield event
        return


def test_sync_enqueue_keeps_the_trace_context(spied: Spied) -> None:
    """SyncQueue.enqueue from the calling thread stores the caller's trace context in the
    job's headers, as Queue.enqueue does."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with SyncQueue(spied) as queue:
        with tracer.start_as_current_span("producer") as span:
            rec = queue.enqueue(Job("noop", id="one"))
        trace_id = format(span.get_span_context().trace_id, "032x")
        assert trace_id in rec.headers["traceparent"]
        assert queue.get("one") == rec
        assert spied.async_adds == 0


def test_sync_enqueue_from_many_threads(url: str) -> None:
    """Threads sharing one SyncQueue on PostgreSQL store every job once, each over a
    connection of its own while it adds; no more idle ones are kept than the pool's
    max_size, and they close with the queue."""
    spied = Spied(url, max_size=2)
    try:
        _many_threads(spied)
    finally:
        anyio.run(spied.drop)


def _many_threads(spied: Spied) -> None:
    with SyncQueue(spied) as queue:
        start = threading.Barrier(4)

        def produce(t: int) -> None:
            start.wait()
            for i in range(20):
                queue.enqueue(Job("noop", {"i": i}, id=f"t{t}-{i}"))
                queue.enqueue(Job("noop", {"i": i}, id=f"t{(t + 1) % 4}-{i}"))

        with ThreadPoolExecutor(4) as pool:  # a producer's error is raised here
            list(pool.map(produce, range(4)))
        assert queue.stats()["default"]["queued"] == 80
        assert spied.async_adds == 0
        sync = _sync(spied)
        conns = _idle(spied)
        assert 1 <= len(conns) <= 2
    assert all(conn.closed for conn in conns)
    assert spied._sync is None and sync._closed


def test_closing_the_store_closes_the_sync_connection(spied: Spied) -> None:
    """The store's psycopg connection closes with the store (the server sees it go), and a
    store entered again adds over a new one."""
    with SyncQueue(spied) as queue:
        queue.enqueue(Job("noop", id="one"))
        (conn,) = _idle(spied)
        pid = conn.info.backend_pid
    assert conn.closed
    if "6432" not in spied._dsn:  # behind PgBouncer the server connection is PgBouncer's
        assert not anyio.run(_backend_alive, pid)
    with SyncQueue(spied) as queue:
        queue.enqueue(Job("noop", id="two"))
        (again,) = _idle(spied)
        assert again is not conn and not again.closed
        assert spied.async_adds == 0


async def _backend_alive(pid: int) -> bool:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await conn.close()


async def _terminate(pid: int) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


def test_sync_enqueue_after_the_server_closed_the_connection() -> None:
    """When the server ends the psycopg connection, the next enqueue still stores its job
    (through the portal, as add) and the one after adds over a new connection."""
    store = Spied(POSTGRES_URL)
    try:
        with SyncQueue(store) as queue:
            queue.enqueue(Job("noop", id="first"))
            (conn,) = _idle(store)
            anyio.run(_terminate, conn.info.backend_pid)
            assert queue.enqueue(Job("noop", id="second")).id == "second"
            assert store.async_adds == 1 and conn.closed
            assert queue.enqueue(Job("noop", id="third")).id == "third"
            assert store.async_adds == 1
            assert queue.get("second") is not None and queue.get("third") is not None
    finally:
        anyio.run(store.drop)


def test_an_add_interrupted_mid_statement_drops_its_connection(
    spied: Spied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt inside add_blocking reaches the caller and the connection, in a
    state nobody knows, is closed; the next enqueue adds over a new one."""
    with SyncQueue(spied) as queue:
        queue.enqueue(Job("noop", id="one"))
        (conn,) = _idle(spied)

        async def interrupted(self: SyncRunner, sql: str, *args: Any) -> str:
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(SyncRunner, "execute", interrupted)
            with pytest.raises(KeyboardInterrupt):
                queue.enqueue(Job("noop", id="two"))
        assert conn.closed and _idle(spied) == []
        assert queue.enqueue(Job("noop", id="two")).id == "two"
        assert spied.async_adds == 0 and len(_idle(spied)) == 1


def _execute(spied: Spied, sql: str) -> None:
    """Run ``sql`` on the store's jobs table (``{jobs}`` in it) over a connection of its own,
    as another program would."""

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql.format(jobs=f'"{spied.schema}".jobs'))
        finally:
            await conn.close()

    anyio.run(run)


def test_a_statement_that_fails_raises_what_add_raises(spied: Spied) -> None:
    """An insert the server refuses (a CHECK constraint added here) goes through the portal,
    so SyncQueue.enqueue raises add's own error (asyncpg's), as Queue.enqueue does; the
    psycopg connection stays in use."""

    with SyncQueue(spied) as queue:
        queue.enqueue(Job("noop", id="one"))
        (conn,) = _idle(spied)
        _execute(spied, "ALTER TABLE {jobs} ADD CONSTRAINT no_bad CHECK (handler <> 'bad')")
        with pytest.raises(asyncpg.CheckViolationError):
            queue.enqueue(Job("bad", id="two"))
        assert spied.async_adds == 1 and queue.get("two") is None
        assert queue.enqueue(Job("noop", id="three")).id == "three"
        assert _idle(spied) == [conn] and spied.async_adds == 1


def test_a_conflict_psycopg_cannot_read_is_answered_through_the_portal(spied: Spied) -> None:
    """A taken id whose row psycopg cannot read (a time at infinity, written by another
    program) is answered by add on the store's loop, as Queue.enqueue answers it."""

    with SyncQueue(spied) as queue:
        queue.enqueue(Job("noop", id="one"))
        (conn,) = _idle(spied)
        _execute(spied, "UPDATE {jobs} SET scheduled_for = 'infinity' WHERE id = 'one'")
        again = queue.enqueue(Job("noop", {"x": 1}, id="one"))
        assert again.id == "one" and again.args == {} and spied.async_adds == 1
        assert _idle(spied) == [conn]


def test_sync_enqueue_without_psycopg_uses_the_portal(
    spied: Spied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without psycopg installed (its import fails), add_blocking answers None and
    SyncQueue.enqueue adds through the portal as before."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with SyncQueue(spied) as queue:
        assert queue.enqueue(Job("noop", id="one")).id == "one"
        assert [r.id for r in queue.enqueue_many([Job("noop", id="two")])] == ["two"]
        assert spied.async_adds == 2
        assert spied._sync is False


def test_a_connection_that_cannot_open_sends_adds_through_the_portal(
    spied: Spied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the psycopg connection cannot be opened, the add goes through the portal (which
    raises the store's own error if the server is down), and adds in the next seconds do
    not try again."""
    tries: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        tries.append("connect")
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(psycopg.Connection, "connect", refuse)
    with SyncQueue(spied) as queue:
        assert queue.enqueue(Job("noop", id="one")).id == "one"
        assert queue.enqueue(Job("noop", id="two")).id == "two"
        assert spied.async_adds == 2 and tries == ["connect"]


def test_a_url_libpq_cannot_read_turns_the_blocking_path_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A URL with a parameter only asyncpg reads fails psycopg's connect with a
    ProgrammingError: the store adds through the portal from then on without trying again."""
    store = Spied(POSTGRES_URL)
    tries: list[str] = []

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        tries.append("connect")
        raise psycopg.ProgrammingError('invalid URI query parameter: "bogus"')

    monkeypatch.setattr(psycopg.Connection, "connect", unreadable)
    try:
        with SyncQueue(store) as queue:
            assert queue.enqueue(Job("noop", id="one")).id == "one"
            assert queue.enqueue(Job("noop", id="two")).id == "two"
            assert store.async_adds == 2 and tries == ["connect"]
            assert _sync(store)._failed_at == float("inf")
    finally:
        anyio.run(store.drop)


def test_add_blocking_needs_an_open_store() -> None:
    """add_blocking on a store that is not open raises RuntimeError; an empty batch adds
    nothing and opens no connection, nor does a closed store."""
    store = PostgresStore(POSTGRES_URL, schema=f"anywork_synctest_{uuid.uuid4().hex[:12]}")
    with pytest.raises(RuntimeError, match="not open"):
        store.add_blocking([_job("a")])

    async def empty() -> list[JobRecord] | None:
        try:
            async with store:
                return store.add_blocking([])
        finally:
            await store.drop()

    assert anyio.run(empty) == [] and store._sync is None
    # A thread that passed the check as the store closed makes no connections.
    assert store._sync_connections() is None and store._sync is None


def test_sync_connect_options_follow_the_asyncpg_options() -> None:
    """asyncpg's connect options become libpq's (database as dbname, timeout as
    connect_timeout, ssl modes as sslmode); pool and statement-cache options are ignored; one
    libpq has no equivalent for turns the blocking path off (None)."""
    assert sync_connect_options({}) == {"connect_timeout": "60"}
    assert sync_connect_options(
        {
            "user": "u",
            "password": "p",
            "database": "d",
            "host": ["h1", "h2"],
            "port": 5433,
            "timeout": 0.5,
            "ssl": "verify-full",
            "statement_cache_size": 0,
            "command_timeout": 3,
            "server_settings": {"application_name": "app"},
        }
    ) == {
        "user": "u",
        "password": "p",
        "dbname": "d",
        "host": "h1,h2",
        "port": "5433",
        "connect_timeout": "2",
        "sslmode": "verify-full",
        "application_name": "app",
    }
    assert sync_connect_options({"ssl": True})["sslmode"] == "require"  # type: ignore[index]
    assert sync_connect_options({"ssl": ssl.create_default_context()}) is None
    assert sync_connect_options({"server_settings": {}}) == {"connect_timeout": "60"}
    assert sync_connect_options({"server_settings": {"search_path": "x"}}) is None
    assert sync_connect_options({"init": print}) is None


def test_options_without_an_equivalent_use_the_portal() -> None:
    """A store whose connect options psycopg cannot follow (an ``init`` callback) adds
    through the portal."""
    store = Spied(POSTGRES_URL)
    store._options["init"] = _noop_init
    try:
        with SyncQueue(store) as queue:
            assert queue.enqueue(Job("noop", id="one")).id == "one"
            assert store.async_adds == 1 and store._sync is False
    finally:
        anyio.run(store.drop)


async def _noop_init(conn: Any) -> None:
    """An asyncpg ``init`` callback that does nothing."""
