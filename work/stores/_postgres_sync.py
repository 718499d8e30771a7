"""The PostgreSQL store's blocking producer path: psycopg 3 connections on which
``PostgresStore.add_blocking`` runs ``add`` from a thread with no event loop (``SyncQueue``).

asyncpg has no synchronous API, so without this every ``SyncQueue.enqueue`` is a round trip
through the portal's event loop thread. psycopg is imported on first use only: ``import work``
and a worker never load it, and without it (or with connect options it cannot take) the store
answers None and ``SyncQueue`` goes through its portal as before.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["SyncConnections", "SyncFallback", "sync_connect_options"]

# A connection that could not be opened (the server down, a refused login): for this long
# add_blocking answers None at once, and SyncQueue's portal path reports the store's own
# error, instead of a second failed connect per call.
_RETRY_AFTER = 5.0

# asyncpg options that change nothing the synchronous connection does: the pool, its statement
# cache, rows built as asyncpg's records (the rows here are dicts) and the reset on release.
_IGNORED = frozenset(
    {
        "min_size",
        "max_size",
        "max_queries",
        "max_inactive_connection_lifetime",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "command_timeout",
        "record_class",
        "reset",
    }
)
# asyncpg options libpq takes under the same name (database as dbname).
_SAME = {
    "user": "user",
    "password": "password",
    "passfile": "passfile",
    "database": "dbname",
    "target_session_attrs": "target_session_attrs",
    "krbsrvname": "krbsrvname",
    "gsslib": "gsslib",
}
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


class SyncFallback(Exception):
    """Raised out of ``add`` when a psycopg call failed: ``add_blocking`` answers None and the
    caller runs ``add`` on the store's loop, which raises the store's own error or adds the
    jobs (safe to run again: the jobs the failed call stored are returned as existing)."""


def sync_connect_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The psycopg connect keywords for the store's asyncpg ``connect_options``, or None when
    one of them has no libpq equivalent (an ``ssl`` context, ``init``, ``server_settings``
    other than ``application_name`` …): the blocking path then stays off, rather than
    connecting differently from the pool."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name in _IGNORED or value is None:
            continue
        if name in _SAME and isinstance(value, str):
            out[_SAME[name]] = value
        elif name in ("host", "port") and isinstance(value, str | int):
            out[name] = str(value)
        elif name in ("host", "port") and isinstance(value, list | tuple):
            out[name] = ",".join(str(v) for v in value)
        elif name == "timeout" and isinstance(value, int | float):
            out["connect_timeout"] = str(max(2, math.ceil(value)))  # libpq's least is 2 s
        elif name == "ssl" and isinstance(value, bool):
            out["sslmode"] = "require" if value else "disable"
        elif name == "ssl" and value in _SSL_MODES:
            out["sslmode"] = value
        elif (
            name == "server_settings"
            and isinstance(value, Mapping)
            and set(value) <= {"application_name"}
        ):
            if "application_name" in value:
                out["application_name"] = str(value["application_name"])
        else:
            return None
    out.setdefault("connect_timeout", "60")  # asyncpg's default timeout
    return out


class SyncRunner:
    """The store's ``_Runner`` calls ``add`` makes (``fetch`` and ``execute``, with asyncpg's
    ``$n`` placeholders and answers) over one psycopg connection: coroutines that finish
    without suspending, so ``add_blocking`` runs ``add`` itself to its end in the calling
    thread. A psycopg error becomes :class:`SyncFallback`. One cursor serves every call (a
    new cursor per statement cost ~25 µs of CPU more)."""

    __slots__ = ("_cursor", "_error", "conn")

    def __init__(
        self, conn: psycopg.Connection[dict[str, Any]], error: type[psycopg.Error]
    ) -> None:
        self.conn = conn
        """The psycopg connection."""
        self._cursor = conn.cursor()
        self._error = error

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """The rows, as dicts with asyncpg's values (JSON as text, times in UTC)."""
        try:
            rows = self._cursor.execute(sql, args or None).fetchall()
        except self._error as exc:
            raise SyncFallback from exc
        for row in rows:
            for key, value in row.items():
                if isinstance(value, datetime) and value.tzinfo is not UTC:
                    row[key] = value.astimezone(UTC)  # asyncpg reads timestamptz as UTC
        return rows

    async def execute(self, sql: str, *args: Any) -> str:
        """The command status (``INSERT 0 1``), as asyncpg's ``execute`` returns it."""
        cursor = self._cursor
        try:
            cursor.execute(sql, args or None)
        except self._error as exc:
            raise SyncFallback from exc
        return cursor.statusmessage or ""


