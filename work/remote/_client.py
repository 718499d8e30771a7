"""The worker side of the relay: join over WebSocket, run the relay's jobs, answer, reconnect."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from .._core.exceptions import StatusError, UnknownHandlerError
from .._core.job import Job
from .._core.jsoncheck import json_ok
from .._core.retry import Exponential
from .._core.status import Status
from ._messages import (
    CLOSE_VERSION,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    unbatch,
)
from ._outbox import Outbox

if TYPE_CHECKING:
    from .._runtime.worker import Execution, Worker

__all__ = ["connect_worker", "ws_url"]

_log = logging.getLogger("anywork.remote")

# Reconnecting after the relay went: 0.1 s, doubling up to 5 s, with jitter so that a fleet of
# workers does not knock on a restarted relay all at the same instant.
_BACKOFF = Exponential(0.1, cap=5.0, jitter=True)
_OPEN_TIMEOUT = 10.0
# The relay accepts frames up to uvicorn's default 16 MiB; match it.
_MAX_FRAME = 16 * 1024 * 1024


def ws_url(url: str) -> str:
    """Return ``url`` as a ws:// or wss:// URL (http(s):// is mapped), or raise ValueError."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url[len(http) :]
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")
    return url


async def connect_worker(
    worker: Worker,
    url: str,
    *,
    token: str | None = None,
    concurrency: int | None = None,
    idle_exit: float | None = None,
) -> None:
    """Serve ``worker``'s handlers to the relay at ``url`` (see ``Worker.connect``)."""
    url = ws_url(url)
    if concurrency is None:
        concurrency = worker.max_concurrency or 16
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if idle_exit is not None and (
        isinstance(idle_exit, bool) or not isinstance(idle_exit, int | float) or idle_exit <= 0
    ):
        raise ValueError(f"idle_exit must be a number of seconds > 0 or None, got {idle_exit!r}")
    if worker.max_concurrency is not None:
        # More would wait in perform, holding up the connection's reader (and its cancels).
        concurrency = min(concurrency, worker.max_concurrency)
    if not worker.handlers:
        raise ValueError(f"{worker.name} has no handlers to offer the relay")
    session = _Session(worker, url, token, concurrency, idle_exit)
    async with worker.lifetime():
        await session.run()


