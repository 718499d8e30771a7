"""Conformance: listing by args, counts kept through a job's life, finished jobs per minute."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from work import JobState, Status
from work.stores import Outcome, Store
from work.stores._args import ARGS_SCAN

from .test_conformance import now, record

pytestmark = pytest.mark.anyio

Corrupt = Callable[[Store, str], Awaitable[None]]


async def _ids(store: Store, **filters: object) -> list[str]:
    return [r.id for r in await store.list(**filters)]  # type: ignore[arg-type]


async def test_list_by_args_compares_json_values(store: Store) -> None:
    """list(args=) keeps jobs holding every given key with an equal JSON value."""
    payloads = [
        {"user": 1, "tier": "gold"},
        {"user": 1, "tier": "free"},
        {"user": True},
        {"user": 1.0, "tier": "gold", "extra": None},
        {"user": "1"},
        {"tier": "gold"},
        {"user": None},
        {"tags": ["a", "b"], "meta": {"x": 1, "y": [1, 2]}},
        {"tags": ["a"], "meta": {"y": [1, 2], "x": 1}},
    ]
    recs = [record(f"h{i % 2}", args=p) for i, p in enumerate(payloads)]
    await store.add(recs)
    ids = [r.id for r in recs]
    assert await _ids(store, args={"user": 1}) == [ids[0], ids[1], ids[3]]
    assert await _ids(store, args={"user": 1, "tier": "gold"}) == [ids[0], ids[3]]
    assert await _ids(store, args={"user": True}) == [ids[2]]
    assert await _ids(store, args={"user": "1"}) == [ids[4]]
    # null matches a key holding null, never a missing key.
    assert await _ids(store, args={"user": None}) == [ids[6]]
    assert await _ids(store, args={"extra": None}) == [ids[3]]
    # Arrays and objects compare whole (no containment); object key order does not matter.
    assert await _ids(store, args={"tags": ["a"]}) == [ids[8]]
    assert await _ids(store, args={"meta": {"y": [1, 2], "x": 1}}) == [ids[7], ids[8]]
    assert await _ids(store, args={"meta": {"x": 1}}) == []
    assert await _ids(store, args={"missing": 1}) == []
    # With the other filters, and paged with after=.
    assert await _ids(store, args={"tier": "gold"}, handler="h0") == [ids[0]]
    first = await _ids(store, args={"tier": "gold"}, limit=2)
    assert first == [ids[0], ids[3]]
    assert await _ids(store, args={"tier": "gold"}, after=first[-1]) == [ids[5]]
    # An empty filter is no filter.
    assert await _ids(store, args={}) == ids


async def test_list_by_args_takes_any_key(store: Store) -> None:
    """Keys holding dots, quotes, backslashes, brackets or spaces are keys like any other."""
    keys = ["a.b", 'say "hi"', "back\\slash", "x[0]", "with space", "$", ""]
    recs = [record(args={key: i, "other": i}) for i, key in enumerate(keys)]
    await store.add(recs)
    for i, key in enumerate(keys):
        assert await _ids(store, args={key: i}) == [recs[i].id], key
        assert await _ids(store, args={key: i, "other": i}) == [recs[i].id], key
        assert await _ids(store, args={key: [i]}) == [], key


async def test_list_by_args_with_state_and_queue(store: Store) -> None:
    """An args filter combines with state and queue, and follows state changes."""
    recs = [record(queue="a" if i % 2 else "b", args={"n": i % 3}) for i in range(9)]
    await store.add(recs)
    ids = [r.id for r in recs]
    await store.cancel(ids[3])
    assert await _ids(store, args={"n": 0}) == [ids[0], ids[3], ids[6]]
    assert await _ids(store, args={"n": 0}, state=JobState.CANCELLED) == [ids[3]]
    assert await _ids(store, args={"n": 0}, state=JobState.QUEUED, queue="b") == [ids[0], ids[6]]


async def test_list_by_args_pages_past_the_scan_bound(store: Store) -> None:
    """A match after more than one scan's worth of jobs is found (Redis scans in bounded
    steps and carries on from where it stopped)."""
    recs = [record(args={"i": i}) for i in range(ARGS_SCAN * 2 + 5)]
    await store.add(recs)
    assert await _ids(store, args={"i": ARGS_SCAN * 2 + 3}) == [recs[-2].id]
    assert await _ids(store, args={"i": 0}, after=recs[0].id) == []


async def test_list_by_args_skips_undecodable_args(store: Store, corrupt: Corrupt) -> None:
    """A job whose stored args are not JSON never matches an args filter (and breaks none)."""
    recs = [record(args={"k": 1}) for _ in range(3)]
    await store.add(recs)
    await corrupt(store, recs[1].id)
    assert await _ids(store, args={"k": 1}) == [recs[0].id, recs[2].id]


async def test_list_by_args_refuses_a_filter_that_is_not_json(store: Store) -> None:
    """An args filter must map str keys to JSON values."""
    for bad in (["k"], {1: 2}, {"k": object()}, {"k": float("nan")}):
        with pytest.raises(TypeError):
            await store.list(args=bad)  # type: ignore[arg-type]


async def test_stats_follow_a_jobs_life_and_purges(store: Store) -> None:
    """stats() counts jobs through claim, completion, retry of a failure and purge."""
    await store.add([record(queue="q", id=f"j{i}") for i in range(4)])
    claimed = await store.claim(["q"], limit=3, lease=30, owner="w")
    ok, bad = JobState.SUCCEEDED, JobState.FAILED
    outcomes = [
        Outcome(id=claimed[0].record.id, state=ok, status=Status.SUCCESS),
        Outcome(id=claimed[1].record.id, state=ok, status=Status.SUCCESS),
        Outcome(id=claimed[2].record.id, state=bad, status=Status.INTERNAL_SERVER_ERROR),
    ]
    await store.complete("w", outcomes)
    stats = await store.stats()
    assert {s: n for s, n in stats["q"].items() if n} == {
        "queued": 1,
        "succeeded": 2,
        "failed": 1,
    }
    assert await store.retry(claimed[2].record.id) is not None
    deleted = await store.purge(
        older_than=now() + timedelta(seconds=60), states=[JobState.SUCCEEDED]
    )
    assert deleted == 2
    stats = await store.stats()
    assert {s: n for s, n in stats["q"].items() if n} == {"queued": 2}
    # Twice in a row: the second read (after any fold of counters) says the same.
    assert await store.stats() == stats


async def test_finished_per_minute_counts_the_last_hour(store: Store) -> None:
    """finished_per_minute() counts succeeded and failed jobs per queue and minute."""
    assert await store.finished_per_minute() == {}
    await store.add([record(queue=q, id=f"{q}{i}") for q in ("a", "b") for i in range(3)])
    claimed = await store.claim(["a", "b"], limit=6, lease=30, owner="w")
    by_id = {c.record.id: c.record.id for c in claimed}
    failed = {"a2", "b0"}
    outcomes = [
        Outcome(id=id, state=JobState.SUCCEEDED, status=Status.SUCCESS)
        if id not in failed
        else Outcome(id=id, state=JobState.FAILED, status=Status.INTERNAL_SERVER_ERROR)
        for id in by_id
    ]
    await store.complete("w", outcomes[:-1])
    await store.cancel(outcomes[-1].id)  # running: a cancel request, not a finish yet
    series = await store.finished_per_minute()
    assert sorted(series) == ["a", "b"]
    for queue, minutes in series.items():
        assert len(minutes) == 60
        # Finished a moment ago: in this minute, or the one before if it just turned.
        assert all(pair == (0, 0) for pair in minutes[:58])
        ok = sum(s for s, _ in minutes)
        bad = sum(f for _, f in minutes)
        expected = [o for o in outcomes[:-1] if o.id.startswith(queue)]
        assert ok == sum(o.state is JobState.SUCCEEDED for o in expected)
        assert bad == sum(o.state is JobState.FAILED for o in expected)
