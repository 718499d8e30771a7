"""RFC 9457 problem details: the one shape of every error the HTTP service answers."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

__all__ = ["PROBLEM_TYPE", "Problem", "field_errors", "problem_response"]

PROBLEM_TYPE = "about:blank"
"""RFC 9457's ``type`` for a problem that is only its HTTP status."""


class Problem(Exception):
    """Raise from a route to answer with ``application/problem+json``.

    Args:
        status: the HTTP status.
        detail: what went wrong, for a human.
        errors: on a 422, field -> message.
        headers: extra response headers (``WWW-Authenticate`` on a 401).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    status: int,
    detail: str,
    *,
    errors: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The problem+json response for ``status``."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE,
        "title": _title(status),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


def field_errors(exc: ValidationError, where: str) -> dict[str, str]:
    """pydantic's errors as ``{"body.field": message}`` (``where`` is "body" or "query")."""
    out: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in (where, *error["loc"]))
        out.setdefault(loc, str(error["msg"]))
    return out
