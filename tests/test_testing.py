"""work.testing: VirtualClock on the Worker, the memory and SQLite stores, and drain."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest

from work import Deferred, Job, JobState, Queue, Status, Worker
from work.scheduling import Schedule, Scheduler, Schedules
from work.stores import open_store
from work.stores._base import Store
from work.testing import VirtualClock, drain

pytestmark = pytest.mark.anyio

START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A memory or SQLite store on a VirtualClock (the clock is ``store.clock``)."""
    clock = VirtualClock(START)
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_store(url, clock=clock) as store:
        yield store


def _clock(store: Store) -> VirtualClock:
    clock = store.clock  # type: ignore[attr-defined]
    assert isinstance(clock, VirtualClock)
    return clock


async def test_virtual_clock_checks_its_input() -> None:
    """A naive start, a negative delta and a move backwards are refused with a ValueError."""
    with pytest.raises(ValueError, match="aware"):
        VirtualClock(datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        VirtualClock("2026-01-01")  # type: ignore[arg-type]
    clock = VirtualClock(START)
    with pytest.raises(ValueError, match=">= 0"):
        await clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="cannot go back"):
        await clock.advance_to(START - timedelta(seconds=1))
    await clock.advance(timedelta(hours=2))
    assert clock.now() == START + timedelta(hours=2)


async def test_month_of_hourly_perform_every_in_virtual_time() -> None:
    """A month of an hourly perform_every runs every tick, each seeing its own virtual time."""
    clock = VirtualClock(START)
    seen: list[datetime] = []

    async def tick(job: Job) -> None:
        assert job.ctx is not None
        seen.append(job.ctx.started_at)

    with anyio.fail_after(60):
        async with Worker(clock=clock) as worker:
            worker.register("tick", tick)
            handle = await worker.perform_every(Job("tick"), timedelta(hours=1))
            await clock.advance(timedelta(days=30))
            handle.cancel()
    expected = [START + timedelta(hours=h) for h in range(30 * 24 + 1)]
    assert seen == expected


async def test_perform_in_and_perform_at_fire_in_order_on_virtual_time() -> None:
    """perform_in / perform_at run at their virtual due time, in due order, and not before."""
    clock = VirtualClock(START)
    seen: list[tuple[str, datetime]] = []

    async def note(job: Job) -> None:
        assert job.ctx is not None
        seen.append((job.args["n"], job.ctx.started_at))

    with anyio.fail_after(30):
        async with Worker(clock=clock) as worker:
            worker.register("note", note)
            await worker.perform_in(Job("note", {"n": "b"}), timedelta(days=2))
            await worker.perform_at(Job("note", {"n": "a"}), START + timedelta(hours=5))
            late = await worker.perform_in(Job("note", {"n": "c"}), timedelta(days=40))
            await clock.advance(timedelta(days=30))
            assert not late.done
    assert seen == [("a", START + timedelta(hours=5)), ("b", START + timedelta(days=2))]


async def test_cron_perform_every_on_virtual_time() -> None:
    """A daily cron line fires once a day at 06:00 of virtual time."""
    clock = VirtualClock(START)
    seen: list[datetime] = []

    async def tick(job: Job) -> None:
        assert job.ctx is not None
        seen.append(job.ctx.started_at)

    with anyio.fail_after(30):
        async with Worker(clock=clock) as worker:
            worker.register("tick", tick)
            await worker.perform_every(Job("tick"), "0 6 * * *")
            await clock.advance(timedelta(days=10))
    assert seen == [START + timedelta(days=d, hours=6) for d in range(10)]


async def test_month_of_hourly_durable_jobs_on_a_virtual_clock(clocked: Store) -> None:
    """Hourly delayed jobs on a clocked store run at their virtual due time under serve."""
    clock = _clock(clocked)
    queue = Queue(clocked)
    seen: list[tuple[int, datetime]] = []

    async def note(job: Job) -> None:
        assert job.ctx is not None
        seen.append((job.args["h"], job.ctx.started_at))

    with anyio.fail_after(120):
        async with Worker(clock=clock) as worker, anyio.create_task_group() as tg:
            worker.register("note", note)
            for h in range(1, 24 * 30 + 1):
                await queue.enqueue(Job("note", {"h": h}), delay=timedelta(hours=h))
            tg.start_soon(worker.serve, clocked)
            await clock.advance(timedelta(days=30))
            worker.stop()
    assert seen == [(h, START + timedelta(hours=h)) for h in range(1, 24 * 30 + 1)]


