"""The built-in adapters: logging, metrics, tracing, health, retries and limits."""

from __future__ import annotations

from .health import Health as Health
from .health import HealthApp as HealthApp
from .limit import Limit as Limit
from .limit import limit as limit
from .limit import parse_rate as parse_rate
from .logging import AggregateLogger as AggregateLogger
from .logging import JobLogger as JobLogger
from .logging import aggregate_logger as aggregate_logger
from .metrics import Prometheus as Prometheus
from .metrics import prometheus as prometheus
from .retry import Retry as Retry
from .retry import retry as retry
from .tracing import Tracing as Tracing
from .tracing import inject_trace as inject_trace
from .tracing import tracing as tracing

__all__ = (
    "AggregateLogger",
    "Health",
    "HealthApp",
    "JobLogger",
    "Limit",
    "Prometheus",
    "Retry",
    "Tracing",
    "aggregate_logger",
    "inject_trace",
    "limit",
    "parse_rate",
    "prometheus",
    "retry",
    "tracing",
)
