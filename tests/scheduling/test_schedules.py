"""Schedule's validation and timing, the scheduler's plan, its background loop, and the sync
twin (store behaviour is in tests/stores/test_schedules_conformance.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from work import Job, JobState, RetryPolicy, Schedule, Scheduler, Schedules, SyncSchedules
from work.scheduling._scheduler import plan_firing
from work.stores import open_store
from work.stores._base import ScheduleRow

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def job() -> Job:
    """A target job."""
    return Job("report", {"kind": "daily"})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"id": ""}, ValueError, "schedule id"),
        ({"id": "a b"}, ValueError, "schedule id"),
        ({"id": "x" * 201}, ValueError, "schedule id"),
        ({"expression": "rate(0 minutes)"}, ValueError, "rate"),
        ({"expression": "every day"}, ValueError, "every day"),
        ({"timezone": "Mars/Olympus"}, ValueError, "Mars/Olympus"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1.0}, ValueError, "ttl"),
        ({"misfire_grace": -1}, ValueError, "misfire_grace"),
        ({"ttl": "5"}, TypeError, "ttl"),
        ({"target": "report"}, TypeError, "target"),
        ({"start_at": datetime(2026, 1, 1)}, ValueError, "start_at"),
        ({"retry": 3}, TypeError, "retry"),
    ],
)
def test_constructor_refuses_bad_values_naming_them(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """A bad id, expression, time zone or number is an error from the constructor naming it."""
    args: dict[str, Any] = {"id": "svc/job", "expression": "rate(1 hour)", "target": job()}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        Schedule(
            args.pop("id"),
            args.pop("expression"),
            args.pop("target"),
            **args,
        )


def test_attributes_carry_the_constructor_names() -> None:
    """Every constructor argument is an attribute of the same name; the target is a copy."""
    target = job()
    start = T0
    retry = RetryPolicy(max_attempts=2)
    schedule = Schedule(
        "svc/job",
        "rate(2 hours)",
        target,
        timezone="Europe/Berlin",
        enabled=False,
        exclusive=True,
        ttl=30,
        misfire_grace=5,
        retry=retry,
        start_at=start,
        description="d",
    )
    assert (schedule.id, schedule.expression, schedule.timezone) == (
        "svc/job",
        "rate(2 hours)",
        "Europe/Berlin",
    )
    assert not schedule.enabled and schedule.exclusive
    assert schedule.ttl == 30.0 and schedule.misfire_grace == 5.0
    assert schedule.retry is retry and schedule.start_at == start
    assert schedule.description == "d"
    assert isinstance(schedule.target, Job)
    assert schedule.target is not target and schedule.target.handler == "report"


def test_next_fires_is_pure_and_strictly_later() -> None:
    """next_fires gives n aware UTC fires strictly after `after`; rate() counts from after
    (or start_at), at() ends after one."""
    every = Schedule("a", "rate(15 minutes)", job())
    assert every.next_fires(T0, 3) == [T0 + timedelta(minutes=15 * k) for k in (1, 2, 3)]
    started = Schedule("a", "rate(15 minutes)", job(), start_at=T0 + timedelta(minutes=5))
    assert started.next_fires(T0, 2) == [
        T0 + timedelta(minutes=20),
        T0 + timedelta(minutes=35),
    ]
    once = Schedule("a", "at(2026-03-01T13:00:00)", job(), timezone="Europe/Berlin")
    # 13:00 in Berlin (CET) is 12:00 UTC, which is T0: strictly later means nothing at T0.
    assert once.next_fires(T0 - timedelta(hours=1), 5) == [T0]
    assert once.next_fires(T0, 5) == []
    with pytest.raises(ValueError, match="aware"):
        every.next_fires(datetime(2026, 1, 1))


def test_spec_round_trip_keeps_every_attribute() -> None:
    """to_spec/from_spec (what stores keep) give back an equal schedule, retry policy
    included, and survive JSON."""
    schedule = Schedule(
        "svc/job",
        "cron(0 6 ? * MON-FRI *)",
        Job("report", {"a": [1, 2]}, queue="q", timeout=3.0, headers={"h": "v"}),
        timezone="America/New_York",
        exclusive=True,
        ttl=9.5,
        misfire_grace=0,
        retry=RetryPolicy(max_attempts=4),
        start_at=T0,
        description="weekdays",
    )
    back = Schedule.from_spec(json.loads(json.dumps(schedule.to_spec())))
    assert back == schedule
    assert back.retry is not None and back.retry.max_attempts == 4
    assert back.retry.retry_statuses() == RetryPolicy().retry_statuses()
    with pytest.raises(ValueError, match="not a stored schedule"):
        Schedule.from_spec({"id": "x"})


def _row(schedule: Schedule, next_fire: datetime, anchor: datetime = T0) -> ScheduleRow:
    return ScheduleRow(
        id=schedule.id,
        spec=schedule.to_spec(),
        next_fire_at=next_fire,
        anchor=anchor,
        created_at=anchor,
        updated_at=anchor,
        version=7,
    )


def test_plan_coalesces_fires_within_grace_and_skips_older() -> None:
    """The plan for a schedule 100 s behind with a 10 s grace: one execution for the latest
    fire, 90 skipped, next fire after now, the version kept for the store's check."""
    schedule = Schedule("svc/s", "rate(1 second)", job(), misfire_grace=10, ttl=4)
    now = T0 + timedelta(seconds=100.5)
    firing = plan_firing(_row(schedule, T0 + timedelta(seconds=1)), now=now)
    assert firing.version == 7 and firing.schedule_id == "svc/s"
    assert firing.last_fire_at == T0 + timedelta(seconds=100)
    assert firing.next_fire_at == T0 + timedelta(seconds=101)
    assert firing.skipped == 90
    assert firing.job is not None
    assert firing.job.id == "svc/s@20260301T120140Z"
    assert firing.job.timeout == 4 and firing.job.schedule_id == "svc/s"


