"""The ``anywork`` program: run workers and look at or feed a durable queue from a shell.

::

    anywork worker app:worker --store postgresql://db/jobs --concurrency 16 --http :9000
    anywork enqueue send_email --args '{"to": "a@example.com"}'
    anywork jobs list --state failed
    anywork stats

Exit codes: 0 success, 1 a runtime failure (the store cannot be reached, a job is unknown),
2 bad input (a usage error, bad JSON, an unknown URL scheme, a worker that cannot be loaded).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Self, TypeVar
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from ._job import Job
from ._queue import Queue
from ._retry import RetryPolicy
from ._status import Status
from ._worker import Worker
from .stores import Claimed, JobRecord, JobState, Outcome, Store, mask_url, open_store

if TYPE_CHECKING:
    import uvicorn

__all__ = ["CLIError", "build_parser", "load_worker", "main", "mask_url", "record_to_dict"]

DEFAULT_STORE = "sqlite:///anywork.db"
_PROG = "anywork"
_SUPERVISOR_ENV = "ANYWORK_SUPERVISOR_PID"
# Schemes whose drivers (asyncpg, redis-py) run on asyncio only.
_ASYNCIO_ONLY = frozenset({"postgresql", "postgres", "redis", "rediss"})
_S = TypeVar("_S", bound=Store)
# The longest wait between a worker's attempts to reach an unreachable store.
_CONNECT_BACKOFF_CAP = 30.0


class CLIError(Exception):
    """Raised for a failure the program reports as one line on stderr.

    Attributes:
        message: what went wrong, naming the bad value.
        code: the exit code: 2 for bad input, 1 for a runtime failure.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------- helpers


def _parse_store_options(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``k=v`` strings into keyword options; a value that reads as JSON is decoded."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--store-option must look like key=value, got {item!r}", 2)
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def _open(ns: argparse.Namespace) -> Store:
    """Make (not connect) the store the command line names; a bad URL is a usage error."""
    options = _parse_store_options(ns.store_option)
    try:
        return open_store(ns.store, **options)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc), 2) from None
    except ImportError as exc:
        raise CLIError(f"the store for {mask_url(ns.store)} needs a driver: {exc}", 2) from None


@contextlib.asynccontextmanager
async def _connected(store: _S) -> AsyncIterator[_S]:
    """Connect ``store`` for the block, turning a failure to connect into a one-line CLIError."""
    try:
        await store.__aenter__()
    except (OSError, ConnectionError) as exc:
        raise CLIError(f"cannot connect to {store.url}: {exc}") from None
    except Exception as exc:
        # Drivers raise their own error types (asyncpg, redis-py); name them in one line.
        raise CLIError(f"cannot open {store.url}: {type(exc).__name__}: {exc}") from None
    async with _entered(store):
        yield store


@contextlib.asynccontextmanager
async def _entered(store: _S) -> AsyncIterator[_S]:
    """Leave an already connected ``store`` when the block ends, passing on its error."""
    try:
        yield store
    except BaseException as exc:
        await store.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await store.__aexit__(None, None, None)


async def _connect_patiently(
    store: Store, stop: anyio.Event, *, first: float = 0.5, cap: float = _CONNECT_BACKOFF_CAP
) -> bool:
    """Connect ``store`` for a worker, retrying an unreachable server with backoff.

    A server that cannot be reached (``ConnectionError``, ``OSError``: down, restarting, not
    up yet) is retried after 0.5 s, 1 s, 2 s, … up to ``cap`` seconds, each failure logged in
    one line; any other error (bad credentials, a newer schema, a driver that needs asyncio)
    cannot heal by waiting and ends the worker with a CLIError. Returns False when ``stop``
    is set (SIGTERM) before the store was reached, True once it is connected.
    """
    delay = first
    while True:
        try:
            await store.__aenter__()
        except (OSError, ConnectionError) as exc:
            _log(f"cannot connect to {store.url}: {exc} (retrying in {delay:g}s)")
        except Exception as exc:
            raise CLIError(f"cannot open {store.url}: {type(exc).__name__}: {exc}") from None
        else:
            return True
        with anyio.move_on_after(delay):
            await stop.wait()
        if stop.is_set():
            return False
        delay = min(delay * 2, cap)


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


async def _cmd_jobs_list(ns: argparse.Namespace) -> int:
    async with _connected(_open(ns)) as store:
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
    async with _connected(_open(ns)) as store:
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
    async with _connected(_open(ns)) as store:
        queue = Queue(store)
        if await queue.cancel(ns.id):
            print(f"cancelled {ns.id}")
            return 0
        record = await queue.get(ns.id)
    if record is None:
        raise CLIError(f"no job with id {ns.id!r} in {mask_url(ns.store)}")
    raise CLIError(f"job {ns.id} is already {record.state}; nothing to cancel")


