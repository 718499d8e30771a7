"""Deadlines for many waiting calls, kept by one task instead of a timer per call."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio

__all__ = ["Deadlines"]

T = TypeVar("T")


class Deadlines(Generic[T]):
    """Items that expire after a delay unless discarded first; ``run`` expires them.

    Items are grouped by their delay, so each group is in deadline order already (the clock
    only goes forward): adding and discarding are dict operations, and ``run`` looks only at
    the head of each group. A relay's ``do`` calls share a handful of timeouts, so this is one
    sleeping task for all of them, where a cancel scope with a deadline per call arms and
    cancels an event-loop timer each time (see docs/performance.md, "Remote workers").

    Args:
        expire: called as ``expire(item, delay)`` for each item still here at its deadline
            (it is removed first); a plain function that must not block.
    """

    __slots__ = ("_due", "_expire", "_groups", "_wake")

    def __init__(self, expire: Callable[[T, float], None]) -> None:
        self._groups: dict[float, dict[Hashable, tuple[float, T]]] = {}
        self._expire = expire
        self._due = math.inf
        self._wake: anyio.Event | None = None

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def add(self, key: Hashable, item: T, delay: float) -> float:
        """Expire ``item`` (unique ``key``) ``delay`` seconds from now; return the deadline."""
        deadline = anyio.current_time() + delay
        group = self._groups.get(delay)
        if group is None:
            group = self._groups[delay] = {}
        group[key] = (deadline, item)
        if deadline < self._due and self._wake is not None:
            # Earlier than what ``run`` sleeps until: it looks again.
            self._wake.set()
            self._wake = None
        return deadline

    def discard(self, key: Hashable, delay: float) -> None:
        """Forget the item of ``key`` added with ``delay`` (no-op if it is not here)."""
        group = self._groups.get(delay)
        if group is not None:
            group.pop(key, None)
            if not group:
                # Callers that pass a different timeout each time leave no empty groups behind.
                del self._groups[delay]

    async def run(self) -> None:
        """Expire each item at its deadline, until cancelled."""
        while True:
            now = anyio.current_time()
            due = math.inf
            for delay, group in list(self._groups.items()):
                while group:
                    key = next(iter(group))
                    deadline, item = group[key]
                    if deadline > now:
                        due = min(due, deadline)
                        break
                    del group[key]
                    self._expire(item, delay)
                if not group:
                    del self._groups[delay]
            self._due = due
            wake = self._wake = anyio.Event()
            with anyio.move_on_after(due - now):
                await wake.wait()
            self._wake = None
            self._due = math.inf
