"""The schedules part of the store conformance suite: Schedules and Scheduler on every store.

Time is given to ``Scheduler.tick(now=...)`` explicitly, so nothing here sleeps for a fire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from prometheus_client import REGISTRY

from work import Job, JobState, Queue, RetryPolicy, Status
from work.scheduling import Schedule, Scheduler, Schedules
from work.stores import Store
from work.stores._base import Firing, ScheduleRow

from .test_conformance import fast_retry

pytestmark = pytest.mark.anyio

# Longer than the Redis store's pick lease: a schedule a dead scheduler picked is due again.
_AFTER_PICK_LEASE = timedelta(seconds=31)


def every_second(id: str = "svc/tick", **options: object) -> Schedule:
    """A ``rate(1 second)`` schedule of job ``tick``."""
    return Schedule(id, "rate(1 second)", Job("tick", {"n": 1}), **options)  # type: ignore[arg-type]


async def anchor_of(schedules: Schedules, id: str) -> datetime:
    """The stored schedule's anchor."""
    record = await schedules.get(id)
    assert record is not None and record.anchor is not None
    return record.anchor


def fire_id(id: str, fire: datetime) -> str:
    """The job id of a schedule's fire."""
    return f"{id}@{fire:%Y%m%dT%H%M%SZ}"


# -- CRUD ----------------------------------------------------------------------------------------


async def test_put_creates_and_get_reads_back(store: Store) -> None:
    """put() stores the schedule with its next fire one period after the anchor; get() reads
    every attribute back, and an unknown id is None."""
    schedules = Schedules(store)
    retry = fast_retry(4)
    schedule = Schedule(
        "billing/invoices",
        "rate(5 minutes)",
        Job("invoice", {"day": 1}, queue="billing", timeout=9.0, headers={"x": "y"}),
        exclusive=True,
        ttl=30.0,
        misfire_grace=10,
        retry=retry,
        description="monthly invoices",
    )
    before = datetime.now(UTC)
    record = await schedules.put(schedule)
    assert record.schedule == schedule
    assert record.anchor is not None
    assert before - timedelta(seconds=1) <= record.anchor <= datetime.now(UTC)
    assert record.next_fire_at == record.anchor + timedelta(minutes=5)
    assert record.last_fire_at is None and record.last_success is None
    got = await schedules.get("billing/invoices")
    assert got is not None
    assert got.schedule == schedule
    assert isinstance(got.schedule.target, Job)
    assert got.schedule.target.queue == "billing" and got.schedule.target.args == {"day": 1}
    assert got.schedule.retry is not None and got.schedule.retry.max_attempts == 4
    assert got.schedule.exclusive and got.schedule.ttl == 30.0
    assert got.next_fire_at == record.next_fire_at
    assert got.created_at.utcoffset() == timedelta(0)
    assert await schedules.get("billing/nope") is None


async def test_put_is_idempotent(store: Store) -> None:
    """Putting the same schedule again changes nothing: same next fire, same updated_at."""
    schedules = Schedules(store)
    first = await schedules.put(every_second())
    again = await schedules.put(every_second())
    assert again.next_fire_at == first.next_fire_at
    assert again.updated_at == first.updated_at and again.anchor == first.anchor


async def test_put_changed_expression_reanchors_other_changes_keep_next_fire(store: Store) -> None:
    """A new expression recomputes the next fire from now (rate re-anchored); new args keep
    the next fire."""
    schedules = Schedules(store)
    first = await schedules.put(Schedule("a/x", "rate(1 hour)", Job("h", {"v": 1})))
    args_changed = await schedules.put(Schedule("a/x", "rate(1 hour)", Job("h", {"v": 2})))
    assert args_changed.next_fire_at == first.next_fire_at
    assert isinstance(args_changed.schedule.target, Job)
    assert args_changed.schedule.target.args == {"v": 2}
    assert args_changed.updated_at >= first.updated_at
    retimed = await schedules.put(Schedule("a/x", "rate(2 minutes)", Job("h", {"v": 2})))
    assert retimed.anchor is not None and retimed.anchor >= first.anchor  # type: ignore[operator]
    assert retimed.next_fire_at == retimed.anchor + timedelta(minutes=2)
    assert retimed.created_at == first.created_at


