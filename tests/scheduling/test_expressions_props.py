"""Properties over generated expressions: strictly later, monotone, and croniter's wall times."""

from __future__ import annotations

import functools
import itertools
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from work.scheduling._cron import EventBridgeCron
from work.scheduling._expressions import parse_expression

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
# instants around 2026's transitions in the three zones are the interesting ones
AFTER = st.datetimes(
    min_value=datetime(2025, 12, 1), max_value=datetime(2027, 1, 31), timezones=st.just(UTC)
)


def _numbers(lo: int, hi: int) -> st.SearchStrategy[str]:
    single = st.integers(lo, hi).map(str)
    # ranges with equal ends are left out: croniter reads `5-5` as `*` (its bug, see
    # test_crontab_range_with_equal_ends)
    ranged = st.tuples(st.integers(lo, hi - 1), st.integers(1, hi - lo)).map(
        lambda an: f"{an[0]}-{min(hi, an[0] + an[1])}"
    )
    stepped = st.tuples(st.sampled_from(["*", str(lo)]), st.integers(1, hi - lo + 1)).map(
        lambda sn: f"{sn[0]}/{sn[1]}"
    )
    listed = st.lists(st.integers(lo, hi), min_size=2, max_size=4).map(
        lambda xs: ",".join(map(str, xs))
    )
    return st.one_of(st.just("*"), single, ranged, stepped, listed)


# EventBridge day rules and their croniter spelling (croniter counts SUN=0; `L5` is its last
# Friday). W stays <= 28 as croniter moves a too-large W day to the month's last day.
DOM_RULES = st.one_of(
    _numbers(1, 28).map(lambda f: (f, f)),
    st.just(("L", "L")),
    st.integers(1, 28).map(lambda n: (f"{n}W", f"{n}W")),
)
DOW_RULES = st.one_of(
    st.lists(st.integers(1, 7), min_size=1, max_size=3).map(
        lambda ds: (",".join(map(str, ds)), ",".join(str(d - 1) for d in ds))
    ),
    st.integers(1, 7).map(lambda d: (f"{d}L", f"L{d - 1}")),
    st.tuples(st.integers(1, 7), st.integers(1, 5)).map(
        lambda dk: (f"{dk[0]}#{dk[1]}", f"{dk[0] - 1}#{dk[1]}")
    ),
)


@st.composite
def eventbridge(draw: st.DrawFn) -> tuple[str, str]:
    """An EventBridge cron body and the same schedule as a croniter line."""
    minute = draw(_numbers(0, 59))
    hour = draw(_numbers(0, 23))
    month = draw(st.one_of(st.just("*"), _numbers(1, 12)))
    if draw(st.booleans()):
        dom, tab_dom = draw(DOM_RULES)
        dow, tab_dow = "?", "*"
    else:
        dow, tab_dow = draw(DOW_RULES)
        dom, tab_dom = "?", "*"
    return f"{minute} {hour} {dom} {month} {dow} *", f"{minute} {hour} {tab_dom} {month} {tab_dow}"


