"""Deferred completion on every store: WAITING, complete, heartbeat, deadlines, settings.

Part 1 drives the raw Store methods; part 2 goes end to end through ``Queue`` and
``Worker.serve``. Every test runs on every store (see ``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest

from work import (
    Deferred,
    Job,
    JobEventKind,
    JobState,
    JobStateError,
    Queue,
    Status,
    SyncQueue,
    Worker,
)
from work.stores import Outcome, Store

from .test_conformance import fast_retry, now, record, seconds_from_now, serving, until

pytestmark = pytest.mark.anyio

OWNER = "tester"


async def make_waiting(
    store: Store, *, ttl: float = 60.0, deadline_in: float | None = None, **fields: Any
) -> str:
    """Add a job, claim it and complete it WAITING (as serve does for a Deferred); its id."""
    (rec,) = await store.add([record(**fields)])
    (claimed,) = await store.claim([rec.queue], limit=1, lease=30, owner=OWNER)
    await store.complete(
        OWNER,
        [
            Outcome(
                id=rec.id,
                state=JobState.WAITING,
                status=Status.ACCEPTED,
                result={"ref": "ext-1"},
                deadline=seconds_from_now(ttl if deadline_in is None else deadline_in),
                ttl=ttl,
            )
        ],
    )
    return claimed.record.id


# == Part 1: the raw Store methods ===============================================================


async def test_waiting_outcome_is_stored_and_frees_the_job(store: Store) -> None:
    """A WAITING outcome stores 202, the provisional result, the deadline and the ttl; the job
    is held by no one and never claimed."""
    before = now()
    id = await make_waiting(store, ttl=30.0)
    got = await store.get(id)
    assert got is not None
    assert got.state is JobState.WAITING and got.status is Status.ACCEPTED
    assert got.result == {"ref": "ext-1"}
    assert got.deferred_ttl == 30.0
    assert got.deadline is not None and got.deadline.utcoffset() == timedelta(0)
    assert abs((got.deadline - before).total_seconds() - 30.0) < 2
    assert got.finished_at is None and got.attempts == 1
    assert not got.state.is_final
    assert await store.claim(["default"], limit=10, lease=30, owner="other") == []
    assert await store.renew(OWNER, [id], lease=30) == {id}
    assert [rec.id for rec in await store.list(state=JobState.WAITING)] == [id]
    assert (await store.stats())["default"].get("waiting") == 1
    assert (await store.stats())["default"].get("running", 0) == 0


async def test_settle_succeeded_stores_the_result(store: Store) -> None:
    """settle() finishes a WAITING job: SUCCEEDED with its result, finished, no deadline."""
    id = await make_waiting(store)
    done = await store.settle(
        Outcome(id=id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result={"n": 1})
    )
    assert done is not None and done == await store.get(id)
    assert done.state is JobState.SUCCEEDED and done.status is Status.SUCCESS
    assert done.result == {"n": 1} and done.deadline is None
    assert done.finished_at is not None and done.attempts == 1


async def test_settle_scheduled_makes_the_job_claimable_again(store: Store) -> None:
    """A SCHEDULED outcome (a retry) puts the job back: claimed again when due, attempt 2."""
    id = await make_waiting(store)
    retry = await store.settle(
        Outcome(
            id=id,
            state=JobState.SCHEDULED,
            status=Status.GATEWAY_TIMEOUT,
            error="no callback within ttl",
            scheduled_for=seconds_from_now(-0.01),
        )
    )
    assert retry is not None and retry.state is JobState.SCHEDULED
    assert retry.deadline is None and retry.error == "no callback within ttl"
    (again,) = await store.claim(["default"], limit=1, lease=30, owner=OWNER)
    assert again.record.id == id and again.record.attempts == 2


async def test_settle_and_heartbeat_refuse_unknown_and_non_waiting(store: Store) -> None:
    """settle() and heartbeat() raise LookupError for an unknown id and JobStateError naming
    the state for a job that is not WAITING."""
    (queued,) = await store.add([record()])
    done = Outcome(id="nope", state=JobState.SUCCEEDED, status=Status.SUCCESS)
    with pytest.raises(LookupError, match="nope"):
        await store.settle(done)
    with pytest.raises(LookupError, match="nope"):
        await store.heartbeat("nope", 5.0)
    with pytest.raises(JobStateError, match="queued") as caught:
        await store.settle(Outcome(id=queued.id, state=JobState.FAILED, status=Status.CONFLICT))
    assert caught.value.state == "queued" and caught.value.job_id == queued.id
    with pytest.raises(JobStateError, match="queued"):
        await store.heartbeat(queued.id)
    assert await store.settle(done, only_expired=True) is None
    assert (await store.get(queued.id)) == queued


async def test_heartbeat_pushes_the_deadline(store: Store) -> None:
    """heartbeat() moves the deadline to now + ttl, by default the Deferred's ttl."""
    id = await make_waiting(store, ttl=40.0, deadline_in=1.0)
    pushed = await store.heartbeat(id, 500.0)
    assert pushed.deadline is not None
    assert abs((pushed.deadline - now()).total_seconds() - 500) < 2
    back = await store.heartbeat(id)
    assert back.deadline is not None
    assert abs((back.deadline - now()).total_seconds() - 40) < 2
    assert back.state is JobState.WAITING and back == await store.get(id)


