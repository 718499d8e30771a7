"""The ``anywork jobs watch`` command: print job events as they happen."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable
from datetime import UTC
from typing import Any

import anyio

from .._core.status import Status
from .._durable.events import JobEvent, JobEventKind
from .._durable.queue import Queue
from ._common import connected, log, open_store_of

__all__ = ["add_watch_parser", "format_event"]


def format_event(event: JobEvent) -> str:
    """One line for ``event``: time (UTC), kind, job id, then handler, queue, status and
    attempt (and the progress or the count of a LOST event)."""
    at = event.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    if event.kind is JobEventKind.LOST:
        count = str(event.lost) if event.lost else "an unknown number of"
        return f"{at}  {event.kind.value:<9}  {count} events were dropped"
    status = "-" if event.status is Status.UNKNOWN else str(int(event.status))
    line = (
        f"{at}  {event.kind.value:<9}  {event.job_id}  handler={event.handler} "
        f"queue={event.queue} status={status} attempt={event.attempt}"
    )
    if event.progress is not None:
        fraction = event.progress.get("fraction", 0.0)
        message = event.progress.get("message", "")
        line += f" progress={fraction:.0%}" + (f" {message}" if message else "")
    return line


async def _watch(ns: argparse.Namespace) -> int:
    async with (
        connected(open_store_of(ns)) as store,
        Queue(store).events(kinds=ns.kind, queues=ns.queue) as events,
        anyio.create_task_group() as tg,
    ):

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        # Subscribed: every change from now on is printed (tests and scripts wait for this).
        log(f"watching {store.url} for job events (Ctrl-C to stop)")
        async for event in events:
            if ns.json:
                print(json.dumps(event.to_dict()), flush=True)
            else:
                print(format_event(event), flush=True)
    return 0


def _run_watch(ns: argparse.Namespace) -> int:
    return anyio.run(_watch, ns, backend=ns.backend)


def add_watch_parser(
    jobs_sub: argparse._SubParsersAction[Any],
    add_store: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``watch`` to the ``jobs`` command group.

    Args:
        jobs_sub: the ``jobs`` group's sub-parsers.
        add_store: adds the ``--store`` and ``--store-option`` options.
    """
    watch = jobs_sub.add_parser("watch", help="print job events as they happen, until stopped")
    add_store(watch)
    watch.add_argument("--queue", action="append", help="only this queue (repeatable)")
    kinds = [k.value for k in JobEventKind if k is not JobEventKind.LOST]
    watch.add_argument("--kind", action="append", choices=kinds, help="only this kind (repeatable)")
    watch.add_argument("--json", action="store_true", help="one JSON object per event")
    watch.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    watch.set_defaults(func=_run_watch)
