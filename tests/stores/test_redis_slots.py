"""Every Redis script call declares its keys, and every key it touches shares their one slot.

The workload below goes through the store's scripts (add, claim, renew, progress, complete,
deferred completion, cancel, retry, reap, purge, expire, schedules, a workflow) on a single
server while ``MONITOR`` records what Redis runs: each ``EVALSHA`` with its KEYS, and each
command a script runs in turn. On a Redis Cluster a script touching a key of another slot
would be refused (or, worse, only on another node): this catches it on one server.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from work import Job, Queue, Status, Worker
from work.scheduling import Schedule, Scheduler, Schedules
from work.stores import JobRecord, JobState, Outcome
from work.stores.redis import _KINDS, RedisStore
from work.workflows import Chain

from .conftest import REDIS_URL

pytestmark = pytest.mark.anyio

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_END = "anywork-slots-end"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client is asyncio-only."""
    return "asyncio"


def _job(id: str, queue: str = "default", **changes: object) -> JobRecord:
    return JobRecord(id=id, handler="h", queue=queue, enqueued_at=datetime.now(UTC)).replace(
        **changes
    )


async def _record(client: aioredis.Redis, lines: list[tuple[bool, list[bytes]]]) -> None:
    """Collect MONITOR's lines as (run by a script, arguments) until the end marker."""
    async with client.monitor() as monitor:
        while True:
            raw = await monitor.connection.read_response()
            line = raw if isinstance(raw, bytes) else str(raw).encode()
            head, _, rest = line.partition(b"] ")
            args = [m.group(1) for m in _ARG.finditer(rest)]
            if args[:2] == [b"ECHO", _END.encode()]:
                return
            lines.append((b" lua" in head, args))


async def _workload(store: RedisStore) -> None:
    now = datetime.now(UTC)
    await store.add([_job("a"), _job("b", queue="q", unique_key="u"), _job("c", priority=5)])
    await store.add([_job("later", scheduled_for=now + timedelta(hours=1))])
    claimed = await store.claim(["default", "q"], limit=3, lease=30, owner="o")
    ids = [c.record.id for c in claimed]
    await store.renew("o", ids, lease=30)
    await store.set_progress("o", {ids[0]: {"done": 1}})
    await store.complete(
        "o",
        [
            Outcome(id=ids[0], state=JobState.SUCCEEDED, status=Status.SUCCESS, result=1),
            Outcome(
                id=ids[1], state=JobState.FAILED, status=Status.INTERNAL_SERVER_ERROR, error="x"
            ),
            Outcome(
                id=ids[2],
                state=JobState.WAITING,
                status=Status.ACCEPTED,
                deadline=now + timedelta(minutes=1),
                ttl=60.0,
            ),
        ],
    )
    await store.heartbeat(ids[2], 30.0)
    await store.settle(Outcome(id=ids[2], state=JobState.SUCCEEDED, status=Status.SUCCESS))
    await store.retry(ids[1])
    await store.cancel("later")
    await store.claim(["default", "q"], limit=5, lease=0, owner="o")
    await store.reap()
    await store.purge(older_than=now + timedelta(days=1), states=[JobState.SUCCEEDED])
    await store.expire(["default", "q"], result_ttl=0, limit=100)

    schedules = Schedules(store)
    await schedules.put(Schedule("slots/tick", "rate(1 second)", Job("tick")))
    await Scheduler(store).tick(now=now + timedelta(seconds=5))
    await schedules.delete("slots/tick")

    worker = Worker()

    @worker.handler()
    async def add(job: Job) -> int:
        return int(job.args.get("input", 0)) + int(job.args["n"])

    queue = Queue(store)
    rec = await queue.enqueue(Chain(Job("add", {"n": 1}), Job("add", {"n": 2})))
    async with worker, anyio.create_task_group() as tg:
        tg.start_soon(lambda: worker.serve(store, lease=30))
        await queue.wait_workflow(rec.id, timeout=30)
        worker.stop()


async def test_every_script_call_declares_keys_of_one_slot() -> None:
    """Each EVALSHA names its keys (KEYS), all in one slot, and every key the script then
    touches (every argument naming a key of the store) hashes to that slot too; every kind
    of key the workload leaves is one the layout 2 move knows."""
    prefix = f"anywork-slots-{uuid.uuid4().hex[:8]}"
    store = RedisStore(REDIS_URL, prefix=prefix)
    monitor_client = aioredis.from_url(REDIS_URL)
    lines: list[tuple[bool, list[bytes]]] = []
    recorder = asyncio.get_running_loop().create_task(_record(monitor_client, lines))
    try:
        await anyio.sleep(0.2)  # MONITOR is on before the workload starts
        async with store:
            await _workload(store)
            await store._require().echo(_END)
            kinds = {
                bytes(key).decode().split(":")[1]
                async for key in store._require().scan_iter(match=f"{{{prefix}}}:*")
            }
        with anyio.fail_after(10):
            await recorder
    finally:
        recorder.cancel()
        await monitor_client.aclose()
        await store.drop()

    slot = key_slot(("{" + prefix + "}").encode())
    # Only this store's calls (tests of other prefixes may share the server meanwhile).
    calls = [
        args
        for by_script, args in lines
        if not by_script and args[0] == b"EVALSHA" and any(prefix.encode() in a for a in args)
    ]
    assert len(calls) > 20
    for args in calls:
        keys = args[3 : 3 + int(args[2])]
        assert keys, f"a script call declares no KEYS: {args[:4]!r}"
        assert {key_slot(k) for k in keys} == {slot}, keys
    inner = [args for by_script, args in lines if by_script]
    touched = {a for args in inner for a in args[1:] if prefix.encode() in a}
    assert len(inner) > 100 and len(touched) > 10
    assert {key_slot(k) for k in touched} == {slot}, sorted(touched)

    # The layout 2 move renames only the kinds it knows: a new kind of key must join them.
    assert len(kinds) >= 15 and kinds <= _KINDS, kinds - _KINDS
