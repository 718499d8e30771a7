"""Expressions: each form's fires, its words, and the ValueError a bad one raises."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from work.scheduling._expressions import (
    AtExpression,
    CronExpression,
    Expression,
    RateExpression,
    check_timezone,
    parse_expression,
)

START = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


EXAMPLES = [
    # (expression, time zone, the first three fires after START, in UTC)
    ("rate(5 minutes)", "UTC", "2026-01-01T00:05 2026-01-01T00:10 2026-01-01T00:15"),
    ("rate(1 second)", "UTC", "2026-01-01T00:00:01 2026-01-01T00:00:02 2026-01-01T00:00:03"),
    ("rate(1 hour)", "Europe/Berlin", "2026-01-01T01:00 2026-01-01T02:00 2026-01-01T03:00"),
    ("rate(2 days)", "UTC", "2026-01-03T00:00 2026-01-05T00:00 2026-01-07T00:00"),
    ("at(2026-07-01T09:30:00)", "Europe/Berlin", "2026-07-01T07:30"),
    ("at(2026-01-01T09:30:00)", "America/New_York", "2026-01-01T14:30"),
    ("at(2025-12-31T23:59:59)", "UTC", ""),
    ("cron(0 9 ? * MON-FRI *)", "UTC", "2026-01-01T09:00 2026-01-02T09:00 2026-01-05T09:00"),
    ("cron(0 9 ? * 2-6 *)", "UTC", "2026-01-01T09:00 2026-01-02T09:00 2026-01-05T09:00"),
    ("cron(0/15 * * * ? *)", "UTC", "2026-01-01T00:15 2026-01-01T00:30 2026-01-01T00:45"),
    ("cron(0 12 L * ? *)", "UTC", "2026-01-31T12:00 2026-02-28T12:00 2026-03-31T12:00"),
    ("cron(0 12 LW * ? *)", "UTC", "2026-01-30T12:00 2026-02-27T12:00 2026-03-31T12:00"),
    ("cron(0 12 15W * ? *)", "UTC", "2026-01-15T12:00 2026-02-16T12:00 2026-03-16T12:00"),
    ("cron(0 12 ? * 6L *)", "UTC", "2026-01-30T12:00 2026-02-27T12:00 2026-03-27T12:00"),
    ("cron(0 12 ? * FRIL *)", "UTC", "2026-01-30T12:00 2026-02-27T12:00 2026-03-27T12:00"),
    ("cron(0 12 ? * 6#3 *)", "UTC", "2026-01-16T12:00 2026-02-20T12:00 2026-03-20T12:00"),
    ("cron(0 12 ? * L *)", "UTC", "2026-01-03T12:00 2026-01-10T12:00 2026-01-17T12:00"),
    ("cron(0 8 1 JAN,JUL ? *)", "UTC", "2026-01-01T08:00 2026-07-01T08:00 2027-01-01T08:00"),
    ("cron(0 0 1 1 ? 2027-2028)", "UTC", "2027-01-01T00:00 2028-01-01T00:00"),
    ("cron(30 8 ? * SUN *)", "Asia/Kolkata", "2026-01-04T03:00 2026-01-11T03:00 2026-01-18T03:00"),
    ("0 9 * * 1-5", "UTC", "2026-01-01T09:00 2026-01-02T09:00 2026-01-05T09:00"),
    ("0 9 * * sun", "UTC", "2026-01-04T09:00 2026-01-11T09:00 2026-01-18T09:00"),
    ("0 9 * * 7", "UTC", "2026-01-04T09:00 2026-01-11T09:00 2026-01-18T09:00"),
    ("0 0 13 * 5", "UTC", "2026-01-02T00:00 2026-01-09T00:00 2026-01-13T00:00"),
    ("*/20 * * * *", "UTC", "2026-01-01T00:20 2026-01-01T00:40 2026-01-01T01:00"),
    ("@hourly", "UTC", "2026-01-01T01:00 2026-01-01T02:00 2026-01-01T03:00"),
    ("@daily", "America/New_York", "2026-01-01T05:00 2026-01-02T05:00 2026-01-03T05:00"),
    ("@weekly", "UTC", "2026-01-04T00:00 2026-01-11T00:00 2026-01-18T00:00"),
    ("@monthly", "UTC", "2026-02-01T00:00 2026-03-01T00:00 2026-04-01T00:00"),
    ("@yearly", "UTC", "2027-01-01T00:00 2028-01-01T00:00 2029-01-01T00:00"),
]


@pytest.mark.parametrize(("expression", "zone", "fires"), EXAMPLES)
def test_examples(expression: str, zone: str, fires: str) -> None:
    """Each example's first fires after New Year 2026 are the ones the table lists."""
    expected = [datetime.fromisoformat(f).replace(tzinfo=UTC) for f in fires.split()]
    assert parse_expression(expression, zone).next_fires(START, 3) == expected


