"""The store conformance suite: what "a store works" means, for every store.

Part 1 drives the raw Store protocol; part 2 goes end to end through ``Queue`` and
``Worker.serve``. Every test runs on every store (see ``conftest.py``).
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from work import (
    Constant,
    Job,
    JobEvent,
    JobEventKind,
    JobRecord,
    JobState,
    Queue,
    RetryLater,
    RetryPolicy,
    Status,
    StatusError,
    Worker,
)
from work._durable.events import EventStream
from work.stores import Outcome, Store, WorkerInfo

pytestmark = pytest.mark.anyio

Corrupt = Callable[[Store, str], Awaitable[None]]

# -- helpers (also imported by test_memory.py and test_sqlite.py) ---------------------------------


def now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def seconds_from_now(secs: float) -> datetime:
    """An aware UTC datetime ``secs`` seconds from now."""
    return now() + timedelta(seconds=secs)


def record(handler: str = "noop", **fields: Any) -> JobRecord:
    """A JobRecord as Queue.enqueue builds it: QUEUED, or SCHEDULED when due later."""
    fields.setdefault("id", uuid.uuid4().hex)
    fields.setdefault("enqueued_at", now())
    due = fields.get("scheduled_for")
    if due is not None and "state" not in fields and due > fields["enqueued_at"]:
        fields["state"] = JobState.SCHEDULED
    return JobRecord(handler=handler, **fields)


@asynccontextmanager
async def serving(store: Store, worker: Worker, **options: Any) -> AsyncIterator[Worker]:
    """Run ``worker.serve(store, **options)`` for the block; stop the worker after it."""
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(worker.serve, store, **options))
        yield worker
        worker.stop()


async def until(predicate: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 10 ms until it is true; fail the test after ``timeout``."""
    with anyio.fail_after(timeout):
        # Polling is the point here: the condition lives in a store, not in an Event.
        while not await predicate():
            await anyio.sleep(0.01)


async def state_of(store: Store, id: str) -> JobState:
    """The job's current state (it must exist)."""
    rec = await store.get(id)
    assert rec is not None
    return rec.state


def fast_retry(max_attempts: int = 3, **kwargs: Any) -> RetryPolicy:
    """A retry policy with a 10 ms constant backoff."""
    return RetryPolicy(max_attempts=max_attempts, backoff=Constant(0.01), **kwargs)


# == Part 1: the raw Store protocol =============================================================


async def test_add_and_get_round_trip(store: Store) -> None:
    """Every field given to add() comes back from get(), with aware UTC datetimes."""
    retry = {"backoff": {"kind": "constant", "seconds": 0.5}, "retry_on": [500], "max_deferrals": 2}
    rec = record(
        "resize",
        args={"path": "a.png", "sizes": [1, 2], "opts": {"q": 0.5, "x": None, "ok": True}},
        queue="images",
        headers={"traceparent": "00-abc-def-01"},
        priority=7,
        max_attempts=4,
        unique_key="img-a",
        timeout=12.5,
        retry=retry,
        result_ttl=3600.5,
    )
    (stored,) = await store.add([rec])
    got = await store.get(rec.id)
    assert got == stored
    assert got is not None
    assert got.handler == "resize"
    assert got.args == rec.args
    assert got.queue == "images"
    assert got.headers == {"traceparent": "00-abc-def-01"}
    assert got.priority == 7
    assert got.state is JobState.QUEUED
    assert got.status is Status.UNKNOWN
    assert got.attempts == 0
    assert got.max_attempts == 4
    assert got.unique_key == "img-a"
    assert got.timeout == 12.5
    assert got.retry == retry
    assert got.deferrals == 0
    assert got.result_ttl == 3600.5
    assert got.result is None and got.error is None
    assert got.enqueued_at is not None and got.enqueued_at.utcoffset() == timedelta(0)
    assert rec.enqueued_at is not None
    assert abs((got.enqueued_at - rec.enqueued_at).total_seconds()) < 0.01
    assert got.started_at is None and got.finished_at is None


async def test_get_unknown_is_none(store: Store) -> None:
    """get() of an id the store never saw returns None."""
    assert await store.get("no-such-job") is None


async def test_add_existing_id_returns_existing_record(store: Store) -> None:
    """Adding an id that exists stores nothing and returns the existing record."""
    first = record("a", args={"n": 1})
    await store.add([first])
    (again,) = await store.add([record("b", id=first.id, args={"n": 2})])
    assert again.handler == "a" and again.args == {"n": 1}
    assert len(await store.list()) == 1


async def test_unique_key_returns_active_job(store: Store) -> None:
    """While a job with the key is active in the queue, add() returns it instead."""
    (first,) = await store.add([record(unique_key="k")])
    (second,) = await store.add([record(unique_key="k")])
    assert second.id == first.id
    (other_queue,) = await store.add([record(unique_key="k", queue="other")])
    assert other_queue.id != first.id
    assert len(await store.list()) == 2


async def test_unique_key_within_one_batch(store: Store) -> None:
    """Two jobs with one key in one add() call: the second returns the first."""
    a, b = await store.add([record(unique_key="k"), record(unique_key="k")])
    assert a.id == b.id
    assert len(await store.list()) == 1


async def test_batch_mixing_new_jobs_taken_ids_and_taken_keys(store: Store) -> None:
    """One add() call of new jobs, an existing id, an active unique key, and an id and a key
    first added earlier in the same call: each job gets what adding them one by one gives, and
    every record returned is the one get() reads back."""
    old = record("old", args={"n": 0})
    keyed = record("keyed", unique_key="k")
    await store.add([old, keyed])
    fresh = record("fresh", args={"pair": (1, 2)}, headers={"h": "v"})
    new_key = record("new-key", unique_key="n")
    other_queue = record("other-queue", unique_key="k", queue="other")
    out = await store.add(
        [
            fresh,
            record("taken-id", id=old.id),
            record("taken-key", unique_key="k"),
            new_key,
            record("id-of-this-call", id=fresh.id),
            record("key-of-this-call", unique_key="n"),
            other_queue,
        ]
    )
    assert [r.handler for r in out] == [
        "fresh",
        "old",
        "keyed",
        "new-key",
        "fresh",
        "new-key",
        "other-queue",
    ]
    assert [r.id for r in out] == [
        fresh.id,
        old.id,
        keyed.id,
        new_key.id,
        fresh.id,
        new_key.id,
        other_queue.id,
    ]
    for rec in out:
        assert rec == await store.get(rec.id)
    assert out[0].args == {"pair": [1, 2]}  # as stored: through JSON
    assert out[0].headers == {"h": "v"}
    assert len(await store.list()) == 5


async def test_batch_repeating_an_id_whose_first_job_was_not_added(store: Store) -> None:
    """A job left out for its active unique key does not take its id: a later job of the same
    call with that id is added."""
    keyed = record("keyed", unique_key="k")
    await store.add([keyed])
    first, second = await store.add(
        [record("blocked", id="x", unique_key="k"), record("added", id="x")]
    )
    assert first.id == keyed.id
    assert second.id == "x" and second.handler == "added"
    assert await store.get("x") == second
    assert len(await store.list()) == 2


async def test_unique_key_free_again_once_final(store: Store) -> None:
    """Once the keyed job is final, the key can be used again; also while it is RUNNING it
    still blocks."""
    (first,) = await store.add([record(unique_key="k")])
    (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="w")
    (blocked,) = await store.add([record(unique_key="k")])
    assert blocked.id == first.id
    await store.complete(
        "w", [Outcome(id=first.id, state=JobState.SUCCEEDED, status=Status.SUCCESS)]
    )
    (fresh,) = await store.add([record(unique_key="k")])
    assert fresh.id != first.id
    assert claimed.record.id == first.id


async def test_claim_order_priority_due_time_enqueue_order(store: Store) -> None:
    """Claims take higher priority first, then earlier due time, then enqueue order."""
    base = now()
    a = record("a", enqueued_at=base)
    b = record("b", enqueued_at=base, priority=5)
    # Due (scheduled) before a was enqueued, so it goes before a at equal priority.
    c = record("c", enqueued_at=base, scheduled_for=base - timedelta(seconds=5))
    d = record("d", enqueued_at=base)
    e = record("e", enqueued_at=base, priority=-1)
    await store.add([a, b, c, d, e])
    order = []
    for _ in range(5):
        (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="w")
        order.append(claimed.record.handler)
    assert order == ["b", "c", "a", "d", "e"]


