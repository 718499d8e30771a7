"""The relay with real processes on 127.0.0.1: uvicorn serving a Starlette app that answers an
HTTP route through relay.do, and `anywork remote` workers joining it over WebSocket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from work import Job, Worker

from .procs import ROOT, TARGET, Server, start_worker, stop_all, wait_until


class Cluster:
    """A relay server and its `anywork remote` workers."""

    def __init__(self) -> None:
        self.server = Server().start()
        self.workers = [start_worker(self.server.ws, "--concurrency", "16") for _ in range(2)]
        self.wait_connected(2)

    def wait_connected(self, n: int) -> None:
        """Wait until ``n`` workers are connected."""
        wait_until(lambda: self.server.state()["connected"] == n, what=f"{n} workers")

    def replace(self, pid: int) -> None:
        """Start a worker in place of the (killed) one with ``pid``."""
        stop_all([w for w in self.workers if w.pid == pid])
        self.workers = [w for w in self.workers if w.pid != pid]
        self.workers.append(start_worker(self.server.ws, "--concurrency", "16"))
        self.wait_connected(2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One relay server with two `anywork remote` workers for the module's tests."""
    made = Cluster()
    try:
        yield made
    finally:
        stop_all(made.workers)
        made.server.stop()


async def _post(client: httpx.AsyncClient, handler: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/do/{handler}", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _client(cluster: Cluster) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=cluster.server.base, limits=limits, timeout=30)


@pytest.mark.anyio
async def test_two_workers_answer_200_concurrent_do_calls(cluster: Cluster) -> None:
    """200 concurrent requests, each answered through relay.do: all 200 OK with their own
    args, spread over both worker processes."""
    results: dict[int, dict[str, Any]] = {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        results[i] = await _post(client, "echo", {"i": i, "sleep": 0.01})

    with anyio.fail_after(45):
        async with _client(cluster) as client, anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, client, i)
    assert sorted(results) == list(range(200))
    assert all(r["status"] == 200 and r["result"]["args"]["i"] == i for i, r in results.items())
    pids = {r["result"]["pid"] for r in results.values()}
    assert pids == {w.pid for w in cluster.workers}


@pytest.mark.anyio
async def test_worker_sigkilled_mid_job_is_redelivered(cluster: Cluster, tmp_path: Path) -> None:
    """A worker SIGKILLed while it runs a job: the job goes to the other worker, which answers."""
    marks = tmp_path / "marks"
    out: dict[str, Any] = {}

    async def call(client: httpx.AsyncClient) -> None:
        out.update(await _post(client, "hold", {"marks": str(marks), "_timeout": 20}))

    with anyio.fail_after(30):
        async with _client(cluster) as client, anyio.create_task_group() as tg:
            tg.start_soon(call, client)
            while not marks.exists() or not marks.read_text().strip():
                await anyio.sleep(0.02)
            victim = int(marks.read_text().split()[0])
            os.kill(victim, signal.SIGKILL)
    assert out["status"] == 200, out
    assert out["result"] != victim and out["result"] in {w.pid for w in cluster.workers}
    cluster.replace(victim)


@pytest.mark.anyio
async def test_custom_scaler_hears_inbound_done_and_timed_out(cluster: Cluster) -> None:
    """A Scaler given to the relay is called inbound then done for an answered job, and
    inbound then timed_out for one no worker can take (503)."""
    async with _client(cluster) as client:
        before = len((await client.get("/hooks")).json())
        assert (await _post(client, "noop", {}))["status"] == 200
        missing = await _post(client, "no_such_handler", {"_timeout": 0.3})
        calls = (await client.get("/hooks")).json()[before:]
    assert missing["status"] == 503
    assert [c[0] for c in calls] == ["inbound", "done", "inbound", "timed_out"]
    assert calls[0][1:] == [1, 0, 2]  # pending, in_flight, connected when the job came in


@pytest.mark.anyio
async def test_worker_connect_in_process_runs_jobs_and_leaves_when_idle(cluster: Cluster) -> None:
    """``await worker.connect(url, ...)`` (asyncio and trio) joins, runs a job only it has
    through its own handler, and returns once idle for ``idle_exit`` seconds."""
    worker = Worker(name="in-process")
    seen: list[dict[str, str]] = []

    @worker.handler("in_process")
    async def in_process(job: Job) -> int:
        seen.append(job.headers)
        return os.getpid()

    answer: dict[str, Any] = {}
    with anyio.fail_after(20):
        async with worker, _client(cluster) as client, anyio.create_task_group() as tg:

            async def ask() -> None:
                while cluster.server.state()["connected"] < 3:
                    await anyio.sleep(0.05)
                answer.update(await _post(client, "in_process", {}))

            tg.start_soon(ask)
            await worker.connect(cluster.server.ws, token="s3cret", idle_exit=0.5)
    assert answer["status"] == 200 and answer["result"] == os.getpid()
    assert len(seen) == 1


def test_wrong_token_is_refused_and_the_worker_exits_1(cluster: Cluster) -> None:
    """`anywork remote --token wrong`: the relay refuses the connection; exit 1, one line."""
    proc = start_worker(cluster.server.ws, token="wrong", capture=True)
    try:
        assert proc.wait(30) == 1
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    finally:
        stop_all([proc])
    assert "refused this worker's token (HTTP 403)" in err
    assert "Traceback" not in err


def test_relay_restart_workers_reconnect() -> None:
    """The relay process killed and started again on its port: the worker reconnects with
    backoff and the next do is answered by the same process."""
    server = Server().start()
    worker = start_worker(server.ws)
    try:
        wait_until(lambda: server.state()["connected"] == 1, what="the worker")
        first = httpx.post(f"{server.base}/do/echo", json={}, timeout=20).json()
        server.stop(kill=True)
        server.start()
        wait_until(lambda: server.state()["connected"] == 1, what="the worker to reconnect")
        again = httpx.post(f"{server.base}/do/echo", json={}, timeout=20).json()
    finally:
        stop_all([worker])
        server.stop()
    assert first["status"] == again["status"] == 200
    assert first["result"]["pid"] == again["result"]["pid"] == worker.pid
    assert worker.returncode == 0  # SIGTERM: left the relay cleanly


def test_relay_under_hypercorn_on_trio_serves_trio_workers_and_redelivers(tmp_path: Path) -> None:
    """The relay's own code is anyio only: served by Hypercorn on trio (real sockets), two
    `anywork remote --backend trio` workers answer concurrent calls, and a job whose worker is
    SIGKILLed mid-job is answered by the other one."""
    server = Server("s3cret", "--hypercorn-trio").start()
    workers = [start_worker(server.ws, "--backend", "trio") for _ in range(2)]
    try:
        wait_until(lambda: server.state()["connected"] == 2, what="two trio workers")

        def ask(i: int) -> dict[str, Any]:
            data: dict[str, Any] = httpx.post(
                f"{server.base}/do/echo", json={"i": i, "sleep": 0.05}, timeout=30
            ).json()
            return data

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(40)))
        assert [a["status"] for a in answers] == [200] * 40
        assert [a["result"]["args"]["i"] for a in answers] == list(range(40))
        assert {a["result"]["pid"] for a in answers} == {w.pid for w in workers}

        marks = tmp_path / "marks"
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(
                lambda: httpx.post(
                    f"{server.base}/do/hold", json={"marks": str(marks), "_timeout": 20}, timeout=30
                ).json()
            )
            wait_until(lambda: marks.exists() and bool(marks.read_text().strip()), what="hold")
            victim = int(marks.read_text().split()[0])
            os.kill(victim, signal.SIGKILL)
            out = held.result(timeout=30)
        assert out["status"] == 200, out
        assert out["result"] != victim and out["result"] in {w.pid for w in workers}
    finally:
        stop_all(workers)
        server.stop()


