"""Retry policies and backoff schedules, shared by the retry adapter and the durable stores."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .status import Status

__all__ = ["Backoff", "Constant", "Exponential", "Fibonacci", "RetryPolicy", "backoff_from_dict"]


@runtime_checkable
class Backoff(Protocol):
    """A backoff schedule: the pause in seconds after failed attempt N (1-based)."""

    def delay(self, attempt: int) -> float:
        """Return the pause after failed attempt ``attempt``."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (stores keep it with the job)."""
        ...


class Exponential:
    """``base * factor ** (attempt - 1)`` seconds, at most ``cap``; with ``jitter`` a random
    value between half of that and all of it ("equal jitter"), so retries of many jobs spread.

    Raises:
        ValueError: a negative base or cap, or a factor below 1.
    """

    __slots__ = ("base", "cap", "factor", "jitter")

    def __init__(
        self, base: float = 0.1, factor: float = 2.0, cap: float = 60.0, jitter: bool = True
    ) -> None:
        if base < 0 or cap < 0:
            raise ValueError(f"Exponential base and cap must be >= 0, got {base!r}, {cap!r}")
        if factor < 1:
            raise ValueError(f"Exponential factor must be >= 1, got {factor!r}")
        self.base, self.factor, self.cap = float(base), float(factor), float(cap)
        self.jitter = jitter

    def delay(self, attempt: int) -> float:
        """Return the pause after failed attempt ``attempt``."""
        exponent = max(attempt - 1, 0)
        try:
            raw = min(self.cap, self.base * self.factor**exponent)
        except OverflowError:
            # factor ** exponent left the float range: far past any cap (base 0 stays 0).
            raw = self.cap if self.base > 0 else 0.0
        if self.jitter:
            return raw / 2 + random.uniform(0, raw / 2)
        return raw

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description."""
        return {
            "kind": "exponential",
            "base": self.base,
            "factor": self.factor,
            "cap": self.cap,
            "jitter": self.jitter,
        }

    def __repr__(self) -> str:
        return (
            f"Exponential(base={self.base!r}, factor={self.factor!r}, cap={self.cap!r}, "
            f"jitter={self.jitter!r})"
        )


class Fibonacci:
    """1, 2, 3, 5, 8 … times ``unit`` seconds (machinery's sequence), at most ``cap``.

    Raises:
        ValueError: a unit that is not positive.
    """

    __slots__ = ("cap", "unit")

    def __init__(self, unit: float = 1.0, cap: float = 3600.0) -> None:
        if not unit > 0:
            raise ValueError(f"Fibonacci unit must be > 0, got {unit!r}")
        if cap < 0:
            raise ValueError(f"Fibonacci cap must be >= 0, got {cap!r}")
        self.unit, self.cap = float(unit), float(cap)

    def delay(self, attempt: int) -> float:
        """Return the pause after failed attempt ``attempt``."""
        a, b = 1, 2
        for _ in range(max(attempt - 1, 0)):
            a, b = b, a + b
            if a * self.unit >= self.cap:
                return self.cap
        return min(self.cap, a * self.unit)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description."""
        return {"kind": "fibonacci", "unit": self.unit, "cap": self.cap}

    def __repr__(self) -> str:
        return f"Fibonacci(unit={self.unit!r}, cap={self.cap!r})"


class Constant:
    """The same pause after every attempt.

    Raises:
        ValueError: a negative pause.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"Constant pause must be >= 0, got {seconds!r}")
        self.seconds = float(seconds)

    def delay(self, attempt: int) -> float:
        """Return the pause after failed attempt ``attempt`` (always ``seconds``)."""
        return self.seconds

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description."""
        return {"kind": "constant", "seconds": self.seconds}

    def __repr__(self) -> str:
        return f"Constant({self.seconds!r})"


def backoff_from_dict(data: dict[str, Any]) -> Backoff:
    """Rebuild a backoff from :meth:`Backoff.to_dict` output (as stores keep it).

    Raises:
        ValueError: an unknown ``kind``, or fields that kind does not take.
    """
    kind = data.get("kind")
    params = {k: v for k, v in data.items() if k != "kind"}
    kinds: dict[str, Callable[..., Backoff]] = {
        "exponential": Exponential,
        "fibonacci": Fibonacci,
        "constant": Constant,
    }
    factory = kinds.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ValueError(f"unknown backoff kind {kind!r} (known: exponential, fibonacci, constant)")
    try:
        return factory(**params)
    except TypeError as exc:
        # A stored description with a field this version does not know: say which.
        raise ValueError(f"cannot rebuild a {kind} backoff from {data!r}: {exc}") from None


_STORABLE = (Exponential, Fibonacci, Constant)


def _default_retry_on(status: Status) -> bool:
    return status.is_retryable


class RetryPolicy:
    """When and how often to try a job again.

    The same object drives in-process retries (the ``retry`` adapter) and durable retries
    (stores keep ``max_attempts``, the backoff and the set of statuses ``retry_on`` accepts).

    Args:
        max_attempts: attempts in all, the first included (>= 1).
        backoff: the pause schedule after each failed attempt.
        retry_on: which final statuses are worth another attempt (default: 408, 429, 5xx).
        max_deferrals: how many ``RetryLater`` may defer without using an attempt.

    Raises:
        TypeError: ``max_attempts`` or ``max_deferrals`` is not an int, or ``backoff`` is not
            a Backoff.
        ValueError: ``max_attempts`` < 1 or ``max_deferrals`` < 0.
    """

    __slots__ = ("backoff", "max_attempts", "max_deferrals", "retry_on")

    def __init__(
        self,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        retry_on: Callable[[Status], bool] = _default_retry_on,
        max_deferrals: int = 20,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {type(max_attempts).__name__}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if isinstance(max_deferrals, bool) or not isinstance(max_deferrals, int):
            raise TypeError(f"max_deferrals must be an int, got {type(max_deferrals).__name__}")
        if not isinstance(backoff, Backoff | None):
            raise TypeError(
                f"backoff must have delay() and to_dict() (a Backoff), got {type(backoff).__name__}"
            )
        if max_deferrals < 0:
            raise ValueError(f"max_deferrals must be >= 0, got {max_deferrals!r}")
        self.max_attempts = max_attempts
        self.backoff: Backoff = backoff if backoff is not None else Exponential()
        self.retry_on = retry_on
        self.max_deferrals = max_deferrals

    def delay(self, attempt: int) -> float:
        """Return the pause in seconds after failed attempt ``attempt`` (1-based)."""
        return self.backoff.delay(attempt)

    def should_retry(self, status: Status, attempt: int) -> bool:
        """True when ``status`` is retried and attempt ``attempt`` was not the last."""
        return attempt < self.max_attempts and self.retry_on(status)

    def retry_statuses(self) -> list[int]:
        """The codes ``retry_on`` accepts, evaluated on every Status (stores keep this list)."""
        return [int(s) for s in Status if s is not Status.UNKNOWN and self.retry_on(s)]

    def stored_settings(self) -> dict[str, Any]:
        """Return what a durable store keeps of the policy besides ``max_attempts``.

        A store rebuilds the backoff from its ``to_dict()`` on another worker, perhaps in
        another process, so only the built-in schedules (:class:`Exponential`,
        :class:`Fibonacci`, :class:`Constant`, exactly those classes) can be stored; the
        ``retry`` adapter takes any Backoff for in-process retries.

        Returns:
            ``{"backoff": ..., "retry_on": [codes], "max_deferrals": n}``.

        Raises:
            TypeError: the backoff is not one of the built-in schedules.
        """
        backoff = self.backoff
        if type(backoff) not in _STORABLE:
            raise TypeError(
                f"a durable job's RetryPolicy needs a built-in backoff (Exponential, Fibonacci "
                f"or Constant), which every worker can rebuild; got {backoff!r} "
                f"({type(backoff).__qualname__}). Custom backoffs work with the retry adapter."
            )
        return {
            "backoff": backoff.to_dict(),
            "retry_on": self.retry_statuses(),
            "max_deferrals": self.max_deferrals,
        }

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts!r}, backoff={self.backoff!r}, "
            f"max_deferrals={self.max_deferrals!r})"
        )
