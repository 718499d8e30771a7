"""The ``anywork`` program: run workers and look at or feed a durable queue from a shell.

::

    anywork worker app:worker --store postgresql://db/jobs --concurrency 16 --http :9000
    anywork enqueue send_email --args '{"to": "a@example.com"}'
    anywork jobs list --state failed
    anywork jobs watch --queue default
    anywork stats

Exit codes: 0 success, 1 a runtime failure (the store cannot be reached, a job is unknown),
2 bad input (a usage error, bad JSON, an unknown URL scheme, a worker that cannot be loaded).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import anyio

from .. import __version__
from .._core.job import Job
from .._core.retry import RetryPolicy
from .._core.status import Status
from .._core.validate import INT_MIN
from .._durable.queue import Queue
from ..stores import JobRecord, JobState, mask_url
from ._common import CLIError, connected, int_arg, open_store_of, seconds_arg
from .jobs import add_watch_parser
from .remote import add_remote_parser
from .schedules import add_commands as add_schedule_commands
from .schedules import add_worker_options
from .worker import load_worker, parse_listen, run_worker_command
from .workflows import add_workflows_parser

__all__ = ["CLIError", "build_parser", "load_worker", "main", "mask_url", "record_to_dict"]

DEFAULT_STORE = "sqlite:///anywork.db"
_PROG = "anywork"


def _compact_time(value: datetime | None, now: datetime) -> str:
    """``HH:MM:SS`` for today (UTC), ``YYYY-MM-DD HH:MM`` otherwise, ``-`` for None."""
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    if value.date() == now.date():
        return value.strftime("%H:%M:%S")
    return value.strftime("%Y-%m-%d %H:%M")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Return an aligned text table; columns whose index is in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _json_value(value: Any) -> Any:
    """Map record values onto JSON: datetimes as ISO 8601, states as names, statuses as ints."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Status):
        return int(value)
    if isinstance(value, JobState):
        return str(value)
    return value


def record_to_dict(record: JobRecord) -> dict[str, Any]:
    """Return a JSON-ready dict of every field of ``record``.

    Args:
        record: a job record from a store.

    Returns:
        The fields by name; datetimes as ISO 8601 strings, ``state`` as its name, ``status``
        as its code.
    """
    return {f.name: _json_value(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _status_text(status: Status) -> str:
    return "-" if status is Status.UNKNOWN else str(int(status))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


# --------------------------------------------------------------------------- queue commands


@contextlib.contextmanager
def _bad_input() -> Iterator[None]:
    """Report the Queue's own refusal of a value (ValueError, TypeError) as bad input: exit 2.

    The Queue checks its arguments before it touches the store, so these name a bad option.
    """
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc), 2) from None


