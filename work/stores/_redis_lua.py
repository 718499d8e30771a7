"""The Lua scripts of the Redis store: every change to a job is one of these, run atomically."""

from __future__ import annotations

from ._redis_workflows import WF_LUA

__all__ = [
    "ADD",
    "ADD_BODY",
    "CANCEL",
    "CLAIM",
    "COMPLETE",
    "DELETE",
    "HEARTBEAT",
    "PROGRESS",
    "REAP",
    "RENEW",
    "RETRY",
    "SETTLE",
]

# Helpers shared by the scripts. KEYS[1] is always the store's hash tag ({prefix}), which
# every key starts with (ARGV[1] repeats it). Times are integer
# microseconds since the epoch, passed and stored as decimal strings, never formatted by Lua
# (whose tostring keeps only 14 significant digits). The ready set of a queue is scored by
# -priority; members sort, among equal scores, by "due:seq:id" with zero-padded numbers.
_HELPERS = r"""
local P = KEYS[1]
local function jkey(id) return P .. ':job:' .. id end
local function pad(s, n)
  s = tostring(s)
  return string.rep('0', n - #s) .. s
end
local function member(due, seq, id) return pad(due, 17) .. ':' .. pad(seq, 12) .. ':' .. id end
local function stat(q, state, delta)
  if state then redis.call('HINCRBY', P .. ':stats', q .. '\0' .. state, delta) end
end
local function wake(q, cap, n)
  local k, tokens = P .. ':wake:' .. q, {}
  for i = 1, math.min(n or 1, tonumber(cap)) do tokens[i] = '1' end
  if redis.call('RPUSH', k, unpack(tokens)) > tonumber(cap) then
    redis.call('LTRIM', k, -tonumber(cap), -1)
  end
end
local function make_ready(jk, q, id, due, seq, priority)
  local m = member(due, seq, id)
  redis.call('ZADD', P .. ':ready:' .. q, -tonumber(priority), m)
  redis.call('HSET', jk, 'rmember', m)
end
local function release_unique(q, ukey, id)
  if ukey and redis.call('HGET', P .. ':unique:' .. q, ukey) == id then
    redis.call('HDEL', P .. ':unique:' .. q, ukey)
  end
end
local function opt(s)
  if s == '' then return nil end
  return string.sub(s, 2)
end
-- A job just became final at `now`: index it for retention. Jobs without a result_ttl of
-- their own go in done:<queue> (by finish time), the others in kept:<queue> (by finish time,
-- for purges by hand) and in expires (by the time they may go).
local function finished(jk, q, id, now)
  local ttl = redis.call('HGET', jk, 'ttl_us')
  if ttl then
    redis.call('ZADD', P .. ':kept:' .. q, now, id)
    -- %.0f: Lua's tostring keeps 14 digits only.
    redis.call('ZADD', P .. ':expires', string.format('%.0f', tonumber(now) + tonumber(ttl)), id)
  else
    redis.call('ZADD', P .. ':done:' .. q, now, id)
  end
end
local function unfinished(q, id)
  redis.call('ZREM', P .. ':done:' .. q, id)
  redis.call('ZREM', P .. ':kept:' .. q, id)
  redis.call('ZREM', P .. ':expires', id)
end
-- Job events: collected while a script runs, then sent in one PUBLISH (a JSON array of
-- [kind, id, queue, handler, status, attempts, at_us, progress]) to {prefix}:events.
local EV = {}
local function emit(kind, id, q, at, progress)
  local f = redis.call('HMGET', jkey(id), 'spec', 'status', 'attempts')
  local ok, spec = pcall(cjson.decode, f[1] or '')
  local handler = ''
  if ok and type(spec) == 'table' and type(spec.handler) == 'string' then
    handler = spec.handler
  end
  EV[#EV + 1] = {kind, id, q, handler, tonumber(f[2]) or -1, tonumber(f[3]) or 0,
                 tostring(at), progress or false}
end
local function publish_events()
  if #EV > 0 then redis.call('PUBLISH', P .. ':events', cjson.encode(EV)) end
end
local FINAL = {succeeded = true, failed = true, cancelled = true}
"""
LUA_PRELUDE = _HELPERS + WF_LUA  # the workflow hook (wf_final), called where a job becomes final

