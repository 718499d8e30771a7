"""Tests for the prometheus adapter."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from work import Adapter, Handler, Job, Status, StatusError, Worker
from work._core.chain import settled  # the Worker's settle step, as around every adapter
from work.adapters import limit, prometheus

pytestmark = pytest.mark.anyio

MakeJob = Callable[..., Job]


def ends(status: Status) -> Handler:
    """A handler that sets ``status``."""

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = status

    return handler


def count(registry: CollectorRegistry, handler: str, status: str, queue: str = "default") -> float:
    value = registry.get_sample_value(
        "anywork_jobs_total", {"handler": handler, "queue": queue, "status": status}
    )
    return value or 0.0


async def test_counts_executions_by_status(registry: CollectorRegistry, make_job: MakeJob) -> None:
    """jobs_total counts each execution under its handler, queue and final status digits."""
    adapter = prometheus(registry=registry)
    for status in (Status.SUCCESS, Status.SUCCESS, Status.NOT_FOUND):
        await adapter(ends(status))(make_job("sync"))
    await adapter(ends(Status.SUCCESS))(make_job("sync", queue="low"))
    assert count(registry, "sync", "200") == 2
    assert count(registry, "sync", "404") == 1
    assert count(registry, "sync", "200", queue="low") == 1


async def test_duration_histogram(registry: CollectorRegistry, make_job: MakeJob) -> None:
    """job_duration_seconds observes one duration per execution, in the default buckets."""
    adapter = prometheus(registry=registry)

    async def pause(job: Job) -> None:
        await anyio.sleep(0.02)

    await adapter(pause)(make_job("pause"))
    labels = {"handler": "pause", "queue": "default"}
    assert registry.get_sample_value("anywork_job_duration_seconds_count", labels) == 1
    total = registry.get_sample_value("anywork_job_duration_seconds_sum", labels)
    assert total is not None and 0.02 <= total < 2.0
    assert (
        registry.get_sample_value("anywork_job_duration_seconds_bucket", {**labels, "le": "600.0"})
        == 1
    )


async def test_in_progress_gauge(registry: CollectorRegistry, make_job: MakeJob) -> None:
    """jobs_in_progress is 1 while the handler runs and 0 after."""
    labels = {"handler": "g", "queue": "default"}
    during: list[float | None] = []

    async def handler(job: Job) -> None:
        during.append(registry.get_sample_value("anywork_jobs_in_progress", labels))

    await prometheus(registry=registry)(handler)(make_job("g"))
    assert during == [1.0]
    assert registry.get_sample_value("anywork_jobs_in_progress", labels) == 0.0


async def test_exception_counts_as_500_and_propagates(
    registry: CollectorRegistry, make_job: MakeJob
) -> None:
    """An exception is counted with its status (500, or a StatusError's) and re-raised."""
    adapter = prometheus(registry=registry)

    async def boom(job: Job) -> None:
        raise RuntimeError("boom")

    async def teapot(job: Job) -> None:
        raise StatusError(Status.CONFLICT)

    with pytest.raises(RuntimeError):
        await adapter(settled(boom))(make_job("boom"))
    with pytest.raises(StatusError):
        await adapter(settled(teapot))(make_job("teapot"))
    assert count(registry, "boom", "500") == 1
    assert count(registry, "teapot", "409") == 1


async def test_cancellation_counts_as_499(registry: CollectorRegistry, make_job: MakeJob) -> None:
    """A cancelled execution counts as 499 and leaves the gauge at 0."""

    async def hang(job: Job) -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.01):
        await prometheus(registry=registry)(settled(hang))(make_job("hang"))
    assert count(registry, "hang", "499") == 1
    labels = {"handler": "hang", "queue": "default"}
    assert registry.get_sample_value("anywork_jobs_in_progress", labels) == 0.0


async def test_ignore_skips_handlers(registry: CollectorRegistry, make_job: MakeJob) -> None:
    """Handlers named in ignore are not recorded at all."""
    adapter = prometheus(registry=registry, ignore=["health_ping"])
    await adapter(ends(Status.SUCCESS))(make_job("health_ping"))
    assert "health_ping" not in generate_latest(registry).decode()


async def test_namespace_subsystem_and_buckets(
    registry: CollectorRegistry, make_job: MakeJob
) -> None:
    """namespace and subsystem prefix the names; buckets set the histogram's bounds."""
    adapter = prometheus(registry=registry, namespace="acme", subsystem="etl", buckets=[0.5, 1.0])
    await adapter(ends(Status.SUCCESS))(make_job("load"))
    labels = {"handler": "load", "queue": "default"}
    assert registry.get_sample_value("acme_etl_jobs_total", {**labels, "status": "200"}) == 1
    assert registry.get_sample_value(
        "acme_etl_job_duration_seconds_bucket", {**labels, "le": "0.5"}
    )
    assert registry.get_sample_value("acme_etl_jobs_in_progress", labels) == 0


async def test_second_adapter_reuses_the_collectors(
    registry: CollectorRegistry, make_job: MakeJob
) -> None:
    """Two adapters on one registry share the metrics instead of failing to register."""
    first, second = prometheus(registry=registry), prometheus(registry=registry)
    await first(ends(Status.SUCCESS))(make_job("a"))
    await second(ends(Status.SUCCESS))(make_job("a"))
    assert count(registry, "a", "200") == 2


async def test_registries_are_independent(make_job: MakeJob) -> None:
    """The same names on two registries are two sets of metrics."""
    one, two = CollectorRegistry(), CollectorRegistry()
    await prometheus(registry=one)(ends(Status.SUCCESS))(make_job("a"))
    prometheus(registry=two)
    assert count(one, "a", "200") == 1
    assert count(two, "a", "200") == 0


def test_repr_names_the_settings(registry: CollectorRegistry) -> None:
    """The adapter's repr shows its namespace and ignored handlers."""
    text = repr(prometheus(registry=registry, namespace="x", ignore=["b", "a"]))
    assert text == "prometheus(namespace='x', subsystem='', ignore=['a', 'b'])"


async def test_worker_end_to_end_counts_a_limit_rejection(registry: CollectorRegistry) -> None:
    """Listed outside limit(wait=False), a rejected execution is counted as 429, not -1."""
    release = anyio.Event()

    async def hold(job: Job) -> None:
        await release.wait()

    adapters: list[Adapter] = [prometheus(registry=registry), limit(concurrency=1, wait=False)]
    async with Worker(adapters=adapters) as worker:
        worker.register("hold", hold)
        with anyio.fail_after(5):
            first = await worker.perform(Job("hold"))
            await anyio.wait_all_tasks_blocked()
            second = await worker.perform(Job("hold"), sync=True)
            release.set()
            await first.wait()
    assert second.status is Status.TOO_MANY_REQUESTS
    assert first.status is Status.SUCCESS
    assert count(registry, "hold", "429") == 1
    assert count(registry, "hold", "200") == 1
    assert count(registry, "hold", "-1") == 0
