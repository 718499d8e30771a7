"""Tests for Status and the error tree."""

from __future__ import annotations

import pytest

from work import JobTimeoutError, RetryLater, Status, StatusError, UnknownHandlerError, WorkError


def test_codes_match_the_contract() -> None:
    """Every contract code has its exact value."""
    expected = {
        "UNKNOWN": -1, "SUCCESS": 200, "ACCEPTED": 202, "BAD_REQUEST": 400, "UNAUTHORIZED": 401,
        "FORBIDDEN": 403, "NOT_FOUND": 404, "TIMEOUT": 408, "CONFLICT": 409,
        "TOO_MANY_REQUESTS": 429, "NO_RESPONSE": 444, "UNPROCESSABLE": 422, "CANCELLED": 499,
        "INTERNAL_ERROR": 500, "BAD_GATEWAY": 502, "UNAVAILABLE": 503, "GATEWAY_TIMEOUT": 504,
    }  # fmt: skip
    assert {s.name: int(s) for s in Status} == expected


@pytest.mark.parametrize(
    ("status", "success", "retryable"),
    [
        (Status.SUCCESS, True, False),
        (Status.ACCEPTED, True, False),
        (Status.BAD_REQUEST, False, False),
        (Status.TIMEOUT, False, True),
        (Status.TOO_MANY_REQUESTS, False, True),
        (Status.NO_RESPONSE, False, False),
        (Status.CANCELLED, False, False),
        (Status.INTERNAL_ERROR, False, True),
        (Status.GATEWAY_TIMEOUT, False, True),
        (Status.UNKNOWN, False, False),
    ],
)
def test_success_and_retryable(status: Status, success: bool, retryable: bool) -> None:
    """is_success is 2xx; is_retryable is 408, 429 and 5xx."""
    assert status.is_success is success
    assert status.is_retryable is retryable


def test_coerce_accepts_members_and_equal_ints() -> None:
    """An int equal to a code becomes the member; others are refused with the value named."""
    assert Status.coerce(404) is Status.NOT_FOUND
    assert Status.coerce(Status.CONFLICT) is Status.CONFLICT
    with pytest.raises(ValueError, match="418"):
        Status.coerce(418)
    with pytest.raises(TypeError, match=r"got '200' \(str\)"):
        Status.coerce("200")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got True \(bool\)"):
        Status.coerce(True)


def test_phrases() -> None:
    """Phrases come from http.HTTPStatus; 444 and 499 have their own."""
    assert Status.NOT_FOUND.phrase == "Not Found"
    assert Status.NO_RESPONSE.phrase == "No Response"
    assert Status.CANCELLED.phrase == "Cancelled"


def test_error_tree() -> None:
    """All errors derive from WorkError, with the builtin bases the contract names."""
    assert issubclass(StatusError, WorkError)
    assert issubclass(JobTimeoutError, StatusError) and issubclass(JobTimeoutError, TimeoutError)
    assert issubclass(UnknownHandlerError, LookupError)
    assert issubclass(UnknownHandlerError, WorkError)
    assert issubclass(RetryLater, StatusError)


def test_status_error_message_defaults_to_phrase() -> None:
    """StatusError carries .status and a message naming the code."""
    err = StatusError(403)
    assert err.status is Status.FORBIDDEN
    assert str(err) == "403 Forbidden"
    assert StatusError(Status.CONFLICT, "taken").message == "taken"


def test_retry_later() -> None:
    """RetryLater is a 429 with a delay; a negative delay is refused."""
    err = RetryLater(2.5)
    assert err.status is Status.TOO_MANY_REQUESTS and err.delay == 2.5
    with pytest.raises(ValueError, match="-1"):
        RetryLater(-1)


def test_unknown_handler_lists_known() -> None:
    """UnknownHandlerError names the missing handler and the registered ones."""
    err = UnknownHandlerError("nope", ["b", "a"])
    assert "'nope'" in str(err) and "'a', 'b'" in str(err)
