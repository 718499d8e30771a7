"""``RedisStore``: jobs in Redis hashes and sorted sets, changed only by atomic Lua scripts."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoScriptError,
    RedisClusterException,
    RedisClusterUnreachableError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._core.exceptions import JobStateError
from .._core.status import Status
from .._durable.events import (
    DEFAULT_EVENT_BUFFER,
    EventHub,
    EventStream,
    JobEventKind,
    check_event_filters,
    event_from_values,
)
from ._activity import FINISHED_PER_MINUTE_LUA, first_minute, minute_series
from ._args import ARGS_SCAN, LIST_BY_ARGS_LUA, check_args_filter
from ._base import (
    DEFAULT_LOST_LIMIT,
    FINAL_STATES,
    Claimed,
    Fired,
    JobRecord,
    JobState,
    Outcome,
    Plan,
    ScheduleRow,
    WorkerInfo,
    conflict_record,
)
from ._open import mask_url
from ._redis_direct import BUSY, REDIRECTED, DirectScript, DirectScriptSync
from ._redis_lua import (
    ADD,
    CANCEL,
    CLAIM,
    COMPLETE,
    DELETE,
    HEARTBEAT,
    LUA_PRELUDE,
    PROGRESS,
    REAP,
    RENEW,
    RETRY,
    SETTLE,
)
from ._redis_schedules_lua import DELETE_SCHEDULE, EXECUTION, FIRE, PICK, SAVE_SCHEDULE
from ._redis_workflows import RedisWorkflows, workflow_scripts
from ._server import StoreAuthenticationError, StoreUnavailableError, require_asyncio

__all__ = ["RedisStore", "RedisUnavailableError"]

SCHEMA_VERSION = 3
"""The key layout version this module writes and expects (2: finished jobs indexed for
retention in ``done:<queue>``, ``kept:<queue>`` and ``expires``; 3: every key starts with the
hash tag ``{prefix}``, so a store's keys share one Redis Cluster slot)."""

# The key kinds of a store (``{prefix}:<kind>:…``): a layout 2 key is moved to layout 3 only
# when its kind is one of these, so a store never takes the keys of a longer prefix
# (``a`` and ``a:b``).
_KINDS = frozenset(
    {
        *("all", "done", "events", "expires", "job", "kept", "ready", "running", "sactive"),
        *("sched", "schedule", "schedules", "schema_version", "sdue", "seq", "settings"),
        *("sexec", "stats", "unique", "waiting", "wake", "wf", "wfb", "wfopen", "wfs"),
        *("wfseq", "wfstep", "workers", "workflows"),
    }
)
# URL schemes that open redis-py's cluster client.
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CONNECT_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterUnreachableError)
# A refused password or user (redis-py makes the first a ConnectionError; the second is the
# reply of a server without a password to AUTH with one).
_AUTH_ERRORS = (AuthenticationError, AuthenticationWrongNumberOfArgsError)
# Wake tokens kept per queue: each wakes one blocked waiter (see wait_for_work).
_WAKE_TOKENS = 64
# A pub/sub connection for events stays this long after its last subscriber left.
_EVENTS_LINGER = 1.0
# Jobs per add script.
_ADD_CHUNK = 1000
_WAKE_BYTES = str(_WAKE_TOKENS).encode()
# Keys fetched per round trip while listing.
_LIST_CHUNK = 200
# Expired leases handled per reap call (a reap is one script: keep it short).
_REAP_BATCH = 1000
# Seconds a picked due schedule stays hidden from other schedulers: a scheduler that dies
# between picking and firing delays that fire by this much (it is not lost).
_PICK_LEASE = 10.0
# Jobs deleted per purge script.
_PURGE_BATCH = 500


class RedisUnavailableError(StoreUnavailableError):
    """Raised when the Redis server cannot be reached (refused, unresolvable, timed out).

    Attributes:
        host: the host the store tried.
        port: the port the store tried.
    """

    server = "Redis"


def _require_asyncio() -> None:
    require_asyncio("the Redis store", "redis-py's asyncio client is asyncio-only")


