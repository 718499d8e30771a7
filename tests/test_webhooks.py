"""Webhook targets and callbacks, against a receiver served on 127.0.0.1 by the test.

The receiver is a tiny HTTP/1.1 server on an anyio listener, so every test runs on asyncio and
trio with the memory store (and SQLite where persistence matters).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from work import Job, JobState, Queue, RetryPolicy, Status, Webhook, Worker
from work._core.retry import Constant
from work.scheduling import WebhookHandler, callback_token, handle_callback
from work.stores import Store, open_store
from work.stores.memory import MemoryStore

from .stores.test_conformance import serving, until

pytestmark = pytest.mark.anyio

PUBLIC = "https://jobs.example.test"
SEED_FIELDS = {
    "callback_url",
    "job_name",
    "schedule",
    "scheduled_time",
    "scheduled_time_ms",
    "invocation_latency_ms",
    "invocation_latency_pct",
    "payload",
    "last_successful_execution",
}


@dataclass
class Receiver:
    """A webhook receiver: records each request and answers ``status`` with ``body``."""

    status: int = 200
    body: bytes = b"accepted"
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    after: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, stream: SocketStream) -> None:
        """Read one request, answer it, then run ``after`` (a callback, say)."""
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                rest += await stream.receive()
            request: dict[str, Any] = {"method": method, "path": path, "headers": headers}
            request["json"] = json.loads(rest) if rest else None
            self.requests.append(request)
            reason = "OK" if self.status < 300 else "Nope"
            await stream.send(
                f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(self.body)}\r\n"
                f"Content-Type: text/plain\r\nConnection: close\r\n\r\n".encode()
                + self.body
            )
        self._arrived.set()
        self._arrived = anyio.Event()
        if self.after is not None:
            await self.after(request)

    async def next_request(self, count: int) -> dict[str, Any]:
        """Wait until ``count`` requests have arrived; return the last one."""
        with anyio.fail_after(10):
            while len(self.requests) < count:
                await self._arrived.wait()
        return self.requests[count - 1]


@asynccontextmanager
async def receiver(**options: Any) -> AsyncIterator[Receiver]:
    """Serve a Receiver on 127.0.0.1 (a free port) for the block."""
    recv = Receiver(**options)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    recv.url = f"http://127.0.0.1:{port}/hook"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, recv.handle)
        try:
            yield recv
        finally:
            tg.cancel_scope.cancel()


def webhook_worker(store: Store, public_url: str | None = PUBLIC) -> Worker:
    """A worker with the anywork.webhook handler registered, as a Python worker does."""
    worker = Worker()
    worker.register("anywork.webhook", WebhookHandler(store, public_url=public_url))
    return worker


def callback_parts(request: dict[str, Any]) -> tuple[str, str]:
    """The (execution id, token) of the callback_url a webhook request carried."""
    path = urlsplit(request["json"]["callback_url"]).path
    assert path.startswith("/v1/callback/")
    quoted, _, token = path.removeprefix("/v1/callback/").rpartition("/")
    assert "/" not in quoted  # one path segment: the id is percent-encoded
    return unquote(quoted), token


async def state_of(store: Store, id: str, state: JobState) -> bool:
    """True once the job is in ``state``."""
    rec = await store.get(id)
    return rec is not None and rec.state is state


FIRE = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An entered store: the memory store, or an SQLite file of the test's own."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_store(url) as entered:
        yield entered


async def test_webhook_posts_the_seed_body_and_a_success_callback_finishes_it(store: Store) -> None:
    """The POST carries exactly the seed's fields; the execution WAITs (202) until the success
    callback, which makes it SUCCEEDED with {state, summary, correlation_id}."""
    queue = Queue(store)
    async with receiver() as recv:
        hook = Webhook(recv.url, payload='{"foo":"bar"}', headers={"X-Service": "billing"})
        job = hook.job(
            id="billing/nightly@20261205T120000Z",
            ttl=120,
            schedule_id="billing/nightly",
            schedule="rate(5 minutes)",
            scheduled_time=FIRE,
        )
        rec = await queue.enqueue(job)
        async with serving(store, webhook_worker(store)):
            request = await recv.next_request(1)
            await until(lambda: state_of(store, rec.id, JobState.WAITING))
            body = request["json"]
            assert set(body) == SEED_FIELDS
            assert request["method"] == "POST" and request["path"] == "/hook"
            assert request["headers"]["x-service"] == "billing"
            assert request["headers"]["content-type"] == "application/json"
            assert body["job_name"] == "nightly" and body["schedule"] == "rate(5 minutes)"
            assert body["scheduled_time"] == "2026-12-05T12:00:00Z"
            assert body["scheduled_time_ms"] == int(FIRE.timestamp() * 1000)
            assert body["payload"] == '{"foo":"bar"}'
            assert body["last_successful_execution"] is None
            latency = body["invocation_latency_ms"]
            now_ms = datetime.now(UTC).timestamp() * 1000
            assert abs(latency - (now_ms - FIRE.timestamp() * 1000)) < 60_000
            assert body["invocation_latency_pct"] == round(latency / 120_000 * 100, 1)
            execution_id, token = callback_parts(request)
            assert execution_id == rec.id
            assert body["callback_url"].startswith(f"{PUBLIC}/v1/callback/")
            waiting = await queue.get(rec.id)
            assert waiting is not None and waiting.status is Status.ACCEPTED
            assert waiting.deferred_ttl == 120
            callback = {"status": "success", "state": '{"rows":3}', "summary": "3 rows"}
            code, answer = await handle_callback(store, execution_id, token, callback)
    assert code == 200 and answer["state"] == "succeeded"
    done = await queue.wait(rec.id, timeout=1)
    assert done.state is JobState.SUCCEEDED and done.status is Status.SUCCESS
    assert done.result == {"state": '{"rows":3}', "summary": "3 rows", "correlation_id": None}


async def test_failure_callback_fails_500_or_retries_by_policy(store: Store) -> None:
    """A failure callback fails the execution 500 with the summary as error; under a retry
    policy the webhook is called again instead."""
    queue = Queue(store)
    async with receiver() as recv:
        policy = RetryPolicy(max_attempts=2, backoff=Constant(0.01))
        rec = await queue.enqueue(Webhook(recv.url).job(ttl=60), retry=policy)
        async with serving(store, webhook_worker(store)):
            first = await recv.next_request(1)
            await until(lambda: state_of(store, rec.id, JobState.WAITING))
            failed = {"status": "failure", "summary": "disk full"}
            code, answer = await handle_callback(store, *callback_parts(first), failed)
            assert code == 200 and answer["state"] == "scheduled"
            second = await recv.next_request(2)
            assert callback_parts(second) == callback_parts(first)
            await until(lambda: state_of(store, rec.id, JobState.WAITING))
            code, answer = await handle_callback(store, *callback_parts(second), failed)
    assert code == 200 and answer["state"] == "failed" and answer["status"] == 500
    done = await queue.wait(rec.id, timeout=1)
    assert done.state is JobState.FAILED and done.status is Status.INTERNAL_ERROR
    assert done.error == "disk full" and done.attempts == 2


async def test_heartbeat_callback_pushes_the_deadline(store: Store) -> None:
    """A heartbeat pushes the deadline one ttl from now and answers it; the job stays WAITING."""
    queue = Queue(store)
    async with receiver() as recv:
        rec = await queue.enqueue(Webhook(recv.url).job(ttl=300))
        async with serving(store, webhook_worker(store)):
            request = await recv.next_request(1)
            await until(lambda: state_of(store, rec.id, JobState.WAITING))
            await queue.heartbeat(rec.id, 1)
            code, answer = await handle_callback(
                store, *callback_parts(request), {"status": "heartbeat"}
            )
    assert code == 200
    deadline = datetime.fromisoformat(answer["deadline"])
    assert abs((deadline - datetime.now(UTC)).total_seconds() - 300) < 5
    got = await queue.get(rec.id)
    assert got is not None and got.state is JobState.WAITING and got.deadline == deadline


async def test_callback_refusals_404_422_410(store: Store) -> None:
    """A wrong token or unknown id is 404, a bad body 422 naming the fields, and a callback
    for an execution that has ended 410."""
    queue = Queue(store)
    async with receiver() as recv:
        rec = await queue.enqueue(Webhook(recv.url).job(ttl=300))
        async with serving(store, webhook_worker(store)):
            request = await recv.next_request(1)
            await until(lambda: state_of(store, rec.id, JobState.WAITING))
    execution_id, token = callback_parts(request)
    ok = {"status": "success"}
    wrong = token[:-1] + ("B" if token.endswith("A") else "A")
    assert (await handle_callback(store, execution_id, wrong, ok))[0] == 404
    assert (await handle_callback(store, execution_id, "", ok))[0] == 404
    other = await callback_token(store, "unknown-id")
    assert (await handle_callback(store, "unknown-id", other, ok))[0] == 404
    code, answer = await handle_callback(
        store, execution_id, token, {"status": "done", "summary": 5}
    )
    assert code == 422 and set(answer["fields"]) == {"status", "summary"}
    assert (await handle_callback(store, execution_id, token, ["success"]))[0] == 422
    got = await queue.get(rec.id)
    assert got is not None and got.state is JobState.WAITING
    assert (await handle_callback(store, execution_id, token, ok))[0] == 200
    code, answer = await handle_callback(store, execution_id, token, ok)
    assert code == 410 and "succeeded" in answer["error"]
    assert (await handle_callback(store, execution_id, token, {"status": "heartbeat"}))[0] == 410


async def test_no_callback_within_ttl_fails_504(store: Store) -> None:
    """A webhook whose service never calls back fails 504 "no callback within ttl"."""
    queue = Queue(store)
    async with receiver() as recv:
        rec = await queue.enqueue(Webhook(recv.url).job(ttl=0.3))
        async with serving(store, webhook_worker(store)):
            done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.FAILED and done.status is Status.GATEWAY_TIMEOUT
    assert done.error == "no callback within ttl" and len(recv.requests) == 1


async def test_callback_right_after_the_answer_still_finishes_the_job(store: Store) -> None:
    """A service that calls back at once, maybe before the worker has stored WAITING, still
    completes the execution (the callback waits for the state)."""
    queue = Queue(store)
    answers: list[tuple[int, dict[str, Any]]] = []

    async def call_back(request: dict[str, Any]) -> None:
        answers.append(
            await handle_callback(store, *callback_parts(request), {"status": "success"})
        )

    async with receiver(after=call_back) as recv:
        rec = await queue.enqueue(Webhook(recv.url).job(ttl=60))
        async with serving(store, webhook_worker(store)):
            done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED
    assert answers and answers[0][0] == 200


async def test_refused_connection_is_503_and_other_answers_502(store: Store) -> None:
    """A target that refuses connections fails 503; one answering non-2xx fails 502."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now: connections are refused
    queue = Queue(store)
    refused = await queue.enqueue(Webhook(f"http://127.0.0.1:{port}/hook").job(ttl=60))
    async with receiver(status=500, body=b"boom") as recv:
        broken = await queue.enqueue(Webhook(recv.url).job(ttl=60))
        async with serving(store, webhook_worker(store)):
            refused_done = await queue.wait(refused.id, timeout=10)
            broken_done = await queue.wait(broken.id, timeout=10)
    assert refused_done.state is JobState.FAILED
    assert refused_done.status is Status.UNAVAILABLE
    assert refused_done.error is not None and "unreachable" in refused_done.error
    assert broken_done.status is Status.BAD_GATEWAY
    assert broken_done.error is not None and "answered 500" in broken_done.error


