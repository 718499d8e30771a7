"""Tests for the Health adapter and its ASGI endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from work import Handler, Job, Status, Worker
from work._core.chain import settled  # the Worker's settle step, as around every adapter
from work.adapters import Health

pytestmark = pytest.mark.anyio

MakeJob = Callable[..., Job]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ends(status: Status) -> Handler:
    """A handler that sets ``status``."""

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = status

    return handler


async def test_go_work_scenario() -> None:
    """go-work's scenario: one bad is fine, many fail it, good ones recover it at the threshold."""
    health = Health(threshold=0.25, min_requests=3, last_n=4)
    async with Worker(adapters=[health]) as worker:
        worker.register("bad", ends(Status.INTERNAL_ERROR))
        worker.register("good", ends(Status.SUCCESS))
        with anyio.fail_after(5):
            await worker.perform(Job("bad"), sync=True)
            assert health.status == 200
            for _ in range(10):
                await worker.perform(Job("bad"), sync=True)
            assert health.status == 503
            assert not health.healthy
            for _ in range(2):
                await worker.perform(Job("good"), sync=True)
            assert health.error_ratio == 0.5
            assert health.status == 503
            await worker.perform(Job("good"), sync=True)
    # The last four are bad, good, good, good: 0.25 is not above the threshold.
    assert health.error_ratio == 0.25
    assert health.healthy
    assert health.status == 200


def test_ratio_is_zero_until_min_requests() -> None:
    """Below min_requests outcomes in the window the ratio is 0, however bad they are."""
    health = Health(min_requests=5, clock=FakeClock())
    for _ in range(4):
        health.record(Status.INTERNAL_ERROR)
    assert health.error_ratio == 0.0 and health.healthy
    health.record(Status.INTERNAL_ERROR)
    assert health.error_ratio == 1.0 and not health.healthy


def test_exactly_the_threshold_is_healthy() -> None:
    """Unhealthy means strictly greater than the threshold."""
    health = Health(threshold=0.5, min_requests=4, clock=FakeClock())
    for status in (500, 500, 200, 200):
        health.record(status)
    assert health.error_ratio == 0.5
    assert health.healthy
    health.record(Status.UNAVAILABLE)
    assert health.error_ratio == 0.6
    assert not health.healthy


def test_time_window_forgets_old_outcomes() -> None:
    """Outcomes older than the window no longer count (an outcome exactly window old is out)."""
    clock = FakeClock()
    health = Health(window=60.0, min_requests=2, clock=clock)
    health.record(500)
    health.record(500)
    assert not health.healthy
    clock.now += 30.0
    health.record(200)
    health.record(200)
    assert health.error_ratio == 0.5
    clock.now += 29.9
    assert health.error_ratio == 0.5
    clock.now += 0.1
    assert health.error_ratio == 0.0  # the errors are 60 s old: only the 200s remain
    clock.now += 30.0
    assert health.error_ratio == 0.0
    health.record(500)
    assert health.error_ratio == 0.0  # one outcome in the window, below min_requests


def test_default_error_statuses_and_ignored_outcomes() -> None:
    """408, 500 and 503 are errors; 4xx are not; 499 and UNKNOWN are not recorded."""
    health = Health(min_requests=1, clock=FakeClock())
    for status in (408, 500, 503):
        health.record(status)
    for status in (400, 404, 429):
        health.record(status)
    health.record(Status.CANCELLED)
    health.record(Status.UNKNOWN)
    assert health.error_ratio == 0.5


def test_custom_error_statuses() -> None:
    """error_statuses decides which outcomes are errors, 499 included if listed."""
    health = Health(error_statuses=[429, 499], min_requests=1, last_n=10)
    health.record(429)
    health.record(499)
    health.record(500)
    assert health.error_ratio == pytest.approx(2 / 3)


def test_memory_stays_bounded_in_a_time_window() -> None:
    """Many outcomes close together share runs, so a busy window does not grow memory."""
    clock = FakeClock()
    health = Health(window=10.0, clock=clock)
    for i in range(20_000):
        clock.now += 0.001
        health.record(500 if i % 4 == 0 else 200)
    assert len(health._runs) <= 1001
    assert health.error_ratio == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"window": 0}, "window"),
        ({"last_n": 0}, "last_n"),
        ({"min_requests": -1}, "min_requests"),
        ({"last_n": 3}, "could never fail"),
        ({"error_statuses": [777]}, "777"),
    ],
)
def test_validation(kwargs: dict[str, Any], match: str) -> None:
    """Bad settings are a ValueError naming the setting or value."""
    with pytest.raises(ValueError, match=match):
        Health(**kwargs)


def test_repr_shows_the_state() -> None:
    """The repr shows the settings and whether it is healthy."""
    text = repr(Health(last_n=10))
    assert "last_n=10" in text and "healthy=True" in text


async def asgi_get(app: Any, path: str = "/", method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path)


async def test_asgi_app_reports_ok_and_down() -> None:
    """Health.asgi answers 200 OK when healthy and 503 DOWN when not."""
    health = Health(min_requests=1, last_n=2)
    response = await asgi_get(health.asgi)
    assert (response.status_code, response.text) == (200, "OK")
    health.record(500)
    response = await asgi_get(health.asgi)
    assert (response.status_code, response.text) == (503, "DOWN")
    assert response.headers["content-type"].startswith("text/plain")
    head = await asgi_get(health.asgi, method="HEAD")
    assert (head.status_code, head.content) == (503, b"")


async def test_asgi_app_mounts_in_starlette() -> None:
    """Health.asgi works as a Starlette Route endpoint and as a Mount."""
    health = Health()
    app = Starlette(routes=[Route("/ready", health.asgi), Mount("/health", app=health.asgi)])
    assert (await asgi_get(app, "/ready")).text == "OK"
    assert (await asgi_get(app, "/health/")).text == "OK"


async def test_asgi_lifespan_completes() -> None:
    """Served alone, the app answers the ASGI lifespan protocol."""
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await Health().asgi({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_adapter_records_exceptions(make_job: MakeJob) -> None:
    """An exception escaping the handler is recorded as a 500 and re-raised."""
    health = Health(min_requests=1, last_n=5)

    async def boom(job: Job) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await health(settled(boom))(make_job())
    assert health.error_ratio == 1.0


def test_last_n_forgets_the_outcome_it_pushes_out() -> None:
    """last_n=2: an error followed by two successes leaves no error in the count."""
    health = Health(last_n=2, min_requests=1, clock=FakeClock())
    health.record(500)
    health.record(200)
    assert health.error_ratio == 0.5
    health.record(200)  # pushes the 500 out
    assert health.error_ratio == 0.0
    health.record(503)
    assert health.error_ratio == 0.5


def test_outcomes_at_different_times_expire_separately() -> None:
    """In a 10 s window, a success at t and an error at t+5 leave the window one at a time."""
    clock = FakeClock()
    health = Health(window=10.0, min_requests=1, clock=clock)
    health.record(200)
    clock.now += 5.0
    health.record(500)
    assert health.error_ratio == 0.5
    clock.now += 5.01  # the success is out, the error is not
    assert health.error_ratio == 1.0
    clock.now += 5.0
    assert health.error_ratio == 0.0
