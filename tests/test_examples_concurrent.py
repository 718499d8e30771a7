"""The ConcurrentJob and BackgroundWorker examples run as users run them and print their story."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> str:
    """Run examples/<name> from the repository root and return its output (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_poller_example_grows_drains_and_shrinks() -> None:
    """examples/poller.py: adaptive pollers grow for each burst, send every row, shrink to one."""
    out = run_example("poller.py")
    bursts = re.findall(r"burst (\d): sent, peak pollers=(\d+), idle pollers=(\d+)", out)
    assert [burst for burst, _, _ in bursts] == ["1", "2"], out
    for _, peak, idle in bursts:
        assert 2 <= int(peak) <= 4
        assert int(idle) == 1
    assert "done: 300 rows sent, 300 distinct" in out


def test_threads_example_collects_every_result() -> None:
    """examples/threads.py: four plain threads get their results through Futures."""
    out = run_example("threads.py")
    assert "alice: 'the quick brown fox' has 4 words" in out
    assert "bob: 'and keeps sleeping all day' has 5 words" in out
    assert "dave: 'one two three four five' has 5 words" in out
    assert len(re.findall(r"^\w+: checksum \d+$", out, flags=re.MULTILINE)) == 4
    assert "audited 3 events" in out
    assert "heartbeats: yes" in out
    assert "stopped cleanly: True" in out
