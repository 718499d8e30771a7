"""``anywork worker`` processes in the worker registry: live while serving, lost when killed,
gone when stopped cleanly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from work import Job, JobState, SyncQueue
from work.stores import WorkerInfo

from .test_cli import REPO, WorkerProcess, spawn, store_url, wait_for, worker_dir

__all__ = ["spawn", "store_url", "worker_dir"]  # fixtures, imported for pytest to find


def _states(queue: SyncQueue) -> dict[int, str]:
    now = datetime.now(UTC)
    return {w.pid: "lost" if w.is_lost(now) else "live" for w in queue.workers()}


def test_cli_workers_show_live_then_lost_or_gone(
    spawn: Callable[..., WorkerProcess], store_url: str
) -> None:
    """Two CLI workers register with their queues and handlers and heartbeat; the one
    SIGKILLed is lost after 3 missed beats; the one SIGTERMed leaves the registry."""
    first = spawn("tasks:worker", "--store", store_url, "--heartbeat", "0.3")
    second = spawn("tasks:worker", "--store", store_url, "--heartbeat", "0.3", "--queues", "other")
    with SyncQueue(store_url) as queue:
        wait_for(
            lambda: _states(queue) == {first.proc.pid: "live", second.proc.pid: "live"},
            30,
            "both workers registered live",
        )
        job = queue.enqueue(Job("add", {"a": 1, "b": 2}))
        assert queue.wait(job.id, timeout=30).state is JobState.SUCCEEDED

        def mine() -> WorkerInfo | None:
            found = [w for w in queue.workers() if w.pid == first.proc.pid]
            return found[0] if found and found[0].processed == 1 else None

        info = wait_for(mine, 10, "the first worker's processed count")
        assert info.queues == ("default",) and info.failed == 0 and info.heartbeat == 0.3
        assert {"add", "nap", "anywork.webhook"} <= set(info.handlers)
        assert info.concurrency == 4  # the Worker's max_concurrency
        assert queue.workers(lost=False) != []

        second.kill()
        wait_for(
            lambda: _states(queue) == {first.proc.pid: "live", second.proc.pid: "lost"},
            20,
            "the killed worker to be lost",
        )
        assert first.stop() == 0
        assert _states(queue) == {second.proc.pid: "lost"}
        assert [w.pid for w in queue.workers(lost=False)] == []


def test_the_cli_worker_does_not_import_starlette(tmp_path: Path) -> None:
    """The worker command and the registry it writes load without the server package."""
    code = (
        "import sys, work.cli.worker, work._durable.registry;"
        "print(sorted(m for m in sys.modules if m.startswith(('starlette', 'work.server'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