async def test_list_orders_by_id_with_prefix_enabled_and_paging(store: Store) -> None:
    """list() is ordered by id, filters on prefix and enabled, and pages with after."""
    schedules = Schedules(store)
    for id in ["b/2", "a/1", "b/1", "c/1", "b/3"]:
        await schedules.put(Schedule(id, "rate(1 hour)", Job("h"), enabled=id != "b/2"))
    ids = [r.schedule.id for r in await schedules.list()]
    assert ids == ["a/1", "b/1", "b/2", "b/3", "c/1"]
    assert [r.schedule.id for r in await schedules.list(prefix="b/")] == ["b/1", "b/2", "b/3"]
    assert [r.schedule.id for r in await schedules.list(enabled=False)] == ["b/2"]
    page1 = await schedules.list(limit=2)
    page2 = await schedules.list(limit=2, after=page1[-1].schedule.id)
    page3 = await schedules.list(limit=2, after=page2[-1].schedule.id)
    assert [r.schedule.id for r in page1 + page2 + page3] == ids
    paused = await schedules.get("b/2")
    assert paused is not None and paused.next_fire_at is None
    with pytest.raises(ValueError, match="limit"):
        await schedules.list(limit=-1)


async def test_delete_keeps_executions(store: Store) -> None:
    """delete() removes the schedule, not the executions it made; a second delete is False."""
    schedules = Schedules(store)
    await schedules.put(every_second())
    job = await schedules.trigger("svc/tick")
    assert await schedules.delete("svc/tick") is True
    assert await schedules.get("svc/tick") is None
    assert await schedules.delete("svc/tick") is False
    assert [r.id for r in await schedules.executions("svc/tick")] == [job.id]


async def test_sync_creates_updates_and_deletes_under_prefix(store: Store) -> None:
    """sync() makes the schedules under the prefix exactly the given ones, leaving others."""
    schedules = Schedules(store)
    await schedules.put(Schedule("app/old", "rate(1 hour)", Job("h")))
    await schedules.put(Schedule("app/keep", "rate(1 hour)", Job("h", {"v": 1})))
    await schedules.put(Schedule("other/x", "rate(1 hour)", Job("h")))
    records = await schedules.sync(
        [
            Schedule("app/keep", "rate(1 hour)", Job("h", {"v": 2})),
            Schedule("app/new", "rate(1 minute)", Job("h")),
        ],
        prefix="app/",
    )
    assert [r.schedule.id for r in records] == ["app/keep", "app/new"]
    ids = [r.schedule.id for r in await schedules.list()]
    assert ids == ["app/keep", "app/new", "other/x"]
    kept = await schedules.get("app/keep")
    assert kept is not None and isinstance(kept.schedule.target, Job)
    assert kept.schedule.target.args == {"v": 2}
    with pytest.raises(ValueError, match="does not start with"):
        await schedules.sync([Schedule("zzz/a", "rate(1 hour)", Job("h"))], prefix="app/")
    assert [r.schedule.id for r in await schedules.sync([], prefix="app/")] == []
    assert [r.schedule.id for r in await schedules.list()] == ["other/x"]


# -- firing --------------------------------------------------------------------------------------


async def test_tick_fires_each_due_fire_once_with_its_job_id(store: Store) -> None:
    """Each fire enqueues the target with id f"{id}@{fire}", schedule_id, scheduled_for,
    the retry policy and ttl as timeout; a second tick at the same time fires nothing."""
    schedules = Schedules(store)
    await schedules.put(every_second(ttl=5.0, retry=RetryPolicy(max_attempts=3)))
    anchor = await anchor_of(schedules, "svc/tick")
    scheduler = Scheduler(store)
    fire = anchor + timedelta(seconds=1)
    made = await scheduler.tick(fire)
    assert [r.id for r in made] == [fire_id("svc/tick", fire)]
    (job,) = made
    assert job.schedule_id == "svc/tick" and job.scheduled_for == fire
    assert job.handler == "tick" and job.args == {"n": 1}
    assert job.state is JobState.QUEUED and job.timeout == 5.0 and job.max_attempts == 3
    assert job.retry is not None
    assert await store.get(job.id) == job
    assert await scheduler.tick(fire) == []
    record = await schedules.get("svc/tick")
    assert record is not None
    assert record.last_fire_at == fire and record.next_fire_at == fire + timedelta(seconds=1)
    listed = await Queue(store).list(schedule_id="svc/tick")
    assert [r.id for r in listed] == [job.id]


async def test_disabled_schedule_fires_and_records_nothing(store: Store) -> None:
    """A schedule stored disabled is never due: a tick far later makes no record."""
    schedules = Schedules(store)
    await schedules.put(every_second(enabled=False))
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await Scheduler(store).tick(later) == []
    assert await schedules.executions("svc/tick") == []


async def test_pause_then_resume_from_now_without_burst(store: Store) -> None:
    """A paused schedule fires nothing; resume() fires from now on, not the missed fires."""
    schedules = Schedules(store)
    await schedules.put(every_second(misfire_grace=3600))
    anchor = await anchor_of(schedules, "svc/tick")
    paused = await schedules.pause("svc/tick")
    assert not paused.schedule.enabled and paused.next_fire_at is None
    scheduler = Scheduler(store)
    assert await scheduler.tick(anchor + timedelta(seconds=10)) == []
    resumed = await schedules.resume("svc/tick")
    assert resumed.schedule.enabled
    assert resumed.next_fire_at is not None
    assert resumed.next_fire_at > datetime.now(UTC) - timedelta(seconds=1)
    made = await scheduler.tick(resumed.next_fire_at)
    assert [r.scheduled_for for r in made] == [resumed.next_fire_at]
    with pytest.raises(LookupError):
        await schedules.pause("svc/none")
    with pytest.raises(LookupError):
        await schedules.resume("svc/none")