async def test_deferred_deadline_on_virtual_time(clocked: Store) -> None:
    """A Deferred job with no callback ends FAILED 504 once virtual time passes its ttl."""
    clock = _clock(clocked)
    queue = Queue(clocked)

    async def later(job: Job) -> Deferred:
        return Deferred(ttl=600)

    with anyio.fail_after(30):
        async with Worker(clock=clock) as worker, anyio.create_task_group() as tg:
            worker.register("later", later)
            rec = await queue.enqueue(Job("later"))
            tg.start_soon(worker.serve, clocked)
            await clock.advance(timedelta(seconds=599))
            got = await queue.get(rec.id)
            assert got is not None and got.state is JobState.WAITING
            assert got.deadline == START + timedelta(seconds=600)
            await clock.advance(timedelta(seconds=2))
            got = await queue.get(rec.id)
            assert got is not None and got.state is JobState.FAILED
            assert got.status == Status.GATEWAY_TIMEOUT
            worker.stop()


async def test_lease_expiry_on_virtual_time(clocked: Store) -> None:
    """A job claimed by a worker that vanished is reaped and run again once virtual time passes
    its lease, and not before."""
    clock = _clock(clocked)
    queue = Queue(clocked)
    ran = anyio.Event()

    async def work(job: Job) -> str:
        ran.set()
        return "ok"

    rec = await queue.enqueue(Job("work"))
    claimed = await clocked.claim(["default"], limit=1, lease=300, owner="gone")
    assert [c.record.id for c in claimed] == [rec.id]
    with anyio.fail_after(30):
        async with Worker(clock=clock) as worker, anyio.create_task_group() as tg:
            worker.register("work", work)
            tg.start_soon(worker.serve, clocked)
            await clock.advance(timedelta(seconds=290))
            assert not ran.is_set()
            await clock.advance(timedelta(seconds=20))
            await ran.wait()
            done = await queue.wait(rec.id)
            assert done.state is JobState.SUCCEEDED and done.result == "ok"
            worker.stop()


async def test_other_stores_refuse_a_clock() -> None:
    """open_store with a clock for a store other than memory and SQLite is a clear ValueError."""
    with pytest.raises(ValueError, match="memory:// and sqlite://"):
        open_store("redis://127.0.0.1:6379/0", clock=VirtualClock(START))
    with pytest.raises(TypeError, match="VirtualClock"):
        open_store("memory://", clock="now")


async def test_drain_runs_queued_jobs_and_their_children() -> None:
    """drain starts the worker, runs what is runnable (jobs enqueued by jobs too) and returns,
    leaving jobs due later alone."""
    async with open_store("memory://") as store:
        queue = Queue(store)
        worker = Worker()

        async def parent(job: Job) -> int:
            await queue.enqueue(Job("child", {"n": job.args["n"] + 1}))
            return int(job.args["n"])

        async def child(job: Job) -> int:
            return int(job.args["n"]) * 10

        worker.register("parent", parent)
        worker.register("child", child)
        first = await queue.enqueue(Job("parent", {"n": 1}))
        later = await queue.enqueue(Job("child", {"n": 9}), delay=3600)
        with anyio.fail_after(30):
            await drain(queue, worker)
        assert not worker.running
        done = await queue.get(first.id)
        assert done is not None and done.result == 1
        children = await store.list(handler="child", state=JobState.SUCCEEDED)
        assert [c.result for c in children] == [20]
        waiting = await queue.get(later.id)
        assert waiting is not None and waiting.state is JobState.SCHEDULED


async def test_drain_on_a_running_worker_and_named_queues(clocked: Store) -> None:
    """drain serves only the given queues on a worker already running, which stays running."""
    queue = Queue(clocked)
    worker = Worker(clock=_clock(clocked))
    worker.register("echo", lambda job: job.args["x"])
    a = await queue.enqueue(Job("echo", {"x": 1}, queue="a"))
    b = await queue.enqueue(Job("echo", {"x": 2}, queue="b"))
    with anyio.fail_after(30):
        async with worker:
            await drain(queue, worker, queues=["a"])
            assert worker.running
    got_a, got_b = await queue.get(a.id), await queue.get(b.id)
    assert got_a is not None and got_a.state is JobState.SUCCEEDED and got_a.result == 1
    assert got_b is not None and got_b.state is JobState.QUEUED
    with pytest.raises(ValueError, match="queue names"):
        await drain(queue, worker, queues=[])


YEAR_RUNS = {("asyncio", "SQLiteStore"), ("trio", "MemoryStore")}


def _berlin_daily(day: date, hour: int, minute: int) -> datetime:
    """Independently of the scheduler: the first instant of ``day`` whose Berlin wall clock has
    reached ``hour:minute`` (a time in the spring gap fires just after it; one repeated by the
    fall-back fires at its first occurrence)."""
    berlin = ZoneInfo("Europe/Berlin")
    t = datetime(day.year, day.month, day.day, tzinfo=berlin).astimezone(UTC)
    while True:
        wall = t.astimezone(berlin)
        if (wall.hour, wall.minute) >= (hour, minute) or wall.date() > day:
            return t
        t += timedelta(minutes=1)


