# Needs: pip install 'anywork[otel,server]' httpx
"""A worker with every built-in adapter, serving /metrics and /ready over HTTP.

Run: ``python -m examples.observability`` (add ``--json`` for JSON logs). It starts uvicorn on
127.0.0.1 (a free port), runs a few jobs through a Worker with tracing, the aggregate logger,
Prometheus metrics, a health check and retries, prints the spans (ConsoleSpanExporter) and the
log events as they happen, then fetches its own ``/metrics`` and ``/ready`` with httpx, prints
what they answered, and exits.

The order of the adapters is the order they wrap, the first outermost::

    tracing ─> aggregate_logger ─> prometheus ─> health ─> retry ─> handler

so the logger sees the span (and reports its trace id), metrics and health count one outcome
per execution (the final one, after retries), and the log event holds every attempt's entries.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

import anyio
import httpx
import structlog
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from work import Adapter, Constant, Job, Status, Worker
from work.adapters import Health, aggregate_logger, inject_trace, prometheus, retry, tracing


def configure_logging(json: bool) -> None:
    """Configure structlog: JSON lines for production, the console renderer for development."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def http_app(registry: CollectorRegistry, health: Health) -> Starlette:
    """``/metrics`` (the registry, in Prometheus' text format) and ``/ready`` (the health check)
    at their exact paths, as ``anywork worker --http`` serves them."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics), Route("/ready", health.asgi)])


def build_worker(
    registry: CollectorRegistry, provider: TracerProvider, health: Health
) -> tuple[Worker, list[Job]]:
    """Make the worker with all adapters and its handlers; return it and the follow-up jobs."""
    adapters: list[Adapter] = [
        tracing(tracer_provider=provider),
        aggregate_logger(),
        prometheus(registry=registry),
        health,
        retry(max_attempts=3, backoff=Constant(0.01)),
    ]
    worker = Worker(adapters=adapters)
    follow_ups: list[Job] = []
    flaky_calls = 0

    async def greet(job: Job) -> str:
        assert job.ctx is not None
        log = job.ctx["logger"].bind(name=job.args["name"])
        log.info("greeting")
        # A job produced here continues this trace when it runs, wherever that is.
        follow_ups.append(inject_trace(Job("notify", {"name": job.args["name"]})))
        return f"hello {job.args['name']}"

    async def notify(job: Job) -> None:
        assert job.ctx is not None
        job.ctx["logger"].info("notified", name=job.args["name"])

    async def flaky(job: Job) -> None:
        nonlocal flaky_calls
        flaky_calls += 1
        assert job.ctx is not None
        job.ctx["logger"].warning("trying", call=flaky_calls)
        if flaky_calls == 1:
            raise ConnectionError("upstream reset")

    async def missing(job: Job) -> None:
        assert job.ctx is not None
        job.ctx["logger"].info("nothing to do")
        job.ctx.status = Status.NO_RESPONSE

    for name, fn in {"greet": greet, "notify": notify, "flaky": flaky, "missing": missing}.items():
        worker.register(name, fn)
    return worker, follow_ups


async def run_jobs(worker: Worker, follow_ups: list[Job]) -> list[str]:
    """Run the demo jobs; return one summary line per execution."""
    lines = []
    jobs = [Job("greet", {"name": n}) for n in ("ada", "grace", "edsger")]
    jobs += [Job("flaky"), Job("missing")]
    for job in jobs:
        execution = await worker.perform(job, sync=True)
        lines.append(f"{job.handler}: {int(execution.status)} (attempt {execution.ctx.attempt})")
    for job in follow_ups:
        execution = await worker.perform(job, sync=True)
        lines.append(f"{job.handler}: {int(execution.status)} (attempt {execution.ctx.attempt})")
    return lines


async def serve_and_fetch(app: Starlette) -> tuple[httpx.Response, httpx.Response]:
    """Serve ``app`` with uvicorn on 127.0.0.1, GET /metrics and /ready, stop the server."""
    # A socket bound and listening before uvicorn starts: the kernel queues the client's
    # connection until uvicorn accepts it, so there is no "is it up yet?" polling.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    metrics = await client.get("/metrics")
                    ready = await client.get("/ready")
            server.should_exit = True
    return metrics, ready


async def main_async(json: bool) -> None:
    """Run the example end to end."""
    configure_logging(json)
    registry = CollectorRegistry()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    health = Health(min_requests=3)
    worker, follow_ups = build_worker(registry, provider, health)

    async with worker:
        summary = await run_jobs(worker, follow_ups)
    provider.shutdown()

    app = http_app(registry, health)
    metrics, ready = await serve_and_fetch(app)

    print("== executions")
    for line in summary:
        print(line)
    print("== GET /metrics")
    for line in metrics.text.splitlines():
        if line.startswith("anywork_jobs_total"):
            print(line)
    print(f"== GET /ready -> {ready.status_code} {ready.text}")


def main() -> None:
    """Parse the command line and run (on asyncio: uvicorn runs on asyncio only)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="JSON log lines instead of console")
    args = parser.parse_args()
    anyio.run(main_async, args.json, backend="asyncio")


if __name__ == "__main__":
    main()