async def test_claim_batch_takes_the_best(store: Store) -> None:
    """A batch claim returns the best ``limit`` jobs, and no more."""
    await store.add([record(str(p), priority=p) for p in range(6)])
    claimed = await store.claim(["default"], limit=3, lease=30, owner="w")
    assert sorted(c.record.priority for c in claimed) == [3, 4, 5]
    assert await store.claim(["default"], limit=0, lease=30, owner="w") == []


async def test_claim_marks_running(store: Store) -> None:
    """A claimed job is RUNNING, its attempt counted, started_at set, decode_error None."""
    (rec,) = await store.add([record(args={"x": 1})])
    (claimed,) = await store.claim(["default"], limit=5, lease=30, owner="w")
    assert claimed.decode_error is None
    assert claimed.record.id == rec.id
    assert claimed.record.state is JobState.RUNNING
    assert claimed.record.attempts == 1
    assert claimed.record.args == {"x": 1}
    assert claimed.record.started_at is not None
    got = await store.get(rec.id)
    assert got is not None and got.state is JobState.RUNNING and got.attempts == 1
    assert await store.claim(["default"], limit=5, lease=30, owner="w2") == []


async def test_claim_only_from_given_queues(store: Store) -> None:
    """claim() takes jobs only from the queues named."""
    await store.add([record("a", queue="a"), record("b", queue="b"), record("c", queue="c")])
    claimed = await store.claim(["a", "c"], limit=10, lease=30, owner="w")
    assert sorted(c.record.handler for c in claimed) == ["a", "c"]


async def test_scheduled_job_waits_for_its_time(store: Store) -> None:
    """A SCHEDULED job is not claimed before scheduled_for, and is after it."""
    (rec,) = await store.add([record(scheduled_for=seconds_from_now(0.3))])
    assert rec.state is JobState.SCHEDULED
    assert await store.claim(["default"], limit=1, lease=30, owner="w") == []

    async def claimed() -> bool:
        return bool(await store.claim(["default"], limit=1, lease=30, owner="w"))

    await until(claimed)
    assert rec.scheduled_for is not None and now() >= rec.scheduled_for


async def test_concurrent_claimers_never_share_a_job(store: Store) -> None:
    """Many concurrent claim() calls hand each job to exactly one of them."""
    await store.add([record(str(i)) for i in range(60)])
    seen: list[str] = []

    async def claimer(owner: str) -> None:
        while True:
            claimed = await store.claim(["default"], limit=3, lease=30, owner=owner)
            if not claimed:
                return
            seen.extend(c.record.id for c in claimed)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(claimer, f"w{n}")
    assert len(seen) == 60
    assert len(set(seen)) == 60


async def test_second_store_object_never_claims_a_held_job(
    store: Store, make_store: Callable[[], Store]
) -> None:
    """Claims through two store objects on the same data never share a job."""
    await store.add([record(str(i)) for i in range(30)])
    other = make_store()
    seen: list[str] = []

    async def claimer(s: Store, owner: str) -> None:
        while claimed := await s.claim(["default"], limit=2, lease=30, owner=owner):
            seen.extend(c.record.id for c in claimed)

    if other is store:
        async with anyio.create_task_group() as tg:
            tg.start_soon(claimer, store, "a")
            tg.start_soon(claimer, store, "b")
    else:
        async with other, anyio.create_task_group() as tg:
            tg.start_soon(claimer, store, "a")
            tg.start_soon(claimer, other, "b")
    assert sorted(seen) == sorted(set(seen))
    assert len(seen) == 30


async def test_renew_keeps_the_lease(store: Store) -> None:
    """renew() by the owner extends the lease: reap() leaves the job alone past the first lease."""
    (rec,) = await store.add([record(max_attempts=3)])
    await store.claim(["default"], limit=1, lease=0.3, owner="w")
    deadline = anyio.current_time() + 0.8
    while anyio.current_time() < deadline:
        assert await store.renew("w", [rec.id], lease=0.3) == set()
        assert await store.reap() == 0
        await anyio.sleep(0.05)
    assert await state_of(store, rec.id) is JobState.RUNNING


async def test_renew_reports_jobs_not_held(store: Store) -> None:
    """renew() returns ids the caller does not hold (another owner, unknown, not running)."""
    (rec,) = await store.add([record()])
    (queued,) = await store.add([record()])
    await store.claim(["default"], limit=1, lease=30, owner="w")
    assert await store.renew("intruder", [rec.id], lease=30) == {rec.id}
    assert await store.renew("w", ["unknown"], lease=30) == {"unknown"}
    assert await store.renew("w", [queued.id], lease=30) == {queued.id}
    assert await store.renew("w", [], lease=30) == set()


async def test_complete_is_fenced_by_owner(store: Store) -> None:
    """complete() from anyone but the lease holder changes nothing."""
    (rec,) = await store.add([record()])
    await store.claim(["default"], limit=1, lease=30, owner="w")
    done = Outcome(id=rec.id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result=1)
    await store.complete("intruder", [done])
    assert await state_of(store, rec.id) is JobState.RUNNING
    await store.complete("w", [done])
    got = await store.get(rec.id)
    assert got is not None
    assert got.state is JobState.SUCCEEDED and got.result == 1
    # A second completion (a retried write) changes nothing either.
    await store.complete("w", [Outcome(id=rec.id, state=JobState.FAILED, status=Status(500))])
    assert await state_of(store, rec.id) is JobState.SUCCEEDED


async def test_complete_returns_the_ids_it_applied(store: Store) -> None:
    """complete() returns the ids whose outcome it applied, leaving out those it refused (not
    the owner's, already final, unknown), so a worker can report discarded outcomes."""
    a, b, c = await store.add([record() for _ in range(3)])
    await store.claim(["default"], limit=3, lease=30, owner="w")

    def done(id: str) -> Outcome:
        return Outcome(id=id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result=1)

    assert await store.complete("w", [done(a.id), done(b.id)]) == {a.id, b.id}
    assert await store.complete("w", [done(a.id)]) == set()  # final already
    assert await store.complete("intruder", [done(c.id)]) == set()
    assert await store.complete("w", [done("no-such-job"), done(c.id)]) == {c.id}
    assert await store.complete("w", []) == set()


