"""The tracing adapter: one OpenTelemetry span per execution, continuing the producer's trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider

from work import Handler, Job, Status, __version__

from ._common import job_ctx

__all__ = ["Tracing", "inject_trace", "tracing"]

SpanName = Callable[[Job], str]
"""``span_name(job) -> str``: the name of the execution's span."""


def inject_trace(job: Job) -> Job:
    """Write the current trace context into ``job.headers`` and return the job.

    Producers call it before handing a job over (``perform``, ``Queue.enqueue``) so that
    the ``tracing`` adapter on the consuming side continues the same trace. It uses the
    global propagator (W3C trace context, ``traceparent``/``tracestate``, unless configured
    otherwise); with no span current it writes nothing.

    Args:
        job: the job to mark; its ``headers`` are updated in place.

    Returns:
        The same job, for chaining: ``await worker.perform(inject_trace(Job("send")))``.
    """
    propagate.inject(job.headers)
    return job


def _parent_from(headers: dict[str, str]) -> otel_context.Context | None:
    # Only a header that carries a valid span beats the context current in-process: other
    # headers (a correlation id, say) must not cut the job off from its caller's trace.
    extracted = propagate.extract(headers)
    if trace.get_current_span(extracted).get_span_context().is_valid:
        return extracted
    return None


class Tracing:
    """Adapter that runs each execution in its own OpenTelemetry span.

    The span is of kind CONSUMER, named after the handler (or ``span_name(job)``), and a
    child of the trace context found in ``job.headers`` (see :func:`inject_trace`) or, when
    there is none, of the span current where the job is performed. It is the current span
    while the inner chain runs, so spans the handler starts and jobs it injects belong to it.
    Its attributes are ``anywork.job.id``, ``anywork.job.handler``, ``anywork.job.queue``,
    ``anywork.job.attempt`` (the last attempt) and ``anywork.status``. For 408 and 5xx the span
    status is ERROR and the exception, if one propagated, is recorded as an event.

    It also sets ``job.ctx["trace_id"]`` (32 hex digits) for the aggregate logger, which
    therefore reports the trace id whether it is listed inside or outside this adapter.

    Only opentelemetry-api is needed at run time; without an SDK provider the spans are
    no-ops (the trace id still propagates).

    Args:
        tracer_provider: the provider to get the tracer from (default: the global one, looked
            up lazily, so ``trace.set_tracer_provider`` may come later).
        span_name: ``span_name(job) -> str`` to name spans otherwise than by the handler.
    """

    __slots__ = ("_tracer", "span_name", "tracer_provider")

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        span_name: SpanName | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.span_name = span_name
        self._tracer = trace.get_tracer("anywork", __version__, tracer_provider=tracer_provider)

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so each execution is a span.

        Args:
            handler: the inner handler.

        Returns:
            The tracing handler.
        """
        tracer = self._tracer
        span_name = self.span_name
        attach, detach = otel_context.attach, otel_context.detach
        set_span_in_context = trace.set_span_in_context
        consumer = SpanKind.CONSUMER
        success = Status.SUCCESS

        async def traced(job: Job) -> Any:
            ctx = job.ctx
            if ctx is None:
                ctx = job_ctx(job)  # raises the usual error
            parent = _parent_from(job.headers) if job.headers else None
            span = tracer.start_span(
                span_name(job) if span_name is not None else job.handler,
                context=parent,
                kind=consumer,
                attributes={
                    "anywork.job.id": job.id,
                    "anywork.job.handler": job.handler,
                    "anywork.job.queue": job.queue,
                    "anywork.job.attempt": ctx.attempt,
                },
            )
            span_context = span.get_span_context()
            if span_context.is_valid:
                ctx["trace_id"] = format(span_context.trace_id, "032x")
            token = attach(set_span_in_context(span, parent))
            # The Worker's settle step inside makes ctx.status final, whatever happens there.
            try:
                result = await handler(job)
            except Exception as exc:
                detach(token)
                _finish(span, ctx.status, ctx.attempt, exc)
                raise
            except BaseException:
                detach(token)
                _finish(span, ctx.status, ctx.attempt, None)
                raise
            detach(token)
            if ctx.status is success and ctx.attempt == 1:
                # The common outcome: one attribute, no span status (UNSET means OK).
                if span.is_recording():
                    span.set_attribute("anywork.status", 200)
                span.end()
            else:
                _finish(span, ctx.status, ctx.attempt, None)
            return result

        return traced

    def __repr__(self) -> str:
        return f"tracing(tracer_provider={self.tracer_provider!r}, span_name={self.span_name!r})"


def _finish(span: trace.Span, status: Status, attempt: int, error: Exception | None) -> None:
    if span.is_recording():
        span.set_attribute("anywork.status", int(status))
        if attempt != 1:
            span.set_attribute("anywork.job.attempt", attempt)
        if status is Status.TIMEOUT or status >= 500:
            if error is not None:
                span.record_exception(error)
            span.set_status(StatusCode.ERROR, f"{int(status)} {status.phrase}")
    span.end()


def tracing(
    *,
    tracer_provider: TracerProvider | None = None,
    span_name: SpanName | None = None,
) -> Tracing:
    """Return an adapter that runs each execution in an OpenTelemetry CONSUMER span.

    See :class:`Tracing` for the span's name, parent and attributes.

    Args:
        tracer_provider: the provider to use (default: the global one).
        span_name: ``span_name(job) -> str`` to name spans otherwise than by the handler.

    Returns:
        The adapter.
    """
    return Tracing(tracer_provider=tracer_provider, span_name=span_name)
