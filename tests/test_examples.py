"""The examples run as users run them (a subprocess each) and print what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    """Run examples/<name> and return its output (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_runs_every_job_to_its_end(tmp_path: Path) -> None:
    """The README demo: six jobs on SQLite end as promised (retry, 400, delay, results)."""
    db = tmp_path / "jobs.db"
    out = run_example("quickstart.py", str(db))
    assert db.exists()
    assert "enqueued 6 jobs" in out
    assert re.search(r"charge_card\s+succeeded 200\s+attempts=2\s+charged 42 EUR", out)
    assert re.search(r"send_receipt\s+failed\s+400\s+attempts=1\s+no email address", out)
    assert len(re.findall(r"resize_image\s+succeeded 200", out)) == 3
    assert "done: {'default': {'failed': 1, 'succeeded': 5}}" in out


def test_cron_example_runs_both_schedules() -> None:
    """The cron example fires the cron line and the interval, then stops cleanly."""
    out = run_example("cron.py", "2.5")
    match = re.search(r"cron ran (\d+) times, interval ran (\d+) times", out)
    assert match, out
    cron, interval = int(match[1]), int(match[2])
    assert 1 <= cron <= 4 and 3 <= interval <= 7
    assert out.count("cron */1s") == cron and out.count("every 0.5s") == interval


def test_schedules_example_prints_next_fires_and_executions(tmp_path: Path) -> None:
    """The schedules example on SQLite prints each schedule's next fires, then executions of
    the every-second schedule (one per second, all succeeded) and of the manual trigger."""
    out = run_example("schedules.py", str(tmp_path / "jobs.db"), "2.5")
    assert re.search(r"demo/daily-report\s+cron\(30 6 \? \* MON-FRI \*\)\s+next \(UTC\): ", out)
    assert "demo/new-year        at(2030-01-01T00:00:00)    next (UTC): 2030-01-01 00:00:00" in out
    match = re.search(r"demo/heartbeat: (\d+) executions", out)
    assert match and 1 <= int(match[1]) <= 4, out
    assert re.search(r"demo/heartbeat@\d{8}T\d{6}Z\s+succeeded alive at", out)
    assert re.search(r"demo/daily-report@manual-\S+\s+succeeded daily report built", out)
