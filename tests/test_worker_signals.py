"""`anywork worker` with sync handlers that overrun: signals stop it, nothing runs twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import work
from work import JobState, SyncQueue

REPO = Path(work.__file__).resolve().parents[1]

SYNC_MODULE = """
from __future__ import annotations

import time
from pathlib import Path

from work import Job, Worker

worker = Worker(max_concurrency=2, shutdown_grace=float({grace!r}))


@worker.handler()
def wedged(job: Job) -> None:
    Path(job.args["started"]).write_text("started")
    while True:
        time.sleep(0.05)


@worker.handler()
def slow(job: Job) -> str:
    Path(job.args["started"]).write_text("started")
    time.sleep(float(job.args["seconds"]))
    with open(job.args["done"], "a") as f:
        f.write("done\\n")
    return "finished"
"""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


class Proc:
    """``anywork worker`` as a real process, its output collected in a file."""

    def __init__(self, cwd: Path, store: str) -> None:
        self.log = cwd / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "work.cli", "worker", "tasks:worker", "--store", store],
                cwd=cwd,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        """What the process printed so far."""
        return self.log.read_text()

    def wait_output(self, text: str) -> None:
        """Wait until ``text`` is printed."""
        wait_for(lambda: text in self.output() or self.proc.poll() is not None, 30, text)
        assert text in self.output(), self.output()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[float], Proc]]:
    """Start workers running SYNC_MODULE with a given grace; kill what is left at the end."""
    procs: list[Proc] = []

    def start(grace: float) -> Proc:
        (tmp_path / "tasks.py").write_text(SYNC_MODULE.format(grace=grace))
        proc = Proc(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}")
        procs.append(proc)
        proc.wait_output("serving")
        return proc

    yield start
    for proc in procs:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_wedged_sync_job_does_not_keep_the_worker_alive(
    tmp_path: Path, spawn: Callable[[float], Proc], signum: signal.Signals
) -> None:
    """One signal drains: after the grace the wedged thread is abandoned, the job handed back
    without using an attempt, and the process exits 0 instead of hanging."""
    proc = spawn(0.5)
    started = tmp_path / "started"
    with SyncQueue(f"sqlite:///{tmp_path / 'jobs.db'}") as queue:
        rec = queue.enqueue(work.Job("wedged", {"started": str(started)}))
        wait_for(started.exists, 30, "the wedged job to start")
        proc.proc.send_signal(signum)
        assert proc.proc.wait(timeout=20) == 0
        back = queue.get(rec.id)
    assert back is not None and (back.state, back.attempts) == (JobState.QUEUED, 0)
    assert "exiting without waiting for them" in proc.output()


def test_a_second_signal_exits_at_once_with_a_wedged_job(
    tmp_path: Path, spawn: Callable[[float], Proc]
) -> None:
    """With a long grace, a second SIGTERM exits at once and still hands the wedged job back."""
    proc = spawn(600)
    started = tmp_path / "started"
    with SyncQueue(f"sqlite:///{tmp_path / 'jobs.db'}") as queue:
        rec = queue.enqueue(work.Job("wedged", {"started": str(started)}))
        wait_for(started.exists, 30, "the wedged job to start")
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_output("draining")
        began = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) == 0
        assert time.monotonic() - began < 10
        back = queue.get(rec.id)
    assert back is not None and (back.state, back.attempts) == (JobState.QUEUED, 0)
    assert "stopping at once" in proc.output()


def test_a_sync_job_finishing_within_the_grace_is_recorded_once(
    tmp_path: Path, spawn: Callable[[float], Proc]
) -> None:
    """A sync job that finishes during the grace is stored SUCCEEDED, not handed back."""
    proc = spawn(20)
    started, done = tmp_path / "started", tmp_path / "done"
    with SyncQueue(f"sqlite:///{tmp_path / 'jobs.db'}") as queue:
        args = {"started": str(started), "done": str(done), "seconds": 1}
        rec = queue.enqueue(work.Job("slow", args))
        wait_for(started.exists, 30, "the job to start")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=30) == 0
        final = queue.get(rec.id)
    assert final is not None and final.state is JobState.SUCCEEDED
    assert final.result == "finished" and done.read_text() == "done\n"


def test_a_sync_job_outliving_the_grace_is_handed_back_and_its_late_result_dropped(
    tmp_path: Path, spawn: Callable[[float], Proc]
) -> None:
    """A sync job still running when the grace ends is handed back once; its thread's late
    result is never recorded (the process does not outlive it), and a second worker then
    runs it to the end exactly once."""
    proc = spawn(0.3)
    started, done = tmp_path / "started", tmp_path / "done"
    with SyncQueue(f"sqlite:///{tmp_path / 'jobs.db'}") as queue:
        args = {"started": str(started), "done": str(done), "seconds": 3}
        rec = queue.enqueue(work.Job("slow", args))
        wait_for(started.exists, 30, "the job to start")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) == 0
        back = queue.get(rec.id)
        assert back is not None and back.state is JobState.QUEUED
        assert not done.exists()
        again = spawn(20)
        final = queue.wait(rec.id, timeout=30)
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(timeout=30) == 0
    assert final.state is JobState.SUCCEEDED and done.read_text() == "done\n"
