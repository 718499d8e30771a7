"""Durable schedules: ``Schedule``, ``Schedules`` (create, change, list) and ``Scheduler``."""

from __future__ import annotations

from ._schedule import Schedule as Schedule
from ._schedule import ScheduleRecord as ScheduleRecord
from ._scheduler import Scheduler as Scheduler
from ._schedules import Schedules as Schedules
from ._schedules import SyncSchedules as SyncSchedules

__all__ = ("Schedule", "ScheduleRecord", "Scheduler", "Schedules", "SyncSchedules")
