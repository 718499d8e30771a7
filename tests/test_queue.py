"""Queue and SyncQueue: validation, what enqueue stores, and the synchronous twin."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider

from work import (
    Constant,
    Job,
    JobRecord,
    JobState,
    Queue,
    RetryPolicy,
    Status,
    SyncQueue,
    Worker,
)
from work.stores import open_store
from work.stores.memory import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts add() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.add_calls = 0

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        self.add_calls += 1
        return await super().add(records)


@pytest.mark.anyio
async def test_enqueue_stores_a_queued_record() -> None:
    """enqueue() stores the job's fields as a QUEUED record with its own id."""
    queue = Queue(MemoryStore())
    job = Job("send", {"to": "a@b.c"}, queue="mail", timeout=5, headers={"x-corr": "42"})
    rec = await queue.enqueue(job, priority=3)
    assert rec.id == job.id and rec.handler == "send" and rec.queue == "mail"
    assert rec.args == {"to": "a@b.c"} and rec.headers["x-corr"] == "42"
    assert rec.state is JobState.QUEUED and rec.status is Status.UNKNOWN
    assert rec.priority == 3 and rec.timeout == 5.0
    assert rec.max_attempts == 1 and rec.retry is None and rec.attempts == 0
    assert rec.enqueued_at is not None and rec.enqueued_at.tzinfo is not None
    assert rec.scheduled_for is None
    assert await queue.get(job.id) == rec


@pytest.mark.anyio
async def test_enqueue_keeps_the_retry_policy() -> None:
    """A RetryPolicy is stored as max_attempts plus backoff, retried statuses and deferrals."""
    queue = Queue(MemoryStore())
    policy = RetryPolicy(max_attempts=4, backoff=Constant(2.0), max_deferrals=7)
    rec = await queue.enqueue(Job("x"), retry=policy)
    assert rec.max_attempts == 4
    assert rec.retry == {
        "backoff": {"kind": "constant", "seconds": 2.0},
        "retry_on": [408, 429, *range(500, 509), 510, 511],
        "max_deferrals": 7,
    }
    custom = RetryPolicy(retry_on=lambda s: s == Status.CONFLICT)
    rec = await queue.enqueue(Job("x"), retry=custom)
    assert rec.retry is not None and rec.retry["retry_on"] == [409]


@pytest.mark.anyio
async def test_delay_and_at_schedule_the_job() -> None:
    """delay (seconds or timedelta) and an aware ``at`` make the job SCHEDULED for then."""
    queue = Queue(MemoryStore())
    before = datetime.now(UTC)
    a = await queue.enqueue(Job("x"), delay=60)
    b = await queue.enqueue(Job("x"), delay=timedelta(minutes=2))
    when = datetime(2100, 1, 1, tzinfo=UTC)
    c = await queue.enqueue(Job("x"), at=when)
    assert a.state is JobState.SCHEDULED and a.scheduled_for is not None
    assert a.scheduled_for >= before + timedelta(seconds=60)
    assert b.scheduled_for is not None and b.scheduled_for >= before + timedelta(minutes=2)
    assert c.state is JobState.SCHEDULED and c.scheduled_for == when


@pytest.mark.anyio
async def test_zero_delay_or_past_eta_is_queued() -> None:
    """A zero delay or an ``at`` in the past is ready at once."""
    queue = Queue(MemoryStore())
    assert (await queue.enqueue(Job("x"), delay=0)).state is JobState.QUEUED
    past = datetime.now(UTC) - timedelta(hours=1)
    assert (await queue.enqueue(Job("x"), at=past)).state is JobState.QUEUED


@pytest.mark.anyio
async def test_bad_timing_is_refused() -> None:
    """A naive ``at``, a negative delay, or both delay and at are ValueErrors."""
    queue = Queue(MemoryStore())
    with pytest.raises(ValueError, match="naive"):
        await queue.enqueue(Job("x"), at=datetime(2100, 1, 1))
    with pytest.raises(ValueError, match="delay"):
        await queue.enqueue(Job("x"), delay=-1)
    with pytest.raises(ValueError, match="not both"):
        await queue.enqueue(Job("x"), delay=1, at=datetime.now(UTC))
    with pytest.raises(TypeError, match="at"):
        await queue.enqueue(Job("x"), at="tomorrow")  # type: ignore[call-overload]
    assert await queue.list() == []


