"""The memory store's workflows: the reference implementation of ``WorkflowStore``."""

from __future__ import annotations

import builtins
import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._base import JobRecord, JobState

if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence

    from .._core.clock import Clock
    from ..workflows._model import WorkflowRecord
    from ..workflows._plan import Plan, Request

__all__ = ["MemoryWorkflows"]


@dataclass(slots=True)
class _Workflow:
    record: WorkflowRecord
    on_error: dict[str, Any] | None
    seq: int
    result_json: str | None = None
    ended: set[int] = field(default_factory=set)
    # barrier -> [remaining, spec, {slot: value JSON}]
    barriers: dict[int, list[Any]] = field(default_factory=dict)


class MemoryWorkflows:
    """Workflow methods of :class:`~work.stores.MemoryStore` (mixed in)."""

    _lock: threading.Lock
    _rows: dict[str, Any]
    _hub: Any
    clock: Clock

    def _wf_init(self) -> None:
        self._workflows: dict[str, _Workflow] = {}
        # job id -> [workflow id, index, target, slot, ended]
        self._wf_steps: dict[str, list[Any]] = {}

    def _insert_locked(self, rec: JobRecord) -> None:  # pragma: no cover - MemoryStore's
        raise NotImplementedError

    def _notify(self) -> None:  # pragma: no cover - MemoryStore's
        raise NotImplementedError

    def _wf_final(
        self, job_id: str, state: JobState, status: int, result_json: str | None, error: str | None
    ) -> None:
        """The hook: job ``job_id`` just became final (the lock is held)."""
        if job_id not in self._wf_steps:
            return
        from ..workflows._plan import advance, drive

        drive(
            advance(job_id, state, status, result_json, error, self.clock.now()),
            self._wf_handle,
        )

    def _wf_retried(self, job_id: str) -> None:
        """The hook: job ``job_id`` was just queued again by a retry (the lock is held)."""
        if job_id not in self._wf_steps:
            return
        from ..workflows._plan import drive, resume

        drive(resume(job_id, self.clock.now()), self._wf_handle)

    def _wf_owners(self, ids: Sequence[str]) -> set[str]:
        """The workflows of the jobs ``ids`` (steps or on_error), before they are deleted."""
        from ..workflows._model import WORKFLOW_HEADER

        owners: set[str] = set()
        for id in ids:
            row = self._rows.get(id)
            owner = row.record.headers.get(WORKFLOW_HEADER) if row is not None else None
            if owner is not None:
                owners.add(owner)
        return owners

    def _wf_forget(self, owners: set[str]) -> None:
        """Delete those of the workflows ``owners`` that ended and have no job left."""
        for wf_id in owners:
            wf = self._workflows.get(wf_id)
            if wf is None or not wf.record.state.is_final:
                continue
            ids = [*wf.record.jobs, *([wf.record.on_error] if wf.record.on_error else [])]
            if any(id in self._rows for id in ids):
                continue
            del self._workflows[wf_id]
            for id in wf.record.jobs:
                self._wf_steps.pop(id, None)

    def _wf_handle(self, req: Request) -> Any:
        from ..workflows._plan import first_open

        kind = req[0]
        if kind == "step":
            info = self._wf_steps.get(req[1])
            if info is None or info[4]:
                return None
            info[4] = True
            self._workflows[info[0]].ended.add(info[1])
            return tuple(info[:4])
        if kind in ("unend", "resume"):
            return self._wf_reopen(kind, req[1])
        if kind == "lock":
            wf = self._workflows.get(req[1])
            return None if wf is None else (wf.record.state.value, wf.on_error)
        if kind == "fill":
            _, wf_id, b, slot, value = req
            barrier = self._workflows[wf_id].barriers[b]
            barrier[2][slot] = value
            barrier[0] -= 1
            if barrier[0] > 0:
                return None
            return barrier[1], [barrier[2][i] for i in sorted(barrier[2])]
        if kind == "add":
            for rec in req[1]:
                self._insert_locked(rec)
            return None
        # finish
        from ..workflows._model import WorkflowState

        _, wf_id, final, result_json, error, current = req
        wf = self._workflows[wf_id]
        jobs = wf.record.jobs
        if current is None:
            current = first_open(len(jobs), wf.ended.__contains__)
        wf.result_json = result_json
        wf.record = dataclasses.replace(
            wf.record,
            state=WorkflowState(final),
            current=current,
            error=error,
            finished_at=self.clock.now(),
        )
        return None

    def _wf_reopen(self, kind: str, job_id: str) -> Any:
        """The "unend" and "resume" requests (see ``work/workflows/_plan.py``)."""
        from ..workflows._model import WorkflowState

        info = self._wf_steps.get(job_id)
        if info is None:
            return None
        wf = self._workflows[info[0]]
        if kind == "resume" and (
            wf.record.state is not WorkflowState.FAILED or wf.record.current != info[1]
        ):
            return None
        info[4] = False
        wf.ended.discard(info[1])
        if kind == "unend":
            return None
        wf.on_error = None  # it ran when the workflow failed: once
        wf.result_json = None
        wf.record = dataclasses.replace(
            wf.record, state=WorkflowState.RUNNING, error=None, finished_at=None
        )
        ended = []
        for id in wf.record.jobs:
            step, row = self._wf_steps.get(id), self._rows.get(id)
            if step is None or step[4] or row is None or not row.record.state.is_final:
                continue
            rec = row.record
            result = row.result_json if rec.state is JobState.SUCCEEDED else None
            ended.append((id, rec.state.value, int(rec.status), result, rec.error))
        return ended

    async def add_workflow(self, plan: Plan) -> WorkflowRecord:
        """Store a compiled workflow and add its first steps (see
        :meth:`work.stores.WorkflowStore.add_workflow`)."""
        with self._lock:
            self._wf_check(plan)
            seq = len(self._workflows)
            wf = _Workflow(record=plan.record, on_error=plan.on_error, seq=seq)
            for b in plan.barriers:
                wf.barriers[b.index] = [b.remaining, b.spec(), {}]
            self._workflows[plan.record.id] = wf
            for s in plan.steps:
                self._wf_steps[s.job_id] = [plan.record.id, s.index, s.target, s.slot, False]
            for rec in plan.start:
                self._insert_locked(rec)
        self._notify()
        return plan.record

    def _wf_check(self, plan: Plan) -> None:
        if plan.record.id in self._workflows:
            raise ValueError(f"a workflow with id {plan.record.id!r} already exists")
        ids = [*plan.record.jobs, *([plan.record.on_error] if plan.record.on_error else [])]
        for id in ids:
            if id in self._rows:
                raise ValueError(f"a job with id {id!r} already exists: a step needs a new id")

    async def get_workflow(self, id: str) -> WorkflowRecord | None:
        """Return the workflow's record, or None."""
        with self._lock:
            wf = self._workflows.get(id)
            return None if wf is None else self._wf_snapshot(wf)

    def _wf_snapshot(self, wf: _Workflow) -> WorkflowRecord:
        from ..workflows._plan import first_open

        rec = wf.record
        result = json.loads(wf.result_json) if wf.result_json is not None else None
        current = rec.current
        if not rec.state.is_final:
            current = first_open(len(rec.jobs), wf.ended.__contains__)
        return dataclasses.replace(rec, result=result, current=current)

    async def cancel_workflow(self, id: str) -> bool:
        """End a RUNNING workflow CANCELLED and cancel its unfinished jobs."""
        from ..workflows._plan import first_open

        with self._lock:
            wf = self._workflows.get(id)
            if wf is None or wf.record.state.is_final:
                return False
            current = first_open(len(wf.record.jobs), wf.ended.__contains__)
            self._wf_handle(("finish", id, "cancelled", None, None, current))
            events: builtins.list[Any] = []
            for job_id in wf.record.jobs:
                events += self._cancel_locked(job_id) or []
        self._hub.publish(events)
        return True

    def _cancel_locked(self, id: str) -> builtins.list[Any] | None:  # pragma: no cover
        raise NotImplementedError

    async def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[WorkflowRecord]:
        """Return a page of workflow records, oldest first."""
        with self._lock:
            wfs = sorted(self._workflows.values(), key=lambda w: w.seq)
            if after is not None and after in self._workflows:
                start = self._workflows[after].seq
                wfs = [w for w in wfs if w.seq > start]
            if state is not None:
                wfs = [w for w in wfs if w.record.state.value == state]
            return [self._wf_snapshot(w) for w in wfs[:limit]]
