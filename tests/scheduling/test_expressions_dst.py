"""The Vixie cron DST rules in Europe/Berlin, America/New_York and Australia/Lord_Howe.

2026's transitions (UTC offsets before -> after):
- Europe/Berlin: 29 Mar 02:00 -> 03:00 (+1 -> +2), 25 Oct 03:00 -> 02:00 (+2 -> +1).
- America/New_York: 8 Mar 02:00 -> 03:00 (-5 -> -4), 1 Nov 02:00 -> 01:00 (-4 -> -5).
- Australia/Lord_Howe, a 30-minute shift: 5 Apr 02:00 -> 01:30 (+11 -> +10:30),
  4 Oct 02:00 -> 02:30 (+10:30 -> +11).
"""

from __future__ import annotations

import functools
import itertools
import zoneinfo
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta

import pytest

from work.scheduling._expressions import parse_expression

ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def fires_on(expression: str, zone: str, day: date) -> list[datetime]:
    """Every fire whose instant falls on that local calendar day."""
    tz = zoneinfo.ZoneInfo(zone)
    start = datetime.combine(day, time(), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), tz).astimezone(UTC)
    expr = parse_expression(expression, zone)
    fires: list[datetime] = []
    fire = expr.next_after(start - timedelta(microseconds=1), anchor=ANCHOR)
    while fire is not None and fire < end:
        fires.append(fire)
        fire = expr.next_after(fire, anchor=ANCHOR)
    return fires


# (zone, a fixed wall time inside the spring-forward gap, the gap's day, the first instant
# after the gap)
GAPS = [
    ("Europe/Berlin", "30 2", date(2026, 3, 29), utc(2026, 3, 29, 1)),
    ("Europe/Berlin", "0 2", date(2026, 3, 29), utc(2026, 3, 29, 1)),
    ("America/New_York", "30 2", date(2026, 3, 8), utc(2026, 3, 8, 7)),
    ("Australia/Lord_Howe", "15 2", date(2026, 10, 4), utc(2026, 10, 3, 15, 30)),
    ("Australia/Lord_Howe", "0 2", date(2026, 10, 4), utc(2026, 10, 3, 15, 30)),
]


@pytest.mark.parametrize(("zone", "time_fields", "day", "instant"), GAPS)
@pytest.mark.parametrize("form", ["crontab", "eventbridge", "at"])
def test_spring_gap_fires_once_after_the_gap(
    zone: str, time_fields: str, day: date, instant: datetime, form: str
) -> None:
    """A fixed wall time inside a spring-forward gap fires once, at the first instant after it."""
    minute, hour = time_fields.split()
    expression = {
        "crontab": f"{minute} {hour} * * *",
        "eventbridge": f"cron({minute} {hour} * * ? *)",
        "at": f"at({day}T{int(hour):02d}:{int(minute):02d}:00)",
    }[form]
    assert fires_on(expression, zone, day) == [instant]
    expr = parse_expression(expression, zone)
    assert expr.next_after(instant - timedelta(hours=3), anchor=ANCHOR) == instant
    assert expr.next_after(instant - timedelta(seconds=1), anchor=ANCHOR) == instant
    after = expr.next_after(instant, anchor=ANCHOR)
    if form == "at":
        assert after is None
    else:  # the next day, at the wall time again
        tz = zoneinfo.ZoneInfo(zone)
        wall = time(int(hour), int(minute))
        assert after == datetime.combine(day + timedelta(days=1), wall, tz).astimezone(UTC)


# (zone, a fixed wall time repeated by a fall-back, the day, its first occurrence)
REPEATS = [
    ("Europe/Berlin", "30 2", date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),
    ("Europe/Berlin", "0 2", date(2026, 10, 25), utc(2026, 10, 25, 0, 0)),
    ("America/New_York", "30 1", date(2026, 11, 1), utc(2026, 11, 1, 5, 30)),
    ("Australia/Lord_Howe", "45 1", date(2026, 4, 5), utc(2026, 4, 4, 14, 45)),
    ("Australia/Lord_Howe", "30 1", date(2026, 4, 5), utc(2026, 4, 4, 14, 30)),
]


