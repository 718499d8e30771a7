"""anywork: status-coded jobs, composable adapters, workers and durable queues on anyio."""

from __future__ import annotations

from ._core.chain import chain as chain
from ._core.deferred import Deferred as Deferred
from ._core.exceptions import JobStateError as JobStateError
from ._core.exceptions import JobTimeoutError as JobTimeoutError
from ._core.exceptions import RetryLater as RetryLater
from ._core.exceptions import StatusError as StatusError
from ._core.exceptions import UnknownHandlerError as UnknownHandlerError
from ._core.exceptions import WorkError as WorkError
from ._core.job import Ctx as Ctx
from ._core.job import Job as Job
from ._core.retry import Constant as Constant
from ._core.retry import Exponential as Exponential
from ._core.retry import Fibonacci as Fibonacci
from ._core.retry import RetryPolicy as RetryPolicy
from ._core.status import Status as Status
from ._core.types import Adapter as Adapter
from ._core.types import Handler as Handler
from ._durable.events import JobEvent as JobEvent
from ._durable.events import JobEventKind as JobEventKind
from ._durable.queue import Queue as Queue
from ._durable.queue import SyncQueue as SyncQueue
from ._runtime.background import BackgroundWorker as BackgroundWorker
from ._runtime.concurrent import ConcurrentJob as ConcurrentJob
from ._runtime.concurrent import PerformWith as PerformWith
from ._runtime.worker import Execution as Execution
from ._runtime.worker import RecurringHandle as RecurringHandle
from ._runtime.worker import Worker as Worker
from .scheduling import Schedule as Schedule
from .scheduling import Scheduler as Scheduler
from .scheduling import ScheduleRecord as ScheduleRecord
from .scheduling import Schedules as Schedules
from .scheduling import SyncSchedules as SyncSchedules
from .scheduling import Webhook as Webhook
from .stores._base import JobRecord as JobRecord
from .stores._base import JobState as JobState

__version__ = "0.1.0.dev0"

__all__ = (
    "Adapter",
    "BackgroundWorker",
    "ConcurrentJob",
    "Constant",
    "Ctx",
    "Deferred",
    "Execution",
    "Exponential",
    "Fibonacci",
    "Handler",
    "Job",
    "JobEvent",
    "JobEventKind",
    "JobRecord",
    "JobState",
    "JobStateError",
    "JobTimeoutError",
    "PerformWith",
    "Queue",
    "RecurringHandle",
    "RetryLater",
    "RetryPolicy",
    "Schedule",
    "ScheduleRecord",
    "Scheduler",
    "Schedules",
    "Status",
    "StatusError",
    "SyncQueue",
    "SyncSchedules",
    "UnknownHandlerError",
    "Webhook",
    "WorkError",
    "Worker",
    "chain",
)
