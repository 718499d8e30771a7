"""The ``anywork worker`` command: one serving process, or a supervisor of several."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from .._core.retry import Exponential
from .._core.status import Status
from .._durable.consumer import serve_store
from .._runtime.worker import Execution, Worker
from ..stores import Outcome, Store
from ._common import CLIError, connect_patiently, entered, log, open_store_of
from .schedules import beside_worker, child_options, register_webhooks

if TYPE_CHECKING:
    import uvicorn

__all__ = ["load_worker", "parse_listen", "run_worker_command"]

_SUPERVISOR_ENV = "ANYWORK_SUPERVISOR_PID"
# A crashed child is restarted after 0.5 s, doubling up to 10 s while it keeps crashing.
_RESTART_PAUSES = Exponential(0.5, cap=10.0, jitter=False)
# /ready reads this id from the store, and gives it this long to answer.
_READY_PROBE_ID = "anywork-ready-probe"
_READY_PROBE_TIMEOUT = 2.0
# Schemes whose drivers (asyncpg, redis-py) run on asyncio only.
_ASYNCIO_ONLY = frozenset(
    {"postgresql", "postgres", "redis", "rediss", "redis+cluster", "rediss+cluster"}
)
# Executions whose outcome the tally remembers, in case the store discards it (lease lost).
_RECENT = 10_000


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


class _Tally:
    """Counts the executions this process finished, by outcome and status, through
    ``worker.subscribe`` (it sees every execution as it finishes)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.counts: Counter[tuple[str, int]] = Counter()
        self.discarded = 0  # outcomes the store refused: the lease had been taken over
        self._recent: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.discarded = 0  # outcomes the store refused: the lease had been taken over

    def __call__(self, execution: Execution) -> None:
        if not execution.done:
            return  # the start of an execution: only ends are counted
        status = execution.status
        if status.is_success:
            outcome = "succeeded"
        elif status is Status.CANCELLED:
            # Cancelled by the worker's stop: serve hands the job back.
            outcome = "handed back" if self._worker.stopping else "cancelled"
        else:
            outcome = "failed"  # retried later or not: the store's policy decides
        key = (outcome, int(status))
        self.counts[key] += 1
        # Remembered until its outcome may come back discarded (within a flush or two).
        self._recent[execution.job.id] = key
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    def discard(self, outcome: Outcome) -> None:
        """``serve``'s ``on_discarded``: the store refused this job's outcome (the lease was
        lost), so its execution is counted apart, not as a result."""
        self.discarded += 1
        key = self._recent.pop(outcome.id, None)
        if key is not None and self.counts[key] > 0:
            self.counts[key] -= 1
            if not self.counts[key]:
                del self.counts[key]

    def summary(self) -> str:
        """One line: how many executions ended each way, with the statuses behind each, and
        how many outcomes the store discarded."""
        discarded = f"; discarded {self.discarded} (lease lost)" if self.discarded else ""
        if not self.counts:
            return f"processed 0 jobs{discarded}"
        by_outcome: dict[str, Counter[int]] = {}
        for (outcome, status), n in self.counts.items():
            by_outcome.setdefault(outcome, Counter())[status] += n
        parts = []
        for outcome in sorted(by_outcome, key=lambda s: -sum(by_outcome[s].values())):
            counts = by_outcome[outcome]
            text = f"{outcome} {sum(counts.values())}"
            if outcome == "handed back":
                parts.append(text)  # always 499: the count says it all
                continue
            codes = ", ".join(f"{c}x{n}" for c, n in sorted(counts.items()) if c >= 0)
            parts.append(f"{text} ({codes})" if codes else text)
        total = sum(self.counts.values())
        return f"processed {total} job{'' if total == 1 else 's'}: " + "; ".join(parts) + discarded


class _Probe:
    """What ``/ready`` reports: the worker serves (``ready``) and its store answers now."""

    def __init__(self, store: Store | None = None) -> None:
        self.ready = False
        self.store = store

    async def store_answers(self) -> bool:
        """Read one job by id (the cheapest call every store has), within a bound: a store
        that is down or hangs makes ``/ready`` say 503 rather than wait or lie."""
        if self.store is None:
            return True
        with anyio.move_on_after(_READY_PROBE_TIMEOUT):
            try:
                await self.store.get(_READY_PROBE_ID)
            except Exception:
                return False
            return True
        return False


def parse_listen(value: str) -> tuple[str, int]:
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
        if not probe.ready:
            return PlainTextResponse("NOT READY", status_code=503)
        if not await probe.store_answers():
            return PlainTextResponse("NOT READY: the store does not answer", status_code=503)
        return PlainTextResponse("READY")

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
                log(f"{name}: draining (stop claiming, finish or hand back); again to stop now")
                stop.set()
            else:
                log(f"{name} again: stopping at once")
                now.cancel()
                return


async def _watch_parent(stop: anyio.Event, parent: int) -> None:
    """Under a supervisor: drain when it is gone (killed), so no worker is left orphaned."""
    # No event fires when a parent dies; polling getppid once a second is the portable way.
    while os.getppid() == parent:  # noqa: ASYNC110
        await anyio.sleep(1.0)
    if not stop.is_set():
        log(f"supervisor {parent} is gone: draining")
        stop.set()


async def _run_worker(ns: argparse.Namespace, worker: Worker) -> int:
    store = open_store_of(ns)
    tally = _Tally(worker)
    unsubscribe = worker.subscribe(tally)
    probe = _Probe(store)
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
            await _serve(ns, worker, store, queues, probe, stop, tally)
        finally:
            probe.ready = False
            watchers.cancel()
            if server is not None:
                server.should_exit = True
    unsubscribe()
    log(tally.summary())
    return 0


