"""The HTTP-like status codes that say how one execution of a job ended."""

from __future__ import annotations

import http
from enum import IntEnum

__all__ = ["Status"]


class Status(IntEnum):
    """How one execution of a job ended, as an HTTP-like code.

    The handler sets it (or the worker does: 200 on return, 500 on an exception, 408 on a
    timeout, 499 on cancellation); adapters, retries, metrics, health and the stores all read it.
    """

    UNKNOWN = -1
    SUCCESS = 200
    ACCEPTED = 202
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    TIMEOUT = 408
    CONFLICT = 409
    UNPROCESSABLE = 422
    TOO_MANY_REQUESTS = 429
    NO_RESPONSE = 444
    CANCELLED = 499
    INTERNAL_ERROR = 500
    BAD_GATEWAY = 502
    UNAVAILABLE = 503
    GATEWAY_TIMEOUT = 504

    @classmethod
    def coerce(cls, value: Status | int) -> Status:
        """Return the member equal to ``value``.

        Raises:
            ValueError: ``value`` is not one of the codes above.
            TypeError: ``value`` is not an int (``bool`` is refused too).
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"a status must be a Status or an int, got {value!r} ({type(value).__name__})"
            )
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(str(int(s)) for s in cls)
            raise ValueError(f"{value!r} is not a known status code (known: {known})") from None

    @property
    def is_success(self) -> bool:
        """True for 2xx."""
        return 200 <= self < 300

    @property
    def is_retryable(self) -> bool:
        """True for 408, 429 and 5xx: the outcomes another attempt may change."""
        return self in (Status.TIMEOUT, Status.TOO_MANY_REQUESTS) or 500 <= self < 600

    @property
    def is_client_error(self) -> bool:
        """True for 4xx: the job itself was at fault (or, for 499, was cancelled)."""
        return 400 <= self < 500

    @property
    def phrase(self) -> str:
        """A short human reason, as HTTP's ("Not Found"); 444 and 499 have their own."""
        return _PHRASES[self]


def _phrase(status: Status) -> str:
    if status is Status.UNKNOWN:
        return "Unknown"
    if status is Status.NO_RESPONSE:
        return "No Response"
    if status is Status.CANCELLED:
        return "Cancelled"
    return http.HTTPStatus(int(status)).phrase


_PHRASES = {s: _phrase(s) for s in Status}
