"""HTTP service throughput: ``POST /v1/jobs``, ``GET /v1/jobs/{id}`` and callbacks (heartbeats
on a waiting webhook execution) against a bare route.

Run ``python -m bench.service [--stores sqlite,postgresql] [--seconds 5] [--connections 32]``.

For each store it starts ``anywork serve --no-scheduler --queues hooks`` (its worker serves
only the queue of the one webhook job the callback run needs, so it does not compete for the
CPU) and, as the baseline, a bare Starlette app whose one route returns a constant,
both under uvicorn on 127.0.0.1. A load generator in a second process (an httpx script: this
module with ``load``) keeps ``--connections`` requests in flight for ``--seconds`` and reports
requests/s and p50/p99 latency; then it runs again paced at half of the measured maximum rate,
where the p99 target applies. Figures are ratios against the bare route measured in the same
run: on a shared machine the absolute numbers move, the ratios much less. Only 127.0.0.1 is
contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

__all__ = ["load", "main"]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TOKEN = "bench-token"


# --------------------------------------------------------------------------- load generator


async def load(
    url: str,
    method: str,
    path: str,
    connections: int,
    seconds: float,
    rate: float | None,
    body: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Keep ``connections`` requests in flight (or, with ``rate``, start that many per second)
    for ``seconds``; return requests/s, p50 and p99 in milliseconds and the error count."""
    latencies: list[float] = []
    errors = 0
    if body is None:
        body = {"handler": "bench", "args": {"n": 1}}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:
        end = time.perf_counter() + seconds
        send, receive = anyio.create_memory_object_stream[None](max_buffer_size=100_000)

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            if method == "POST":
                r = await client.post(path, json=body)
            else:
                r = await client.get(path)
            latencies.append(time.perf_counter() - started)
            if r.status_code >= 400:
                errors += 1

        async def closed_loop() -> None:
            while time.perf_counter() < end:
                await one()

        async def paced() -> None:
            async for _ in receive:
                if time.perf_counter() >= end:
                    return
                await one()

        async def ticker(per_second: float) -> None:
            interval = 1.0 / per_second
            next_at = time.perf_counter()
            while next_at < end:
                next_at += interval
                send.send_nowait(None)
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
            send.close()

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            if rate is None:
                for _ in range(connections):
                    tg.start_soon(closed_loop)
            else:
                tg.start_soon(ticker, rate)
                for _ in range(connections):
                    tg.start_soon(paced)
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "errors": errors,
    }


def _run_load(
    url: str,
    method: str,
    path: str,
    connections: int,
    seconds: float,
    rate: float | None,
    body: dict[str, Any] | None = None,
) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.service", "load", url, method, path]
    cmd += ["--connections", str(connections), "--seconds", str(seconds)]
    if body is not None:
        cmd += ["--body", json.dumps(body)]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120)
    figures: dict[str, float] = json.loads(out.stdout)
    return figures


# --------------------------------------------------------------------------- servers


def _bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def constant(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/bare", constant, methods=["GET", "POST"])])


def _serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(_bare_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "ANYWORK_TOKENS": ""}
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    httpx.get(url + "/live", timeout=1)
                    return proc, url
                except httpx.TransportError:
                    time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)
    if proc.stderr is not None:
        proc.stderr.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the run


def _row(name: str, full: dict[str, float], half: dict[str, float], base: float) -> str:
    return (
        f"  {name:<22} {full['rps']:8.0f} req/s  x{full['rps'] / base:5.2f} of bare   "
        f"p99 {full['p99_ms']:6.1f} ms   at half rate: p99 {half['p99_ms']:6.1f} ms"
        + (f"   errors {int(full['errors'] + half['errors'])}" if full["errors"] else "")
    )


