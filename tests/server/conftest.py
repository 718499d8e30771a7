"""Fixtures of the HTTP service tests: ``anywork serve`` as a subprocess on 127.0.0.1, on
SQLite and on PostgreSQL (a schema of its own per test), driven over HTTP with httpx."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from work.stores import open_store

POSTGRES_URL = os.environ.get(
    "ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_LISTENING = re.compile(r"serving http://(\S+?):(\d+) ")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy, under a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Served:
    """One ``anywork serve`` process: its URL, its output, and a client for it."""

    def __init__(self, store_args: list[str], extra: list[str], *, token: bool = True) -> None:
        cmd = [sys.executable, "-m", "work.cli", "serve", *store_args, "--http", "127.0.0.1:0"]
        if token:
            cmd += ["--token", TOKEN]
        cmd += extra
        self.store_args = store_args
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "ANYWORK_TOKENS": ""},
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = wait_for(lambda: _LISTENING.search(self.output), 30, "the serving line")
        self.url = f"http://{match.group(1)}:{match.group(2)}"
        self.client = httpx.Client(base_url=self.url, headers=AUTH, timeout=10)
        wait_for(self._live, 30, "/live")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def _live(self) -> bool:
        try:
            return self.client.get("/live").status_code == 200
        except httpx.TransportError:
            return False

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        return "".join(self._lines)

    def shutdown(self) -> None:
        """Stop as an operator would: SIGTERM (drain), a second SIGTERM (stop now), and
        SIGKILL only if the process still runs. A clean exit also saves its coverage data."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and return the exit code."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """``--store`` (and ``--store-option``) for a fresh store: a SQLite file, or a PostgreSQL
    schema of its own, dropped afterwards."""
    if request.param == "sqlite":
        yield ["--store", f"sqlite:///{tmp_path / 'jobs.db'}"]
        return
    schema = f"anywork_test_{uuid.uuid4().hex[:12]}"
    yield ["--store", POSTGRES_URL, "--store-option", f"schema={schema}"]

    async def drop() -> None:
        store: Any = open_store(POSTGRES_URL, schema=schema)
        await store.drop()

    anyio.run(drop)


@pytest.fixture
def serve(store_args: list[str]) -> Iterator[Callable[..., Served]]:
    """Start ``anywork serve`` processes on the test's store; all are stopped afterwards."""
    started: list[Served] = []

    def start(*extra: str, token: bool = True, worker: bool = True) -> Served:
        args = ["tests.server.app:worker", *extra] if worker else [*extra]
        served = Served(store_args, args, token=token)
        started.append(served)
        return served

    yield start
    for served in started:
        served.shutdown()


@pytest.fixture
def service(serve: Callable[..., Served]) -> Served:
    """One ``anywork serve tests.server.app:worker`` with a fast registry heartbeat."""
    return serve("--heartbeat", "0.3")


class Receiver:
    """A tiny webhook receiver: records each JSON body it is sent and answers 200."""

    def __init__(self) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.put(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next(self, timeout: float = 20) -> dict[str, Any]:
        """The next body received."""
        return self.bodies.get(timeout=timeout)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1."""
    r = Receiver()
    yield r
    r.close()
