"""Scalers: the Scaler protocol (jobber's three hooks) and ProcessScaler (local processes)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._relay import RelayState

__all__ = ["ProcessScaler", "Scaler"]

_log = logging.getLogger("anywork.remote")

# A started process counts as coming capacity until it has joined or this many seconds passed.
_STARTUP_GRACE = 15.0
# The token travels to child processes in the environment, never on their command line.
TOKEN_ENV = "ANYWORK_RELAY_TOKEN"


@runtime_checkable
class Scaler(Protocol):
    """Told by a Relay how its load changes, to start and stop workers (jobber's scheduler).

    Each hook is a plain method the relay calls on its event loop with a fresh RelayState: it
    must not block (start a process with ``Popen``, post a request from a task of your own,
    never wait for a worker to join). An exception in a hook is logged and ignored.
    """

    def inbound(self, state: RelayState) -> None:
        """A job came in (or came back after its worker went): start a worker if it needs one.

        ``state.pending`` counts it; ``state.capacity`` is the free slots of the workers there.
        """

    def done(self, state: RelayState) -> None:
        """A job ended with a worker's answer (or with 502, its workers gone)."""

    def timed_out(self, state: RelayState) -> None:
        """A job ended without an answer: 503 (no worker took it) or 504 (no answer in time)."""


class ProcessScaler:
    """Starts ``anywork remote`` processes on this machine while work outruns free capacity.

    Each process joins the relay at ``url`` with the Worker ``target`` and leaves (exits) once
    it has been idle for ``idle_exit`` seconds, so the pool shrinks by itself. Exited processes
    are reaped at every hook. ``close()`` stops the ones still running.

    Args:
        target: the Worker as ``module:attr`` (importable from ``cwd``).
        url: the relay's WebSocket URL (``ws://127.0.0.1:8000/v1/relay``).
        token: the relay's bearer token (passed to the children in their environment).
        max_processes: at most this many processes at once.
        idle_exit: seconds a process stays without work before it exits.
        concurrency: jobs at once per process (None: the Worker's max_concurrency, else 16).
        cwd: the children's working directory (default: this process's).

    Raises:
        ValueError: a malformed target, max_processes < 1, idle_exit not > 0.
    """

    def __init__(
        self,
        target: str,
        *,
        url: str,
        token: str | None = None,
        max_processes: int = 4,
        idle_exit: float = 30.0,
        concurrency: int | None = None,
        cwd: str | None = None,
    ) -> None:
        module, sep, attr = str(target).partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"target must be module:attr, got {target!r}")
        if isinstance(max_processes, bool) or not isinstance(max_processes, int):
            raise TypeError(f"max_processes must be an int, got {max_processes!r}")
        if max_processes < 1:
            raise ValueError(f"max_processes must be >= 1, got {max_processes}")
        if isinstance(idle_exit, bool) or not isinstance(idle_exit, int | float) or idle_exit <= 0:
            raise ValueError(f"idle_exit must be a number of seconds > 0, got {idle_exit!r}")
        self.target = target
        self.url = url
        self.token = token
        self.max_processes = max_processes
        self.idle_exit = float(idle_exit)
        self.concurrency = concurrency
        self.cwd = cwd
        self._procs: list[subprocess.Popen[bytes]] = []
        # Started processes not yet seen joining: (process, workers connected then, when).
        self._starting: list[tuple[subprocess.Popen[bytes], int, float]] = []
        self.started = 0

    @property
    def processes(self) -> int:
        """The processes running now (exited ones are reaped first)."""
        self._reap()
        return len(self._procs)

    def command(self) -> list[str]:
        """The command line of one worker process."""
        cmd = [sys.executable, "-m", "work.cli", "remote", self.url, self.target]
        cmd += ["--idle-exit", f"{self.idle_exit:g}"]
        if self.concurrency is not None:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd

    def inbound(self, state: RelayState) -> None:
        """Start a process when pending jobs exceed free and coming capacity."""
        self._reap()
        now = time.monotonic()
        self._starting = [
            (p, seen, at)
            for p, seen, at in self._starting
            if p.poll() is None and state.connected <= seen and now - at < _STARTUP_GRACE
        ]
        coming = len(self._starting) * (self.concurrency or 1)
        if state.pending > state.capacity + coming and len(self._procs) < self.max_processes:
            self._spawn(state)

    def done(self, state: RelayState) -> None:
        """Reap exited processes."""
        self._reap()

    def timed_out(self, state: RelayState) -> None:
        """Reap exited processes."""
        self._reap()

    def _spawn(self, state: RelayState) -> None:
        env = dict(os.environ)
        if self.token is not None:
            env[TOKEN_ENV] = self.token
        proc = subprocess.Popen(self.command(), cwd=self.cwd, env=env, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        self._starting.append((proc, state.connected, time.monotonic()))
        self.started += 1
        _log.info("started worker process %d (%d running)", proc.pid, len(self._procs))

    def _reap(self) -> None:
        self._procs = [p for p in self._procs if p.poll() is None]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the running processes (SIGTERM: they finish their jobs), killing stragglers."""
        for proc in self._procs:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self._starting.clear()

    def __repr__(self) -> str:
        return (
            f"<ProcessScaler {self.target!r} url={self.url!r} processes={len(self._procs)}"
            f"/{self.max_processes}>"
        )