async def _cmd_stats(ns: argparse.Namespace) -> int:
    async with _connected(_open(ns)) as store:
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
    try:
        job = Job(ns.handler, args, queue=ns.queue)
        retry = None if ns.max_attempts is None else RetryPolicy(max_attempts=ns.max_attempts)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc), 2) from None
    async with _connected(_open(ns)) as store:
        record = await Queue(store).enqueue(
            job,
            delay=ns.delay or None,
            priority=ns.priority,
            retry=retry,
            unique_key=ns.unique_key,
        )
    if ns.json:
        _print_json(record_to_dict(record))
    else:
        print(f"{record.id}  {record.handler}  queue={record.queue}  {record.state}")
    return 0


# --------------------------------------------------------------------------- worker: loading


def load_worker(spec: str) -> Worker:
    """Import the Worker named by ``module:attr`` (the current directory is importable).

    ``attr`` may be dotted (``app:services.worker``) and may name a zero-argument callable
    that returns a Worker (a factory).

    Args:
        spec: ``module:attr``, as uvicorn takes an app.

    Returns:
        The Worker.

    Raises:
        CLIError: the spec is malformed, the module or attribute does not exist (code 2), the
            module fails while importing, or the object is not a Worker (code 1).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"the worker must be given as module:attr, got {spec!r}", 2)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise CLIError(f"cannot import module {module_name!r} (from {spec!r})", 2) from None
        raise CLIError(f"error while importing {module_name!r}: {exc}") from None
    except Exception as exc:
        raise CLIError(
            f"error while importing {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}", 2) from None
    if isinstance(obj, Worker):
        return obj
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:
            raise CLIError(f"{spec} raised {type(exc).__name__}: {exc}") from None
        if isinstance(made, Worker):
            return made
        raise CLIError(f"{spec}() returned a {type(made).__name__}, not a Worker", 2)
    raise CLIError(f"{spec} is a {type(obj).__name__}, not a Worker or a callable returning one", 2)


# --------------------------------------------------------------------------- worker: running


class _CountingStore:
    """A store seen through a counter: every outcome the worker reports is tallied."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.url = inner.url
        self.counts: Counter[tuple[str, int]] = Counter()

    def __getattr__(self, name: str) -> Any:
        # Extras a store offers beyond the protocol stay reachable.
        return getattr(self._inner, name)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        return await self._inner.add(records)

    async def get(self, id: str) -> JobRecord | None:
        return await self._inner.get(id)

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[JobRecord]:
        return await self._inner.list(
            state=state, queue=queue, handler=handler, limit=limit, after=after
        )

    async def stats(self) -> dict[str, dict[str, int]]:
        return await self._inner.stats()

    async def cancel(self, id: str) -> bool:
        return await self._inner.cancel(id)

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> builtins.list[Claimed]:
        return await self._inner.claim(queues, limit=limit, lease=lease, owner=owner)

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        return await self._inner.renew(owner, ids, lease=lease)

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        await self._inner.complete(owner, outcomes)
        self.counts.update((str(o.state), int(o.status)) for o in outcomes)

    async def reap(self) -> int:
        return await self._inner.reap()

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        await self._inner.wait_for_work(queues, timeout)

    def summary(self) -> str:
        """One line: how many jobs ended in each state, with the statuses behind each."""
        if not self.counts:
            return "processed 0 jobs"
        by_state: dict[str, Counter[int]] = {}
        for (state, status), n in self.counts.items():
            by_state.setdefault(state, Counter())[status] += n
        names = {"queued": "handed back", "scheduled": "retry scheduled"}
        parts = []
        for state in sorted(by_state, key=lambda s: -sum(by_state[s].values())):
            codes = ", ".join(f"{c}x{n}" for c, n in sorted(by_state[state].items()) if c >= 0)
            text = f"{names.get(state, state)} {sum(by_state[state].values())}"
            parts.append(f"{text} ({codes})" if codes else text)
        total = sum(self.counts.values())
        return f"processed {total} job{'' if total == 1 else 's'}: " + "; ".join(parts)


class _Probe:
    """What ``/ready`` reports: True once the store is connected and the worker serves."""

    def __init__(self) -> None:
        self.ready = False


