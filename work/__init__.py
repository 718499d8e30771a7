"""anywork: status-coded jobs, composable adapters, workers and durable queues on anyio."""

from __future__ import annotations

from ._background import BackgroundWorker as BackgroundWorker
from ._chain import chain as chain
from ._concurrent import ConcurrentJob as ConcurrentJob
from ._concurrent import PerformWith as PerformWith
from ._exceptions import JobTimeoutError as JobTimeoutError
from ._exceptions import RetryLater as RetryLater
from ._exceptions import StatusError as StatusError
from ._exceptions import UnknownHandlerError as UnknownHandlerError
from ._exceptions import WorkError as WorkError
from ._job import Ctx as Ctx
from ._job import Job as Job
from ._queue import Queue as Queue
from ._queue import SyncQueue as SyncQueue
from ._retry import Constant as Constant
from ._retry import Exponential as Exponential
from ._retry import Fibonacci as Fibonacci
from ._retry import RetryPolicy as RetryPolicy
from ._status import Status as Status
from ._types import Adapter as Adapter
from ._types import Handler as Handler
from ._worker import Execution as Execution
from ._worker import RecurringHandle as RecurringHandle
from ._worker import Worker as Worker
from .stores._base import JobRecord as JobRecord
from .stores._base import JobState as JobState

__version__ = "0.1.0.dev0"

__all__ = (
    "Adapter",
    "BackgroundWorker",
    "ConcurrentJob",
    "Constant",
    "Ctx",
    "Execution",
    "Exponential",
    "Fibonacci",
    "Handler",
    "Job",
    "JobRecord",
    "JobState",
    "JobTimeoutError",
    "PerformWith",
    "Queue",
    "RecurringHandle",
    "RetryLater",
    "RetryPolicy",
    "Status",
    "StatusError",
    "SyncQueue",
    "UnknownHandlerError",
    "WorkError",
    "Worker",
    "chain",
)
