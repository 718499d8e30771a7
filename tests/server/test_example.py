"""examples/service.py runs as users run it and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_example_drives_the_webhook_flow(tmp_path: Path) -> None:
    """The example's receiver gets the webhook, heartbeats, succeeds, and the job ends with
    the callback's fields."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "service.py"), str(tmp_path / "jobs.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "receiver: got job_name=" in out and "payload='hello'" in out
    assert "receiver: heartbeat -> 200" in out
    assert "receiver: success -> 200 succeeded" in out
    assert 'service: job succeeded 200 result={"state": "done", "summary": "42 rows"' in out
