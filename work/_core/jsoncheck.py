"""Checking that a value travels through JSON faithfully, naming the first part that does not."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_json", "json_ok"]


def json_ok(value: Any) -> bool:
    """True when JSON carries ``value`` faithfully; the per-job fast path: no names built."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not json_ok(item):
                return False
        return True
    if isinstance(value, list | tuple):
        # A plain loop, not all(<generator>): this runs for every item of every job's args.
        for item in value:  # noqa: SIM110
            if not json_ok(item):
                return False
        return True
    return False


def check_json(value: Any, where: str) -> None:
    """Raise TypeError naming the first part of ``value`` that JSON cannot carry faithfully."""
    if json_ok(value):
        return
    _name_json_problem(value, where)


def _name_json_problem(value: Any, where: str) -> None:
    """Walk ``value`` building the path to its first bad part, and raise TypeError naming it."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; JSON object keys "
                    f"must be str"
                )
            _name_json_problem(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _name_json_problem(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serialisable "
        f"(use str, int, float, bool, None, list or dict)"
    )
