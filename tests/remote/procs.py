"""Real processes for the remote tests: a relay server (uvicorn) and `anywork remote` workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ROOT", "TARGET", "Server", "free_port", "start_worker", "stop_all", "wait_until"]

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests.remote.app:worker"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``check`` (cheap, observable state) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.05)


class Server:
    """``python -m tests.remote.app PORT TOKEN [...]`` on 127.0.0.1, and a look at its state."""

    def __init__(self, token: str = "s3cret", *extra: str, port: int | None = None) -> None:
        self.token = token
        self.extra = extra
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1/relay"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        """Start the server and wait until it answers."""
        cmd = [sys.executable, "-m", "tests.remote.app", str(self.port), self.token, *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        wait_until(self._answers, what=f"the relay server on port {self.port}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the relay server exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.base}/state", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def state(self) -> dict[str, Any]:
        """GET /state."""
        data: dict[str, Any] = httpx.get(f"{self.base}/state", timeout=5).json()
        return data

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL when ``kill``)."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(15)


def start_worker(
    url: str, *args: str, token: str | None = "s3cret", capture: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``anywork remote URL tests.remote.app:worker ARGS`` (stderr piped on ``capture``)."""
    cmd = [sys.executable, "-m", "work.cli", "remote", url, TARGET, *args]
    env = dict(os.environ)
    env.pop("ANYWORK_RELAY_TOKEN", None)
    if token is not None:
        cmd += ["--token", token]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE if capture else None)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the processes still running and reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
