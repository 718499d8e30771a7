"""The Redis store's workflows: the Lua that applies a step's end inside the script that
records it (COMPLETE, CANCEL, REAP), and the store's workflow methods.

The rules are those of ``work/workflows/_plan.py``. Keys (``P`` is the prefix)::

    P:wf:<id>           hash: the workflow (state, jobs, result, error, times, on_error, ...)
    P:wfstep:<job id>   hash: the step's workflow, index, target barrier and slot, ended
    P:wfopen:<id>       sorted set: the indexes of the steps not ended (current = the first)
    P:wfb:<id>:<b>      hash: barrier b's remaining count and spec (what it releases)
    P:wfs:<id>:<b>      hash: barrier b's filled slots (slot -> result JSON)
    P:workflows         sorted set: every workflow by creation order (P:wfseq counts)

Results travel as the JSON text the worker stored: Lua never re-encodes a user's value.
"""

from __future__ import annotations

import builtins
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..workflows._model import WorkflowRecord
    from ..workflows._plan import Plan

__all__ = ["WF_LUA", "RedisWorkflows", "workflow_scripts"]

# Appended to the scripts' shared prelude (it uses jkey, member, stat, wake and opt).
WF_LUA = r"""
local function wf_merge(args, extra)
  if args == '{}' then return '{' .. extra .. '}' end
  return '{' .. extra .. ',' .. string.sub(args, 2)
end
-- Add one job from a step's add values (see ADD), with these args, due now or at `due`.
local function wf_add(v, args, due, now, cap)
  local id, q = v[1], v[2]
  local jk = jkey(id)
  if redis.call('EXISTS', jk) == 1 then return end
  local seq = redis.call('INCR', P .. ':seq')
  local state = 'queued'
  if due then state = 'scheduled' end
  local f = {'id', id, 'queue', q, 'state', state, 'priority', v[6], 'enqueued_at', now,
             'max_attempts', v[9], 'args', args, 'spec', v[11], 'seq', seq, 'status', '-1',
             'attempts', '0', 'deferrals', '0'}
  local extra = opt(v[12])
  if extra then
    for k, x in pairs(cjson.decode(extra)) do f[#f + 1] = k; f[#f + 1] = x end
  end
  if due then
    f[#f + 1] = 'scheduled_for'; f[#f + 1] = due
    redis.call('ZADD', P .. ':sched:' .. q, due, id)
  else
    local m = member(now, seq, id)
    redis.call('ZADD', P .. ':ready:' .. q, -tonumber(v[6]), m)
    f[#f + 1] = 'rmember'; f[#f + 1] = m
  end
  redis.call('HSET', jk, unpack(f))
  redis.call('ZADD', P .. ':all', seq, id)
  stat(q, state, 1)
  wake(q, cap, 1)
  if emit then emit('enqueued', id, q, now) end
end
-- Job `id` just became final in this script: its workflow's consequences.
local function wf_final(id, state, status, result, err, now, cap)
  local sk = P .. ':wfstep:' .. id
  local st = redis.call('HMGET', sk, 'wf', 'idx', 'target', 'slot', 'ended')
  if not st[1] or st[5] == '1' then return end
  redis.call('HSET', sk, 'ended', '1')
  local wf = st[1]
  local wk = P .. ':wf:' .. wf
  redis.call('ZREM', P .. ':wfopen:' .. wf, st[2])
  local w = redis.call('HMGET', wk, 'state', 'on_error', 'n_jobs')
  if w[1] ~= 'running' then
    -- Kept: a retry of the failed step replays it (wf_retried).
    if w[1] == 'failed' then
      redis.call('HSET', sk, 'ended', '0')
      redis.call('ZADD', P .. ':wfopen:' .. wf, st[2], st[2])
    end
    return
  end
  if state ~= 'succeeded' then
    redis.call('HSET', wk, 'state', state, 'current', st[2], 'finished_at', now)
    if err then redis.call('HSET', wk, 'error', err) end
    if state == 'failed' and w[2] then
      local oe = cjson.decode(w[2])
      local extra = '"error":' .. cjson.encode(err or '') .. ',"status":' .. status ..
                    ',"job_id":' .. cjson.encode(id) .. ',"workflow_id":' .. cjson.encode(wf)
      local args = oe.args
      if args == '{}' then args = '{' .. extra .. '}'
      else args = string.sub(args, 1, -2) .. ',' .. extra .. '}' end
      wf_add(oe.v, args, nil, now, cap)
    end
    return
  end
  local val = result or 'null'
  local tgt, slt = st[3], st[4]
  while true do
    if tgt == '-1' then
      redis.call('HSET', wk, 'state', 'succeeded', 'result', val, 'current', w[3],
                 'finished_at', now)
      return
    end
    local bk = P .. ':wfb:' .. wf .. ':' .. tgt
    local vk = P .. ':wfs:' .. wf .. ':' .. tgt
    redis.call('HSET', vk, slt, val)
    if redis.call('HINCRBY', bk, 'remaining', -1) > 0 then return end
    local spec = cjson.decode(redis.call('HGET', bk, 'spec'))
    if spec.mode == 'one' then
      val = redis.call('HGET', vk, '0')
    else
      local all, parts = redis.call('HGETALL', vk), {}
      for i = 1, #all, 2 do parts[tonumber(all[i]) + 1] = all[i + 1] end
      val = '[' .. table.concat(parts, ',') .. ']'
    end
    for _, r in ipairs(spec.releases) do
      local args = r.args
      if not r.immutable then args = wf_merge(args, '"input":' .. val) end
      local due = nil
      if r.delay > 0 then due = string.format('%.0f', tonumber(now) + r.delay) end
      wf_add(r.v, args, due, now, cap)
    end
    if type(spec.forward) ~= 'table' then return end
    tgt, slt = tostring(spec.forward[1]), tostring(spec.forward[2])
  end
end
-- Job `id` was just queued again by RETRY: if it is the step that failed its FAILED
-- workflow, the workflow runs again (on_error ran once: dropped) and the steps that ended
-- meanwhile count now, in order.
local function wf_retried(id, now, cap)
  local sk = P .. ':wfstep:' .. id
  local st = redis.call('HMGET', sk, 'wf', 'idx')
  if not st[1] then return end
  local wf = st[1]
  local wk = P .. ':wf:' .. wf
  local w = redis.call('HMGET', wk, 'state', 'current', 'jobs')
  if w[1] ~= 'failed' or w[2] ~= st[2] then return end
  redis.call('HSET', sk, 'ended', '0')
  redis.call('ZADD', P .. ':wfopen:' .. wf, st[2], st[2])
  redis.call('HSET', wk, 'state', 'running')
  redis.call('HDEL', wk, 'result', 'error', 'finished_at', 'on_error')
  for _, jid in ipairs(cjson.decode(w[3])) do
    if redis.call('HGET', P .. ':wfstep:' .. jid, 'ended') == '0' then
      local f = redis.call('HMGET', jkey(jid), 'state', 'status', 'result', 'error')
      if f[1] and FINAL[f[1]] then
        local result = nil
        if f[1] == 'succeeded' then result = f[3] or nil end
        wf_final(jid, f[1], f[2], result, f[4] or nil, now, cap)
      end
    end
  end
end
-- Job hash `jk` (of job `id`) is about to be deleted: note its workflow in `seen`.
local function wf_note(seen, id, jk)
  local wf = redis.call('HGET', P .. ':wfstep:' .. id, 'wf')
  if not wf then  -- an on_error job: its header names the workflow
    local raw = redis.call('HGET', jk, 'spec') or ''
    if string.find(raw, 'anywork-workflow-id', 1, true) then
      local ok, spec = pcall(cjson.decode, raw)
      if ok and type(spec) == 'table' and type(spec.headers) == 'table' then
        wf = spec.headers['anywork-workflow-id']
      end
    end
  end
  if type(wf) == 'string' then seen[wf] = true end
end
-- After deletes: the workflows in `seen` that ended and have no job left go too.
local function wf_purge(seen)
  for wf in pairs(seen) do
    local wk = P .. ':wf:' .. wf
    local w = redis.call('HMGET', wk, 'state', 'jobs', 'on_error_id')
    if w[1] and w[1] ~= 'running' then
      local jobs = cjson.decode(w[2])
      local left = w[3] and w[3] ~= '' and redis.call('EXISTS', jkey(w[3])) == 1
      for _, jid in ipairs(jobs) do
        if left then break end
        left = redis.call('EXISTS', jkey(jid)) == 1
      end
      if not left then
        for _, jid in ipairs(jobs) do redis.call('DEL', P .. ':wfstep:' .. jid) end
        local b = 0
        while redis.call('DEL', P .. ':wfb:' .. wf .. ':' .. b) == 1 do
          redis.call('DEL', P .. ':wfs:' .. wf .. ':' .. b)
          b = b + 1
        end
        redis.call('DEL', wk, P .. ':wfopen:' .. wf)
        redis.call('ZREM', P .. ':workflows', wf)
      end
    end
  end
end
"""

