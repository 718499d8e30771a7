"""``anywork schedules …``, ``anywork scheduler`` and the worker's ``--scheduler`` and
``--schedules`` options."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._core.job import Job
from .._core.retry import RetryPolicy
from .._runtime.worker import Worker
from ..scheduling import (
    Schedule,
    Scheduler,
    ScheduleRecord,
    Schedules,
    Webhook,
    WebhookHandler,
    keep_public_url,
)
from ..scheduling._webhook import WEBHOOK_HANDLER, _check_public_url
from ..stores import JobRecord, JobState, Store
from ._common import CLIError, connected, log, open_store_of

__all__ = [
    "add_commands",
    "add_worker_options",
    "beside_worker",
    "child_options",
    "load_schedules",
    "public_url_arg",
    "register_webhooks",
    "schedule_to_dict",
]

AddStore = Callable[[argparse.ArgumentParser], None]
Run = Callable[
    [Callable[[argparse.Namespace], Awaitable[int]]], Callable[[argparse.Namespace], int]
]


# --------------------------------------------------------------------------- printing


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def schedule_to_dict(record: ScheduleRecord) -> dict[str, Any]:
    """A JSON-ready dict of a schedule record: the schedule's own fields, then its state.

    Args:
        record: a stored schedule's record.
    """
    schedule = record.schedule
    spec = schedule.to_spec()
    return {
        **{k: v for k, v in spec.items() if k != "target"},
        "target": spec["target"],
        "next_fire_at": _iso(record.next_fire_at),
        "last_fire_at": _iso(record.last_fire_at),
        "last_success": record.last_success.id if record.last_success else None,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
    }


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _short(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _job_row(r: JobRecord) -> list[str]:
    status = "-" if int(r.status) < 0 else str(int(r.status))
    return [r.id, str(r.state), status, _short(r.scheduled_for), _short(r.finished_at)]


# --------------------------------------------------------------------------- commands


@contextlib.contextmanager
def _bad_input() -> Any:
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc), 2) from None


@contextlib.asynccontextmanager
async def _schedules(ns: argparse.Namespace) -> AsyncIterator[Schedules]:
    async with connected(open_store_of(ns)) as store:
        yield Schedules(store)


def _unknown(ns: argparse.Namespace) -> CLIError:
    return CLIError(f"no schedule with id {ns.id!r}")


async def _cmd_list(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        with _bad_input():
            records = await schedules.list(
                prefix=ns.prefix, enabled=ns.enabled, limit=ns.limit, after=ns.after
            )
    if ns.json:
        _print_json([schedule_to_dict(r) for r in records])
        return 0
    if not records:
        print("no schedules")
        return 0
    headers = ("ID", "EXPRESSION", "TZ", "ENABLED", "NEXT FIRE (UTC)", "LAST FIRE (UTC)")
    rows = [
        [
            r.schedule.id,
            r.schedule.expression,
            r.schedule.timezone,
            "yes" if r.schedule.enabled else "no",
            _short(r.next_fire_at),
            _short(r.last_fire_at),
        ]
        for r in records
    ]
    print(_table(headers, rows))
    return 0


async def _cmd_get(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        record = await schedules.get(ns.id)
    if record is None:
        raise _unknown(ns)
    data = schedule_to_dict(record)
    data["next_fires"] = [_iso(when) for when in _upcoming(record, ns.next)]
    if ns.json:
        _print_json(data)
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"{key.ljust(width)}  {shown}")
    return 0


def _upcoming(record: ScheduleRecord, n: int) -> builtins.list[datetime]:
    """The next ``n`` fires of a stored schedule, counted from its stored anchor."""
    out: list[datetime] = []
    when = record.next_fire_at
    anchor = record.anchor or datetime.now(UTC)
    while when is not None and len(out) < n:
        out.append(when)
        when = record.schedule.next_after(when, anchor=anchor)
    return out


async def _cmd_put(ns: argparse.Namespace) -> int:
    try:
        args = json.loads(ns.args)
    except ValueError as exc:
        raise CLIError(f"--args is not valid JSON ({exc}): {ns.args!r}", 2) from None
    if not isinstance(args, dict):
        raise CLIError(f"--args must be a JSON object, got {type(args).__name__}", 2)
    if ns.webhook is None and (ns.payload is not None or ns.no_callback):
        raise CLIError("--payload and --no-callback go with --webhook URL", 2)
    with _bad_input():
        target: Job | Webhook
        if ns.webhook is not None:
            target = Webhook(
                ns.webhook,
                payload=ns.payload or "",
                callback=not ns.no_callback,
                queue=ns.queue,
            )
        else:
            target = Job(ns.job, args, queue=ns.queue)
        schedule = Schedule(
            ns.id,
            ns.expression,
            target,
            timezone=ns.tz,
            enabled=not ns.disabled,
            exclusive=ns.exclusive,
            ttl=ns.ttl,
            misfire_grace=ns.misfire_grace,
            retry=RetryPolicy(max_attempts=ns.max_attempts) if ns.max_attempts else None,
            description=ns.description,
        )
    async with _schedules(ns) as schedules:
        record = await schedules.put(schedule)
    if ns.json:
        _print_json(schedule_to_dict(record))
    else:
        next_fire = _short(record.next_fire_at)
        print(f"{record.schedule.id}  {record.schedule.expression}  next={next_fire}")
    return 0


async def _cmd_delete(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        if not await schedules.delete(ns.id):
            raise _unknown(ns)
    print(f"deleted {ns.id}")
    return 0


async def _cmd_pause(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        try:
            await schedules.pause(ns.id)
        except LookupError:
            raise _unknown(ns) from None
    print(f"paused {ns.id}")
    return 0


async def _cmd_resume(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        try:
            record = await schedules.resume(ns.id)
        except LookupError:
            raise _unknown(ns) from None
    print(f"resumed {ns.id}  next={_short(record.next_fire_at)}")
    return 0


async def _cmd_trigger(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        try:
            record = await schedules.trigger(ns.id)
        except LookupError:
            raise _unknown(ns) from None
    status = "" if int(record.status) < 0 else f" {int(record.status)} {record.error or ''}"
    print(f"{record.id}  {record.state}{status}".rstrip())
    return 0


async def _cmd_executions(ns: argparse.Namespace) -> int:
    async with _schedules(ns) as schedules:
        with _bad_input():
            records = await schedules.executions(
                ns.id, state=ns.state, limit=ns.limit, before=ns.before
            )
    if ns.json:
        from ._main import record_to_dict

        _print_json([record_to_dict(r) for r in records])
        return 0
    if not records:
        print("no executions")
        return 0
    headers = ("ID", "STATE", "STATUS", "SCHEDULED (UTC)", "FINISHED (UTC)")
    print(_table(headers, [_job_row(r) for r in records]))
    return 0


async def _cmd_scheduler(ns: argparse.Namespace) -> int:
    if not ns.poll > 0:
        raise CLIError(f"--poll must be > 0 seconds, got {ns.poll:g}", 2)
    async with connected(open_store_of(ns)) as store, anyio.create_task_group() as tg:
        await tg.start(_stop_on_signal, tg)
        if ns.public_url:
            await keep_public_url(store, ns.public_url)
            log(f"public URL for webhook callbacks: {ns.public_url}")
        log(f"scheduler on store={store.url} poll={ns.poll:g}s pid={os.getpid()}")
        await Scheduler(store, poll=ns.poll).run()
    return 0


async def _stop_on_signal(
    tg: TaskGroup, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log(f"scheduler stopping ({signal.Signals(signum).name})")
            tg.cancel_scope.cancel()
            return


def add_commands(sub: Any, add_store: AddStore, run: Run) -> None:
    """Add ``schedules …`` and ``scheduler`` to the program's sub-commands.

    Args:
        sub: the program's sub-parsers.
        add_store: adds ``--store`` and ``--store-option`` to a parser.
        run: wraps an async command into the function a parser calls.
    """
    group = sub.add_parser("schedules", help="list, change and trigger durable schedules")
    cmds = group.add_subparsers(dest="schedules_command", required=True, parser_class=type(group))

    ls = cmds.add_parser("list", help="list schedules by id")
    add_store(ls)
    ls.add_argument("--prefix", default=None, help="only ids starting with it")
    enabled = ls.add_mutually_exclusive_group()
    enabled.add_argument("--enabled", dest="enabled", action="store_const", const=True)
    enabled.add_argument("--paused", dest="enabled", action="store_const", const=False)
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--after", metavar="ID", help="the last id of the previous page")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run(_cmd_list), enabled=None)

    get = cmds.add_parser("get", help="show one schedule and its next fires")
    get.add_argument("id")
    add_store(get)
    get.add_argument("--next", type=int, default=5, metavar="N", help="next fires to show")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(func=run(_cmd_get))

    put = cmds.add_parser("put", help="create or replace a schedule")
    put.add_argument("id")
    put.add_argument("expression", help="cron(...), rate(...), at(...) or a crontab line")
    add_store(put)
    what = put.add_mutually_exclusive_group(required=True)
    what.add_argument("--job", metavar="HANDLER", help="the handler to run")
    what.add_argument("--webhook", metavar="URL", help="POST to this URL (anywork.webhook)")
    put.add_argument("--args", default="{}", metavar="JSON", help="a JSON object (default: {})")
    put.add_argument("--payload", default=None, metavar="STR", help="a --webhook's payload")
    put.add_argument(
        "--no-callback",
        action="store_true",
        help="a --webhook that succeeds on its 2xx answer instead of waiting for a callback",
    )
    put.add_argument("--queue", default="default")
    put.add_argument("--tz", default="UTC", help="IANA time zone (default: UTC)")
    put.add_argument("--exclusive", action="store_true", help="record overlapping fires as 409")
    put.add_argument(
        "--ttl",
        type=float,
        default=None,
        metavar="S",
        help="execution timeout (a callback --webhook's wait for its callback; required there)",
    )
    put.add_argument("--misfire-grace", type=float, default=60.0, metavar="S")
    put.add_argument("--max-attempts", type=int, default=None, metavar="N")
    put.add_argument("--disabled", action="store_true", help="store it paused")
    put.add_argument("--description", default="")
    put.add_argument("--json", action="store_true", help="print the stored schedule as JSON")
    put.set_defaults(func=run(_cmd_put))

    for name, command, text in (
        ("delete", _cmd_delete, "delete a schedule (its executions stay)"),
        ("pause", _cmd_pause, "stop a schedule firing"),
        ("resume", _cmd_resume, "let a paused schedule fire again, from now"),
        ("trigger", _cmd_trigger, "make one execution now"),
    ):
        parser = cmds.add_parser(name, help=text)
        parser.add_argument("id")
        add_store(parser)
        parser.set_defaults(func=run(command))

    ex = cmds.add_parser("executions", help="a schedule's executions, newest first")
    ex.add_argument("id")
    add_store(ex)
    ex.add_argument("--state", choices=[str(s) for s in JobState])
    ex.add_argument("--limit", type=int, default=100)
    ex.add_argument("--before", metavar="ID", help="the last id of the previous page")
    ex.add_argument("--json", action="store_true", help="print JSON")
    ex.set_defaults(func=run(_cmd_executions))

    sch = sub.add_parser("scheduler", help="run a scheduler (any number may run on one store)")
    add_store(sch)
    sch.add_argument("--poll", type=float, default=1.0, metavar="S", help="(default: 1)")
    _add_public_url(sch)
    sch.set_defaults(func=run(_cmd_scheduler))


# --------------------------------------------------------------------------- the worker's options


def public_url_arg(value: str) -> str:
    """argparse type of ``--public-url``: an absolute http(s) URL, without a trailing ``/``."""
    try:
        return _check_public_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_public_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public-url",
        type=public_url_arg,
        default=None,
        metavar="URL",
        help="the URL webhook callbacks reach anywork serve at; kept in the store for the "
        "anywork.webhook handlers of every process",
    )


async def register_webhooks(ns: argparse.Namespace, worker: Worker, store: Store) -> None:
    """Register ``anywork.webhook`` on ``worker`` (unless it has its own), and keep
    ``--public-url``, if given, in the store's settings."""
    public_url = getattr(ns, "public_url", None)
    if public_url:
        await keep_public_url(store, public_url)
    if WEBHOOK_HANDLER not in worker.handlers:
        worker.register(WEBHOOK_HANDLER, WebhookHandler(store, public_url=public_url))


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--scheduler``, ``--schedules module:attr``, ``--schedules-prefix`` and
    ``--public-url`` to ``anywork worker``."""
    _add_public_url(parser)
    parser.add_argument(
        "--scheduler", action="store_true", help="also run a scheduler in each process"
    )
    parser.add_argument(
        "--schedules",
        default=None,
        metavar="module:attr",
        help="a list of Schedules to sync into the store at start",
    )
    parser.add_argument(
        "--schedules-prefix",
        default="",
        metavar="P",
        help="the id prefix --schedules owns: other schedules under it are deleted "
        "(default: '', every schedule in the store)",
    )


def child_options(ns: argparse.Namespace) -> list[str]:
    """The worker's schedule options again, for a supervised child's command line."""
    out: list[str] = []
    if getattr(ns, "scheduler", False):
        out.append("--scheduler")
    if getattr(ns, "schedules", None):
        out += ["--schedules", ns.schedules, "--schedules-prefix", ns.schedules_prefix]
    if getattr(ns, "public_url", None):
        out += ["--public-url", ns.public_url]
    return out


def load_schedules(spec: str) -> list[Schedule]:
    """Import the schedules named by ``module:attr``: an iterable of Schedule, or a
    zero-argument callable returning one.

    Raises:
        CLIError: a malformed spec or missing module or attribute (code 2), or not Schedules.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"--schedules must be given as module:attr, got {spec!r}", 2)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CLIError(f"cannot import module {module_name!r} (from {spec!r}): {exc}", 2) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}", 2) from None
    if callable(obj):
        obj = obj()
    try:
        schedules = list(obj)
    except TypeError:
        raise CLIError(f"{spec} is not a list of Schedules: {type(obj).__name__}", 2) from None
    for item in schedules:
        if not isinstance(item, Schedule):
            raise CLIError(f"{spec} holds a {type(item).__name__}, not a Schedule", 2)
    return schedules


@contextlib.asynccontextmanager
async def beside_worker(ns: argparse.Namespace, store: Store) -> AsyncIterator[None]:
    """What the worker's schedule options ask for, for the block, once its store is
    connected: sync the declared schedules at the start, and run a scheduler throughout."""
    if getattr(ns, "schedules", None):
        declared = load_schedules(ns.schedules)
        records = await Schedules(store).sync(declared, prefix=ns.schedules_prefix)
        log(f"synced {len(records)} schedules from {ns.schedules} (prefix {ns.schedules_prefix!r})")
    if not getattr(ns, "scheduler", False):
        yield
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(Scheduler(store).run, name="anywork scheduler")
        log("scheduler running beside the worker")
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
