"""Tests for the aggregate logger adapter."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from structlog.testing import capture_logs
from structlog.typing import FilteringBoundLogger

from work import Adapter, Job, Status, StatusError, Worker
from work._core.chain import settled  # the Worker's settle step, as around every adapter
from work.adapters import JobLogger, aggregate_logger, tracing

pytestmark = pytest.mark.anyio

MakeJob = Callable[..., Job]


def logs_to(handler: Callable[[FilteringBoundLogger], Status | None]) -> Callable[[Job], Any]:
    """Make a handler that logs through ctx["logger"] and sets the status it returns."""

    async def run(job: Job) -> None:
        assert job.ctx is not None
        status = handler(job.ctx["logger"])
        if status is not None:
            job.ctx.status = status

    return run


def chatty(log: FilteringBoundLogger) -> Status:
    log.info("fetched", rows=3)
    log.warning("slow query", ms=120)
    return Status.SUCCESS


async def test_emits_one_event_with_the_entries(make_job: MakeJob) -> None:
    """The handler's calls are buffered and emitted as one "job" event with all the keys."""
    job = make_job("sync_users", queue="low")
    with capture_logs() as logs:
        await aggregate_logger()(logs_to(chatty))(job)
    assert len(logs) == 1
    (event,) = logs
    assert job.ctx is not None
    assert event["event"] == "job"
    assert event["log_level"] == "info"
    assert event["job_id"] == job.id
    assert event["execution_id"] == job.ctx.execution_id
    assert event["handler"] == "sync_users"
    assert event["queue"] == "low"
    assert event["status"] == 200 and type(event["status"]) is int
    assert event["attempt"] == 1
    assert isinstance(event["latency_ms"], float) and event["latency_ms"] >= 0
    assert event["entries"] == [
        {"event": "fetched", "level": "info", "rows": 3},
        {"event": "slow query", "level": "warning", "ms": 120},
    ]
    assert "worker_number" not in event and "trace_id" not in event and "error" not in event


async def test_nothing_is_written_while_the_handler_runs(make_job: MakeJob) -> None:
    """Entries reach the log only after the handler is done."""
    seen: list[int] = []

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx["logger"].info("one")
        seen.append(len(logs))

    with capture_logs() as logs:
        await aggregate_logger()(settled(handler))(make_job())
    assert seen == [0]
    assert len(logs) == 1


async def test_entries_below_level_are_dropped(make_job: MakeJob) -> None:
    """level="info" drops debug entries; level="debug" keeps them."""

    def handler(log: FilteringBoundLogger) -> None:
        log.debug("detail")
        log.info("step")

    with capture_logs() as logs:
        await aggregate_logger()(logs_to(handler))(make_job())
        await aggregate_logger(level="debug")(logs_to(handler))(make_job())
    assert [e["event"] for e in logs[0]["entries"]] == ["step"]
    assert [e["event"] for e in logs[1]["entries"]] == ["detail", "step"]


async def test_bind_adds_context_and_shares_the_buffer(make_job: MakeJob) -> None:
    """A bound logger adds its context to its entries and writes to the same event."""

    def handler(log: FilteringBoundLogger) -> None:
        user_log = log.bind(user=7)
        user_log.info("loaded")
        user_log.unbind("user").info("plain")
        log.new(step=2).try_unbind("missing").error("failed %s", "twice")

    with capture_logs() as logs:
        await aggregate_logger()(logs_to(handler))(make_job())
    assert logs[0]["entries"] == [
        {"event": "loaded", "level": "info", "user": 7},
        {"event": "plain", "level": "info"},
        {"event": "failed twice", "level": "error", "step": 2},
    ]


async def test_exception_records_the_traceback(make_job: MakeJob) -> None:
    """log.exception() inside an except block keeps the formatted traceback."""

    def handler(log: FilteringBoundLogger) -> Status:
        try:
            raise KeyError("missing-key")
        except KeyError:
            log.exception("lookup failed")
        return Status.NOT_FOUND

    with capture_logs() as logs:
        await aggregate_logger()(logs_to(handler))(make_job())
    (entry,) = logs[0]["entries"]
    assert entry["level"] == "error"
    assert "KeyError: 'missing-key'" in entry["exception"]
    assert "Traceback" in entry["exception"]