# ARGV: prefix, now, cap, workflow id, header (JSON object of strings), steps (JSON
# [[job id, idx, target, slot]]), barriers (JSON [[b, remaining, spec]]), starts (JSON
# [[values, args, due or ""]]), ids (JSON: every job id it will have).
# Returns "" when stored, else the id that is taken.
_ADD_WORKFLOW = r"""
local now, cap, wf = ARGV[2], ARGV[3], ARGV[4]
local wk = P .. ':wf:' .. wf
if redis.call('EXISTS', wk) == 1 then return 'workflow ' .. wf end
for _, id in ipairs(cjson.decode(ARGV[9])) do
  if redis.call('EXISTS', jkey(id)) == 1 or redis.call('EXISTS', P .. ':wfstep:' .. id) == 1 then
    return id
  end
end
for k, v in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', wk, k, v) end
local seq = redis.call('INCR', P .. ':wfseq')
redis.call('HSET', wk, 'seq', seq, 'state', 'running')
redis.call('ZADD', P .. ':workflows', seq, wf)
for _, s in ipairs(cjson.decode(ARGV[6])) do
  redis.call('HSET', P .. ':wfstep:' .. s[1], 'wf', wf, 'idx', s[2], 'target', s[3],
             'slot', s[4], 'ended', '0')
  redis.call('ZADD', P .. ':wfopen:' .. wf, s[2], s[2])
end
for _, b in ipairs(cjson.decode(ARGV[7])) do
  redis.call('HSET', P .. ':wfb:' .. wf .. ':' .. b[1], 'remaining', b[2], 'spec', b[3])
end
for _, j in ipairs(cjson.decode(ARGV[8])) do
  local due = nil
  if j[3] ~= '' then due = j[3] end
  wf_add(j[1], j[2], due, now, cap)
end
if publish_events then publish_events() end
return ''
"""