def test_plan_for_an_unreadable_schedule_stops_it() -> None:
    """A stored schedule this version cannot read is planned to never fire again (logged),
    rather than failing every tick."""
    row = _row(Schedule("svc/s", "rate(1 second)", job()), T0).replace(spec={"id": "svc/s"})
    firing = plan_firing(row, now=T0)
    assert firing.next_fire_at is None and firing.job is None


def test_scheduler_refuses_bad_settings() -> None:
    """poll <= 0, batch < 1 and a clock that is not a Clock are refused."""
    store = open_store("memory://")
    with pytest.raises(ValueError, match="poll"):
        Scheduler(store, poll=0)
    with pytest.raises(ValueError, match="batch"):
        Scheduler(store, batch=0)
    with pytest.raises(TypeError, match="clock"):
        Scheduler(store, clock=object())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_scheduler_in_the_background_fires_on_time() -> None:
    """`async with Scheduler(store)` fires a rate(1 second) schedule within about its poll."""
    async with open_store("memory://") as store:
        schedules = Schedules(store)
        record = await schedules.put(Schedule("svc/s", "rate(1 second)", job()))
        assert record.next_fire_at is not None
        async with Scheduler(store, poll=0.05):
            with anyio.fail_after(5):
                while not await schedules.executions("svc/s"):
                    await anyio.sleep(0.02)
        (first, *_) = reversed(await schedules.executions("svc/s"))
        assert first.scheduled_for == record.next_fire_at
        assert first.enqueued_at is not None
        assert (first.enqueued_at - record.next_fire_at).total_seconds() < 1.0


@pytest.mark.anyio
async def test_put_refuses_args_that_are_not_json() -> None:
    """A target whose args cannot be stored as JSON is a TypeError naming the key."""
    async with open_store("memory://") as store:
        with pytest.raises(TypeError, match="when"):
            await Schedules(store).put(Schedule("svc/s", "rate(1 hour)", Job("x", {"when": T0})))


def test_sync_twin_has_the_same_methods(tmp_path: Path) -> None:
    """SyncSchedules puts, lists, pauses, triggers and syncs without an event loop."""
    with SyncSchedules(f"sqlite:///{tmp_path / 'jobs.db'}") as schedules:
        record = schedules.put(Schedule("svc/s", "rate(1 hour)", job()))
        assert schedules.get("svc/s") is not None
        assert [r.schedule.id for r in schedules.list()] == ["svc/s"]
        assert schedules.pause("svc/s").next_fire_at is None
        assert schedules.resume("svc/s").next_fire_at is not None
        executed = schedules.trigger("svc/s")
        assert executed.state is JobState.QUEUED
        assert [r.id for r in schedules.executions("svc/s")] == [executed.id]
        assert schedules.sync([record.schedule], prefix="svc/")[0].schedule == record.schedule
        assert schedules.delete("svc/s")
    with pytest.raises(RuntimeError, match="closed"):
        schedules.get("svc/s")


@pytest.mark.anyio
async def test_fire_for_a_handler_no_worker_has_fails_404_and_the_schedule_goes_on() -> None:
    """An execution whose handler no worker has ends FAILED 404 (after the worker's
    unknown-handler grace); the schedule's next fire is made all the same."""
    from work import Status, Worker

    async with open_store("memory://") as store:
        schedules = Schedules(store)
        await schedules.put(Schedule("svc/orphan", "rate(1 second)", Job("nobody_has_this")))
        anchor = await _anchor(schedules, "svc/orphan")
        scheduler = Scheduler(store)
        (first,) = await scheduler.tick(anchor + timedelta(seconds=1))
        worker = Worker()
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(lambda: worker.serve(store, unknown_handler_grace=0))
            with anyio.fail_after(10):
                while (rec := await store.get(first.id)) is None or not rec.state.is_final:
                    await anyio.sleep(0.01)
            worker.stop()
        assert rec is not None
        assert rec.state is JobState.FAILED and rec.status is Status.NOT_FOUND
        (second,) = await scheduler.tick(anchor + timedelta(seconds=2))
        assert second.state is JobState.QUEUED


async def _anchor(schedules: Schedules, id: str) -> datetime:
    record = await schedules.get(id)
    assert record is not None and record.anchor is not None
    return record.anchor