class _NoRenew:
    """A store whose leases are never renewed, so a job's lease runs out while it runs."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        return set()


async def test_serve_logs_an_outcome_the_store_discarded(store: Store) -> None:
    """A job whose lease was taken over while it ran: its outcome is refused by the store,
    and serve logs one line naming the job and why."""
    queue = Queue(store)
    rec = await queue.enqueue(Job("slow"))
    started, release = anyio.Event(), anyio.Event()
    worker = Worker()

    @worker.handler()
    async def slow(job: Job) -> str:
        started.set()
        await release.wait()
        return "late"

    wrapped: Any = _NoRenew(store)
    with capture_logs() as logs, anyio.fail_after(20):
        # lost_limit=1: the reaped job fails at once, so this serve cannot claim it again
        # (and succeed with it) before the thief below does.
        async with serving(wrapped, worker, lease=0.2, lost_limit=1):
            await started.wait()
            # The lease runs out and a reaper (serve's own, or this one) takes the job over.
            while (taken := await store.get(rec.id)) is not None and taken.state is (
                JobState.RUNNING
            ):
                await store.reap(lost_limit=1)
                await anyio.sleep(0.05)
            assert taken is not None
            if taken.state is JobState.QUEUED:  # put back: another worker claims it
                await store.claim(["default"], limit=1, lease=30, owner="thief")
            release.set()
            while not [e for e in logs if "discarded" in e["event"]]:
                await anyio.sleep(0.02)
    (line,) = [e for e in logs if "discarded" in e["event"]]
    assert line["job_id"] == rec.id and line["state"] == "succeeded"
    assert line["log_level"] == "warning" and "lease was lost" in line["event"]
    after = await store.get(rec.id)
    assert after is not None and after.state is not JobState.SUCCEEDED


async def test_complete_batch_applies_each_outcome(store: Store) -> None:
    """One complete() call applies many outcomes; results and errors are stored."""
    recs = await store.add([record(str(i), max_attempts=3) for i in range(4)])
    await store.claim(["default"], limit=4, lease=30, owner="w")
    due = seconds_from_now(60)
    await store.complete(
        "w",
        [
            Outcome(
                id=recs[0].id,
                state=JobState.SUCCEEDED,
                status=Status.SUCCESS,
                result={"a": [1, "b", None]},
            ),
            Outcome(id=recs[1].id, state=JobState.FAILED, status=Status(400), error="bad"),
            Outcome(
                id=recs[2].id,
                state=JobState.SCHEDULED,
                status=Status(503),
                error="later",
                scheduled_for=due,
            ),
            Outcome(
                id=recs[3].id,
                state=JobState.QUEUED,
                status=Status.UNKNOWN,
                give_back_attempt=True,
            ),
        ],
    )
    ok, bad, later, back = [await store.get(r.id) for r in recs]
    assert ok is not None and bad is not None and later is not None and back is not None
    assert ok.state is JobState.SUCCEEDED and ok.status is Status.SUCCESS
    assert ok.result == {"a": [1, "b", None]} and ok.finished_at is not None
    assert bad.state is JobState.FAILED and bad.status == 400 and bad.error == "bad"
    assert bad.finished_at is not None and bad.attempts == 1
    assert later.state is JobState.SCHEDULED and later.status == 503 and later.error == "later"
    assert later.scheduled_for is not None
    assert abs((later.scheduled_for - due).total_seconds()) < 0.01
    assert later.finished_at is None and later.attempts == 1
    assert back.state is JobState.QUEUED and back.attempts == 0


async def test_retry_waits_then_is_claimable_again(store: Store) -> None:
    """A job completed SCHEDULED is claimed again once its time has come."""
    (rec,) = await store.add([record(max_attempts=3)])
    await store.claim(["default"], limit=1, lease=30, owner="w")
    await store.complete(
        "w",
        [
            Outcome(
                id=rec.id,
                state=JobState.SCHEDULED,
                status=Status(500),
                scheduled_for=seconds_from_now(0.2),
            )
        ],
    )
    assert await store.claim(["default"], limit=1, lease=30, owner="w") == []
    claimed: list[Any] = []

    async def claim_it() -> bool:
        claimed.extend(await store.claim(["default"], limit=1, lease=30, owner="w"))
        return bool(claimed)

    await until(claim_it)
    assert claimed[0].record.attempts == 2


async def test_deferral_gives_the_attempt_back(store: Store) -> None:
    """A deferral outcome gives the attempt back and counts a deferral."""
    (rec,) = await store.add([record()])
    await store.claim(["default"], limit=1, lease=30, owner="w")
    await store.complete(
        "w",
        [
            Outcome(
                id=rec.id,
                state=JobState.SCHEDULED,
                status=Status.TOO_MANY_REQUESTS,
                scheduled_for=now(),
                give_back_attempt=True,
                deferral=True,
            )
        ],
    )
    got = await store.get(rec.id)
    assert got is not None and got.attempts == 0 and got.deferrals == 1


async def test_cancel_queued_and_scheduled(store: Store) -> None:
    """cancel() makes a QUEUED or SCHEDULED job CANCELLED (499) at once; never claimed."""
    (queued,) = await store.add([record()])
    (scheduled,) = await store.add([record(scheduled_for=seconds_from_now(60))])
    assert await store.cancel(queued.id) is True
    assert await store.cancel(scheduled.id) is True
    for id in (queued.id, scheduled.id):
        got = await store.get(id)
        assert got is not None
        assert got.state is JobState.CANCELLED and got.status is Status.CANCELLED
        assert got.finished_at is not None
    assert await store.claim(["default"], limit=5, lease=30, owner="w") == []


async def test_cancel_unknown_or_final_is_false(store: Store) -> None:
    """cancel() of an unknown or already final job returns False."""
    (rec,) = await store.add([record()])
    assert await store.cancel("no-such-job") is False
    assert await store.cancel(rec.id) is True
    assert await store.cancel(rec.id) is False


async def test_cancel_running_asks_the_owner(store: Store) -> None:
    """cancel() of a RUNNING job requests it: renew() tells the owner, who completes it."""
    (rec,) = await store.add([record()])
    await store.claim(["default"], limit=1, lease=30, owner="w")
    assert await store.cancel(rec.id) is True
    assert await state_of(store, rec.id) is JobState.RUNNING
    assert await store.renew("w", [rec.id], lease=30) == {rec.id}
    await store.complete(
        "w", [Outcome(id=rec.id, state=JobState.CANCELLED, status=Status.CANCELLED)]
    )
    got = await store.get(rec.id)
    assert got is not None and got.state is JobState.CANCELLED and got.status == 499


async def test_reap_requeues_an_expired_lease(store: Store) -> None:
    """A lease that expires puts the job back QUEUED (the attempt counts); nobody else can
    claim it while the lease holds."""
    (rec,) = await store.add([record(max_attempts=2)])
    await store.claim(["default"], limit=1, lease=0.3, owner="lost")
    assert await store.claim(["default"], limit=1, lease=30, owner="w") == []
    assert await store.reap() == 0

    async def reaped() -> bool:
        return await store.reap() == 1

    await until(reaped)
    got = await store.get(rec.id)
    assert got is not None and got.state is JobState.QUEUED and got.attempts == 1
    (again,) = await store.claim(["default"], limit=1, lease=30, owner="w")
    assert again.record.attempts == 2
    # The lost owner can no longer complete it.
    await store.complete(
        "lost", [Outcome(id=rec.id, state=JobState.SUCCEEDED, status=Status.SUCCESS)]
    )
    assert await state_of(store, rec.id) is JobState.RUNNING


async def lose(store: Store, id: str, *, lost_limit: int = 3) -> JobRecord:
    """Claim ``id`` under a short lease, let it expire, reap it; return the record after."""
    (claimed,) = await store.claim(["default"], limit=1, lease=0.05, owner="lost")
    assert claimed.record.id == id

    async def reaped() -> bool:
        return await store.reap(lost_limit=lost_limit) == 1

    await until(reaped)
    got = await store.get(id)
    assert got is not None
    return got


async def test_reap_requeues_whatever_the_policy_until_the_lost_limit(store: Store) -> None:
    """An expired lease puts a job back even on its last attempt (no RetryPolicy: one
    attempt), counting the attempt; the lost_limit-th loss fails it 500 "worker lost"."""
    (rec,) = await store.add([record(max_attempts=1)])
    for n in (1, 2):
        got = await lose(store, rec.id)
        assert got.state is JobState.QUEUED and got.attempts == n
        assert got.status is Status.INTERNAL_ERROR and got.error == "worker lost"
        assert got.finished_at is None
    got = await lose(store, rec.id)
    assert got.state is JobState.FAILED and got.status is Status.INTERNAL_ERROR
    assert got.error == "worker lost" and got.attempts == 3
    assert got.finished_at is not None


async def test_reap_lost_limit_one_fails_at_once(store: Store) -> None:
    """With lost_limit=1 the first loss fails the job, whatever attempts it has left."""
    (rec,) = await store.add([record(max_attempts=5)])
    got = await lose(store, rec.id, lost_limit=1)
    assert got.state is JobState.FAILED and got.error == "worker lost"
    assert got.attempts == 1


async def test_reap_counts_losses_not_other_outcomes(store: Store) -> None:
    """Only lost workers count towards the lost limit: a job handed back or retried in
    between still gets its lost_limit losses."""
    (rec,) = await store.add([record(max_attempts=9)])
    await lose(store, rec.id, lost_limit=2)
    (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="w")
    await store.complete(
        "w",
        [Outcome(id=rec.id, state=JobState.QUEUED, status=Status.UNKNOWN, give_back_attempt=True)],
    )
    assert claimed.record.attempts == 2
    got = await lose(store, rec.id, lost_limit=2)
    assert got.state is JobState.FAILED and got.attempts == 2


async def test_reap_cancels_when_cancel_was_requested(store: Store) -> None:
    """An expired lease on a job whose cancel was requested makes it CANCELLED."""
    (rec,) = await store.add([record(max_attempts=3)])
    await store.claim(["default"], limit=1, lease=0.2, owner="lost")
    assert await store.cancel(rec.id) is True

    async def reaped() -> bool:
        return await store.reap() == 1

    await until(reaped)
    got = await store.get(rec.id)
    assert got is not None and got.state is JobState.CANCELLED and got.status == 499


async def finish(store: Store, recs: list[JobRecord], state: JobState) -> None:
    """Claim ``recs`` (all of the default queue's ready jobs) and end them in ``state``."""
    claimed = await store.claim(["default"], limit=len(recs), lease=30, owner="f")
    assert {c.record.id for c in claimed} == {r.id for r in recs}
    status = Status.SUCCESS if state is JobState.SUCCEEDED else Status.INTERNAL_ERROR
    await store.complete("f", [Outcome(id=r.id, state=state, status=status) for r in recs])


FINAL = [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]


async def test_purge_deletes_finished_jobs_by_state_and_age(store: Store) -> None:
    """purge() deletes the finished jobs in the states given that finished before the cutoff,
    and nothing else: not other states, not newer ones, never unfinished jobs."""
    ok = await store.add([record() for _ in range(3)])
    await finish(store, ok, JobState.SUCCEEDED)
    bad = await store.add([record() for _ in range(2)])
    await finish(store, bad, JobState.FAILED)
    (waiting,) = await store.add([record()])
    (later,) = await store.add([record(scheduled_for=seconds_from_now(3600))])
    (cancelled,) = await store.add([record(queue="other")])
    assert await store.cancel(cancelled.id)

    assert await store.purge(older_than=now() - timedelta(hours=1), states=FINAL) == 0
    cutoff = now() + timedelta(seconds=1)
    assert await store.purge(older_than=cutoff, states=[JobState.SUCCEEDED], limit=2) == 2
    assert await store.purge(older_than=cutoff, states=[JobState.SUCCEEDED]) == 1
    for rec in ok:
        assert await store.get(rec.id) is None
    assert all([await store.get(r.id) for r in bad])
    # Unfinished states are ignored even when asked for.
    all_states = [*FINAL, JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING]
    assert await store.purge(older_than=cutoff, states=all_states) == 3
    assert await store.get(waiting.id) is not None and await store.get(later.id) is not None
    assert await store.get(cancelled.id) is None
    assert [r.id for r in await store.list()] == [waiting.id, later.id]
    assert await store.stats() == {"default": {"queued": 1, "scheduled": 1}}


async def test_expire_uses_the_job_ttl_else_the_workers(store: Store) -> None:
    """expire() deletes finished jobs of the given queues past the worker's result_ttl, and
    jobs of any queue past a result_ttl of their own; a job's own ttl wins over the worker's."""
    (plain,) = await store.add([record()])
    (own_short,) = await store.add([record(result_ttl=2.0)])  # generous: a slow CI machine
    (own_long,) = await store.add([record(result_ttl=3600)])
    await finish(store, [plain, own_short, own_long], JobState.SUCCEEDED)
    (elsewhere,) = await store.add([record(queue="other")])
    assert await store.cancel(elsewhere.id)
    (unfinished,) = await store.add([record()])

    assert await store.expire(["default"], result_ttl=3600, limit=10) == 0

    async def short_gone() -> bool:
        await store.expire(["default"], result_ttl=3600, limit=10)
        return await store.get(own_short.id) is None

    await until(short_gone)
    assert await store.get(plain.id) is not None
    assert await store.expire(["default"], result_ttl=0, limit=10) == 1
    assert await store.get(plain.id) is None
    assert await store.get(own_long.id) is not None
    assert await store.get(elsewhere.id) is not None  # not one of the queues
    assert await store.get(unfinished.id) is not None
    assert await store.expire(["other"], result_ttl=0, limit=10) == 1
    assert await store.get(elsewhere.id) is None


async def test_expire_takes_small_batches(store: Store) -> None:
    """expire() deletes at most ``limit`` jobs per call."""
    recs = await store.add([record() for _ in range(5)])
    await finish(store, recs, JobState.SUCCEEDED)
    assert await store.expire(["default"], result_ttl=0, limit=2) == 2
    assert await store.expire(["default"], result_ttl=0, limit=2) == 2
    assert await store.expire(["default"], result_ttl=0, limit=2) == 1
    assert await store.list() == []


async def test_retry_requeues_a_failed_or_cancelled_job(store: Store) -> None:
    """retry() makes a FAILED or CANCELLED job QUEUED again, due now, with its attempts,
    status, error and times cleared; it is claimed and run like a new job."""
    (failed,) = await store.add([record(args={"a": 1})])
    await finish(store, [failed], JobState.FAILED)
    (cancelled,) = await store.add([record()])
    assert await store.cancel(cancelled.id)
    again = await store.retry(failed.id)
    assert again is not None and again.id == failed.id
    assert again.state is JobState.QUEUED and again.attempts == 0
    assert again.status is Status.UNKNOWN and again.error is None
    assert again.finished_at is None and again.started_at is None
    assert again.args == {"a": 1}
    assert await store.get(failed.id) == again
    back = await store.retry(cancelled.id)
    assert back is not None and back.state is JobState.QUEUED
    claimed = await store.claim(["default"], limit=5, lease=30, owner="w")
    assert [c.record.id for c in claimed] == [failed.id, cancelled.id]
    assert claimed[0].record.attempts == 1
    assert await store.stats() == {"default": {"running": 2}}


async def test_retry_refuses_other_states_and_unknown_ids(store: Store) -> None:
    """retry() of an unknown id is None; of a job that is not FAILED or CANCELLED, a
    ValueError naming its state; of a job whose unique key another active job holds, a
    ValueError."""
    assert await store.retry("no-such-job") is None
    (queued,) = await store.add([record()])
    with pytest.raises(ValueError, match="queued"):
        await store.retry(queued.id)
    await finish(store, [queued], JobState.SUCCEEDED)
    with pytest.raises(ValueError, match="succeeded"):
        await store.retry(queued.id)
    (first,) = await store.add([record(unique_key="k", queue="u")])
    assert await store.cancel(first.id)
    (second,) = await store.add([record(unique_key="k", queue="u")])
    with pytest.raises(ValueError, match="unique_key"):
        await store.retry(first.id)
    assert await state_of(store, first.id) is JobState.CANCELLED
    assert await state_of(store, second.id) is JobState.QUEUED


async def test_list_pages_filters_and_order(store: Store) -> None:
    """list() returns enqueue order, filters by state/queue/handler and pages with after=."""
    recs = [record(f"h{i % 2}", queue="a" if i < 5 else "b") for i in range(8)]
    for rec in recs:
        await store.add([rec])
    ids = [r.id for r in recs]
    assert [r.id for r in await store.list()] == ids
    page1 = await store.list(limit=3)
    page2 = await store.list(limit=3, after=page1[-1].id)
    page3 = await store.list(limit=3, after=page2[-1].id)
    assert [r.id for r in page1 + page2 + page3] == ids
    assert [r.id for r in await store.list(queue="b")] == ids[5:]
    assert [r.id for r in await store.list(handler="h1")] == ids[1::2]
    assert [r.id for r in await store.list(queue="a", handler="h0")] == [ids[0], ids[2], ids[4]]
    await store.cancel(ids[3])
    assert [r.id for r in await store.list(state=JobState.CANCELLED)] == [ids[3]]
    assert [r.id for r in await store.list(state=JobState.QUEUED, limit=2)] == ids[:2]


async def test_stats_counts_by_queue_and_state(store: Store) -> None:
    """stats() counts jobs per queue and state."""
    await store.add([record(queue="a") for _ in range(3)])
    await store.add([record(queue="b"), record(queue="b", scheduled_for=seconds_from_now(60))])
    await store.claim(["a"], limit=1, lease=30, owner="w")
    stats = await store.stats()
    assert {q: {s: n for s, n in c.items() if n} for q, c in stats.items()} == {
        "a": {"queued": 2, "running": 1},
        "b": {"queued": 1, "scheduled": 1},
    }


async def test_wait_for_work_wakes_on_add(store: Store, make_store: Callable[[], Store]) -> None:
    """wait_for_work() sleeps while nothing happens and returns soon after a job is added
    (long before its timeout)."""
    woke = anyio.Event()

    async def waiter() -> None:
        await store.wait_for_work(["default"], 30)
        woke.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            # Deliberately idle: a waiter that returns at once is caught here.
            await anyio.sleep(0.3)
            assert not woke.is_set(), "wait_for_work returned before anything was added"
            await store.add([record()])
            await woke.wait()


async def test_wait_for_work_returns_at_once_when_work_is_ready(store: Store) -> None:
    """wait_for_work() does not sleep when a job is already ready."""
    await store.add([record()])
    with anyio.fail_after(5):
        await store.wait_for_work(["default"], 30)


async def test_wait_for_work_wakes_when_a_scheduled_job_falls_due(store: Store) -> None:
    """wait_for_work() sleeps until a SCHEDULED job falls due, then returns."""
    due = seconds_from_now(0.5)
    await store.add([record(scheduled_for=due)])
    early = 0
    with anyio.fail_after(10):
        while not await store.claim(["default"], limit=1, lease=30, owner="w"):
            await store.wait_for_work(["default"], 30)
            early += now() < due - timedelta(milliseconds=20)
    # The add itself may wake a waiter once (so it looks at the new due time); a waiter that
    # keeps returning before the job is due is polling.
    assert early <= 1


async def test_wait_for_work_times_out(store: Store) -> None:
    """wait_for_work() returns after its timeout (not before) when nothing comes."""
    await store.add([record(queue="other")])
    with anyio.fail_after(5):
        started = anyio.current_time()
        await store.wait_for_work(["default"], 0.3)
        assert anyio.current_time() - started >= 0.29


async def test_undecodable_payload_is_reported_by_claim(store: Store, corrupt: Corrupt) -> None:
    """A job whose stored args cannot be decoded is claimed with a decode_error."""
    (rec,) = await store.add([record(args={"x": 1})])
    await corrupt(store, rec.id)
    (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="w")
    assert claimed.record.id == rec.id
    assert claimed.decode_error


async def test_undecodable_record_fails_alone_in_its_batch(store: Store, poison: Corrupt) -> None:
    """A record that cannot be decoded (a time out of range, a broken field, written behind
    the store's back) comes back from claim alone with a decode_error naming the problem; the
    other jobs of the same batch are claimed intact."""
    recs = await store.add([record(args={"n": n}) for n in range(3)])
    await poison(store, recs[1].id)
    # A broken due time may move the poisoned job in the order: compare by id.
    claimed = {c.record.id: c for c in await store.claim(["default"], limit=3, lease=30, owner="w")}
    assert set(claimed) == {r.id for r in recs}
    bad = claimed[recs[1].id]
    assert bad.decode_error and bad.record.handler == "noop"
    for n in (0, 2):
        good = claimed[recs[n].id]
        assert good.decode_error is None and good.record.args == {"n": n}


# == Part 2: end to end through Queue and Worker.serve ============================================


async def test_job_succeeds_with_its_result(store: Store) -> None:
    """A served job ends SUCCEEDED (200) with the handler's result stored as JSON."""
    worker = Worker()
    seen: list[tuple[int, dict[str, Any]]] = []

    @worker.handler()
    async def add(job: Job) -> dict[str, Any]:
        assert job.ctx is not None
        seen.append((job.ctx.attempt, job.args))
        return {"sum": job.args["a"] + job.args["b"], "tuple": (1, 2)}

    queue = Queue(store)
    rec = await queue.enqueue(Job("add", {"a": 1, "b": 2}))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.status is Status.SUCCESS
    assert done.result == {"sum": 3, "tuple": [1, 2]}
    assert done.attempts == 1 and done.error is None
    assert done.started_at is not None and done.finished_at is not None
    assert seen == [(1, {"a": 1, "b": 2})]


async def test_serve_runs_in_priority_then_due_then_enqueue_order(store: Store) -> None:
    """One-at-a-time serving runs jobs by priority, then due time, then enqueue order."""
    worker = Worker()
    order: list[str] = []

    @worker.handler()
    async def note(job: Job) -> None:
        order.append(job.args["name"])

    queue = Queue(store)
    base = now()
    await queue.enqueue(Job("note", {"name": "low"}), priority=-1)
    await queue.enqueue(Job("note", {"name": "first"}))
    await queue.enqueue(Job("note", {"name": "eta-past"}), at=base - timedelta(seconds=30))
    await queue.enqueue(Job("note", {"name": "second"}))
    last = await queue.enqueue(Job("note", {"name": "urgent"}), priority=10)
    async with serving(store, worker, concurrency=1):
        for rec in await queue.list():
            await queue.wait(rec.id, timeout=10)
    assert order == ["urgent", "eta-past", "first", "second", "low"]
    assert last.priority == 10


async def test_delay_and_eta(store: Store) -> None:
    """A delayed job and a job with an ETA run no sooner than asked."""
    worker = Worker()

    @worker.handler()
    async def noop(job: Job) -> None:
        pass

    queue = Queue(store)
    delayed = await queue.enqueue(Job("noop"), delay=0.3)
    eta = seconds_from_now(0.4)
    timed = await queue.enqueue(Job("noop"), at=eta)
    assert delayed.state is JobState.SCHEDULED and timed.state is JobState.SCHEDULED
    async with serving(store, worker):
        d = await queue.wait(delayed.id, timeout=10)
        t = await queue.wait(timed.id, timeout=10)
    assert delayed.enqueued_at is not None and d.started_at is not None
    assert d.started_at >= delayed.enqueued_at + timedelta(seconds=0.3)
    assert t.started_at is not None and t.started_at >= eta
    assert d.state is JobState.SUCCEEDED and t.state is JobState.SUCCEEDED


async def test_enqueue_same_id_and_unique_key(store: Store) -> None:
    """Enqueueing an existing id or an active unique key returns the existing record."""
    queue = Queue(store)
    job = Job("noop", {"n": 1})
    first = await queue.enqueue(job)
    assert (await queue.enqueue(Job("other", id=job.id))).handler == "noop"
    keyed = await queue.enqueue(Job("noop"), unique_key="nightly")
    again = await queue.enqueue(Job("noop"), unique_key="nightly")
    assert again.id == keyed.id
    records = await queue.enqueue_many([Job("noop"), Job("noop")], unique_key="batch")
    assert records[0].id == records[1].id
    assert len(await queue.list()) == 3
    assert first.id == job.id


async def test_retries_with_backoff_until_success(store: Store) -> None:
    """A retryable failure is retried by the job's policy until it succeeds."""
    worker = Worker()
    attempts: list[int] = []

    @worker.handler()
    async def flaky(job: Job) -> str:
        assert job.ctx is not None
        attempts.append(job.ctx.attempt)
        if len(attempts) < 3:
            raise RuntimeError("transient")
        return "ok"

    queue = Queue(store)
    rec = await queue.enqueue(Job("flaky"), retry=fast_retry(max_attempts=5))
    assert rec.max_attempts == 5
    assert rec.retry is not None and rec.retry["backoff"] == {"kind": "constant", "seconds": 0.01}
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.result == "ok"
    assert done.attempts == 3
    assert attempts == [1, 2, 3]


async def test_retries_exhausted_fail_with_last_status(store: Store) -> None:
    """When attempts run out the job is FAILED with the last status and error."""
    worker = Worker()

    @worker.handler()
    async def broken(job: Job) -> None:
        raise StatusError(Status.UNAVAILABLE, "backend down")

    queue = Queue(store)
    rec = await queue.enqueue(Job("broken"), retry=fast_retry(max_attempts=3))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.UNAVAILABLE
    assert done.attempts == 3
    assert done.error is not None and "backend down" in done.error


async def test_client_errors_fail_at_once(store: Store) -> None:
    """A 4xx other than 408/429 fails at once, retry policy or not."""
    worker = Worker()

    @worker.handler()
    async def picky(job: Job) -> None:
        raise StatusError(Status.UNPROCESSABLE, "no such user")

    queue = Queue(store)
    rec = await queue.enqueue(Job("picky"), retry=fast_retry(max_attempts=5))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status == 422
    assert done.attempts == 1 and done.error == "no such user"


async def test_no_policy_means_no_retry(store: Store) -> None:
    """Without a retry policy a 500 fails after one attempt, naming the exception."""
    worker = Worker()

    @worker.handler()
    async def boom(job: Job) -> None:
        raise ValueError("kaput")

    queue = Queue(store)
    rec = await queue.enqueue(Job("boom"))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.INTERNAL_ERROR
    assert done.attempts == 1 and done.error == "ValueError: kaput"


async def test_job_timeout_is_408(store: Store) -> None:
    """The job's timeout travels with it: an execution that outlives it ends 408."""
    worker = Worker()

    @worker.handler()
    async def slow(job: Job) -> None:
        await anyio.sleep(30)

    queue = Queue(store)
    rec = await queue.enqueue(Job("slow", timeout=0.05))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.TIMEOUT


async def test_retry_later_does_not_use_an_attempt(store: Store) -> None:
    """RetryLater reschedules without using an attempt, counting deferrals."""
    worker = Worker()
    calls: list[int] = []

    @worker.handler()
    async def limited(job: Job) -> str:
        assert job.ctx is not None
        calls.append(job.ctx.attempt)
        if len(calls) <= 2:
            raise RetryLater(0.01, "busy")
        return "done"

    queue = Queue(store)
    rec = await queue.enqueue(Job("limited"), retry=fast_retry(max_attempts=1))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.result == "done"
    assert done.attempts == 1 and done.deferrals == 2
    assert calls == [1, 1, 1]


async def test_retry_later_past_max_deferrals_uses_attempts(store: Store) -> None:
    """After max_deferrals, a RetryLater is a 429 failure that uses an attempt."""
    worker = Worker()

    @worker.handler()
    async def limited(job: Job) -> None:
        raise RetryLater(0.01)

    queue = Queue(store)
    rec = await queue.enqueue(Job("limited"), retry=fast_retry(max_attempts=2, max_deferrals=2))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.TOO_MANY_REQUESTS
    assert done.deferrals == 2 and done.attempts == 2


async def test_unknown_handler_is_handed_back_without_an_attempt(store: Store) -> None:
    """A worker that lacks the handler hands the job back for another worker: no attempt used,
    due again a little later (no hot loop of claims), the error naming the handler."""
    worker = Worker(name="old-code")

    @worker.handler()
    async def known(job: Job) -> None:
        pass

    queue = Queue(store)
    rec = await queue.enqueue(Job("mystery"))
    before = now()

    async def handed_back() -> bool:
        got = await store.get(rec.id)
        return got is not None and got.state is JobState.SCHEDULED

    async with serving(store, worker):
        await until(handed_back)
    got = await queue.get(rec.id)
    assert got is not None and got.attempts == 0
    assert got.error is not None and "mystery" in got.error and "old-code" in got.error
    assert got.scheduled_for is not None
    assert got.scheduled_for >= before + timedelta(seconds=0.9)


async def test_unknown_handler_runs_on_a_worker_that_has_it(store: Store) -> None:
    """During a rolling deploy a job handed back by a worker without its handler runs on a
    worker that has it: SUCCEEDED, one attempt used."""
    old, new = Worker(name="old"), Worker(name="new")

    @old.handler()
    async def known(job: Job) -> None:
        pass

    @new.handler()
    async def mystery(job: Job) -> str:
        return "ran"

    queue = Queue(store)
    rec = await queue.enqueue(Job("mystery"))

    async def handed_back() -> bool:
        got = await store.get(rec.id)
        return got is not None and got.state is JobState.SCHEDULED

    async with serving(store, old):
        await until(handed_back)
    async with serving(store, new):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.result == "ran"
    assert done.attempts == 1


async def test_unknown_handler_is_404_after_the_grace(store: Store) -> None:
    """A job whose handler no worker has fails 404, naming the handler, once the grace since
    its first hand-back has passed; the hand-backs used no attempts."""
    worker = Worker()

    @worker.handler()
    async def known(job: Job) -> None:
        pass

    queue = Queue(store)
    rec = await queue.enqueue(Job("mystery"), retry=fast_retry())
    async with serving(store, worker, unknown_handler_grace=0.3):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.NOT_FOUND
    assert done.error is not None and "mystery" in done.error
    assert done.attempts == 1


async def test_unknown_handler_grace_zero_fails_at_once(store: Store) -> None:
    """unknown_handler_grace=0 restores the old rule: 404 on the first claim."""
    worker = Worker()
    queue = Queue(store)
    rec = await queue.enqueue(Job("mystery"))
    async with serving(store, worker, unknown_handler_grace=0):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.NOT_FOUND


async def test_undecodable_payload_is_400(store: Store, corrupt: Corrupt) -> None:
    """A job whose stored payload cannot be decoded fails 400; the handler never runs."""
    worker = Worker()
    ran: list[str] = []

    @worker.handler()
    async def touchy(job: Job) -> None:
        ran.append(job.id)

    queue = Queue(store)
    rec = await queue.enqueue(Job("touchy", {"x": 1}), retry=fast_retry())
    await corrupt(store, rec.id)
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.BAD_REQUEST
    assert done.error
    assert ran == []


async def test_undecodable_record_fails_400_and_its_batch_runs(
    store: Store, poison: Corrupt
) -> None:
    """Under serve, a record that cannot be decoded ends FAILED 400 naming what failed; the
    jobs claimed in the same batch run and succeed."""
    worker = Worker()
    ran: list[int] = []

    @worker.handler()
    async def noop(job: Job) -> None:
        ran.append(job.args["n"])

    queue = Queue(store)
    recs = await queue.enqueue_many([Job("noop", {"n": n}) for n in range(5)])
    await poison(store, recs[2].id)
    async with serving(store, worker):
        done = [await queue.wait(rec.id, timeout=10) for rec in recs]
    assert [d.state for d in done] == [JobState.SUCCEEDED] * 2 + [JobState.FAILED] + [
        JobState.SUCCEEDED
    ] * 2
    assert done[2].status is Status.BAD_REQUEST
    assert done[2].error is not None and ("decode" in done[2].error or "JSON" in done[2].error)
    assert sorted(ran) == [0, 1, 3, 4]


async def test_non_json_result_is_500(store: Store) -> None:
    """A result JSON cannot carry fails the job 500 with an error naming the bad part."""
    worker = Worker()

    @worker.handler()
    async def odd(job: Job) -> object:
        return {"rows": [1, {"seen": {"a", "b"}}]}

    queue = Queue(store)
    rec = await queue.enqueue(Job("odd"))
    async with serving(store, worker):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.INTERNAL_ERROR
    assert done.error is not None and "JSON" in done.error and "odd" in done.error
    # The part that cannot be stored is named, as enqueue names a bad argument.
    assert "the result['rows'][1]['seen'] is a set" in done.error


async def test_non_json_args_are_refused_and_nothing_stored(store: Store) -> None:
    """enqueue() refuses args JSON cannot carry, naming the key, and stores nothing."""
    queue = Queue(store)
    with pytest.raises(TypeError, match="when"):
        await queue.enqueue(Job("noop", {"ok": 1, "when": now()}))
    with pytest.raises(TypeError, match="blob"):
        await queue.enqueue_many([Job("noop"), Job("noop", {"blob": b"x"})])
    assert await queue.list() == []


async def test_cancel_queued_job_never_runs(store: Store) -> None:
    """A job cancelled while QUEUED never runs."""
    worker = Worker()
    ran: list[str] = []

    @worker.handler()
    async def noop(job: Job) -> None:
        ran.append(job.id)

    queue = Queue(store)
    victim = await queue.enqueue(Job("noop"))
    other = await queue.enqueue(Job("noop"))
    assert await queue.cancel(victim.id) is True
    async with serving(store, worker):
        await queue.wait(other.id, timeout=10)
    got = await queue.wait(victim.id, timeout=1)
    assert got.state is JobState.CANCELLED and got.status is Status.CANCELLED
    assert ran == [other.id]


async def test_cancel_running_job_cancels_its_execution(store: Store) -> None:
    """Cancelling a RUNNING job cancels its execution; it ends CANCELLED (499)."""
    worker = Worker()
    started = anyio.Event()
    cancelled = anyio.Event()

    @worker.handler()
    async def forever(job: Job) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    queue = Queue(store)
    rec = await queue.enqueue(Job("forever"), retry=fast_retry())
    async with serving(store, worker, lease=3):
        with anyio.fail_after(10):
            await started.wait()
        assert await queue.cancel(rec.id) is True
        done = await queue.wait(rec.id, timeout=10)
        with anyio.fail_after(1):
            await cancelled.wait()
    assert done.state is JobState.CANCELLED and done.status is Status.CANCELLED
    assert done.attempts == 1


async def test_lost_worker_lease_expires_and_job_is_redelivered(store: Store) -> None:
    """A job claimed by a worker that died is reaped after its lease and run again; the lost
    attempt counts."""
    queue = Queue(store)
    rec = await queue.enqueue(Job("noop"), retry=fast_retry(max_attempts=3))
    (claimed,) = await store.claim(["default"], limit=1, lease=0.3, owner="dead-worker")
    assert claimed.record.id == rec.id
    worker = Worker()
    attempts: list[int] = []

    @worker.handler()
    async def noop(job: Job) -> None:
        assert job.ctx is not None
        attempts.append(job.ctx.attempt)

    async with serving(store, worker, lease=0.3):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2
    assert attempts == [2]


async def test_lost_worker_job_without_policy_runs_again(store: Store) -> None:
    """A job enqueued without a RetryPolicy whose worker died runs again elsewhere: losing a
    worker is not the job's failure (the lost attempt still counts)."""
    queue = Queue(store)
    rec = await queue.enqueue(Job("noop"))
    await store.claim(["default"], limit=1, lease=0.2, owner="dead-worker")
    worker = Worker()
    runs: list[int] = []

    @worker.handler()
    async def noop(job: Job) -> None:
        assert job.ctx is not None
        runs.append(job.ctx.attempt)

    # A lease of its own long enough that a busy machine cannot make it lose the job again.
    async with serving(store, worker, lease=2.0):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2
    assert runs == [2]


async def test_serve_applies_its_lost_limit(store: Store) -> None:
    """serve(lost_limit=1) makes its reaper fail a job on its first lost worker."""
    queue = Queue(store)
    rec = await queue.enqueue(Job("noop"))
    await store.claim(["default"], limit=1, lease=0.2, owner="dead-worker")
    worker = Worker()
    worker.register("noop", lambda job: None)
    async with serving(store, worker, lease=2.0, lost_limit=1):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.error == "worker lost"


async def test_lease_renewed_while_job_runs(store: Store) -> None:
    """A job running longer than its lease keeps it (renewed) and runs exactly once."""
    worker_a, worker_b = Worker(name="a"), Worker(name="b")
    runs: list[str] = []

    async def slow(job: Job) -> None:
        runs.append(job.id)
        await anyio.sleep(1.0)

    worker_a.register("slow", slow)
    worker_b.register("slow", slow)
    queue = Queue(store)
    rec = await queue.enqueue(Job("slow"), retry=fast_retry())
    async with serving(store, worker_a, lease=0.3), serving(store, worker_b, lease=0.3):
        done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1
    assert runs == [rec.id]


async def test_shutdown_hands_unfinished_jobs_back(store: Store) -> None:
    """Stopping the worker hands running and claimed-but-not-started jobs back QUEUED, with
    their attempt given back."""
    worker = Worker(max_concurrency=1, shutdown_grace=0.05)
    started = anyio.Event()

    @worker.handler()
    async def stuck(job: Job) -> None:
        started.set()
        await anyio.sleep_forever()

    queue = Queue(store)
    recs = await queue.enqueue_many([Job("stuck") for _ in range(3)], retry=fast_retry())
    async with serving(store, worker, concurrency=3):
        with anyio.fail_after(10):
            await started.wait()

            async def all_claimed() -> bool:
                states = [await state_of(store, r.id) for r in recs]
                return all(state is JobState.RUNNING for state in states)

            await until(all_claimed)
    # Leaving `async with worker` returned only after the hand-back was written.
    for r in recs:
        got = await store.get(r.id)
        assert got is not None
        assert got.state is JobState.QUEUED and got.attempts == 0, got


async def test_cancelled_serve_hands_jobs_back(store: Store) -> None:
    """Cancelling serve itself hands its running job back too."""
    worker = Worker()
    started = anyio.Event()

    @worker.handler()
    async def stuck(job: Job) -> None:
        started.set()
        await anyio.sleep_forever()

    queue = Queue(store)
    rec = await queue.enqueue(Job("stuck"))
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(worker.serve, store))
        with anyio.fail_after(10):
            await started.wait()
        tg.cancel_scope.cancel()
    got = await store.get(rec.id)
    assert got is not None and got.state is JobState.QUEUED and got.attempts == 0


