"""A connection of the Redis store's own for its most frequent call, the add script."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    TryAgainError,
)

__all__ = ["DirectScript", "DirectScriptSync", "bulk"]

# Replies that say the slot is served elsewhere (or not at the moment): the cluster client,
# which follows redirections and refreshes its slot map, takes the call instead.
REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _evalsha(sha: str, tag: str, nargs: int) -> bytes:
    """The packed start of ``EVALSHA sha 1 tag tag`` followed by ``nargs`` arguments."""
    return (
        b"*%d\r\n" % (5 + nargs)
        + bulk(b"EVALSHA")
        + bulk(sha.encode())
        + bulk(b"1")
        + bulk(tag.encode())
        + bulk(tag.encode())
    )


class _Direct:
    """What both halves keep: the client, the tag, the packed ``EVALSHA`` prefix, the
    argument count and the connection (None until the first call makes it).

    Args:
        client: the store's client (asyncio or synchronous, plain or cluster).
        sha: the script's SHA1 (hex).
        tag: the store's hash tag, sent as ``KEYS[1]`` and ``ARGV[1]``.
        nargs: how many arguments each call adds after the tag.
    """

    def __init__(self, client: Any, sha: str, tag: str, nargs: int) -> None:
        self._client = client
        self._tag = tag
        self._prefix = _evalsha(sha, tag, nargs)
        self._nargs = nargs
        self._conn: Any = None

    def _packed(self, args: Sequence[bytes]) -> bytes:
        """The whole command for ``args``.

        Raises:
            ValueError: not ``nargs`` arguments.
        """
        if len(args) != self._nargs:
            raise ValueError(f"expected {self._nargs} arguments, got {len(args)}")
        return self._prefix + b"".join(map(bulk, args))


class DirectScript(_Direct):
    """One script called over a connection of its own, packed and sent without redis-py's
    command machinery.

    A producer enqueueing one job at a time pays, per call of the client, the pool's acquire
    and release, the generic command packing (every argument encoded and its length
    formatted) and the execute path's retry and error wrapping: about twice the CPU of
    writing the packed command and reading the reply. This keeps one redis-py connection
    (so connecting, ``AUTH``, ``SELECT``, TLS and RESP3 stay redis-py's) out of the pool,
    packs ``EVALSHA sha 1 {tag} {tag}`` once, and per call writes that prefix and the
    call's own arguments and reads the reply with the connection's parser.

    It serves one call at a time: :attr:`busy` is True while one is in flight, and the
    caller then takes the client's pool as before (so concurrent adds still run on several
    connections). On a cluster the connection is to the primary of the tag's slot, taken
    again after a redirection.

    Args:
        client: the store's client (``redis.asyncio.Redis`` or ``RedisCluster``).
        sha: the script's SHA1 (hex).
        tag: the store's hash tag, sent as ``KEYS[1]`` and ``ARGV[1]``.
        nargs: how many arguments each call adds after the tag.
    """

    def __init__(self, client: Any, sha: str, tag: str, nargs: int) -> None:
        super().__init__(client, sha, tag, nargs)
        self.busy = False
        """True while a call is in flight (the caller then uses the client's pool)."""

    def _connection(self) -> Any:
        if self._conn is None:
            if isinstance(self._client, RedisCluster):
                node = self._client.get_node_from_key(self._tag)
                if node is None:  # the slot map has no primary for it at the moment
                    raise ClusterDownError(f"no node serves the slot of {self._tag}")
                self._conn = node.connection_class(**node.connection_kwargs)
            else:
                self._conn = self._client.connection_pool.make_connection()
        return self._conn

    async def call(self, args: Sequence[bytes]) -> Any:
        """Run the script with ``args`` (already encoded) and return its reply.

        Raises:
            RuntimeError: a call is already in flight (check :attr:`busy` first).
            ValueError: not ``nargs`` arguments.
            redis.exceptions.RedisError: as the client raises them (``NoScriptError``,
                a connection error, a redirection); after a connection error, a
                redirection or a cancellation the connection is closed and made again on
                the next call.
        """
        if self.busy:
            raise RuntimeError("DirectScript.call while a call is in flight")
        packed = self._packed(args)
        self.busy = True
        try:
            conn = self._connection()
            if not conn.is_connected:
                await conn.connect()
            writer = getattr(conn, "_writer", None)
            if writer is not None and not writer.transport.is_closing():
                # One write, no drain: the transport buffers it (a reply follows at once,
                # and the read below waits for it).
                writer.write(packed)
            else:
                await conn.send_packed_command(packed, check_health=False)
            # The parser raises a ResponseError reply, and closes the connection on a
            # connection error or a cancellation (a late reply would answer the next call).
            return await conn.read_response()
        except REDIRECTED:
            await self.reset()
            raise
        finally:
            self.busy = False

    async def reset(self) -> None:
        """Close the connection; the next call makes a new one (on a cluster, to the node
        now serving the slot)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def aclose(self) -> None:
        """Close the connection (the store is closing)."""
        await self.reset()


class DirectScriptSync(_Direct):
    """:class:`DirectScript` for redis-py's synchronous client (``Redis`` or
    ``RedisCluster``), called from any thread: the thread that finds the connection free
    uses it, the others (:meth:`call` answers None) take the client's pool.

    Args:
        client: a ``redis.Redis`` or ``redis.cluster.RedisCluster``.
        sha: the script's SHA1 (hex).
        tag: the store's hash tag, sent as ``KEYS[1]`` and ``ARGV[1]``.
        nargs: how many arguments each call adds after the tag.
    """

    def __init__(self, client: Any, sha: str, tag: str, nargs: int) -> None:
        super().__init__(client, sha, tag, nargs)
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        if self._conn is None:
            if isinstance(self._client, SyncRedisCluster):
                cluster: Any = self._client  # redis-py's sync cluster is untyped here
                node = cluster.get_node_from_key(self._tag)
                if node is None or node.redis_connection is None:
                    raise ClusterDownError(f"no node serves the slot of {self._tag}")
                pool = node.redis_connection.connection_pool
            else:
                pool = self._client.connection_pool
            self._conn = pool.make_connection()
        return self._conn

    def call(self, args: Sequence[bytes]) -> Any:
        """Run the script with ``args`` (already encoded) and return its reply, or
        :data:`BUSY` when another thread is using the connection.

        Raises:
            ValueError: not ``nargs`` arguments.
            redis.exceptions.RedisError: as the client raises them; after a connection
                error or a redirection the connection is closed and made again on the next
                call.
        """
        packed = self._packed(args)
        if not self._lock.acquire(blocking=False):
            return BUSY
        try:
            conn = self._connection()
            # The connection connects on first use and closes itself on an error or an
            # interruption while it waits for the reply (a late reply would answer the
            # next call).
            conn.send_packed_command([packed], False)
            return conn.read_response()
        except REDIRECTED:
            self._reset()
            raise
        finally:
            self._lock.release()

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()

    def reset(self) -> None:
        """Close the connection (the next call makes a new one), unless a call is using it."""
        if self._lock.acquire(blocking=False):
            try:
                self._reset()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Close the connection (the store is closing)."""
        with self._lock:
            self._reset()


BUSY: Any = object()
"""What :meth:`DirectScriptSync.call` answers when another thread holds the connection."""
