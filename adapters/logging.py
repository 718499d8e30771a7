"""The aggregate logger: one structured log event per execution, holding what the handler logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from opentelemetry import trace
from structlog.typing import FilteringBoundLogger

from work import Ctx, Handler, Job, Status

from ._common import job_ctx

__all__ = ["AggregateLogger", "JobLogger", "aggregate_logger"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

Reduce = Callable[[Status, int], bool]
"""``reduce(status, n_entries) -> bool``: True drops the execution's event."""

# What turns a handler's call into an entry: its level name, and a formatted traceback for
# ``exc_info`` (``log.exception(...)``), both structlog's own processors.
_ENTRY_PROCESSORS: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.format_exc_info,
]


def _level_number(level: str | int) -> int:
    if isinstance(level, bool):
        raise TypeError(f"level must be a level name or number, got {level!r}")
    if isinstance(level, int):
        return level
    number = _LEVELS.get(level.lower()) if isinstance(level, str) else None
    if number is None:
        known = ", ".join(_LEVELS)
        raise ValueError(f"unknown log level {level!r} (known: {known})")
    return number


class JobLogger:
    """The structlog *logger* behind a handler's ``job.ctx["logger"]``: it buffers entries.

    The handler gets a structlog bound logger (``structlog.make_filtering_bound_logger``, with
    its ``debug`` … ``critical``, ``exception``, ``log``, ``bind``, ``unbind``, ``new``)
    whose output goes here, as ``structlog.ReturnLogger``'s does: each call appends one
    entry, a dict with ``event``, ``level``, the bound context and the call's keywords (a
    formatted ``exception`` for ``exc_info``), to :attr:`entries`. The aggregate logger emits
    them as the ``entries`` of one event when the handler is done. Calls below the adapter's
    ``level`` are dropped by the bound logger at once; loggers made with ``bind`` share the
    buffer.

    Args:
        entries: the list the entries are appended to.
    """

    __slots__ = ("entries",)

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries

    def msg(self, **entry: Any) -> None:
        """Append one entry (structlog calls this, or its aliases, with the event dict)."""
        self.entries.append(entry)

    debug = info = warning = warn = error = critical = fatal = exception = log = msg

    def __repr__(self) -> str:
        return f"<JobLogger entries={len(self.entries)}>"


def _trace_id(ctx_trace_id: Any) -> str | None:
    if isinstance(ctx_trace_id, str):
        return ctx_trace_id
    # No tracing adapter outside us: use whatever span is current (the user's own tracing).
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return format(span_context.trace_id, "032x")
    return None


