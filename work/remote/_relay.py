"""The Relay: hands jobs over WebSocket connections to remote workers and waits for answers."""

from __future__ import annotations

import collections
import contextlib
import hmac
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
from opentelemetry import propagate

from .._core.exceptions import StatusError
from .._core.job import Job
from .._core.jsoncheck import check_json
from .._core.status import Status
from ._deadlines import Deadlines
from ._messages import (
    CLOSE_GARBAGE,
    CLOSE_RESTART,
    CLOSE_TOKEN,
    CLOSE_VERSION,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    parse_hello,
    parse_result,
    unbatch,
)
from ._outbox import Outbox

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._scalers import Scaler

__all__ = ["Relay", "RelayState", "RemoteResult"]

_log = logging.getLogger("anywork.remote")

# The ASGI 3 callables' types, as Starlette spells them (without importing it: an extra).
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# A worker must say hello this soon after its WebSocket opens, or it is closed.
_HELLO_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class RelayState:
    """A snapshot of the relay, given to each Scaler hook.

    Attributes:
        pending: jobs waiting for a worker (not yet handed to one).
        in_flight: jobs handed to a worker and not answered yet.
        connected: workers connected (including ones that are leaving).
        capacity: free slots: the concurrency of the workers taking jobs minus their in-flight
            jobs.
    """

    pending: int
    in_flight: int
    connected: int
    capacity: int


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """What ``Relay.do`` returns: the job's status, its result or error, and who ran it.

    Attributes:
        status: the worker's status for the job, or the relay's own: 503 no worker took it in
            time, 504 no answer in time, 502 its workers kept disconnecting.
        result: the handler's return value (JSON), None on failure.
        error: a one-line reason when the status is not a success, else None.
        worker_id: the id of the worker that answered (None when none did).
    """

    status: Status
    result: Any = None
    error: str | None = None
    worker_id: str | None = None

    def raise_for_status(self) -> RemoteResult:
        """Return the result if its status is 2xx; otherwise raise.

        Raises:
            StatusError: with the result's status and error.
        """
        if self.status.is_success:
            return self
        raise StatusError(self.status, self.error or "")


class _Pending:
    """One ``do`` call: the job, where it is, and its answer once it has one."""

    __slots__ = ("conn", "delivery", "done", "event", "frame", "job", "redeliveries", "result")

    def __init__(self, job: Job, delivery: str) -> None:
        self.job = job
        self.delivery = delivery
        # The job frame, encoded once: a redelivery sends the same frame to another worker.
        self.frame = encode(
            {
                "type": "job",
                "id": delivery,
                "job": {
                    "id": job.id,
                    "handler": job.handler,
                    "args": job.args,
                    "headers": job.headers,
                    "timeout": job.timeout,
                },
            }
        )
        self.conn: _Conn | None = None
        self.redeliveries = 0
        self.done = False
        self.result: RemoteResult | None = None
        self.event = anyio.Event()


class _Conn:
    """One connected worker: what it runs, how much at once, and what it holds now."""

    __slots__ = (
        "concurrency",
        "handlers",
        "hot",
        "in_flight",
        "leaving",
        "outbox",
        "scope",
        "worker_id",
        "ws",
    )

    def __init__(self, worker_id: str, handlers: frozenset[str], concurrency: int) -> None:
        self.worker_id = worker_id
        self.handlers = handlers
        self.concurrency = concurrency
        self.outbox = Outbox()
        self.in_flight: dict[str, _Pending] = {}
        # Several answers came in one frame: their dos are about to hand over their next jobs
        # in the same event-loop turn, so the first of them queues too (one batch frame for
        # all instead of a frame of its own and a batch for the rest).
        self.hot = False
        self.leaving = False
        self.scope = anyio.CancelScope()
        self.ws: Any = None

    @property
    def free(self) -> int:
        return 0 if self.leaving else self.concurrency - len(self.in_flight)