@settings(max_examples=200, deadline=None)
@given(eventbridge(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_eventbridge_wall_times_match_croniter(pair: tuple[str, str], start: datetime) -> None:
    """On naive wall times, where croniter is right, cron(...) names the times croniter does."""
    body, line = pair
    ours = EventBridgeCron(body).walls(start)
    theirs = croniter(line, start - timedelta(microseconds=1))
    for _ in range(12):
        assert next(ours) == theirs.get_next(datetime)


EXPRESSIONS = st.one_of(
    eventbridge().map(lambda pair: f"cron({pair[0]})"),
    eventbridge().map(lambda pair: pair[1]).filter(lambda line: not set(line) & set("LW#")),
    st.sampled_from(["@hourly", "@daily", "30 2 * * *", "*/30 * * * *", "15 1-3 * * *"]),
    st.tuples(st.integers(1, 90), st.sampled_from(["second", "minutes", "hour", "days"])).map(
        lambda nu: f"rate({nu[0]} {nu[1]})"
    ),
)


@settings(max_examples=200, deadline=None)
@given(EXPRESSIONS, st.sampled_from(ZONES), AFTER, AFTER)
def test_fires_are_strictly_later_and_monotone(
    expression: str, zone: str, after: datetime, anchor: datetime
) -> None:
    """Each fire is aware UTC, strictly later than `after`, and a later `after` never gives an
    earlier fire; next_after of a fire is the fire after it."""
    expr = parse_expression(expression, zone)
    fires = expr.next_fires(after, 4, anchor=anchor)
    assert fires == sorted(set(fires))
    assert all(f.tzinfo is UTC and f > after for f in fires)
    for a, b in itertools.pairwise(fires):
        assert expr.next_after(a, anchor=anchor) == b
        # anywhere between two fires, the next one is b
        middle = a + (b - a) / 2
        assert expr.next_after(middle, anchor=anchor) == b
    if fires:
        just_before = fires[0] - timedelta(microseconds=1)
        assert expr.next_after(just_before, anchor=anchor) == fires[0]


def test_crontab_range_with_equal_ends() -> None:
    """`5-5` is minute 5 and `5-5/2` too, where croniter alone would fire every (2nd) minute."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    five = [datetime(2026, 1, 1, h, 5, tzinfo=UTC) for h in range(3)]
    assert parse_expression("5-5 * * * *").next_fires(start, 3) == five
    assert parse_expression("5-5/2 * * * *").next_fires(start, 3) == five
    assert parse_expression("cron(5-5 * * * ? *)").next_fires(start, 3) == five


ALL_ZONES = sorted(zoneinfo.available_timezones())
ONE_MINUTE = timedelta(minutes=1)


def _minutes(start: datetime, end: datetime) -> list[datetime]:
    out = []
    x = start
    while x < end:
        out.append(x)
        x += ONE_MINUTE
    return out


@functools.cache
def transition_days(zone: str, year: int) -> list[date]:
    """The local dates in that year around which the zone's UTC offset changes."""
    tz = zoneinfo.ZoneInfo(zone)
    days = []
    x = datetime(year, 1, 1, tzinfo=UTC)
    while x.year == year:
        if x.astimezone(tz).utcoffset() != (x + timedelta(days=1)).astimezone(tz).utcoffset():
            days.append((x + timedelta(hours=12)).astimezone(tz).date())
        x += timedelta(days=1)
    return days


@st.composite
def zone_and_day(draw: st.DrawFn) -> tuple[str, date]:
    """A zone and, when it has any that year, a day next to one of its offset changes."""
    zone = draw(st.sampled_from(ALL_ZONES))
    year = draw(st.integers(2020, 2030))
    near = transition_days(zone, year)
    if not near:
        return zone, draw(st.dates(date(year, 1, 1), date(year, 12, 31)))
    return zone, draw(st.sampled_from(near)) + timedelta(days=draw(st.integers(-1, 1)))


@settings(max_examples=300, deadline=None)
@given(zone_and_day(), st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
def test_daily_in_any_zone_is_the_first_instant_reaching_its_wall_time(
    zone_day: tuple[str, date], hour: int, minute: int
) -> None:
    """In any IANA zone, a daily `m h * * *` fires at the first instant whose wall clock has
    reached that wall time (the exact time, the end of a gap, or a repeat's first pass)."""
    zone, day = zone_day
    tz = zoneinfo.ZoneInfo(zone)
    wall = datetime.combine(day, time(hour, minute))
    rough = wall.replace(tzinfo=UTC)
    expected = next(
        x
        for x in _minutes(rough - timedelta(hours=16), rough + timedelta(hours=16))
        if x.astimezone(tz).replace(tzinfo=None) >= wall
    )
    daily = parse_expression(f"{minute} {hour} * * *", zone)
    assert daily.next_after(expected - timedelta(hours=20), anchor=expected) == expected


@settings(max_examples=200, deadline=None)
@given(zone_and_day(), st.sampled_from([0, 15, 30, 45]))
def test_hourly_in_any_zone_is_every_real_occurrence(
    zone_day: tuple[str, date], minute: int
) -> None:
    """In any IANA zone, `m * * * *` fires at exactly the instants whose wall minute is m."""
    zone, day = zone_day
    tz = zoneinfo.ZoneInfo(zone)
    start = datetime.combine(day, time(), UTC) - timedelta(hours=14)
    end = start + timedelta(hours=52)
    expected = [x for x in _minutes(start, end) if x.astimezone(tz).minute == minute]
    hourly = parse_expression(f"{minute} * * * *", zone)
    fires = hourly.next_fires(start - timedelta(microseconds=1), len(expected) + 1)
    assert [f for f in fires if f < end] == expected