async def test_concurrent_workers_run_each_job_once(
    store: Store, make_store: Callable[[], Store]
) -> None:
    """Two workers (each with its own store object where the store has several) serving one
    queue run every job exactly once."""
    runs: Counter[str] = Counter()

    async def count(job: Job) -> None:
        runs[job.id] += 1
        await anyio.sleep(0.001)

    workers = [Worker(name="w1"), Worker(name="w2")]
    for w in workers:
        w.register("count", count)
    queue = Queue(store)
    recs = await queue.enqueue_many([Job("count") for _ in range(40)])
    other = make_store()
    second = contextlib_nullcontext(other) if other is store else other
    async with (
        second as other_store,
        serving(store, workers[0], concurrency=4),
        serving(other_store, workers[1], concurrency=4),
    ):
        for r in recs:
            await queue.wait(r.id, timeout=20)
    assert set(runs) == {r.id for r in recs}
    assert set(runs.values()) == {1}


async def test_wait_times_out_and_stats(store: Store) -> None:
    """Queue.wait() raises TimeoutError for an unfinished job; stats() counts it."""
    queue = Queue(store)
    rec = await queue.enqueue(Job("noop", queue="q"))
    started = anyio.current_time()
    with pytest.raises(TimeoutError):
        await queue.wait(rec.id, timeout=0.2)
    assert anyio.current_time() - started >= 0.19  # it really waited
    assert (await queue.stats())["q"]["queued"] == 1


