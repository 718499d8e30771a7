"""The prometheus adapter: counts, times and gauges executions per handler, queue and status."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from work import Handler, Job, Status

from ._common import job_ctx

__all__ = ["DEFAULT_BUCKETS", "Prometheus", "prometheus"]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
"""Duration buckets in seconds: Prometheus' defaults stretched to ten minutes, as jobs run long."""

_Collectors = tuple[Counter, Histogram, Gauge]

# Collectors already made, per registry and metric names, so that a second adapter with the
# same settings shares them (prometheus_client refuses to register a name twice).
_made: weakref.WeakKeyDictionary[CollectorRegistry, dict[tuple[str, str], _Collectors]] = (
    weakref.WeakKeyDictionary()
)
_made_lock = threading.Lock()


def _collectors(
    registry: CollectorRegistry, namespace: str, subsystem: str, buckets: Sequence[float]
) -> _Collectors:
    with _made_lock:
        per_registry = _made.setdefault(registry, {})
        made = per_registry.get((namespace, subsystem))
        if made is None:
            labels = ("handler", "queue")
            common: dict[str, Any] = {
                "namespace": namespace,
                "subsystem": subsystem,
                "registry": registry,
            }
            made = (
                Counter(
                    "jobs", "Executions finished, by final status.", (*labels, "status"), **common
                ),
                Histogram(
                    "job_duration_seconds",
                    "How long executions took, in seconds.",
                    labels,
                    buckets=tuple(buckets),
                    **common,
                ),
                Gauge("jobs_in_progress", "Executions running now.", labels, **common),
            )
            per_registry[(namespace, subsystem)] = made
        return made


class _Children:
    """The label children of one (handler, queue), bound once and reused for every job."""

    __slots__ = ("by_status", "duration", "in_progress", "jobs", "labels")

    def __init__(self, collectors: _Collectors, handler: str, queue: str) -> None:
        jobs, duration, in_progress = collectors
        self.labels = (handler, queue)
        self.jobs = jobs
        self.duration = duration.labels(handler, queue)
        self.in_progress = in_progress.labels(handler, queue)
        self.by_status: dict[Status, Any] = {}

    def count_child(self, status: Status) -> Any:
        """The ``jobs_total`` child of ``status``, bound on first use."""
        child = self.by_status.get(status)
        if child is None:
            child = self.by_status[status] = self.jobs.labels(*self.labels, str(int(status)))
        return child


class Prometheus:
    """Adapter that records every execution in three Prometheus metrics.

    With the default namespace ``anywork``:

    - ``anywork_jobs_total{handler,queue,status}``: a counter of finished executions, by
      final status (its digits, ``"200"``, ``"500"``; cancelled ones count as ``"499"``);
    - ``anywork_job_duration_seconds{handler,queue}``: a histogram of their durations;
    - ``anywork_jobs_in_progress{handler,queue}``: a gauge of the executions running now.

    A second adapter on the same registry, namespace and subsystem shares the collectors of
    the first (and so its buckets) instead of failing.

    Args:
        registry: where the metrics are registered (default: prometheus_client's global
            ``REGISTRY``, the one ``start_http_server`` and ``make_asgi_app`` serve).
        namespace: the metric name prefix.
        subsystem: a second prefix after the namespace (``anywork_<subsystem>_jobs_total``).
        ignore: handler names whose executions are not recorded.
        buckets: histogram buckets in seconds (default :data:`DEFAULT_BUCKETS`).
    """

    __slots__ = (
        "_children",
        "_collectors",
        "buckets",
        "ignore",
        "namespace",
        "registry",
        "subsystem",
    )

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "anywork",
        subsystem: str = "",
        ignore: Iterable[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.namespace = namespace
        self.subsystem = subsystem
        self.ignore = frozenset(ignore)
        self.buckets = tuple(buckets) if buckets is not None else DEFAULT_BUCKETS
        self._collectors = _collectors(self.registry, namespace, subsystem, self.buckets)
        self._children: dict[tuple[str, str], _Children] = {}

    def _bind(self, handler: str, queue: str) -> _Children:
        children = self._children.get((handler, queue))
        if children is None:
            children = _Children(self._collectors, handler, queue)
            self._children[(handler, queue)] = children
        return children

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so its executions are recorded.

        Args:
            handler: the inner handler.

        Returns:
            The measuring handler.
        """
        ignore = self.ignore
        cache = self._children
        bind = self._bind
        perf_counter = time.perf_counter

        async def measured(job: Job) -> Any:
            if job.handler in ignore:
                return await handler(job)
            ctx = job.ctx
            if ctx is None:
                ctx = job_ctx(job)  # raises the usual error
            children = cache.get((job.handler, job.queue)) or bind(job.handler, job.queue)
            children.in_progress.inc()
            start = perf_counter()
            try:
                return await handler(job)
            finally:
                # The Worker's settle step inside has made ctx.status final, whatever happened.
                children.duration.observe(perf_counter() - start)
                children.in_progress.dec()
                status = ctx.status
                child = children.by_status.get(status)
                if child is None:
                    child = children.count_child(status)
                child.inc()

        return measured

    def __repr__(self) -> str:
        return (
            f"prometheus(namespace={self.namespace!r}, subsystem={self.subsystem!r}, "
            f"ignore={sorted(self.ignore)!r})"
        )


def prometheus(
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "anywork",
    subsystem: str = "",
    ignore: Iterable[str] = (),
    buckets: Sequence[float] | None = None,
) -> Prometheus:
    """Return an adapter that records executions as Prometheus metrics.

    See :class:`Prometheus` for the metrics.

    Args:
        registry: where the metrics are registered (default: the global ``REGISTRY``).
        namespace: the metric name prefix.
        subsystem: a second prefix after the namespace.
        ignore: handler names whose executions are not recorded.
        buckets: histogram buckets in seconds.

    Returns:
        The adapter.
    """
    return Prometheus(
        registry=registry, namespace=namespace, subsystem=subsystem, ignore=ignore, buckets=buckets
    )