DESCRIPTIONS = [
    ("rate(1 minute)", "every minute"),
    ("rate(5 minutes)", "every 5 minutes"),
    ("rate(2 days)", "every 2 days"),
    ("rate(10 Seconds)", "every 10 seconds"),
    ("at(2027-01-01T09:00:00)", "once at 2027-01-01 09:00:00 (UTC)"),
    ("cron(0 9 ? * MON *)", "at 09:00 on Monday"),
    ("cron(0 9 ? * MON-FRI *)", "at 09:00 on Monday to Friday"),
    ("cron(0/5 * * * ? *)", "every 5 minutes"),
    ("cron(0 12 L * ? *)", "at 12:00 on the last day of the month"),
    ("cron(0 12 15W * ? *)", "at 12:00 on the weekday nearest day 15"),
    ("cron(0 12 ? * 6#3 *)", "at 12:00 on the third Friday of the month"),
    ("cron(0 12 ? * 6L *)", "at 12:00 on the last Friday of the month"),
    ("cron(0 8 1 JAN ? 2027)", "at 08:00 on day 1 of the month in January in 2027"),
    ("@hourly", "every hour at :00"),
    ("@daily", "at 00:00"),
    ("0 9,17 * * 1-5", "at 09:00 and 17:00 on Monday to Friday"),
    ("* * * * *", "every minute"),
    ("10,40 * * * *", "every hour at :10 and :40"),
    ("1-10 * * * *", "at minute 1-10 of every hour"),
    ("*/5 9-17 * * *", "at minute */5 of hour 9-17"),
    ("cron(0 0 ? * * *)", "at 00:00"),
    ("cron(0 0 * * ? *)", "at 00:00"),
    ("cron(0 0 1,15 * ? *)", "at 00:00 on day 1 and 15 of the month"),
    ("cron(0 0 LW * ? 2027-2035)", "at 00:00 on the last weekday of the month in 2027-2035"),
    ("cron(0 0 1 * ? 2027,2029)", "at 00:00 on day 1 of the month in 2027 and 2029"),
    ("0 0 1 jan-mar,dec *", "at 00:00 on day 1 of the month in January to March and December"),
]


@pytest.mark.parametrize(("expression", "words"), DESCRIPTIONS)
def test_describe(expression: str, words: str) -> None:
    """describe() says the expression in words."""
    assert parse_expression(expression).describe() == words


def test_forms_and_attributes() -> None:
    """parse_expression returns the form's class, keeping the text as written and the zone."""
    cron = parse_expression("  cron(0 9 ? * MON *) ", "Europe/Berlin")
    assert isinstance(cron, CronExpression)
    assert isinstance(cron, Expression)
    assert (cron.text, cron.timezone) == ("cron(0 9 ? * MON *)", "Europe/Berlin")
    assert isinstance(parse_expression("rate(1 day)"), RateExpression)
    assert isinstance(parse_expression("at(2030-01-01T00:00:00)"), AtExpression)
    kinds = ["cron(0 9 ? * MON *)", "@daily", "0 9 * * *", "rate(1 day)", "at(2030-01-01T00:00:00)"]
    assert [parse_expression(e).kind for e in kinds] == ["cron", "crontab", "crontab", "rate", "at"]
    assert parse_expression("@daily") == parse_expression("@daily")
    assert parse_expression("@daily") != parse_expression("@daily", "Europe/Berlin")
    assert len({parse_expression("@daily"), parse_expression("@daily")}) == 1
    assert parse_expression("@daily") != "@daily"
    assert parse_expression("@daily", "Europe/Berlin") is parse_expression(
        "@daily", "Europe/Berlin"
    )
    assert repr(cron) == "parse_expression('cron(0 9 ? * MON *)', 'Europe/Berlin')"


