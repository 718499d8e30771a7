"""Durable stores for jobs: ``open_store(url)`` and the Store protocol they implement."""

from __future__ import annotations

from ._base import Claimed as Claimed
from ._base import JobRecord as JobRecord
from ._base import JobState as JobState
from ._base import Outcome as Outcome
from ._base import Store as Store
from ._base import WorkerInfo as WorkerInfo
from ._base import WorkflowStore as WorkflowStore
from ._open import mask_url as mask_url
from ._open import open_store as open_store
from ._server import StoreAuthenticationError as StoreAuthenticationError
from ._server import StoreUnavailableError as StoreUnavailableError

__all__ = (
    "Claimed",
    "JobRecord",
    "JobState",
    "Outcome",
    "Store",
    "StoreAuthenticationError",
    "StoreUnavailableError",
    "WorkerInfo",
    "WorkflowStore",
    "mask_url",
    "open_store",
)
