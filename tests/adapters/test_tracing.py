"""Tests for the tracing adapter and inject_trace."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from work import Constant, Handler, Job, Status, Worker
from work._core.chain import settled  # the Worker's settle step, as around every adapter
from work.adapters import inject_trace, retry, tracing

pytestmark = pytest.mark.anyio

MakeJob = Callable[..., Job]


def ends(status: Status) -> Handler:
    """A handler that sets ``status``."""

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = status

    return handler


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


async def test_one_consumer_span_per_execution(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """Each execution is one CONSUMER span named after the handler, with the job attributes."""
    job = make_job("send_email", queue="mail")
    await tracing(tracer_provider=tracer_provider)(ends(Status.SUCCESS))(job)
    span = only_span(exporter)
    assert span.name == "send_email"
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is None
    assert dict(span.attributes or {}) == {
        "anywork.job.id": job.id,
        "anywork.job.handler": "send_email",
        "anywork.job.queue": "mail",
        "anywork.job.attempt": 1,
        "anywork.status": 200,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_span_name_callable(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """span_name(job) names the span."""
    adapter = tracing(tracer_provider=tracer_provider, span_name=lambda job: f"job {job.handler}")
    await adapter(ends(Status.SUCCESS))(make_job("resize"))
    assert only_span(exporter).name == "job resize"


async def test_exception_marks_error_and_is_recorded(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """A 5xx from an exception sets span status ERROR and records the exception."""

    async def boom(job: Job) -> None:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError):
        await tracing(tracer_provider=tracer_provider)(settled(boom))(make_job("boom"))
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["anywork.status"] == 500
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "db down"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.UNAVAILABLE, StatusCode.ERROR),
        (Status.TIMEOUT, StatusCode.ERROR),
        (Status.NOT_FOUND, StatusCode.UNSET),
        (Status.NO_RESPONSE, StatusCode.UNSET),
    ],
)
async def test_status_code_without_exception(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    make_job: MakeJob,
    status: Status,
    code: StatusCode,
) -> None:
    """408 and 5xx set by the handler make the span ERROR (no exception event); 4xx do not."""
    await tracing(tracer_provider=tracer_provider)(ends(status))(make_job())
    span = only_span(exporter)
    assert span.status.status_code is code
    assert span.events == ()


async def test_span_is_current_inside_and_trace_id_in_ctx(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """While the handler runs the span is current, and ctx["trace_id"] holds its trace id."""
    inside: list[int] = []

    async def handler(job: Job) -> None:
        inside.append(trace.get_current_span().get_span_context().span_id)

    job = make_job()
    await tracing(tracer_provider=tracer_provider)(handler)(job)
    span = only_span(exporter)
    assert span.context is not None
    assert inside == [span.context.span_id]
    assert job.ctx is not None and job.ctx["trace_id"] == format(span.context.trace_id, "032x")
    assert not trace.get_current_span().get_span_context().is_valid


async def test_parent_from_injected_headers(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """A job marked with inject_trace under a span becomes that span's child."""
    tracer = tracer_provider.get_tracer("producer")
    with tracer.start_as_current_span("enqueue") as producer:
        job = inject_trace(make_job("consume"))
    assert "traceparent" in job.headers
    await tracing(tracer_provider=tracer_provider)(ends(Status.SUCCESS))(job)
    consumer = next(s for s in exporter.get_finished_spans() if s.name == "consume")
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.get_span_context().span_id
    assert consumer.context is not None
    assert consumer.context.trace_id == producer.get_span_context().trace_id


async def test_inject_without_a_span_writes_nothing(make_job: MakeJob) -> None:
    """inject_trace with no current span leaves the headers as they were."""
    job = make_job(headers={"correlation-id": "c1"})
    assert inject_trace(job) is job
    assert job.headers == {"correlation-id": "c1"}


async def test_unrelated_headers_keep_the_current_parent(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """Headers with no trace context do not cut the job off from the span current in-process."""
    tracer = tracer_provider.get_tracer("caller")
    with tracer.start_as_current_span("caller") as caller:
        await tracing(tracer_provider=tracer_provider)(ends(Status.SUCCESS))(
            make_job("child", headers={"correlation-id": "c1"})
        )
    child = next(s for s in exporter.get_finished_spans() if s.name == "child")
    assert child.parent is not None
    assert child.parent.span_id == caller.get_span_context().span_id


async def test_propagation_across_two_jobs_through_a_worker(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A job injected from inside another job's handler is, later, that span's child."""
    produced: list[Job] = []

    async def first(job: Job) -> None:
        produced.append(inject_trace(Job("second", {"n": 1})))

    async def second(job: Job) -> None:
        pass

    async with Worker(adapters=[tracing(tracer_provider=tracer_provider)]) as worker:
        worker.register("first", first)
        worker.register("second", second)
        with anyio.fail_after(5):
            await worker.perform(Job("first"), sync=True)
            assert not trace.get_current_span().get_span_context().is_valid
            await worker.perform(produced[0], sync=True)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    first_ctx = spans["first"].context
    assert first_ctx is not None
    assert spans["first"].parent is None
    assert spans["second"].parent is not None
    assert spans["second"].parent.span_id == first_ctx.span_id
    second_ctx = spans["second"].context
    assert second_ctx is not None and second_ctx.trace_id == first_ctx.trace_id


async def test_timeout_through_a_worker_is_an_error_span(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A job timeout ends the span as ERROR with status 408 and the timeout recorded."""

    async def slow(job: Job) -> None:
        await anyio.sleep_forever()

    async with Worker(adapters=[tracing(tracer_provider=tracer_provider)]) as worker:
        worker.register("slow", slow)
        with anyio.fail_after(5):
            execution = await worker.perform(Job("slow", timeout=0.02), sync=True)
    assert execution.status is Status.TIMEOUT
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["anywork.status"] == 408
    assert span.events[0].attributes is not None
    assert str(span.events[0].attributes["exception.type"]).endswith("JobTimeoutError")


async def test_attempt_attribute_is_the_last_attempt(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter, make_job: MakeJob
) -> None:
    """With retry inside, the one span reports the attempt the execution ended on."""
    outcomes = [Status.UNAVAILABLE, Status.SUCCESS]

    async def flaky(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = outcomes.pop(0)

    adapter = tracing(tracer_provider=tracer_provider)
    await adapter(retry(backoff=Constant(0))(flaky))(make_job())
    span = only_span(exporter)
    assert span.attributes is not None
    assert span.attributes["anywork.job.attempt"] == 2
    assert span.attributes["anywork.status"] == 200


async def test_without_an_sdk_it_is_a_no_op(make_job: MakeJob) -> None:
    """With only the API (no provider set), the adapter runs the handler and records nothing."""
    job = make_job()
    await tracing()(ends(Status.SUCCESS))(job)
    assert job.ctx is not None and job.ctx.status is Status.SUCCESS
    assert "trace_id" not in job.ctx