# ARGV: prefix, cap, and a JSON array with, per job, an array of strings: id, queue,
# unique_key (opt), state, due, priority, enqueued_at, scheduled_for (opt), max_attempts, args,
# spec, extra (opt: a JSON object of further fields, all values strings), handler (the
# spec's, for the job's event: no read of the hash just written, no decode of its spec). One
# argument for the batch keeps the client's command packing cheap. Returns, for each job
# that was not added, its index in the batch and the stored job hash it ran into (that id, or
# the active job holding that unique key). Each job is checked and added atomically (the
# whole batch is).
# Without the workflow hooks (an add makes no job final through them): their definitions
# are most of the prelude, run on every call, and the add is the most frequent script.
ADD_BODY = r"""
local cap = ARGV[2]
local out, woken = {}, {}
for n, job in ipairs(cjson.decode(ARGV[3])) do
  local id, q, ukey, state = job[1], job[2], opt(job[3]), job[4]
  local jk = jkey(id)
  local existing = false
  if redis.call('EXISTS', jk) == 1 then
    existing = id
  elseif ukey then
    existing = redis.call('HGET', P .. ':unique:' .. q, ukey)
  end
  if existing then
    table.insert(out, n - 1)
    table.insert(out, redis.call('HGETALL', jkey(existing)))
  else
    local seq = redis.call('INCR', P .. ':seq')
    local f = {'id', id, 'queue', q, 'state', state, 'priority', job[6],
               'enqueued_at', job[7], 'max_attempts', job[9], 'args', job[10],
               'spec', job[11], 'seq', seq, 'status', '-1', 'attempts', '0',
               'deferrals', '0'}
    local function put(k, v) f[#f + 1] = k; f[#f + 1] = v end
    if ukey then
      put('unique_key', ukey)
      redis.call('HSET', P .. ':unique:' .. q, ukey, id)
    end
    local due = opt(job[8])
    if due then put('scheduled_for', due) end
    local extra = opt(job[12])
    local status, attempts = -1, 0
    if extra then
      extra = cjson.decode(extra)
      for k, v in pairs(extra) do put(k, v) end
      status, attempts = tonumber(extra.status) or -1, tonumber(extra.attempts) or 0
    end
    if state == 'queued' then
      local m = member(job[5], seq, id)
      redis.call('ZADD', P .. ':ready:' .. q, -tonumber(job[6]), m)
      put('rmember', m)
    elseif state == 'scheduled' then
      redis.call('ZADD', P .. ':sched:' .. q, job[5], id)
    end
    redis.call('HSET', jk, unpack(f))
    redis.call('ZADD', P .. ':all', seq, id)
    if state == 'queued' or state == 'scheduled' then woken[q] = (woken[q] or 0) + 1 end
    stat(q, state, 1)
    local kind = 'enqueued'
    if FINAL[state] then kind = state elseif state == 'running' then kind = 'started' end
    EV[#EV + 1] = {kind, id, q, job[13], status, attempts, job[7], false}  -- as emit()
  end
end
for q, n in pairs(woken) do wake(q, cap, n) end
publish_events()
return out
"""
ADD = _HELPERS + ADD_BODY


# ARGV: prefix, now, limit, lease_until, owner, queue, ...
CLAIM = (
    LUA_PRELUDE
    + r"""
local now, limit = ARGV[2], tonumber(ARGV[3])
local cands = {}
for i = 6, #ARGV do
  local q = ARGV[i]
  local sk, rk = P .. ':sched:' .. q, P .. ':ready:' .. q
  -- Scheduled jobs that fell due join the ready set (they stay SCHEDULED until claimed).
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', sk, '-inf', now, 'LIMIT', 0, 1000)) do
    local jk = jkey(id)
    local f = redis.call('HMGET', jk, 'scheduled_for', 'seq', 'priority')
    redis.call('ZREM', sk, id)
    if f[2] then make_ready(jk, q, id, f[1] or now, f[2], f[3] or '0') end
  end
  local top = redis.call('ZRANGE', rk, 0, limit - 1, 'WITHSCORES')
  for j = 1, #top, 2 do
    table.insert(cands, {tonumber(top[j + 1]), top[j], rk, q})
  end
end
table.sort(cands, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out, taken = {}, 0
for _, c in ipairs(cands) do
  if taken >= limit then break end
  redis.call('ZREM', c[3], c[2])
  local id = string.sub(c[2], 32)
  local jk = jkey(id)
  local old = redis.call('HGET', jk, 'state')
  if old == 'queued' or old == 'scheduled' then
    redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'state', 'running', 'started_at', now, 'owner', ARGV[5],
               'lease_until', ARGV[4])
    redis.call('HDEL', jk, 'rmember', 'finished_at', 'cancel_requested')
    redis.call('ZADD', P .. ':running', ARGV[4], id)
    stat(c[4], old, -1)
    stat(c[4], 'running', 1)
    emit('started', id, c[4], now)
    local h, fields, args = redis.call('HGETALL', jk), {}, ''
    for j = 1, #h, 2 do
      if h[j] == 'args' then args = h[j + 1] else fields[h[j]] = h[j + 1] end
    end
    table.insert(out, cjson.encode(fields))
    table.insert(out, args)
    taken = taken + 1
  end
end
-- Every wake token was a hint about a job that is no longer ready: drop stale ones.
for i = 6, #ARGV do
  if redis.call('ZCARD', P .. ':ready:' .. ARGV[i]) == 0 then
    redis.call('DEL', P .. ':wake:' .. ARGV[i])
  end
end
publish_events()
return out
"""
)

