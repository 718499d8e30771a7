"""Compile a workflow into barriers, and the engine that advances it when a step ends.

A workflow is compiled at enqueue into a small DAG of *barriers*. Every step (a Job) has a
target: a slot of a barrier (or the workflow itself, for the last step). A barrier counts the
slots still empty; when the last one is filled it *fires*: its value (the one slot's value,
or the list of its slots in definition order) is given as ``input`` to the steps it releases,
and/or delivered to a slot of the next barrier (a Group nested in a Group). ::

    Chain(a, b, c)            a ──> [1] ──> b ──> [1] ──> c ──> workflow
    Group(a, b)               a ─┐
                              b ─┴> [2: a, b] ──> workflow
    Chord([a, b], c)          a ─┐
                              b ─┴> [2: a, b] ──> c ──> workflow

Steps not yet released live in their barrier (in the store), not as jobs: nothing runs early
and nothing polls. A store calls :func:`advance` inside the transaction that records a step's
final state (Redis runs the same rules in Lua), so the step's end and what follows it are
one atomic change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .._core.job import Job
from .._core.retry import RetryPolicy
from ..stores._base import JobRecord, JobState
from ._model import (
    WORKFLOW_HEADER,
    Chain,
    Chord,
    Group,
    Node,
    Step,
    WorkflowRecord,
    WorkflowState,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_STEPS",
    "TOP",
    "Barrier",
    "Plan",
    "PlanStep",
    "Release",
    "Request",
    "advance",
    "check_limits",
    "compile_workflow",
    "drive",
    "first_open",
    "on_error_record",
    "record_from_template",
    "released_record",
    "resume",
    "template",
]

MAX_DEPTH = 32
"""How deeply workflows may nest: the top-level one is level 1, a workflow inside it level 2."""

MAX_STEPS = 10_000
"""How many steps (Jobs, ``on_error`` not counted) one workflow may have."""

TOP = -1
"""The target of the step (or barrier) whose value is the workflow's result."""

MakeRecord = Callable[[Job, RetryPolicy | None], JobRecord]


@dataclass(frozen=True, slots=True)
class Release:
    """A step a barrier enqueues when it fires: its record (as a JSON template), whether its
    args stay as given, and its delay in seconds."""

    template: dict[str, Any]
    immutable: bool
    delay: float


@dataclass(slots=True)
class Barrier:
    """A join point: ``remaining`` empty slots; ``mode`` "one" (the value is slot 0's) or
    "list"; when it fires it enqueues ``releases`` and delivers its value to ``forward``
    (a (barrier, slot) pair, or (TOP, 0) for the workflow), if set."""

    index: int
    remaining: int
    mode: str
    releases: list[Release] = field(default_factory=list)
    forward: tuple[int, int] | None = None

    def spec(self) -> dict[str, Any]:
        """The barrier as stored (JSON): everything but ``remaining``."""
        return {
            "mode": self.mode,
            "forward": list(self.forward) if self.forward is not None else None,
            "releases": [
                {"t": r.template, "immutable": r.immutable, "delay": r.delay} for r in self.releases
            ],
        }


@dataclass(frozen=True, slots=True)
class PlanStep:
    """Where one step's result goes: its index in ``jobs``, target barrier and slot."""

    job_id: str
    index: int
    target: int
    slot: int


@dataclass(slots=True)
class Plan:
    """What a store stores for a new workflow, in one transaction."""

    record: WorkflowRecord
    start: list[JobRecord]
    steps: list[PlanStep]
    barriers: list[Barrier]
    on_error: dict[str, Any] | None


def template(rec: JobRecord) -> dict[str, Any]:
    """A not-yet-enqueued step's record as JSON (the fields a store's add reads)."""
    return {
        "id": rec.id,
        "handler": rec.handler,
        "args": rec.args,
        "queue": rec.queue,
        "headers": rec.headers,
        "priority": rec.priority,
        "max_attempts": rec.max_attempts,
        "timeout": rec.timeout,
        "retry": rec.retry,
        "result_ttl": rec.result_ttl,
    }


def record_from_template(
    t: dict[str, Any], args: dict[str, Any], now: datetime, delay: float
) -> JobRecord:
    """The record to add for a template released at ``now`` (SCHEDULED when delayed)."""
    later = delay > 0
    return JobRecord(
        id=t["id"],
        handler=t["handler"],
        args=args,
        queue=t["queue"],
        headers=dict(t["headers"]),
        priority=t["priority"],
        state=JobState.SCHEDULED if later else JobState.QUEUED,
        max_attempts=t["max_attempts"],
        enqueued_at=now,
        scheduled_for=now + timedelta(seconds=delay) if later else None,
        timeout=t["timeout"],
        retry=t["retry"],
        result_ttl=t["result_ttl"],
    )


def released_record(release: dict[str, Any], value_json: str, now: datetime) -> JobRecord:
    """The record a firing barrier adds for one of its releases, given its value (JSON)."""
    t = release["t"]
    args = dict(t["args"])
    if not release["immutable"]:
        args["input"] = json.loads(value_json)
    return record_from_template(t, args, now, release["delay"])