def _log(message: str) -> None:
    print(f"anywork[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _http_app(probe: _Probe) -> Any:
    """The ASGI app answering ``/metrics``, ``/ready`` and ``/live``."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def ready(request: Request) -> Response:
        if probe.ready:
            return PlainTextResponse("READY")
        return PlainTextResponse("NOT READY", status_code=503)

    async def live(request: Request) -> Response:
        return PlainTextResponse("OK")

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/ready", ready), Route("/live", live)]
    )


def _bind(host: str, port: int) -> socket.socket:
    """Listen on host:port ourselves, so a busy port is our clear error, not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def _uvicorn_server(app: Any) -> uvicorn.Server:
    """A uvicorn server that leaves signals to us (we drain the worker first)."""
    try:
        import uvicorn
    except ImportError:  # checked before starting; kept for type checkers
        raise CLIError("--http needs the server extra: pip install 'anywork[server]'", 2) from None

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    return _Server(config)


async def _serve_http(
    sock: socket.socket, probe: _Probe, *, task_status: TaskStatus[uvicorn.Server]
) -> None:
    server = _uvicorn_server(_http_app(probe))
    task_status.started(server)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()


async def _watch_signals(stop: anyio.Event, now: anyio.CancelScope) -> None:
    """First SIGTERM/SIGINT: drain (``stop``); the second: cancel everything at once."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                _log(f"{name}: draining (stop claiming, finish or hand back); again to stop now")
                stop.set()
            else:
                _log(f"{name} again: stopping at once")
                now.cancel()
                return


async def _watch_parent(stop: anyio.Event, parent: int) -> None:
    """Under a supervisor: drain when it is gone (killed), so no worker is left orphaned."""
    # No event fires when a parent dies; polling getppid once a second is the portable way.
    while os.getppid() == parent:  # noqa: ASYNC110
        await anyio.sleep(1.0)
    if not stop.is_set():
        _log(f"supervisor {parent} is gone: draining")
        stop.set()


async def _run_worker(ns: argparse.Namespace, worker: Worker) -> int:
    store = _CountingStore(_open(ns))
    probe = _Probe()
    stop = anyio.Event()
    sock = _bind(*ns.http) if ns.http else None
    queues = tuple(q for q in ns.queues.split(",") if q)
    async with anyio.create_task_group() as tg:
        watchers = anyio.CancelScope()

        async def watch() -> None:
            with watchers:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(_watch_signals, stop, tg.cancel_scope)
                    parent = os.environ.get(_SUPERVISOR_ENV)
                    if parent and parent.isdigit():
                        inner.start_soon(_watch_parent, stop, int(parent))

        tg.start_soon(watch)
        server = await tg.start(_serve_http, sock, probe) if sock is not None else None
        try:
            await _serve(ns, worker, store, queues, probe, stop)
        finally:
            probe.ready = False
            watchers.cancel()
            if server is not None:
                server.should_exit = True
    _log(store.summary())
    return 0


async def _serve(
    ns: argparse.Namespace,
    worker: Worker,
    store: _CountingStore,
    queues: tuple[str, ...],
    probe: _Probe,
    stop: anyio.Event,
) -> None:
    if not await _connect_patiently(store, stop):
        return  # told to stop before the store could be reached
    async with _entered(store), anyio.create_task_group() as serving, worker:

        async def serve() -> None:
            await worker.serve(store, queues=queues, concurrency=ns.concurrency, lease=ns.lease)
            stop.set()

        serving.start_soon(serve)
        probe.ready = True
        concurrency = ns.concurrency or worker.max_concurrency or 16
        _log(
            f"worker {worker.name} serving store={store.url} queues={','.join(queues)} "
            f"concurrency={concurrency} lease={ns.lease:g}s pid={os.getpid()}"
        )
        await stop.wait()
        probe.ready = False


# --------------------------------------------------------------------------- worker: supervisor


def _child_command(ns: argparse.Namespace, index: int) -> list[str]:
    """The command line of child ``index``: ours without --processes, its own --http port."""
    cmd = [sys.executable, "-m", "work.cli", "worker", ns.target, "--store", ns.store]
    cmd += ["--queues", ns.queues, "--lease", repr(ns.lease), "--backend", ns.backend]
    for option in ns.store_option:
        cmd += ["--store-option", option]
    if ns.concurrency is not None:
        cmd += ["--concurrency", str(ns.concurrency)]
    if ns.http:
        host, port = ns.http
        cmd += ["--http", f"[{host}]:{port + index}" if ":" in host else f"{host}:{port + index}"]
    return cmd


async def _supervise(ns: argparse.Namespace) -> int:
    """Keep ``ns.processes`` worker processes running until SIGTERM/SIGINT, then stop them."""
    stopping = anyio.Event()
    children: dict[int, anyio.abc.Process] = {}
    failed_at_exit: list[int] = []
    env = {**os.environ, _SUPERVISOR_ENV: str(os.getpid())}

    async def keep(index: int) -> None:
        backoff = 0.5
        while not stopping.is_set():
            started = time.monotonic()
            process = await anyio.open_process(
                _child_command(ns, index),
                stdin=None,
                stdout=None,
                stderr=None,
                env=env,
                # Own session: a terminal's Ctrl-C reaches only us, and we forward it once.
                start_new_session=True,
            )
            children[index] = process
            _log(f"supervisor: started worker {index} pid={process.pid}")
            if stopping.is_set():
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            del children[index]
            if stopping.is_set() or code == 0:
                # A child still starting up dies of the signal itself: that is a stop too.
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    failed_at_exit.append(code)
                _log(f"supervisor: worker {index} pid={process.pid} exited with {code}")
                return
            if time.monotonic() - started > 30:
                backoff = 0.5
            _log(
                f"supervisor: worker {index} pid={process.pid} exited with {code}; "
                f"restarting in {backoff:g}s"
            )
            with anyio.move_on_after(backoff):
                await stopping.wait()
            backoff = min(backoff * 2, 10.0)

    async def forward(signals: AsyncIterator[signal.Signals]) -> None:
        async for signum in signals:
            _log(f"supervisor: {signal.Signals(signum).name}: passing it to the workers")
            stopping.set()
            for process in list(children.values()):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    _log(f"supervisor: starting {ns.processes} worker processes, pid={os.getpid()}")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward, signals)
            async with anyio.create_task_group() as keepers:
                for index in range(ns.processes):
                    keepers.start_soon(keep, index)
            tg.cancel_scope.cancel()
    return 1 if failed_at_exit else 0


def _cmd_worker(ns: argparse.Namespace) -> int:
    if ns.processes < 1:
        raise CLIError(f"--processes must be >= 1, got {ns.processes}", 2)
    if ns.concurrency is not None and ns.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, got {ns.concurrency}", 2)
    if ns.lease <= 0:
        raise CLIError(f"--lease must be > 0 seconds, got {ns.lease:g}", 2)
    if not [q for q in ns.queues.split(",") if q]:
        raise CLIError(f"--queues must name at least one queue, got {ns.queues!r}", 2)
    scheme = urlsplit(ns.store).scheme.lower()
    if ns.backend == "trio" and scheme in _ASYNCIO_ONLY:
        raise CLIError(f"the {scheme} store runs on asyncio only; drop --backend trio", 2)
    if ns.http:
        if ns.backend == "trio":
            raise CLIError("--http runs on asyncio (uvicorn); drop --backend trio", 2)
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise CLIError(
                "--http needs the server extra (starlette, uvicorn): pip install 'anywork[server]'",
                2,
            ) from None
    if ns.processes > 1:
        _open(ns)  # a bad URL or option fails here, once, not in every child
        return anyio.run(_supervise, ns)
    worker = load_worker(ns.target)
    return anyio.run(_run_worker, ns, worker, backend=ns.backend)


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


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("ANYWORK_STORE", DEFAULT_STORE),
        metavar="URL",
        help="store URL (default: $ANYWORK_STORE, else %(default)s)",
    )
    parser.add_argument(
        "--store-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for the store (a JSON value or a string), e.g. schema=jobs; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``anywork`` program.

    Returns:
        The parser; each sub-command stores its coroutine or function in ``func``.
    """
    parser = _Parser(prog=_PROG, description="Run anywork workers and manage durable queues.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    states = [str(s) for s in JobState]

    w = sub.add_parser("worker", help="run a worker that serves a store's queues")
    w.add_argument("target", metavar="module:attr", help="a Worker, or a callable returning one")
    _add_store(w)
    w.add_argument("--queues", default="default", help="comma-separated queues (default: default)")
    w.add_argument("--concurrency", type=int, default=None, help="jobs at once per process")
    w.add_argument("--processes", type=int, default=1, help="worker processes (a supervisor)")
    w.add_argument(
        "--http",
        type=_parse_listen,
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics, /ready, /live (needs the server extra)",
    )
    w.add_argument("--lease", type=float, default=30.0, help="lease seconds (default: 30)")
    w.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    w.set_defaults(func=_cmd_worker)

    jobs = sub.add_parser("jobs", help="list, show or cancel jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    ls = jobs_sub.add_parser("list", help="list jobs, oldest first")
    _add_store(ls)
    ls.add_argument("--state", choices=states)
    ls.add_argument("--queue")
    ls.add_argument("--handler")
    ls.add_argument("--limit", type=int, default=100)
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

    st = sub.add_parser("stats", help="job counts by queue and state")
    _add_store(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_run(_cmd_stats))

    enq = sub.add_parser("enqueue", help="add a job")
    enq.add_argument("handler")
    enq.add_argument("--args", default="{}", metavar="JSON", help="a JSON object (default: {})")
    _add_store(enq)
    enq.add_argument("--queue", default="default")
    enq.add_argument("--delay", type=float, default=None, metavar="S")
    enq.add_argument("--priority", type=int, default=0)
    enq.add_argument("--unique-key", default=None, metavar="K")
    enq.add_argument("--max-attempts", type=int, default=None, metavar="N")
    enq.add_argument("--json", action="store_true", help="print the stored record as JSON")
    enq.set_defaults(func=_run(_cmd_enqueue))
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


if __name__ == "__main__":
    sys.exit(main())
