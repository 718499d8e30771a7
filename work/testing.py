"""Helpers for users' tests: a virtual clock, and ``drain`` to run queued jobs eagerly."""

from __future__ import annotations

from ._core.clock import VirtualClock as VirtualClock
from ._durable.drain import drain as drain

__all__ = ("VirtualClock", "drain")
