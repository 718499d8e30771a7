"""Schedules whose target is a Webhook: each fire calls it, its callback ends the execution,
and the next call carries the last success; on a VirtualClock with a real receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from work import Job, JobState, Status, Webhook, Worker
from work.scheduling import Schedule, Scheduler, Schedules, WebhookHandler, handle_callback
from work.stores import Store, open_store
from work.testing import VirtualClock

from ..stores.test_conformance import until
from ..test_webhooks import PUBLIC, SEED_FIELDS, callback_parts, receiver, state_of

pytestmark = pytest.mark.anyio

START = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
async def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A memory or SQLite store on a VirtualClock (``store.clock``)."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_store(url, clock=VirtualClock(START)) as store:
        yield store


def _clock(store: Store) -> VirtualClock:
    clock = store.clock  # type: ignore[attr-defined]
    assert isinstance(clock, VirtualClock)
    return clock


async def test_schedule_target_checks() -> None:
    """A callback Webhook target needs a ttl; a Webhook target survives the stored spec."""
    hook = Webhook("http://127.0.0.1:9/hook", payload="p", queue="hooks")
    with pytest.raises(ValueError, match="needs a ttl"):
        Schedule("svc/job", "rate(1 hour)", hook)
    with pytest.raises(TypeError, match="Job or a Webhook"):
        Schedule("svc/job", "rate(1 hour)", "hook")  # type: ignore[arg-type]
    schedule = Schedule("svc/job", "rate(1 hour)", hook, ttl=60)
    again = Schedule.from_spec(schedule.to_spec())
    assert again == schedule and again.target == hook
    fire = START + timedelta(hours=1)
    rec = schedule.execution("svc/job@x", fire=fire, now=fire)
    assert rec.handler == "anywork.webhook" and rec.queue == "hooks"
    assert rec.schedule_id == "svc/job" and rec.scheduled_for == fire
    assert rec.args["ttl"] == 60 and rec.args["schedule_id"] == "svc/job"
    plain = Schedule("svc/plain", "rate(1 hour)", Webhook("http://127.0.0.1:9/", callback=False))
    assert plain.ttl is None


async def test_a_callback_webhook_jobs_ttl_is_its_wait_not_its_timeout() -> None:
    """A schedule whose target is a callback Webhook's job (``Webhook.job``, as the HTTP
    service stores it) bounds the callback wait with its ttl, not the execution: the POST has
    the webhook's own timeout, so a slow POST under a short ttl is not cut off (408). A job
    without a callback keeps the ttl as its timeout."""
    fire = START + timedelta(hours=1)
    hook = Webhook("http://127.0.0.1:9/hook", payload="p")
    waiting = Schedule("svc/job", "rate(1 hour)", hook.job(ttl=1), ttl=1)
    rec = waiting.execution("svc/job@x", fire=fire, now=fire)
    assert rec.handler == "anywork.webhook" and rec.args["ttl"] == 1
    assert rec.timeout is None
    direct = Webhook("http://127.0.0.1:9/hook", callback=False)
    plain = Schedule("svc/plain", "rate(1 hour)", direct.job(), ttl=5)
    assert plain.execution("svc/plain@x", fire=fire, now=fire).timeout == 5


async def test_webhook_schedule_fires_and_callbacks_finish_executions(clocked: Store) -> None:
    """Each fire POSTs the seed body; a success callback ends the execution SUCCEEDED, and the
    next fire's body names it as last_successful_execution."""
    clock = _clock(clocked)
    async with receiver() as recv:
        hook = Webhook(recv.url, payload='{"n":1}', queue="hooks")
        schedule = Schedule("billing/nightly", "rate(1 hour)", hook, ttl=600)
        await Schedules(clocked).put(schedule)
        worker = Worker(clock=clock)
        worker.register("anywork.webhook", WebhookHandler(clocked, public_url=PUBLIC))
        with anyio.fail_after(60):
            async with worker, Scheduler(clocked, clock=clock), anyio.create_task_group() as tg:
                tg.start_soon(lambda: worker.serve(clocked, queues=["hooks"]))
                await clock.advance(timedelta(hours=1))
                first = await recv.next_request(1)
                body = first["json"]
                assert set(body) == SEED_FIELDS
                fire = START + timedelta(hours=1)
                fire_id = f"billing/nightly@{fire:%Y%m%dT%H%M%SZ}"
                assert body["job_name"] == "nightly" and body["schedule"] == "rate(1 hour)"
                assert body["scheduled_time"] == "2026-06-01T01:00:00Z"
                assert body["invocation_latency_ms"] == 0  # virtual time stood still
                assert body["last_successful_execution"] is None
                execution_id, token = callback_parts(first)
                assert execution_id == fire_id
                await until(lambda: state_of(clocked, fire_id, JobState.WAITING))
                success = {"status": "success", "state": "ok", "summary": "3 rows"}
                code, _ = await handle_callback(clocked, execution_id, token, success)
                assert code == 200
                done = await clocked.get(fire_id)
                assert done is not None and done.state is JobState.SUCCEEDED
                await clock.advance(timedelta(hours=1))
                second = (await recv.next_request(2))["json"]
                last = second["last_successful_execution"]
                assert last["name"] == fire_id and last["status"] == "success"
                assert last["summary"] == "3 rows" and last["state"] == "ok"
                assert last["scheduled_time"] == "2026-06-01T01:00:00Z"
                worker.stop()


async def test_lone_scheduler_ends_a_waiting_webhook_at_its_ttl(clocked: Store) -> None:
    """With no worker serving, the scheduler itself fails a WAITING execution 504 once virtual
    time passes its ttl."""
    clock = _clock(clocked)
    async with receiver() as recv:
        schedule = Schedule("svc/job", "rate(1 hour)", Webhook(recv.url), ttl=300)
        await Schedules(clocked).put(schedule)
        fire_id = f"svc/job@{START + timedelta(hours=1):%Y%m%dT%H%M%SZ}"
        worker = Worker(clock=clock)
        worker.register("anywork.webhook", WebhookHandler(clocked, public_url=PUBLIC))
        with anyio.fail_after(60):
            async with Scheduler(clocked, clock=clock):
                async with worker, anyio.create_task_group() as tg:
                    tg.start_soon(worker.serve, clocked)
                    await clock.advance(timedelta(hours=1))
                    await recv.next_request(1)
                    await until(lambda: state_of(clocked, fire_id, JobState.WAITING))
                    worker.stop()
                await clock.advance(timedelta(seconds=299))
                assert await state_of(clocked, fire_id, JobState.WAITING)
                await clock.advance(timedelta(seconds=2))
                rec = await clocked.get(fire_id)
                assert rec is not None and rec.state is JobState.FAILED
                assert rec.status is Status.GATEWAY_TIMEOUT


async def test_job_target_schedules_still_run(clocked: Store) -> None:
    """A Job target keeps working beside Webhook ones (the stored spec of each reads back)."""
    await Schedules(clocked).put(Schedule("a/job", "rate(1 hour)", Job("tick", {"x": 1})))
    got = await Schedules(clocked).get("a/job")
    assert got is not None and isinstance(got.schedule.target, Job)
    assert got.schedule.target.args == {"x": 1}