def test_process_scaler_starts_workers_from_zero_and_they_exit_when_idle() -> None:
    """With no worker, a burst of requests makes ProcessScaler start `anywork remote`
    processes (at most max_processes=2); they answer, then exit once idle and are reaped."""
    server = Server("s3cret", "--process-scaler").start()
    try:
        assert server.state()["connected"] == 0

        def ask(i: int) -> dict[str, Any]:
            body = {"i": i, "sleep": 0.2}
            data: dict[str, Any] = httpx.post(
                f"{server.base}/do/echo", json=body, timeout=30
            ).json()
            return data

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(6)))
        assert [a["status"] for a in answers] == [200] * 6
        state = server.state()
        assert 1 <= state["started"] <= 2
        wait_until(lambda: server.state()["processes"] == 0, what="idle workers to exit")
        assert server.state()["connected"] == 0
    finally:
        server.stop()


def test_remote_command_rejects_bad_arguments() -> None:
    """`anywork remote` with a bad URL or target: exit 2 with one line naming it."""
    bad_url = subprocess.run(
        [sys.executable, "-m", "work.cli", "remote", "ftp://x", TARGET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad_url.returncode == 2 and "ftp://x" in bad_url.stderr
    bad_target = subprocess.run(
        [sys.executable, "-m", "work.cli", "remote", "ws://127.0.0.1:1/", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad_target.returncode == 2 and "module:attr" in bad_target.stderr


@pytest.mark.anyio
async def test_worker_of_another_protocol_version_is_refused_clearly(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker speaking protocol version 2 to this relay (version 1) is refused with a
    reason naming both versions, and gives up instead of reconnecting."""
    from work.remote import _client

    monkeypatch.setattr(_client, "PROTOCOL_VERSION", 2)
    worker = Worker(name="future")
    worker.register("noop", lambda job: None)
    with anyio.fail_after(20):
        async with worker:
            with pytest.raises(ConnectionRefusedError, match=r"version 2.*speaks 1"):
                await worker.connect(cluster.server.ws, token="s3cret")
