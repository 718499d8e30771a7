"""The limit adapter: caps how many executions run at once and how many start per period."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable
from typing import Any

import anyio

from work import Handler, Job, RetryLater

__all__ = ["Limit", "limit", "parse_rate"]

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+?)s?\s*$")

Key = Callable[[Job], Hashable]
"""``key(job) -> hashable``: which bucket an execution counts against."""


def parse_rate(rate: str) -> tuple[int, float]:
    """Parse a rate such as ``"100/s"``, ``"10/m"``, ``"5/h"``, ``"1/d"`` or ``"3/10s"``.

    Args:
        rate: ``<count>/<unit>`` or ``<count>/<number><unit>``; units ``s``, ``m``, ``h``,
            ``d`` (or ``sec``, ``min``, ``hour``, ``day``, ``second``, ``minute``).

    Returns:
        ``(count, period)``: at most ``count`` starts per ``period`` seconds.

    Raises:
        ValueError: the string is not a rate, or its count or period is not positive.
    """
    if not isinstance(rate, str):
        raise TypeError(f"rate must be a str such as '100/s', got {type(rate).__name__}")
    match = _RATE.match(rate.lower())
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"bad rate {rate!r}: expected '<count>/<unit>' such as '100/s', '10/m', '5/h'"
        )
    count, multiple = int(match.group(1)), match.group(2)
    try:
        period = (float(multiple) if multiple else 1.0) * unit
    except ValueError:
        raise ValueError(f"bad rate {rate!r}: {multiple!r} is not a number") from None
    if count < 1 or not period > 0:
        raise ValueError(f"bad rate {rate!r}: the count and the period must be positive")
    return count, period


class _Bucket:
    """What one key has used: tasks inside the limit (or waiting) and rate tokens left."""

    __slots__ = ("semaphore", "tokens", "updated", "users")

    def __init__(self, concurrency: int | None, tokens: float, now: float) -> None:
        # fast_acquire: no checkpoint when a slot is free (a cancelled waiter still leaves).
        self.semaphore = (
            anyio.Semaphore(concurrency, fast_acquire=True) if concurrency is not None else None
        )
        self.tokens = tokens
        self.updated = now
        self.users = 0


class Limit:
    """Adapter that limits executions per key: how many run at once, and how many start per period.

    ``concurrency`` caps the executions running at once; ``rate`` caps how many start per
    period, as a token bucket that holds ``count`` starts and refills at ``count / period``
    per second (so a burst of ``count`` may start at once after a quiet spell). Both are
    counted per ``key(job)`` (say ``lambda job: job.args["tenant"]``), or over all
    executions when ``key`` is None. A concurrency slot is taken first, then a start.

    Over the limit, with ``wait=True``, the execution waits its turn (in order of arrival);
    with ``wait=False`` it raises :class:`~work.RetryLater` at once, so the execution ends
    429 and a ``retry`` adapter outside, or a durable queue, tries again after its ``delay``:
    the time until a start is free, or ``retry_after`` when all concurrency slots are taken.

    The buckets of keys that have gone idle are dropped (at once for concurrency only, once
    their tokens have refilled for a rate), so many short-lived keys do not grow memory.
    One ``Limit`` belongs to one event loop (one Worker).

    Args:
        concurrency: the most executions running at once per key.
        rate: the most starts per period per key (``"100/s"``, ``"10/m"``, ``"5/h"``).
        key: ``key(job)`` picks the bucket; one bucket for all when None.
        wait: wait for room (True) or raise RetryLater (False).
        retry_after: the RetryLater delay when the concurrency is the limit, in seconds.
        clock: a monotonic clock in seconds for the rate (tests pass a fake one).

    Raises:
        ValueError: neither ``concurrency`` nor ``rate``, ``concurrency`` < 1, a bad rate
            string (the message names it), or a negative ``retry_after``.
    """

    __slots__ = (
        "_buckets",
        "_capacity",
        "_clock",
        "_next_sweep",
        "_period",
        "_refill",
        "concurrency",
        "key",
        "rate",
        "retry_after",
        "wait",
    )

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        rate: str | None = None,
        key: Key | None = None,
        wait: bool = True,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency is None and rate is None:
            raise ValueError("limit() needs concurrency=, rate= or both")
        if concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int):
                raise TypeError(f"concurrency must be an int, got {type(concurrency).__name__}")
            if concurrency < 1:
                raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after!r}")
        self.concurrency = concurrency
        self.rate = rate
        self.key = key
        self.wait = wait
        self.retry_after = float(retry_after)
        self._clock = clock
        if rate is not None:
            count, period = parse_rate(rate)
            self._capacity: float = float(count)
            self._refill = count / period
            self._period = period
        else:
            self._capacity, self._refill, self._period = 0.0, 0.0, 0.0
        self._buckets: dict[Hashable, _Bucket] = {}
        self._next_sweep = 0.0

    def _bucket(self, key: Hashable) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.concurrency, self._capacity, self._clock())
            self._buckets[key] = bucket
        return bucket

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        tokens = bucket.tokens + (now - bucket.updated) * self._refill
        return tokens if tokens < self._capacity else self._capacity

    def _take(self, bucket: _Bucket) -> float:
        """Reserve a start; return how long to wait for it (0 when one is free now)."""
        now = self._clock()
        tokens = self._refilled(bucket, now) - 1.0
        bucket.tokens, bucket.updated = tokens, now
        return -tokens / self._refill if tokens < 0 else 0.0

    def _release(self, key: Hashable, bucket: _Bucket) -> None:
        bucket.users -= 1
        if bucket.users == 0 and self.rate is None and self._buckets.get(key) is bucket:
            del self._buckets[key]
        if self.rate is not None:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        # A bucket nobody uses whose tokens are back to full is the same as a new one.
        self._next_sweep = now + self._period
        idle = [
            key
            for key, bucket in self._buckets.items()
            if bucket.users == 0 and self._refilled(bucket, now) >= self._capacity
        ]
        for key in idle:
            del self._buckets[key]

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so its executions are limited.

        Args:
            handler: the inner handler.

        Returns:
            The limited handler.
        """
        key_of = self.key
        has_rate = self.rate is not None
        wait = self.wait

        async def limited(job: Job) -> Any:
            key = key_of(job) if key_of is not None else None
            bucket = self._bucket(key)
            bucket.users += 1
            try:
                semaphore = bucket.semaphore
                if semaphore is not None:
                    if wait:
                        await semaphore.acquire()
                    else:
                        try:
                            semaphore.acquire_nowait()
                        except anyio.WouldBlock:
                            raise RetryLater(
                                self.retry_after,
                                f"{self.concurrency} executions already running for key {key!r}",
                            ) from None
                try:
                    if has_rate:
                        await self._start(bucket, key, wait)
                    return await handler(job)
                finally:
                    if semaphore is not None:
                        semaphore.release()
            finally:
                self._release(key, bucket)

        return limited

    async def _start(self, bucket: _Bucket, key: Hashable, wait: bool) -> None:
        if not wait:
            now = self._clock()
            tokens = self._refilled(bucket, now)
            if tokens < 1.0:
                delay = (1.0 - tokens) / self._refill
                raise RetryLater(delay, f"rate {self.rate} reached for key {key!r}")
            bucket.tokens, bucket.updated = tokens - 1.0, now
            return
        delay = self._take(bucket)
        if delay > 0:
            started = False
            try:
                await anyio.sleep(delay)
                started = True
            finally:
                if not started:
                    # Cancelled while waiting: the reserved start goes back to the bucket.
                    bucket.tokens += 1.0

    def __repr__(self) -> str:
        return (
            f"limit(concurrency={self.concurrency!r}, rate={self.rate!r}, key={self.key!r}, "
            f"wait={self.wait!r})"
        )


def limit(
    *,
    concurrency: int | None = None,
    rate: str | None = None,
    key: Key | None = None,
    wait: bool = True,
    retry_after: float = 1.0,
) -> Limit:
    """Return an adapter that limits concurrent executions and starts per period, per key.

    See :class:`Limit`.

    Args:
        concurrency: the most executions running at once per key.
        rate: the most starts per period per key (``"100/s"``, ``"10/m"``, ``"5/h"``).
        key: ``key(job)`` picks the bucket; one bucket for all when None.
        wait: wait for room (True) or raise RetryLater so the execution ends 429 (False).
        retry_after: the RetryLater delay when the concurrency is the limit, in seconds.

    Returns:
        The adapter.

    Raises:
        ValueError: neither limit given, ``concurrency`` < 1, or a bad rate string.
    """
    return Limit(concurrency=concurrency, rate=rate, key=key, wait=wait, retry_after=retry_after)
