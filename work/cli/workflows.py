"""The ``anywork workflows`` commands: list, show and cancel workflows in a store."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import anyio

from .._durable.queue import Queue
from ..stores import mask_url
from ..workflows import WorkflowRecord, WorkflowState
from ._common import CLIError, connected, int_arg, open_store_of

__all__ = ["add_workflows_parser", "workflow_to_dict"]


def workflow_to_dict(record: WorkflowRecord) -> dict[str, Any]:
    """The record as JSON-ready values (times in ISO 8601)."""
    return {
        "id": record.id,
        "kind": record.kind,
        "name": record.name,
        "state": record.state.value,
        "current": record.current,
        "jobs": list(record.jobs),
        "result": record.result,
        "error": record.error,
        "on_error": record.on_error,
        "created_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
    }


async def _list(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        try:
            records = await Queue(store).list_workflows(
                state=ns.state, limit=ns.limit, after=ns.after
            )
        except (ValueError, TypeError) as exc:
            raise CLIError(str(exc), 2) from None
    if ns.json:
        print(json.dumps([workflow_to_dict(r) for r in records], indent=2))
        return 0
    if not records:
        print("no workflows")
        return 0
    rows = [("ID", "KIND", "STATE", "STEP", "NAME")]
    rows += [
        (r.id, r.kind, r.state.value, f"{r.current}/{len(r.jobs)}", r.name or "-") for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _get(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        queue = Queue(store)
        try:
            record = await queue.get_workflow(ns.id)
        except (ValueError, TypeError) as exc:
            raise CLIError(str(exc), 2) from None
        if record is None:
            raise CLIError(f"no workflow with id {ns.id!r} in {mask_url(ns.store)}")
        steps = {j.id: j for j in await queue.list(workflow_id=ns.id, limit=len(record.jobs) + 1)}
    data = workflow_to_dict(record)
    data["steps"] = [
        {
            "job_id": id,
            "handler": steps[id].handler if id in steps else None,
            "state": steps[id].state.value if id in steps else "pending",
            "attempts": steps[id].attempts if id in steps else 0,
        }
        for id in record.jobs
    ]
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    for key in ("id", "kind", "name", "state", "current", "result", "error", "on_error"):
        value = data[key]
        print(f"{key.ljust(11)}  {value if isinstance(value, str) else json.dumps(value)}")
    print(f"{'created_at'.ljust(11)}  {data['created_at']}")
    print(f"{'finished_at'.ljust(11)}  {data['finished_at'] or '-'}")
    for i, s in enumerate(data["steps"]):
        mark = ">" if i == record.current and record.state is WorkflowState.RUNNING else " "
        print(f"{mark} {i:>3}  {s['job_id']}  {s['handler'] or '-'}  {s['state']}")
    return 0


async def _cancel(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        queue = Queue(store)
        if await queue.cancel_workflow(ns.id):
            print(f"cancelled {ns.id}")
            return 0
        record = await queue.get_workflow(ns.id)
    if record is None:
        raise CLIError(f"no workflow with id {ns.id!r} in {mask_url(ns.store)}")
    raise CLIError(f"workflow {ns.id} is already {record.state.value}; nothing to cancel")


def _run(command: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(ns: argparse.Namespace) -> int:
        result: int = anyio.run(command, ns)
        return result

    return run


def add_workflows_parser(
    sub: argparse._SubParsersAction[Any],
    add_store: Callable[[argparse.ArgumentParser], None],
    parser_class: type[argparse.ArgumentParser],
) -> None:
    """Add the ``workflows`` command group (``get``, ``list``, ``cancel``).

    Args:
        sub: the program's sub-parsers.
        add_store: adds the ``--store`` and ``--store-option`` options.
        parser_class: the program's parser class (its error format).
    """
    group = sub.add_parser("workflows", help="list, show or cancel workflows")
    group_sub = group.add_subparsers(
        dest="workflows_command", required=True, parser_class=parser_class
    )
    ls = group_sub.add_parser("list", help="list workflows, oldest first")
    add_store(ls)
    ls.add_argument("--state", choices=[s.value for s in WorkflowState])
    ls.add_argument("--limit", type=int_arg(0), default=100)
    ls.add_argument("--after", metavar="ID", help="the last id of the previous page")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_run(_list))
    get = group_sub.add_parser("get", help="show one workflow and its steps")
    get.add_argument("id")
    add_store(get)
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(func=_run(_get))
    cancel = group_sub.add_parser("cancel", help="cancel a running workflow")
    cancel.add_argument("id")
    add_store(cancel)
    cancel.set_defaults(func=_run(_cancel))
