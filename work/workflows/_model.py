"""The workflow forms users build (Chain, Group, Chord, step) and the record a store keeps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from .._core.job import Job, new_id
from .._core.retry import RetryPolicy

__all__ = [
    "WORKFLOW_HEADER",
    "Chain",
    "Chord",
    "Group",
    "Node",
    "Step",
    "WorkflowRecord",
    "WorkflowState",
    "step",
]

WORKFLOW_HEADER = "anywork-workflow-id"
"""The header every step's stored job carries: the id of its top-level workflow (read back as
:attr:`work.JobRecord.workflow_id`)."""


class WorkflowState(StrEnum):
    """Where a workflow is in its life."""

    RUNNING = "running"
    """Some step has not ended yet (or was not released yet)."""
    SUCCEEDED = "succeeded"
    """Every step succeeded; ``result`` holds the workflow's result."""
    FAILED = "failed"
    """A step ended FAILED; ``error`` is its error text."""
    CANCELLED = "cancelled"
    """A step was cancelled, or the workflow through ``Queue.cancel_workflow``."""

    @property
    def is_final(self) -> bool:
        """True for every state but RUNNING."""
        return self is not WorkflowState.RUNNING


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRecord:
    """A workflow as a store keeps it (a snapshot).

    Attributes:
        id: the workflow's id.
        kind: ``"chain"``, ``"group"`` or ``"chord"`` (the top-level form).
        state: where it is in its life.
        jobs: the ``job.id`` of every Job in it, depth-first in definition order, a chord's
            callback after its header, ``on_error`` left out; fixed at enqueue.
        current: the index in ``jobs`` of the first step not yet ended; ``len(jobs)`` once
            SUCCEEDED; the failed or cancelled step's index once FAILED or CANCELLED.
        result: the workflow's result once SUCCEEDED (a Chain's is its last step's, a Group's
            the list of its steps' results, a Chord's its callback's).
        error: the failed (or cancelled) step's error text, or None.
        created_at: when it was enqueued (aware UTC).
        finished_at: when it ended, or None while RUNNING.
        name: the name given to the workflow (``Chain(..., name=)``), or None.
        on_error: the id of the ``on_error`` job, or None.
    """

    id: str
    kind: str
    state: WorkflowState
    jobs: tuple[str, ...]
    current: int
    result: Any = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    name: str | None = None
    on_error: str | None = None


