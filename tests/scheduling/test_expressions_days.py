"""EventBridge's day rules: L, W, LW and # at month ends, leap years and short months."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime

import pytest

from work.scheduling._cron import nearest_weekday
from work.scheduling._expressions import parse_expression

START = datetime(2026, 1, 1, tzinfo=UTC)


def days(expression: str, n: int, start: datetime = START) -> list[str]:
    """The dates of the next n fires, as 'YYYY-MM-DD Day'."""
    return [f"{f:%Y-%m-%d %a}" for f in parse_expression(expression).next_fires(start, n)]


def test_last_day_of_february_in_leap_years() -> None:
    """`L` is Feb 29 in a leap year and Feb 28 otherwise."""
    assert days("cron(0 0 L 2 ? *)", 4) == [
        "2026-02-28 Sat",
        "2027-02-28 Sun",
        "2028-02-29 Tue",
        "2029-02-28 Wed",
    ]


def test_february_29_only_in_leap_years() -> None:
    """Day 29 of February fires only in leap years (2100 is not one)."""
    assert days("cron(0 0 29 2 ? *)", 3) == ["2028-02-29 Tue", "2032-02-29 Sun", "2036-02-29 Fri"]
    assert days("cron(0 0 29 2 ? *)", 1, datetime(2096, 3, 1, tzinfo=UTC)) == ["2104-02-29 Fri"]


def test_31w_on_a_saturday_month_end() -> None:
    """`31W` when the 31st is a Saturday is Friday the 30th; a Sunday 31st is Friday the 29th;
    months without a 31st do not fire, as plain `31`."""
    assert days("cron(0 0 31W * ? *)", 7) == [
        "2026-01-30 Fri",  # Jan 31 is a Saturday
        "2026-03-31 Tue",
        "2026-05-29 Fri",  # May 31 is a Sunday: never Monday June 1
        "2026-07-31 Fri",
        "2026-08-31 Mon",
        "2026-10-30 Fri",  # Oct 31 is a Saturday
        "2026-12-31 Thu",
    ]


def test_1w_on_a_saturday_never_crosses_back() -> None:
    """`1W` when the 1st is a Saturday is Monday the 3rd, never the last Friday before."""
    fires = days("cron(0 0 1W * ? *)", 12)
    assert "2026-08-03 Mon" in fires  # Aug 1 2026 is a Saturday
    assert "2026-02-02 Mon" in fires  # Feb 1 2026 is a Sunday
    assert all(f.split()[1] not in {"Sat", "Sun"} for f in fires)
    assert all(int(f[8:10]) <= 3 for f in fires)


def test_nearest_weekday_every_day_of_many_months() -> None:
    """nW is a weekday of the same month, at most two days from n, and n itself on a weekday."""
    for year in (2026, 2027, 2028):
        for month in range(1, 13):
            last = calendar.monthrange(year, month)[1]
            for n in range(1, 32):
                near = nearest_weekday(year, month, n)
                if n > last:
                    assert near is None
                    continue
                assert near is not None and 1 <= near <= last
                assert calendar.weekday(year, month, near) < 5
                assert abs(near - n) <= 2
                if calendar.weekday(year, month, n) < 5:
                    assert near == n


def test_last_weekday_of_month() -> None:
    """`LW` is the month's last MON-FRI."""
    assert days("cron(0 0 LW * ? *)", 6) == [
        "2026-01-30 Fri",
        "2026-02-27 Fri",
        "2026-03-31 Tue",
        "2026-04-30 Thu",
        "2026-05-29 Fri",
        "2026-06-30 Tue",
    ]


def test_fifth_weekday_skips_months_without_one() -> None:
    """`5#5` (the fifth Thursday) fires only in months that have five Thursdays."""
    fires = days("cron(0 0 ? * 5#5 *)", 6)
    assert fires == [
        "2026-01-29 Thu",
        "2026-04-30 Thu",
        "2026-07-30 Thu",
        "2026-10-29 Thu",
        "2026-12-31 Thu",
        "2027-04-29 Thu",
    ]
    # independently: the months of 2026 whose fifth Thursday exists
    fifth = [
        f"{date(2026, m, d):%Y-%m-%d %a}"
        for m in range(1, 13)
        for d in [week[calendar.THURSDAY] for week in calendar.monthcalendar(2026, m) if week[3]][
            4:5
        ]
    ]
    assert fires[:5] == fifth


def test_fifth_friday_of_february() -> None:
    """`6#5` in February needs a leap year whose February starts on a Friday."""
    assert days("cron(0 0 ? FEB 6#5 *)", 2) == ["2036-02-29 Fri", "2064-02-29 Fri"]
    assert days("cron(0 0 ? FEB 6#5 2037-2060)", 1) == []


def test_last_weekday_of_week_numbering() -> None:
    """Day-of-week counts SUN=1 ... SAT=7: `1L` is the last Sunday, `6L` the last Friday,
    `L` alone is Saturday, and `2#1` the first Monday."""
    assert days("cron(0 0 ? * 1L *)", 2) == ["2026-01-25 Sun", "2026-02-22 Sun"]
    assert days("cron(0 0 ? * 6L *)", 2) == ["2026-01-30 Fri", "2026-02-27 Fri"]
    assert days("cron(0 0 ? * 7L *)", 2) == ["2026-01-31 Sat", "2026-02-28 Sat"]
    assert days("cron(0 0 ? * L *)", 2) == ["2026-01-03 Sat", "2026-01-10 Sat"]
    assert days("cron(0 0 ? * 2#1 *)", 2) == ["2026-01-05 Mon", "2026-02-02 Mon"]
    assert days("cron(0 0 ? * MON#1,FRI#3 *)", 3) == [
        "2026-01-05 Mon",
        "2026-01-16 Fri",
        "2026-02-02 Mon",
    ]


def test_mixed_day_of_month_items() -> None:
    """Day-of-month lists mix numbers, L and W: `1,15W,L`."""
    assert days("cron(0 0 1,15W,L * ? *)", 6) == [
        "2026-01-15 Thu",
        "2026-01-31 Sat",
        "2026-02-01 Sun",
        "2026-02-16 Mon",  # Feb 15 is a Sunday
        "2026-02-28 Sat",
        "2026-03-01 Sun",
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 0 L * MON *)", "exactly one of day-of-month and day-of-week must be '?'"),
        ("cron(0 0 0W * ? *)", "day-of-month '0' is out of range 1-31"),
        ("cron(0 0 ? * 0L *)", "day-of-week '0' is out of range 1-7"),
        ("cron(0 0 ? * 0#1 *)", "day-of-week '0' is out of range 1-7"),
        ("cron(0 0 ? * 2#0 *)", "the number after '#' must be 1-5"),
        ("cron(0 0 ? * 2#x *)", "the number after '#' must be 1-5"),
        ("cron(0 0 30W 2 ? *)", "day-of-month 30 never occurs in month 2"),
        ("cron(0 0 31 4,6,9,11 ? *)", "day-of-month 31 never occurs in month 4,6,9,11"),
        ("cron(0 0 XW * ? *)", "day-of-month 'X' is not a number"),
    ],
)
def test_bad_day_rules(expression: str, message: str) -> None:
    """A bad L, W or # item is a ValueError naming the field."""
    with pytest.raises(ValueError) as info:
        parse_expression(expression)
    assert message in str(info.value)
