"""The extension points as Protocols: their docstrings are the contracts implementations meet."""

from __future__ import annotations

from .remote._scalers import Scaler as Scaler
from .stores._base import Store as Store
from .stores._base import WorkflowStore as WorkflowStore

__all__ = ("Scaler", "Store", "WorkflowStore")
