"""Cron fields: parse and check each field, then find the next matching wall time."""

from __future__ import annotations

import bisect
import calendar
import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import CroniterBadDateError, croniter

__all__ = [
    "CrontabLine",
    "EventBridgeCron",
    "FieldError",
    "FieldSpec",
    "nearest_weekday",
    "parse_values",
]

MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_ONE_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class FieldSpec:
    """One cron field: its name, range, the names it accepts and a note for range errors."""

    name: str
    lo: int
    hi: int
    names: dict[str, int]
    note: str = ""


MINUTE = FieldSpec("minute", 0, 59, {})
HOUR = FieldSpec("hour", 0, 23, {})
DAY_OF_MONTH = FieldSpec("day-of-month", 1, 31, {})
MONTH = FieldSpec("month", 1, 12, {n: i + 1 for i, n in enumerate(MONTH_NAMES)})
EB_DAY_OF_WEEK = FieldSpec(
    "day-of-week",
    1,
    7,
    {n: i + 1 for i, n in enumerate(DAY_NAMES)},
    " (EventBridge counts SUN=1)",
)
TAB_DAY_OF_WEEK = FieldSpec(
    "day-of-week", 0, 7, {n: i for i, n in enumerate(DAY_NAMES)}, " (crontab counts SUN=0)"
)
YEAR = FieldSpec("year", 1970, 2199, {})


class FieldError(ValueError):
    """Raised when one field of a cron expression is wrong; the caller adds the expression."""


def _value(token: str, spec: FieldSpec) -> int:
    """One number or name of a field, range-checked."""
    upper = token.upper()
    if upper in spec.names:
        return spec.names[upper]
    if not token.isascii() or not token.isdigit():
        names = list(spec.names)
        hint = f" or a name {names[0]}-{names[-1]}" if names else ""
        raise FieldError(f"{spec.name} {token!r} is not a number{hint}")
    value = int(token)
    if not spec.lo <= value <= spec.hi:
        raise FieldError(f"{spec.name} {token!r} is out of range {spec.lo}-{spec.hi}{spec.note}")
    return value


def parse_values(text: str, spec: FieldSpec) -> frozenset[int]:
    """Expand a field of numbers, names, ``*``, ranges ``a-b``, steps ``/n`` and lists ``,``."""
    values: set[int] = set()
    for item in text.split(","):
        values.update(_item(item, text, spec))
    return frozenset(values)


def _item(item: str, text: str, spec: FieldSpec) -> range:
    """One list item of a field: `*`, `a`, `a-b`, each with an optional `/step`."""
    if not item:
        raise FieldError(f"{spec.name} {text!r} has an empty list item")
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
            raise FieldError(f"{spec.name} {item!r}: the step after '/' must be a number >= 1")
        step = int(step_text)
    if base == "*":
        return range(spec.lo, spec.hi + 1, step)
    first, dash, last = base.partition("-")
    lo = _value(first, spec)
    if dash:
        hi = _value(last, spec)
        if hi < lo:
            raise FieldError(f"{spec.name} range {base!r} runs backwards")
    else:
        # `5/15` is "from 5, every 15" (Quartz, EventBridge, croniter).
        hi = spec.hi if slash else lo
    return range(lo, hi + 1, step)


def _weekday(year: int, month: int, day: int) -> int:
    """EventBridge's day-of-week of a date: SUN=1 ... SAT=7."""
    return (calendar.weekday(year, month, day) + 1) % 7 + 1


def nearest_weekday(year: int, month: int, day: int) -> int | None:
    """The weekday (MON-FRI) nearest ``day`` in that month, never crossing into another one."""
    last = calendar.monthrange(year, month)[1]
    if day > last:
        return None  # `31W` in a 30-day month: that month has no 31st, like plain `31`
    wd = calendar.weekday(year, month, day)  # MON=0 ... SUN=6
    if wd == 5:  # Saturday: the Friday before, or Monday when the 1st is a Saturday
        return day - 1 if day > 1 else day + 2
    if wd == 6:  # Sunday: the Monday after, or Friday when the month ends on a Sunday
        return day + 1 if day < last else day - 2
    return day