async def _cmd_jobs_list(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        with _bad_input():
            records = await Queue(store).list(
                state=JobState(ns.state) if ns.state else None,
                queue=ns.queue,
                handler=ns.handler,
                limit=ns.limit,
                after=ns.after,
            )
    if ns.json:
        _print_json([record_to_dict(r) for r in records])
        return 0
    if not records:
        print("no jobs")
        return 0
    now = datetime.now(UTC)
    headers = ("ID", "HANDLER", "QUEUE", "STATE", "STATUS", "ATTEMPTS", "ENQUEUED", "FINISHED")
    rows = [
        (
            r.id,
            r.handler,
            r.queue,
            str(r.state),
            _status_text(r.status),
            f"{r.attempts}/{r.max_attempts}",
            _compact_time(r.enqueued_at, now),
            _compact_time(r.finished_at, now),
        )
        for r in records
    ]
    print(_table(headers, rows, right={4, 5}))
    return 0


async def _cmd_jobs_get(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        with _bad_input():
            record = await Queue(store).get(ns.id)
    if record is None:
        raise CLIError(f"no job with id {ns.id!r} in {mask_url(ns.store)}")
    data = record_to_dict(record)
    if ns.json:
        _print_json(data)
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"{key.ljust(width)}  {shown}")
    return 0


async def _cmd_jobs_cancel(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        queue = Queue(store)
        with _bad_input():
            cancelled = await queue.cancel(ns.id)
        if cancelled:
            print(f"cancelled {ns.id}")
            return 0
        record = await queue.get(ns.id)
    if record is None:
        raise CLIError(f"no job with id {ns.id!r} in {mask_url(ns.store)}")
    raise CLIError(f"job {ns.id} is already {record.state}; nothing to cancel")


async def _cmd_jobs_purge(ns: argparse.Namespace) -> int:
    states = ns.state or [JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value]
    async with connected(open_store_of(ns), create=False) as store:
        with _bad_input():
            deleted = await Queue(store).purge(older_than=ns.older_than, states=states)
    print(f"purged {deleted} job{'' if deleted == 1 else 's'}")
    return 0


async def _cmd_jobs_retry(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        try:
            record = await Queue(store).retry(ns.id)
        except LookupError:
            raise CLIError(f"no job with id {ns.id!r} in {mask_url(ns.store)}") from None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    print(f"retrying {record.id}  {record.handler}  queue={record.queue}  {record.state}")
    return 0


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """A duration for the command line: seconds (``90``, ``1.5``) or a number with a unit
    ``s``, ``m``, ``h``, ``d`` or ``w`` (``30d``, ``12h``).

    Raises:
        argparse.ArgumentTypeError: anything else, a negative or a non-finite value.
    """
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (seconds, or a number with s, m, h, d or w: 30d)"
        ) from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be finite and >= 0, got {text!r}")
    return value


async def _cmd_stats(ns: argparse.Namespace) -> int:
    async with connected(open_store_of(ns), create=False) as store:
        stats = await Queue(store).stats()
    if ns.json:
        _print_json(stats)
        return 0
    states = [str(s) for s in JobState]
    rows: list[list[str]] = []
    totals = Counter[str]()
    for queue_name in sorted(stats):
        counts = stats[queue_name]
        totals.update(counts)
        row_total = sum(counts.values())
        rows.append([queue_name, *(str(counts.get(s, 0)) for s in states), str(row_total)])
    rows.append(["TOTAL", *(str(totals.get(s, 0)) for s in states), str(sum(totals.values()))])
    headers = ["QUEUE", *(s.upper() for s in states), "TOTAL"]
    print(_table(headers, rows, right=set(range(1, len(headers)))))
    return 0


async def _cmd_enqueue(ns: argparse.Namespace) -> int:
    try:
        args = json.loads(ns.args)
    except ValueError as exc:
        raise CLIError(f"--args is not valid JSON ({exc}): {ns.args!r}", 2) from None
    if not isinstance(args, dict):
        raise CLIError(f"--args must be a JSON object, got {type(args).__name__}: {ns.args}", 2)
    if ns.delay is not None and ns.delay < 0:
        raise CLIError(f"--delay must be >= 0 seconds, got {ns.delay:g}", 2)
    store = open_store_of(ns)
    options: dict[str, Any] = {
        "delay": ns.delay or None,
        "priority": ns.priority,
        "unique_key": ns.unique_key,
    }
    with _bad_input():
        job = Job(ns.handler, args, queue=ns.queue)
        options["retry"] = None if ns.max_attempts is None else RetryPolicy(ns.max_attempts)
        # Refused before connecting: bad input creates no store (no SQLite file, no schema).
        Queue(store).check(job, **options)
    async with connected(store):
        with _bad_input():
            record = await Queue(store).enqueue(job, **options)
    if ns.json:
        _print_json(record_to_dict(record))
    else:
        print(f"{record.id}  {record.handler}  queue={record.queue}  {record.state}")
    return 0


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become CLIError (code 2) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see {self.prog} --help)", 2)


def _run(
    command: Callable[[argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command so it runs in its own event loop (asyncio: every store's driver)."""

    def run(ns: argparse.Namespace) -> int:
        return anyio.run(command, ns)

    return run


def _add_store(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """Add ``--store`` and ``--store-option``: to the program itself (``top``), where they
    hold the defaults, and to each sub-command, where they override only when given, so
    ``anywork --store URL stats`` and ``anywork stats --store URL`` mean the same."""
    default = os.environ.get("ANYWORK_STORE", DEFAULT_STORE)
    parser.add_argument(
        "--store",
        default=default if top else argparse.SUPPRESS,
        metavar="URL",
        help=f"store URL (default: $ANYWORK_STORE, else {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--store-option",
        action="append",
        default=[] if top else argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="an option for the store (a JSON value or a string), e.g. schema=jobs; repeatable",
    )


def _add_serve_parsers(sub: Any) -> None:
    """``anywork serve`` and ``anywork workers`` (the HTTP service and its worker registry)."""
    from .serve import run_serve_command, run_workers_command

    s = sub.add_parser("serve", help="run the HTTP API, the scheduler and a worker in one process")
    s.add_argument("target", nargs="?", metavar="module:attr", help="your Worker (optional)")
    _add_store(s)
    s.add_argument(
        "--http",
        type=parse_listen,
        default=("127.0.0.1", 8000),
        metavar="HOST:PORT",
        help="where to listen (default: 127.0.0.1:8000; port 0 picks a free one)",
    )
    s.add_argument(
        "--token",
        action="append",
        default=[],
        help="a bearer token the API accepts (repeatable; also $ANYWORK_TOKENS, comma-separated)",
    )
    s.add_argument(
        "--read-only-token",
        action="append",
        default=[],
        help="a token that logs in to the dashboard to look only (repeatable)",
    )
    s.add_argument("--public-url", default=None, metavar="URL", help="the URL clients reach")
    s.add_argument("--queues", default="default", help="comma-separated queues (default: default)")
    s.add_argument("--concurrency", type=int_arg(1), default=None, help="jobs at once")
    s.add_argument(
        "--no-scheduler", action="store_true", help="run no scheduler (schedules do not fire)"
    )
    s.add_argument("--no-worker", action="store_true", help="run no worker (the API only)")
    s.add_argument(
        "--insecure", action="store_true", help="serve without tokens (loopback addresses only)"
    )
    s.add_argument(
        "--schedules",
        default=None,
        metavar="module:attr",
        help="a list of Schedules to sync into the store at start",
    )
    s.add_argument(
        "--schedules-prefix",
        default="",
        metavar="P",
        help="the id prefix --schedules owns: other schedules under it are deleted "
        "(default: '', every schedule in the store)",
    )
    s.add_argument(
        "--heartbeat",
        type=seconds_arg(positive=True, high=3600.0),
        default=5.0,
        help="seconds between worker-registry heartbeats (default: 5; lost after 3 missed)",
    )
    s.set_defaults(func=run_serve_command)

    w = sub.add_parser("workers", help="list the registered serving workers, live and lost")
    _add_store(w)
    w.add_argument("--json", action="store_true", help="print JSON")
    w.set_defaults(func=_run(run_workers_command))


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``anywork`` program.

    Returns:
        The parser; each sub-command stores its coroutine or function in ``func``.
    """
    parser = _Parser(prog=_PROG, description="Run anywork workers and manage durable queues.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_store(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    states = [str(s) for s in JobState]

    w = sub.add_parser("worker", help="run a worker that serves a store's queues")
    w.add_argument("target", metavar="module:attr", help="a Worker, or a callable returning one")
    _add_store(w)
    w.add_argument("--queues", default="default", help="comma-separated queues (default: default)")
    w.add_argument("--concurrency", type=int_arg(1), default=None, help="jobs at once per process")
    w.add_argument(
        "--processes", type=int_arg(1), default=1, help="worker processes (a supervisor)"
    )
    w.add_argument(
        "--http",
        type=parse_listen,
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics, /ready, /live (needs the server extra)",
    )
    w.add_argument(
        "--lease", type=seconds_arg(positive=True), default=30.0, help="lease seconds (default: 30)"
    )
    w.add_argument(
        "--lost-limit",
        type=int_arg(1),
        default=3,
        help="fail a job once its worker was lost this many times (default: 3)",
    )
    w.add_argument(
        "--result-ttl",
        type=parse_duration,
        default=7 * 86400.0,
        metavar="DURATION",
        help="delete finished jobs of its queues this long after they finish (default: 7d)",
    )
    w.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    w.add_argument(
        "--heartbeat",
        type=seconds_arg(positive=True, high=3600.0),
        default=5.0,
        help="seconds between worker-registry heartbeats (default: 5; lost after 3 missed)",
    )
    add_worker_options(w)
    w.set_defaults(func=run_worker_command)
    add_remote_parser(sub)

    _add_serve_parsers(sub)

    jobs = sub.add_parser("jobs", help="list, show, cancel, retry, purge or watch jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    ls = jobs_sub.add_parser("list", help="list jobs, oldest first")
    _add_store(ls)
    ls.add_argument("--state", choices=states)
    ls.add_argument("--queue")
    ls.add_argument("--handler")
    ls.add_argument("--limit", type=int_arg(0), default=100)
    ls.add_argument("--after", metavar="ID", help="the last id of the previous page")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_run(_cmd_jobs_list))
    get = jobs_sub.add_parser("get", help="show one job")
    get.add_argument("id")
    _add_store(get)
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(func=_run(_cmd_jobs_get))
    cancel = jobs_sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("id")
    _add_store(cancel)
    cancel.set_defaults(func=_run(_cmd_jobs_cancel))
    add_watch_parser(jobs_sub, _add_store)
    purge = jobs_sub.add_parser("purge", help="delete finished jobs now")
    _add_store(purge)
    purge.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="jobs that finished more than this long ago (seconds, or 30d, 12h, 90m)",
    )
    purge.add_argument(
        "--state",
        action="append",
        choices=[JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value],
        help="only jobs in this state; repeatable (default: every finished state)",
    )
    purge.set_defaults(func=_run(_cmd_jobs_purge))
    retry = jobs_sub.add_parser("retry", help="run a failed or cancelled job again now")
    retry.add_argument("id")
    _add_store(retry)
    retry.set_defaults(func=_run(_cmd_jobs_retry))

    add_workflows_parser(sub, _add_store, _Parser)

    st = sub.add_parser("stats", help="job counts by queue and state")
    _add_store(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_run(_cmd_stats))

    enq = sub.add_parser("enqueue", help="add a job")
    enq.add_argument("handler")
    enq.add_argument("--args", default="{}", metavar="JSON", help="a JSON object (default: {})")
    _add_store(enq)
    enq.add_argument("--queue", default="default")
    enq.add_argument("--delay", type=seconds_arg(positive=False), default=None, metavar="S")
    enq.add_argument("--priority", type=int_arg(INT_MIN), default=0)
    enq.add_argument("--unique-key", default=None, metavar="K")
    enq.add_argument("--max-attempts", type=int_arg(1), default=None, metavar="N")
    enq.add_argument("--json", action="store_true", help="print the stored record as JSON")
    enq.set_defaults(func=_run(_cmd_enqueue))

    add_schedule_commands(sub, _add_store, _run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``anywork`` program.

    Args:
        argv: the arguments, without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 a runtime failure, 2 bad input.
    """
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except CLIError as exc:
        return _report(exc)
    command: Callable[[argparse.Namespace], int] = ns.func
    try:
        return command(ns)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _report(exc)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _report(exc: Exception) -> int:
    """Print one line for ``exc`` (a CLIError's own message when there is one)."""
    leaves = list(_leaves(exc))
    error = next((e for e in leaves if isinstance(e, CLIError)), leaves[0])
    if isinstance(error, CLIError):
        print(f"{_PROG}: error: {error.message}", file=sys.stderr)
        return error.code
    print(f"{_PROG}: error: {type(error).__name__}: {error}", file=sys.stderr)
    return 1