async def test_trigger_makes_one_manual_execution(store: Store) -> None:
    """trigger() enqueues one execution now, id f"{id}@manual-…", counted as an execution."""
    schedules = Schedules(store)
    await schedules.put(every_second(enabled=False))
    job = await schedules.trigger("svc/tick")
    assert job.id.startswith("svc/tick@manual-")
    assert job.state is JobState.QUEUED and job.schedule_id == "svc/tick"
    other = await schedules.trigger("svc/tick")
    assert other.id != job.id
    assert [r.id for r in await schedules.executions("svc/tick")] == [other.id, job.id]
    with pytest.raises(LookupError):
        await schedules.trigger("svc/none")


async def test_exclusive_fire_while_running_is_recorded_409(store: Store) -> None:
    """An exclusive schedule whose execution is unfinished records the next fire as FAILED
    409 "previous execution still running"; once it ended, fires run again."""
    schedules = Schedules(store)
    await schedules.put(every_second(exclusive=True))
    anchor = await anchor_of(schedules, "svc/tick")
    scheduler = Scheduler(store)
    (first,) = await scheduler.tick(anchor + timedelta(seconds=1))
    assert first.state is JobState.QUEUED
    (second,) = await scheduler.tick(anchor + timedelta(seconds=2))
    assert second.state is JobState.FAILED and second.status is Status.CONFLICT
    assert second.error == "previous execution still running"
    assert second.finished_at is not None
    manual = await schedules.trigger("svc/tick")
    assert manual.status is Status.CONFLICT
    assert await store.cancel(first.id)
    (third,) = await scheduler.tick(anchor + timedelta(seconds=3))
    assert third.state is JobState.QUEUED


async def test_misfires_within_grace_coalesce_older_are_skipped_and_counted(store: Store) -> None:
    """After downtime, the fires within misfire_grace become one execution (the latest); older
    ones are skipped and counted in anywork_schedule_misfires_total{schedule}."""
    schedules = Schedules(store)
    id = f"svc/misfire-{store.url[:6].strip(':/+')}"
    await schedules.put(every_second(id, misfire_grace=5))
    anchor = await anchor_of(schedules, id)
    before = REGISTRY.get_sample_value("anywork_schedule_misfires_total", {"schedule": id}) or 0
    now = anchor + timedelta(seconds=20.5)
    made = await Scheduler(store).tick(now)
    assert [r.scheduled_for for r in made] == [anchor + timedelta(seconds=20)]
    after = REGISTRY.get_sample_value("anywork_schedule_misfires_total", {"schedule": id})
    assert after == before + 15  # fires 1 … 15 are older than 20.5 - 5 s
    record = await schedules.get(id)
    assert record is not None and record.next_fire_at == anchor + timedelta(seconds=21)


async def test_executions_newest_first_with_state_and_paging(store: Store) -> None:
    """executions() lists newest first, filters by state and pages with before."""
    schedules = Schedules(store)
    await schedules.put(every_second())
    anchor = await anchor_of(schedules, "svc/tick")
    scheduler = Scheduler(store)
    made = [(await scheduler.tick(anchor + timedelta(seconds=n)))[0].id for n in range(1, 6)]
    assert await store.cancel(made[1])
    newest = list(reversed(made))
    assert [r.id for r in await schedules.executions("svc/tick")] == newest
    page1 = await schedules.executions("svc/tick", limit=2)
    page2 = await schedules.executions("svc/tick", limit=2, before=page1[-1].id)
    page3 = await schedules.executions("svc/tick", limit=2, before=page2[-1].id)
    assert [r.id for r in page1 + page2 + page3] == newest
    cancelled = await schedules.executions("svc/tick", state="cancelled")
    assert [r.id for r in cancelled] == [made[1]]
    assert await schedules.executions("svc/tick", before="no-such-job") == []


async def test_last_success_is_the_latest_succeeded_execution(
    store: Store,
) -> None:
    """ScheduleRecord.last_success is the schedule's last SUCCEEDED execution."""
    schedules = Schedules(store)
    await schedules.put(every_second())
    job = await schedules.trigger("svc/tick")
    (claimed,) = await store.claim(["default"], limit=1, lease=30, owner="w")
    assert claimed.record.id == job.id
    from work.stores import Outcome

    await store.complete(
        "w", [Outcome(id=job.id, state=JobState.SUCCEEDED, status=Status.SUCCESS, result=7)]
    )
    await schedules.trigger("svc/tick")  # queued: not a success
    record = await schedules.get("svc/tick")
    assert record is not None and record.last_success is not None
    assert record.last_success.id == job.id and record.last_success.result == 7


