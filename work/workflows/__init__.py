"""Workflows: chains, groups and chords of jobs on a durable store, results flowing between
steps (see docs/workflows.md)."""

from __future__ import annotations

from ._model import Chain as Chain
from ._model import Chord as Chord
from ._model import Group as Group
from ._model import Step as Step
from ._model import WorkflowRecord as WorkflowRecord
from ._model import WorkflowState as WorkflowState
from ._model import step as step

__all__ = ("Chain", "Chord", "Group", "Step", "WorkflowRecord", "WorkflowState", "step")
