"""``anywork workflows get|list|cancel``, run as real subprocesses on a SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from work import Job, SyncQueue
from work.workflows import Chain, WorkflowState


def anywork(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m work.cli`` with ``args``; return its result (never raises)."""
    return subprocess.run(
        [sys.executable, "-m", "work.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_workflows_list_get_cancel(tmp_path: Path) -> None:
    """list shows the workflow, get its steps, cancel ends it CANCELLED; cancelling again or
    an unknown id exits 1 with a message."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with SyncQueue(url) as queue:
        rec = queue.enqueue(Chain(Job("fetch"), Job("parse"), name="etl"))
    listed = anywork("workflows", "list", "--store", url)
    assert listed.returncode == 0, listed.stderr
    assert rec.id in listed.stdout and "running" in listed.stdout and "0/2" in listed.stdout
    got = anywork("workflows", "get", rec.id, "--store", url, "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["name"] == "etl"
    assert [s["state"] for s in data["steps"]] == ["queued", "pending"]
    assert [s["handler"] for s in data["steps"]] == ["fetch", None]
    text = anywork("workflows", "get", rec.id, "--store", url)
    assert "fetch" in text.stdout and "pending" in text.stdout
    cancelled = anywork("workflows", "cancel", rec.id, "--store", url)
    assert cancelled.returncode == 0 and f"cancelled {rec.id}" in cancelled.stdout
    with SyncQueue(url) as queue:
        after = queue.get_workflow(rec.id)
    assert after is not None and after.state is WorkflowState.CANCELLED
    again = anywork("workflows", "cancel", rec.id, "--store", url)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    unknown = anywork("workflows", "get", "nope", "--store", url)
    assert unknown.returncode == 1 and "no workflow" in unknown.stderr
    by_state = anywork("workflows", "list", "--store", url, "--state", "running", "--json")
    assert json.loads(by_state.stdout) == []
    bad = anywork("workflows", "list", "--store", url, "--state", "sideways")
    assert bad.returncode == 2