# -- faults --------------------------------------------------------------------------------------


async def test_concurrent_schedulers_fire_each_fire_once(
    store: Store, make_store: Callable[[], Store]
) -> None:
    """Four schedulers on separate store connections ticking at the same instants fire every
    fire of 50 schedules exactly once."""
    schedules = Schedules(store)
    for n in range(50):
        await schedules.put(every_second(f"svc/s{n:02d}", misfire_grace=3600))
    anchor = min([await anchor_of(schedules, f"svc/s{n:02d}") for n in range(50)])
    next_fires: list[datetime] = []
    for n in range(50):
        record = await schedules.get(f"svc/s{n:02d}")
        assert record is not None and record.next_fire_at is not None
        next_fires.append(record.next_fire_at)
    made: list[str] = []

    async def run(s: Store) -> None:
        scheduler = Scheduler(s, batch=7)
        for n in range(1, 4):
            made.extend(r.id for r in await scheduler.tick(anchor + timedelta(seconds=n + 1)))

    async with contextlib.AsyncExitStack() as stack:
        others = [await stack.enter_async_context(make_store()) for _ in range(3)]
        async with anyio.create_task_group() as tg:
            for s in [store, *others]:
                tg.start_soon(run, s)
    assert len(made) == len(set(made))
    total = 0
    for n in range(50):
        jobs = await schedules.executions(f"svc/s{n:02d}")
        fires = [j.scheduled_for for j in jobs]
        assert len(fires) == len(set(fires))
        # The first tick's fire (missed fires coalesce into the tick's instant), or, for a
        # schedule put a second or two later on a loaded machine, its own first fire.
        assert max(next_fires[n], anchor + timedelta(seconds=2)) in fires
        total += len(jobs)
    assert total == len(made)


async def test_clock_jump_backwards_repeats_no_fire(store: Store) -> None:
    """A tick whose clock went back fires nothing already fired; fires resume when time
    catches up with the stored next fire."""
    schedules = Schedules(store)
    await schedules.put(every_second())
    anchor = await anchor_of(schedules, "svc/tick")
    scheduler = Scheduler(store)
    assert len(await scheduler.tick(anchor + timedelta(seconds=5))) == 1
    assert await scheduler.tick(anchor + timedelta(seconds=2)) == []
    assert await scheduler.tick(anchor + timedelta(seconds=5.5)) == []
    (next_fire,) = await scheduler.tick(anchor + timedelta(seconds=6))
    assert next_fire.scheduled_for == anchor + timedelta(seconds=6)
    assert len(await schedules.executions("svc/tick")) == 2


async def test_scheduler_dying_mid_fire_loses_and_doubles_nothing(store: Store) -> None:
    """A scheduler that dies after taking a due schedule and before applying its fire changes
    nothing: a later tick fires it once (on Redis once the pick lease has run out)."""
    schedules = Schedules(store)
    await schedules.put(every_second(misfire_grace=3600))
    anchor = await anchor_of(schedules, "svc/tick")
    due = anchor + timedelta(seconds=1)

    def die(row: ScheduleRow) -> Firing:
        raise RuntimeError("killed")  # the process dies in the middle of the fire

    with pytest.raises(RuntimeError, match="killed"):
        await store.fire_schedules(due, die, limit=10)
    assert await schedules.executions("svc/tick") == []
    later = due + _AFTER_PICK_LEASE
    made = await Scheduler(store).tick(later)
    assert [r.scheduled_for for r in made] == [later.replace(microsecond=0)]
    assert await Scheduler(store).tick(later) == []


async def test_a_fire_whose_job_id_exists_is_not_doubled(store: Store) -> None:
    """The job id is the second guard: a fire whose execution already exists (a restored
    schedule, a replay) advances the schedule and adds nothing."""
    schedules = Schedules(store)
    await schedules.put(every_second())
    anchor = await anchor_of(schedules, "svc/tick")
    fire = anchor + timedelta(seconds=1)
    (made,) = await Scheduler(store).tick(fire)
    record = await schedules.get("svc/tick")
    assert record is not None
    row = await store.get_schedule("svc/tick")
    assert row is not None
    # Rewind the stored schedule, as a restore from an older backup would.
    rewound = row.replace(next_fire_at=fire, version=row.version + 1)
    assert await store.save_schedule(rewound, expected=row.version)
    assert await Scheduler(store).tick(fire) == []
    assert [r.id for r in await schedules.executions("svc/tick")] == [made.id]
