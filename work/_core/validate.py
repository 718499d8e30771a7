"""The ranges every durable store keeps faithfully, checked in one place before anything is stored.

``Queue.enqueue`` runs these checks on every store alike, so a value one backend would refuse
(PostgreSQL's ``integer`` priority, its ``jsonb`` that holds no ``\\u0000``, a timestamp of
``infinity``) is refused on all of them with a ValueError or TypeError naming it, before any
row is written.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "EPOCH",
    "INT_MAX",
    "INT_MIN",
    "MAX_AHEAD",
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "check_at",
    "check_delay",
    "check_int",
    "check_name",
    "check_payload",
]

INT_MIN = -(2**31)
"""The lowest priority (and stored counter) every store keeps: PostgreSQL's ``integer``."""
INT_MAX = 2**31 - 1
"""The highest priority (and ``max_attempts``) every store keeps: PostgreSQL's ``integer``."""
MAX_AHEAD = timedelta(days=36525)
"""How far ahead of now (about 100 years) an ``at`` or a ``delay`` may reach."""
MAX_NAME_LENGTH = 255
"""The longest handler name, queue name, job id or unique key, in characters."""
MAX_DEPTH = 64
"""How deeply args and headers may nest (dicts and lists in each other)."""


# C0 and C1 controls (NUL among them), and surrogates, which UTF-8 cannot encode.
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _bad_char(text: str) -> str | None:
    """The first character no store keeps in a name (a control character or a lone surrogate)."""
    found = _BAD_CHAR.search(text)
    return None if found is None else found.group()


def check_name(value: object, what: str, *, limit: int = MAX_NAME_LENGTH) -> str:
    """Return ``value`` if it is a usable name: a non-blank str of at most ``limit`` characters
    without control characters or lone surrogates.

    Args:
        value: the name to check.
        what: how the message names it ("the queue name", "job.id").
        limit: the longest length accepted.

    Raises:
        TypeError: not a str.
        ValueError: blank, too long, or holding a control character or a lone surrogate.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    if not value.strip():
        raise ValueError(f"{what} must not be blank, got {value!r}")
    if len(value) > limit:
        raise ValueError(f"{what} must be at most {limit} characters, got {len(value)}")
    bad = _bad_char(value)
    if bad is not None:
        raise ValueError(
            f"{what} must not contain control characters or lone surrogates "
            f"(found {bad!r}), got {value!r}"
        )
    return value


def check_int(value: object, what: str, *, low: int = INT_MIN, high: int = INT_MAX) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[low, high]``.

    Raises:
        TypeError: not an int.
        ValueError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value!r}")
    return value


def check_delay(value: float | timedelta, *, what: str = "delay") -> float:
    """Return ``value`` in seconds if it is finite and between 0 and :data:`MAX_AHEAD`.

    Raises:
        TypeError: neither a number nor a timedelta.
        ValueError: NaN, infinite, negative, or further ahead than :data:`MAX_AHEAD`.
    """
    if isinstance(value, timedelta):
        secs = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be seconds (int/float) or a timedelta, got {value!r}")
    else:
        try:
            secs = float(value)
        except OverflowError:  # an int too big for a float
            secs = math.inf
    if not math.isfinite(secs):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    if secs < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")
    if secs > MAX_AHEAD.total_seconds():
        raise ValueError(
            f"{what} must be at most {MAX_AHEAD.days} days ({MAX_AHEAD.total_seconds():.0f} s), "
            f"got {value!r}"
        )
    return secs


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest ``at`` every store keeps faithfully (Redis keeps microseconds since then)."""


def check_at(value: object, now: datetime) -> datetime:
    """Return ``value`` in UTC if it is an aware datetime from :data:`EPOCH` (1970-01-01 UTC)
    to :data:`MAX_AHEAD` after ``now``.

    ``datetime.min`` and ``datetime.max`` are refused: PostgreSQL would store them as
    ``-infinity`` and ``infinity``.

    Raises:
        TypeError: not a datetime.
        ValueError: naive, before 1970, or further than :data:`MAX_AHEAD` ahead of ``now``.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"at must be a datetime, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"at must be an aware datetime (with tzinfo), got naive {value!r}")
    try:
        when = value.astimezone(UTC)
        ok = EPOCH <= when <= now + MAX_AHEAD
    except OverflowError:  # datetime.min/max in a zone other than UTC
        ok = False
    if not ok:
        raise ValueError(
            f"at must be from {EPOCH.date().isoformat()} to {MAX_AHEAD.days} days from now, "
            f"got {value.isoformat()}"
        )
    return when


def check_payload(value: Any, where: str) -> None:
    """Check that ``value`` (args or headers) nests at most :data:`MAX_DEPTH` levels and that
    no str in it (key or value) holds a NUL or a lone surrogate, which PostgreSQL's ``jsonb``
    and UTF-8 cannot keep.

    Run it before :func:`~work._core.jsoncheck.check_json`: a cycle or a deep nesting ends
    here as a ValueError, never as a RecursionError.

    Raises:
        ValueError: nested too deeply (or cyclic), or a str with a NUL or a lone surrogate;
            the message names where.
    """
    if _payload_ok(value, 0):
        return
    problem = _payload_problem(value, where, 0)
    if problem is not None:
        raise ValueError(problem)


# Values with nothing inside to check: skipped without a call (most of any job's args).
_PLAIN = frozenset({int, float, bool, type(None)})


def _payload_ok(value: Any, depth: int) -> bool:
    """The per-job fast path of :func:`check_payload`: no names built, no call per number."""
    if isinstance(value, str):
        return not _bad_text(value)
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return False
        for key, item in value.items():
            if isinstance(key, str) and _bad_text(key):
                return False
            kind = type(item)
            if kind in _PLAIN:
                continue
            if kind is str:
                if _bad_text(item):
                    return False
            elif not _payload_ok(item, depth + 1):
                return False
        return True
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return False
        for item in value:
            kind = type(item)
            if kind in _PLAIN:
                continue
            if kind is str:
                if _bad_text(item):
                    return False
            elif not _payload_ok(item, depth + 1):
                return False
    return True


def _bad_text(text: str) -> bool:
    if text.isascii():
        return "\x00" in text
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _payload_problem(value: Any, where: str, depth: int) -> str | None:
    if isinstance(value, str):
        if _bad_text(value):
            return f"{where} holds a NUL or a lone surrogate, which stores cannot keep: {value!r}"
        return None
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            root = where.partition("[")[0]  # the path to the 64th level is no help
            return f"{root} nests deeper than {MAX_DEPTH} levels (or refers to itself)"
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _bad_text(key):
                    return (
                        f"{where} has a key holding a NUL or a lone surrogate, which stores "
                        f"cannot keep: {key!r}"
                    )
                problem = _payload_problem(item, f"{where}[{key!r}]", depth + 1)
                if problem is not None:
                    return problem
        else:
            for index, item in enumerate(value):
                problem = _payload_problem(item, f"{where}[{index}]", depth + 1)
                if problem is not None:
                    return problem
    return None