# ARGV: prefix, owner, lease_until, id, ...   Returns the ids the owner must stop.
RENEW = (
    LUA_PRELUDE
    + r"""
local stop = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'owner', 'cancel_requested')
  if f[1] == 'running' and f[2] == ARGV[2] then
    redis.call('HSET', jk, 'lease_until', ARGV[3])
    redis.call('ZADD', P .. ':running', ARGV[3], id)
    if f[3] == '1' then table.insert(stop, id) end
  else
    table.insert(stop, id)
  end
end
return stop
"""
)

# ARGV: prefix, owner, now, cap, and a JSON array with, per outcome, an array of strings: id,
# state, status, result (opt), error (opt), scheduled_for (opt), give_back ('1'/'0'),
# deferral ('1'/'0'), unknown_since (opt), deadline (opt), ttl (opt; the last two for
# WAITING). One argument for the batch, as for add: redis-py packs a command argument by
# argument, which cost more than the script itself with 8 per outcome.
# Returns the ids whose outcome was applied.
COMPLETE = (
    LUA_PRELUDE
    + r"""
local owner, now, cap = ARGV[2], ARGV[3], ARGV[4]
local applied = {}
for _, o in ipairs(cjson.decode(ARGV[5])) do
  local id, state = o[1], o[2]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'owner', 'queue', 'unique_key', 'attempts',
                       'enqueued_at', 'seq', 'priority')
  if f[1] == 'running' and f[2] == owner then
    local q = f[3]
    redis.call('ZREM', P .. ':running', id)
    redis.call('HDEL', jk, 'owner', 'lease_until', 'cancel_requested', 'scheduled_for',
               'finished_at')
    redis.call('HSET', jk, 'state', state, 'status', o[3])
    local result, err, due = opt(o[4]), opt(o[5]), opt(o[6])
    if state == 'succeeded' or state == 'waiting' then
      if result then redis.call('HSET', jk, 'result', result)
      else redis.call('HDEL', jk, 'result') end
    end
    if err then redis.call('HSET', jk, 'error', err) else redis.call('HDEL', jk, 'error') end
    if o[7] == '1' and tonumber(f[5]) > 0 then
      redis.call('HINCRBY', jk, 'attempts', -1)
    end
    if o[8] == '1' then redis.call('HINCRBY', jk, 'deferrals', 1) end
    local unknown = opt(o[9] or '')
    if unknown then redis.call('HSET', jk, 'unknown_since', unknown)
    else redis.call('HDEL', jk, 'unknown_since') end
    if state == 'scheduled' then
      due = due or now
      redis.call('HSET', jk, 'scheduled_for', due)
      redis.call('ZADD', P .. ':sched:' .. q, due, id)
      wake(q, cap)
    elseif state == 'queued' then
      make_ready(jk, q, id, f[6], f[7], f[8])
      wake(q, cap)
    elseif state == 'waiting' then
      -- Held by no one until settled or its deadline passes; it keeps its unique key.
      local deadline = opt(o[10] or '') or now
      redis.call('HSET', jk, 'deadline', deadline)
      local ttl = opt(o[11] or '')
      if ttl then redis.call('HSET', jk, 'deferred_ttl', ttl) end
      redis.call('ZADD', P .. ':waiting', deadline, id)
    else
      redis.call('HSET', jk, 'finished_at', now)
      release_unique(q, f[4], id)
      finished(jk, q, id, now)
      wf_final(id, state, o[3], result, err, now, cap)
    end
    stat(q, 'running', -1)
    stat(q, state, 1)
    local kind = state
    if state == 'scheduled' then kind = 'retrying' elseif state == 'queued' then
      kind = 'enqueued'  -- a hand-back
    end
    emit(kind, id, q, now)
    applied[#applied + 1] = id
  end
end
publish_events()
return applied
"""
)

