"""Cron expressions in words, for ``Expression.describe()``, the CLI and the docs."""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._cron import CrontabLine, EventBridgeCron

__all__ = ["describe_crontab", "describe_eventbridge"]

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_ORDINALS = ("first", "second", "third", "fourth", "fifth")


def _join(words: Iterable[str]) -> str:
    items = list(words)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _runs(values: Iterable[int], names: Callable[[int], str]) -> str:
    """Names of sorted values, runs of three or more as "Monday to Friday"."""
    items = sorted(values)
    groups: list[list[int]] = []
    for v in items:
        if groups and groups[-1][-1] == v - 1:
            groups[-1].append(v)
        else:
            groups.append([v])
    words: list[str] = []
    for g in groups:
        if len(g) >= 3:
            words.append(f"{names(g[0])} to {names(g[-1])}")
        else:
            words.extend(names(v) for v in g)
    return _join(words)


def _time(minute: str, hour: str, minutes: Iterable[int], hours: Iterable[int]) -> str:
    mins, hrs = sorted(minutes), sorted(hours)
    step = minute.partition("/")[2]
    if hour == "*":
        if minute == "*":
            return "every minute"
        if step and minute.partition("/")[0] in {"*", "0"}:
            return f"every {step} minutes"
        if len(mins) <= 4:
            return "every hour at " + _join(f":{m:02d}" for m in mins)
        return f"at minute {minute} of every hour"
    if len(mins) * len(hrs) <= 4:
        return "at " + _join(f"{h:02d}:{m:02d}" for h in hrs for m in mins)
    return f"at minute {minute} of hour {hour}"


def _months(month: str, months: Iterable[int]) -> str:
    if month == "*":
        return ""
    return " in " + _runs(months, calendar.month_name.__getitem__)


def describe_eventbridge(cron: EventBridgeCron) -> str:
    """``cron(...)`` in words, e.g. "at 09:00 on Monday"."""
    minute, hour, dom, month, dow, year = cron.fields
    days = cron.days
    parts = [_time(minute, hour, cron.minutes, cron.hours)]
    if dow != "?":
        on = [_runs(days.dow, lambda d: _DAYS[d - 1])] if days.dow else []
        on += [f"the last {_DAYS[d - 1]} of the month" for d in sorted(days.dow_last)]
        on += [
            f"the {_ORDINALS[k - 1]} {_DAYS[d - 1]} of the month" for d, k in sorted(days.dow_nth)
        ]
        if dow != "*":
            parts.append("on " + _join(on))
    elif dom != "*":
        on = [f"day {_join(str(d) for d in sorted(days.dom))} of the month"] if days.dom else []
        on += ["the last day of the month"] if days.dom_last else []
        on += ["the last weekday of the month"] if days.dom_last_weekday else []
        on += [f"the weekday nearest day {d}" for d in sorted(days.dom_nearest)]
        parts.append("on " + _join(on))
    text = " ".join(parts) + _months(month, cron.months)
    if year != "*":
        text += (
            f" in {_join(str(y) for y in cron.years)}" if len(cron.years) <= 3 else f" in {year}"
        )
    return text


def describe_crontab(line: CrontabLine) -> str:
    """A crontab line in words, e.g. "at 00:00 on Sunday"."""
    minute, hour, dom, month, dow = line.fields
    parts = [_time(minute, hour, line.minutes, line.hours)]
    on = []
    if dom != "*":
        on.append(f"day {_join(str(d) for d in sorted(line.dom))} of the month")
    if dow != "*":
        on.append(_runs(line.dow, _DAYS.__getitem__))
    if on:
        parts.append("on " + " or ".join(on))
    return " ".join(parts) + _months(month, line.months)
