"""examples/tasks.py runs, and docs/cli.md's worker, enqueue, jobs and stats examples work on it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def anywork(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``anywork ARGV`` (as ``python -m work.cli``) from examples/, as docs/cli.md does."""
    return subprocess.run(
        [sys.executable, "-m", "work.cli", *argv],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tasks_runs_each_handler() -> None:
    """`python examples/tasks.py` runs add (200 and 400) and nap, and prints each outcome."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "tasks.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "add {'a': 1, 'b': 2}: 200 3",
        "add {'a': 1}: 400 None",
        "nap {'seconds': 0.1}: 200 0.1",
    ]


def test_cli_page_uses_tasks_py() -> None:
    """docs/cli.md shows tasks.py as it is, and its examples name only its worker and handlers."""
    page = (ROOT / "docs" / "cli.md").read_text()
    source = (EXAMPLES / "tasks.py").read_text()
    shown = re.search(r"```python\n(.*?)```", page, re.S)
    assert shown and shown[1] in source
    targets = set(re.findall(r"^\$ anywork worker (\S+)", page, re.M))
    assert targets == {"tasks:worker"}
    handlers = set(re.findall(r"^\$ anywork enqueue (\w+)", page, re.M))
    assert handlers and handlers <= {"add", "nap"}


def test_worker_serves_tasks_from_the_cli(tmp_path: Path) -> None:
    """`anywork worker tasks:worker` runs jobs from `anywork enqueue`; SIGTERM ends it with 0."""
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    ids = []
    for handler, args in (
        ("add", '{"a": 1, "b": 2}'),
        ("add", '{"a": 1}'),
        ("nap", '{"seconds": 0.1}'),
    ):
        done = anywork("enqueue", handler, "--args", args, "--store", store, "--json")
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(done.stdout)["id"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "work.cli", "worker", "tasks:worker", "--store", store],
        cwd=EXAMPLES,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as worker:
        try:
            deadline = time.monotonic() + 30
            states: list[str] = []
            while time.monotonic() < deadline:  # the store's state, polled under a deadline
                listed = anywork("jobs", "list", "--store", store, "--json")
                assert listed.returncode == 0, listed.stderr
                states = [job["state"] for job in json.loads(listed.stdout)]
                if all(state in {"succeeded", "failed"} for state in states):
                    break
                time.sleep(0.1)
            assert sorted(states) == ["failed", "succeeded", "succeeded"], states
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
    assert worker.returncode == 0, output
    assert "processed 3 jobs" in output, output
    got = anywork("jobs", "get", ids[0], "--store", store, "--json")
    assert json.loads(got.stdout)["result"] == 3
    failed = json.loads(anywork("jobs", "get", ids[1], "--store", store, "--json").stdout)
    assert (failed["status"], failed["error"]) == (400, "a and b must be numbers")
    stats = anywork("stats", "--store", store, "--json")
    assert json.loads(stats.stdout)["default"] == {"succeeded": 2, "failed": 1}