async def test_failure_is_logged_with_the_error_and_reraised(make_job: MakeJob) -> None:
    """An exception is re-raised; the event is at error level with status 500 and the error."""

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx["logger"].info("about to fail")
        raise RuntimeError("db down")

    with capture_logs() as logs, pytest.raises(RuntimeError):
        await aggregate_logger()(settled(handler))(make_job())
    (event,) = logs
    assert event["log_level"] == "error"
    assert event["status"] == 500
    assert event["error"] == "RuntimeError: db down"
    assert event["entries"] == [{"event": "about to fail", "level": "info"}]


@pytest.mark.parametrize(
    ("status", "level"),
    [
        (Status.SUCCESS, "info"),
        (Status.NO_RESPONSE, "info"),
        (Status.NOT_FOUND, "warning"),
        (Status.TIMEOUT, "error"),
        (Status.UNAVAILABLE, "error"),
    ],
)
async def test_event_level_follows_the_status(
    make_job: MakeJob, status: Status, level: str
) -> None:
    """The event is info for 2xx/444, warning for other 4xx, error for 408 and 5xx."""
    with capture_logs() as logs:
        await aggregate_logger()(logs_to(lambda log: status))(make_job())
    assert logs[0]["log_level"] == level
    assert logs[0]["status"] == int(status)


async def test_silent_success_and_no_response(make_job: MakeJob) -> None:
    """silent_success drops 2xx events; silent_no_response drops 444 events; errors still log."""
    adapter = aggregate_logger(silent_success=True, silent_no_response=True)
    with capture_logs() as logs:
        for status in (Status.SUCCESS, Status.NO_RESPONSE, Status.INTERNAL_ERROR):
            await adapter(logs_to(lambda log, s=status: s))(make_job())  # type: ignore[misc]
    assert [e["status"] for e in logs] == [500]


async def test_reduce_decides_from_status_and_entry_count(make_job: MakeJob) -> None:
    """reduce(status, n_entries) returning True drops the event."""
    calls: list[tuple[Status, int]] = []

    def reduce(status: Status, n_entries: int) -> bool:
        calls.append((status, n_entries))
        return n_entries == 0

    adapter = aggregate_logger(reduce=reduce)
    with capture_logs() as logs:
        await adapter(logs_to(lambda log: Status.SUCCESS))(make_job())
        await adapter(logs_to(chatty))(make_job())
    assert calls == [(Status.SUCCESS, 0), (Status.SUCCESS, 2)]
    assert len(logs) == 1


async def test_worker_number_and_trace_id_from_ctx(make_job: MakeJob) -> None:
    """ctx["worker_number"] and ctx["trace_id"] are reported when present."""
    job = make_job()
    assert job.ctx is not None
    job.ctx["worker_number"] = 3
    job.ctx["trace_id"] = "ab" * 16
    with capture_logs() as logs:
        await aggregate_logger()(logs_to(chatty))(job)
    assert logs[0]["worker_number"] == 3
    assert logs[0]["trace_id"] == "ab" * 16


async def test_trace_id_of_the_current_span(
    make_job: MakeJob, tracer_provider: TracerProvider
) -> None:
    """With no tracing adapter, the trace id of the span current at the time is reported."""
    tracer = tracer_provider.get_tracer("test")
    with capture_logs() as logs, tracer.start_as_current_span("outer") as span:
        await aggregate_logger()(logs_to(chatty))(make_job())
    assert logs[0]["trace_id"] == format(span.get_span_context().trace_id, "032x")


