"""Durable schedules: expressions, schedules, the scheduler, Webhook targets and callbacks."""

from __future__ import annotations

from ._callbacks import callback_token as callback_token
from ._callbacks import callback_url as callback_url
from ._callbacks import handle_callback as handle_callback
from ._schedule import Schedule as Schedule
from ._schedule import ScheduleRecord as ScheduleRecord
from ._scheduler import Scheduler as Scheduler
from ._schedules import Schedules as Schedules
from ._schedules import SyncSchedules as SyncSchedules
from ._webhook import Webhook as Webhook
from ._webhook import WebhookHandler as WebhookHandler
from ._webhook import keep_public_url as keep_public_url
from ._webhook import stored_public_url as stored_public_url

__all__ = (
    "Schedule",
    "ScheduleRecord",
    "Scheduler",
    "Schedules",
    "SyncSchedules",
    "Webhook",
    "WebhookHandler",
    "callback_token",
    "callback_url",
    "handle_callback",
    "keep_public_url",
    "stored_public_url",
)