@asynccontextmanager
async def contextlib_nullcontext(value: Store) -> AsyncIterator[Store]:
    """An async context manager that gives ``value`` and does nothing else."""
    yield value


# == Part 3: job events ===========================================================================

END_KINDS = {JobEventKind.SUCCEEDED, JobEventKind.FAILED, JobEventKind.CANCELLED}


async def events_of(
    events: AsyncIterator[JobEvent], job_id: str, *, until_kind: set[JobEventKind] = END_KINDS
) -> list[JobEvent]:
    """The events of one job, read until one of ``until_kind`` (under a 10 s deadline)."""
    seen: list[JobEvent] = []
    with anyio.fail_after(10):
        async for event in events:
            assert event.kind is not JobEventKind.LOST, event
            if event.job_id == job_id:
                seen.append(event)
                if event.kind in until_kind:
                    return seen
    raise AssertionError("the event stream ended")


async def test_events_enqueued_started_succeeded_in_order(
    store: Store, make_store: Callable[[], Store]
) -> None:
    """A subscriber on another store object (another process's view) sees ENQUEUED, STARTED,
    SUCCEEDED for a job, in order, with the job's fields."""
    worker = Worker()
    worker.register("add", lambda job: job.args["a"] + 1)
    async with make_store() as other, Queue(other).events() as events:
        assert isinstance(events, EventStream)
        async with serving(store, worker):
            rec = await Queue(store).enqueue(Job("add", {"a": 1}, queue="default"))
            seen = await events_of(events, rec.id)
    assert [e.kind for e in seen] == [
        JobEventKind.ENQUEUED,
        JobEventKind.STARTED,
        JobEventKind.SUCCEEDED,
    ]
    for event in seen:
        assert (event.queue, event.handler) == ("default", "add")
        assert event.at.utcoffset() == timedelta(0)
        assert event.workflow_id is None and event.schedule_id is None
    assert [(e.status, e.attempt) for e in seen] == [
        (Status.UNKNOWN, 0),
        (Status.UNKNOWN, 1),
        (Status.SUCCESS, 1),
    ]
    assert seen[0].at <= seen[1].at <= seen[2].at