class Relay:
    """Hands jobs to remote workers connected over WebSocket, jobber's relay.

    ::

        relay = Relay(token="s3cret", scaler=ProcessScaler(target="app:worker", url=URL))
        app = Starlette(routes=[Mount("/v1/relay", relay.asgi)], lifespan=...)
        async with relay:
            result = await relay.do(Job("resize", {"id": 7}))

    Workers join with ``anywork remote URL module:attr`` or ``await worker.connect(URL)``. A job
    goes only to a worker that has its handler and a free slot (``do`` waits for one: a worker
    never holds more than its concurrency).

    Args:
        token: the bearer token workers must present (None: no check).
        scaler: told when jobs come in, finish and time out (see ``work.abc.Scaler``).
        timeout: the default seconds ``do`` waits for an answer.
        max_redeliveries: how many times a job whose worker disconnected mid-job is handed to
            another worker before ``do`` gives up with 502.

    Raises:
        ValueError: an empty token, a timeout that is not > 0, a negative max_redeliveries.
        TypeError: a value of the wrong type, or a scaler without the three hooks.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        scaler: Scaler | None = None,
        timeout: float = 30.0,
        max_redeliveries: int = 1,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError(f"token must be a non-empty str or None, got {token!r}")
        if scaler is not None:
            for hook in ("inbound", "done", "timed_out"):
                if not callable(getattr(scaler, hook, None)):
                    raise TypeError(f"scaler {scaler!r} has no {hook}(state) method")
        if isinstance(max_redeliveries, bool) or not isinstance(max_redeliveries, int):
            raise TypeError(f"max_redeliveries must be an int, got {max_redeliveries!r}")
        if max_redeliveries < 0:
            raise ValueError(f"max_redeliveries must be >= 0, got {max_redeliveries}")
        self.token = token
        self.scaler = scaler
        self.timeout = _seconds(timeout, "timeout")
        self.max_redeliveries = max_redeliveries
        self._running = False
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._deadlines: Deadlines[_Pending] = Deadlines(self._give_up)
        self._tg: TaskGroup | None = None
        self.asgi: _RelayApp = _RelayApp(self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._running:
            raise RuntimeError("this Relay is already running")
        # One task keeps every do's deadline (see Deadlines), in a task group of the relay's.
        tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._deadlines.run)
        self._tg = tg
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        # Every waiting do returns at once (nothing hangs on a stopped relay); connections
        # close with 1012 so their workers reconnect to the relay's next run.
        for pending in list(self._waiting):
            self._finish(pending, Status.UNAVAILABLE, error="the relay stopped")
        self._waiting.clear()
        for conn in list(self._conns.values()):
            for pending in list(conn.in_flight.values()):
                self._finish(pending, Status.UNAVAILABLE, error="the relay stopped")
            conn.scope.cancel()
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        # The task group holds only the deadline task, which raises nothing: the body's
        # exception, if any, propagates as itself (not in an ExceptionGroup).
        await tg.__aexit__(None, None, None)

    @property
    def state(self) -> RelayState:
        """The relay's current RelayState."""
        conns = self._conns.values()
        return RelayState(
            pending=len(self._waiting),
            in_flight=sum(sum(not p.done for p in c.in_flight.values()) for c in conns),
            connected=len(self._conns),
            capacity=sum(c.free for c in conns),
        )

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Relay {state} workers={len(self._conns)} pending={len(self._waiting)}>"

    # -- do ----------------------------------------------------------------------------------

    async def do(self, job: Job, *, timeout: float | None = None) -> RemoteResult:
        """Run ``job`` on a remote worker that has its handler and return its outcome.

        Waits for a worker with the handler and a free slot (asking the scaler for one), hands
        the job over with the current trace context in its headers, and waits for the answer.

        Args:
            job: the job; its args must be JSON.
            timeout: seconds to wait for the answer in all (default: the relay's ``timeout``).

        Returns:
            The RemoteResult. Never raises for the job's own failure: 503 when no worker took
            it in time, 504 when a worker took it but did not answer in time, 502 when its
            workers disconnected more than ``max_redeliveries`` times.

        Raises:
            TypeError: ``job`` is not a Job, or its args or headers are not JSON.
            ValueError: a timeout that is not > 0.
            RuntimeError: the relay is not running (``async with relay:``).
        """
        if not isinstance(job, Job):
            raise TypeError(f"do needs a Job, got {type(job).__name__}")
        check_json(job.args, f"the args of {job!r}")
        check_json(job.headers, f"the headers of {job!r}")
        wait = self.timeout if timeout is None else _seconds(timeout, "timeout")
        if not self._running:
            raise RuntimeError("the relay is not running: use `async with relay:`")
        copy = job.copy()
        propagate.inject(copy.headers)
        pending = _Pending(copy, f"d{next(self._ids)}")
        deadline = self._deadlines.add(pending.delivery, pending, wait)
        self._waiting.append(pending)
        self._hook("inbound")
        try:
            if self._dispatch(pending):
                # Only a send can outlive the deadline here: the event is set on time.
                with anyio.CancelScope(deadline=deadline):
                    await _send_direct(pending)
            await pending.event.wait()
        finally:
            self._deadlines.discard(pending.delivery, wait)
            if not pending.done:
                self._give_up(pending, wait)
        assert pending.result is not None
        return pending.result

    def _give_up(self, pending: _Pending, wait: float) -> None:
        """End a do whose time ran out (or whose caller was cancelled): 503 or 504."""
        if pending.done:
            return
        conn = pending.conn
        if conn is None:
            self._waiting.remove(pending)
            capable = any(pending.job.handler in c.handlers for c in self._conns.values())
            reason = "no free worker" if capable else "no worker"
            self._finish(
                pending,
                Status.UNAVAILABLE,
                error=f"{reason} with handler {pending.job.handler!r} took the job "
                f"within {wait:g} s",
                hook="timed_out",
            )
            return
        # The worker keeps the slot until it answers the cancel (or goes): its concurrency
        # stays honest even when it never answers.
        conn.outbox.put(encode({"type": "cancel", "id": pending.delivery}))
        self._finish(
            pending,
            Status.GATEWAY_TIMEOUT,
            error=f"worker {conn.worker_id} did not answer within {wait:g} s",
            worker_id=conn.worker_id,
            hook="timed_out",
        )

    def _finish(
        self,
        pending: _Pending,
        status: Status,
        result: Any = None,
        error: str | None = None,
        worker_id: str | None = None,
        hook: str | None = None,
    ) -> None:
        if pending.done:
            return
        pending.done = True
        pending.result = RemoteResult(status, result, error, worker_id)
        pending.event.set()
        if hook is not None:
            self._hook(hook)

    def _hook(self, name: str) -> None:
        if self.scaler is None:
            return
        try:
            getattr(self.scaler, name)(self.state)
        except Exception:
            # A scaler's bug must not fail the job it was told about.
            _log.exception("scaler %r failed in %s()", self.scaler, name)

    def _dispatch(self, mine: _Pending | None = None) -> bool:
        """Hand waiting jobs, oldest first, to the least busy worker that has their handler.

        Frames are queued to each connection's sender task (which sends what piles up as one
        batch frame), except the frame of ``mine`` when its worker has nothing else in flight
        and nothing queued: then True is returned and the calling ``do`` sends it itself, one
        task switch less where there is nothing to batch it with.
        """
        waiting = self._waiting
        if not waiting:
            return False
        conns = [c for c in self._conns.values() if c.free > 0]
        if not conns:
            return False
        direct = False
        kept: collections.deque[_Pending] = collections.deque()
        while waiting and conns:
            pending = waiting.popleft()
            handler = pending.job.handler
            best: _Conn | None = None
            most = 0
            for conn in conns:
                if handler in conn.handlers:
                    free = conn.concurrency - len(conn.in_flight)
                    if free > most:
                        best, most = conn, free
            if best is None:
                kept.append(pending)
                continue
            pending.conn = best
            in_flight = best.in_flight
            in_flight[pending.delivery] = pending
            if pending is mine and len(in_flight) == 1 and not best.outbox and not best.hot:
                direct = True
            else:
                best.hot = False
                best.outbox.put(pending.frame)
            if most == 1:
                conns.remove(best)
        if kept:
            kept.extend(waiting)
            self._waiting = kept
        return direct

    # -- the WebSocket endpoint -------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            await _upgrade_required(send)
            return
        from starlette.websockets import WebSocket

        ws = WebSocket(scope, receive, send)
        if not self._authorized(ws.headers.get("authorization")):
            await ws.close(code=CLOSE_TOKEN, reason="wrong or missing bearer token")
            return
        if not self._running:
            await ws.close(code=CLOSE_RESTART, reason="the relay is not running")
            return
        await ws.accept()
        await self._serve_worker(ws)

    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    async def _serve_worker(self, ws: Any) -> None:
        from starlette.websockets import WebSocketDisconnect

        try:
            with anyio.fail_after(_HELLO_TIMEOUT):
                frame = await ws.receive_text()
            worker_id, handlers, concurrency = parse_hello(decode(frame))
        except (ProtocolError, KeyError, TimeoutError) as exc:
            version_mismatch = "protocol version" in str(exc)
            with _ignore_closed():
                await ws.send_text(
                    encode({"type": "refused", "version": PROTOCOL_VERSION, "reason": str(exc)})
                )
                await ws.close(code=CLOSE_VERSION if version_mismatch else CLOSE_GARBAGE)
            _log.warning("refused a worker: %s", exc)
            return
        except WebSocketDisconnect:
            return
        conn = _Conn(worker_id, handlers, concurrency)
        conn.ws = ws
        key = id(conn)
        self._conns[key] = conn
        reason = "disconnected"
        try:
            await ws.send_text(encode({"type": "welcome", "version": PROTOCOL_VERSION}))
            _log.info("worker %s joined: %s x%d", worker_id, sorted(handlers), concurrency)
            self._dispatch()
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.outbox.pump, ws.send_text)
                    reason = await self._read(ws, conn)
                    tg.cancel_scope.cancel()
            if conn.scope.cancelled_caught:
                reason = "the relay stopped"
                with _ignore_closed():
                    await ws.close(code=CLOSE_RESTART, reason=reason)
            elif reason != "left":
                with _ignore_closed():
                    await ws.close(code=CLOSE_GARBAGE, reason=reason[:120])
            else:
                with _ignore_closed():
                    await ws.close()
        except (WebSocketDisconnect, OSError):
            pass
        finally:
            del self._conns[key]
            conn.outbox.close()
            self._lost(conn, reason)

    async def _read(self, ws: Any, conn: _Conn) -> str:
        """Read the worker's frames until it goes; return why (a garbage frame's reason)."""
        from starlette.websockets import WebSocketDisconnect

        while True:
            try:
                messages = unbatch(decode(await ws.receive_text()))
                conn.hot = len(messages) > 1
                for message in messages:
                    kind = message["type"]
                    if kind == "result":
                        self._answer(conn, *parse_result(message))
                    elif kind == "bye":
                        conn.leaving = True
                    else:
                        raise ProtocolError(f"unexpected message type {kind!r}")
                # Once per frame, not per answer: a batch of answers frees several slots at once.
                self._dispatch()
            except WebSocketDisconnect:
                return "disconnected"
            except (ProtocolError, KeyError) as exc:
                _log.warning("closing worker %s: %s", conn.worker_id, exc)
                return f"protocol error: {exc}"
            if conn.leaving and not conn.in_flight:
                return "left"

    def _answer(
        self, conn: _Conn, delivery: str, status: int, result: Any, error: str | None
    ) -> None:
        try:
            code = Status.coerce(status)
        except ValueError:
            raise ProtocolError(f"result status {status} is not a known code") from None
        pending = conn.in_flight.pop(delivery, None)
        if pending is not None:
            self._finish(pending, code, result, error, conn.worker_id, hook="done")

    def _lost(self, conn: _Conn, reason: str) -> None:
        """A worker went: hand its unanswered jobs to others, up to ``max_redeliveries``."""
        again: list[_Pending] = []
        for pending in conn.in_flight.values():
            if pending.done:
                continue
            if not self._running:
                self._finish(pending, Status.UNAVAILABLE, error="the relay stopped")
            elif pending.redeliveries >= self.max_redeliveries:
                self._finish(
                    pending,
                    Status.BAD_GATEWAY,
                    error=f"worker {conn.worker_id} went mid-job ({reason}) after "
                    f"{pending.redeliveries} redelivery(ies)",
                    worker_id=conn.worker_id,
                    hook="done",
                )
            else:
                pending.redeliveries += 1
                pending.conn = None
                again.append(pending)
        conn.in_flight.clear()
        if conn.leaving and reason == "left":
            _log.info("worker %s left", conn.worker_id)
        else:
            _log.info("worker %s gone: %s", conn.worker_id, reason)
        self._waiting.extendleft(reversed(again))
        if again:
            self._hook("inbound")
        self._dispatch()


