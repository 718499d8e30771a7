"""The health check: an adapter that watches outcomes, and an ASGI app that reports them."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from work import Handler, Job, Status

from ._common import job_ctx

__all__ = ["Health", "HealthApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A time window is kept as runs of outcomes: outcomes closer together than this fraction of
# the window share one run, so memory stays bounded however many jobs run (runs expire by
# their first outcome's time, so nothing counts for longer than the window).
_RUNS_PER_WINDOW = 1000


class Health:
    """Adapter that records each execution's outcome and says whether the worker is healthy.

    Call it with a handler, as any adapter (``Worker(adapters=[health])``); read
    :attr:`healthy`, :attr:`status` or :attr:`error_ratio` from anywhere, any thread; serve
    :attr:`asgi` as a readiness endpoint.

    The error ratio is the share of outcomes whose status is in ``error_statuses``, over the
    last ``window`` seconds or, with ``last_n``, over the last ``last_n`` outcomes. It is 0
    until at least ``min_requests`` outcomes are in that window. The worker is unhealthy when
    the ratio is strictly greater than ``threshold``. A cancelled execution (499) says nothing
    about health and is not recorded, unless 499 is one of ``error_statuses``.

    Attributes:
        asgi: an ASGI app answering 200 ``OK`` or 503 ``DOWN`` (mount it at ``/ready``).

    Args:
        error_statuses: the statuses that count as errors.
        threshold: the highest healthy error ratio, from 0 to 1.
        window: seconds of outcomes considered (when ``last_n`` is None).
        last_n: consider the last N outcomes instead of a time window.
        min_requests: outcomes needed in the window before the ratio counts.
        clock: a monotonic clock in seconds (tests pass a fake one).

    Raises:
        ValueError: a threshold outside [0, 1], a window that is not positive, ``last_n`` < 1,
            ``min_requests`` < 0, or ``min_requests`` > ``last_n`` (the check could never fail).
    """

    __slots__ = (
        "_clock",
        "_errors",
        "_lock",
        "_n_errors",
        "_n_total",
        "_outcomes",
        "_resolution",
        "_runs",
        "asgi",
        "error_statuses",
        "last_n",
        "min_requests",
        "threshold",
        "window",
    )

    def __init__(
        self,
        *,
        error_statuses: Iterable[Status | int] = (408, 500, 503),
        threshold: float = 0.5,
        window: float = 300.0,
        last_n: int | None = None,
        min_requests: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if last_n is not None and last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n!r}")
        if min_requests < 0:
            raise ValueError(f"min_requests must be >= 0, got {min_requests!r}")
        if last_n is not None and min_requests > last_n:
            raise ValueError(
                f"min_requests ({min_requests}) is more than last_n ({last_n}): "
                "the check could never fail"
            )
        self.error_statuses = frozenset(Status.coerce(s) for s in error_statuses)
        self.threshold = float(threshold)
        self.window = float(window)
        self.last_n = last_n
        self.min_requests = min_requests
        self._clock = clock
        self._lock = threading.Lock()
        self._resolution = self.window / _RUNS_PER_WINDOW
        # last_n: one bool per outcome. Time window: runs of [first time, total, errors].
        self._outcomes: deque[bool] = deque(maxlen=last_n)
        self._runs: deque[list[float]] = deque()
        self._n_total = 0
        self._n_errors = 0
        self.asgi = HealthApp(self)

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so its outcomes are recorded.

        Args:
            handler: the inner handler.

        Returns:
            The recording handler.
        """
        record = self.record

        async def watched(job: Job) -> Any:
            ctx = job.ctx
            if ctx is None:
                ctx = job_ctx(job)  # raises the usual error
            try:
                return await handler(job)
            finally:
                # The Worker's settle step inside has made ctx.status final, whatever happened.
                record(ctx.status)

        return watched

    def record(self, status: Status | int) -> None:
        """Record one outcome (the adapter does this for every execution).

        Args:
            status: the execution's final status. ``UNKNOWN``, and 499 unless it is an error
                status, are ignored.
        """
        if type(status) is not Status:
            status = Status.coerce(status)
        is_error = status in self.error_statuses
        if not is_error and (status is Status.UNKNOWN or status is Status.CANCELLED):
            return
        with self._lock:
            if self.last_n is not None:
                outcomes = self._outcomes
                if len(outcomes) == outcomes.maxlen and outcomes[0]:
                    self._n_errors -= 1
                outcomes.append(is_error)
                self._n_errors += is_error
                return
            now = self._clock()
            runs = self._runs
            if runs and runs[0][0] <= now - self.window:
                self._expire(now)
            if runs and now - runs[-1][0] < self._resolution:
                run = runs[-1]
                run[1] += 1
                run[2] += is_error
            else:
                runs.append([now, 1, float(is_error)])
            self._n_total += 1
            self._n_errors += is_error

    def _expire(self, now: float) -> None:
        runs = self._runs
        horizon = now - self.window
        while runs and runs[0][0] <= horizon:
            _, total, errors = runs.popleft()
            self._n_total -= int(total)
            self._n_errors -= int(errors)

    @property
    def error_ratio(self) -> float:
        """The share of error outcomes in the window (0.0 until ``min_requests`` are in it)."""
        with self._lock:
            if self.last_n is not None:
                total = len(self._outcomes)
            else:
                self._expire(self._clock())
                total = self._n_total
            if total == 0 or total < self.min_requests:
                return 0.0
            return self._n_errors / total

    @property
    def healthy(self) -> bool:
        """False when the error ratio is strictly greater than the threshold."""
        return self.error_ratio <= self.threshold

    @property
    def status(self) -> int:
        """200 when healthy, else 503."""
        return 200 if self.healthy else 503

    def __repr__(self) -> str:
        over = f"last_n={self.last_n}" if self.last_n is not None else f"window={self.window:g}"
        codes = sorted(int(s) for s in self.error_statuses)
        return (
            f"Health(error_statuses={codes}, threshold={self.threshold:g}, {over}, "
            f"min_requests={self.min_requests}, healthy={self.healthy})"
        )


class HealthApp:
    """A plain ASGI app reporting a :class:`Health`: 200 ``OK`` or 503 ``DOWN``, as text.

    It answers every HTTP request the same way whatever the path and method (nothing for
    ``HEAD`` but the headers), so it can be served alone or mounted: in Starlette
    ``Route("/ready", health.asgi)`` or ``Mount("/ready", app=health.asgi)``, in FastAPI
    ``app.add_route("/ready", health.asgi)``.

    Args:
        health: the Health to report.
    """

    __slots__ = ("health",)

    def __init__(self, health: Health) -> None:
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI connection.

        Args:
            scope: the ASGI connection scope.
            receive: the ASGI receive channel.
            send: the ASGI send channel.
        """
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        healthy = self.health.healthy
        body = b"OK" if healthy else b"DOWN"
        await send(
            {
                "type": "http.response.start",
                "status": 200 if healthy else 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    def __repr__(self) -> str:
        return f"<HealthApp for {self.health!r}>"