@pytest.mark.parametrize(("zone", "time_fields", "day", "instant"), REPEATS)
@pytest.mark.parametrize("form", ["crontab", "eventbridge", "at"])
def test_fall_back_repeat_fires_once_at_the_first(
    zone: str, time_fields: str, day: date, instant: datetime, form: str
) -> None:
    """A fixed wall time repeated by a fall-back fires once, at its first occurrence."""
    minute, hour = time_fields.split()
    expression = {
        "crontab": f"{minute} {hour} * * *",
        "eventbridge": f"cron({minute} {hour} * * ? *)",
        "at": f"at({day}T{int(hour):02d}:{int(minute):02d}:00)",
    }[form]
    assert fires_on(expression, zone, day) == [instant]
    # asked from inside the repeat, the second occurrence is not a fire
    expr = parse_expression(expression, zone)
    later = expr.next_after(instant + timedelta(minutes=1), anchor=ANCHOR)
    assert later is None or later > instant + timedelta(hours=20)


# (zone, spring day, fall day, an every-real-occurrence expression, fires on each)
WILDCARDS = [
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25), "0 * * * *", 23, 25),
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25), "cron(0 * * * ? *)", 23, 25),
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25), "@hourly", 23, 25),
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25), "30 */2 * * *", 11, 13),
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25), "*/15 * * * *", 92, 100),
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1), "0 * * * *", 23, 25),
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1), "cron(15 * * * ? *)", 23, 25),
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1), "cron(0 0/1 * * ? *)", 23, 25),
    # Lord Howe's 30-minute shift: only the wall times inside the half hour change count
    ("Australia/Lord_Howe", date(2026, 10, 4), date(2026, 4, 5), "0 * * * *", 23, 24),
    ("Australia/Lord_Howe", date(2026, 10, 4), date(2026, 4, 5), "45 * * * *", 24, 25),
    ("Australia/Lord_Howe", date(2026, 10, 4), date(2026, 4, 5), "*/30 * * * *", 47, 49),
    ("Australia/Lord_Howe", date(2026, 10, 4), date(2026, 4, 5), "cron(15 * * * ? *)", 23, 24),
]


@pytest.mark.parametrize(("zone", "spring", "fall", "expression", "n_spring", "n_fall"), WILDCARDS)
def test_hour_wildcard_fires_at_every_real_occurrence(
    zone: str, spring: date, fall: date, expression: str, n_spring: int, n_fall: int
) -> None:
    """An hour field `*` or step fires at every real occurrence: 23 and 25 hourly fires."""
    for day, count in ((spring, n_spring), (fall, n_fall)):
        fires = fires_on(expression, zone, day)
        assert len(fires) == count, day
        assert fires == sorted(set(fires))
        tz = zoneinfo.ZoneInfo(zone)
        # each is a real wall time the expression names: none was moved out of a gap
        minutes = {f.astimezone(tz).minute for f in fires}
        assert minutes <= {0, 15, 30, 45}


def test_hourly_fires_are_one_hour_apart_across_both_transitions() -> None:
    """An hourly cron in a one-hour-shift zone fires every UTC hour, even across DST."""
    for zone in ("Europe/Berlin", "America/New_York"):
        for day in (date(2026, 3, 29), date(2026, 10, 25), date(2026, 3, 8), date(2026, 11, 1)):
            fires = fires_on("0 * * * *", zone, day)
            assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fires))


def test_after_inside_the_first_pass_of_a_repeat() -> None:
    """Asked from the first pass of a repeated hour, the next hourly fire is the second 02:00."""
    for expression in ("0 * * * *", "cron(0 * * * ? *)"):
        hourly = parse_expression(expression, "Europe/Berlin")
        # 02:40 CEST (00:40 UTC): the next :00 is 02:00 CET, 20 minutes later
        assert hourly.next_after(utc(2026, 10, 25, 0, 40), anchor=ANCHOR) == utc(2026, 10, 25, 1)
        # 02:40 CET (01:40 UTC): the next is 03:00 CET
        assert hourly.next_after(utc(2026, 10, 25, 1, 40), anchor=ANCHOR) == utc(2026, 10, 25, 2)
    half = parse_expression("*/30 * * * *", "Australia/Lord_Howe")
    # 01:50 LHDT (14:50 UTC): next is 01:30 LHST (15:00 UTC), then 02:00 LHST (15:30)
    assert half.next_fires(utc(2026, 4, 4, 14, 50), 2) == [
        utc(2026, 4, 4, 15),
        utc(2026, 4, 4, 15, 30),
    ]


