"""The Lua scripts of the Redis store's schedules: saving, picking and firing, each atomic."""

from __future__ import annotations

from ._redis_lua import ADD_BODY, LUA_PRELUDE

__all__ = ["DELETE_SCHEDULE", "EXECUTION", "FIRE", "PICK", "SAVE_SCHEDULE"]

# The execution scripts embed ADD's body (after its helpers) as a function.

# Keys (P is the prefix): {P}:schedule:{id} a hash (spec, enabled '1'/'0', next_fire_at,
# anchor, last_fire_at, created_at, updated_at, version; times in integer microseconds);
# {P}:schedules every id (a sorted set, all scores 0: ordered by id, byte-wise); {P}:sdue the
# enabled schedules with a next fire, scored by it; {P}:sexec:{id} a schedule's executions
# scored by their job's seq; {P}:sactive:{id} those that may still be unfinished (pruned
# lazily by the exclusive check).

# ARGV: prefix, id, expected version ('' = must not exist), fields (a JSON object of strings).
# Returns 1 if written, 0 if the stored version was not the expected one.
SAVE_SCHEDULE = r"""
local P, id, expected = KEYS[1], ARGV[2], ARGV[3]
local sk = P .. ':schedule:' .. id
local current = redis.call('HGET', sk, 'version')
if expected == '' then
  if current then return 0 end
elseif current ~= expected then
  return 0
end
local f = cjson.decode(ARGV[4])
local flat = {}
for k, v in pairs(f) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('DEL', sk)
redis.call('HSET', sk, unpack(flat))
redis.call('ZADD', P .. ':schedules', 0, id)
if f['enabled'] == '1' and f['next_fire_at'] then
  redis.call('ZADD', P .. ':sdue', f['next_fire_at'], id)
else
  redis.call('ZREM', P .. ':sdue', id)
end
return 1
"""

# ARGV: prefix, id.   Returns 1 if it existed. Its executions stay.
DELETE_SCHEDULE = r"""
local P, id = KEYS[1], ARGV[2]
redis.call('ZREM', P .. ':schedules', id)
redis.call('ZREM', P .. ':sdue', id)
return redis.call('DEL', P .. ':schedule:' .. id)
"""

# Replies that carry many hashes are packed as one JSON text (cjson): one bulk string instead
# of thousands, which redis-py parses far faster.
_PACK = r"""
local function pack(flat)
  local fields = {}
  for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  return fields
end
"""

# ARGV: prefix, now, limit, until. Takes up to limit due schedules, hides them from other
# pickers until `until` (a picker that dies leaves them due again then), and returns their
# hashes as one JSON array of objects ('[]' when none is due).
PICK = (
    _PACK
    + r"""
local P = KEYS[1]
local due = redis.call('ZRANGEBYSCORE', P .. ':sdue', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
if #due == 0 then return '[]' end
local out = {}
for _, id in ipairs(due) do
  redis.call('ZADD', P .. ':sdue', ARGV[4], id)
  out[#out + 1] = pack(redis.call('HGETALL', P .. ':schedule:' .. id))
end
return cjson.encode(out)
"""
)

# A schedule's execution added by the store's own ADD script (its body as a function, so the
# job layout stays defined in one place), plus the schedule's execution indexes. `job` is one
# job's array of add values (see ADD). Returns the job hash, or false if the id existed.
_EXECUTION_PRELUDE = (
    LUA_PRELUDE
    + _PACK
    + r"""
local function add_jobs(ARGV)
"""
    + ADD_BODY
    + r"""
end
local UNFINISHED = {queued = true, scheduled = true, running = true, waiting = true}
local function prepare(sid, job, exclusive, now)
  -- false if the job id exists; else the job, made a 409 record when exclusive and busy.
  if redis.call('EXISTS', jkey(job[1])) == 1 then return false end
  if exclusive == '1' then
    local ak, busy = P .. ':sactive:' .. sid, false
    for _, eid in ipairs(redis.call('SMEMBERS', ak)) do
      if UNFINISHED[redis.call('HGET', jkey(eid), 'state') or ''] then
        busy = true
      else
        redis.call('SREM', ak, eid)
      end
    end
    if busy then
      local extra = {}
      if job[12] ~= '' then extra = cjson.decode(string.sub(job[12], 2)) end
      extra['status'] = '409'
      extra['error'] = 'previous execution still running'
      extra['finished_at'] = now
      job[4] = 'failed'
      job[12] = '=' .. cjson.encode(extra)
    end
  end
  return job
end
local function index(sid, job)
  -- After the add: the schedule's execution indexes.
  local jid = job[1]
  redis.call('ZADD', P .. ':sexec:' .. sid, redis.call('HGET', jkey(jid), 'seq'), jid)
  if job[4] ~= 'failed' then redis.call('SADD', P .. ':sactive:' .. sid, jid) end
end
local function add_execution(sid, job, exclusive, now, cap)
  job = prepare(sid, job, exclusive, now)
  if not job then return false end
  add_jobs({P, cap, cjson.encode({job})})
  index(sid, job)
  return redis.call('HGETALL', jkey(job[1]))
end
"""
)

# ARGV: prefix, cap, now, and a JSON array with, per firing: schedule id, version, next fire
# (opt), last fire (opt), exclusive ('1'/'0'), and the job's add values or ''. Applies each
# firing whose schedule still has that version. Returns one JSON array with, per firing
# applied, its index in the batch and the state its job was added in ('failed' for a 409
# record), or false when it added none; '[]' for none applied.
FIRE = (
    _EXECUTION_PRELUDE
    + r"""
local cap, now = ARGV[2], ARGV[3]
local out, jobs, owners = {}, {}, {}
for n, f in ipairs(cjson.decode(ARGV[4])) do
  local sid = f[1]
  local sk = P .. ':schedule:' .. sid
  local current = redis.call('HMGET', sk, 'version', 'enabled')
  if current[1] == f[2] then
    redis.call('HSET', sk, 'version', tostring(tonumber(f[2]) + 1))
    local next_fire, last_fire = opt(f[3]), opt(f[4])
    if next_fire then
      redis.call('HSET', sk, 'next_fire_at', next_fire)
      if current[2] == '1' then redis.call('ZADD', P .. ':sdue', next_fire, sid) end
    else
      redis.call('HDEL', sk, 'next_fire_at')
      redis.call('ZREM', P .. ':sdue', sid)
    end
    if last_fire then redis.call('HSET', sk, 'last_fire_at', last_fire) end
    local state = false
    if f[6] ~= '' then
      local job = prepare(sid, f[6], f[5], now)
      if job then
        jobs[#jobs + 1] = job
        owners[#owners + 1] = sid
        state = job[4]
      end
    end
    out[#out + 1] = {n - 1, state}
  end
end
-- One add for the whole batch (job ids are distinct and were checked above).
if #jobs > 0 then
  add_jobs({P, cap, cjson.encode(jobs)})
  for i, job in ipairs(jobs) do index(owners[i], job) end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
)

# ARGV: prefix, cap, now, schedule id, exclusive ('1'/'0'), the job's add values (JSON).
# Returns the stored job hash (the existing one if the id is taken).
EXECUTION = (
    _EXECUTION_PRELUDE
    + r"""
local job = cjson.decode(ARGV[6])
local rec = add_execution(ARGV[4], job, ARGV[5], ARGV[3], ARGV[2])
if rec then return rec end
return redis.call('HGETALL', jkey(job[1]))
"""
)