class Step:
    """One Job in a workflow with its own settings; made by :func:`step`."""

    __slots__ = ("delay", "immutable", "job", "retry")

    def __init__(
        self,
        job: Job,
        *,
        retry: RetryPolicy | None = None,
        immutable: bool = False,
        delay: float | timedelta | None = None,
    ) -> None:
        if not isinstance(job, Job):
            raise TypeError(f"step() needs a Job, got {type(job).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"step retry must be a RetryPolicy or None, got {retry!r}")
        if not isinstance(immutable, bool):
            raise TypeError(f"step immutable must be a bool, got {immutable!r}")
        secs = 0.0
        if delay is not None:
            secs = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if isinstance(secs, bool) or not isinstance(secs, int | float):
                raise TypeError(f"step delay must be seconds or a timedelta, got {delay!r}")
            if not (math.isfinite(secs) and secs >= 0):
                raise ValueError(f"step delay must be a finite duration >= 0, got {delay!r}")
        self.job = job
        self.retry = retry
        self.immutable = immutable
        self.delay = float(secs)

    def __repr__(self) -> str:
        return f"step({self.job!r}, immutable={self.immutable!r}, delay={self.delay!r})"


def step(
    job: Job,
    *,
    retry: RetryPolicy | None = None,
    immutable: bool = False,
    delay: float | timedelta | None = None,
) -> Step:
    """Wrap a Job with the settings it has as a workflow step.

    Args:
        job: the Job to run.
        retry: its retry policy (default: no retries).
        immutable: True to keep its args exactly as given (no ``input`` is added).
        delay: seconds (or a timedelta) to wait once the step is ready, before it may run.

    Raises:
        TypeError, ValueError: a value of the wrong type or out of range.
    """
    return Step(job, retry=retry, immutable=immutable, delay=delay)


def _as_node(value: object, where: str) -> Node:
    if isinstance(value, Job):
        return Step(value)
    if isinstance(value, Step | Chain | Group | Chord):
        return value
    raise TypeError(
        f"{where}: a workflow step must be a Job, a step(...), a Chain, a Group or a Chord, "
        f"got {type(value).__name__} {value!r:.80}"
    )


def _check_on_error(on_error: object) -> Job | None:
    if on_error is not None and not isinstance(on_error, Job):
        raise TypeError(f"on_error must be a Job or None, got {type(on_error).__name__}")
    return on_error


class _Form:
    __slots__ = ("id", "name", "on_error")

    kind = ""

    def __init__(self, on_error: Job | None, id: str | None, name: str | None) -> None:
        if id is not None and (not isinstance(id, str) or not id.strip()):
            raise ValueError(f"workflow id must be a non-blank str, got {id!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"workflow name must be a str or None, got {name!r}")
        self.on_error = _check_on_error(on_error)
        self.id = id if id is not None else new_id()
        self.name = name


class Chain(_Form):
    """Steps run one after another; each gets the previous one's result as ``args["input"]``.

    Args:
        *steps: Jobs, ``step(...)`` s, or nested workflows.
        on_error: a Job enqueued once if a step fails.
        id: the workflow's id (a new unique one by default).
        name: a name kept in the record.

    Raises:
        ValueError: no steps.
        TypeError: a step of another type.
    """

    __slots__ = ("steps",)
    kind = "chain"

    def __init__(
        self,
        *steps: Job | Step | Chain | Group | Chord,
        on_error: Job | None = None,
        id: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(on_error, id, name)
        if not steps:
            raise ValueError("Chain needs at least one step, got none")
        self.steps: tuple[Node, ...] = tuple(
            _as_node(s, f"Chain step {i}") for i, s in enumerate(steps)
        )

    @classmethod
    def from_functions(
        cls,
        name: str,
        data: Any,
        functions: Sequence[dict[str, Any]],
        *,
        queue: str = "default",
        id: str | None = None,
    ) -> Chain:
        """Build async's function-chain job: ``functions`` run in order, ``data`` as the first
        one's ``input``, each result the next one's ``input``.

        Args:
            name: the job's name (kept in the record).
            data: the first function's input (JSON).
            functions: ``[{"name": handler, "retry_options": {"retry_limit": N}}, ...]``; N
                retries after the first attempt (0 by default).
            queue: the queue every function runs on.
            id: the workflow's id.

        Raises:
            ValueError, TypeError: an empty list or a malformed entry (the message names it).
        """
        if isinstance(functions, str | bytes) or not isinstance(functions, Sequence):
            raise TypeError(f"functions must be a list, got {type(functions).__name__}")
        if not functions:
            raise ValueError("functions needs at least one function, got none")
        steps: list[Step] = []
        for i, fn in enumerate(functions):
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise ValueError(f"functions[{i}] must be an object with a name, got {fn!r}")
            options = fn.get("retry_options") or {}
            if not isinstance(options, dict):
                raise TypeError(f"functions[{i}].retry_options must be an object: {options!r}")
            limit = options.get("retry_limit", 0)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"functions[{i}].retry_limit must be an int >= 0: {limit!r}")
            args = {"input": data} if i == 0 else {}
            policy = RetryPolicy(max_attempts=limit + 1) if limit else None
            steps.append(Step(Job(fn["name"], args, queue=queue), retry=policy))
        return cls(*steps, id=id, name=name)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.steps))})"


class Group(_Form):
    """Steps run in parallel; the result is the list of their results, in definition order.

    Args:
        *steps: Jobs, ``step(...)`` s, or nested workflows.
        on_error: a Job enqueued once if a step fails.
        id: the workflow's id.
        name: a name kept in the record.

    Raises:
        ValueError: no steps.
        TypeError: a step of another type.
    """

    __slots__ = ("steps",)
    kind = "group"

    def __init__(
        self,
        *steps: Job | Step | Chain | Group | Chord,
        on_error: Job | None = None,
        id: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(on_error, id, name)
        if not steps:
            raise ValueError("Group needs at least one step, got none")
        self.steps: tuple[Node, ...] = tuple(
            _as_node(s, f"Group step {i}") for i, s in enumerate(steps)
        )

    def __repr__(self) -> str:
        return f"Group({', '.join(map(repr, self.steps))})"


class Chord(_Form):
    """A Group (the header) whose results, in definition order, go to one callback step.

    Args:
        header: a Group, or a sequence of steps.
        callback: the step run once every header step succeeded, with their results as
            ``args["input"]``.
        on_error: a Job enqueued once if a step fails.
        id: the workflow's id.
        name: a name kept in the record.

    Raises:
        ValueError: an empty header.
        TypeError: a header or callback of another type.
    """

    __slots__ = ("callback", "header")
    kind = "chord"

    def __init__(
        self,
        header: Group | Sequence[Job | Step | Chain | Group | Chord],
        callback: Job | Step | Chain | Group | Chord,
        *,
        on_error: Job | None = None,
        id: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(on_error, id, name)
        if isinstance(header, Group):
            self.header = header
        elif isinstance(header, Sequence) and not isinstance(header, str | bytes):
            self.header = Group(*header)
        else:
            raise TypeError(
                f"Chord header must be a Group or a list of steps, got {type(header).__name__}"
            )
        self.callback: Node = _as_node(callback, "Chord callback")

    def __repr__(self) -> str:
        return f"Chord({self.header!r}, {self.callback!r})"


Node = Step | Chain | Group | Chord
"""Anything a workflow holds: one step or a nested workflow."""