class AggregateLogger:
    """Adapter that turns everything an execution logged into one structured event.

    Before the inner handler runs it puts a :class:`JobLogger` at ``job.ctx["logger"]``.
    After the handler (or the chain inside this adapter) is done, it emits one event,
    ``"job"``, through ``logger`` with the keys ``job_id``, ``execution_id``, ``handler``,
    ``queue``, ``status`` (int), ``latency_ms``, ``attempt``, ``entries`` (the buffered
    entries), and ``worker_number``, ``trace_id``, ``error`` when there are any. The event is
    logged at ``error`` for 408 and 5xx, ``warning`` for other 4xx (but 444), else ``info``.

    The trace id is ``ctx["trace_id"]`` (set by the ``tracing`` adapter, in whichever order the
    two are listed) or else the trace of the span current when the event is emitted.

    Args:
        logger: the structlog logger the event goes to; by default
            ``structlog.get_logger("anywork")``, so the application's structlog
            configuration (processors, renderer) applies.
        silent_success: emit nothing for 2xx.
        silent_no_response: emit nothing for 444.
        reduce: ``reduce(status, n_entries)``; emit nothing when it returns True.
        level: the lowest level of the entries kept (``"debug"`` … ``"critical"``, or a
            stdlib ``logging`` number); lower ones are dropped as they are logged.

    Raises:
        ValueError: an unknown level name.
    """

    __slots__ = (
        "_bound",
        "_bound_class",
        "_min_level",
        "level",
        "logger",
        "reduce",
        "silent_no_response",
        "silent_success",
    )

    def __init__(
        self,
        *,
        logger: Any = None,
        silent_success: bool = False,
        silent_no_response: bool = False,
        reduce: Reduce | None = None,
        level: str | int = "info",
    ) -> None:
        self._min_level = _level_number(level)
        self.level = level
        self.logger: Any = logger if logger is not None else structlog.get_logger("anywork")
        self.silent_success = silent_success
        self.silent_no_response = silent_no_response
        self.reduce = reduce
        self._bound = isinstance(self.logger, structlog.BoundLoggerBase)
        # The handler's bound logger class: structlog's level filter, made once per adapter. It
        # is a BoundLoggerBase, built per execution from (logger, processors, context), which
        # skips the lazy proxy wrap_logger() would add around each one.
        self._bound_class = cast(
            "Callable[[JobLogger, list[Any], dict[str, Any]], FilteringBoundLogger]",
            structlog.make_filtering_bound_logger(self._min_level),
        )

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so its execution is logged as one event.

        Args:
            handler: the inner handler.

        Returns:
            The logging handler.
        """
        bound_class = self._bound_class
        processors = _ENTRY_PROCESSORS
        emit = self._emit
        perf_counter = time.perf_counter

        async def logged(job: Job) -> Any:
            ctx = job.ctx
            if ctx is None:
                ctx = job_ctx(job)  # raises the usual error
            entries: list[dict[str, Any]] = []
            ctx["logger"] = bound_class(JobLogger(entries), processors, {})
            start = perf_counter()
            try:
                result = await handler(job)
            except Exception as exc:
                emit(job, ctx, ctx.status, entries, perf_counter() - start, exc)
                raise
            except BaseException:
                # Cancelled (499): logging is synchronous, nothing here can block.
                emit(job, ctx, ctx.status, entries, perf_counter() - start, None)
                raise
            # The Worker's settle step inside has made ctx.status final, whatever happened.
            emit(job, ctx, ctx.status, entries, perf_counter() - start, None)
            return result

        return logged

    def _emit(
        self,
        job: Job,
        ctx: Ctx,
        status: Status,
        entries: list[dict[str, Any]],
        elapsed: float,
        error: Exception | None,
    ) -> None:
        if (self.silent_success and status.is_success) or (
            self.silent_no_response and status is Status.NO_RESPONSE
        ):
            return
        if self.reduce is not None and self.reduce(status, len(entries)):
            return
        optional: dict[str, Any] = {}
        worker_number = ctx.get("worker_number")
        if worker_number is not None:
            optional["worker_number"] = worker_number
        trace_id = _trace_id(ctx.get("trace_id"))
        if trace_id is not None:
            optional["trace_id"] = trace_id
        if error is not None:
            optional["error"] = f"{type(error).__name__}: {error}"
        # A lazy proxy (what structlog.get_logger() returns) is asked for its bound logger, as
        # structlog documents: the cached one when configured so, else a new one (so later
        # configuration applies), without the failed attribute lookup of calling it directly.
        logger = self.logger if self._bound else self.logger.bind()
        if status is Status.TIMEOUT or status >= 500:
            log = logger.error
        elif status >= 400 and status is not Status.NO_RESPONSE:
            log = logger.warning
        else:
            log = logger.info
        log(
            "job",
            job_id=job.id,
            execution_id=ctx.execution_id,
            handler=job.handler,
            queue=job.queue,
            status=int(status),
            latency_ms=round(elapsed * 1000.0, 3),
            attempt=ctx.attempt,
            **optional,
            entries=entries,
        )

    def __repr__(self) -> str:
        return (
            f"aggregate_logger(logger={self.logger!r}, silent_success={self.silent_success!r}, "
            f"silent_no_response={self.silent_no_response!r}, reduce={self.reduce!r}, "
            f"level={self.level!r})"
        )


def aggregate_logger(
    *,
    logger: Any = None,
    silent_success: bool = False,
    silent_no_response: bool = False,
    reduce: Reduce | None = None,
    level: str | int = "info",
) -> AggregateLogger:
    """Return an adapter that logs each execution as one event with its handler's entries.

    See :class:`AggregateLogger` for the event's keys.

    Args:
        logger: the structlog logger to emit on (default ``structlog.get_logger("anywork")``).
        silent_success: emit nothing for 2xx.
        silent_no_response: emit nothing for 444.
        reduce: ``reduce(status, n_entries)``; emit nothing when it returns True.
        level: the lowest level of the handler's entries that is kept.

    Returns:
        The adapter.

    Raises:
        ValueError: an unknown level name.
    """
    return AggregateLogger(
        logger=logger,
        silent_success=silent_success,
        silent_no_response=silent_no_response,
        reduce=reduce,
        level=level,
    )
