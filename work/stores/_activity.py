"""Finished jobs per minute over the last hour: the shape every store returns."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

__all__ = ["FINISHED_PER_MINUTE_LUA", "MINUTES", "first_minute", "minute_series"]

MINUTES = 60
"""How many minutes :meth:`work.stores.Store.finished_per_minute` covers, the current one last."""


def first_minute(now: datetime) -> int:
    """The first minute (Unix seconds // 60) of the hour that ends with ``now``'s minute."""
    return int(now.timestamp() // 60) - MINUTES + 1


def minute_series(
    counts: Iterable[tuple[str, int, str, int]], now: datetime
) -> dict[str, list[tuple[int, int]]]:
    """Turn ``(queue, minute, state, count)`` rows (minute: Unix seconds // 60; state
    "succeeded" or "failed") into ``{queue: [(succeeded, failed)] * 60}``, oldest minute
    first; rows outside the hour are left out, as are queues with nothing in it."""
    first = first_minute(now)
    out: dict[str, list[list[int]]] = {}
    for queue, minute, state, n in counts:
        index = int(minute) - first
        if not 0 <= index < MINUTES or state not in ("succeeded", "failed"):
            continue
        series = out.setdefault(queue, [[0, 0] for _ in range(MINUTES)])
        series[index][0 if state == "succeeded" else 1] += int(n)
    return {q: [(ok, bad) for ok, bad in series] for q, series in sorted(out.items())}


# KEYS: done:<queue> and kept:<queue> (a queue's finished jobs by finish time, microseconds).
# ARGV: the key prefix, the first microsecond of the hour. Returns a flat list of
# {minute, state, count}: succeeded and failed jobs finished since then, counted per minute.
FINISHED_PER_MINUTE_LUA = r"""
local P = ARGV[1]
local counts, out = {}, {}
for _, key in ipairs(KEYS) do
  local page = redis.call('ZRANGEBYSCORE', key, ARGV[2], '+inf', 'WITHSCORES')
  for i = 1, #page, 2 do
    local state = redis.call('HGET', P .. ':job:' .. page[i], 'state')
    if state == 'succeeded' or state == 'failed' then
      local slot = tostring(math.floor(tonumber(page[i + 1]) / 60000000)) .. ' ' .. state
      counts[slot] = (counts[slot] or 0) + 1
    end
  end
end
for slot, n in pairs(counts) do
  out[#out + 1] = slot
  out[#out + 1] = n
end
return out
"""