class _Session:
    """One worker's membership of a relay, across reconnections."""

    def __init__(
        self, worker: Worker, url: str, token: str | None, concurrency: int, idle: float | None
    ) -> None:
        self.worker = worker
        self.url = url
        self.token = token
        self.concurrency = concurrency
        self.idle_exit = idle
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.running: dict[str, Execution] = {}
        self.idle_since = time.monotonic()

    def _connect(self) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        options: dict[str, Any] = {
            "additional_headers": headers,
            "open_timeout": _OPEN_TIMEOUT,
            "max_size": _MAX_FRAME,
            "compression": None,  # small JSON frames: deflate costs more than it saves
        }
        if sniffio.current_async_library() == "trio":
            from websockets.trio.client import connect as trio_connect

            return trio_connect(self.url, **options)
        from websockets.asyncio.client import connect as asyncio_connect

        return asyncio_connect(self.url, **options)

    def _idle_for(self) -> float:
        return 0.0 if self.running else time.monotonic() - self.idle_since

    async def run(self) -> None:
        from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

        attempt = 0
        while not self.worker.stopping:
            try:
                async with self._connect() as ws:
                    attempt = 0
                    await self._session(ws)
                    return  # left on purpose
            except InvalidStatus as exc:
                code = exc.response.status_code
                if code in (401, 403):
                    raise PermissionError(
                        f"the relay at {self.url} refused this worker's token (HTTP {code})"
                    ) from None
                reason = f"HTTP {code}"
            except InvalidURI as exc:
                raise ValueError(f"not a WebSocket URL: {self.url!r} ({exc})") from None
            except ConnectionRefusedError as exc:
                if exc.args and str(exc.args[0]).startswith("relay refused"):
                    raise
                reason = str(exc) or type(exc).__name__
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = str(exc) or type(exc).__name__
            attempt += 1
            pause = _BACKOFF.delay(attempt)
            _log.info("relay %s unreachable (%s); retrying in %.2f s", self.url, reason, pause)
            if self.idle_exit is not None and self._idle_for() + pause >= self.idle_exit:
                _log.info("idle for %g s without a relay: leaving", self.idle_exit)
                return
            with anyio.move_on_after(pause):
                await self.worker.wait_stopping()

    async def _session(self, ws: Any) -> None:
        hello = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "worker_id": self.worker_id,
            "handlers": sorted(self.worker.handlers),
            "concurrency": self.concurrency,
        }
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(encode(hello))
            with anyio.fail_after(_OPEN_TIMEOUT):
                answer = decode(await ws.recv())
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == CLOSE_VERSION:
                raise ConnectionRefusedError(
                    f"relay refused this worker: {exc.rcvd.reason}"
                ) from None
            raise
        if answer["type"] != "welcome" or answer.get("version") != PROTOCOL_VERSION:
            reason = answer.get("reason") or f"relay answered {answer!r}"
            raise ConnectionRefusedError(f"relay refused this worker: {reason}")
        _log.info("joined relay %s as %s", self.url, self.worker_id)
        # Answers and the bye go out through one queue and one sender task: a finished
        # execution's callback (plain, not async) can queue its answer without a task per job,
        # and the answers that pile up while the sender is away go out as one batch frame.
        outbox = Outbox()
        # Errors leave the task group as values, not raised inside it: the caller sees the
        # exception itself (its reconnect logic matches on the type), not an ExceptionGroup.
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._leave_when_done, outbox)
                tg.start_soon(_pump, ws, outbox)
                failure = await self._read(ws, outbox)
                tg.cancel_scope.cancel()
        finally:
            outbox.close()
        if failure is not None:
            raise failure

    async def _read(self, ws: Any, send: Outbox) -> Exception | None:
        """Run the relay's jobs until the connection ends; return why when not on purpose."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in ws:
                try:
                    messages = unbatch(decode(frame))
                except (ProtocolError, KeyError) as exc:
                    _log.warning("ignoring a frame from the relay: %s", exc)
                    continue
                for message in messages:
                    try:
                        kind = message["type"]
                        if kind == "job":
                            await self._start(message["id"], message["job"], send)
                        elif kind == "cancel":
                            execution = self.running.get(message.get("id", ""))
                            if execution is not None:
                                execution.cancel()
                    except (KeyError, TypeError) as exc:
                        _log.warning("ignoring a message from the relay: %s", exc)
        except ConnectionClosed as exc:
            received = exc.rcvd
            if received is not None and received.code == CLOSE_VERSION:
                return ConnectionRefusedError(f"relay refused this worker: {received.reason}")
            if self._leaving:
                return None
            return exc
        # A clean close after our bye: the session is over on purpose.
        if not self.worker.stopping and not self._leaving:
            return ConnectionResetError("the relay closed the connection")
        return None

    _leaving = False

    async def _leave_when_done(self, send: Outbox) -> None:
        """Say bye when idle for ``idle_exit`` seconds or when the worker stops."""
        async with anyio.create_task_group() as tg:

            async def on_stop() -> None:
                await self.worker.wait_stopping()
                tg.cancel_scope.cancel()

            async def on_idle() -> None:
                if self.idle_exit is None:
                    await anyio.sleep_forever()
                assert self.idle_exit is not None
                while True:
                    left = self.idle_exit - self._idle_for()
                    if left <= 0 and not self.running:
                        break
                    await anyio.sleep(max(left, 0.05))
                _log.info("idle for %g s: leaving", self.idle_exit)
                tg.cancel_scope.cancel()

            tg.start_soon(on_stop)
            tg.start_soon(on_idle)
        self._leaving = True
        send.put(encode({"type": "bye"}))

    async def _start(self, delivery: str, raw: Any, send: Outbox) -> None:
        """Start the job of a ``job`` message; its answer is queued when it ends."""
        try:
            job = Job(
                raw["handler"],
                raw.get("args") or {},
                id=raw.get("id"),
                timeout=raw.get("timeout"),
                headers=raw.get("headers") or {},
            )
            execution = await self.worker.perform(job)
        except UnknownHandlerError as exc:
            _queue(send, delivery, Status.NOT_FOUND, None, str(exc))
            return
        except RuntimeError as exc:  # the worker is stopping
            _queue(send, delivery, Status.UNAVAILABLE, None, str(exc))
            return
        except (KeyError, TypeError, ValueError) as exc:
            _queue(send, delivery, Status.BAD_REQUEST, None, f"bad job from the relay: {exc}")
            return
        self.running[delivery] = execution

        def done(execution: Execution) -> None:
            self.running.pop(delivery, None)
            if not self.running:
                self.idle_since = time.monotonic()
            status = execution.status
            if not status.is_success:
                _queue(send, delivery, status, None, _describe(execution.error, status))
            elif json_ok(execution.result):
                _queue(send, delivery, status, execution.result, None)
            else:
                kind = type(execution.result).__name__
                error = f"the result is a {kind}, not JSON"
                _queue(send, delivery, Status.INTERNAL_ERROR, None, error)

        execution._add_done_callback(done)


def _queue(send: Outbox, delivery: str, status: Status, result: Any, error: str | None) -> None:
    """Queue a ``result`` frame (dropped when the connection is already gone)."""
    frame = {"type": "result", "id": delivery, "status": int(status), "result": result}
    frame["error"] = error
    send.put(encode(frame))


async def _pump(ws: Any, outbox: Outbox) -> None:
    """Send the queued frames in order; the reader notices when the connection goes."""
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        await outbox.pump(ws.send)


def _describe(error: BaseException | None, status: Status) -> str:
    if isinstance(error, StatusError):
        return error.message
    if error is not None:
        return f"{type(error).__name__}: {error}"
    return status.phrase
