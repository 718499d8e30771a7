"""``anywork schedules …`` in-process, and ``anywork worker --scheduler --schedules`` as a real
process that syncs declared schedules and runs what they fire."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from work import JobState, SyncSchedules
from work.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the program in-process and return (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite store."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def test_schedules_commands_round_trip(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """put, list, get (with next fires), pause, resume, trigger, executions and delete."""
    s = ("--store", store_url)
    code, out, err = run(
        capsys,
        "schedules", "put", "reports/daily", "cron(0 6 * * ? *)", *s,
        "--job", "report", "--args", '{"kind": "daily"}', "--tz", "Europe/Berlin",
        "--exclusive", "--ttl", "60",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("reports/daily  cron(0 6 * * ? *)  next=")
    code, out, _ = run(capsys, "schedules", "list", *s)
    assert code == 0 and "reports/daily" in out and "Europe/Berlin" in out
    code, out, _ = run(capsys, "schedules", "get", "reports/daily", *s, "--json", "--next", "3")
    data = json.loads(out)
    assert data["exclusive"] is True and data["ttl"] == 60.0
    assert data["target"] == {"job": {"handler": "report", "args": {"kind": "daily"}}}
    assert len(data["next_fires"]) == 3
    assert all(when.endswith(("04:00:00Z", "05:00:00Z")) for when in data["next_fires"])
    assert run(capsys, "schedules", "pause", "reports/daily", *s)[1] == "paused reports/daily\n"
    code, out, _ = run(capsys, "schedules", "list", "--paused", *s)
    assert "reports/daily" in out
    assert run(capsys, "schedules", "resume", "reports/daily", *s)[0] == 0
    code, out, _ = run(capsys, "schedules", "trigger", "reports/daily", *s)
    assert code == 0 and out.startswith("reports/daily@manual-") and "queued" in out
    code, out, _ = run(capsys, "schedules", "trigger", "reports/daily", *s)
    assert "failed 409 previous execution still running" in out
    code, out, _ = run(capsys, "schedules", "executions", "reports/daily", *s, "--json")
    assert [r["state"] for r in json.loads(out)] == ["failed", "queued"]
    assert run(capsys, "schedules", "delete", "reports/daily", *s)[0] == 0
    code, _, err = run(capsys, "schedules", "get", "reports/daily", *s)
    assert code == 1 and "no schedule with id 'reports/daily'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "bad id", "rate(1 hour)", "--job", "x"], "schedule id"),
        (["put", "a/b", "rate(0 hours)", "--job", "x"], "rate"),
        (["put", "a/b", "rate(1 hour)", "--job", "x", "--tz", "Nowhere/City"], "Nowhere/City"),
        (["put", "a/b", "rate(1 hour)", "--job", "x", "--ttl", "0"], "ttl"),
        (["put", "a/b", "rate(1 hour)", "--job", "x", "--args", "[1]"], "JSON object"),
        (["executions", "a/b", "--limit", "-1"], "limit"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], store_url: str, argv: list[str], message: str
) -> None:
    """A bad id, expression, zone, ttl or option: one line on stderr naming it, exit 2."""
    code, out, err = run(capsys, "schedules", *argv, "--store", store_url)
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and message in err


APP = """
from work import Job, Schedule, Worker

worker = Worker()


@worker.handler()
async def tick(job: Job) -> str:
    return "ticked"


SCHEDULES = [Schedule("app/tick", "rate(1 second)", Job("tick"))]
"""


def test_worker_syncs_declared_schedules_and_runs_their_fires(tmp_path: Path) -> None:
    """`anywork worker app:worker --scheduler --schedules app:SCHEDULES` syncs the declared
    schedule (deleting one removed from code), fires it and runs the executions."""
    (tmp_path / "app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with SyncSchedules(url) as schedules:
        from work import Job, Schedule

        schedules.put(Schedule("app/removed", "rate(1 hour)", Job("tick")))
        schedules.put(Schedule("other/kept", "rate(1 hour)", Job("tick")))
        cmd = [sys.executable, "-m", "work.cli", "worker", "app:worker", "--store", url]
        cmd += ["--scheduler", "--schedules", "app:SCHEDULES", "--schedules-prefix", "app/"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, env=_env())
        try:
            deadline = time.monotonic() + 60
            # Polling the store is the point: the work happens in the worker process.
            while not schedules.executions("app/tick", state=JobState.SUCCEEDED):
                assert time.monotonic() < deadline, "no execution succeeded"
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert b"synced 1 schedules from app:SCHEDULES" in err
        ids = [r.schedule.id for r in schedules.list()]
        assert ids == ["app/tick", "other/kept"]
        (done, *_) = schedules.executions("app/tick", state=JobState.SUCCEEDED)
        assert done.result == "ticked" and done.id.startswith("app/tick@")


def test_serve_syncs_declared_schedules_and_runs_their_fires(tmp_path: Path) -> None:
    """`anywork serve app:worker --schedules app:SCHEDULES` syncs the declared schedules at
    start (deleting one removed from code under the prefix) and its scheduler and worker run
    their fires."""
    (tmp_path / "app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with SyncSchedules(url) as schedules:
        from work import Job, Schedule

        schedules.put(Schedule("app/removed", "rate(1 hour)", Job("tick")))
        schedules.put(Schedule("other/kept", "rate(1 hour)", Job("tick")))
        cmd = [sys.executable, "-m", "work.cli", "serve", "app:worker", "--store", url]
        cmd += ["--insecure", "--http", "127.0.0.1:0"]
        cmd += ["--schedules", "app:SCHEDULES", "--schedules-prefix", "app/"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, env=_env())
        try:
            deadline = time.monotonic() + 60
            # Polling the store is the point: the work happens in the serve process.
            while not schedules.executions("app/tick", state=JobState.SUCCEEDED):
                assert time.monotonic() < deadline, "no execution succeeded"
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert b"synced 1 schedules from app:SCHEDULES" in err
        assert [r.schedule.id for r in schedules.list()] == ["app/tick", "other/kept"]


def test_worker_with_a_bad_schedules_spec_exits_2(tmp_path: Path) -> None:
    """--schedules naming nothing importable is one line and exit code 2."""
    (tmp_path / "app.py").write_text(APP)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    cmd = [sys.executable, "-m", "work.cli", "worker", "app:worker", "--store", url]
    cmd += ["--schedules", "app:NOPE"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=60, env=_env())
    assert done.returncode == 2, done.stderr
    assert b"has no attribute 'NOPE'" in done.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}
