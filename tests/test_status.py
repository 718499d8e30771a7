"""Tests for Status and the error tree."""

from __future__ import annotations

import http
import pickle

import pytest

from work import (
    Ctx,
    JobTimeoutError,
    RetryLater,
    Status,
    StatusError,
    UnknownHandlerError,
    WorkError,
)


def test_codes_match_the_contract() -> None:
    """Every contract code has its exact value."""
    expected = {
        "UNKNOWN": -1, "SUCCESS": 200, "ACCEPTED": 202, "BAD_REQUEST": 400, "UNAUTHORIZED": 401,
        "FORBIDDEN": 403, "NOT_FOUND": 404, "TIMEOUT": 408, "CONFLICT": 409,
        "TOO_MANY_REQUESTS": 429, "NO_RESPONSE": 444, "UNPROCESSABLE": 422, "CANCELLED": 499,
        "INTERNAL_ERROR": 500, "BAD_GATEWAY": 502, "UNAVAILABLE": 503, "GATEWAY_TIMEOUT": 504,
    }  # fmt: skip
    assert {name: int(Status[name]) for name in expected} == expected
    assert {s.name: int(s) for s in Status if s.name in expected} == expected


def test_every_http_code_is_a_member() -> None:
    """Every code http.HTTPStatus knows, plus 444 and 499, is a Status under HTTP's name too."""
    for code in http.HTTPStatus:
        assert int(Status(int(code))) == int(code)
        assert Status[code.name] is Status(int(code))
    assert {int(s) for s in Status} == {int(c) for c in http.HTTPStatus} | {-1, 444, 499}
    named = {"ACCEPTED": 202, "NO_CONTENT": 204, "IM_A_TEAPOT": 418, "OK": 200}
    assert {name: int(Status[name]) for name in named} == named
    assert Status["OK"] is Status(200) and Status(200).name == "SUCCESS"


def test_ctx_status_accepts_members_and_equal_ints_only() -> None:
    """ctx.status stores an int as its member; an unknown code is a ValueError naming it."""
    ctx = Ctx("j")
    ctx.status = 418
    assert ctx.status is Status.IM_A_TEAPOT
    ctx.status = Status.NO_CONTENT
    assert ctx.status is Status.NO_CONTENT
    for bad in (299, 600, 0, 99):
        with pytest.raises(ValueError, match=str(bad)):
            ctx.status = bad
    assert ctx.status is Status.NO_CONTENT


def test_status_error_refuses_unknown() -> None:
    """StatusError(-1) is refused: UNKNOWN is not how an execution ends."""
    with pytest.raises(ValueError, match="UNKNOWN"):
        StatusError(-1)
    with pytest.raises(ValueError, match="UNKNOWN"):
        StatusError(Status.UNKNOWN)


def test_is_error() -> None:
    """is_error is 4xx and 5xx."""
    assert [
        s for s in (Status.UNKNOWN, Status.CONTINUE, Status.SUCCESS, Status.FOUND) if s.is_error
    ] == []
    assert Status.BAD_REQUEST.is_error and Status.CANCELLED.is_error
    assert Status.NETWORK_AUTHENTICATION_REQUIRED.is_error


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
    assert Status.coerce(418) is Status.IM_A_TEAPOT
    with pytest.raises(ValueError, match="419"):
        Status.coerce(419)
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


def test_errors_survive_pickling() -> None:
    """anywork's errors pickle by their own arguments (they travel back from worker processes)."""
    for err in (
        StatusError(409, "taken"),
        JobTimeoutError(2.5),
        RetryLater(3, "busy"),
        UnknownHandlerError("x", ["a", "b"]),
    ):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err)
    assert pickle.loads(pickle.dumps(StatusError(409, "taken"))).status is Status.CONFLICT