def _measure(
    url: str,
    method: str,
    path: str,
    ns: argparse.Namespace,
    body: dict[str, Any] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    full = _run_load(url, method, path, ns.connections, ns.seconds, None, body)
    half = _run_load(url, method, path, ns.connections, ns.seconds, full["rps"] / 2, body)
    return full, half


def _callback_url(url: str) -> str:
    """Enqueue a callback webhook (queue ``hooks``, the only one the worker serves) to a
    receiver in this process; return its callback URL once the execution waits (heartbeats
    keep it waiting for the whole run)."""
    import queue as queue_module
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: queue_module.Queue[str] = queue_module.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            got.put(body["callback_url"])
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    args = {"url": hook, "callback": True, "ttl": 3600, "queue": "hooks"}
    job = {"handler": "anywork.webhook", "queue": "hooks", "args": args}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    made = httpx.post(url + "/v1/jobs", json=job, headers=headers).json()
    callback = got.get(timeout=30)
    server.shutdown()
    server.server_close()
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/v1/jobs/{made['id']}", headers=headers).json()["state"] != "waiting":
        if time.monotonic() > deadline:
            raise TimeoutError("the webhook job never waited")
        time.sleep(0.05)
    return callback


def _store_args(kind: str, tmp: Path) -> tuple[list[str], str | None]:
    if kind == "sqlite":
        return ["--store", f"sqlite:///{tmp / 'bench.db'}"], None
    schema = f"anywork_bench_{uuid.uuid4().hex[:10]}"
    return ["--store", PG_URL, "--store-option", f"schema={schema}"], schema


def _drop(schema: str) -> None:
    from work.stores import open_store

    async def drop() -> None:
        store: Any = open_store(PG_URL, schema=schema)
        await store.drop()

    anyio.run(drop)


def run(ns: argparse.Namespace) -> None:
    """Measure the bare route, then each store's enqueue and get."""
    port = _free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.service", "bare", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/bare", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        bare_full, bare_half = _measure(url, "GET", "/bare", ns)
        post_full, post_half = _measure(url, "POST", "/bare", ns)
    finally:
        bare.terminate()
        bare.wait(30)
    print(
        f"bare Starlette route (connections={ns.connections}, {ns.seconds:g}s per run; "
        f"a shared machine: read the ratios)"
    )
    print(_row("GET /bare", bare_full, bare_half, bare_full["rps"]))
    print(_row("POST /bare", post_full, post_half, bare_full["rps"]))
    for kind in ns.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            store_args, schema = _store_args(kind, Path(tmp))
            cmd = [sys.executable, "-m", "work.cli", "serve", *store_args, "--no-scheduler"]
            cmd += ["--queues", "hooks"]
            cmd += ["--http", "127.0.0.1:0", "--token", TOKEN]
            proc, url = _start(cmd)
            try:
                enq_full, enq_half = _measure(url, "POST", "/v1/jobs", ns)
                headers = {"Authorization": f"Bearer {TOKEN}"}
                made = httpx.post(url + "/v1/jobs", json={"handler": "bench"}, headers=headers)
                get_full, get_half = _measure(url, "GET", f"/v1/jobs/{made.json()['id']}", ns)
                callback = _callback_url(url).removeprefix(url)
                beat = {"status": "heartbeat"}
                cb_full, cb_half = _measure(url, "POST", callback, ns, beat)
            finally:
                _stop(proc)
                if schema is not None:
                    _drop(schema)
        print(f"{kind}:")
        print(_row("POST /v1/jobs", enq_full, enq_half, post_full["rps"]))
        print(_row("GET /v1/jobs/{id}", get_full, get_half, bare_full["rps"]))
        print(_row("POST /v1/callback (beat)", cb_full, cb_half, post_full["rps"]))
    print(
        "ratios: POST /v1/jobs and POST /v1/callback against POST /bare, "
        "GET /v1/jobs/{id} against GET /bare"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run the benchmark, or one of its helper processes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bare"]:
        _serve_bare(int(args[1]))
        return 0
    if args[:1] == ["load"]:
        parser = argparse.ArgumentParser(prog="python -m bench.service load")
        parser.add_argument("url")
        parser.add_argument("method")
        parser.add_argument("path")
        parser.add_argument("--connections", type=int, default=32)
        parser.add_argument("--seconds", type=float, default=5.0)
        parser.add_argument("--rate", type=float, default=None)
        parser.add_argument("--body", type=json.loads, default=None)
        lns = parser.parse_args(args[1:])
        figures = anyio.run(
            load, lns.url, lns.method, lns.path, lns.connections, lns.seconds, lns.rate, lns.body
        )
        print(json.dumps(figures))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    run(parser.parse_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