@pytest.mark.anyio
async def test_bad_options_are_refused() -> None:
    """Non-Job jobs, non-int priorities, non-policy retries and empty unique keys are refused."""
    queue = Queue(MemoryStore())
    with pytest.raises(TypeError, match="Job"):
        await queue.enqueue("send")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="priority"):
        await queue.enqueue(Job("x"), priority=1.5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="RetryPolicy"):
        await queue.enqueue(Job("x"), retry=3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="unique_key"):
        await queue.enqueue(Job("x"), unique_key="")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"when": datetime(2020, 1, 1, tzinfo=UTC)}, "job.args['when']"),
        ({"deep": {"list": [1, {1, 2}]}}, "job.args['deep']['list'][1]"),
        ({"nan": math.nan}, "job.args['nan']"),
        ({"keys": {1: "one"}}, "job.args['keys'] has a key 1"),
        ({"blob": b"bytes"}, "job.args['blob']"),
    ],
)
async def test_non_json_args_name_the_key(args: dict[str, object], named: str) -> None:
    """Args JSON cannot carry faithfully are a TypeError naming where; nothing is stored."""
    queue = Queue(MemoryStore())
    with pytest.raises(TypeError) as info:
        await queue.enqueue(Job("x", args))
    assert named in str(info.value)
    assert await queue.list() == []


@pytest.mark.anyio
async def test_non_str_header_is_refused() -> None:
    """Header values must be str."""
    queue = Queue(MemoryStore())
    with pytest.raises(TypeError, match="x-count"):
        await queue.enqueue(Job("x", headers={"x-count": 3}))  # type: ignore[dict-item]


@pytest.mark.anyio
async def test_enqueue_injects_the_trace_context() -> None:
    """The current OpenTelemetry trace context is written into the stored headers only."""
    tracer = TracerProvider().get_tracer("test")
    queue = Queue(MemoryStore())
    job = Job("x", headers={"keep": "me"})
    with tracer.start_as_current_span("producer") as span:
        rec = await queue.enqueue(job)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert trace_id in rec.headers["traceparent"]
    assert rec.headers["keep"] == "me"
    assert job.headers == {"keep": "me"}


@pytest.mark.anyio
async def test_enqueue_many_injects_the_trace_context_into_every_job() -> None:
    """enqueue_many reads the trace context once and writes it into each job's stored
    headers, beside the job's own, leaving the Jobs' headers untouched; without an active
    span nothing is added."""
    tracer = TracerProvider().get_tracer("test")
    queue = Queue(MemoryStore())
    jobs = [Job("x", headers={"n": str(i)}) for i in range(3)]
    with tracer.start_as_current_span("producer") as span:
        records = await queue.enqueue_many(jobs)
    trace_id = format(span.get_span_context().trace_id, "032x")
    for i, rec in enumerate(records):
        assert trace_id in rec.headers["traceparent"]
        assert rec.headers["n"] == str(i)
        assert jobs[i].headers == {"n": str(i)}
    assert len({id(rec.headers) for rec in records}) == 3
    (plain,) = await queue.enqueue_many([Job("x", headers={"own": "1"})])
    assert plain.headers == {"own": "1"}


@pytest.mark.anyio
async def test_enqueue_many_is_one_round_trip() -> None:
    """enqueue_many() stores a batch with one store.add() call; a bad job stores none."""
    store = CountingStore()
    queue = Queue(store)
    records = await queue.enqueue_many([Job("a"), Job("b"), Job("c")], priority=2)
    assert [r.handler for r in records] == ["a", "b", "c"]
    assert {r.priority for r in records} == {2}
    assert store.add_calls == 1
    with pytest.raises(TypeError):
        await queue.enqueue_many([Job("d"), Job("e", {"bad": object()})])
    assert store.add_calls == 1
    assert await queue.enqueue_many([]) == []
    assert len(await queue.list()) == 3


@pytest.mark.anyio
async def test_wait_unknown_job_and_timeout() -> None:
    """wait() raises LookupError for an unknown id and TimeoutError for an unfinished job."""
    queue = Queue(MemoryStore())
    with pytest.raises(LookupError, match="nope"):
        await queue.wait("nope", timeout=1)
    rec = await queue.enqueue(Job("x"))
    started = anyio.current_time()
    with pytest.raises(TimeoutError, match=rec.id):
        await queue.wait(rec.id, timeout=0.2)
    assert anyio.current_time() - started >= 0.19  # it really waited


