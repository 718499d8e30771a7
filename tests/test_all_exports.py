"""The public names: __all__ matches what the packages export, and the contract is there."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

CONTRACT = {
    "work": {
        "Job", "Ctx", "Status", "WorkError", "StatusError", "JobTimeoutError",
        "UnknownHandlerError", "Handler", "Adapter", "chain", "Worker", "Execution",
        "ConcurrentJob", "PerformWith", "BackgroundWorker", "RetryPolicy", "RetryLater",
        "Exponential", "Fibonacci", "Constant", "Queue", "SyncQueue", "JobRecord", "JobState",
        "Schedule", "ScheduleRecord", "Schedules", "SyncSchedules", "Scheduler",
        "Deferred", "JobStateError", "Webhook",
        "JobEvent", "JobEventKind",
    },
    "work.adapters": {
        "aggregate_logger", "prometheus", "tracing", "inject_trace", "Health", "retry", "limit",
    },
    "work.stores": {"open_store"},
    "work.scheduling": {
        "Schedule", "ScheduleRecord", "Schedules", "SyncSchedules", "Scheduler", "Webhook",
        "WebhookHandler",
    },
    "work.testing": {"VirtualClock", "drain"},
    "work.remote": {"Relay", "RelayState", "Scaler", "ProcessScaler", "RemoteResult"},
    "work.abc": {"Store", "Scaler", "WorkflowStore"},
}  # fmt: skip


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_all_matches_public_names(module_name: str) -> None:
    """__all__ is a tuple listing exactly the public, non-module names of the package."""
    module = importlib.import_module(module_name)
    assert isinstance(module.__all__, tuple)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations"}
    }
    assert set(module.__all__) == public


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_contract_names_exported(module_name: str) -> None:
    """Every name in DESIGN.md's contract is importable from its package."""
    module = importlib.import_module(module_name)
    assert CONTRACT[module_name] <= set(module.__all__)


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    """Every exported class and function documents itself (type aliases are documented in
    work/_types.py, where a docstring follows each)."""
    module = importlib.import_module(module_name)
    for name in module.__all__:
        value = getattr(module, name)
        if isinstance(value, types.GenericAlias):
            continue  # a type alias: its docstring follows it in work/_types.py
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (getattr(value, "__doc__", None) or "").strip(), name