BAD = [
    ("cron(0 9 ? * 0 *)", "day-of-week '0' is out of range 1-7 (EventBridge counts SUN=1)"),
    ("cron(0 9 ? * 8 *)", "day-of-week '8' is out of range 1-7"),
    ("cron(0 9 * * * *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 9 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 9 1 * MON *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 9 ? * MON)", "cron() takes six fields"),
    ("cron(60 9 ? * MON *)", "minute '60' is out of range 0-59"),
    ("cron(0 24 ? * MON *)", "hour '24' is out of range 0-23"),
    ("cron(0 9 0 * ? *)", "day-of-month '0' is out of range 1-31"),
    ("cron(0 9 32W * ? *)", "day-of-month '32' is out of range 1-31"),
    ("cron(0 9 1 13 ? *)", "month '13' is out of range 1-12"),
    ("cron(0 9 1 FOO ? *)", "month 'FOO' is not a number or a name JAN-DEC"),
    ("cron(x 9 1 * ? *)", "minute 'x' is not a number"),
    ("cron(0 9 1 * ? 20x7)", "year '20x7' is not a number"),
    ("cron(0 ¹ 1 * ? *)", "hour '¹' is not a number"),
    ("cron(0 9 1 * ? 1969)", "year '1969' is out of range 1970-2199"),
    ("cron(0 9 1 * ? 2200)", "year '2200' is out of range 1970-2199"),
    ("cron(0 9 ? * 6#6 *)", "day-of-week '6#6': the number after '#' must be 1-5"),
    ("cron(0 9 ? * 8L *)", "day-of-week '8' is out of range 1-7"),
    ("cron(0/0 9 ? * MON *)", "minute '0/0': the step after '/' must be a number >= 1"),
    ("cron(0 17-9 ? * MON *)", "hour range '17-9' runs backwards"),
    ("cron(0 9 1,,2 * ? *)", "day-of-month '1,,2' has an empty list item"),
    ("cron(0 9 30 FEB ? *)", "day-of-month 30 never occurs in month 2"),
    ("0 9 * * 8", "day-of-week '8' is out of range 0-7 (crontab counts SUN=0)"),
    ("0 9 * *", "a crontab line has five fields"),
    ("0 9 * * * 2027", "EventBridge's six fields go inside cron(...)"),
    ("0 0 9 * * * 2027", "a crontab line has five fields (minute hour day-of-month month"),
    ("0 9 * * L", "day-of-week 'L' is not a number or a name SUN-SAT"),
    ("@often", "a crontab line has five fields"),
    ("rate(0 minutes)", "the number '0' must be a whole number >= 1"),
    ("rate(1.5 hours)", "the number '1.5' must be a whole number >= 1"),
    ("rate(5 weeks)", "the unit 'weeks' must be second(s), minute(s), hour(s) or day(s)"),
    ("rate(5)", "rate() takes a number and a unit"),
    ("at(2026-02-30T00:00:00)", "'2026-02-30T00:00:00' is not a date and time"),
    ("at(2026-02-03 00:00:00)", "at() takes yyyy-mm-ddThh:mm:ss"),
    ("at(2026-02-03T00:00)", "at() takes yyyy-mm-ddThh:mm:ss"),
    ("every(5 minutes)", "expected cron(...), rate(...), at(...) or a crontab line"),
    ("", "empty expression"),
]


@pytest.mark.parametrize(("expression", "message"), BAD)
def test_bad_expression(expression: str, message: str) -> None:
    """A bad expression is a ValueError naming the expression, the field and why."""
    with pytest.raises(ValueError) as info:
        parse_expression(expression)
    assert message in str(info.value)
    text = expression.strip()
    bare = text.startswith(("cron(", "rate(", "at("))
    assert str(info.value).startswith(text if bare else repr(text) if text else "empty")


def test_bad_types() -> None:
    """A non-string expression or zone is a TypeError; naive datetimes are a ValueError."""
    with pytest.raises(TypeError, match="an expression is a string"):
        parse_expression(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="IANA name"):
        check_timezone(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="IANA name"):
        parse_expression("@daily", ["UTC"])  # type: ignore[arg-type]
    daily = parse_expression("@daily")
    with pytest.raises(ValueError, match="after must be an aware datetime"):
        daily.next_after(datetime(2026, 1, 1), anchor=START)
    with pytest.raises(ValueError, match="anchor must be an aware datetime"):
        parse_expression("rate(1 day)").next_after(START, anchor=datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="after must be a datetime"):
        daily.next_fires("2026-01-01")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "Europe/", "utc "])
def test_unknown_time_zone(name: str) -> None:
    """An unknown time zone is a ValueError naming it, from check_timezone and the parser."""
    with pytest.raises(ValueError, match="unknown time zone"):
        check_timezone(name)
    with pytest.raises(ValueError, match=f"unknown time zone {name!r}"):
        parse_expression("@daily", name)


def test_check_timezone_returns_the_zone() -> None:
    """check_timezone returns the zoneinfo zone of that name."""
    assert check_timezone("Europe/Berlin").key == "Europe/Berlin"