async def test_json_renderer_configuration(make_job: MakeJob) -> None:
    """With a JSON renderer the execution is one JSON line holding its entries."""
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
    )
    await aggregate_logger(logger=logger)(logs_to(chatty))(make_job("report"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "job"
    assert record["handler"] == "report"
    assert record["level"] == "info"
    assert record["entries"][1] == {"event": "slow query", "level": "warning", "ms": 120}


async def test_console_renderer_configuration(make_job: MakeJob) -> None:
    """With the console renderer the execution is one readable line with its entries."""
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )
    await aggregate_logger(logger=logger)(logs_to(chatty))(make_job("report"))
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.startswith("[info     ] job ")
    assert "handler=report" in text
    assert "'slow query'" in text


def test_unknown_level_is_a_value_error() -> None:
    """A level name structlog does not have is refused when the adapter is made."""
    with pytest.raises(ValueError, match="'verbose'"):
        aggregate_logger(level="verbose")


async def test_the_handler_logger_is_a_structlog_bound_logger(make_job: MakeJob) -> None:
    """ctx["logger"] is structlog's filtering bound logger over a JobLogger buffer: its log()
    takes stdlib numbers and filters by the adapter's level."""
    seen: list[Any] = []

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        log = job.ctx["logger"]
        seen.append(log)
        log.log(30, "a")
        log.log(40, "b")
        log.log(10, "c")
        assert log.is_enabled_for(20) and not log.is_enabled_for(10)

    with capture_logs() as logs:
        await aggregate_logger()(handler)(make_job())
    assert isinstance(seen[0], structlog.BoundLoggerBase)
    assert "entries=2" in repr(JobLogger([{}, {}]))
    assert logs[0]["entries"] == [
        {"event": "a", "level": "warning"},
        {"event": "b", "level": "error"},
    ]


async def test_with_worker_and_tracing(tracer_provider: TracerProvider) -> None:
    """Through a Worker, listed inside tracing, the event carries the span's trace id."""

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx["logger"].info("working", n=1)
        raise StatusError(Status.CONFLICT, "already done")

    adapters: list[Adapter] = [tracing(tracer_provider=tracer_provider), aggregate_logger()]
    with capture_logs() as logs:
        async with Worker(adapters=adapters) as worker:
            worker.register("handler", handler)
            with anyio.fail_after(5):
                execution = await worker.perform(Job("handler"), sync=True)
    assert execution.status is Status.CONFLICT
    (event,) = [e for e in logs if e["event"] == "job"]
    assert event["status"] == 409
    assert event["log_level"] == "warning"
    assert event["error"] == "StatusError: 409 already done"
    assert event["trace_id"] == execution.ctx["trace_id"]
    assert len(event["trace_id"]) == 32


async def test_keys_keep_their_order(make_job: MakeJob) -> None:
    """The event's keys come in the documented order, entries last."""
    job = make_job()
    assert job.ctx is not None
    job.ctx["worker_number"] = 1
    job.ctx["trace_id"] = "ab" * 16
    with capture_logs() as logs:
        await aggregate_logger()(logs_to(chatty))(job)
    keys = [k for k in logs[0] if k not in ("event", "log_level")]
    assert keys == [
        "job_id",
        "execution_id",
        "handler",
        "queue",
        "status",
        "latency_ms",
        "attempt",
        "worker_number",
        "trace_id",
        "entries",
    ]


async def test_a_cached_lazy_logger_gets_every_event(make_job: MakeJob) -> None:
    """With cache_logger_on_first_use the adapter calls the logger structlog cached, each time."""
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[structlog.processors.JSONRenderer()],
        cache_logger_on_first_use=True,
    )
    adapter = aggregate_logger(logger=logger)
    for _ in range(3):
        await adapter(logs_to(chatty))(make_job("cached"))
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["handler"] for line in lines] == ["cached"] * 3


async def test_an_uncached_lazy_logger_follows_later_configuration(make_job: MakeJob) -> None:
    """Without caching, each event goes through the proxy, so a later configuration applies."""
    adapter = aggregate_logger()  # structlog.get_logger("anywork"), not cached by default
    with capture_logs() as first:
        await adapter(logs_to(chatty))(make_job("one"))
    with capture_logs() as second:
        await adapter(logs_to(chatty))(make_job("two"))
    assert [e["handler"] for e in first] == ["one"]
    assert [e["handler"] for e in second] == ["two"]