async def test_overdue_lists_only_passed_deadlines(store: Store) -> None:
    """overdue() returns the WAITING jobs whose deadline passed, and nothing else."""
    late = await make_waiting(store, deadline_in=-1.0)
    await make_waiting(store, deadline_in=60.0)
    await store.add([record()])
    assert [rec.id for rec in await store.overdue()] == [late]
    assert await store.overdue(limit=0) == []


async def test_settle_only_expired_loses_to_a_heartbeat(store: Store) -> None:
    """A passed deadline acted on after a heartbeat changes nothing (the heartbeat wins), and
    of two workers acting on one passed deadline only the first changes the job."""
    id = await make_waiting(store, ttl=60.0, deadline_in=-1.0)
    (seen,) = await store.overdue()
    await store.heartbeat(id)
    fail = Outcome(id=id, state=JobState.FAILED, status=Status.GATEWAY_TIMEOUT, error="late")
    assert await store.settle(fail, only_expired=True) is None
    assert (await store.get(id)) is not None and seen.id == id
    other = await make_waiting(store, deadline_in=-1.0)
    fail = Outcome(id=other, state=JobState.FAILED, status=Status.GATEWAY_TIMEOUT, error="late")
    first = await store.settle(fail, only_expired=True)
    assert first is not None and first.state is JobState.FAILED
    assert await store.settle(fail, only_expired=True) is None


async def test_retention_keeps_waiting_jobs_and_expires_settled_ones(store: Store) -> None:
    """Retention never deletes a WAITING job; once settled final, a job's own result_ttl
    counts from then, as for any finished job."""
    id = await make_waiting(store, result_ttl=0.0)
    assert await store.expire(["default"], result_ttl=0.0, limit=10) == 0
    assert await store.get(id) is not None
    await store.settle(Outcome(id=id, state=JobState.SUCCEEDED, status=Status.SUCCESS))
    deleted = await store.expire(["default"], result_ttl=3600.0, limit=10)
    assert deleted == 1 and await store.get(id) is None


async def test_cancel_waiting_is_immediate(store: Store) -> None:
    """cancel() of a WAITING job makes it CANCELLED (499) at once."""
    id = await make_waiting(store)
    assert await store.cancel(id) is True
    got = await store.get(id)
    assert got is not None and got.state is JobState.CANCELLED
    assert got.status is Status.CANCELLED and got.finished_at is not None
    assert await store.cancel(id) is False


async def test_unique_key_sees_a_waiting_job(store: Store) -> None:
    """While a job with a unique key is WAITING, adding another returns it."""
    id = await make_waiting(store, unique_key="order-7")
    (again,) = await store.add([record(unique_key="order-7")])
    assert again.id == id and again.state is JobState.WAITING


async def test_waiting_and_its_end_are_job_events(store: Store) -> None:
    """A job going WAITING is a WAITING event; settling it is its final kind; a retry after a
    passed deadline is ENQUEUED (the job waits to run again), on every store."""
    queue = Queue(store)
    seen: list[tuple[str, JobEventKind]] = []
    async with queue.events() as events:
        done = await make_waiting(store)
        await queue.complete(done)
        again = await make_waiting(store, retry=fast_retry(max_attempts=2).stored_settings())
        await store.settle(
            Outcome(
                id=again,
                state=JobState.SCHEDULED,
                status=Status.GATEWAY_TIMEOUT,
                scheduled_for=seconds_from_now(60),
            )
        )
        with anyio.fail_after(10):
            async for event in events:
                seen.append((event.job_id, event.kind))
                if sum(1 for job_id, _ in seen if job_id == again) == 4:
                    break
    assert [k for i, k in seen if i == done] == [
        JobEventKind.ENQUEUED,
        JobEventKind.STARTED,
        JobEventKind.WAITING,
        JobEventKind.SUCCEEDED,
    ]
    assert [k for i, k in seen if i == again] == [
        JobEventKind.ENQUEUED,
        JobEventKind.STARTED,
        JobEventKind.WAITING,
        JobEventKind.ENQUEUED,
    ]