@pytest.mark.anyio
async def test_wait_returns_a_final_record() -> None:
    """wait() returns once the job is final (here: cancelled by another task)."""
    queue = Queue(MemoryStore())
    rec = await queue.enqueue(Job("x"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.cancel, rec.id)
        done = await queue.wait(rec.id, timeout=5)
    assert done.state is JobState.CANCELLED


@pytest.mark.anyio
async def test_list_and_stats_arguments() -> None:
    """list() takes a state as a str too and refuses bad limits and states; stats() counts."""
    queue = Queue(MemoryStore())
    a = await queue.enqueue(Job("x"))
    await queue.enqueue(Job("x"), delay=60)
    assert [r.id for r in await queue.list(state="queued")] == [a.id]
    with pytest.raises(ValueError):
        await queue.list(state="sleeping")
    with pytest.raises(ValueError, match="limit"):
        await queue.list(limit=-1)
    assert await queue.stats() == {"default": {"queued": 1, "scheduled": 1}}


@pytest.mark.anyio
async def test_queue_from_url_as_context_manager(tmp_path: Path) -> None:
    """Queue(url, **options) opens the store; ``async with`` enters and leaves it."""
    async with Queue(f"sqlite:///{tmp_path / 'q.db'}", poll_interval=0.01) as queue:
        rec = await queue.enqueue(Job("x"))
        assert (await queue.get(rec.id)) == rec
    assert "q.db" in repr(queue)


def test_queue_constructor_errors() -> None:
    """Queue() refuses things that are not stores, and options without a URL."""
    with pytest.raises(TypeError, match="store"):
        Queue(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options"):
        Queue(MemoryStore(), schema="x")
    with pytest.raises(ValueError, match="scheme"):
        Queue("ftp://nowhere")


def test_unknown_scheme_error_lists_schemes_and_hides_the_password() -> None:
    """An unknown scheme names the known ones; a password in the URL is never echoed."""
    with pytest.raises(ValueError) as info:
        open_store("mysql://app:s3cret@127.0.0.1/jobs")
    message = str(info.value)
    assert "s3cret" not in message and "app:***@127.0.0.1" in message
    assert "sqlite://" in message and "postgresql://" in message and "redis://" in message


def test_sync_queue_round_trip(tmp_path: Path) -> None:
    """SyncQueue offers the same calls, blocking, and closes cleanly (twice is fine)."""
    with SyncQueue(f"sqlite:///{tmp_path / 's.db'}") as queue:
        rec = queue.enqueue(Job("x", {"n": 1}), priority=1)
        (other,) = queue.enqueue_many([Job("y")], delay=60)
        assert queue.get(rec.id) == rec
        assert queue.get("nope") is None
        assert [r.id for r in queue.list()] == [rec.id, other.id]
        assert queue.stats() == {"default": {"queued": 1, "scheduled": 1}}
        assert queue.cancel(rec.id) is True
        assert queue.wait(rec.id, timeout=5).state is JobState.CANCELLED
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            queue.wait(other.id, timeout=0.2)
        assert time.monotonic() - started >= 0.19  # it really waited
        with pytest.raises(TypeError, match="when"):
            queue.enqueue(Job("x", {"when": object()}))
    queue.close()
    with pytest.raises(RuntimeError, match="closed"):
        queue.get(rec.id)


def test_sync_queue_enters_a_store_object() -> None:
    """SyncQueue(store) enters the store on its own loop and leaves it on close."""
    store = MemoryStore()
    queue = SyncQueue(store)
    try:
        rec = queue.enqueue(Job("x"))
        assert queue.get(rec.id) == rec
        assert queue.store is store
    finally:
        queue.close()


def test_sync_queue_with_a_worker_on_another_thread(tmp_path: Path) -> None:
    """A SyncQueue producer and a worker serving the same SQLite file on another thread."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stop = threading.Event()
    ready = threading.Event()

    async def consume() -> None:
        worker = Worker()

        @worker.handler()
        async def double(job: Job) -> int:
            return int(job.args["n"]) * 2

        async with open_store(url) as store, worker, anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, store)
            ready.set()
            while not stop.is_set():
                await anyio.sleep(0.01)
            worker.stop()

    thread = threading.Thread(target=anyio.run, args=(consume,))
    thread.start()
    try:
        assert ready.wait(10)
        with SyncQueue(url) as queue:
            rec = queue.enqueue(Job("double", {"n": 21}))
            done = queue.wait(rec.id, timeout=10)
        assert done.state is JobState.SUCCEEDED and done.result == 42
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_check_refuses_without_touching_the_store(tmp_path: Path) -> None:
    """Queue.check raises what enqueue would, on a store that was never entered (no file)."""
    path = tmp_path / "never.db"
    queue = Queue(open_store(f"sqlite:///{path}"))
    with pytest.raises(ValueError, match="priority must be between"):
        queue.check(Job("x"), priority=2**31)
    with pytest.raises(ValueError, match=r"job\.queue must not contain control characters"):
        queue.check(Job("x", queue="a\x00"))
    queue.check(Job("x"), delay=5, priority=-(2**31))  # fine: returns None
    assert not path.exists()
    with SyncQueue("memory://") as sync, pytest.raises(ValueError, match="delay must be"):
        sync.check(Job("x"), delay=float("inf"))
