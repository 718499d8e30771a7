"""``complete_and_claim`` (SQLite: one transaction; Redis: both scripts in one round trip;
PostgreSQL: one statement): the outcomes are applied as ``complete`` applies them, and the
next jobs are claimed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stores.conftest import corrupt_args, is_redis
from tests.stores.test_conformance import record
from work import JobState, Status
from work.stores import Outcome, Store

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
        pytest.param(("sqlite", "trio"), id="sqlite-trio"),
        pytest.param(("redis", "asyncio"), id="redis-asyncio"),
        pytest.param(("redis-cluster", "asyncio"), id="redis-cluster-asyncio"),
        pytest.param(("postgresql", "asyncio"), id="postgresql-asyncio"),
        pytest.param(("postgresql-pgbouncer", "asyncio"), id="postgresql-pgbouncer-asyncio"),
    ]
)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The stores that have complete_and_claim, on each backend they support."""
    kind, backend = request.param
    return str(kind), str(backend)


async def test_complete_and_claim_is_complete_then_claim(store: Store, store_kind: str) -> None:
    """One call applies the owner's outcomes (another owner's are refused) and claims the
    next jobs; a job given back by one of the outcomes is among them on SQLite and Redis
    (their parts run in order), and claimed by the next call on PostgreSQL (its one
    statement's parts see the jobs as they were before it)."""
    combined: Any = getattr(store, "complete_and_claim")  # noqa: B009 (not in the protocol)
    await store.add([record(id="a"), record(id="b")])
    claimed = await store.claim(["default"], limit=2, lease=30, owner="w1")
    assert sorted(x.record.id for x in claimed) == ["a", "b"]
    await store.add([record(id="c")])
    outcomes = [
        Outcome(id="a", state=JobState.SUCCEEDED, status=Status.SUCCESS, result={"x": 1}),
        Outcome(id="b", state=JobState.QUEUED, status=Status.UNKNOWN, give_back_attempt=True),
    ]
    applied, more = await combined("w1", outcomes, ["default"], limit=5, lease=30)
    assert applied == {"a", "b"}
    if store_kind.startswith("postgresql"):
        assert [x.record.id for x in more] == ["c"]
        back = await store.get("b")
        assert back is not None and back.state is JobState.QUEUED
        more += await store.claim(["default"], limit=5, lease=30, owner="w1")
    assert sorted(x.record.id for x in more) == ["b", "c"]
    assert all(x.decode_error is None and x.record.state is JobState.RUNNING for x in more)
    done = await store.get("a")
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == {"x": 1}
    again = await store.get("b")
    assert again is not None and again.attempts == 1  # the hand-back gave its attempt back
    # Another owner's outcome is fenced off; nothing is left to claim.
    late = Outcome(id="c", state=JobState.SUCCEEDED, status=Status.SUCCESS)
    assert await combined("w2", [late], ["default"], limit=5, lease=30) == (set(), [])
    rec_c = await store.get("c")
    assert rec_c is not None and rec_c.state is JobState.RUNNING


async def test_complete_and_claim_names_a_broken_job(store: Store, store_kind: str) -> None:
    """A claimed job whose args are not a JSON object comes back with a decode error, the
    others decoded as claim() decodes them."""
    combined: Any = getattr(store, "complete_and_claim")  # noqa: B009 (not in the protocol)
    await store.add([record(id="bad"), record(id="good", args={"k": 1})])
    await store.claim(["default"], limit=1, lease=30, owner="w")  # "bad", first in line
    await corrupt_args(store, "bad", "[1]")
    give_back = Outcome(id="bad", state=JobState.QUEUED, status=Status.UNKNOWN)
    applied, claimed = await combined("w", [give_back], ["default"], limit=5, lease=30)
    assert applied == {"bad"}
    if store_kind.startswith("postgresql"):
        # The job given back is claimed by the next call; a broken job queued now, by this one.
        assert [x.record.id for x in claimed] == ["good"]
        await store.add([record(id="worse")])
        await corrupt_args(store, "worse", "[2]")
        done = Outcome(id="good", state=JobState.SUCCEEDED, status=Status.SUCCESS)
        applied, more = await combined("w", [done], ["default"], limit=5, lease=30)
        assert applied == {"good"}
        assert sorted(x.record.id for x in more) == ["bad", "worse"]
        claimed += more
        errors = {x.record.id: x.decode_error for x in claimed}
        assert errors["worse"] is not None and "JSON object" in errors["worse"]
    errors = {x.record.id: x.decode_error for x in claimed}
    assert errors["good"] is None
    assert errors["bad"] is not None and "JSON object" in errors["bad"]
    good = next(x.record for x in claimed if x.record.id == "good")
    assert good.args == {"k": 1} and good.handler == "noop"


async def test_a_lost_script_cache_does_not_pass_over_a_job_given_back(
    store: Store, store_kind: str
) -> None:
    """Redis lost its script cache (a restart, SCRIPT FLUSH) and only the claim script was
    loaded again: the pipelined claim runs before the outcomes, which are then applied by the
    plain call; the job an outcome gave back is still claimed in the same call."""
    if not is_redis(store_kind):
        pytest.skip("the script cache is Redis's")
    combined: Any = getattr(store, "complete_and_claim")  # noqa: B009 (not in the protocol)
    await store.add([record(id="a")])
    assert [c.record.id for c in await store.claim(["default"], limit=1, lease=30, owner="w1")] == [
        "a"
    ]
    await store.add([record(id="b")])
    await store._require().script_flush()  # type: ignore[attr-defined]
    assert await store.claim(["empty"], limit=1, lease=30, owner="w1") == []  # claim reloaded
    back = Outcome(id="a", state=JobState.QUEUED, status=Status.UNKNOWN, give_back_attempt=True)
    applied, more = await combined("w1", [back], ["default"], limit=5, lease=30)
    assert applied == {"a"}
    assert sorted(x.record.id for x in more) == ["a", "b"]