class SyncConnections:
    """psycopg connections for ``add_blocking``, one per calling thread at a time.

    A call takes an idle connection (or opens one), runs on it alone and gives it back, so
    threads sharing a ``SyncQueue`` add in parallel, each on a connection of its own while
    it needs one; at most ``keep`` idle connections are kept. A connection is in autocommit
    (each statement its own transaction, as asyncpg's calls outside a transaction) and, when
    ``prepare`` is False (``listen=False``, behind a transaction pooler), never prepares a
    named statement: no state outlives a statement. With parameters, psycopg sends a
    statement in one round trip either way (it does not ask the server for the types).

    Args:
        dsn: the store's URL without its anywork parameters (libpq reads it).
        options: :func:`sync_connect_options` of the store's connect options.
        prepare: let psycopg prepare statements it runs often (a direct connection).
        keep: idle connections kept at most.
    """

    def __init__(self, dsn: str, options: dict[str, Any], *, prepare: bool, keep: int) -> None:
        import psycopg
        from psycopg.adapt import AdaptersMap
        from psycopg.types.string import TextLoader

        self._dsn = dsn
        self._options = options
        self._prepare = prepare
        self._keep = keep
        self._idle: list[SyncRunner] = []
        self._idle_status = psycopg.pq.TransactionStatus.IDLE
        self._lock = threading.Lock()
        self._closed = False
        self._failed_at = -math.inf
        # JSON columns read as their text, as asyncpg reads them (decode_row parses it).
        self._adapters = AdaptersMap(psycopg.adapters)
        self._adapters.register_loader("jsonb", TextLoader)
        self._adapters.register_loader("json", TextLoader)

    @classmethod
    def make(
        cls, dsn: str, options: Mapping[str, Any], *, prepare: bool, keep: int
    ) -> SyncConnections | None:
        """The connections for a store, or None when psycopg is not installed or the
        store's options have no libpq equivalent."""
        sync_options = sync_connect_options(options)
        if sync_options is None:
            return None
        try:
            return cls(dsn, sync_options, prepare=prepare, keep=keep)
        except ImportError:
            return None

    def take(self) -> SyncRunner | None:
        """A :class:`SyncRunner` on a connection for the calling thread alone until
        :meth:`give_back`, or None when none can be opened now (the caller goes through the
        portal)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if time.monotonic() - self._failed_at < _RETRY_AFTER:
                return None
        import psycopg
        from psycopg.rows import dict_row

        try:
            conn: psycopg.Connection[dict[str, Any]] = psycopg.Connection.connect(
                self._dsn,
                autocommit=True,
                prepare_threshold=5 if self._prepare else None,
                row_factory=dict_row,
                cursor_factory=psycopg.RawCursor,  # asyncpg's $n placeholders: the same SQL
                context=self._adapters,
                **self._options,
            )
        except psycopg.ProgrammingError:
            self._failed_at = math.inf  # libpq cannot read the URL: never again
        except psycopg.Error:
            self._failed_at = time.monotonic()
        else:
            return SyncRunner(conn, psycopg.Error)
        return None

    def give_back(self, runner: SyncRunner, *, broken: bool = False) -> None:
        """Keep ``runner`` for the next call, or close its connection: ``broken`` (a call
        interrupted mid-statement, by KeyboardInterrupt …, leaves it in an unknown state),
        lost, or more than ``keep`` idle, or the store closed."""
        conn = runner.conn
        # A statement that failed in autocommit leaves the connection idle and usable.
        usable = not (broken or conn.closed or conn.broken)
        if usable and conn.info.transaction_status == self._idle_status:
            with self._lock:
                if not self._closed and len(self._idle) < self._keep:
                    self._idle.append(runner)
                    return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; one in use is closed when its call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.conn.close()