async def test_plain_webhook_succeeds_with_the_answer_body(store: Store) -> None:
    """callback=False: a 2xx answer succeeds at once with its body (first 64 KiB) as result,
    and the body's callback_url is null; no public URL is needed."""
    queue = Queue(store)
    async with receiver(body=b"x" * (70 * 1024)) as recv:
        rec = await queue.enqueue(Webhook(recv.url, callback=False).job())
        async with serving(store, webhook_worker(store, public_url=None)):
            done = await queue.wait(rec.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.status is Status.SUCCESS
    assert done.result == "x" * (64 * 1024)
    body = recv.requests[0]["json"]
    assert body["callback_url"] is None and body["invocation_latency_pct"] is None
    assert body["job_name"] == rec.id and body["schedule"] is None


async def test_callback_webhook_without_public_url_fails_400(store: Store) -> None:
    """A callback webhook with no public URL fails 400 "no public URL for callbacks" and posts
    nothing; one without a ttl fails 400 too."""
    queue = Queue(store)
    async with receiver() as recv:
        rec = await queue.enqueue(Webhook(recv.url).job(ttl=60))
        args = Webhook(recv.url).to_dict()
        no_ttl = await queue.enqueue(Job("anywork.webhook", args))
        bad = await queue.enqueue(Job("anywork.webhook", {"url": "ftp://x"}))
        async with serving(store, webhook_worker(store, public_url=None)):
            done = await queue.wait(rec.id, timeout=10)
            no_ttl_done = await queue.wait(no_ttl.id, timeout=10)
            bad_done = await queue.wait(bad.id, timeout=10)
    assert done.status is Status.BAD_REQUEST and done.error == "no public URL for callbacks"
    assert no_ttl_done.status is Status.BAD_REQUEST and "ttl" in (no_ttl_done.error or "")
    assert bad_done.status is Status.BAD_REQUEST and "ftp://x" in (bad_done.error or "")
    assert recv.requests == []


def test_webhook_validates_its_settings() -> None:
    """Webhook refuses a bad URL, timeout, queue or header, naming it; job() needs a ttl for a
    callback webhook; to_dict/from_dict round-trip."""
    for url in ("ftp://x/y", "/relative", "http://"):
        with pytest.raises(ValueError, match="url"):
            Webhook(url)
    with pytest.raises(ValueError, match="timeout"):
        Webhook("http://127.0.0.1/h", timeout=0)
    with pytest.raises(ValueError, match="queue"):
        Webhook("http://127.0.0.1/h", queue="")
    with pytest.raises(TypeError, match="headers"):
        Webhook("http://127.0.0.1/h", headers={"X": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="payload"):
        Webhook("http://127.0.0.1/h", payload={"a": 1})  # type: ignore[arg-type]
    hook = Webhook("http://127.0.0.1/h", payload="p", headers={"A": "b"}, queue="hooks")
    with pytest.raises(ValueError, match="ttl"):
        hook.job()
    with pytest.raises(ValueError, match="ttl"):
        hook.job(ttl=-1)
    assert Webhook.from_dict(hook.to_dict()) == hook
    job = hook.job(ttl=5, id="s@1")
    assert job.handler == "anywork.webhook" and job.queue == "hooks" and job.id == "s@1"
    assert Webhook("http://127.0.0.1/h", callback=False).job().args["callback"] is False
    with pytest.raises(ValueError, match="public_url"):
        WebhookHandler(MemoryStore(), public_url="jobs.example")


async def test_callback_tokens_survive_a_restart(tmp_path: Path) -> None:
    """Tokens come from a secret kept in the store: the same after reopening it, different
    per execution and per store."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with open_store(url) as store:
        first = await callback_token(store, "job-1")
        assert first != await callback_token(store, "job-2")
        assert len(first) == 43
    async with open_store(url) as store:
        assert await callback_token(store, "job-1") == first
    assert await callback_token(MemoryStore(), "job-1") != first


async def test_last_successful_execution_is_null_without_schedules_or_history(store: Store) -> None:
    """Without a schedule's history, last_successful_execution is null (a plain webhook job);
    the fire time falls back to the job's enqueue time."""
    queue = Queue(store)
    async with receiver() as recv:
        rec = await queue.enqueue(Webhook(recv.url, callback=False).job())
        async with serving(store, webhook_worker(store)):
            await queue.wait(rec.id, timeout=10)
    body = recv.requests[0]["json"]
    assert body["last_successful_execution"] is None
    assert rec.enqueued_at is not None
    assert body["scheduled_time_ms"] == int(rec.enqueued_at.timestamp() * 1000)
    assert abs(body["invocation_latency_ms"]) < timedelta(seconds=30).total_seconds() * 1000


async def test_callback_url_routes_through_a_starlette_app(store: Store) -> None:
    """The callback_url of a schedule-like execution id (holding "/") reaches handle_callback
    through a Starlette route ``/v1/callback/{execution_id:path}/{token}``, as the docs show."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def callback(request: Request) -> JSONResponse:
        code, answer = await handle_callback(
            store,
            request.path_params["execution_id"],
            request.path_params["token"],
            await request.json(),
        )
        return JSONResponse(answer, status_code=code)

    app = Starlette(
        routes=[Route("/v1/callback/{execution_id:path}/{token}", callback, methods=["POST"])]
    )
    queue = Queue(store)
    async with receiver() as recv:
        rec = await queue.enqueue(Webhook(recv.url).job(id="svc/nightly@20261205T120000Z", ttl=60))
        async with serving(store, webhook_worker(store)):
            request = await recv.next_request(1)
            await until(lambda: state_of(store, rec.id, JobState.WAITING))
    url = request["json"]["callback_url"]
    assert "svc%2Fnightly" in url
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
        answer = await client.post(url, json={"status": "heartbeat"})
        assert answer.status_code == 200 and "deadline" in answer.json()
        answer = await client.post(url, json={"status": "success", "summary": "ok"})
        assert answer.status_code == 200 and answer.json()["state"] == "succeeded"
        assert (await client.post(url, json={"status": "success"})).status_code == 410
        wrong = url[:-1] + ("B" if url.endswith("A") else "A")
        assert (await client.post(wrong, json={"status": "success"})).status_code == 404