# ARGV: prefix, now, cap, batch, lost_limit.   Returns how many jobs changed. Losing a worker
# is not the job's failure: the job goes back whatever its attempts, until its worker was lost
# lost_limit times.
REAP = (
    LUA_PRELUDE
    + r"""
local now, cap, lost_limit = ARGV[2], ARGV[3], tonumber(ARGV[5])
local n = 0
local lost = redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', now, 'LIMIT', 0, ARGV[4])
for _, id in ipairs(lost) do
  redis.call('ZREM', P .. ':running', id)
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'queue', 'cancel_requested', 'attempts',
                       'max_attempts', 'unique_key', 'enqueued_at', 'seq', 'priority')
  if f[1] == 'running' then
    local q, state = f[2], 'failed'
    redis.call('HDEL', jk, 'owner', 'lease_until', 'cancel_requested')
    if f[3] == '1' then
      state = 'cancelled'
      redis.call('HSET', jk, 'status', '499', 'error', 'cancelled', 'finished_at', now)
      release_unique(q, f[6], id)
      finished(jk, q, id, now)
      wf_final(id, state, '499', nil, 'cancelled', now, cap)
    elseif redis.call('HINCRBY', jk, 'lost', 1) < lost_limit then
      state = 'queued'
      redis.call('HSET', jk, 'status', '500', 'error', 'worker lost')
      redis.call('HDEL', jk, 'scheduled_for')
      make_ready(jk, q, id, f[7], f[8], f[9])
      wake(q, cap)
    else
      redis.call('HSET', jk, 'status', '500', 'error', 'worker lost', 'finished_at', now)
      release_unique(q, f[6], id)
      finished(jk, q, id, now)
      wf_final(id, state, '500', nil, 'worker lost', now, cap)
    end
    redis.call('HSET', jk, 'state', state)
    stat(q, 'running', -1)
    stat(q, state, 1)
    if state == 'queued' then emit('retrying', id, q, now) else emit(state, id, q, now) end
    n = n + 1
  end
end
publish_events()
return n
"""
)

# ARGV: prefix, id, now.   Returns 1 if cancelled or a cancel requested, else 0.
CANCEL = (
    LUA_PRELUDE
    + r"""
local id, now = ARGV[2], ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'rmember', 'unique_key')
local state, q = f[1], f[2]
if state == 'running' then
  redis.call('HSET', jk, 'cancel_requested', '1')
  return 1
end
if state ~= 'queued' and state ~= 'scheduled' and state ~= 'waiting' then return 0 end
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
emit('cancelled', id, q, now)
wf_final(id, 'cancelled', '499', nil, 'cancelled', now, '64')
publish_events()
return 1
"""
)

# ARGV: prefix, id, now, only_expired ('1'/'0'), cap, state, status, result (opt), error (opt),
# scheduled_for (opt). Applies the outcome to a WAITING job. Returns {1, job hash} when
# applied, {0} for an unknown id, {2, state} for a job not WAITING, {3} when only_expired and
# the deadline has not passed.
SETTLE = (
    LUA_PRELUDE
    + r"""
local id, now, cap, state = ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'unique_key', 'deadline', 'enqueued_at',
                     'seq', 'priority')
if not f[1] then return {0} end
if f[1] ~= 'waiting' then return {2, f[1]} end
if ARGV[4] == '1' and (not f[4] or tonumber(f[4]) > tonumber(now)) then return {3} end
local q = f[2]
redis.call('ZREM', P .. ':waiting', id)
redis.call('HDEL', jk, 'deadline', 'scheduled_for', 'finished_at')
redis.call('HSET', jk, 'state', state, 'status', ARGV[7])
local result, err, due = opt(ARGV[8]), opt(ARGV[9]), opt(ARGV[10])
if state == 'succeeded' then
  if result then redis.call('HSET', jk, 'result', result)
  else redis.call('HDEL', jk, 'result') end
end
if err then redis.call('HSET', jk, 'error', err) else redis.call('HDEL', jk, 'error') end
if state == 'scheduled' then
  due = due or now
  redis.call('HSET', jk, 'scheduled_for', due)
  redis.call('ZADD', P .. ':sched:' .. q, due, id)
  wake(q, cap)
elseif state == 'queued' then
  make_ready(jk, q, id, f[5], f[6], f[7])
  wake(q, cap)
else
  redis.call('HSET', jk, 'finished_at', now)
  release_unique(q, f[3], id)
  finished(jk, q, id, now)
  wf_final(id, state, ARGV[7], result, err, now, cap)
end
stat(q, 'waiting', -1)
stat(q, state, 1)
-- events.kind_for_change('waiting', state): a final kind, else ENQUEUED (a retry's wait).
local kind = 'enqueued'
if FINAL[state] then kind = state end
emit(kind, id, q, now)
publish_events()
return {1, redis.call('HGETALL', jk)}
"""
)