@pytest.mark.timeout(600)  # ~20 s alone; several times that beside other tests on 2 cores
async def test_a_year_of_berlin_schedules_on_a_virtual_clock(
    clocked: Store, anyio_backend: str
) -> None:
    """A year of an hourly and a daily (02:30, inside the spring gap) Europe/Berlin schedule
    fire at exactly the instants an independent zoneinfo computation gives."""
    if (anyio_backend, type(clocked).__name__) not in YEAR_RUNS:
        # ~15 s a run: the year is walked once per store, on alternate backends (the shorter
        # virtual-clock tests here cover every store on both).
        pytest.skip("the year runs on asyncio-SQLite and trio-memory only")
    clock = _clock(clocked)
    start = START
    schedules = Schedules(clocked)
    tick = Job("tick")
    await schedules.put(Schedule("b/hourly", "cron(0 * * * ? *)", tick, timezone="Europe/Berlin"))
    await schedules.put(Schedule("b/daily", "cron(30 2 * * ? *)", tick, timezone="Europe/Berlin"))
    end = START + timedelta(days=365)
    with anyio.fail_after(240):
        async with Scheduler(clocked, clock=clock):
            await clock.advance_to(end)
    fires: dict[str, list[datetime]] = {"b/hourly": [], "b/daily": []}
    after: str | None = None
    while page := await clocked.list(handler="tick", limit=1000, after=after):
        for rec in page:
            assert rec.schedule_id is not None and rec.scheduled_for is not None
            fires[rec.schedule_id].append(rec.scheduled_for)
        after = page[-1].id
    hours = int((end - start).total_seconds() // 3600)
    assert sorted(fires["b/hourly"]) == [start + timedelta(hours=h + 1) for h in range(hours)]
    days = [START.date() + timedelta(days=d) for d in range(366)]
    expected = [t for t in (_berlin_daily(d, 2, 30) for d in days) if start < t <= end]
    assert sorted(fires["b/daily"]) == expected
    # Spring-forward (29 March 2026): 03:00 CEST, the first instant after the gap; fall-back
    # (25 October 2026): the first 02:30, in CEST; the hourly one fires 23 and 25 times.
    assert datetime(2026, 3, 29, 1, 0, tzinfo=UTC) in fires["b/daily"]
    assert datetime(2026, 10, 25, 0, 30, tzinfo=UTC) in fires["b/daily"]
    assert datetime(2026, 10, 25, 1, 30, tzinfo=UTC) not in fires["b/daily"]
    berlin = ZoneInfo("Europe/Berlin")
    per_day = Counter(t.astimezone(berlin).date() for t in fires["b/hourly"])
    assert per_day[date(2026, 3, 29)] == 23 and per_day[date(2026, 10, 25)] == 25


async def test_schedule_executions_see_their_fire_time(clocked: Store) -> None:
    """Under a scheduler and serve on one VirtualClock, each execution of an hourly schedule
    starts at its fire time (ctx.started_at == scheduled_for)."""
    clock = _clock(clocked)
    seen: list[tuple[datetime, datetime]] = []

    async def tick(job: Job) -> None:
        assert job.ctx is not None
        rec = await clocked.get(job.id)
        assert rec is not None and rec.scheduled_for is not None
        seen.append((job.ctx.started_at, rec.scheduled_for))

    await Schedules(clocked).put(Schedule("hourly", "rate(1 hour)", Job("tick")))
    with anyio.fail_after(60):
        async with Worker(clock=clock) as worker, Scheduler(clocked, clock=clock):
            worker.register("tick", tick)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.serve, clocked)
                await clock.advance(timedelta(days=7))
                worker.stop()
    assert [s for s, _ in seen] == [START + timedelta(hours=h + 1) for h in range(7 * 24)]
    assert all(started == fired for started, fired in seen)


async def test_drain_sees_a_job_claimed_between_its_counts_and_its_listing(
    clocked: Store,
) -> None:
    """drain's "is anything runnable" check reads the counts, then lists SCHEDULED jobs: a job
    claimed between the two reads is running, not gone, so the check says "look again"."""
    from work._durable.drain import _runnable

    clock = _clock(clocked)
    async with Queue(clocked) as queue:
        await queue.enqueue(Job("tick"), delay=60)
    await clock.advance(timedelta(minutes=2))  # due now: SCHEDULED until a claim takes it
    real_list = clocked.list

    async def claim_then_list(**filters: object) -> object:
        await clocked.claim(["default"], limit=1, lease=30, owner="other")
        return await real_list(**filters)  # type: ignore[arg-type]

    clocked.list = claim_then_list  # type: ignore[method-assign,assignment]
    try:
        assert await _runnable(clocked, ("default",))
    finally:
        clocked.list = real_list  # type: ignore[method-assign]
    running = await clocked.list(state=JobState.RUNNING)
    assert len(running) == 1  # and the next look sees it running
    assert await _runnable(clocked, ("default",))