async def _send_direct(pending: _Pending) -> None:
    """Send ``pending``'s job frame from its own ``do``; a connection that is gone is the
    reader's to notice (the job is in its in-flight set, so it is redelivered)."""
    conn = pending.conn
    assert conn is not None and conn.ws is not None
    with _ignore_closed():
        await conn.ws.send_text(pending.frame)


class _RelayApp:
    """The relay's ASGI 3 app: a WebSocket endpoint at its root for remote workers.

    An object rather than a function so that Starlette treats it as a raw ASGI app wherever it
    goes: ``WebSocketRoute("/v1/relay", relay.asgi)`` (workers connect to exactly that path) or
    ``Mount("/v1/relay", relay.asgi)`` (workers connect to ``/v1/relay/``). A plain HTTP
    request gets 426; a connection without the right ``Authorization: Bearer`` token is refused
    (HTTP 403); lifespan messages are answered when it is served on its own.
    """

    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.relay._asgi(scope, receive, send)

    def __repr__(self) -> str:
        return f"<relay.asgi of {self.relay!r}>"


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI server's lifespan messages when the relay is served on its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _upgrade_required(send: Send) -> None:
    body = b"this is a WebSocket endpoint for anywork remote workers\n"
    await send(
        {
            "type": "http.response.start",
            "status": 426,
            "headers": [(b"content-type", b"text/plain"), (b"upgrade", b"websocket")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _ignore_closed() -> contextlib.suppress:
    """Ignore the errors of writing to a connection that is already gone."""
    from starlette.websockets import WebSocketDisconnect

    return contextlib.suppress(
        OSError,
        RuntimeError,
        WebSocketDisconnect,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
    )


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return float(value)
