"""Listing jobs by their args: the one meaning every store gives ``list(args={...})``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ARGS_SCAN",
    "LIST_BY_ARGS_LUA",
    "args_match",
    "check_args_filter",
    "json_equal",
    "postgres_args_where",
    "sqlite_args_where",
    "sqlite_json_equal",
]

# The most jobs one Redis script call examines for an args filter, so that one call never
# holds Redis for long; the store calls it again, from where it stopped, until the page fills.
ARGS_SCAN = 1000


def json_equal(a: Any, b: Any) -> bool:
    """True when two decoded JSON values are the same JSON value.

    As Python's ``==``, except that ``true`` is not ``1`` (nor ``false`` ``0``); ``1`` and
    ``1.0`` are the same number; objects compare regardless of key order.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def args_match(args: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when ``args`` holds every key of ``wanted`` with an equal JSON value."""
    return all(key in args and json_equal(args[key], value) for key, value in wanted.items())


def check_args_filter(wanted: Any) -> dict[str, Any] | None:
    """Check an ``args`` filter: a mapping of str keys to JSON values (None: no filter; an
    empty mapping matches every job, as no filter).

    Returns:
        A plain dict copy (None for None or an empty mapping).

    Raises:
        TypeError: not a mapping, a key that is not a str, or a value that is not JSON.
    """
    if wanted is None:
        return None
    if not isinstance(wanted, Mapping):
        raise TypeError(f"args must be a mapping of str to JSON values, got {wanted!r}")
    for key in wanted:
        if not isinstance(key, str):
            raise TypeError(f"args keys must be str, got {key!r}")
    try:
        json.dumps(dict(wanted), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"args filter is not JSON: {exc}") from None
    return dict(wanted) or None


def sqlite_args_where(wanted: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL conditions on ``anywork_jobs.args`` (JSON text) for :func:`args_match`, and their
    parameters: ``json_type`` and ``json_extract`` per key (JSON types compared, so that
    ``true`` is not ``1``), objects and arrays through ``anywork_json_equal`` (registered on
    the connection by the store). A key holding a quote or a backslash (which a JSON path
    cannot quote) is looked up with ``json_each`` instead, about twice as slow."""
    parts: list[str] = ["json_valid(anywork_jobs.args)"]
    params: list[Any] = []
    for key, value in wanted.items():
        kind_params: list[Any]
        atom_params: list[Any]
        plain = '"' not in key and "\\" not in key
        if plain:
            path = f'$."{key}"'
            kind, kind_params = "json_type(anywork_jobs.args, ?)", [path]
            atom, atom_params = "json_extract(anywork_jobs.args, ?)", [path]
        else:
            kind, kind_params = "a.type", []
            atom, atom_params = "a.atom", []
        if value is None:
            test, test_params = f"{kind} = 'null'", kind_params
        elif isinstance(value, bool):
            test, test_params = f"{kind} = '{'true' if value else 'false'}'", kind_params
        elif isinstance(value, int | float):
            test = f"{kind} IN ('integer', 'real') AND {atom} = ?"
            test_params = [*kind_params, *atom_params, value]
        elif isinstance(value, str):
            test = f"{kind} = 'text' AND {atom} = ?"
            test_params = [*kind_params, *atom_params, value]
        else:
            shape = "object" if isinstance(value, Mapping) else "array"
            whole = atom if plain else "a.value"
            test = f"{kind} = '{shape}' AND anywork_json_equal({whole}, ?)"
            test_params = [*kind_params, *atom_params, json.dumps(value)]
        if plain:
            parts.append(f"({test})")
            params += test_params
        else:
            parts.append(
                "EXISTS (SELECT 1 FROM json_each(anywork_jobs.args) AS a"
                f" WHERE a.key = ? AND {test})"
            )
            params += [key, *test_params]
    return " AND ".join(parts), params


def sqlite_json_equal(a: str | None, b: str | None) -> int:
    """``anywork_json_equal(x, y)`` for SQLite: 1 when two JSON texts hold equal values."""
    if a is None or b is None:
        return 0
    try:
        return int(json_equal(json.loads(a), json.loads(b)))
    except ValueError:
        return 0


def postgres_args_where(s: str, wanted: Mapping[str, Any], first: int) -> tuple[str, list[Any]]:
    """SQL conditions on ``{s}.jobs`` for :func:`args_match` and their parameters (numbered
    from ``$first``): a containment test the GIN index on ``{s}.jobs_args(args)`` serves,
    then an exact equality per key (containment alone would let ``[1]`` find ``[1, 2]``)."""
    expr = f"{s}.jobs_args(args)"
    parts = [f"{expr} @> ${first}::jsonb"]
    params: list[Any] = [json.dumps(dict(wanted))]
    for key, value in wanted.items():
        n = first + len(params)
        parts.append(f"{expr} -> ${n} = ${n + 1}::jsonb")
        params += [key, json.dumps(value)]
    return " AND ".join(parts), params


# KEYS[1]: the "all" sorted set (every job by seq). ARGV: the key prefix, the score to start
# after (exclusive, "-inf" for the start), the page size, the most jobs to examine, then the
# wanted args as JSON and the other filters (state, queue, handler, schedule_id; "" for none).
# Returns {ids matched..., last seq examined or "" when the set ended}.
LIST_BY_ARGS_LUA = r"""
local P = ARGV[1]
local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local wanted = cjson.decode(ARGV[5])
local filters = {state = ARGV[6], queue = ARGV[7], schedule_id = ARGV[9]}
local handler = ARGV[8]
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= 'table' then return a == b end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k, _ in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end
local page = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0, budget)
local found, last = {}, ''
for i = 1, #page, 2 do
  local id = page[i]
  last = page[i + 1]
  local jk = P .. ':job:' .. id
  local ok = true
  for field, want in pairs(filters) do
    if want ~= '' and redis.call('HGET', jk, field) ~= want then ok = false break end
  end
  if ok and handler ~= '' then
    local good, spec = pcall(cjson.decode, redis.call('HGET', jk, 'spec') or '')
    ok = good and type(spec) == 'table' and spec['handler'] == handler
  end
  if ok then
    local raw = redis.call('HGET', jk, 'args')
    local good, args = pcall(cjson.decode, raw or '')
    if not good or type(args) ~= 'table' then ok = false end
    if ok then
      for k, v in pairs(wanted) do
        if not same(args[k], v) then ok = false break end
      end
    end
  end
  if ok then
    found[#found + 1] = id
    if #found >= limit then return {found, last} end
  end
end
if #page < 2 * budget then last = '' end
return {found, last}
"""
