"""Module-level sync handlers for the sync_handlers="process" tests (pickled by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from work import Job, Status, StatusError


def pid_then_hang(job: Job) -> None:
    """Write the child's pid to args["pidfile"], then never return."""
    Path(job.args["pidfile"]).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


def add(job: Job) -> int:
    """Return a + b and set 201, from the child process."""
    assert job.ctx is not None and job.ctx.attempt == 1
    job.ctx.status = Status.CREATED
    return int(job.args["a"]) + int(job.args["b"])


def conflict(job: Job) -> None:
    """Raise a StatusError, which travels back pickled."""
    raise StatusError(Status.CONFLICT, "taken")
