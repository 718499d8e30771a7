"""examples/relay.py runs as users run it: its route answers through workers it started."""

from __future__ import annotations

import re
import subprocess
import sys

from .procs import ROOT, free_port


def test_relay_example_answers_its_route_through_a_started_worker() -> None:
    """`python examples/relay.py --once PORT`: GET / three times, each 200 from a worker
    process the ProcessScaler started (at most two), then a clean exit."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "relay.py"), "--once", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name, line in zip(("ada", "grace", "edsger"), lines, strict=False):
        assert re.fullmatch(rf"200 hello {name} from pid \d+", line), line
    started = re.search(r"worker processes started: (\d+)", done.stdout)
    assert started and 1 <= int(started[1]) <= 2, done.stdout