async def test_events_retrying_then_failed(store: Store) -> None:
    """A failing job with retries shows RETRYING (with the status that caused it) and, once
    the attempts are used up, FAILED."""
    worker = Worker()

    def broken(job: Job) -> None:
        raise StatusError(Status.UNAVAILABLE, "down")

    worker.register("broken", broken)
    queue = Queue(store)
    async with queue.events() as events, serving(store, worker):
        rec = await queue.enqueue(Job("broken"), retry=fast_retry(2))
        seen = await events_of(events, rec.id)
    assert [(e.kind, e.status, e.attempt) for e in seen] == [
        (JobEventKind.ENQUEUED, Status.UNKNOWN, 0),
        (JobEventKind.STARTED, Status.UNKNOWN, 1),
        (JobEventKind.RETRYING, Status.UNAVAILABLE, 1),
        (JobEventKind.STARTED, Status.UNAVAILABLE, 2),
        (JobEventKind.FAILED, Status.UNAVAILABLE, 2),
    ]


async def test_events_cancelled_queued_and_running(store: Store) -> None:
    """Cancelling a queued job, and a running one, each ends in a CANCELLED event."""
    started = anyio.Event()

    async def nap(job: Job) -> None:
        started.set()
        await anyio.sleep(60)

    worker = Worker()
    worker.register("nap", nap)
    queue = Queue(store)
    async with queue.events(kinds=["cancelled", JobEventKind.STARTED]) as events:
        waiting = await queue.enqueue(Job("nap", queue="idle"))
        assert await queue.cancel(waiting.id)
        assert [e.kind for e in await events_of(events, waiting.id)] == [JobEventKind.CANCELLED]
        async with serving(store, worker):
            running = await queue.enqueue(Job("nap"))
            with anyio.fail_after(10):
                await started.wait()
            assert await queue.cancel(running.id)
            seen = await events_of(events, running.id)
    assert [(e.kind, e.status) for e in seen] == [
        (JobEventKind.STARTED, Status.UNKNOWN),
        (JobEventKind.CANCELLED, Status.CANCELLED),
    ]


