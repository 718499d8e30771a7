"""Tests that examples/observability.py runs by itself and shows what it promises."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def output() -> str:
    """The stdout of one run of the example with JSON logs (it must exit 0 on its own)."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.observability", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def job_events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if '"event": "job"' in line]


def test_serves_ready_and_metrics(output: str) -> None:
    """/ready answers 200 OK and /metrics counts every execution by handler and status."""
    assert "== GET /ready -> 200 OK" in output
    assert 'anywork_jobs_total{handler="greet",queue="default",status="200"} 3.0' in output
    assert 'anywork_jobs_total{handler="flaky",queue="default",status="200"} 1.0' in output
    assert 'anywork_jobs_total{handler="missing",queue="default",status="444"} 1.0' in output


def test_logs_one_json_event_per_execution(output: str) -> None:
    """Each execution is one JSON "job" line holding its handler's entries."""
    events = job_events(output)
    assert sorted(e["handler"] for e in events) == sorted(
        ["greet"] * 3 + ["notify"] * 3 + ["flaky", "missing"]
    )
    (flaky,) = [e for e in events if e["handler"] == "flaky"]
    assert flaky["attempt"] == 2
    assert [entry["call"] for entry in flaky["entries"]] == [1, 2]


def test_follow_up_jobs_continue_the_trace(output: str) -> None:
    """A job injected from a handler runs in the same trace as the job that produced it."""
    events = job_events(output)
    greets = {e["entries"][0]["name"]: e["trace_id"] for e in events if e["handler"] == "greet"}
    notifies = {e["entries"][0]["name"]: e["trace_id"] for e in events if e["handler"] == "notify"}
    assert greets == notifies
    assert len(set(greets.values())) == 3


def test_prints_consumer_spans(output: str) -> None:
    """The ConsoleSpanExporter prints a CONSUMER span per execution."""
    assert output.count('"kind": "SpanKind.CONSUMER"') == 8
    assert '"anywork.job.handler": "flaky"' in output


def test_main_is_importable() -> None:
    """The example module imports without running and exposes main()."""
    sys.path.insert(0, str(ROOT))
    try:
        # By name, so mypy checks the file once, as the script it is.
        observability = importlib.import_module("examples.observability")
    finally:
        sys.path.remove(str(ROOT))
    assert callable(observability.main)