async def test_setting_first_value_wins_and_is_shared(
    store: Store, make_store: Callable[[], Store]
) -> None:
    """setdefault_setting() keeps the first value, for every store object on the same data."""
    assert await store.setdefault_setting("secret", "one") == "one"
    assert await store.setdefault_setting("secret", "two") == "one"
    async with make_store() as other:
        assert await other.setdefault_setting("secret", "three") == "one"
        assert await other.setdefault_setting("other", "x") == "x"


# == Part 2: end to end through Queue and Worker.serve ============================================


def deferring_worker(ttl: float = 60.0) -> tuple[Worker, list[int]]:
    """A worker whose ``start`` handler returns Deferred(ttl) and records each attempt."""
    worker = Worker()
    attempts: list[int] = []

    @worker.handler()
    async def start(job: Job) -> Deferred:
        assert job.ctx is not None
        attempts.append(job.ctx.attempt)
        return Deferred(ttl, result={"ref": f"ext-{job.ctx.attempt}"})

    @worker.handler()
    async def quick(job: Job) -> str:
        return "done"

    return worker, attempts


async def waits(store: Store, id: str) -> bool:
    """True once the job is WAITING."""
    rec = await store.get(id)
    return rec is not None and rec.state is JobState.WAITING


async def test_deferred_job_waits_frees_its_slot_and_completes(store: Store) -> None:
    """A handler's Deferred makes the job WAITING (202) without holding the only slot; wait()
    keeps waiting; complete() finishes it SUCCEEDED with the result given."""
    worker, attempts = deferring_worker()
    queue = Queue(store)
    rec = await queue.enqueue(Job("start"))
    async with serving(store, worker, concurrency=1):
        await until(lambda: waits(store, rec.id))
        other = await queue.enqueue(Job("quick"))
        assert (await queue.wait(other.id, timeout=10)).result == "done"
        with pytest.raises(TimeoutError, match="waiting"):
            await queue.wait(rec.id, timeout=0.05)
        waiting = await queue.get(rec.id)
        assert waiting is not None and waiting.status is Status.ACCEPTED
        assert waiting.result == {"ref": "ext-1"} and waiting.deferred_ttl == 60.0
        done = await queue.complete(rec.id, result={"rows": 3})
    assert done.state is JobState.SUCCEEDED and done.status is Status.SUCCESS
    assert done.result == {"rows": 3} and done.deadline is None
    assert await queue.wait(rec.id, timeout=1) == done
    assert attempts == [1]


async def test_complete_with_a_failure_status_retries_by_policy(store: Store) -> None:
    """complete() with a retryable status runs the handler again under the job's policy; a
    status it does not retry fails the job with the error given."""
    worker, attempts = deferring_worker()
    queue = Queue(store)
    rec = await queue.enqueue(Job("start"), retry=fast_retry(max_attempts=3))
    async with serving(store, worker):
        await until(lambda: waits(store, rec.id))
        retried = await queue.complete(rec.id, status=503, error="export crashed")
        assert retried.state in (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING)
        assert retried.status is Status.UNAVAILABLE and retried.error == "export crashed"
        await until(lambda: waits(store, rec.id))
        failed = await queue.complete(rec.id, status=Status.UNPROCESSABLE, error="bad rows")
    assert failed.state is JobState.FAILED and failed.status is Status.UNPROCESSABLE
    assert failed.error == "bad rows" and failed.attempts == 2
    assert attempts == [1, 2]


async def test_passed_deadline_fails_504(store: Store) -> None:
    """A WAITING job nobody completes fails 504 "no callback within ttl" soon after its
    deadline (no retry policy: at once for good)."""
    worker, attempts = deferring_worker(ttl=0.2)
    queue = Queue(store)
    rec = await queue.enqueue(Job("start"))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.GATEWAY_TIMEOUT
    assert done.error == "no callback within ttl" and done.deadline is None
    assert attempts == [1]