@dataclass(frozen=True)
class _DaySpec:
    """EventBridge's day rule: exactly one of day-of-month and day-of-week is in use."""

    dom: frozenset[int] = frozenset()
    dom_last: bool = False  # L
    dom_last_weekday: bool = False  # LW
    dom_nearest: frozenset[int] = frozenset()  # 15W
    dow: frozenset[int] = frozenset()
    dow_last: frozenset[int] = frozenset()  # 6L: the last Friday
    dow_nth: frozenset[tuple[int, int]] = frozenset()  # 6#3: the third Friday

    def days(self, year: int, month: int) -> tuple[int, ...]:
        """The days of that month the rule chooses, in order."""
        last = calendar.monthrange(year, month)[1]
        days = {d for d in self.dom if d <= last}
        if self.dom_last:
            days.add(last)
        if self.dom_last_weekday:
            d = last
            while calendar.weekday(year, month, d) >= 5:
                d -= 1
            days.add(d)
        for n in self.dom_nearest:
            near = nearest_weekday(year, month, n)
            if near is not None:
                days.add(near)
        if self.dow or self.dow_last or self.dow_nth:
            for d in range(1, last + 1):
                wd = _weekday(year, month, d)
                if (
                    wd in self.dow
                    or (wd in self.dow_last and d + 7 > last)
                    or (wd, (d - 1) // 7 + 1) in self.dow_nth
                ):
                    days.add(d)
        return tuple(sorted(days))


def _parse_dom(text: str) -> _DaySpec:
    dom: set[int] = set()
    nearest: set[int] = set()
    last = last_weekday = False
    for item in text.split(","):
        upper = item.upper()
        if upper == "L":
            last = True
        elif upper == "LW":
            last_weekday = True
        elif upper.endswith("W"):
            nearest.add(_value(item[:-1], DAY_OF_MONTH))
        else:
            dom.update(_item(item, text, DAY_OF_MONTH))
    return _DaySpec(
        dom=frozenset(dom),
        dom_last=last,
        dom_last_weekday=last_weekday,
        dom_nearest=frozenset(nearest),
    )


def _parse_dow(text: str) -> _DaySpec:
    dow: set[int] = set()
    last: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for item in text.split(","):
        upper = item.upper()
        if upper == "L":
            dow.add(7)  # `L` alone is the last day of the week: SAT (Quartz, EventBridge)
        elif upper.endswith("L"):
            last.add(_value(item[:-1], EB_DAY_OF_WEEK))
        elif "#" in item:
            day, _, k = item.partition("#")
            if not k.isascii() or not k.isdigit() or not 1 <= int(k) <= 5:
                raise FieldError(f"day-of-week {item!r}: the number after '#' must be 1-5")
            nth.add((_value(day, EB_DAY_OF_WEEK), int(k)))
        else:
            dow.update(_item(item, text, EB_DAY_OF_WEEK))
    return _DaySpec(dow=frozenset(dow), dow_last=frozenset(last), dow_nth=frozenset(nth))


def _check_dom_fits(dom: frozenset[int], months: frozenset[int]) -> None:
    """A day-of-month that no chosen month has would never fire: say so at once."""
    longest = max(29 if m == 2 else calendar.monthrange(2001, m)[1] for m in months)
    if dom and min(dom) > longest:
        raise FieldError(
            f"day-of-month {min(dom)} never occurs in month {','.join(map(str, sorted(months)))}"
        )


def _hour_is_wildcard(hour: str) -> bool:
    """`*` or a step in the hour field: the expression fires at every real occurrence (DST)."""
    return hour == "*" or "/" in hour


class EventBridgeCron:
    """EventBridge's ``cron(min hour day-of-month month day-of-week year)``, on wall time."""

    def __init__(self, body: str) -> None:
        fields = body.split()
        if len(fields) != 6:
            raise FieldError(
                "cron() takes six fields (minute hour day-of-month month day-of-week year),"
                f" got {len(fields)}"
            )
        minute, hour, dom, month, dow, year = fields
        self.fields = tuple(fields)
        self.minutes = tuple(sorted(parse_values(minute, MINUTE)))
        self.hours = tuple(sorted(parse_values(hour, HOUR)))
        self.months = parse_values(month, MONTH)
        self.years = tuple(sorted(parse_values(year, YEAR)))
        if (dom == "?") == (dow == "?"):
            raise FieldError(
                f"exactly one of day-of-month and day-of-week must be '?' (got {dom!r} and {dow!r})"
            )
        self.days = _parse_dom(dom) if dow == "?" else _parse_dow(dow)
        _check_dom_fits(self.days.dom | self.days.dom_nearest, self.months)
        self.hour_wildcard = _hour_is_wildcard(hour)
        self._month_days = functools.lru_cache(maxsize=64)(self.days.days)

    def _time_on_or_after(self, hour: int, minute: int) -> tuple[int, int] | None:
        i = bisect.bisect_left(self.hours, hour)
        if i < len(self.hours) and self.hours[i] == hour:
            j = bisect.bisect_left(self.minutes, minute)
            if j < len(self.minutes):
                return hour, self.minutes[j]
            i += 1
        if i < len(self.hours):
            return self.hours[i], self.minutes[0]
        return None

    def next_wall(self, start: datetime) -> datetime | None:
        """The first matching wall time at or after ``start`` (naive), or None when the year
        field has ended."""
        if start.second or start.microsecond:
            start = start.replace(second=0, microsecond=0) + _ONE_MINUTE
        y, m, d, hh, mm = start.year, start.month, start.day, start.hour, start.minute
        while True:
            yi = bisect.bisect_left(self.years, y)
            if yi == len(self.years):
                return None
            if self.years[yi] != y:
                y, m, d, hh, mm = self.years[yi], 1, 1, 0, 0
            if m in self.months:
                days = self._month_days(y, m)
                for day in days[bisect.bisect_left(days, d) :]:
                    time = (
                        self._time_on_or_after(hh, mm)
                        if day == d
                        else (self.hours[0], self.minutes[0])
                    )
                    if time is not None:
                        return datetime(y, m, day, *time)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
            d, hh, mm = 1, 0, 0

    def walls(self, start: datetime) -> Iterator[datetime]:
        """Every matching wall time at or after ``start``, in wall order."""
        wall = self.next_wall(start)
        while wall is not None:
            yield wall
            wall = self.next_wall(wall + _ONE_MINUTE)

    def describe(self) -> str:
        """The expression in words."""
        from ._describe import describe_eventbridge

        return describe_eventbridge(self)


MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CrontabLine:
    """A five-field crontab line (day-of-week 0-6 = SUN-SAT, 7 also SUN) or an ``@`` macro.

    The fields are checked here, for errors that name them; croniter iterates the wall times
    (on naive datetimes, where its DST bugs cannot reach).
    """

    def __init__(self, line: str) -> None:
        text = MACROS.get(line.lower(), line)
        fields = text.split()
        if len(fields) != 5:
            hint = " (EventBridge's six fields go inside cron(...))" if len(fields) == 6 else ""
            raise FieldError(
                "a crontab line has five fields (minute hour day-of-month month day-of-week),"
                f" got {len(fields)}{hint}"
            )
        minute, hour, dom, month, dow = fields
        self.fields = tuple(fields)
        self.minutes = parse_values(minute, MINUTE)
        self.hours = parse_values(hour, HOUR)
        self.dom = parse_values(dom, DAY_OF_MONTH)
        self.months = parse_values(month, MONTH)
        self.dow = frozenset(d % 7 for d in parse_values(dow, TAB_DAY_OF_WEEK))
        if dow == "*":
            # With both restricted a day matching either fires (Vixie's OR), so only a
            # day-of-month alone can be impossible.
            _check_dom_fits(self.dom, self.months)
        self.hour_wildcard = _hour_is_wildcard(hour)
        self.line = " ".join(fields)
        # croniter gets the checked values, not the text: it reads a range with equal ends
        # (`5-5`) as `*` and `5-5/2` as `*/2`. A field kept `*` keeps Vixie's day rule (a day
        # matching either restricted day field fires).
        values = (self.minutes, self.hours, self.dom, self.months, self.dow)
        canonical = (
            "*" if text == "*" else ",".join(map(str, sorted(v)))
            for text, v in zip(fields, values, strict=True)
        )
        self._template = croniter(" ".join(canonical), datetime(2000, 1, 1))

    def walls(self, start: datetime) -> Iterator[datetime]:
        """Every matching wall time at or after ``start`` (naive), in wall order."""
        if not (start.second or start.microsecond):
            start -= timedelta(seconds=1)  # croniter's get_next is strictly later
        # A shallow copy of a parsed template skips croniter's parsing (a third of its cost)
        # and keeps each caller's position its own, so threads can share the expression.
        it = copy.copy(self._template)
        it.set_current(start, force=True)
        get_next: Callable[[], datetime] = functools.partial(it.get_next, datetime)
        while True:
            try:
                yield get_next()
            except CroniterBadDateError:  # pragma: no cover - _check_dom_fits rules these out
                return

    def describe(self) -> str:
        """The line in words."""
        from ._describe import describe_crontab

        return describe_crontab(self)
