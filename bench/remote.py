"""Remote workers: round trips of ``Relay.do`` next to a raw WebSocket echo and a local perform.

Run ``python -m bench.remote [--samples N] [--jobs M] [--inflight K] [--rounds R]``.

One process serves a Starlette app with uvicorn on 127.0.0.1: the relay at ``/v1/relay`` and a
raw echo endpoint at ``/echo``. Worker processes (``anywork remote``) join the relay; echo
peers (the same ``websockets`` client library, no anywork) join ``/echo`` and send back every
frame. For 1 and 4 processes of each kind (both kinds connected at once; the idle kind waits in
its event loop) it measures, from the server's side:

- latency: ``samples`` sequential round trips (a no-op job / one echo frame), p50 and p99;
- throughput: ``jobs`` round trips with ``inflight`` outstanding at once, per second;

each split into ``rounds`` rounds that alternate echo and do (echo first, then do first, ...),
so that a change in the machine's load during the run weighs on both alike;

and a local ``Worker.perform(sync=True)`` of the same no-op in the same run, then the resident
memory of an idle worker process. Targets: do throughput >= 0.5x the echo's, do p50 <= 2x the
echo's p50, idle worker RSS <= 40 MB. The machine is shared: compare the ratios, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from work import Job, Worker
from work.remote import Relay

__all__ = ["main", "worker"]

ROOT = Path(__file__).resolve().parent.parent

# The worker the `anywork remote` processes run.
worker = Worker(name="bench-remote")


@worker.handler("noop")
async def noop(job: Job) -> None:
    """Nothing: the round trip alone."""


class _Echo:
    """The server side of the raw echo: frames out to peers, replies matched by id."""

    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.waiting: dict[int, anyio.Event] = {}
        self.ids = itertools.count()
        self.turn = itertools.count()
        self.joined = anyio.Event()

    async def endpoint(self, ws: Any) -> None:
        await ws.accept()
        self.peers.append(ws)
        self.joined.set()
        try:
            while True:
                reply = json.loads(await ws.receive_text())
                self.waiting.pop(reply["id"]).set()
        except Exception:
            self.peers.remove(ws)

    async def call(self) -> None:
        ident = next(self.ids)
        done = self.waiting[ident] = anyio.Event()
        peer = self.peers[next(self.turn) % len(self.peers)]
        await peer.send_text(json.dumps({"type": "job", "id": ident, "job": {"args": {}}}))
        await done.wait()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(
    call: Callable[[], Awaitable[Any]], samples: int, jobs: int, inflight: int
) -> tuple[list[float], float]:
    """The times (s) of ``samples`` sequential calls, and the seconds ``jobs`` calls took with
    ``inflight`` at once."""
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    left = jobs

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(inflight):
            tg.start_soon(loop)
    return times, time.perf_counter() - start


async def _compare(
    calls: Mapping[str, Callable[[], Awaitable[Any]]],
    samples: int,
    jobs: int,
    inflight: int,
    rounds: int,
) -> list[tuple[str, float, float, float]]:
    """Measure each of ``calls`` in ``rounds`` alternating rounds; return (label, p50 ms,
    p99 ms, per second) for each, from all its rounds together."""
    for call in calls.values():  # warm up
        for _ in range(min(200, samples)):
            await call()
    times: dict[str, list[float]] = {label: [] for label in calls}
    seconds = dict.fromkeys(calls, 0.0)
    order = list(calls)
    for r in range(rounds):
        for label in order if r % 2 == 0 else reversed(order):
            took, spent = await _measure(calls[label], samples // rounds, jobs // rounds, inflight)
            times[label] += took
            seconds[label] += spent
    done = jobs // rounds * rounds
    return [
        (
            label,
            _percentile(times[label], 0.5) * 1e3,
            _percentile(times[label], 0.99) * 1e3,
            done / seconds[label],
        )
        for label in calls
    ]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _at_least(count: Callable[[], int], n: int) -> bool:
    return count() >= n


async def _wait_for(check: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not check():  # noqa: ASYNC110 (uvicorn and the relay offer no event for these)
            await anyio.sleep(0.02)


async def run(
    samples: int, jobs: int, inflight: int, rounds: int = 5
) -> list[tuple[str, float, float, float]]:
    """Measure every row; return (label, p50 ms, p99 ms, per second)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    relay = Relay(timeout=60.0)
    echo = _Echo()
    app = Starlette(
        routes=[WebSocketRoute("/v1/relay", relay.asgi), WebSocketRoute("/echo", echo.endpoint)]
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    rows: list[tuple[str, float, float, float]] = []
    procs: list[subprocess.Popen[bytes]] = []
    async with relay, anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await _wait_for(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"ws://127.0.0.1:{port}"
        try:
            for n in (1, 4):
                peer = [sys.executable, "-m", "bench.remote", "--peer", base]
                cmd = [sys.executable, "-m", "work.cli", "remote", f"{base}/v1/relay"]
                cmd += ["bench.remote:worker", "--concurrency", str(inflight)]
                peers = [_spawn(peer) for _ in range(n)]
                workers = [_spawn(cmd) for _ in range(n)]
                procs = peers + workers
                await _wait_for(partial(_at_least, lambda: len(echo.peers), n))
                await _wait_for(partial(_at_least, lambda: relay.state.connected, n))

                async def do() -> None:
                    (await relay.do(Job("noop"))).raise_for_status()

                calls = {f"raw echo x{n}": echo.call, f"relay.do x{n}": do}
                rows += await _compare(calls, samples, jobs, inflight, rounds)
                if n == 4:
                    await anyio.sleep(1.0)  # let the workers settle into idleness
                    rss = max(_rss_mb(p.pid) for p in workers)
                    rows.append(("idle worker RSS MB", rss, rss, 0.0))
                for proc in procs:
                    proc.terminate()
                await _wait_for(lambda: not echo.peers and relay.state.connected == 0)
                procs = []
        finally:
            for proc in procs:
                proc.terminate()
            server.should_exit = True
    async with worker:

        async def local() -> None:
            (await worker.perform(Job("noop"), sync=True)).raise_for_status()

        rows += await _compare({"local perform": local}, samples, jobs, inflight, 1)
    return rows


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)


async def _peer(base: str) -> None:
    """An echo peer: connect to ``base``/echo with websockets and send back every frame."""
    from websockets.asyncio.client import connect

    async with connect(f"{base}/echo", compression=None) as ws:
        async for frame in ws:
            message = json.loads(frame)
            reply = {"type": "result", "id": message["id"], "status": 200, "result": None}
            await ws.send(json.dumps(reply))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table and the ratios against the targets."""
    parser = argparse.ArgumentParser(prog="python -m bench.remote")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peer", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.peer:
        with contextlib.suppress(Exception):  # the server went: the run is over
            anyio.run(_peer, ns.peer)
        return 0
    rows = anyio.run(run, ns.samples, ns.jobs, ns.inflight, ns.rounds)
    print(f"{'':<22}{'p50 ms':>10}{'p99 ms':>10}{'per s':>12}")
    by = {label: (p50, p99, rate) for label, p50, p99, rate in rows}
    for label, p50, p99, rate in rows:
        if label.startswith("idle"):
            print(f"{label:<22}{p50:>10.1f}")
        else:
            print(f"{label:<22}{p50:>10.3f}{p99:>10.3f}{rate:>12.0f}")
    for n in (1, 4):
        echo, do = by[f"raw echo x{n}"], by[f"relay.do x{n}"]
        print(
            f"x{n}: do/echo throughput {do[2] / echo[2]:.2f} (target >= 0.5), "
            f"do/echo p50 {do[0] / echo[0]:.2f} (target <= 2)"
        )
    print(f"idle worker RSS {by['idle worker RSS MB'][0]:.1f} MB (target <= 40)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
