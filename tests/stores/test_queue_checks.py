"""Queue's range checks on every store: each poison value is refused, nothing is stored, and the
store keeps working for the next job."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from work import Job, JobState, Queue, RetryPolicy
from work.stores import Store

pytestmark = pytest.mark.anyio


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def _job(**changes: Any) -> Job:
    """A good job with some attributes overwritten after construction (Job's own checks are
    not what is tested here: Queue must refuse the value whatever Job lets through)."""
    job = Job("noop", {"n": 1})
    for name, value in changes.items():
        setattr(job, name, value)
    return job


AHEAD_200Y = timedelta(days=365 * 200)

# (id, how to enqueue it, a fragment the message must contain)
POISON: list[tuple[str, Callable[[], tuple[Job, dict[str, Any]]], str]] = [
    ("priority-2**31", lambda: (_job(), {"priority": 2**31}), "2147483648"),
    ("priority-below", lambda: (_job(), {"priority": -(2**31) - 1}), "-2147483649"),
    ("priority-2**63", lambda: (_job(), {"priority": 2**63}), str(2**63)),
    ("priority-float", lambda: (_job(), {"priority": 1.5}), "1.5"),
    ("delay-nan", lambda: (_job(), {"delay": float("nan")}), "nan"),
    ("delay-inf", lambda: (_job(), {"delay": float("inf")}), "inf"),
    ("delay-negative", lambda: (_job(), {"delay": -1}), "-1"),
    ("delay-huge", lambda: (_job(), {"delay": 10**20}), str(10**20)),
    ("delay-timedelta-max", lambda: (_job(), {"delay": timedelta.max}), "999999999"),
    ("at-min", lambda: (_job(), {"at": datetime.min.replace(tzinfo=UTC)}), "0001-01-01"),
    ("at-max", lambda: (_job(), {"at": datetime.max.replace(tzinfo=UTC)}), "9999-12-31"),
    (
        "at-max-offset",
        lambda: (_job(), {"at": datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))}),
        "9999-12-31",
    ),
    (
        "at-min-offset",
        lambda: (_job(), {"at": datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))}),
        "0001-01-01",
    ),
    ("at-200-years", lambda: (_job(), {"at": datetime.now(UTC) + AHEAD_200Y}), "at must be"),
    ("at-1969", lambda: (_job(), {"at": datetime(1969, 12, 31, 23, tzinfo=UTC)}), "1969-12-31"),
    ("at-naive", lambda: (_job(), {"at": datetime(2030, 1, 1)}), "naive"),
    ("queue-nul", lambda: (_job(queue="a\x00b"), {}), "'a\\x00b'"),
    ("queue-newline", lambda: (_job(queue="a\nb"), {}), "'a\\nb'"),
    ("queue-blank", lambda: (_job(queue="  "), {}), "'  '"),
    ("queue-long", lambda: (_job(queue="q" * 256), {}), "256"),
    ("queue-surrogate", lambda: (_job(queue="a\ud800"), {}), "'a\\ud800'"),
    ("id-nul", lambda: (_job(id="x\x00"), {}), "'x\\x00'"),
    ("id-long", lambda: (_job(id="i" * 1000), {}), "1000"),
    ("id-int", lambda: (_job(id=7), {}), "7"),
    ("handler-blank", lambda: (_job(handler=" "), {}), "' '"),
    ("handler-nul", lambda: (_job(handler="h\x00"), {}), "'h\\x00'"),
    ("unique-key-nul", lambda: (_job(), {"unique_key": "k\x00"}), "'k\\x00'"),
    ("args-nul", lambda: (_job(args={"s": "a\x00b"}), {}), "job.args['s']"),
    ("args-key-nul", lambda: (_job(args={"k\x00": 1}), {}), "'k\\x00'"),
    ("args-surrogate", lambda: (_job(args={"s": ["\udc80"]}), {}), "job.args['s'][0]"),
    ("args-deep", lambda: (_job(args=_deep(5000)), {}), "64 levels"),
    ("args-cyclic", lambda: (_job(args=_cyclic()), {}), "64 levels"),
    ("args-nan", lambda: (_job(args={"x": float("nan")}), {}), "job.args['x']"),
    ("headers-int", lambda: (_job(headers={"k": 1}), {}), "job.headers['k']"),
    ("headers-nul", lambda: (_job(headers={"k": "\x00"}), {}), "job.headers['k']"),
    ("timeout-inf", lambda: (_job(timeout=float("inf")), {}), "inf"),
    (
        "max-attempts-2**31",
        lambda: (_job(), {"retry": RetryPolicy(max_attempts=2**31)}),
        "2147483648",
    ),
]


@pytest.mark.parametrize(("make"), [pytest.param(p[1:], id=p[0]) for p in POISON])
async def test_poison_value_is_refused_and_the_store_keeps_working(
    store: Store, make: tuple[Callable[[], tuple[Job, dict[str, Any]]], str]
) -> None:
    """A poison value is a ValueError/TypeError naming it; nothing is stored; the next job runs."""
    build, fragment = make
    job, options = build()
    queue = Queue(store)
    with pytest.raises((ValueError, TypeError)) as caught:
        await queue.enqueue(job, **options)
    assert fragment in str(caught.value)
    with pytest.raises((ValueError, TypeError)):
        await queue.enqueue_many([Job("fine"), job], **options)
    assert await queue.list() == []
    assert await store.stats() == {}
    # The store still works: a good job is stored, listed, claimed and finished.
    good = await queue.enqueue(Job("noop", {"n": 2}))
    assert [r.id for r in await queue.list()] == [good.id]
    (claimed,) = await store.claim(["default"], limit=5, lease=30, owner="w")
    assert claimed.record.id == good.id and claimed.decode_error is None


async def test_the_edges_of_each_range_are_stored(store: Store) -> None:
    """The extreme values the checks accept are stored and read back faithfully."""
    queue = Queue(store)
    now = datetime.now(UTC)
    high = await queue.enqueue(Job("h" * 255, id="i" * 255, queue="q" * 255), priority=2**31 - 1)
    low = await queue.enqueue(Job("noop"), priority=-(2**31))
    far = await queue.enqueue(Job("noop"), at=now + timedelta(days=36500))
    past = await queue.enqueue(Job("noop"), at=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    late = await queue.enqueue(Job("noop"), delay=timedelta(days=36000))
    nested = await queue.enqueue(Job("noop", _deep(60)))
    text = await queue.enqueue(Job("noop", {"s": "tab\tand é ☃ 😀"}))
    for rec in (high, low, far, past, late, nested, text):
        assert await store.get(rec.id) == rec
    assert far.state is JobState.SCHEDULED and past.state is JobState.QUEUED
    # The past one is claimable; the far-future ones wait without wedging the claim.
    claimed = await store.claim(["default"], limit=10, lease=30, owner="w")
    assert {c.record.id for c in claimed} == {low.id, past.id, nested.id, text.id}
    await store.wait_for_work(["default"], 0.01)


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 256, "", "\ud800"])
async def test_reading_with_an_impossible_id_or_name_is_a_value_error(
    store: Store, bad: str
) -> None:
    """get, wait, cancel and list with an id or name no job can have raise ValueError on
    every store (never a driver error), and the store keeps working."""
    queue = Queue(store)
    rec = await queue.enqueue(Job("noop"))
    for call in (queue.get(bad), queue.wait(bad, timeout=1), queue.cancel(bad)):
        with pytest.raises(ValueError, match="id must"):
            await call
    for name in ("queue", "handler", "after"):
        filters: dict[str, Any] = {name: bad}
        with pytest.raises(ValueError, match=f"{name} must"):
            await queue.list(**filters)
    with pytest.raises(ValueError, match="limit must be between 0 and 2147483647"):
        await queue.list(limit=10**20)
    assert [r.id for r in await queue.list()] == [rec.id]
