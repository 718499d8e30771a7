"""Fixtures for the adapter tests: jobs with a Ctx, a fresh registry, an in-memory tracer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from work import Ctx, Job

MakeJob = Callable[..., Job]


@pytest.fixture
def make_job() -> MakeJob:
    """Build a Job with a fresh Ctx, as the Worker hands it to the adapter chain."""

    def make(handler: str = "h", args: dict[str, Any] | None = None, **kwargs: Any) -> Job:
        job = Job(handler, args, **kwargs)
        job.ctx = Ctx(job.id)
        return job

    return make


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry per test."""
    return CollectorRegistry()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Finished spans of the test's tracer provider, in memory."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A real SDK provider exporting to ``exporter`` (never installed globally)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()
