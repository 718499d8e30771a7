"""The aggregate logger: one structured log event per execution, holding what the handler logged."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog
from opentelemetry import trace

from work import Ctx, Handler, Job, Status

from ._common import job_ctx

__all__ = ["AggregateLogger", "JobLogger", "aggregate_logger"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

# The class of what ``structlog.get_logger()`` returns (not exported by structlog).
_LazyProxy: type[Any] = type(structlog.get_logger())

Reduce = Callable[[Status, int], bool]
"""``reduce(status, n_entries) -> bool``: True drops the execution's event."""


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


def _format_exc_info(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        return "".join(traceback.format_exception(exc_info))
    if isinstance(exc_info, tuple):
        return "".join(traceback.format_exception(*exc_info))
    return "".join(traceback.format_exception(*sys.exc_info()))


class JobLogger:
    """The logger a handler finds at ``job.ctx["logger"]``: it buffers, it does not write.

    It has the methods of a structlog bound logger (``debug`` … ``critical``, ``exception``,
    ``log``, ``bind``, ``unbind``, ``new``). Each call appends one entry, a dict with
    ``event``, ``level``, the bound context and the call's keywords, to the execution's
    buffer; the aggregate logger emits the buffer as the ``entries`` of a single event when
    the handler is done. Calls below the adapter's ``level`` are dropped at once.

    Loggers made with ``bind`` share the buffer of the one they came from.
    """

    __slots__ = ("_context", "_entries", "_min_level")

    def __init__(
        self,
        entries: list[dict[str, Any]],
        min_level: int = 20,
        context: dict[str, Any] | None = None,
    ) -> None:
        self._entries = entries
        self._min_level = min_level
        self._context: dict[str, Any] = context if context is not None else {}

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The entries logged so far (shared with every logger bound from this one)."""
        return self._entries

    def bind(self, **new_values: Any) -> JobLogger:
        """Return a logger that adds ``new_values`` to every entry (sharing the buffer)."""
        return JobLogger(self._entries, self._min_level, {**self._context, **new_values})

    def new(self, **new_values: Any) -> JobLogger:
        """Return a logger whose context is only ``new_values`` (sharing the buffer)."""
        return JobLogger(self._entries, self._min_level, dict(new_values))

    def unbind(self, *keys: str) -> JobLogger:
        """Return a logger without ``keys`` in its context.

        Raises:
            KeyError: a key is not bound.
        """
        context = dict(self._context)
        for key in keys:
            del context[key]
        return JobLogger(self._entries, self._min_level, context)

    def try_unbind(self, *keys: str) -> JobLogger:
        """Return a logger without ``keys`` in its context, ignoring keys that are not bound."""
        context = {k: v for k, v in self._context.items() if k not in keys}
        return JobLogger(self._entries, self._min_level, context)

    def is_enabled_for(self, level: int) -> bool:
        """True when entries at ``level`` (a number, as stdlib ``logging``) are kept."""
        return level >= self._min_level

    def _add(self, number: int, name: str, event: Any, args: tuple[Any, ...], kw: Any) -> None:
        if number < self._min_level:
            return
        if args:
            event = str(event) % args
        entry: dict[str, Any] = {"event": event, "level": name}
        if self._context:
            entry.update(self._context)
        if kw:
            exc_info = kw.pop("exc_info", None)
            entry.update(kw)
            if exc_info:
                entry["exception"] = _format_exc_info(exc_info)
        self._entries.append(entry)

    def debug(self, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer a debug entry (``args`` format ``event`` with ``%``, as structlog's)."""
        self._add(10, "debug", event, args, kw)

    def info(self, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer an info entry."""
        self._add(20, "info", event, args, kw)

    msg = info

    def warning(self, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer a warning entry."""
        self._add(30, "warning", event, args, kw)

    warn = warning

    def error(self, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer an error entry."""
        self._add(40, "error", event, args, kw)

    def critical(self, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer a critical entry."""
        self._add(50, "critical", event, args, kw)

    fatal = critical

    def exception(self, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer an error entry with the exception being handled, formatted, as ``exception``."""
        kw.setdefault("exc_info", True)
        self._add(40, "error", event, args, kw)

    def log(self, level: int | str, event: Any = None, *args: Any, **kw: Any) -> None:
        """Buffer an entry at ``level`` (a name such as ``"info"`` or a stdlib number)."""
        number = _level_number(level)
        name = level.lower() if isinstance(level, str) else _name_of(number)
        self._add(number, name, event, args, kw)

    def __repr__(self) -> str:
        return f"<JobLogger context={self._context!r} entries={len(self._entries)}>"


def _name_of(number: int) -> str:
    for name, value in reversed(_LEVELS.items()):
        if number >= value:
            return name
    return "debug"


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
        "_cached",
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
        # What structlog cached behind a lazy proxy: None until the first event, False if none.
        self._cached: Any = None

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so its execution is logged as one event.

        Args:
            handler: the inner handler.

        Returns:
            The logging handler.
        """
        min_level = self._min_level
        emit = self._emit
        perf_counter = time.perf_counter

        async def logged(job: Job) -> Any:
            ctx = job.ctx
            if ctx is None:
                ctx = job_ctx(job)  # raises the usual error
            entries: list[dict[str, Any]] = []
            ctx["logger"] = JobLogger(entries, min_level)
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

    def _target(self) -> Any:
        """The logger to call: ``logger``, or what structlog cached behind its lazy proxy.

        A ``structlog.get_logger()`` proxy assembles a bound logger on every call, unless
        structlog is configured with ``cache_logger_on_first_use``: then, from its first use,
        its ``bind()`` returns one same logger forever. Calling that logger directly is what
        the proxy would do, less the assembling (~2 µs per event); an uncached proxy is
        called as it is, so later ``structlog.configure`` calls keep applying to it.
        """
        logger = self.logger
        if type(logger) is _LazyProxy:
            if self._cached is None:
                first = logger.bind()  # the first use: structlog caches here if configured to
                self._cached = first if logger.bind() is first else False
            if self._cached is not False:
                return self._cached
        return logger

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
        logger = self._target()
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