async def _serve(
    ns: argparse.Namespace,
    worker: Worker,
    store: Store,
    queues: tuple[str, ...],
    probe: _Probe,
    stop: anyio.Event,
    tally: _Tally,
) -> None:
    if not await connect_patiently(store, stop):
        return  # told to stop before the store could be reached
    async with entered(store), anyio.create_task_group() as serving, worker:
        concurrency = ns.concurrency or worker.max_concurrency or 16
        registry = anyio.CancelScope()

        async def serve() -> None:
            await serve_store(
                worker,
                store,
                on_discarded=tally.discard,
                queues=queues,
                concurrency=ns.concurrency,
                lease=ns.lease,
                lost_limit=ns.lost_limit,
                result_ttl=ns.result_ttl,
            )
            # Drained and handed back: leave the registry (a clean stop is not a lost worker).
            registry.cancel()
            stop.set()

        async def register() -> None:
            with registry:
                await _keep_registered(ns, worker, store, queues, concurrency)

        await register_webhooks(ns, worker, store)
        serving.start_soon(serve)
        serving.start_soon(register)
        probe.ready = True
        log(
            f"worker {worker.name} serving store={store.url} queues={','.join(queues)} "
            f"concurrency={concurrency} lease={ns.lease:g}s pid={os.getpid()}"
        )
        async with beside_worker(ns, store):
            await stop.wait()
        probe.ready = False


async def _keep_registered(
    ns: argparse.Namespace,
    worker: Worker,
    store: Store,
    queues: tuple[str, ...],
    concurrency: int,
) -> None:
    """Keep this worker in the store's registry (``anywork workers``, ``GET /v1/workers``)
    while it serves: a failed first write is logged and tried again a heartbeat later, never
    stopping the worker."""
    from .._durable.registry import keep_registered

    while True:
        try:
            await keep_registered(
                store, worker, queues=queues, concurrency=concurrency, heartbeat=ns.heartbeat
            )
        except Exception as exc:
            log(f"worker registry: {type(exc).__name__}: {exc} (retrying)")
        await anyio.sleep(ns.heartbeat)


# --------------------------------------------------------------------------- worker: supervisor


def _child_command(ns: argparse.Namespace, index: int) -> list[str]:
    """The command line of child ``index``: ours without --processes, its own --http port."""
    cmd = [sys.executable, "-m", "work.cli", "worker", ns.target, "--store", ns.store]
    cmd += ["--queues", ns.queues, "--lease", repr(ns.lease), "--backend", ns.backend]
    cmd += ["--lost-limit", str(ns.lost_limit), "--result-ttl", repr(ns.result_ttl)]
    for option in ns.store_option:
        cmd += ["--store-option", option]
    if ns.concurrency is not None:
        cmd += ["--concurrency", str(ns.concurrency)]
    cmd += child_options(ns)
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
        crashes = 0  # in a row, each less than 30 s after its start
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
            log(f"supervisor: started worker {index} pid={process.pid}")
            if stopping.is_set():
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            del children[index]
            if stopping.is_set() or code == 0:
                # A child still starting up dies of the signal itself: that is a stop too.
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    failed_at_exit.append(code)
                log(f"supervisor: worker {index} pid={process.pid} exited with {code}")
                return
            crashes = 1 if time.monotonic() - started > 30 else crashes + 1
            backoff = _RESTART_PAUSES.delay(crashes)
            log(
                f"supervisor: worker {index} pid={process.pid} exited with {code}; "
                f"restarting in {backoff:g}s"
            )
            with anyio.move_on_after(backoff):
                await stopping.wait()

    async def forward(signals: AsyncIterator[signal.Signals]) -> None:
        async for signum in signals:
            log(f"supervisor: {signal.Signals(signum).name}: passing it to the workers")
            stopping.set()
            for process in list(children.values()):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    log(f"supervisor: starting {ns.processes} worker processes, pid={os.getpid()}")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward, signals)
            async with anyio.create_task_group() as keepers:
                for index in range(ns.processes):
                    keepers.start_soon(keep, index)
            tg.cancel_scope.cancel()
    return 1 if failed_at_exit else 0


def run_worker_command(ns: argparse.Namespace) -> int:
    """``anywork worker``: check the options, then serve in this process, or supervise
    ``--processes`` of them; return the exit code.

    Raises:
        CLIError: a bad option, store URL or worker spec (code 2).
    """
    if ns.processes < 1:
        raise CLIError(f"--processes must be >= 1, got {ns.processes}", 2)
    if ns.concurrency is not None and ns.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, got {ns.concurrency}", 2)
    if ns.lease <= 0:
        raise CLIError(f"--lease must be > 0 seconds, got {ns.lease:g}", 2)
    if ns.lost_limit < 1:
        raise CLIError(f"--lost-limit must be >= 1, got {ns.lost_limit}", 2)
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
    # A bad URL, option or a missing driver fails here, once, not in every child.
    open_store_of(ns)
    if ns.processes > 1:
        return anyio.run(_supervise, ns)
    worker = load_worker(ns.target)
    code: int = anyio.run(_run_worker, ns, worker, backend=ns.backend)
    abandoned = worker.abandoned_threads
    if abandoned:
        # Their jobs were handed back (or recorded); the interpreter would wait for the
        # threads at exit, forever for a wedged one. Exiting here drops their late results.
        log(
            f"{abandoned} thread(s) of sync handlers that overran are still running: "
            f"exiting without waiting for them (their results are dropped)"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