def on_error_record(
    t: dict[str, Any],
    *,
    error: str | None,
    status: int,
    job_id: str,
    workflow_id: str,
    now: datetime,
) -> JobRecord:
    """The ``on_error`` job's record: its own args plus the first failed step's details."""
    args = dict(t["args"])
    args.update(error=error or "", status=status, job_id=job_id, workflow_id=workflow_id)
    return record_from_template(t, args, now, 0.0)


class _Compiler:
    def __init__(self, make: MakeRecord, workflow_id: str) -> None:
        self.make = make
        self.workflow_id = workflow_id
        self.order: list[Step] = []
        self.index: dict[int, int] = {}
        self.ids: set[str] = set()
        self.objects: set[int] = set()  # id() of each Job object seen: one object, one step
        self.records: dict[int, JobRecord] = {}
        self.barriers: list[Barrier] = []
        self.steps: list[PlanStep] = []

    def number(self, node: Node) -> None:
        """Give every step its index in ``jobs``: depth-first, definition order."""
        if isinstance(node, Step):
            if id(node.job) in self.objects or node.job.id in self.ids:
                raise ValueError(
                    f"job id {node.job.id!r} is used twice in one workflow: give each step "
                    "its own Job"
                )
            self.ids.add(node.job.id)
            self.objects.add(id(node.job))
            self.index[id(node)] = len(self.order)
            self.order.append(node)
            rec = self.make(node.job, node.retry)
            headers = dict(rec.headers)
            headers[WORKFLOW_HEADER] = self.workflow_id
            self.records[id(node)] = rec.replace(headers=headers)
        elif isinstance(node, Chain | Group):
            for s in node.steps:
                self.number(s)
        else:
            self.number(node.header)
            self.number(node.callback)

    def barrier(self, remaining: int, mode: str) -> Barrier:
        b = Barrier(index=len(self.barriers), remaining=remaining, mode=mode)
        self.barriers.append(b)
        return b

    def link(self, node: Node, target: tuple[int, int]) -> list[Step]:
        """Wire ``node`` so that its value goes to ``target``; return its first steps."""
        if isinstance(node, Step):
            self.steps.append(PlanStep(node.job.id, self.index[id(node)], *target))
            return [node]
        if isinstance(node, Chain):
            starts = self.link(node.steps[-1], target)
            for s in reversed(node.steps[:-1]):
                b = self.barrier(1, "one")
                b.releases = [self.release(x) for x in starts]
                starts = self.link(s, (b.index, 0))
            return starts
        if isinstance(node, Group):
            b = self.barrier(len(node.steps), "list")
            b.forward = target
            out: list[Step] = []
            for j, s in enumerate(node.steps):
                out += self.link(s, (b.index, j))
            return out
        cb_starts = self.link(node.callback, target)
        b = self.barrier(len(node.header.steps), "list")
        b.releases = [self.release(x) for x in cb_starts]
        out = []
        for j, s in enumerate(node.header.steps):
            out += self.link(s, (b.index, j))
        return out

    def release(self, s: Step) -> Release:
        t = template(self.records[id(s)])
        if not s.immutable:
            t["args"] = {k: v for k, v in t["args"].items() if k != "input"}
        return Release(t, s.immutable, s.delay)


def check_limits(root: Any, children: Callable[[Any], Sequence[Any] | None]) -> None:
    """Check a workflow tree against :data:`MAX_DEPTH` and :data:`MAX_STEPS` without
    recursion (a tree too deep for Python's stack is refused, not a crash).

    ``children(node)`` gives a nested workflow's nodes, or None for a step. Used on
    :class:`Chain`/:class:`Group`/:class:`Chord` and on the HTTP service's parsed bodies.

    Raises:
        ValueError: naming the limit that was passed.
    """
    steps = 0
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        kids = children(node)
        if kids is None:
            steps += 1
            if steps > MAX_STEPS:
                raise ValueError(
                    f"a workflow may have at most {MAX_STEPS:,} steps (MAX_STEPS): this one "
                    "has more"
                )
            continue
        if depth > MAX_DEPTH:
            raise ValueError(
                f"workflows may nest at most {MAX_DEPTH} levels deep (MAX_DEPTH): this one "
                f"reaches level {depth}"
            )
        stack.extend((kid, depth + 1) for kid in kids)


def _children(node: Node) -> Sequence[Node] | None:
    if isinstance(node, Step):
        return None
    if isinstance(node, Chord):
        return [*node.header.steps, node.callback]
    return node.steps


