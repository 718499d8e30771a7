"""The ``anywork serve`` command (the HTTP API and a worker in one process) and
``anywork workers`` (the worker registry)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from datetime import UTC, datetime

import anyio

from .._durable.queue import Queue
from .._runtime.worker import Worker
from ..stores import WorkerInfo
from ._common import CLIError, connect_patiently, connected, entered, log, open_store_of
from .worker import _bind, _uvicorn_server, _watch_signals, load_worker

__all__ = ["run_serve_command", "run_workers_command"]

_TOKENS_ENV = "ANYWORK_TOKENS"
_SECRET_ENV = "ANYWORK_SECRET"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tokens(ns: argparse.Namespace) -> list[str]:
    from ..server._auth import parse_tokens

    given = [t.strip() for t in ns.token if t.strip()]
    return given + parse_tokens(os.environ.get(_TOKENS_ENV))


def run_serve_command(ns: argparse.Namespace) -> int:
    """``anywork serve``: check the options, then run the API (and the worker) until
    SIGTERM/SIGINT; return the exit code.

    Raises:
        CLIError: a bad option, no token without ``--insecure``, ``--insecure`` off loopback,
            or a worker that cannot be loaded (code 2).
    """
    try:
        import pydantic  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CLIError(
            "serve needs the server extra (starlette, uvicorn, pydantic): "
            "pip install 'anywork[server]'",
            2,
        ) from None
    host, _ = ns.http
    tokens = _tokens(ns)
    if not tokens and not ns.insecure:
        raise CLIError(
            f"refusing to serve without a token: give --token or {_TOKENS_ENV} "
            f"(or --insecure, on a loopback address only)",
            2,
        )
    if not tokens and not _loopback(host):
        raise CLIError(f"--insecure serves on loopback only (127.0.0.1, ::1), not {host!r}", 2)
    if ns.concurrency is not None and ns.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, got {ns.concurrency}", 2)
    queues = tuple(q for q in ns.queues.split(",") if q)
    if not queues:
        raise CLIError(f"--queues must name at least one queue, got {ns.queues!r}", 2)
    open_store_of(ns)  # a bad URL or a missing driver fails here, before anything starts
    worker: Worker | None = None
    if not ns.no_worker:
        worker = load_worker(ns.target) if ns.target else Worker(name="anywork-serve")
    elif ns.target:
        raise CLIError("--no-worker runs no worker: drop module:attr or --no-worker", 2)
    code: int = anyio.run(_serve, ns, worker, tokens, queues)
    return code


async def _serve(
    ns: argparse.Namespace, worker: Worker | None, tokens: list[str], queues: tuple[str, ...]
) -> int:
    from ..server import create_app

    store = open_store_of(ns)
    secret = os.environ.get(_SECRET_ENV)
    stop = anyio.Event()
    sock = _bind(*ns.http)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    # Callback URLs handed to webhooks: the public URL, else where this process listens.
    public_url = ns.public_url or f"http://{shown}:{port}"
    app = create_app(
        store,
        tokens=tokens or None,
        secret=secret or None,
        public_url=public_url,
        read_only_tokens=[t.strip() for t in ns.read_only_token if t.strip()],
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, stop, tg.cancel_scope)
        try:
            if not await connect_patiently(store, stop):
                return 0
            from .schedules import beside_worker

            # --schedules: the declared schedules are synced into the store before serving.
            async with (
                entered(store),
                beside_worker(ns, store),
                anyio.create_task_group() as serving,
            ):
                server = _uvicorn_server(app)
                serving.start_soon(server.serve, [sock])
                auth = "bearer tokens" if tokens else "NO AUTH (--insecure)"
                log(f"serving http://{shown}:{port} store={store.url} auth={auth}")
                try:
                    if ns.no_scheduler:
                        await _run_worker_or_wait(ns, worker, store, queues, stop, public_url)
                    else:
                        from ..scheduling import Scheduler

                        # Fires due schedules (exactly once, whatever else runs on the store).
                        async with Scheduler(store):
                            await _run_worker_or_wait(ns, worker, store, queues, stop, public_url)
                finally:
                    server.should_exit = True
        finally:
            sock.close()
            tg.cancel_scope.cancel()
    return 0


async def _run_worker_or_wait(
    ns: argparse.Namespace,
    worker: Worker | None,
    store: object,
    queues: tuple[str, ...],
    stop: anyio.Event,
    public_url: str,
) -> None:
    if worker is None:
        await stop.wait()
    else:
        await _run_worker(ns, worker, store, queues, stop, public_url)


async def _run_worker(
    ns: argparse.Namespace,
    worker: Worker,
    store: object,
    queues: tuple[str, ...],
    stop: anyio.Event,
    public_url: str,
) -> None:
    from .._durable.registry import keep_registered
    from ..scheduling import WebhookHandler
    from ..scheduling._webhook import WEBHOOK_HANDLER
    from ..stores import Store

    assert isinstance(store, Store)
    if WEBHOOK_HANDLER not in worker.handlers:
        worker.register(WEBHOOK_HANDLER, WebhookHandler(store, public_url=public_url))
    concurrency = ns.concurrency or worker.max_concurrency or 16
    async with anyio.create_task_group() as serving:
        async with worker:

            async def serve() -> None:
                await worker.serve(store, queues=queues, concurrency=ns.concurrency)
                stop.set()

            serving.start_soon(serve)
            await serving.start(
                lambda task_status: keep_registered(
                    store,
                    worker,
                    queues=queues,
                    concurrency=concurrency,
                    heartbeat=ns.heartbeat,
                    task_status=task_status,
                )
            )
            log(
                f"worker {worker.name} serving queues={','.join(queues)} "
                f"concurrency={concurrency} handlers={','.join(sorted(worker.handlers)) or '-'}"
            )
            await stop.wait()
            log("draining: stop claiming, finish or hand back")
        # The worker has stopped and handed its jobs back: leave the registry.
        serving.cancel_scope.cancel()


# --------------------------------------------------------------------------- anywork workers


def _worker_dict(info: WorkerInfo, now: datetime) -> dict[str, object]:
    from ..server._schemas import worker_json

    return worker_json(info, now)


async def run_workers_command(ns: argparse.Namespace) -> int:
    """``anywork workers``: list the registered serving workers, live and lost."""
    async with connected(open_store_of(ns), create=False) as store:
        found = await Queue(store).workers()
    now = datetime.now(UTC)
    if ns.json:
        print(json.dumps([_worker_dict(w, now) for w in found], indent=2))
        return 0
    if not found:
        print("no workers")
        return 0
    from ._main import _table

    headers = (
        "ID",
        "STATE",
        "HOST",
        "PID",
        "QUEUES",
        "HANDLERS",
        "RUNNING",
        "DONE",
        "FAILED",
        "SEEN",
    )
    rows = [
        (
            w.id,
            "lost" if w.is_lost(now) else "live",
            w.hostname,
            str(w.pid),
            ",".join(w.queues),
            ",".join(w.handlers) or "-",
            f"{w.running}/{w.concurrency}",
            str(w.processed),
            str(w.failed),
            f"{(now - w.last_seen).total_seconds():.0f}s ago",
        )
        for w in found
    ]
    print(_table(headers, rows, right={3, 6, 7, 8}))
    return 0