def test_fixed_hour_with_minute_star() -> None:
    """`* 2 * * *` has a fixed hour: once after the gap, and only the first pass of a repeat."""
    assert fires_on("* 2 * * *", "Europe/Berlin", date(2026, 3, 29)) == [utc(2026, 3, 29, 1)]
    fall = fires_on("*/5 2 * * *", "Europe/Berlin", date(2026, 10, 25))
    assert fall == [utc(2026, 10, 25, 0, m) for m in range(0, 60, 5)]


# --- a year, against an independent computation from zoneinfo -------------------------------


@functools.cache
def local_days(zone: str) -> dict[date, list[tuple[datetime, time]]]:
    """Every UTC quarter hour of 2026 (+- a day), grouped by its local date, in time order.

    All three zones' offsets and transitions fall on quarter hours, so this holds every
    transition instant and every real wall time a quarter-hour expression names.
    """
    tz = zoneinfo.ZoneInfo(zone)
    days: dict[date, list[tuple[datetime, time]]] = defaultdict(list)
    x = utc(2025, 12, 30)
    while x < utc(2027, 1, 2):
        local = x.astimezone(tz)
        days[local.date()].append((x, local.time()))
        x += timedelta(minutes=15)
    return days


def year_of(expression: str, zone: str) -> list[datetime]:
    expr = parse_expression(expression, zone)
    start = datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(UTC)
    end = datetime(2027, 1, 1, tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(UTC)
    fires: list[datetime] = []
    fire = expr.next_after(start - timedelta(microseconds=1), anchor=ANCHOR)
    while fire is not None and fire < end:
        fires.append(fire)
        fire = expr.next_after(fire, anchor=ANCHOR)
    return fires


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(("expression", "minute"), [("0 * * * *", 0), ("cron(30 * * * ? *)", 30)])
def test_a_year_hourly_matches_zoneinfo(zone: str, expression: str, minute: int) -> None:
    """A year of an hourly cron: exactly the real instants whose wall minute matches."""
    expected = [
        x
        for day in sorted(local_days(zone))
        if day.year == 2026
        for x, wall in local_days(zone)[day]
        if wall.minute == minute
    ]
    assert year_of(expression, zone) == expected


DAILY_TIMES = [time(9), time(2, 30), time(1, 30), time(2, 15), time(1, 45), time(0)]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("at", DAILY_TIMES, ids=str)
@pytest.mark.parametrize("form", ["crontab", "eventbridge"])
def test_a_year_daily_matches_zoneinfo(zone: str, at: time, form: str) -> None:
    """A year of a daily cron: each day, the first instant whose wall time reaches it."""
    expected = [
        next(x for x, wall in local_days(zone)[day] if wall >= at)
        for day in sorted(local_days(zone))
        if day.year == 2026
    ]
    expression = (
        f"{at.minute} {at.hour} * * *"
        if form == "crontab"
        else f"cron({at.minute} {at.hour} * * ? *)"
    )
    assert year_of(expression, zone) == expected


def test_lord_howe_hourly_across_the_half_hour_gap() -> None:
    """croniter issue #258's case: from 01:43 on Lord Howe's spring day, hourly `0 * * * *`
    next fires at 03:00 (02:00 never happens), and a fixed `0 2 * * *` at 02:30, the first
    instant after the gap."""
    tz = zoneinfo.ZoneInfo("Australia/Lord_Howe")
    start = datetime(2019, 10, 6, 1, 43, tzinfo=tz)
    hourly = parse_expression("0 * * * *", "Australia/Lord_Howe")
    assert hourly.next_after(start, anchor=ANCHOR) == datetime(2019, 10, 6, 3, tzinfo=tz)
    fixed = parse_expression("0 2 * * *", "Australia/Lord_Howe")
    after_gap = datetime(2019, 10, 6, 2, 30, tzinfo=tz)
    assert after_gap.utcoffset() == timedelta(hours=11)
    assert fixed.next_after(start, anchor=ANCHOR) == after_gap


def test_minutely_inside_the_second_pass_is_strictly_later() -> None:
    """From the second 01:30 of New York's fall-back, a minutely cron fires at the second
    01:31, never back in the first pass."""
    after = utc(2026, 11, 1, 6, 30)  # 01:30 EST, the second pass
    for expression in ("* * * * *", "cron(* * * * ? *)"):
        minutely = parse_expression(expression, "America/New_York")
        assert minutely.next_after(after, anchor=ANCHOR) == utc(2026, 11, 1, 6, 31)
