"""Adapters benchmark: Worker.perform throughput with the five built-in adapters stacked.

Run: ``.venv/bin/python -m bench.adapters [--jobs 20000] [--backend asyncio]``. It measures N
no-op jobs through a Worker with no adapters and, in the same run, with all five stacked
(logger, prometheus, tracing, health, retry), prints the ratio against its target, then each
adapter alone as its own cost in microseconds per job, and the tracing adapter's cost as a ratio
to the OpenTelemetry SDK's bare span (start with the same attributes, end) measured in the same
run twice: in a tight loop, and as a minimal adapter in the same worker (where the span's
allocations meet the worker's live objects and caches, as the tracing adapter's do). The target
(<= 1.25x) is checked against the second: it is the adapter's own overhead over the span.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from work import Adapter, Execution, Handler, Job, Worker
from work.adapters import Health, aggregate_logger, prometheus, retry, tracing

TARGET = 0.33
"""The lowest acceptable throughput with all five adapters, relative to none."""


class NoopExporter(SpanExporter):
    """A span exporter that drops every span (what the SDK costs, without any I/O)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Drop the spans."""
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def noop_logger() -> Any:
    """A structlog logger with an empty processor chain writing nowhere."""
    return structlog.wrap_logger(
        structlog.ReturnLogger(), processors=[], cache_logger_on_first_use=True
    )


def tracer_provider() -> TracerProvider:
    """An SDK provider with a no-op exporter behind a SimpleSpanProcessor."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NoopExporter()))
    return provider


ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "tracing": lambda: tracing(tracer_provider=tracer_provider()),
    "aggregate_logger": lambda: aggregate_logger(logger=noop_logger()),
    "prometheus": lambda: prometheus(registry=CollectorRegistry()),
    "Health": lambda: Health(),
    "retry": lambda: retry(),
}
"""Each adapter, made fresh per run, in the order they are stacked (first is outermost)."""


class Counter:
    """The no-op handler: it counts, and says when the last of ``n`` jobs has run."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.all_ran = anyio.Event()

    async def __call__(self, job: Job) -> None:
        """Count one job (and log once through ctx["logger"] when there is one)."""
        ctx = job.ctx
        if ctx is not None and len(ctx):
            logger = ctx.get("logger")
            if logger is not None:
                logger.info("done")
        self.seen += 1
        if self.seen == self.n:
            self.all_ran.set()


async def throughput(n: int, adapters: list[Adapter]) -> float:
    """Jobs/s through ``Worker.perform`` until every execution has finished.

    Executions are not kept (a real producer does not keep them either), so the garbage
    collector sees the live objects of a running worker, not of twenty thousand results.
    """
    worker = Worker(adapters=adapters)
    handler = Counter(n)
    worker.register("noop", handler)
    job = Job("noop")
    gc.collect()
    async with worker:
        start = time.perf_counter()
        last: Execution | None = None
        for _ in range(n):
            last = await worker.perform(job)
        await handler.all_ran.wait()
        assert last is not None
        await last.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


TRACING_TARGET = 1.25
"""The highest acceptable cost of the tracing adapter, relative to the SDK's bare span."""


def sdk_span_cost(n: int) -> float:
    """Microseconds per span for the OpenTelemetry SDK alone: start with the attributes the
    tracing adapter sets, set the status attribute, end (the floor of always-on tracing)."""
    tracer = tracer_provider().get_tracer("bench")
    job = Job("noop")
    start = time.perf_counter()
    for _ in range(n):
        span = tracer.start_span(
            "noop",
            kind=SpanKind.CONSUMER,
            attributes={
                "anywork.job.id": job.id,
                "anywork.job.handler": job.handler,
                "anywork.job.queue": job.queue,
                "anywork.job.attempt": 1,
            },
        )
        span.set_attribute("anywork.status", 200)
        span.end()
    return (time.perf_counter() - start) / n * 1e6