# ARGV: prefix, now, cap, workflow id.   Returns 1 if it was running (now CANCELLED), else 0.
_CANCEL_WORKFLOW = r"""
local now, cap, wf = ARGV[2], ARGV[3], ARGV[4]
local wk = P .. ':wf:' .. wf
if redis.call('HGET', wk, 'state') ~= 'running' then return 0 end
local open = redis.call('ZRANGE', P .. ':wfopen:' .. wf, 0, 0)
redis.call('HSET', wk, 'state', 'cancelled', 'current', open[1] or redis.call('HGET', wk, 'n_jobs'),
           'finished_at', now)
for _, id in ipairs(cjson.decode(redis.call('HGET', wk, 'jobs'))) do
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'queue', 'rmember', 'unique_key')
  local state, q = f[1], f[2]
  if state == 'running' then
    redis.call('HSET', jk, 'cancel_requested', '1')
  elseif state == 'queued' or state == 'scheduled' or state == 'waiting' then
    if f[3] then redis.call('ZREM', P .. ':ready:' .. q, f[3]) end
    redis.call('ZREM', P .. ':sched:' .. q, id)
    redis.call('ZREM', P .. ':waiting', id)
    redis.call('HDEL', jk, 'rmember', 'deadline')
    redis.call('HSET', jk, 'state', 'cancelled', 'status', '499', 'error', 'cancelled',
               'finished_at', now)
    release_unique(q, f[4], id)
    finished(jk, q, id, now)
    stat(q, state, -1)
    stat(q, 'cancelled', 1)
    if emit then emit('cancelled', id, q, now) end
    wf_final(id, 'cancelled', '499', nil, 'cancelled', now, cap)
  end
end
if publish_events then publish_events() end
return 1
"""


def workflow_scripts(prelude: str) -> dict[str, str]:
    """The workflow scripts, by name, on the store's prelude (which holds WF_LUA)."""
    return {"add_workflow": prelude + _ADD_WORKFLOW, "cancel_workflow": prelude + _CANCEL_WORKFLOW}


