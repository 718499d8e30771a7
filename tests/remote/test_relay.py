"""The relay against workers played in memory: routing, back-pressure, faults, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from work import Job, Status, StatusError
from work.remote import Relay, RelayState, RemoteResult

from .app import Recording
from .asgi_peer import Peer, hello

pytestmark = pytest.mark.anyio


async def _do(relay: Relay, job: Job, out: list[RemoteResult], timeout: float = 5.0) -> None:
    out.append(await relay.do(job, timeout=timeout))


@asynccontextmanager
async def _one_worker(
    relay: Relay, *, concurrency: int
) -> AsyncIterator[tuple[TaskGroup, Peer, list[RemoteResult]]]:
    """The relay running (5 s at most) with one worker of handler ``h`` joined: the task group,
    the worker, and the list the test's do calls append their results to."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            peer = Peer(relay)
            await peer.join(tg, hello(["h"], concurrency=concurrency))
            yield tg, peer, []


async def _ended(out: list[RemoteResult], count: int) -> None:
    """Until ``count`` do calls have ended (their results in ``out``)."""
    while len(out) < count:
        await anyio.sleep(0.01)


def _echo_batch(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch frame answering every job frame of ``jobs`` 200, each with its own args."""
    results = [
        {"type": "result", "id": j["id"], "status": 200, "result": j["job"]["args"]} for j in jobs
    ]
    return {"type": "batch", "messages": results}


async def test_job_goes_to_the_worker_with_its_handler() -> None:
    """A job is routed only to a worker that announced its handler; its answer comes back."""
    relay = Relay(token="t")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            a, b = Peer(relay, "t"), Peer(relay, "t")
            assert (await a.join(tg, hello(["resize"], worker_id="a")))["type"] == "welcome"
            assert (await b.join(tg, hello(["email"], worker_id="b")))["type"] == "welcome"
            out: list[RemoteResult] = []
            tg.start_soon(_do, relay, Job("email", {"to": "x"}), out)
            job = await b.recv()
            assert job is not None and job["type"] == "job"
            assert job["job"]["handler"] == "email" and job["job"]["args"] == {"to": "x"}
            await b.answer(job, 200, {"sent": True})
            await _ended(out, 1)
        assert out[0] == RemoteResult(Status.OK, {"sent": True}, None, "b")
        assert out[0].raise_for_status() is out[0]


async def test_back_pressure_never_exceeds_a_workers_concurrency() -> None:
    """Concurrency 2, five do calls: two jobs on the worker; each answer lets one more in."""
    relay = Relay()
    async with _one_worker(relay, concurrency=2) as (tg, peer, out):
        for i in range(5):
            tg.start_soon(_do, relay, Job("h", {"i": i}), out)
        first, second = await peer.recv(), await peer.recv()
        assert first is not None and second is not None
        while relay.state.pending < 3:
            await anyio.sleep(0.01)
        assert relay.state == RelayState(pending=3, in_flight=2, connected=1, capacity=0)
        await peer.answer(first)
        third = await peer.recv()
        assert third is not None and relay.state.in_flight == 2
        for done in (second, third):
            await peer.answer(done)
        for _ in range(2):
            late = await peer.recv()
            assert late is not None
            await peer.answer(late)
        await _ended(out, 5)
    assert all(r.status == Status.OK for r in out)


async def test_no_worker_with_the_handler_is_503_and_asks_the_scaler() -> None:
    """No worker has the handler: inbound is called, the job waits, and ends 503 (timed_out)."""
    scaler = Recording()
    relay = Relay(scaler=scaler)
    async with relay:
        with anyio.fail_after(5):
            result = await relay.do(Job("nobody"), timeout=0.2)
    assert result.status == Status.UNAVAILABLE and result.worker_id is None
    assert "no worker with handler 'nobody'" in (result.error or "")
    assert [name for name, _ in scaler.calls] == ["inbound", "timed_out"]
    assert scaler.calls[0][1] == RelayState(pending=1, in_flight=0, connected=0, capacity=0)
    with pytest.raises(StatusError) as caught:
        result.raise_for_status()
    assert caught.value.status == Status.UNAVAILABLE


async def test_worker_that_never_answers_is_504_and_gets_a_cancel() -> None:
    """A worker that takes a job and never answers: do ends 504 (timed_out), the worker is
    sent a cancel, and its slot stays taken until it answers."""
    scaler = Recording()
    relay = Relay(scaler=scaler)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            peer = Peer(relay)
            await peer.join(tg, hello(["slow"], concurrency=1, worker_id="mute"))
            result = await relay.do(Job("slow"), timeout=0.2)
            assert result.status == Status.GATEWAY_TIMEOUT and result.worker_id == "mute"
            job = await peer.recv()
            cancel = await peer.recv()
            assert job is not None and cancel == {"type": "cancel", "id": job["id"]}
            assert relay.state.capacity == 0
            await peer.answer(job, 499)  # the late answer is dropped, the slot freed
            while relay.state.capacity == 0:
                await anyio.sleep(0.01)
    assert [name for name, _ in scaler.calls] == ["inbound", "timed_out"]


async def test_disconnect_mid_job_redelivers_then_502() -> None:
    """A worker gone mid-job: the job goes to another worker; gone again past
    max_redeliveries: 502 naming the worker."""
    relay = Relay(max_redeliveries=1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            a = Peer(relay)
            await a.join(tg, hello(["h"], worker_id="a"))
            out: list[RemoteResult] = []
            tg.start_soon(_do, relay, Job("h"), out)
            assert await a.recv() is not None
            b = Peer(relay)
            await b.join(tg, hello(["h"], worker_id="b"))
            await a.disconnect()
            again = await b.recv()
            assert again is not None and again["type"] == "job"
            await b.disconnect()
            await _ended(out, 1)
    assert out[0].status == Status.BAD_GATEWAY and out[0].worker_id == "b"
    assert "went mid-job" in (out[0].error or "")


@pytest.mark.parametrize(
    "frame",
    [
        "not json{",
        '["a list"]',
        '{"type": "result", "id": "d1", "status": "ok"}',
        '{"type": "result", "id": "d1", "status": 299}',
        '{"type": "launch"}',
    ],
)
async def test_garbage_from_a_worker_closes_it_and_its_job_fails_502(frame: str) -> None:
    """A frame that is not a protocol message (not JSON, no type, a bad status, an unknown
    type) closes that worker (1007); with no redelivery left its job ends 502."""
    relay = Relay(max_redeliveries=0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            peer = Peer(relay)
            await peer.join(tg, hello(["h"]))
            out: list[RemoteResult] = []
            tg.start_soon(_do, relay, Job("h"), out)
            assert await peer.recv() is not None
            await peer.send(frame)
            assert await peer.recv() is None
            assert peer.closed == 1007
            await _ended(out, 1)
    assert out[0].status == Status.BAD_GATEWAY
    assert "protocol error" in (out[0].error or "")


async def test_garbage_hello_and_other_versions_are_refused_clearly() -> None:
    """A hello of another protocol version is refused naming both versions (close 4001); a
    hello that is garbage is refused with 1007."""
    relay = Relay()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            old = Peer(relay)
            answer = await old.join(tg, {**hello(["h"]), "version": 99})
            assert answer["type"] == "refused"
            assert "version 99" in answer["reason"] and "speaks 1" in answer["reason"]
            assert await old.recv() is None and old.closed == 4001
            junk = Peer(relay)
            assert await junk.open(tg)
            await junk.send("hello?")
            refusal = await junk.recv()
            assert refusal is not None and refusal["type"] == "refused"
            assert await junk.recv() is None and junk.closed == 1007
            assert relay.state.connected == 0


async def test_wrong_or_missing_token_is_refused_before_the_handshake() -> None:
    """A wrong or missing bearer token: the connection is refused (1008, HTTP 403)."""
    relay = Relay(token="right")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            for token in ("wrong", None):
                peer = Peer(relay, token)
                assert not await peer.open(tg)
                assert peer.closed == 1008
            assert await Peer(relay, "right").open(tg)
            tg.cancel_scope.cancel()


async def test_relay_stopping_with_jobs_in_flight_answers_503() -> None:
    """Leaving ``async with relay`` with jobs waiting and in flight: every do returns 503 at
    once and the workers are closed with 1012 (so they reconnect to the next run)."""
    relay = Relay()
    out: list[RemoteResult] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            peer = Peer(relay)
            async with relay:
                await peer.join(tg, hello(["h"], concurrency=1))
                tg.start_soon(_do, relay, Job("h"), out)
                tg.start_soon(_do, relay, Job("h"), out)
                assert await peer.recv() is not None
                while relay.state.pending < 1:
                    await anyio.sleep(0.01)
            await _ended(out, 2)
            assert await peer.recv() is None and peer.closed == 1012
    assert [r.status for r in out] == [Status.UNAVAILABLE] * 2
    assert all(r.error == "the relay stopped" for r in out)


async def test_http_request_to_the_endpoint_gets_426() -> None:
    """A plain HTTP request to relay.asgi is answered 426 Upgrade Required."""
    import httpx

    relay = Relay()
    transport = httpx.ASGITransport(app=relay.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        response = await client.get("/")
    assert response.status_code == 426


async def test_bad_input_is_refused_with_clear_errors() -> None:
    """Bad arguments raise TypeError/ValueError naming the value; do needs a running relay."""
    with pytest.raises(ValueError, match="timeout"):
        Relay(timeout=0)
    with pytest.raises(ValueError, match="max_redeliveries"):
        Relay(max_redeliveries=-1)
    with pytest.raises(ValueError, match="token"):
        Relay(token="")
    with pytest.raises(TypeError, match="inbound"):
        Relay(scaler=object())  # type: ignore[arg-type]
    relay = Relay()
    with pytest.raises(RuntimeError, match="not running"):
        await relay.do(Job("h"))
    async with relay:
        bad: Any = "h"
        with pytest.raises(TypeError, match="needs a Job"):
            await relay.do(bad)
        with pytest.raises(TypeError, match="set"):
            await relay.do(Job("h", {"s": {1, 2}}))
        with pytest.raises(ValueError, match="timeout"):
            await relay.do(Job("h"), timeout=-1)


async def test_a_failing_scaler_does_not_fail_the_job(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in a scaler hook is logged; the job still ends with its own status."""

    class Broken(Recording):
        def inbound(self, state: RelayState) -> None:
            raise RuntimeError("scaler bug")

    relay = Relay(scaler=Broken())
    async with relay:
        result = await relay.do(Job("h"), timeout=0.05)
    assert result.status == Status.UNAVAILABLE
    assert "scaler bug" in caplog.text


async def test_do_carries_the_callers_trace_context_in_the_job_headers() -> None:
    """do writes the current span's trace context (traceparent) into the headers it sends,
    so the remote worker's tracing adapter continues the caller's trace."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    relay = Relay()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            peer = Peer(relay)
            await peer.join(tg, hello(["h"]))
            out: list[RemoteResult] = []
            with tracer.start_as_current_span("caller") as span:
                tg.start_soon(_do, relay, Job("h", headers={"x-request": "r1"}), out)
                job = await peer.recv()
            assert job is not None
            trace_id = format(span.get_span_context().trace_id, "032x")
            assert job["job"]["headers"]["x-request"] == "r1"
            assert trace_id in job["job"]["headers"]["traceparent"]
            await peer.answer(job)
            await _ended(out, 1)


async def test_bye_stops_routing_and_closes_once_the_workers_jobs_are_answered() -> None:
    """A worker that says bye gets no new job; the relay closes it normally (1000) once its
    in-flight job is answered, and a new job waits for another worker."""
    relay = Relay()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            peer = Peer(relay)
            await peer.join(tg, hello(["h"], worker_id="leaving"))
            out: list[RemoteResult] = []
            tg.start_soon(_do, relay, Job("h"), out)
            job = await peer.recv()
            assert job is not None
            await peer.send({"type": "bye"})
            while relay.state.capacity:
                await anyio.sleep(0.01)
            tg.start_soon(_do, relay, Job("h"), out, 0.2)
            await peer.answer(job, 201, "made")
            assert await peer.recv() is None and peer.closed == 1000
            await _ended(out, 2)
    assert [r.status for r in out] == [Status.CREATED, Status.UNAVAILABLE]
    assert out[0].result == "made" and out[0].worker_id == "leaving"


async def test_lifecycle_edges_lifespan_not_running_and_repr() -> None:
    """Served alone, relay.asgi answers lifespan; a worker connecting to a stopped relay is
    closed with 1012; a relay cannot be entered twice; reprs name the state."""
    relay = Relay()
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await relay.asgi({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            peer = Peer(relay)
            assert not await peer.open(tg) and peer.closed == 1012
    assert "stopped" in repr(relay) and "relay.asgi" in repr(relay.asgi)
    async with relay:
        assert "running" in repr(relay)
        with pytest.raises(RuntimeError, match="already running"):
            await relay.__aenter__()


async def test_jobs_for_a_busy_worker_go_out_as_one_batch_frame() -> None:
    """A job for an idle worker goes out in a frame of its own; jobs handed to a worker that
    holds one already, in the same event-loop turn, go out together as one batch frame."""
    relay = Relay()
    async with _one_worker(relay, concurrency=8) as (tg, peer, out):
        tg.start_soon(_do, relay, Job("h", {"i": 0}), out)
        alone = await peer.recv_frame()
        assert alone is not None and alone["type"] == "job"
        for i in range(1, 4):
            tg.start_soon(_do, relay, Job("h", {"i": i}), out)
        batch = await peer.recv_frame()
        assert batch is not None and batch["type"] == "batch"
        jobs = [alone, *batch["messages"]]
        assert sorted(j["job"]["args"]["i"] for j in jobs) == [0, 1, 2, 3]
        assert relay.state.in_flight == 4
        await peer.send(_echo_batch(jobs))
        await _ended(out, 4)
        # The worker answered several at once: the next jobs handed over in one turn go
        # out together, the first one included.
        for i in range(4, 6):
            tg.start_soon(_do, relay, Job("h", {"i": i}), out)
        batch = await peer.recv_frame()
        assert batch is not None and batch["type"] == "batch"
        assert sorted(j["job"]["args"]["i"] for j in batch["messages"]) == [4, 5]
        for job in batch["messages"]:
            await peer.answer(job, 200, job["job"]["args"])
        await _ended(out, 6)
    assert sorted(r.result["i"] for r in out) == [0, 1, 2, 3, 4, 5]


async def test_each_do_ends_at_its_own_deadline_whatever_the_order() -> None:
    """The relay's one deadline task ends each do at its own timeout: a shorter timeout given
    after a longer one still ends first (503), and a do answered in time is not touched."""
    relay = Relay()
    ended: list[float] = []

    async def timed(timeout: float) -> None:
        result = await relay.do(Job("nobody"), timeout=timeout)
        assert result.status == Status.UNAVAILABLE
        ended.append(timeout)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, relay:
            tg.start_soon(timed, 0.6)
            await anyio.sleep(0.05)
            tg.start_soon(timed, 0.1)
            peer = Peer(relay)
            await peer.join(tg, hello(["h"]))
            out: list[RemoteResult] = []
            tg.start_soon(_do, relay, Job("h"), out, 0.2)
            job = await peer.recv()
            assert job is not None
            await peer.answer(job)
            while len(ended) < 2:
                await anyio.sleep(0.01)
        assert ended == [0.1, 0.6]
        assert [r.status for r in out] == [Status.OK]


async def test_deadlines_of_answered_dos_leave_nothing_behind() -> None:
    """Dos answered in time, each with a timeout of its own, leave no deadline (nor an empty
    group of them) in the relay's deadline keeper."""
    relay = Relay()
    async with _one_worker(relay, concurrency=8) as (tg, peer, out):
        for i in range(5):
            tg.start_soon(_do, relay, Job("h"), out, 10.0 + i / 7)
        for _ in range(5):
            job = await peer.recv()
            assert job is not None
            await peer.answer(job)
        await _ended(out, 5)
        assert len(relay._deadlines) == 0 and not relay._deadlines._groups
    assert [r.status for r in out] == [Status.OK] * 5


async def test_a_batch_frame_answers_several_jobs_and_a_bad_batch_is_garbage() -> None:
    """Several results in one batch frame each end their do; a batch holding a batch is a
    protocol error (the worker is closed with 1007)."""
    relay = Relay(max_redeliveries=0)
    async with _one_worker(relay, concurrency=4) as (tg, peer, out):
        for i in range(3):
            tg.start_soon(_do, relay, Job("h", {"i": i}), out)
        jobs: list[dict[str, Any]] = []
        while len(jobs) < 3:
            frame = await peer.recv()
            assert frame is not None
            jobs.extend(frame["messages"] if frame["type"] == "batch" else [frame])
        await peer.send(_echo_batch(jobs))
        await _ended(out, 3)
        assert sorted(r.result["i"] for r in out) == [0, 1, 2]
        tg.start_soon(_do, relay, Job("h"), out)
        assert await peer.recv() is not None
        await peer.send({"type": "batch", "messages": [{"type": "batch", "messages": []}]})
        assert await peer.recv() is None and peer.closed == 1007
        await _ended(out, 4)
    assert out[3].status == Status.BAD_GATEWAY
