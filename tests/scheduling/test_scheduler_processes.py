"""Several scheduler processes on one store: every fire exactly once, none missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from work import Job, JobState, Schedule, SyncSchedules

from ..stores.conftest import POSTGRES_URL, REDIS_URL

REPO = Path(__file__).resolve().parents[2]


def _store(kind: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    tag = uuid.uuid4().hex[:12]
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}", {}
    if kind == "postgresql":
        return POSTGRES_URL, {"schema": f"anywork_test_{tag}"}
    return REDIS_URL, {"prefix": f"anywork-test-{tag}:"}


def _drop(url: str, options: dict[str, str]) -> None:
    import anyio

    from work.stores import open_store

    store = open_store(url, **options)
    drop = getattr(store, "drop", None)
    if drop is not None:
        anyio.run(drop)


def _start_scheduler(url: str, options: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "work.cli", "scheduler", "--store", url, "--poll", "0.2"]
    for key, value in options.items():
        cmd += ["--store-option", f"{key}={value}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
def test_three_scheduler_processes_fire_every_second_exactly_once(
    kind: str, tmp_path: Path
) -> None:
    """Three `anywork scheduler` processes on one store with a rate(1 second) schedule for
    about six seconds: the executions are one per second, consecutive, none twice."""
    url, options = _store(kind, tmp_path)
    try:
        with SyncSchedules(url, **options) as schedules:
            procs = [_start_scheduler(url, options) for _ in range(3)]
            try:
                for p in procs:  # each says so once its store is open
                    assert p.stderr is not None
                    assert b"scheduler on store=" in p.stderr.readline()
                # Stored once the schedulers run: its first fire (within a second) is not late.
                # A wide grace: a fire that is late on a busy machine still runs.
                record = schedules.put(
                    Schedule("svc/every-second", "rate(1 second)", Job("tick"), misfire_grace=30)
                )
                anchor = record.anchor
                assert anchor is not None
                deadline = time.monotonic() + 60
                # Polling the store is the point: the fires happen in other processes.
                while len(schedules.executions("svc/every-second", limit=1000)) < 6:
                    assert time.monotonic() < deadline, "the schedulers made too few fires"
                    assert all(p.poll() is None for p in procs), [
                        p.stderr.read() if p.stderr else b"" for p in procs if p.poll() is not None
                    ]
                    time.sleep(0.1)
            finally:
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                outputs = [p.communicate(timeout=30) for p in procs]
            assert [p.returncode for p in procs] == [0, 0, 0], outputs
            jobs = schedules.executions("svc/every-second", limit=1000)
        fires = sorted(job.scheduled_for for job in jobs if job.scheduled_for is not None)
        assert len(fires) == len(jobs) >= 6
        seconds = [(fire - anchor).total_seconds() for fire in fires]
        assert seconds == [float(n) for n in range(1, len(fires) + 1)], seconds
        assert all(job.state is JobState.QUEUED for job in jobs)
        assert len({job.id for job in jobs}) == len(jobs)
    finally:
        if kind != "sqlite":
            _drop(url, options)


def test_scheduler_command_stops_on_sigterm(tmp_path: Path) -> None:
    """`anywork scheduler` logs its start and exits 0 on SIGTERM."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    proc = _start_scheduler(url, {})
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert "scheduler on store=" in line, line
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"scheduler stopping (SIGTERM)" in err
