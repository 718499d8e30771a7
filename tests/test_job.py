"""Tests for Job and Ctx."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from work import Ctx, Job, Status


def test_job_defaults() -> None:
    """A Job has a unique id, empty args/headers, the default queue and no ctx."""
    a, b = Job("h"), Job("h")
    assert a.id != b.id and len(a.id) == 32
    assert (a.args, a.headers, a.queue, a.timeout, a.ctx) == ({}, {}, "default", None, None)


def test_copy_keeps_id_and_copies_args() -> None:
    """copy() keeps the id, shallow-copies args and headers, and drops the ctx."""
    job = Job("h", {"a": [1]}, headers={"x": "1"}, queue="q", timeout=2)
    job.ctx = Ctx(job.id)
    copy = job.copy()
    assert copy.id == job.id and copy.ctx is None and copy.queue == "q" and copy.timeout == 2.0
    copy.args["b"] = 2
    copy.headers["y"] = "2"
    assert "b" not in job.args and "y" not in job.headers
    assert copy.args["a"] is job.args["a"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"handler": ""}, ValueError, "non-blank"),
        ({"handler": " "}, ValueError, "non-blank.*' '"),
        ({"handler": "\t\n"}, ValueError, "non-blank"),
        ({"handler": 3}, TypeError, "int"),
        ({"handler": "h", "args": [1]}, TypeError, "list"),
        ({"handler": "h", "timeout": 0}, ValueError, "0"),
        ({"handler": "h", "timeout": -1.5}, ValueError, "-1.5"),
        ({"handler": "h", "timeout": "5"}, TypeError, "str"),
        ({"handler": "h", "queue": ""}, ValueError, "queue"),
        ({"handler": "h", "headers": "x"}, TypeError, "str"),
    ],
)
def test_bad_job_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    """Bad Job arguments raise a clear error naming the bad value."""
    with pytest.raises(error, match=match):
        Job(**kwargs)  # type: ignore[arg-type]


def test_ctx_mapping_and_status() -> None:
    """Ctx is a mutable mapping with a status that accepts members and equal ints."""
    ctx = Ctx("job-1", attempt=2)
    assert ctx.status is Status.UNKNOWN and ctx.attempt == 2 and ctx.job_id == "job-1"
    ctx.set("a", 1)
    ctx["b"] = 2
    assert dict(ctx) == {"a": 1, "b": 2} and ctx.get("c") is None and len(ctx) == 2
    del ctx["a"]
    assert "a" not in ctx
    ctx.status = 404
    assert ctx.status is Status.NOT_FOUND
    with pytest.raises(ValueError, match="299"):
        ctx.status = 299


def test_ctx_ids_and_times() -> None:
    """Each Ctx has its own execution id and an aware start time."""
    a, b = Ctx("j"), Ctx("j")
    assert a.execution_id != b.execution_id and a.execution_id == a.execution_id
    assert a.started_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - a.started_at).total_seconds()) < 60
    assert a.deadline is None


def test_headers_are_kept_and_copied() -> None:
    """Job(headers=...) keeps its headers; copy() carries a copy of them."""
    job = Job("h", headers={"traceparent": "00-abc", "x-corr": "42"})
    assert job.headers == {"traceparent": "00-abc", "x-corr": "42"}
    copy = job.copy()
    assert copy.headers == job.headers and copy.headers is not job.headers