async def test_events_filter_by_kind_and_queue(store: Store) -> None:
    """kinds= and queues= deliver only the matching events."""
    queue = Queue(store)
    async with queue.events(kinds=["enqueued"], queues="a") as events:
        await queue.enqueue(Job("noop", queue="b"))
        wanted = await queue.enqueue(Job("noop", queue="a"))
        (event,) = await events_of(events, wanted.id, until_kind={JobEventKind.ENQUEUED})
    assert event.queue == "a"
    with pytest.raises(ValueError, match="'nope'"):
        async with queue.events(kinds=["nope"]):
            pass


async def test_progress_is_stored_throttled_and_evented(store: Store) -> None:
    """ctx.progress under serve sets the record's progress (the last call always), emits
    PROGRESS events at most about once a second, and keeps ctx["progress"]."""
    seen_in_ctx: list[Any] = []

    async def crunch(job: Job) -> str:
        assert job.ctx is not None
        for i in range(1, 51):
            job.ctx.progress(i / 50, f"step {i}")
            await anyio.lowlevel.checkpoint()
        seen_in_ctx.append(job.ctx["progress"])
        return "done"

    worker = Worker()
    worker.register("crunch", crunch)
    queue = Queue(store)
    async with queue.events() as events, serving(store, worker):
        rec = await queue.enqueue(Job("crunch"))
        seen = await events_of(events, rec.id)
        done = await queue.wait(rec.id, timeout=10)
    progress = [e for e in seen if e.kind is JobEventKind.PROGRESS]
    assert 1 <= len(progress) <= 3, progress  # 50 calls in well under a second
    assert progress[-1].progress == {"fraction": 1.0, "message": "step 50"}
    assert [e.kind for e in seen][-2:] == [JobEventKind.PROGRESS, JobEventKind.SUCCEEDED]
    assert done.progress == {"fraction": 1.0, "message": "step 50"}
    assert seen_in_ctx == [{"fraction": 1.0, "message": "step 50"}]
    assert (await store.get(rec.id)) == done