def _us(when: datetime) -> int:
    """Microseconds since the epoch, exactly (never below 0)."""
    return max((when - _EPOCH) // _MICROSECOND, 0)


def _now_us() -> int:
    return _us(datetime.now(UTC))


def _opt(value: str | None) -> str:
    """Encode an optional string for a script: ``""`` is None, ``"=…"`` a value."""
    return "" if value is None else "=" + value


# One encoder, made once: json.dumps with separators builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def _dumps(value: Any) -> str:
    return _ENCODE(value)


def _json_object(raw: bytes | str | None, what: str) -> tuple[dict[str, Any], str | None]:
    """Decode a JSON object field; on failure return ``{}`` and why."""
    if raw is None:
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        return {}, f"job {what} are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return {}, f"job {what} must be a JSON object, got {type(value).__name__}"
    return value, None


def _int(raw: str | None, default: int = 0) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _time(raw: str | None) -> datetime | None:
    """A stored time; one that is unreadable (written behind the store's back) reads as None,
    so one bad job never breaks get() or list()."""
    try:
        return _time_strict(raw)
    except (ValueError, OverflowError):
        return None


def _time_strict(raw: str | None) -> datetime | None:
    """A stored time; raises ValueError naming it when unreadable (a claim fails that job)."""
    if raw is None:
        return None
    try:
        return _EPOCH + timedelta(microseconds=int(raw))
    except (ValueError, OverflowError):
        raise ValueError(f"a stored time is not microseconds since the epoch: {raw!r}") from None


def _decode(fields: Mapping[str, str], args_raw: bytes | None) -> tuple[JobRecord, str | None]:
    """Turn a job's fields (all but args, as text) and its raw args into a record, and say
    why its payload could not be decoded (or None)."""
    get = fields.get
    args, args_error = _json_object(args_raw, "args")
    spec, spec_error = _json_object(get("spec"), "spec")
    headers = spec.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        headers, spec_error = {}, spec_error or "job headers must map names to strings"
    retry = spec.get("retry")
    timeout = spec.get("timeout")
    result_ttl = spec.get("result_ttl")
    try:
        result = json.loads(fields["result"]) if "result" in fields else None
    except ValueError:
        result = None
    try:
        status = Status.coerce(_int(get("status"), -1))
    except ValueError:
        status = Status.UNKNOWN
    record = JobRecord(
        id=get("id", ""),
        handler=str(spec.get("handler", "")),
        args=args,
        queue=get("queue", "default"),
        headers=headers,
        priority=_int(get("priority")),
        state=JobState(get("state", "queued")),
        status=status,
        attempts=_int(get("attempts")),
        max_attempts=_int(get("max_attempts"), 1),
        result=result,
        error=get("error"),
        unique_key=get("unique_key"),
        enqueued_at=_time(get("enqueued_at")),
        scheduled_for=_time(get("scheduled_for")),
        started_at=_time(get("started_at")),
        finished_at=_time(get("finished_at")),
        timeout=float(timeout) if isinstance(timeout, int | float) else None,
        retry=retry if isinstance(retry, dict) else None,
        deferrals=_int(get("deferrals")),
        schedule_id=get("schedule_id"),
        deadline=_time(get("deadline")),
        deferred_ttl=_float(get("deferred_ttl")),
        progress=_json_object(get("progress"), "progress")[0] if "progress" in fields else None,
        result_ttl=float(result_ttl) if isinstance(result_ttl, int | float) else None,
    )
    return record, args_error or spec_error


def _float(raw: str | None) -> float | None:
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def _from_hash(raw: Any) -> tuple[JobRecord, str | None]:
    """Decode a job hash as HGETALL gives it (a dict of bytes, or a flat list from a
    script)."""
    pairs: dict[bytes, bytes] = (
        {bytes(k): bytes(v) for k, v in raw.items()} if isinstance(raw, dict) else _pairs(raw)
    )
    args = pairs.pop(b"args", None)
    return _decode({k.decode(): v.decode(errors="replace") for k, v in pairs.items()}, args)


def _from_packed(packed: bytes, args: bytes) -> tuple[JobRecord, str | None]:
    """Decode a job as the claim script packs it: its fields but args as one JSON object
    (one bulk string instead of forty, which redis-py parses far faster), then the args."""
    fields = json.loads(packed.decode(errors="replace"))
    return _decode(fields if isinstance(fields, dict) else {}, args or None)


def _claimed(packed: bytes, args: bytes) -> Claimed:
    """A job as the claim script packs it, as a Claimed. A job that cannot be turned into a
    record comes back alone with a ``decode_error`` naming what failed, never failing its
    whole batch."""
    try:
        record, error = _from_packed(packed, args)
        fields = json.loads(packed.decode(errors="replace"))
        for name in ("enqueued_at", "scheduled_for", "started_at", "finished_at"):
            _time_strict(fields.get(name))
        unknown_since = _time_strict(fields.get("unknown_since"))
    except Exception as exc:  # any broken job, whatever broke: fail it alone
        try:
            fields = json.loads(packed.decode(errors="replace"))
            spec = json.loads(fields.get("spec") or "{}")
        except Exception:  # even the id is unreadable: name what we can
            fields, spec = {}, {}
        bare = JobRecord(
            id=str(fields.get("id", "")),
            handler=str(spec.get("handler", "") if isinstance(spec, dict) else ""),
            queue=str(fields.get("queue", "default")),
            state=JobState.RUNNING,
            attempts=_int(fields.get("attempts"), 1),
        )
        return Claimed(bare, f"the stored job could not be decoded: {exc}")
    return Claimed(record, error, unknown_since)


def _claimed_once(packed: bytes, args: bytes) -> Claimed:
    """As :func:`_claimed`, decoding the packed fields once (again only to name what broke)."""
    try:
        fields = json.loads(packed.decode(errors="replace"))
        if not isinstance(fields, dict):
            raise ValueError("the packed job is not a JSON object")
        record, error = _decode(fields, args or None)
        for name in ("enqueued_at", "scheduled_for", "started_at", "finished_at"):
            _time_strict(fields.get(name))
        unknown_since = _time_strict(fields.get("unknown_since"))
    except Exception:  # any broken job, whatever broke: fail it alone, as _claimed does
        return _claimed(packed, args)
    return Claimed(record, error, unknown_since)


def _complete_batch(outcomes: Sequence[Outcome]) -> str:
    """The complete script's batch argument for ``outcomes``: one JSON list of packed
    outcomes (used by :meth:`RedisStore.complete` and ``complete_and_claim``)."""
    batch: list[list[str]] = []
    for o in outcomes:
        waiting = o.state is JobState.WAITING
        result = _dumps(o.result) if o.state is JobState.SUCCEEDED or waiting else None
        due = str(_us(o.scheduled_for)) if o.scheduled_for is not None else None
        deadline = str(_us(o.deadline)) if waiting and o.deadline is not None else None
        ttl = repr(float(o.ttl)) if waiting and o.ttl is not None else None
        batch.append(
            [
                o.id,
                o.state.value,
                str(int(o.status)),
                _opt(result),
                _opt(o.error),
                _opt(due),
                "1" if o.give_back_attempt else "0",
                "1" if o.deferral else "0",
                _opt(None if o.unknown_since is None else str(_us(o.unknown_since))),
                _opt(deadline),
                _opt(ttl),
            ]
        )
    return _dumps(batch)


def _bytes_dict(raw: Any) -> dict[bytes, bytes]:
    """A reply of HGETALL (bytes, as this store's client never decodes) as typed here."""
    return {bytes(k): bytes(v) for k, v in raw.items()}


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """``[k1, v1, k2, v2, …]`` (as a script returns HGETALL) to a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _add_args(rec: JobRecord, now: datetime) -> tuple[list[str], str, datetime]:
    """The add script's values for one job, its args JSON and its ``enqueued_at``."""
    enqueued = rec.enqueued_at or now
    args = _dumps(rec.args)
    spec: dict[str, Any] = {"handler": rec.handler, "headers": rec.headers}
    if rec.timeout is not None:
        spec["timeout"] = rec.timeout
    if rec.retry is not None:
        spec["retry"] = rec.retry
    if rec.result_ttl is not None:
        spec["result_ttl"] = rec.result_ttl
    # Fields a new job rarely has: only sent when set.
    extra: dict[str, str] = {}
    if rec.status is not Status.UNKNOWN:
        extra["status"] = str(int(rec.status))
    if rec.attempts:
        extra["attempts"] = str(rec.attempts)
    if rec.deferrals:
        extra["deferrals"] = str(rec.deferrals)
    if rec.result is not None:
        extra["result"] = _dumps(rec.result)
    if rec.error is not None:
        extra["error"] = rec.error
    if rec.started_at is not None:
        extra["started_at"] = str(_us(rec.started_at))
    if rec.finished_at is not None:
        extra["finished_at"] = str(_us(rec.finished_at))
    if rec.schedule_id is not None:
        extra["schedule_id"] = rec.schedule_id
    if rec.result_ttl is not None:
        # The scripts need it in microseconds, as a field of their own.
        extra["ttl_us"] = str(int(rec.result_ttl * 1_000_000))
    values = [
        rec.id,
        rec.queue,
        _opt(rec.unique_key),
        rec.state.value,
        str(_us(rec.scheduled_for or enqueued)),
        str(rec.priority),
        str(_us(enqueued)),
        _opt(str(_us(rec.scheduled_for)) if rec.scheduled_for is not None else None),
        str(rec.max_attempts),
        args,
        _dumps(spec),
        _opt(_dumps(extra) if extra else None),
        rec.handler,
    ]
    return values, args, enqueued


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))


def _added(rec: JobRecord, args: Any, enqueued: datetime) -> JobRecord:
    """``rec.replace(args=args, enqueued_at=enqueued)`` for a new job, at a third of the
    cost (a batch of 500 makes 500 of them)."""
    new: JobRecord = object.__new__(JobRecord)
    put = object.__setattr__
    for name in _RECORD_FIELDS:
        put(new, name, getattr(rec, name))
    put(new, "args", args if isinstance(args, dict) else {})
    put(new, "enqueued_at", enqueued)
    return new


def _add_chunks(records: Sequence[JobRecord]) -> tuple[list[JobRecord], list[str]]:
    """The records an add stores if every job is new, and the add script's job arrays
    (one JSON text per chunk of ``_ADD_CHUNK`` jobs)."""
    now = datetime.now(UTC)
    values: list[list[str]] = []
    texts: list[str] = []
    enqueued_at: list[datetime] = []
    for rec in records:
        job_values, args, enqueued = _add_args(rec, now)
        values.append(job_values)
        texts.append(args)
        enqueued_at.append(enqueued)
    # What is stored: args through JSON, as they will be read back (decoded in one call).
    decoded = json.loads("[" + ",".join(texts) + "]")
    stored = [
        _added(rec, args, enqueued)
        for rec, args, enqueued in zip(records, decoded, enqueued_at, strict=True)
    ]
    chunks = [_dumps(values[i : i + _ADD_CHUNK]) for i in range(0, len(values), _ADD_CHUNK)]
    return stored, chunks


def _add_replies(stored: list[JobRecord], replies: Sequence[Any]) -> list[JobRecord]:
    """``stored`` with the jobs the add scripts found taken replaced by what they found."""
    for n, reply in enumerate(replies):
        for j in range(0, len(reply), 2):
            stored[n * _ADD_CHUNK + int(reply[j])] = _from_hash(reply[j + 1])[0]
    return stored


