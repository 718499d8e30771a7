"""Schedule expressions: cron(), rate(), at() and crontab lines, read in an IANA time zone.

Every expression answers one question, ``next_after(after)``: the first fire strictly later
than ``after``, as an aware UTC datetime. Cron and at() name wall times in their time zone and
turn them into instants with the Vixie cron DST rules (see ``_wall_to_instants``); rate() is
elapsed time and never looks at a wall clock.
"""

from __future__ import annotations

import abc
import functools
import re
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from ._cron import CrontabLine, EventBridgeCron, FieldError

__all__ = [
    "AtExpression",
    "CronExpression",
    "Expression",
    "RateExpression",
    "check_timezone",
    "parse_expression",
]

_ZERO = timedelta(0)
_TICK = timedelta(microseconds=1)


def check_timezone(name: str) -> zoneinfo.ZoneInfo:
    """Return the IANA time zone called ``name``.

    Args:
        name: an IANA name such as ``"Europe/Berlin"`` or ``"UTC"``.

    Returns:
        The zone, from :mod:`zoneinfo`.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no such zone (the message names it).
    """
    if not isinstance(name, str):
        raise TypeError(f"a time zone is an IANA name (str), got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Berlin')"
        ) from None


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {value!r}")
    return value


class Expression(abc.ABC):
    """A parsed schedule expression; make one with :func:`parse_expression`.

    Attributes:
        text: the expression as written (stripped).
        timezone: the IANA name it reads wall time in.
        kind: ``"cron"`` (EventBridge), ``"crontab"`` (five fields or a macro), ``"rate"`` or
            ``"at"``.
    """

    text: str
    timezone: str
    kind: str

    def __init__(self, text: str, timezone: str) -> None:
        self.text = text
        self.timezone = timezone
        self.zone = check_timezone(timezone)

    @abc.abstractmethod
    def next_after(self, after: datetime, *, anchor: datetime) -> datetime | None:
        """The first fire strictly later than ``after``.

        Args:
            after: an aware datetime.
            anchor: an aware datetime; rate() fires at ``anchor + k*N`` for k >= 1, the other
                forms ignore it.

        Returns:
            An aware UTC datetime, or None when the expression has no more fires (at() passed,
            a year field ended).
        """

    def next_fires(
        self, after: datetime, n: int = 1, *, anchor: datetime | None = None
    ) -> list[datetime]:
        """The next ``n`` fires strictly later than ``after``, fewer when the expression ends.

        Args:
            after: an aware datetime.
            n: how many fires at most (>= 0).
            anchor: rate()'s anchor; ``after`` when not given.

        Returns:
            Aware UTC datetimes, strictly increasing.
        """
        fires: list[datetime] = []
        fire: datetime | None = _aware(after, "after")
        anchor = after if anchor is None else anchor
        while len(fires) < n and fire is not None:
            fire = self.next_after(fire, anchor=anchor)
            if fire is not None:
                fires.append(fire)
        return fires

    @abc.abstractmethod
    def describe(self) -> str:
        """The expression in words, e.g. "every 5 minutes" or "at 09:00 on Monday"."""

    def __repr__(self) -> str:
        return f"parse_expression({self.text!r}, {self.timezone!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expression):
            return NotImplemented
        return (type(self), self.text, self.timezone) == (type(other), other.text, other.timezone)

    def __hash__(self) -> int:
        return hash((type(self), self.text, self.timezone))


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class RateExpression(Expression):
    """``rate(N unit)``: every N units of elapsed time from an anchor, blind to DST."""

    kind = "rate"

    def __init__(self, text: str, timezone: str, body: str) -> None:
        super().__init__(text, timezone)
        parts = body.split()
        if len(parts) != 2:
            raise ValueError(f"{text}: rate() takes a number and a unit, as in rate(5 minutes)")
        number, unit = parts
        if not number.isascii() or not number.isdigit() or int(number) < 1:
            raise ValueError(f"{text}: the number {number!r} must be a whole number >= 1")
        base = unit.lower().removesuffix("s")
        if base not in _UNITS:
            raise ValueError(
                f"{text}: the unit {unit!r} must be second(s), minute(s), hour(s) or day(s)"
            )
        self.count = int(number)
        self.unit = base
        self.interval = timedelta(seconds=self.count * _UNITS[base])

    def next_after(self, after: datetime, *, anchor: datetime) -> datetime | None:
        after = _aware(after, "after").astimezone(UTC)
        # In UTC: adding a timedelta to a zoneinfo datetime is wall-clock arithmetic (23 or
        # 25 hours a day across DST), and rate() is elapsed time.
        anchor = _aware(anchor, "anchor").astimezone(UTC)
        k = max(1, (after - anchor) // self.interval + 1)
        return anchor + k * self.interval

    def describe(self) -> str:
        if self.count == 1:
            return f"every {self.unit}"
        return f"every {self.count} {self.unit}s"


class _WallExpression(Expression):
    """An expression naming wall times; ``_walls`` lists them, the DST rules do the rest."""

    hour_wildcard: bool = False

    @abc.abstractmethod
    def _walls(self, start: datetime) -> Iterator[datetime]:
        """Matching wall times (naive) at or after ``start``, in wall order."""

    def next_after(self, after: datetime, *, anchor: datetime) -> datetime | None:
        after = _aware(after, "after").astimezone(UTC)
        local = after.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        # A wall time equal to `after`'s fires at `after` or earlier: start just past it...
        start = wall + _TICK
        if local.fold == 0:
            # ...unless `after` is in the first pass of a repeated hour: then the second pass
            # of wall times earlier than `after`'s is still to come.
            first, second = _offsets(wall, self.zone)
            if first > second:
                start = wall - (first - second)
        # The earliest instant of each wall time grows with the wall time; a wall time's
        # second occurrence (fall-back) can come before a later wall time's first one, so
        # keep the least second occurrence seen until a first occurrence passes `after`.
        pending: datetime | None = None
        for candidate in self._walls(start):
            earliest, repeat = _wall_to_instants(candidate, self.zone, self.hour_wildcard)
            if earliest is not None and earliest > after:
                return earliest if pending is None else min(earliest, pending)
            if repeat is not None and repeat > after:
                pending = repeat if pending is None else min(pending, repeat)
        return pending


def _offsets(wall: datetime, zone: zoneinfo.ZoneInfo) -> tuple[timedelta, timedelta]:
    """The UTC offsets of a naive wall time read with fold=0 and with fold=1."""
    first = wall.replace(tzinfo=zone).utcoffset() or _ZERO
    second = wall.replace(tzinfo=zone, fold=1).utcoffset() or _ZERO
    return first, second


def _wall_to_instants(
    wall: datetime, zone: zoneinfo.ZoneInfo, every_occurrence: bool
) -> tuple[datetime | None, datetime | None]:
    """The instants (UTC) a wall time fires at: (earliest, repeat).

    The Vixie cron rules: a wall time that exists once fires once. One inside a spring-forward
    gap fires at the first instant after the gap, unless the expression's hour field is `*` or
    a step (then it is not a real occurrence and fires nothing). One repeated by a fall-back
    fires at its first occurrence, and also at its second when the hour field is `*` or a step.
    """
    first, second = _offsets(wall, zone)
    naive_utc = wall - first
    if first == second:
        return naive_utc.replace(tzinfo=UTC), None
    if first < second:  # a gap: PEP 495 reads fold=0 with the offset from before it
        if every_occurrence:
            return None, None
        return _transition(wall - second, naive_utc, zone, second), None
    repeat = (wall - second).replace(tzinfo=UTC)
    return naive_utc.replace(tzinfo=UTC), repeat if every_occurrence else None


def _transition(
    lo: datetime, hi: datetime, zone: zoneinfo.ZoneInfo, after_offset: timedelta
) -> datetime:
    """The first instant in (lo, hi] (naive UTC) whose offset is ``after_offset``: the end of
    a gap. Transitions fall on whole seconds, so bisect over seconds."""
    low, high = int(lo.replace(tzinfo=UTC).timestamp()), int(hi.replace(tzinfo=UTC).timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after_offset:
            high = mid
        else:
            low = mid
    return datetime.fromtimestamp(high, UTC)


class CronExpression(_WallExpression):
    """``cron(...)`` (EventBridge, six fields) or a five-field crontab line / ``@`` macro."""

    def __init__(self, text: str, timezone: str, fields: EventBridgeCron | CrontabLine) -> None:
        super().__init__(text, timezone)
        self.kind = "cron" if isinstance(fields, EventBridgeCron) else "crontab"
        self.fields = fields
        self.hour_wildcard = fields.hour_wildcard

    def _walls(self, start: datetime) -> Iterator[datetime]:
        return self.fields.walls(start)

    def describe(self) -> str:
        return self.fields.describe()


_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", re.ASCII)


class AtExpression(_WallExpression):
    """``at(yyyy-mm-ddThh:mm:ss)``: once, at that wall time in the time zone."""

    kind = "at"

    def __init__(self, text: str, timezone: str, body: str) -> None:
        super().__init__(text, timezone)
        body = body.strip()
        if not _AT.fullmatch(body):
            raise ValueError(f"{text}: at() takes yyyy-mm-ddThh:mm:ss, got {body!r}")
        try:
            self.wall = datetime.fromisoformat(body)
        except ValueError as exc:
            raise ValueError(f"{text}: {body!r} is not a date and time ({exc})") from None

    def _walls(self, start: datetime) -> Iterator[datetime]:
        # One candidate; next_after keeps it only if it fires strictly later than `after`.
        yield self.wall

    def describe(self) -> str:
        return f"once at {self.wall:%Y-%m-%d %H:%M:%S} ({self.timezone})"


_FORM = re.compile(r"(?P<name>cron|rate|at)\((?P<body>.*)\)", re.ASCII | re.DOTALL)


def parse_expression(expression: str, timezone: str = "UTC") -> Expression:
    """Parse a schedule expression.

    Args:
        expression: ``cron(min hour day-of-month month day-of-week year)``, ``rate(N unit)``,
            ``at(yyyy-mm-ddThh:mm:ss)``, a five-field crontab line or ``@hourly``,
            ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``.
        timezone: the IANA name cron and at() read wall time in.

    Returns:
        The expression.

    Raises:
        TypeError: ``expression`` is not a string.
        ValueError: a bad expression (the message names the field and why) or an unknown
            time zone.
    """
    if not isinstance(expression, str):
        raise TypeError(f"an expression is a string, got {expression!r}")
    if not isinstance(timezone, str):
        check_timezone(timezone)  # the TypeError, before the cache hashes it
    return _parse(expression, timezone)


@functools.lru_cache(maxsize=4096)
def _parse(expression: str, timezone: str) -> Expression:
    """parse_expression's work, cached: schedulers parse the same few expressions per fire,
    and an Expression never changes once made."""
    text = expression.strip()
    check_timezone(timezone)
    if not text:
        raise ValueError(
            "empty expression: expected cron(...), rate(...), at(...) or a crontab line"
        )
    form = _FORM.fullmatch(text)
    # cron(...) reads well bare in a message; a crontab line reads better quoted.
    where = text if form else repr(text)
    if form is None and "(" in text:
        raise ValueError(f"{where}: expected cron(...), rate(...), at(...) or a crontab line")
    try:
        if form is None:
            return CronExpression(text, timezone, CrontabLine(text))
        name, body = form["name"], form["body"]
        if name == "rate":
            return RateExpression(text, timezone, body)
        if name == "at":
            return AtExpression(text, timezone, body)
        return CronExpression(text, timezone, EventBridgeCron(body))
    except FieldError as exc:
        raise ValueError(f"{where}: {exc}") from None