def test_rate_anchor() -> None:
    """rate() fires at anchor + k*N for k >= 1, strictly after `after`, whatever the zone."""
    every_10 = parse_expression("rate(10 minutes)", "Europe/Berlin")
    anchor = utc(2026, 1, 1, 0, 3)
    assert every_10.next_after(START, anchor=anchor) == utc(2026, 1, 1, 0, 13)
    assert every_10.next_after(utc(2026, 1, 1, 0, 13), anchor=anchor) == utc(2026, 1, 1, 0, 23)
    assert every_10.next_after(utc(2026, 1, 1, 0, 12, 59), anchor=anchor) == utc(2026, 1, 1, 0, 13)
    # k >= 1: the anchor itself never fires, even when `after` is long before it
    assert every_10.next_after(utc(2025, 1, 1), anchor=anchor) == utc(2026, 1, 1, 0, 13)
    assert every_10.next_after(anchor, anchor=anchor) == utc(2026, 1, 1, 0, 13)
    # the anchor's own zone does not matter, and the answer is UTC
    berlin = anchor.astimezone(timezone(timedelta(hours=1)))
    fire = every_10.next_after(START, anchor=berlin)
    assert fire == utc(2026, 1, 1, 0, 13)
    assert fire is not None and fire.tzinfo is UTC
    # a year later: still on the grid
    late = every_10.next_after(utc(2027, 1, 1), anchor=anchor)
    assert late == utc(2027, 1, 1, 0, 3)


def test_rate_is_blind_to_dst() -> None:
    """rate(1 day) is 24 elapsed hours, so its wall time moves by an hour across DST."""
    daily = parse_expression("rate(1 day)", "Europe/Berlin")
    anchor = datetime(2026, 3, 28, 12, tzinfo=check_timezone("Europe/Berlin"))
    fires = daily.next_fires(anchor, 2, anchor=anchor)
    assert [f - anchor for f in fires] == [timedelta(days=1), timedelta(days=2)]
    assert fires[0].astimezone(check_timezone("Europe/Berlin")).hour == 13


def test_next_fires_anchors_at_after_by_default() -> None:
    """next_fires without an anchor anchors rate() at `after`, and returns fewer at the end."""
    assert parse_expression("rate(1 hour)").next_fires(START, 2) == [
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 2),
    ]
    assert parse_expression("at(2026-01-01T00:00:01)").next_fires(START, 5) == [
        utc(2026, 1, 1, 0, 0, 1)
    ]
    assert parse_expression("@daily").next_fires(START, 0) == []


def test_year_field_end() -> None:
    """A cron whose year field has ended returns None, at once and after its last fire."""
    once = parse_expression("cron(0 0 1 1 ? 2027)")
    assert once.next_after(utc(2027, 1, 1), anchor=START) is None
    assert once.next_after(utc(2026, 6, 1), anchor=START) == utc(2027, 1, 1)
    assert parse_expression("cron(0 0 1 1 ? *)").next_after(utc(2199, 1, 1), anchor=START) is None
    last = parse_expression("cron(59 23 31 12 ? 2199)")
    assert last.next_after(utc(2199, 12, 31, 23, 58), anchor=START) == utc(2199, 12, 31, 23, 59)
    assert last.next_after(utc(2199, 12, 31, 23, 59), anchor=START) is None


def test_at_passed() -> None:
    """at() fires once: None from its own instant on, and it needs no anchor."""
    at = parse_expression("at(2026-06-01T12:00:00)", "America/New_York")
    assert at.next_after(utc(2026, 6, 1, 15, 59, 59), anchor=START) == utc(2026, 6, 1, 16)
    assert at.next_after(utc(2026, 6, 1, 16), anchor=START) is None


def test_seconds_in_after() -> None:
    """A cron fire is strictly later than `after`, even when `after` has seconds."""
    minutely = parse_expression("* * * * *")
    assert minutely.next_after(utc(2026, 1, 1, 0, 0, 0), anchor=START) == utc(2026, 1, 1, 0, 1)
    assert minutely.next_after(utc(2026, 1, 1, 0, 0, 59, 999999), anchor=START) == utc(
        2026, 1, 1, 0, 1
    )
    eb = parse_expression("cron(* * * * ? *)")
    assert eb.next_after(utc(2026, 1, 1, 0, 0, 0, 1), anchor=START) == utc(2026, 1, 1, 0, 1)


DOCS = Path(__file__).parents[2] / "docs" / "schedules.md"


def test_docs_examples_parse() -> None:
    """Every expression in docs/schedules.md's table of examples parses."""
    section = DOCS.read_text().split("## Expressions")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    examples = [e for row in rows for e in re.findall(r"`([^`]+)`", row.split(" | ")[0])]
    assert len(examples) > 20
    for example in examples:
        assert parse_expression(example).describe()


def test_docs_error_messages_are_real() -> None:
    """Each error message docs/schedules.md shows is the one the parser raises."""
    block = DOCS.read_text().split("```text\n")[1].split("```")[0]
    for message in block.splitlines():
        zone = "UTC"
        if message.startswith("unknown time zone"):
            expression, zone = "@daily", message.split("'")[1]
        elif message.startswith("'"):
            expression = message[1:].split("': ")[0]
        else:
            expression = message.split(": ")[0]
        with pytest.raises(ValueError) as info:
            parse_expression(expression, zone)
        assert str(info.value) == message