def bare_span() -> Adapter:
    """An adapter that only starts a span with the tracing adapter's attributes and ends it
    with the status attribute: the SDK's bare span measured where the tracing adapter runs
    (inside a worker, next to its objects), the floor of always-on tracing there."""
    tracer = tracer_provider().get_tracer("bench")

    def adapter(handler: Handler) -> Handler:
        async def spanned(job: Job) -> Any:
            ctx = job.ctx
            assert ctx is not None
            span = tracer.start_span(
                job.handler,
                kind=SpanKind.CONSUMER,
                attributes={
                    "anywork.job.id": job.id,
                    "anywork.job.handler": job.handler,
                    "anywork.job.queue": job.queue,
                    "anywork.job.attempt": ctx.attempt,
                },
            )
            try:
                return await handler(job)
            finally:
                span.set_attribute("anywork.status", int(ctx.status))
                span.end()

        return spanned

    return adapter


async def best_of(runs: int, n: int, make: Callable[[], list[Adapter]]) -> float:
    """The best throughput of ``runs`` runs (fresh adapters each time)."""
    return max([await throughput(n, make()) for _ in range(runs)])


async def main_async(jobs: int, runs: int) -> None:
    """Measure and print the table."""
    await throughput(2000, [make() for make in ADAPTERS.values()])  # warm up every path
    none = await best_of(runs, jobs, list)
    stacked = await best_of(runs, jobs, lambda: [make() for make in ADAPTERS.values()])
    ratio = stacked / none
    verdict = "PASS" if ratio >= TARGET else "MISS"
    print(f"{'configuration':<28} {'jobs/s':>12} {'us/job':>8} {'ratio':>7}")
    print(f"{'no adapters':<28} {none:>12,.0f} {1e6 / none:>8.2f}")
    print(
        f"{'all five stacked':<28} {stacked:>12,.0f} {1e6 / stacked:>8.2f} {ratio:>6.2f}x"
        f"  target >= {TARGET:.2f}x {verdict}"
    )
    print(f"{'  cost of the five':<28} {'':>12} {1e6 / stacked - 1e6 / none:>8.2f}")
    four = await best_of(
        runs, jobs, lambda: [make() for name, make in ADAPTERS.items() if name != "tracing"]
    )
    print(f"{'four, without tracing':<28} {four:>12,.0f} {1e6 / four:>8.2f} {four / none:>6.2f}x")
    floor = min(sdk_span_cost(jobs) for _ in range(runs))
    print(f"{'  SDK span start+end alone':<28} {'':>12} {floor:>8.2f}   (the floor of tracing)")
    print()
    print(f"{'one adapter alone':<28} {'jobs/s':>12} {'us/job':>8} {'own cost us':>12}")
    costs: dict[str, float] = {}
    for name, make in ADAPTERS.items():
        alone = await best_of(runs, jobs, lambda make=make: [make()])  # type: ignore[misc]
        costs[name] = cost = 1e6 / alone - 1e6 / none
        print(f"{name:<28} {alone:>12,.0f} {1e6 / alone:>8.2f} {cost:>12.2f}")
    bare = await best_of(runs, jobs, lambda: [bare_span()])
    in_worker = 1e6 / bare - 1e6 / none
    print(
        f"{'bare SDK span as an adapter':<28} {bare:>12,.0f} {1e6 / bare:>8.2f} {in_worker:>12.2f}"
    )
    print()
    print(
        f"{'tracing vs bare span, loop':<28} {costs['tracing']:>8.2f} / {floor:.2f} us = "
        f"{costs['tracing'] / floor:.2f}x"
    )
    tracing_ratio = costs["tracing"] / in_worker
    verdict = "PASS" if tracing_ratio <= TRACING_TARGET else "MISS"
    print(
        f"{'tracing vs bare span, worker':<28} {costs['tracing']:>8.2f} / {in_worker:.2f} us = "
        f"{tracing_ratio:.2f}x  target <= {TRACING_TARGET:.2f}x {verdict}"
    )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    print(f"anywork adapters benchmark: {args.jobs:,} no-op jobs, backend {args.backend}")
    anyio.run(main_async, args.jobs, args.runs, backend=args.backend)


if __name__ == "__main__":
    main()