def _schedule_fields(row: ScheduleRow) -> str:
    """A schedule row as the save script's JSON object of strings."""
    fields = {
        "spec": _dumps(row.spec),
        "enabled": "1" if row.enabled else "0",
        "anchor": str(_us(row.anchor)),
        "created_at": str(_us(row.created_at)),
        "updated_at": str(_us(row.updated_at)),
        "version": str(row.version),
    }
    if row.next_fire_at is not None:
        fields["next_fire_at"] = str(_us(row.next_fire_at))
    if row.last_fire_at is not None:
        fields["last_fire_at"] = str(_us(row.last_fire_at))
    return _dumps(fields)


def _schedule_from_hash(raw: Any) -> ScheduleRow:
    """Decode a schedule hash (a dict of bytes, or a flat list from a script)."""
    pairs = _bytes_dict(raw) if isinstance(raw, dict) else _pairs(raw)
    return _schedule_from_fields({k.decode(): v.decode(errors="replace") for k, v in pairs.items()})


def _schedule_from_fields(f: dict[str, str]) -> ScheduleRow:
    """Decode a schedule hash's fields, as text."""
    spec, _ = _json_object(f.get("spec"), "spec")
    return ScheduleRow(
        id=str(spec.get("id", "")),
        spec=spec,
        enabled=f.get("enabled") == "1",
        next_fire_at=_time(f.get("next_fire_at")),
        anchor=_time(f.get("anchor")) or _EPOCH,
        last_fire_at=_time(f.get("last_fire_at")),
        created_at=_time(f.get("created_at")) or _EPOCH,
        updated_at=_time(f.get("updated_at")) or _EPOCH,
        version=_int(f.get("version"), 0),
    )


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore(RedisWorkflows):
    """A durable store in Redis, for many workers on many machines.

    Each job is a hash (``{prefix}:job:{id}``); per queue, a sorted set of ready jobs in claim
    order, one of scheduled jobs by due time, and a hash of active unique keys; one sorted set
    of running jobs by lease expiry. Every change is one Lua script, so it is atomic: an add
    that finds the id or an active unique key returns that job, a claim moves due jobs to the
    ready set and takes the best ``limit`` of them, and complete, renew, reap and cancel are
    fenced by the lease owner. :meth:`wait_for_work` blocks in ``BLPOP`` on per-queue wake
    lists that adds, hand-backs and retries push to, bounded by the next due time.

    redis-py's asyncio client is asyncio-only, so this store runs only on anyio's asyncio
    backend: entering it under trio raises ``RuntimeError`` (detected by asking asyncio for
    a running event loop). Use one Redis server, a Sentinel-managed primary, or a Redis
    Cluster (``redis+cluster://``): every key starts with the hash tag ``{prefix}``, declared
    as each script's ``KEYS[1]``, so a store lives in one slot and each script runs on one
    node; several stores (prefixes) spread over the nodes. Durability is Redis's own (AOF
    with ``appendfsync everysec`` loses at most about a second of changes).

    An add of one batch goes over a connection of the store's own when it is free (see
    :class:`~work.stores._redis_direct.DirectScript`); :meth:`add_blocking` adds from a
    thread with redis-py's synchronous client (``SyncQueue``).

    Times (leases, due times) are read from this process's clock, as are the times the
    producer writes, so keep the clocks of the machines involved in sync (NTP).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS,
            ``unix:///path/to/socket``, or ``redis+cluster://host:port`` (any node of a
            Redis Cluster; ``rediss+cluster://`` for TLS).
        prefix: the hash tag every key starts with (``{prefix}:…``, braces included);
            stores with different prefixes in one database are independent.
        **client_options: further keyword arguments for ``redis.asyncio.from_url`` (or
            ``RedisCluster.from_url``; for example ``max_connections``,
            ``socket_connect_timeout``).

    Raises:
        ValueError: an empty prefix.
    """

    #: Concurrent calls run in parallel, each on a pooled connection of its own: ``serve``
    #: claims the next jobs while the last outcomes are being written.
    parallel_calls = True

    def __init__(self, url: str, *, prefix: str = "anywork", **client_options: Any) -> None:
        if not prefix:
            raise ValueError("prefix must be a non-empty string")
        self.url = mask_url(url)
        self.prefix = prefix
        scheme, sep, rest = url.partition("://")
        self.cluster = scheme.lower() in _CLUSTER_SCHEMES
        """True for a ``redis+cluster://`` (or ``rediss+cluster://``) URL: redis-py's
        cluster client."""
        self._dsn = _CLUSTER_SCHEMES[scheme.lower()] + sep + rest if self.cluster else url
        # The hash tag of every key: a store's keys share one slot of a Redis Cluster.
        self._base = "{" + prefix + "}"
        # Responses stay bytes: a payload that is not UTF-8 must not break a whole claim.
        self._options = {**client_options, "decode_responses": False}
        if self.cluster:
            # BLPOP waits longer than the cluster client's default 5 s socket timeout.
            self._options.setdefault("socket_timeout", None)
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._direct: DirectScript | None = None
        # add_blocking's synchronous client: None until made, False if it cannot be.
        self._sync: Any = None
        self._sync_direct: DirectScriptSync | None = None
        self._sync_lock = threading.Lock()
        self._entries = 0
        self._hub = EventHub()
        self._events_users = 0
        self._events_reader: asyncio.Task[None] | None = None
        self._events_pubsub: Any = None
        self._events_lock = anyio.Lock()
        self._events_linger: asyncio.TimerHandle | None = None
        self._events_closers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    def _key(self, *parts: str) -> str:
        return ":".join((self._base, *parts))

    def _connect(self) -> aioredis.Redis:
        """A new client for the URL: redis-py's cluster client for ``redis+cluster://``
        (typed as the plain client: the store uses only commands both have)."""
        if self.cluster:
            return cast("aioredis.Redis", RedisCluster.from_url(self._dsn, **self._options))
        return aioredis.from_url(self._dsn, **self._options)

    # -- life -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Connect, check the key layout version (setting it on an empty prefix), and
        return the store.

        Entering an open store again only counts the entry: it closes on the outermost exit.

        Raises:
            RuntimeError: not running on asyncio, or keys written by a newer anywork.
            RedisUnavailableError: the server cannot be reached.
            StoreAuthenticationError: the server refused the password or user.
        """
        _require_asyncio()
        if self._client is not None:
            self._entries += 1
            return self
        client = self._connect()
        try:
            await self._migrate(client)
        except _AUTH_ERRORS as exc:
            # redis-py makes these ConnectionErrors, but waiting will not heal them.
            await client.aclose()
            raise self._refused(client, exc) from None
        except _CONNECT_ERRORS as exc:
            await client.aclose()
            raise self._unavailable(client, exc) from exc
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._scripts = {
            name: client.register_script(lua)
            for name, lua in (
                ("add", ADD),
                ("claim", CLAIM),
                ("renew", RENEW),
                ("complete", COMPLETE),
                ("reap", REAP),
                ("cancel", CANCEL),
                ("save_schedule", SAVE_SCHEDULE),
                ("delete_schedule", DELETE_SCHEDULE),
                ("pick", PICK),
                ("fire", FIRE),
                ("execution", EXECUTION),
                ("settle", SETTLE),
                ("heartbeat", HEARTBEAT),
                ("progress", PROGRESS),
                ("delete", DELETE),
                ("retry", RETRY),
                *workflow_scripts(LUA_PRELUDE).items(),
            )
        }
        self._direct = DirectScript(client, self._scripts["add"].sha, self._base, 2)
        self._entries = 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client and its connections (on the outermost exit)."""
        self._entries -= 1
        if self._entries > 0:
            return
        self._entries = 0
        for closer in list(self._events_closers):
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await closer
        await self._stop_events()
        direct, self._direct = self._direct, None
        if direct is not None:
            await direct.aclose()
        sync, self._sync = self._sync, None
        sync_direct, self._sync_direct = self._sync_direct, None
        if sync_direct is not None:
            sync_direct.close()
        if sync:
            sync.close()  # closes sockets: does not wait on the server
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _address(self, client: aioredis.Redis) -> tuple[str, int | str]:
        if self.cluster:
            parts = urlsplit(self._dsn)
            return parts.hostname or "localhost", parts.port or 6379
        kwargs = client.connection_pool.connection_kwargs
        host = kwargs.get("path") or kwargs.get("host", "localhost")
        return str(host), kwargs.get("port", 6379)

    def _refused(self, client: aioredis.Redis, exc: BaseException) -> StoreAuthenticationError:
        if self.cluster:
            no_password = urlsplit(self._dsn).password is None
        else:
            no_password = client.connection_pool.connection_kwargs.get("password") is None
        if no_password:
            # The server's own words ("HELLO must be called with the client already
            # authenticated ...") do not say what to change.
            exc = AuthenticationError("the URL gives no password")
        return StoreAuthenticationError("Redis", *self._address(client), exc)

    def _unavailable(self, client: aioredis.Redis, exc: BaseException) -> RedisUnavailableError:
        return RedisUnavailableError(*self._address(client), exc)

    async def _migrate(self, client: aioredis.Redis) -> None:
        key = self._key("schema_version")
        if await client.exists(self._old_key("schema_version")):
            await self._move_to_tagged(client)
        # SET NX: the first process records the layout version, the others read it.
        await client.set(key, SCHEMA_VERSION, nx=True)
        version = int(await client.get(key) or 0)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"keys under {self.prefix!r} are at layout version {version}, newer than this "
                f"anywork knows ({SCHEMA_VERSION}); upgrade anywork"
            )
        if version < 2:
            await self._index_finished(client)
            await client.set(key, 2)
        if version < 3:
            await client.set(key, 3)

    def _old_key(self, *parts: str) -> str:
        """A key of layout 2 and before (no hash tag: ``prefix:…``)."""
        return ":".join((self.prefix, *parts))

    async def _move_to_tagged(self, client: aioredis.Redis) -> None:
        """Layout 2 to 3: rename every ``prefix:<kind>:…`` key to ``{prefix}:<kind>:…``.

        The layout version key moves last, so a process that opens the store meanwhile
        either helps (a key another process renamed first is skipped) or finds the move
        done. On a cluster the old keys hash to many slots and cannot be renamed: move the
        store on its single node first (opening it there does it), then import the keys.

        Raises:
            RuntimeError: on a cluster, keys of layout 2 or before.
        """
        if self.cluster:
            raise RuntimeError(
                f"keys under {self.prefix!r} on this cluster are at layout version 2 or before "
                f"(no hash tag): open the store once on a single Redis server to move them to "
                f"layout {SCHEMA_VERSION}, then import them into the cluster "
                f"(see docs/deployment.md)"
            )
        pattern = _glob_escape(self.prefix) + ":*"
        start = len(self.prefix) + 1
        last = self._old_key("schema_version").encode()
        async for raw in client.scan_iter(match=pattern, count=1000):
            key = bytes(raw)
            kind = key[start:].partition(b":")[0].decode(errors="replace")
            if kind not in _KINDS or key == last:
                continue
            new = self._base.encode() + key[start - 1 :]
            # Another process may have moved it first: nothing to do then.
            with contextlib.suppress(ResponseError):
                await client.rename(key, new)
        with contextlib.suppress(ResponseError):
            await client.rename(last, self._key("schema_version"))

    async def _index_finished(self, client: aioredis.Redis) -> None:
        """Layout 1 to 2: index the jobs already finished for retention. Idempotent (ZADD),
        so several processes upgrading at once do no harm."""
        start: str = "-inf"
        while True:
            page = cast(
                "list[tuple[bytes, float]]",
                await client.zrangebyscore(
                    self._key("all"), start, "+inf", start=0, num=1000, withscores=True
                ),
            )
            if not page:
                return
            pipe = client.pipeline(transaction=False)
            for id, _ in page:
                pipe.hmget(self._key("job", id.decode()), "state", "queue", "finished_at")
            fields = await pipe.execute()
            pipe = client.pipeline(transaction=False)
            for (id, _), (state, queue, finished_at) in zip(page, fields, strict=True):
                if state in (b"succeeded", b"failed", b"cancelled") and queue and finished_at:
                    done = self._key("done", queue.decode())
                    pipe.zadd(done, {id: int(finished_at)})
            await pipe.execute()
            start = f"({int(page[-1][1])}"

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open: use `async with store:`")
        return self._client

    async def exists(self) -> bool:
        """True when the server holds keys of this store (its layout version); writes
        nothing (for read-only commands, which must not leave a key behind).

        Raises:
            RedisUnavailableError: the server cannot be reached.
            StoreAuthenticationError: the server refused the password or user.
        """
        _require_asyncio()
        if self._client is not None:
            return True
        client = self._connect()
        try:
            keys = [self._key("schema_version")]
            if not self.cluster:  # a store of layout 2 is moved when it is opened
                keys.append(self._old_key("schema_version"))
            return bool(await client.exists(*keys))
        except _AUTH_ERRORS as exc:
            raise self._refused(client, exc) from None
        except _CONNECT_ERRORS as exc:
            raise self._unavailable(client, exc) from exc
        finally:
            await client.aclose()

    async def drop(self) -> None:
        """Delete every key under the store's prefix (for tests and teardown).

        Works whether or not the store is open.
        """
        _require_asyncio()
        client = self._client or self._connect()
        try:
            pattern = _glob_escape(self._base) + ":*"
            batch: list[bytes] = []
            async for key in self._scan(client, pattern):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
        except _CONNECT_ERRORS as exc:
            raise self._unavailable(client, exc) from exc
        finally:
            if client is not self._client:
                await client.aclose()

    async def _scan(self, client: aioredis.Redis, pattern: str) -> AsyncIterator[Any]:
        """SCAN for ``pattern`` where the store's keys are: on a cluster, only the primary
        holding its slot."""
        if self.cluster:
            cluster = cast("RedisCluster", client)
            await cluster.initialize()  # a new client learns the slots first
            node = cluster.get_node_from_key(self._base)
            async for key in cluster.scan_iter(match=pattern, count=1000, target_nodes=node):
                yield key
        else:
            async for key in client.scan_iter(match=pattern, count=1000):
                yield key

    @contextlib.contextmanager
    def _reachable(self, client: aioredis.Redis) -> Iterator[None]:
        """Turn redis-py's errors for a server that went away into RedisUnavailableError (a
        builtin ConnectionError, as every store raises), so a worker reports one outage."""
        try:
            yield
        except _AUTH_ERRORS:
            raise
        except _CONNECT_ERRORS as exc:
            if isinstance(exc, StoreUnavailableError):
                raise
            raise self._unavailable(client, exc) from exc

    async def _run(self, name: str, args: Sequence[Any], client: Any = None) -> Any:
        redis_client = self._require()
        script = self._scripts[name]
        # KEYS[1] is the store's hash tag, which every key a script touches starts with: the
        # call goes to the node of that slot (ARGV[1] repeats it, as scripts read it there).
        base = self._base
        if client is not None:  # a pipeline: redis-py loads its scripts before it runs
            return await script(keys=[base], args=[base, *args], client=client)
        with self._reachable(redis_client):
            try:
                return await redis_client.evalsha(script.sha, 1, base, base, *args)
            except NoScriptError:
                # The server lost its script cache (a restart, SCRIPT FLUSH): nothing ran.
                await redis_client.script_load(script.script)  # every primary of a cluster
                return await redis_client.evalsha(script.sha, 1, base, base, *args)

    # -- reading --------------------------------------------------------------------------

    async def get(self, id: str) -> JobRecord | None:
        """Return the job's record, or None."""
        fields = await self._require().hgetall(self._key("job", id))
        return _from_hash(fields)[0] if fields else None

    async def stats(self) -> dict[str, dict[str, int]]:
        """Return ``{queue: {state: count}}`` for every queue holding jobs."""
        raw = _bytes_dict(await self._require().hgetall(self._key("stats")))
        out: dict[str, dict[str, int]] = {}
        for field_, count in raw.items():
            queue, _, state = field_.decode(errors="replace").rpartition("\0")
            if int(count) > 0:
                out.setdefault(queue, {})[state] = int(count)
        return out

    async def finished_per_minute(self) -> dict[str, builtins.list[tuple[int, int]]]:
        """Return the last hour's finished jobs per queue and minute (see
        :meth:`work.stores.Store.finished_per_minute`): a Lua script per queue counts the
        jobs its finished sets (by finish time) hold for the last hour, reading each one's
        state, so it costs one step per job finished in that hour."""
        client = self._require()
        script = self._scripts.get("finished_per_minute")
        if script is None:
            script = client.register_script(FINISHED_PER_MINUTE_LUA)
            self._scripts["finished_per_minute"] = script
        now = datetime.now(UTC)
        since = str(first_minute(now) * 60 * 1_000_000)
        queues = sorted(await self.stats())
        rows: list[tuple[str, int, str, int]] = []
        for queue in queues:
            flat = await script(
                keys=[self._key("done", queue), self._key("kept", queue)],
                args=[self._base, since],  # the key prefix the script builds job keys on
            )
            for slot, n in zip(flat[::2], flat[1::2], strict=True):
                minute, _, state = slot.decode().partition(" ")
                rows.append((queue, int(minute), state, int(n)))
        return minute_series(rows, now)

    # -- producing ------------------------------------------------------------------------

    async def add(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Insert jobs with one atomic script per 1000 jobs (more than one such chunk go in
        one pipelined round trip); an existing id or an active job with the same unique key
        is returned instead (see :meth:`work.stores.Store.add`)."""
        client = self._require()
        if not records:
            return []
        stored, chunks = _add_chunks(records)
        if len(chunks) == 1:
            replies = [await self._add_chunk(chunks[0])]
        else:
            pipe = client.pipeline(transaction=False)
            for chunk in chunks:
                await self._run("add", [_WAKE_TOKENS, chunk], client=pipe)
            replies = await pipe.execute()
        return _add_replies(stored, replies)

    def add_blocking(self, records: Sequence[JobRecord]) -> builtins.list[JobRecord] | None:
        """:meth:`add` in the calling thread, which has no event loop of the store's
        (``SyncQueue.enqueue``): the same script with the same keys and answers, sent with
        redis-py's synchronous client (``Redis`` or ``RedisCluster``, made on first use
        with the store's URL and options), so the call needs no portal round trip.

        Returns:
            The stored records, or None when the synchronous client cannot be made from the
            store's options (the caller then calls :meth:`add` on the store's loop).

        Raises:
            RuntimeError: the store is not open.
            RedisUnavailableError: the server cannot be reached.
            StoreAuthenticationError: the server refused the password or user.
        """
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open: use `async with store:`")
        if not records:
            return []
        try:
            client = self._sync_client()
        except _AUTH_ERRORS as exc:
            raise self._refused(self._client, exc) from None
        except _CONNECT_ERRORS as exc:  # the cluster client asks a node for the slots
            raise self._unavailable(self._client, exc) from exc
        if client is None:
            return None
        stored, chunks = _add_chunks(records)
        replies: list[Any] = []
        with self._reachable(cast("aioredis.Redis", client)):
            replies.extend(self._add_chunk_blocking(client, chunk) for chunk in chunks)
        return _add_replies(stored, replies)

    def _add_chunk_blocking(self, client: Any, chunk: str) -> Any:
        """One add script call from the calling thread: over the synchronous client's
        connection of the store's own when it is free (:class:`DirectScriptSync`), else (or
        after NOSCRIPT, a redirection or a connection error) through that client."""
        direct = self._sync_direct
        if direct is not None:
            try:
                reply = direct.call((_WAKE_BYTES, chunk.encode()))
                if reply is not BUSY:
                    return reply
            except (NoScriptError, *REDIRECTED, *_CONNECT_ERRORS, RedisClusterException):
                direct.reset()
        script = self._scripts["add"]
        base = self._base
        try:
            return client.evalsha(script.sha, 1, base, base, _WAKE_TOKENS, chunk)
        except NoScriptError:
            # The server lost its script cache (a restart, SCRIPT FLUSH): nothing ran.
            client.script_load(script.script)
            return client.evalsha(script.sha, 1, base, base, _WAKE_TOKENS, chunk)

    def _sync_client(self) -> Any:
        """redis-py's synchronous client for :meth:`add_blocking` (made once, thread-safe
        as redis-py's clients are), or None when the store's options do not make one."""
        if self._sync is None:
            with self._sync_lock:
                if self._sync is None:
                    try:
                        if self.cluster:
                            self._sync = SyncRedisCluster.from_url(self._dsn, **self._options)
                        else:
                            self._sync = SyncRedis.from_url(self._dsn, **self._options)
                    except TypeError:  # an option only the asyncio client takes
                        self._sync = False
                    else:
                        sha = self._scripts["add"].sha
                        self._sync_direct = DirectScriptSync(self._sync, sha, self._base, 2)
        return self._sync or None

    async def _add_chunk(self, chunk: str) -> Any:
        """One add script call: over the store's own connection when it is free (see
        :class:`DirectScript`), else (or when the server lost the script, the slot moved or
        the connection failed) through the client, which loads scripts, follows
        redirections and retries as for every other call. Running it again is safe: the ids
        are stored by then, so the second run returns those jobs."""
        direct = self._direct
        if direct is not None and not direct.busy:
            try:
                return await direct.call((_WAKE_BYTES, chunk.encode()))
            except (NoScriptError, *REDIRECTED, *_CONNECT_ERRORS, RedisClusterException):
                await direct.reset()
        return await self._run("add", [_WAKE_TOKENS, chunk])

    async def cancel(self, id: str) -> bool:
        """Cancel a QUEUED, SCHEDULED or WAITING job at once, or ask a RUNNING one's owner to
        stop.

        Returns False for an unknown or already final job.
        """
        return bool(await self._run("cancel", [id, _now_us()]))

    # -- consuming ------------------------------------------------------------------------

    async def claim(
        self, queues: Sequence[str], *, limit: int, lease: float, owner: str
    ) -> list[Claimed]:
        """Claim up to ``limit`` ready jobs, best first, in one atomic script (see
        :meth:`work.stores.Store.claim`).

        A job whose args or headers cannot be decoded is still claimed and comes back with
        ``decode_error`` set.
        """
        if limit <= 0 or not queues:
            self._require()
            return []
        now = _now_us()
        until = now + int(lease * 1_000_000)
        replies = await self._run("claim", [now, limit, until, owner, *queues])
        return [_claimed(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]

    async def renew(self, owner: str, ids: Sequence[str], *, lease: float) -> set[str]:
        """Extend ``owner``'s leases on ``ids`` in one script; return those it must stop
        running (a cancel was requested, or the job is no longer its own)."""
        if not ids:
            self._require()
            return set()
        until = _now_us() + int(lease * 1_000_000)
        stop = await self._run("renew", [owner, until, *ids])
        return {id.decode() for id in stop}

    async def complete(self, owner: str, outcomes: Sequence[Outcome]) -> set[str]:
        """Apply outcomes, in one script, to jobs RUNNING under ``owner``'s lease; others
        are left alone (see :meth:`work.stores.Store.complete`). Returns the ids whose
        outcome was applied."""
        if not outcomes:
            self._require()
            return set()
        batch = _complete_batch(outcomes)
        applied = await self._run("complete", [owner, _now_us(), _WAKE_TOKENS, batch])
        return {id.decode() if isinstance(id, bytes) else str(id) for id in applied}

    async def complete_and_claim(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
    ) -> tuple[set[str], list[Claimed]]:
        """:meth:`complete` then :meth:`claim`, their two scripts in one pipelined round trip:
        what ``serve`` calls when finished jobs free the places it claims for.

        Each script is atomic on its own and they run in that order, so a job given back by
        an outcome may be claimed again at once. When the claim fails after the outcomes
        were applied, no jobs come back and the outcomes count as applied (they must not be
        written twice); a failed complete raises as :meth:`complete` does.
        """
        client = self._require()
        if not outcomes or limit <= 0 or not queues:
            applied = await self.complete(owner, outcomes)
            return applied, await self.claim(queues, limit=limit, lease=lease, owner=owner)
        now = _now_us()
        until = now + int(lease * 1_000_000)
        complete, claim = self._scripts["complete"], self._scripts["claim"]
        with self._reachable(client):
            # EVALSHA queued as plain commands: a pipeline given Script objects would ask
            # SCRIPT EXISTS first, a second round trip.
            pipe = client.pipeline(transaction=False)
            # KEYS[1] is the store's hash tag, ARGV[1] repeats it (as in _run).
            base = self._base
            pipe.evalsha(
                complete.sha,
                1,
                base,
                base,
                owner,
                now,
                _WAKE_TOKENS,
                _complete_batch(outcomes),
            )
            pipe.evalsha(claim.sha, 1, base, base, now, limit, until, owner, *queues)
            done, replies = await pipe.execute(raise_on_error=False)
        claimed: list[Claimed] = []
        if not isinstance(replies, Exception):
            claimed = [_claimed_once(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]
        if isinstance(done, NoScriptError):
            # The server lost its script cache: the outcomes were not applied; the plain
            # call reloads the script. The claim either did not run either, or ran before
            # the outcomes: claim (again) for the places left, so a job an outcome gave back
            # is not passed over.
            applied = await self.complete(owner, outcomes)
            if isinstance(replies, NoScriptError):
                claimed = []
            if len(claimed) < limit:
                left = limit - len(claimed)
                claimed += await self.claim(queues, limit=left, lease=lease, owner=owner)
            return applied, claimed
        if isinstance(done, Exception):
            raise done
        return {id.decode() if isinstance(id, bytes) else str(id) for id in done}, claimed

    async def settle(self, outcome: Outcome, *, only_expired: bool = False) -> JobRecord | None:
        """Apply ``outcome`` to a WAITING job in one atomic script (see
        :meth:`work.stores.Store.settle`)."""
        o = outcome
        result = _dumps(o.result) if o.state is JobState.SUCCEEDED else None
        due = _us(o.scheduled_for) if o.scheduled_for is not None else None
        reply = await self._run(
            "settle",
            [
                o.id,
                _now_us(),
                "1" if only_expired else "0",
                _WAKE_TOKENS,
                o.state.value,
                str(int(o.status)),
                _opt(result),
                _opt(o.error),
                _opt(str(due) if due is not None and o.state is JobState.SCHEDULED else None),
            ],
        )
        if int(reply[0]) == 1:
            return _from_hash(reply[1])[0]
        if only_expired:
            return None
        return self._refuse(o.id, reply)

    async def heartbeat(self, id: str, ttl: float | None = None) -> JobRecord:
        """Push a WAITING job's deadline in one atomic script (see
        :meth:`work.stores.Store.heartbeat`)."""
        ttl_us = str(int(ttl * 1_000_000)) if ttl is not None else None
        reply = await self._run("heartbeat", [id, _now_us(), _opt(ttl_us)])
        if int(reply[0]) == 1:
            return _from_hash(reply[1])[0]
        return self._refuse(id, reply)

    def _refuse(self, id: str, reply: Sequence[Any]) -> JobRecord:
        if int(reply[0]) == 0:
            raise LookupError(f"no job with id {id!r} in {self.url}")
        raise JobStateError(id, bytes(reply[1]).decode())

    async def overdue(self, *, limit: int = 100) -> list[JobRecord]:
        """Return up to ``limit`` WAITING jobs whose deadline has passed, earliest first."""
        client = self._require()
        if limit <= 0:
            return []
        ids = cast(
            "list[bytes]",
            await client.zrangebyscore(self._key("waiting"), "-inf", _now_us(), start=0, num=limit),
        )
        if not ids:
            return []
        pipe = client.pipeline(transaction=False)
        for id in ids:
            pipe.hgetall(self._key("job", id.decode()))
        out: list[JobRecord] = []
        for fields in await pipe.execute():
            if fields:
                rec = _from_hash(fields)[0]
                if rec.state is JobState.WAITING:
                    out.append(rec)
        return out

    async def setdefault_setting(self, key: str, value: str) -> str:
        """Return the setting ``key``, storing ``value`` first if there is none (HSETNX)."""
        client = self._require()
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(self._key("settings"), key, value)
        pipe.hget(self._key("settings"), key)
        _, stored = await pipe.execute()
        return bytes(stored).decode()

    async def get_setting(self, key: str) -> str | None:
        """Return the setting ``key``, or None."""
        stored: Any = await self._require().hget(self._key("settings"), key)
        return None if stored is None else bytes(stored).decode()

    async def set_setting(self, key: str, value: str) -> None:
        """Store ``value`` as the setting ``key`` (replacing any)."""
        await self._require().hset(self._key("settings"), key, value)

    async def reap(self, *, lost_limit: int = DEFAULT_LOST_LIMIT) -> int:
        """Put back (or fail after ``lost_limit`` losses, or cancel) RUNNING jobs whose lease
        expired; return how many (see :meth:`work.stores.Store.reap`).

        Each call handles at most 1000 of them, in one atomic script, so it is safe from
        many workers at once.
        """
        args = [_now_us(), _WAKE_TOKENS, _REAP_BATCH, lost_limit]
        return int(await self._run("reap", args))

    # -- retention ------------------------------------------------------------------------

    async def _delete_older(self, key: str, before: int, states: str, limit: int | None) -> int:
        """Delete the jobs of sorted set ``key`` scored below ``before`` that are final and in
        ``states``, up to ``limit``, a page (one atomic script) at a time."""
        client = self._require()
        total = kept = 0
        while limit is None or total < limit:
            num = _PURGE_BATCH if limit is None else min(_PURGE_BATCH, limit - total)
            # Deleted jobs leave the set: skip only those kept (not in states) so far.
            page = await client.zrangebyscore(key, "-inf", f"({before}", start=kept, num=num)
            if not page:
                break
            deleted = int(await self._run("delete", [states, *page]))
            total += deleted
            kept += len(page) - deleted
        return total

    async def _queues(self) -> list[str]:
        raw = cast("list[bytes]", await self._require().hkeys(self._key("stats")))
        return sorted({k.decode(errors="replace").rpartition("\0")[0] for k in raw})

    async def purge(
        self, *, older_than: datetime, states: Sequence[JobState], limit: int | None = None
    ) -> int:
        """Delete finished jobs in ``states`` that finished before ``older_than``, oldest
        first per queue, a script of at most 500 at a time (see
        :meth:`work.stores.Store.purge`)."""
        wanted = ",".join(s.value for s in states if s.is_final)
        if not wanted or (limit is not None and limit <= 0):
            return 0
        before = _us(older_than)
        total = 0
        for queue in await self._queues():
            for kind in ("done", "kept"):
                left = None if limit is None else limit - total
                if left is not None and left <= 0:
                    return total
                total += await self._delete_older(self._key(kind, queue), before, wanted, left)
        return total

    async def expire(self, queues: Sequence[str], *, result_ttl: float, limit: int) -> int:
        """Delete up to ``limit`` finished jobs whose time is up (see
        :meth:`work.stores.Store.expire`): sorted sets of finished jobs are read from the
        oldest, so it costs what it deletes, not what is kept."""
        if limit <= 0:
            return 0
        now = _now_us()
        final = ",".join(s.value for s in FINAL_STATES)
        total = await self._delete_older(self._key("expires"), now + 1, final, limit)
        cutoff = now - int(result_ttl * 1_000_000)
        for queue in queues:
            if total >= limit:
                break
            total += await self._delete_older(
                self._key("done", queue), cutoff + 1, final, limit - total
            )
        return total

    async def retry(self, id: str) -> JobRecord | None:
        """Queue a FAILED or CANCELLED job again, due now, in one script (see
        :meth:`work.stores.Store.retry`).

        Raises:
            ValueError: the job is in another state, or its unique key is taken.
        """
        reply = await self._run("retry", [id, _now_us(), _WAKE_TOKENS])
        kind = bytes(reply[0])
        if kind == b"missing":
            return None
        if kind == b"state":
            raise ValueError(
                f"job {id!r} is {reply[1].decode()}: only a failed or cancelled job can be retried"
            )
        if kind == b"unique":
            raise ValueError(
                f"job {reply[1].decode()!r} holds the unique_key of job {id!r} in its queue "
                f"and is not finished"
            )
        return _from_hash(reply[1:])[0]

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job in ``queues`` may be ready, or after ``timeout`` seconds.

        Returns at once if a job is ready; otherwise blocks in ``BLPOP`` on the queues' wake
        lists (an add, a hand-back or a retry pushes a token), no later than the next
        SCHEDULED job falls due.
        """
        client = self._require()
        if not queues:
            await anyio.sleep(max(timeout, 0.0))
            return
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            pipe.zcard(self._key("ready", queue))
            pipe.zrange(self._key("sched", queue), 0, 0, withscores=True)
        with self._reachable(client):
            replies = await pipe.execute()
        if any(replies[0::2]):
            return
        dues = [first[0][1] for first in replies[1::2] if first]
        if dues:
            # A little after the due time, so the claim that follows finds it ready.
            timeout = min(timeout, (min(dues) - _now_us()) / 1_000_000 + 0.001)
        if timeout <= 0:
            return
        # BLPOP's timeout 0 would mean "forever".
        wake_keys = [self._key("wake", q) for q in queues]
        with self._reachable(client):
            await client.blpop(wake_keys, timeout=max(timeout, 0.01))

    # -- events -------------------------------------------------------------------------

    async def set_progress(self, owner: str, progress: Mapping[str, dict[str, Any]]) -> None:
        """Set the progress of jobs RUNNING under ``owner``'s lease, in one script that also
        publishes a PROGRESS event for each."""
        if not progress:
            self._require()
            return
        batch = [[id, _dumps(value)] for id, value in progress.items()]
        await self._run("progress", [owner, _now_us(), _dumps(batch)])

    # -- worker registry ------------------------------------------------------------------

    async def record_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a serving worker's registry entry (a field of one hash)."""
        await self._require().hset(self._key("workers"), info.id, info.to_json())

    async def workers(self) -> builtins.list[WorkerInfo]:
        """Return every registered worker, by ``started_at``."""
        raw = await self._require().hvals(self._key("workers"))
        found = [WorkerInfo.from_json(value) for value in raw]
        return sorted(found, key=lambda w: (w.started_at, w.id))

    async def remove_worker(self, id: str) -> None:
        """Delete a worker's registry entry."""
        await self._require().hdel(self._key("workers"), id)

    @contextlib.asynccontextmanager
    async def events(
        self,
        *,
        kinds: Iterable[JobEventKind] | None = None,
        queues: Iterable[str] | None = None,
        buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> AsyncIterator[EventStream]:
        """Subscribe to job events (see :meth:`work.stores.Store.events`).

        Every script that changes jobs ``PUBLISH``es its events, in the order it made them,
        to ``{prefix}:events``; one pub/sub connection per store object reads them while
        anything is subscribed (entering waits for Redis to confirm the subscription). If
        that connection breaks, subscribers get a LOST event (``lost == 0``) and the next
        subscription connects again.

        Raises:
            RedisUnavailableError: the server cannot be reached.
        """
        kind_set, queue_set = check_event_filters(kinds, queues)
        client = self._require()
        stream = self._hub.open(kinds=kind_set, queues=queue_set, buffer=buffer)
        try:
            async with self._events_lock:
                self._events_users += 1
                if self._events_linger is not None:
                    self._events_linger.cancel()
                    self._events_linger = None
                if self._events_reader is None or self._events_reader.done():
                    await self._start_events(client)
            yield stream
        finally:
            stream.close()
            with anyio.CancelScope(shield=True):
                async with self._events_lock:
                    self._events_users -= 1
                    if self._events_users == 0:
                        self._linger_events()

    async def _start_events(self, client: aioredis.Redis) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._key("events"))
            # Subscribed only once Redis confirms it: from then on nothing is missed.
            with anyio.fail_after(10):
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
        except _CONNECT_ERRORS as exc:
            await pubsub.aclose()
            raise self._unavailable(client, exc) from exc
        except BaseException:
            await pubsub.aclose()
            raise
        self._events_pubsub = pubsub
        # The store owns this task: it is cancelled and awaited when the last subscriber
        # leaves or the store closes (redis-py's pub/sub is asyncio-only, like the store).
        self._events_reader = asyncio.get_running_loop().create_task(
            self._read_events(pubsub), name=f"anywork redis events {self.prefix}"
        )

    async def _read_events(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message["type"] != "message":
                    continue
                try:
                    batch = json.loads(message["data"])
                    events = [
                        event_from_values(
                            k, i, q, h, st, a, int(at) / 1_000_000, json.loads(p) if p else None
                        )
                        for k, i, q, h, st, a, at, p in batch
                    ]
                except (ValueError, TypeError):
                    self._hub.lose(1)
                    continue
                self._hub.publish(events)
        except Exception:
            self._hub.lose()  # the connection broke: what came meanwhile is unknown

    def _linger_events(self) -> None:
        """The last subscriber left: keep the connection a second for the next one (back to
        back ``Queue.wait`` calls share it), then close it unless someone subscribed."""
        if self._events_linger is not None:
            self._events_linger.cancel()
        loop = asyncio.get_running_loop()
        self._events_linger = loop.call_later(_EVENTS_LINGER, self._events_idle)

    def _events_idle(self) -> None:
        self._events_linger = None
        task = asyncio.get_running_loop().create_task(self._close_idle_events())
        # Kept until done (the store owns it; closing the store closes the connection anyway).
        self._events_closers.add(task)
        task.add_done_callback(self._events_closers.discard)

    async def _close_idle_events(self) -> None:
        async with self._events_lock:
            if self._events_users == 0:
                await self._stop_events()

    async def _stop_events(self) -> None:
        if self._events_linger is not None:
            self._events_linger.cancel()
            self._events_linger = None
        reader, self._events_reader = self._events_reader, None
        pubsub, self._events_pubsub = self._events_pubsub, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- schedules ------------------------------------------------------------------------

    async def get_schedule(self, id: str) -> ScheduleRow | None:
        """Return the schedule's row, or None."""
        fields = await self._require().hgetall(self._key("schedule", id))
        return _schedule_from_hash(fields) if fields else None

    async def list_schedules(
        self,
        *,
        prefix: str | None = None,
        enabled: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[ScheduleRow]:
        """Return up to ``limit`` schedules ordered by id (byte-wise, ``ZRANGEBYLEX``); see
        :meth:`work.stores.Store.list_schedules`."""
        client = self._require()
        low = "-"
        if prefix:
            low = "[" + prefix
        if after is not None and (not prefix or after >= prefix):
            low = "(" + after
        high = "[" + prefix + "\xff" if prefix else "+"
        out: list[ScheduleRow] = []
        while len(out) < limit:
            ids = cast(
                "list[bytes]",
                await client.zrangebylex(
                    self._key("schedules"), low, high, start=0, num=_LIST_CHUNK
                ),
            )
            if not ids:
                break
            pipe = client.pipeline(transaction=False)
            for raw_id in ids:
                pipe.hgetall(self._key("schedule", raw_id.decode()))
            for fields in await pipe.execute():
                if not fields:
                    continue
                row = _schedule_from_hash(fields)
                if prefix and not row.id.startswith(prefix):
                    continue
                if enabled is None or row.enabled == enabled:
                    out.append(row)
                    if len(out) >= limit:
                        break
            low = "(" + ids[-1].decode()
        return out

    async def save_schedule(self, row: ScheduleRow, *, expected: int | None) -> bool:
        """Write ``row`` if the stored version is ``expected`` (None: only a new id), in one
        script."""
        expected_text = "" if expected is None else str(expected)
        return bool(
            await self._run("save_schedule", [row.id, expected_text, _schedule_fields(row)])
        )

    async def delete_schedule(self, id: str) -> bool:
        """Delete the schedule (its executions stay); False if it did not exist."""
        return bool(await self._run("delete_schedule", [id]))

    async def fire_schedules(self, now: datetime, plan: Plan, *, limit: int) -> list[Fired]:
        """Fire due schedules: one script picks them (hiding them from other schedulers for
        a few seconds), ``plan`` runs here, and one script applies each firing whose schedule
        still has the version planned from, adding its job (see
        :meth:`work.stores.Store.fire_schedules`)."""
        now_us = _us(now)
        until = now_us + int(_PICK_LEASE * 1_000_000)
        picked = json.loads(await self._run("pick", [now_us, limit, until]))
        if not picked:
            return []
        firings = [plan(_schedule_from_fields(fields)) for fields in picked]
        batch: list[list[Any]] = []
        for f in firings:
            job: Any = ""
            if f.job is not None:
                job = _add_args(f.job, now)[0]
            batch.append(
                [
                    f.schedule_id,
                    str(f.version),
                    _opt(str(_us(f.next_fire_at)) if f.next_fire_at is not None else None),
                    _opt(str(_us(f.last_fire_at)) if f.last_fire_at is not None else None),
                    "1" if f.exclusive else "0",
                    job,
                ]
            )
        reply = json.loads(await self._run("fire", [_WAKE_TOKENS, now_us, _dumps(batch)]))
        out: list[Fired] = []
        stored_at = _time(str(now_us))
        assert stored_at is not None
        for index, state in reply:
            firing = firings[index]
            record = None
            if state and firing.job is not None:
                # What the script stored, built here rather than read back: args through
                # JSON, times at the microsecond, a 409 record for an exclusive conflict.
                job = firing.job
                record = job.replace(
                    args=json.loads(_dumps(job.args)),
                    headers=dict(job.headers),
                    enqueued_at=_time(str(_us(job.enqueued_at or now))),
                    scheduled_for=_time(str(_us(job.scheduled_for)))
                    if job.scheduled_for is not None
                    else None,
                )
                if state == JobState.FAILED:
                    record = conflict_record(record, stored_at)
            out.append(Fired(firing, record))
        return out

    async def add_execution(self, record: JobRecord, *, exclusive: bool) -> JobRecord:
        """Add one execution off the schedule's cadence (409 if exclusive and one is
        unfinished), in one script."""
        values = _add_args(record, datetime.now(UTC))[0]
        raw = await self._run(
            "execution",
            [
                _WAKE_TOKENS,
                _now_us(),
                record.schedule_id or "",
                "1" if exclusive else "0",
                _dumps(values),
            ],
        )
        return _from_hash(raw)[0]

    async def executions(
        self,
        schedule_id: str,
        *,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobRecord]:
        """Return the schedule's jobs, newest first; ``before`` is the previous page's last
        id."""
        client = self._require()
        key = self._key("sexec", schedule_id)
        high = "+inf"
        if before is not None:
            seq = await client.zscore(key, before)
            if seq is None:
                return []
            high = f"({int(seq)}"
        out: list[JobRecord] = []
        while len(out) < limit:
            page = cast(
                "list[tuple[bytes, float]]",
                await client.zrevrangebyscore(
                    key, high, "-inf", start=0, num=_LIST_CHUNK, withscores=True
                ),
            )
            if not page:
                break
            pipe = client.pipeline(transaction=False)
            for id, _ in page:
                pipe.hgetall(self._key("job", id.decode()))
            for fields in await pipe.execute():
                if not fields:
                    continue
                rec = _from_hash(fields)[0]
                if state is None or rec.state == state:
                    out.append(rec)
                    if len(out) >= limit:
                        break
            high = f"({int(page[-1][1])}"
        return out

    async def next_schedule_due(self) -> datetime | None:
        """Return the earliest next fire of an enabled schedule, or None (a schedule another
        scheduler is firing right now counts at the end of its pick lease)."""
        first = await self._require().zrange(self._key("sdue"), 0, 0, withscores=True)
        return _time(str(int(first[0][1]))) if first else None

    # -- listing (last: the method named `list` shadows the builtin below it) -------

    async def _list_by_args(
        self, start: str, limit: int, wanted: Mapping[str, Any], filters: builtins.list[Any]
    ) -> builtins.list[JobRecord]:
        """``list(args=...)``: the ids a bounded Lua scan matched, a call at a time, then their
        records in one pipelined round trip per call."""
        client = self._require()
        script = self._scripts.get("list_by_args")
        if script is None:
            script = self._scripts["list_by_args"] = client.register_script(LIST_BY_ARGS_LUA)
        wanted_json = json.dumps(dict(wanted))
        extra = ["" if value is None else str(value) for value in filters]
        out: list[JobRecord] = []
        while len(out) < limit:
            found, last = await script(
                keys=[self._key("all")],
                args=[self._base, start, limit - len(out), ARGS_SCAN, wanted_json, *extra],
            )
            if found:
                pipe = client.pipeline(transaction=False)
                for id in found:
                    pipe.hgetall(self._key("job", id.decode()))
                out += [_from_hash(fields)[0] for fields in await pipe.execute() if fields]
            if not last:
                break
            start = f"({int(float(last))}"
        return out[:limit]

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        handler: str | None = None,
        limit: int = 100,
        after: str | None = None,
        schedule_id: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> list[JobRecord]:
        """Return up to ``limit`` records matching the filters, in enqueue order.

        ``after`` is the last id of the previous page; an id the store does not know gives an
        empty page. Filters are applied while walking the enqueue order, a chunk at a time.
        ``args`` is tested by a Lua script that examines at most ``ARGS_SCAN`` (1000) jobs a
        call, so one call never holds Redis for long; the store calls it again from where it
        stopped until the page is full or every job was examined.
        """
        wanted = check_args_filter(args)
        client = self._require()
        start = "-inf"
        if after is not None:
            seq = await client.hget(self._key("job", after), "seq")
            if seq is None:
                return []
            start = f"({int(seq)}"
        if wanted is not None:
            filters = [state, queue, handler, schedule_id]
            return await self._list_by_args(start, limit, wanted, filters)
        out: list[JobRecord] = []
        while len(out) < limit:
            page = cast(
                "list[tuple[bytes, float]]",
                await client.zrangebyscore(
                    self._key("all"), start, "+inf", start=0, num=_LIST_CHUNK, withscores=True
                ),
            )
            if not page:
                break
            pipe = client.pipeline(transaction=False)
            for id, _ in page:
                pipe.hgetall(self._key("job", id.decode()))
            for fields in await pipe.execute():
                if not fields:
                    continue
                rec = _from_hash(fields)[0]
                if (
                    (state is None or rec.state == state)
                    and (queue is None or rec.queue == queue)
                    and (handler is None or rec.handler == handler)
                    and (schedule_id is None or rec.schedule_id == schedule_id)
                ):
                    out.append(rec)
                    if len(out) >= limit:
                        break
            start = f"({int(page[-1][1])}"
        return out
