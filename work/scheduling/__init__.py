"""Durable schedules: expressions, schedules and the scheduler (public names come later)."""

__all__ = ()