def _s(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _time(raw: Any) -> datetime | None:
    text = _s(raw)
    if not text:
        return None
    return datetime.fromtimestamp(int(text) / 1_000_000, UTC)


def _record(fields: dict[bytes, bytes], open_first: Any) -> WorkflowRecord:
    from ..workflows._model import WorkflowRecord, WorkflowState

    get = fields.get
    state = WorkflowState(_s(get(b"state")) or "running")
    if state.is_final:
        current = int(_s(get(b"current")) or 0)
    else:
        current = (
            int(_s(open_first) or 0) if open_first is not None else int(_s(get(b"n_jobs")) or 0)
        )
    result = _s(get(b"result"))
    created = _time(get(b"created_at"))
    assert created is not None
    return WorkflowRecord(
        id=_s(get(b"id")) or "",
        kind=_s(get(b"kind")) or "",
        state=state,
        jobs=tuple(json.loads(_s(get(b"jobs")) or "[]")),
        current=current,
        result=json.loads(result) if result is not None else None,
        error=_s(get(b"error")),
        created_at=created,
        finished_at=_time(get(b"finished_at")),
        name=_s(get(b"name")) or None,
        on_error=_s(get(b"on_error_id")) or None,
    )


class RedisWorkflows:
    """Workflow methods of :class:`~work.stores.RedisStore` (mixed in)."""

    if TYPE_CHECKING:
        prefix: str

        def _require(self) -> Any: ...
        def _key(self, *parts: str) -> str: ...
        async def _run(self, name: str, args: Any, client: Any = None) -> Any: ...

    async def add_workflow(self, plan: Plan) -> WorkflowRecord:
        """Store a compiled workflow and add its first steps, in one script (see
        :meth:`work.stores.WorkflowStore.add_workflow`)."""
        from ..workflows._plan import record_from_template
        from .redis import _WAKE_TOKENS, _add_args, _dumps, _us

        rec = plan.record
        now = rec.created_at
        now_us = _us(now)

        def values(t: dict[str, Any]) -> list[str]:
            return _add_args(record_from_template(t, t["args"], now, 0.0), now)[0]

        header: dict[str, str] = {
            "id": rec.id,
            "kind": rec.kind,
            "jobs": _dumps(list(rec.jobs)),
            "n_jobs": str(len(rec.jobs)),
            "created_at": str(now_us),
            "name": rec.name or "",
            "on_error_id": rec.on_error or "",
        }
        if plan.on_error is not None:
            header["on_error"] = _dumps(
                {"v": values(plan.on_error), "args": _dumps(plan.on_error["args"])}
            )
        barriers = []
        for b in plan.barriers:
            spec = b.spec()
            spec["releases"] = [
                {
                    "v": values(r["t"]),
                    "args": _dumps(r["t"]["args"]),
                    "immutable": r["immutable"],
                    "delay": int(r["delay"] * 1_000_000),
                }
                for r in spec["releases"]
            ]
            barriers.append([b.index, b.remaining, _dumps(spec)])
        starts = []
        for r in plan.start:
            v, args, _ = _add_args(r, now)
            due = str(_us(r.scheduled_for)) if r.scheduled_for is not None else ""
            starts.append([v, args, due])
        ids = [*rec.jobs, *([rec.on_error] if rec.on_error else [])]
        taken = await self._run(
            "add_workflow",
            [
                now_us,
                _WAKE_TOKENS,
                rec.id,
                _dumps(header),
                _dumps([[s.job_id, s.index, s.target, s.slot] for s in plan.steps]),
                _dumps(barriers),
                _dumps(starts),
                _dumps(ids),
            ],
        )
        taken = _s(taken)
        if taken:
            if taken.startswith("workflow "):
                raise ValueError(f"a workflow with id {rec.id!r} already exists")
            raise ValueError(f"a job with id {taken!r} already exists: a step needs a new id")
        return rec

    async def get_workflow(self, id: str) -> WorkflowRecord | None:
        """Return the workflow's record, or None."""
        client = self._require()
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(self._key("wf", id))
        pipe.zrange(self._key("wfopen", id), 0, 0)
        fields, first = await pipe.execute()
        if not fields:
            return None
        return _record(fields, first[0] if first else None)

    async def cancel_workflow(self, id: str) -> bool:
        """End a RUNNING workflow CANCELLED and cancel its unfinished jobs, in one script."""
        from .redis import _WAKE_TOKENS, _now_us

        return bool(await self._run("cancel_workflow", [_now_us(), _WAKE_TOKENS, id]))

    async def list_workflows(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> builtins.list[WorkflowRecord]:
        """Return a page of workflow records, oldest first."""
        client = self._require()
        start = "-inf"
        if after is not None:
            seq = await client.hget(self._key("wf", after), "seq")
            if seq is None:
                return []
            start = f"({int(seq)}"
        out: list[WorkflowRecord] = []
        while len(out) < limit:
            page = await client.zrangebyscore(
                self._key("workflows"), start, "+inf", start=0, num=200, withscores=True
            )
            if not page:
                break
            for wf_id, _ in page:
                rec = await self.get_workflow(_s(wf_id) or "")
                if rec is not None and (state is None or rec.state.value == state):
                    out.append(rec)
                    if len(out) >= limit:
                        break
            start = f"({int(page[-1][1])}"
        return out