async def test_slow_subscriber_loses_oldest_and_is_told(store: Store) -> None:
    """A subscriber that reads nothing never holds up the worker; past its buffer the oldest
    events are dropped and it first reads one LOST event counting them."""
    worker = Worker()
    worker.register("noop", lambda job: None)
    queue = Queue(store)
    async with queue.events(buffer=5) as slow, queue.events() as fast:
        async with serving(store, worker, concurrency=4):
            recs = [await queue.enqueue(Job("noop")) for _ in range(10)]
            for rec in recs:
                await queue.wait(rec.id, timeout=20)
        # Both streams get the same events at the same moments: once the fast one has seen
        # every SUCCEEDED, the slow one holds the last 5 of the 30 events and dropped 25.
        ended: set[str] = set()
        with anyio.fail_after(10):
            async for event in fast:
                if event.kind is JobEventKind.SUCCEEDED:
                    ended.add(event.job_id)
                    if len(ended) == len(recs):
                        break
        lost = await slow.get(timeout=10)
        assert lost is not None
        assert (lost.kind, lost.lost) == (JobEventKind.LOST, 25)
        rest = [await slow.get(timeout=10) for _ in range(5)]
        assert await slow.get(timeout=0.2) is None
    assert all(e is not None and e.job_id in {r.id for r in recs} for e in rest)
    assert rest[-1] is not None and rest[-1].kind is JobEventKind.SUCCEEDED


async def test_queue_wait_is_woken_by_the_end_not_by_polling(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue.wait reads the record once, then sleeps until the job's end event wakes it."""
    reads = 0
    real_get = store.get

    async def counting_get(id: str) -> JobRecord | None:
        nonlocal reads
        reads += 1
        return await real_get(id)

    monkeypatch.setattr(store, "get", counting_get)
    worker = Worker()
    worker.register("noop", lambda job: "ok")
    queue = Queue(store)
    rec = await queue.enqueue(Job("noop"))
    done = anyio.Event()
    result: list[JobRecord] = []

    async def wait() -> None:
        result.append(await queue.wait(rec.id, timeout=60))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        # Deliberately idle for a second: a polling wait would read the record many times.
        await anyio.sleep(1.0)
        assert reads == 1
        with anyio.fail_after(10):
            async with serving(store, worker):
                await done.wait()
    assert result[0].result == "ok"
    assert reads == 2


async def test_serve_deletes_finished_jobs_past_its_result_ttl(store: Store) -> None:
    """A serving worker deletes its queues' finished jobs once its result_ttl has passed,
    but keeps a job enqueued with a longer result_ttl of its own."""
    worker = Worker()
    worker.register("noop", lambda job: None)
    queue = Queue(store)
    short = await queue.enqueue(Job("noop"))
    kept = await queue.enqueue(Job("noop"), result_ttl=timedelta(hours=1))
    assert kept.result_ttl == 3600
    async with serving(store, worker):
        await queue.wait(short.id, timeout=10)
        await queue.wait(kept.id, timeout=10)

    async def deleted() -> bool:
        return await queue.get(short.id) is None

    # Retention passes run 1 s after serve starts, then every 30 s: a worker that starts once
    # both jobs are finished finds them in its first pass, however slow the machine.
    cleaner = Worker()
    cleaner.register("noop", lambda job: None)
    async with serving(store, cleaner, result_ttl=0):
        await until(deleted)
    got = await queue.get(kept.id)
    assert got is not None and got.state is JobState.SUCCEEDED


async def test_queue_purge_and_retry(store: Store) -> None:
    """Queue.purge deletes finished jobs older than a duration (by state) and refuses
    unfinished states; Queue.retry runs a FAILED job again and names the state otherwise."""
    worker = Worker()
    fixed: list[bool] = []

    @worker.handler()
    async def flaky(job: Job) -> str:
        if job.args.get("fail") and not fixed:
            raise StatusError(503, "down")
        return "ok"

    queue = Queue(store)
    bad = await queue.enqueue(Job("flaky", {"fail": True}))
    good = await queue.enqueue(Job("flaky"))
    async with serving(store, worker):
        assert (await queue.wait(bad.id, timeout=10)).state is JobState.FAILED
        await queue.wait(good.id, timeout=10)
        with pytest.raises(ValueError, match="succeeded"):
            await queue.retry(good.id)
        with pytest.raises(LookupError):
            await queue.retry("nope")
        fixed.append(True)  # the bug is fixed: run it again
        again = await queue.retry(bad.id)
        assert again.state is JobState.QUEUED
        done = await queue.wait(bad.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.result == "ok" and done.attempts == 1
    with pytest.raises(ValueError, match="queued"):
        await queue.purge(older_than=0, states=["queued"])
    assert await queue.purge(older_than=timedelta(hours=1)) == 0
    assert await queue.purge(older_than=0, states=[JobState.SUCCEEDED]) == 2
    assert await queue.list() == []


# -- the worker registry ---------------------------------------------------------------------


def _worker_info(id: str, *, started: datetime, seen: datetime, **fields: Any) -> WorkerInfo:
    """A registry entry with plausible values."""
    return WorkerInfo(
        id=id,
        hostname="host-a",
        pid=1234,
        queues=("default", "mail"),
        handlers=("send", "noop"),
        concurrency=8,
        started_at=started,
        last_seen=seen,
        **fields,
    )


async def test_worker_registry_round_trip_and_replace(store: Store) -> None:
    """record_worker stores every field, replaces by id, workers() lists oldest first."""
    t0 = now().replace(microsecond=0)
    first = _worker_info("w-1", started=t0, seen=t0)
    second = _worker_info("w-2", started=t0 - timedelta(seconds=5), seen=t0, heartbeat=2.0)
    await store.record_worker(first)
    await store.record_worker(second)
    assert await store.workers() == [second, first]
    updated = _worker_info(
        "w-1", started=t0, seen=t0 + timedelta(seconds=5), running=3, processed=9, failed=1
    )
    await store.record_worker(updated)
    assert await store.workers() == [second, updated]


async def test_worker_registry_remove_and_lost(store: Store) -> None:
    """remove_worker deletes one entry (unknown ids are a no-op); Queue.workers(lost=False)
    leaves out a worker unseen for 3 heartbeats."""
    t = now()
    live = _worker_info("live", started=t, seen=t, heartbeat=5.0)
    lost = _worker_info("lost", started=t, seen=t - timedelta(seconds=16), heartbeat=5.0)
    await store.record_worker(live)
    await store.record_worker(lost)
    queue = Queue(store)
    assert {w.id for w in await queue.workers()} == {"live", "lost"}
    assert [w.id for w in await queue.workers(lost=False)] == ["live"]
    assert lost.is_lost(t) and not live.is_lost(t)
    await store.remove_worker("lost")
    await store.remove_worker("never-registered")
    assert [w.id for w in await store.workers()] == ["live"]