def compile_workflow(workflow: Chain | Group | Chord, make: MakeRecord, now: datetime) -> Plan:
    """Check ``workflow`` and compile it into a :class:`Plan` (nothing is stored).

    ``make`` builds (and checks) a step's record as ``Queue.enqueue`` would.

    Raises:
        ValueError: a Job (or job id) used twice, a bad value in a step, or a workflow
            nested deeper than :data:`MAX_DEPTH` or with more than :data:`MAX_STEPS` steps.
        TypeError: a value of the wrong type.
    """
    check_limits(workflow, _children)
    c = _Compiler(make, workflow.id)
    c.number(workflow)
    starts = c.link(workflow, (TOP, 0))
    start_records: list[JobRecord] = []
    for s in starts:
        rec = c.records[id(s)]
        if s.delay > 0:
            rec = rec.replace(
                state=JobState.SCHEDULED, scheduled_for=now + timedelta(seconds=s.delay)
            )
        start_records.append(rec.replace(enqueued_at=now))
    on_error = None
    if workflow.on_error is not None:
        if workflow.on_error.id in c.ids:
            raise ValueError(f"on_error job id {workflow.on_error.id!r} is also a step's id")
        rec = c.make(workflow.on_error, None)
        headers = dict(rec.headers)
        headers[WORKFLOW_HEADER] = workflow.id
        on_error = template(rec.replace(headers=headers))
    record = WorkflowRecord(
        id=workflow.id,
        kind=workflow.kind,
        state=WorkflowState.RUNNING,
        jobs=tuple(s.job.id for s in c.order),
        current=0,
        created_at=now,
        name=workflow.name,
        on_error=workflow.on_error.id if workflow.on_error is not None else None,
    )
    return Plan(record, start_records, c.steps, c.barriers, on_error)


# -- the engine -------------------------------------------------------------------------------
#
# advance() is written once as a generator of requests, so the same rules run inside a
# synchronous SQLite transaction, the memory store's lock and an asynchronous PostgreSQL
# transaction. Requests (each answered by the store, inside its transaction):
#   ("step", job_id)            -> (workflow_id, index, target, slot) and mark the step ended,
#                                  or None (not a step, or its end was already recorded)
#   ("unend", job_id)           -> None: mark the step not ended again (it ended while its
#                                  workflow was FAILED: a retry that resumes the workflow
#                                  replays it, see resume())
#   ("lock", workflow_id)       -> the workflow's state (str) and on_error template, locked
#                                  for the rest of the transaction, or None
#   ("fill", wf, barrier, slot, value_json) -> None while the barrier waits; when this slot
#                                  was its last one: (spec, [slot values as JSON, in order])
#   ("add", [JobRecord])        -> None: add these jobs
#   ("finish", wf, state, result_json, error, current) -> None: end the workflow
#                                  (current None: the first step not ended)
# and, for resume() only:
#   ("resume", job_id)          -> None unless job_id is the step that failed its FAILED
#                                  workflow; then the store has made the workflow RUNNING again
#                                  (no error, no finished_at, on_error dropped: it ran once) and
#                                  the step not ended, and answers the steps that ended while
#                                  it was FAILED: [(job_id, state, status, result_json, error)]
#                                  of each step not ended whose job is final, in ``jobs`` order

Request = tuple[Any, ...]


def advance(
    job_id: str,
    state: JobState,
    status: int,
    result_json: str | None,
    error: str | None,
    now: datetime,
) -> Generator[Request, Any, None]:
    """The consequences of job ``job_id`` ending in final ``state``, as store requests."""
    info = yield ("step", job_id)
    if info is None:
        return
    wf, index, target, slot = info
    locked = yield ("lock", wf)
    if locked is None or locked[0] != "running":
        # The workflow already ended: a Group's other members just finish. Under a FAILED
        # workflow the end is kept for later: retrying the failed step resumes the workflow,
        # and then this end counts (see resume()).
        if locked is not None and locked[0] == "failed":
            yield ("unend", job_id)
        return
    on_error = locked[1]
    if state is not JobState.SUCCEEDED:
        final = "failed" if state is JobState.FAILED else "cancelled"
        yield ("finish", wf, final, None, error, index)
        if final == "failed" and on_error is not None:
            rec = on_error_record(
                on_error, error=error, status=status, job_id=job_id, workflow_id=wf, now=now
            )
            yield ("add", [rec])
        return
    value = result_json if result_json is not None else "null"
    while True:
        if target == TOP:
            yield ("finish", wf, "succeeded", value, None, None)
            return
        fired = yield ("fill", wf, target, slot, value)
        if fired is None:
            return
        spec, slots = fired
        value = slots[0] if spec["mode"] == "one" else "[" + ",".join(slots) + "]"
        if spec["releases"]:
            yield ("add", [released_record(r, value, now) for r in spec["releases"]])
        if spec["forward"] is None:
            return
        target, slot = spec["forward"]


def resume(job_id: str, now: datetime) -> Generator[Request, Any, None]:
    """The consequences of retrying job ``job_id``, as store requests: if it is the step that
    failed its workflow, the workflow runs again, and the steps that ended meanwhile (a
    Group's other members) count now, as if they had ended under a RUNNING workflow."""
    ended = yield ("resume", job_id)
    for other, state, status, result_json, error in ended or ():
        yield from advance(other, JobState(state), status, result_json, error, now)


def drive(steps: Generator[Request, Any, None], handle: Callable[[Request], Any]) -> None:
    """Run :func:`advance` against a synchronous store transaction."""
    reply: Any = None
    try:
        while True:
            reply = handle(steps.send(reply))
    except StopIteration:
        return


def first_open(total: int, ended: Callable[[int], bool]) -> int:
    """The index of the first step not ended (``total`` when every one has)."""
    return next((i for i in range(total) if not ended(i)), total)