# ARGV: prefix, id, now, ttl_us (opt: default the job's deferred_ttl). Pushes a WAITING job's
# deadline to now + ttl. Returns {1, job hash}, {0} for an unknown id, {2, state} for a job
# not WAITING.
HEARTBEAT = (
    LUA_PRELUDE
    + r"""
local id, now = ARGV[2], ARGV[3]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'deferred_ttl')
if not f[1] then return {0} end
if f[1] ~= 'waiting' then return {2, f[1]} end
local ttl = opt(ARGV[4])
if not ttl then ttl = math.floor(tonumber(f[2] or '0') * 1000000 + 0.5) end
-- %d prints the integer exactly (tostring would keep 14 significant digits).
local deadline = string.format('%d', tonumber(now) + tonumber(ttl))
redis.call('HSET', jk, 'deadline', deadline)
redis.call('ZADD', P .. ':waiting', deadline, id)
return {1, redis.call('HGETALL', jk)}
"""
)

# ARGV: prefix, owner, now, and a JSON array of [id, progress JSON]. Sets the progress of jobs
# RUNNING under owner's lease and emits a PROGRESS event for each.
PROGRESS = (
    LUA_PRELUDE
    + r"""
local owner, now = ARGV[2], ARGV[3]
for _, p in ipairs(cjson.decode(ARGV[4])) do
  local jk = jkey(p[1])
  local f = redis.call('HMGET', jk, 'state', 'owner', 'queue')
  if f[1] == 'running' and f[2] == owner then
    redis.call('HSET', jk, 'progress', p[2])
    emit('progress', p[1], f[3], now, p[2])
  end
end
publish_events()
return 0
"""
)

# ARGV: prefix, states ("succeeded,failed,cancelled" or a subset), id, ...   Deletes each job
# that is final and in one of states; returns how many. Unfinished jobs are never deleted.
DELETE = (
    LUA_PRELUDE
    + r"""
local wanted = {}
for st in string.gmatch(ARGV[2], '[^,]+') do wanted[st] = true end
local n = 0
local workflows = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'queue')
  local state, q = f[1], f[2]
  if state and q and wanted[state] then
    wf_note(workflows, id, jk)
    redis.call('DEL', jk)
    redis.call('ZREM', P .. ':all', id)
    unfinished(q, id)
    stat(q, state, -1)
    n = n + 1
  elseif not state then
    -- Already gone (another purger): drop the stale index entries.
    redis.call('ZREM', P .. ':expires', id)
  end
end
wf_purge(workflows)  -- a finished workflow goes with its last job
return n
"""
)

# ARGV: prefix, id, now, cap.   Returns {'ok', HGETALL...}, {'missing'}, {'state', state} or
# {'unique', other id}.
RETRY = (
    LUA_PRELUDE
    + r"""
local id, now, cap = ARGV[2], ARGV[3], ARGV[4]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'state', 'queue', 'unique_key', 'seq', 'priority')
local state, q, ukey = f[1], f[2], f[3]
if not state then return {'missing'} end
if state ~= 'failed' and state ~= 'cancelled' then return {'state', state} end
if ukey then
  local other = redis.call('HGET', P .. ':unique:' .. q, ukey)
  if other and other ~= id then return {'unique', other} end
  redis.call('HSET', P .. ':unique:' .. q, ukey, id)
end
unfinished(q, id)
redis.call('HDEL', jk, 'result', 'error', 'scheduled_for', 'started_at', 'finished_at',
           'unknown_since', 'owner', 'lease_until', 'cancel_requested')
redis.call('HSET', jk, 'state', 'queued', 'status', '-1', 'attempts', '0', 'deferrals', '0',
           'lost', '0', 'enqueued_at', now)
make_ready(jk, q, id, now, f[4], f[5])
stat(q, state, -1)
stat(q, 'queued', 1)
wake(q, cap)
emit('enqueued', id, q, now)
if state == 'failed' then wf_retried(id, now, cap) end
publish_events()
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', jk)) do table.insert(out, v) end
return out
"""
)
