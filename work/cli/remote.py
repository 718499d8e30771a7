"""The ``anywork remote`` command: a worker process that joins a relay over WebSocket."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import anyio

from ._common import CLIError, int_arg, log, seconds_arg
from .worker import load_worker

__all__ = ["add_remote_parser", "run_remote_command"]

# The token may come from the environment (ProcessScaler passes it so): argv is visible to
# every user of the machine in `ps`.
_TOKEN_ENV = "ANYWORK_RELAY_TOKEN"


def add_remote_parser(sub: Any) -> None:
    """Add ``anywork remote URL module:attr`` to the program's sub-commands."""
    r = sub.add_parser("remote", help="join a relay over WebSocket and run the jobs it hands over")
    r.add_argument("url", help="the relay's URL, e.g. ws://127.0.0.1:8000/v1/relay")
    r.add_argument("target", metavar="module:attr", help="a Worker, or a callable returning one")
    r.add_argument(
        "--token", default=None, help=f"the relay's bearer token (default: ${_TOKEN_ENV})"
    )
    r.add_argument("--concurrency", type=int_arg(1), default=None, help="jobs at once")
    r.add_argument(
        "--idle-exit",
        type=seconds_arg(positive=True),
        default=None,
        metavar="SECONDS",
        help="exit after this many seconds without a job (default: never)",
    )
    r.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    r.set_defaults(func=run_remote_command)


def run_remote_command(ns: argparse.Namespace) -> int:
    """Run ``anywork remote``: exit 0 when it leaves (idle or a signal), 1 when refused."""
    from ..remote._client import ws_url

    try:
        ws_url(ns.url)
    except ValueError as exc:
        raise CLIError(str(exc), 2) from None
    worker = load_worker(ns.target)
    token = ns.token if ns.token is not None else os.environ.get(_TOKEN_ENV) or None
    return anyio.run(_run, ns, worker, token, backend=ns.backend)


async def _run(ns: argparse.Namespace, worker: Any, token: str | None) -> int:
    async with worker, anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for signum in received:
                    log(f"{signal.Signals(signum).name}: leaving the relay after in-flight jobs")
                    worker.stop()
                    return

        tg.start_soon(signals)
        log(f"worker {worker.name} joining {ns.url} pid={os.getpid()}")
        try:
            await worker.connect(
                ns.url, token=token, concurrency=ns.concurrency, idle_exit=ns.idle_exit
            )
        except (PermissionError, ConnectionRefusedError) as exc:
            raise CLIError(str(exc)) from None
        except ValueError as exc:
            raise CLIError(str(exc), 2) from None
        finally:
            tg.cancel_scope.cancel()
    log(f"worker {worker.name} left {ns.url}")
    return 0