async def test_passed_deadline_is_retried_by_policy(store: Store) -> None:
    """A 504 for a passed deadline is retried by the job's policy: the handler runs again."""
    worker, attempts = deferring_worker(ttl=0.2)
    queue = Queue(store)
    rec = await queue.enqueue(Job("start"), retry=fast_retry(max_attempts=2))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=15)
    assert done.state is JobState.FAILED and done.status is Status.GATEWAY_TIMEOUT
    assert done.attempts == 2 and attempts == [1, 2]


async def test_any_serving_worker_acts_on_a_passed_deadline(store: Store) -> None:
    """A passed deadline is acted on by a worker serving other queues, without the handler:
    the check is store-wide."""
    id = await make_waiting(store, deadline_in=-1.0, queue="exports")
    async with serving(store, Worker(), queues=("default",)):
        done = await Queue(store).wait(id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.GATEWAY_TIMEOUT


async def test_heartbeat_keeps_a_job_waiting_past_its_first_deadline(store: Store) -> None:
    """A heartbeat before the deadline keeps the job WAITING after the first deadline has
    passed (a job deferred later, with a shorter wait, fails 504 first)."""
    worker, _ = deferring_worker(ttl=0.3)
    queue = Queue(store)
    kept = await queue.enqueue(Job("start"))
    async with serving(store, worker):
        await until(lambda: waits(store, kept.id))
        await queue.heartbeat(kept.id, 120)
        later = await queue.enqueue(Job("start"))
        failed = await queue.wait(later.id, timeout=10)
        assert failed.status is Status.GATEWAY_TIMEOUT
        still = await queue.get(kept.id)
        assert still is not None and still.state is JobState.WAITING


async def test_cancel_a_waiting_job(store: Store) -> None:
    """Queue.cancel() of a WAITING job ends it CANCELLED (499); complete() then refuses."""
    worker, _ = deferring_worker()
    queue = Queue(store)
    rec = await queue.enqueue(Job("start"), unique_key="export-1")
    async with serving(store, worker):
        await until(lambda: waits(store, rec.id))
        same = await queue.enqueue(Job("start"), unique_key="export-1")
        assert same.id == rec.id
        assert await queue.cancel(rec.id) is True
    done = await queue.wait(rec.id, timeout=1)
    assert done.state is JobState.CANCELLED and done.status is Status.CANCELLED
    with pytest.raises(JobStateError, match="cancelled"):
        await queue.complete(rec.id)
    with pytest.raises(JobStateError, match="cancelled"):
        await queue.heartbeat(rec.id)


async def test_queue_complete_and_heartbeat_bad_input(store: Store) -> None:
    """complete()/heartbeat() name the problem: unknown id, not WAITING, bad status, a result
    JSON cannot carry, a bad ttl; nothing changes."""
    queue = Queue(store)
    id = await make_waiting(store)
    with pytest.raises(LookupError, match="missing"):
        await queue.complete("missing")
    with pytest.raises(LookupError, match="missing"):
        await queue.heartbeat("missing")
    queued = await queue.enqueue(Job("x"))
    with pytest.raises(JobStateError, match="queued"):
        await queue.complete(queued.id)
    with pytest.raises(ValueError, match="999"):
        await queue.complete(id, status=999)
    with pytest.raises(TypeError, match="set"):
        await queue.complete(id, result={"bad": {1, 2}})
    with pytest.raises(ValueError, match="2xx"):
        await queue.complete(id, status=500, result="x")
    for ttl in (0, -1.0, float("nan"), "5"):
        with pytest.raises(ValueError, match="ttl"):
            await queue.heartbeat(id, ttl)  # type: ignore[arg-type]
    got = await queue.get(id)
    assert got is not None and got.state is JobState.WAITING
    pushed = await queue.heartbeat(id, 120)
    assert pushed.deadline is not None and pushed.deadline > seconds_from_now(100)


def test_sync_queue_complete_and_heartbeat(tmp_path: Any) -> None:
    """SyncQueue.complete and SyncQueue.heartbeat forward to the Queue (here on SQLite)."""

    async def prepare(url: str) -> str:
        from work.stores import open_store

        async with open_store(url) as store:
            return await make_waiting(store)

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    id = anyio.run(prepare, url)
    with SyncQueue(url) as queue:
        assert queue.heartbeat(id, 90).state is JobState.WAITING
        done = queue.complete(id, result=[1])
        assert done.state is JobState.SUCCEEDED and done.result == [1]
        with pytest.raises(JobStateError, match="succeeded"):
            queue.heartbeat(id)
