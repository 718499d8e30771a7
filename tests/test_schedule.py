"""Tests for interval and cron timing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from work._runtime.timers import CronSchedule, IntervalSchedule, parse_every


def test_interval_grid_does_not_drift() -> None:
    """The next tick is on the start + n*interval grid, skipping ticks already passed."""
    schedule = IntervalSchedule(10.0)
    assert schedule.next_after(100.0, 100.0) == 110.0
    assert schedule.next_after(100.0, 109.9) == 110.0
    assert schedule.next_after(100.0, 135.0) == 140.0  # 110, 120, 130 were missed: skipped


def test_parse_every_kinds() -> None:
    """Numbers and timedeltas are intervals; strings are cron lines."""
    assert isinstance(parse_every(5), IntervalSchedule)
    assert parse_every(timedelta(minutes=1)).interval == 60.0  # type: ignore[union-attr]
    assert isinstance(parse_every("*/5 * * * *"), CronSchedule)
    with pytest.raises(ValueError, match="> 0"):
        parse_every(0)
    with pytest.raises(ValueError, match="'61 \\* \\* \\* \\*'"):
        parse_every("61 * * * *")
    with pytest.raises(TypeError):
        parse_every([1])  # type: ignore[arg-type]


def test_cron_is_read_in_utc() -> None:
    """A cron line fires at the next UTC match, strictly after now."""
    schedule = CronSchedule("0 9 * * *")
    now = datetime(2026, 3, 1, 8, 59, 59, tzinfo=UTC)
    assert schedule.next_after_wall(now) == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    at_nine = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert schedule.next_after_wall(at_nine) == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_cron_with_seconds_field() -> None:
    """A sixth field is seconds (croniter's convention)."""
    schedule = CronSchedule("* * * * * */15")
    now = datetime(2026, 3, 1, 8, 0, 1, tzinfo=UTC)
    assert schedule.next_after_wall(now) == datetime(2026, 3, 1, 8, 0, 15, tzinfo=UTC)
