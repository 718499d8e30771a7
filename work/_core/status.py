"""The HTTP-like status codes that say how one execution of a job ended."""

from __future__ import annotations

import http
from enum import IntEnum

__all__ = ["Status"]


class Status(IntEnum):
    """How one execution of a job ended, as an HTTP-like code.

    The handler sets it (or the worker does: 200 on return, 500 on an exception, 408 on a
    timeout, 499 on cancellation); adapters, retries, metrics, health and the stores all read it.

    Every code :class:`http.HTTPStatus` knows is a member (``Status.ACCEPTED``,
    ``Status.NO_CONTENT``, ``Status.IM_A_TEAPOT`` …), plus 444 (``NO_RESPONSE``: nothing to
    report) and 499 (``CANCELLED``), and ``UNKNOWN`` (-1) while an execution has not ended.
    A few codes have shorter names than HTTP's (``SUCCESS`` for 200, ``TIMEOUT`` for 408,
    ``UNAVAILABLE`` for 503 …); HTTP's spellings are aliases of them (``Status.OK is
    Status.SUCCESS``).
    """

    UNKNOWN = -1
    # 1xx: informational
    CONTINUE = 100
    SWITCHING_PROTOCOLS = 101
    PROCESSING = 102
    EARLY_HINTS = 103
    # 2xx: success
    SUCCESS = 200
    CREATED = 201
    ACCEPTED = 202
    NON_AUTHORITATIVE_INFORMATION = 203
    NO_CONTENT = 204
    RESET_CONTENT = 205
    PARTIAL_CONTENT = 206
    MULTI_STATUS = 207
    ALREADY_REPORTED = 208
    IM_USED = 226
    # 3xx: redirection
    MULTIPLE_CHOICES = 300
    MOVED_PERMANENTLY = 301
    FOUND = 302
    SEE_OTHER = 303
    NOT_MODIFIED = 304
    USE_PROXY = 305
    TEMPORARY_REDIRECT = 307
    PERMANENT_REDIRECT = 308
    # 4xx: the job itself was at fault (499: cancelled)
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    PAYMENT_REQUIRED = 402
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    NOT_ACCEPTABLE = 406
    PROXY_AUTHENTICATION_REQUIRED = 407
    TIMEOUT = 408
    CONFLICT = 409
    GONE = 410
    LENGTH_REQUIRED = 411
    PRECONDITION_FAILED = 412
    REQUEST_ENTITY_TOO_LARGE = 413
    REQUEST_URI_TOO_LONG = 414
    UNSUPPORTED_MEDIA_TYPE = 415
    REQUESTED_RANGE_NOT_SATISFIABLE = 416
    EXPECTATION_FAILED = 417
    IM_A_TEAPOT = 418
    MISDIRECTED_REQUEST = 421
    UNPROCESSABLE = 422
    LOCKED = 423
    FAILED_DEPENDENCY = 424
    TOO_EARLY = 425
    UPGRADE_REQUIRED = 426
    PRECONDITION_REQUIRED = 428
    TOO_MANY_REQUESTS = 429
    REQUEST_HEADER_FIELDS_TOO_LARGE = 431
    NO_RESPONSE = 444
    UNAVAILABLE_FOR_LEGAL_REASONS = 451
    CANCELLED = 499
    # 5xx: the worker or a dependency failed; another try may help
    INTERNAL_ERROR = 500
    NOT_IMPLEMENTED = 501
    BAD_GATEWAY = 502
    UNAVAILABLE = 503
    GATEWAY_TIMEOUT = 504
    HTTP_VERSION_NOT_SUPPORTED = 505
    VARIANT_ALSO_NEGOTIATES = 506
    INSUFFICIENT_STORAGE = 507
    LOOP_DETECTED = 508
    NOT_EXTENDED = 510
    NETWORK_AUTHENTICATION_REQUIRED = 511

    # The http.HTTPStatus spellings of the codes above that anywork names otherwise, so that
    # ``Status[http.HTTPStatus(code).name]`` always works (aliases: iteration skips them).
    OK = 200
    REQUEST_TIMEOUT = 408
    CONTENT_TOO_LARGE = 413
    URI_TOO_LONG = 414
    RANGE_NOT_SATISFIABLE = 416
    UNPROCESSABLE_ENTITY = 422
    UNPROCESSABLE_CONTENT = 422
    INTERNAL_SERVER_ERROR = 500
    SERVICE_UNAVAILABLE = 503

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
            raise ValueError(
                f"{value!r} is not a known status code (known: the codes of http.HTTPStatus, "
                f"444, 499 and -1 for UNKNOWN)"
            ) from None

    @property
    def is_success(self) -> bool:
        """True for 2xx."""
        return 200 <= self < 300

    @property
    def is_error(self) -> bool:
        """True for 4xx and 5xx: the codes a raised :class:`~work.StatusError` ends with."""
        return 400 <= self < 600

    @property
    def is_retryable(self) -> bool:
        """True for 408, 429 and 5xx: the outcomes another attempt may change."""
        return self in (Status.TIMEOUT, Status.TOO_MANY_REQUESTS) or 500 <= self < 600

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
