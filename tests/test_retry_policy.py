"""Tests for RetryPolicy and the backoff schedules."""

from __future__ import annotations

from typing import Any

import pytest

from work import Constant, Exponential, Fibonacci, RetryPolicy, Status
from work._core.retry import backoff_from_dict


def test_exponential_doubles_up_to_the_cap() -> None:
    """Without jitter: base, base*factor, base*factor**2 … never above cap."""
    backoff = Exponential(base=0.5, factor=2.0, cap=3.0, jitter=False)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_exponential_jitter_stays_between_half_and_all() -> None:
    """Equal jitter: each pause is between half the raw value and all of it."""
    backoff = Exponential(base=1.0, factor=2.0, cap=60.0, jitter=True)
    for attempt in (1, 3, 5):
        raw = 2.0 ** (attempt - 1)
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(raw / 2 <= d <= raw for d in delays)
        assert len(delays) > 1


def test_exponential_huge_attempt_does_not_overflow() -> None:
    """A huge attempt number gives the cap, even with a large factor (no OverflowError)."""
    assert Exponential(base=1.0, factor=10.0, cap=60.0, jitter=False).delay(10_000) == 60.0
    assert Exponential(base=0.0, factor=10.0, cap=60.0, jitter=False).delay(10_000) == 0.0


def test_exponential_validates() -> None:
    """Negative base or cap, or a factor below 1, is a ValueError naming the value."""
    with pytest.raises(ValueError, match="-1"):
        Exponential(base=-1)
    with pytest.raises(ValueError, match=r"0\.5"):
        Exponential(factor=0.5)


def test_fibonacci_is_the_machinery_sequence() -> None:
    """Fibonacci gives 1, 2, 3, 5, 8 … units, at most cap."""
    backoff = Fibonacci(unit=0.5, cap=3.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 1.5, 2.5, 3.0, 3.0]
    assert [Fibonacci().delay(n) for n in range(1, 6)] == [1, 2, 3, 5, 8]
    assert Fibonacci(cap=100.0).delay(1_000_000) == 100.0


def test_fibonacci_validates() -> None:
    """A unit that is not positive or a negative cap is a ValueError."""
    with pytest.raises(ValueError, match="unit"):
        Fibonacci(unit=0)
    with pytest.raises(ValueError, match="cap"):
        Fibonacci(cap=-1)


def test_constant_is_constant() -> None:
    """Constant gives the same pause for every attempt; negative is a ValueError."""
    assert {Constant(0.25).delay(n) for n in range(1, 10)} == {0.25}
    with pytest.raises(ValueError, match="-1"):
        Constant(-1)


def test_policy_defaults_match_the_contract() -> None:
    """The default policy: 3 attempts, exponential backoff, 20 deferrals, 408/429/5xx retried."""
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.max_deferrals == 20
    assert isinstance(policy.backoff, Exponential)
    assert policy.retry_statuses() == [408, 429, *range(500, 509), 510, 511]


def test_should_retry_counts_attempts() -> None:
    """should_retry is True for a retried status only while attempts remain."""
    policy = RetryPolicy(max_attempts=2)
    assert policy.should_retry(Status.UNAVAILABLE, 1)
    assert not policy.should_retry(Status.UNAVAILABLE, 2)
    assert not policy.should_retry(Status.BAD_REQUEST, 1)
    assert not policy.should_retry(Status.SUCCESS, 1)


def test_policy_delay_follows_its_backoff() -> None:
    """policy.delay(n) is the backoff's pause after attempt n."""
    assert RetryPolicy(backoff=Constant(1.5)).delay(7) == 1.5


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": 1.5}, TypeError),
        ({"max_attempts": True}, TypeError),
        ({"max_deferrals": -1}, ValueError),
        ({"max_deferrals": 2.0}, TypeError),
        ({"backoff": 3}, TypeError),
    ],
)
def test_policy_validates(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """Bad policy settings raise at construction."""
    with pytest.raises(error):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "backoff",
    [Exponential(0.2, 3.0, 10.0, False), Fibonacci(0.5, 9.0), Constant(2.0)],
)
def test_backoff_round_trips_through_a_dict(backoff: Any) -> None:
    """to_dict / backoff_from_dict rebuild an equal schedule (as stores keep it)."""
    rebuilt = backoff_from_dict(backoff.to_dict())
    assert repr(rebuilt) == repr(backoff)
    assert [rebuilt.delay(n) for n in range(1, 5)] == [backoff.delay(n) for n in range(1, 5)]


def test_backoff_from_dict_rejects_unknown_descriptions() -> None:
    """An unknown kind, or a field the kind does not take, is a ValueError."""
    with pytest.raises(ValueError, match="'linear'"):
        backoff_from_dict({"kind": "linear"})
    with pytest.raises(ValueError, match="constant"):
        backoff_from_dict({"kind": "constant", "seconds": 1.0, "extra": 2})


def test_the_smallest_settings_are_accepted() -> None:
    """max_attempts=1 (no retry) and max_deferrals=0 (no deferral) are valid policies."""
    policy = RetryPolicy(max_attempts=1, max_deferrals=0)
    assert policy.max_attempts == 1 and policy.max_deferrals == 0
    assert not policy.should_retry(Status.UNAVAILABLE, 1)


def test_a_jittered_delay_can_reach_the_full_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal jitter spans half to all of the raw delay: the top of the range is the raw value."""
    monkeypatch.setattr("random.uniform", lambda low, high: high)
    assert Exponential(base=1, factor=2, jitter=True).delay(3) == 4.0
    monkeypatch.setattr("random.uniform", lambda low, high: low)
    assert Exponential(base=1, factor=2, jitter=True).delay(3) == 2.0


def test_stored_settings_refuse_a_custom_backoff() -> None:
    """stored_settings() describes built-in backoffs and refuses others with a TypeError."""

    class Mine(Constant):
        pass

    settings = RetryPolicy(backoff=Constant(1)).stored_settings()
    assert settings["backoff"] == {"kind": "constant", "seconds": 1.0}
    with pytest.raises(TypeError, match="Mine"):
        RetryPolicy(backoff=Mine(1)).stored_settings()
