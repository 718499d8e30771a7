"""Bearer-token auth: every protected route compares the token in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request

from ._problems import Problem

__all__ = ["check_bearer", "parse_tokens"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def parse_tokens(text: str | None) -> list[str]:
    """Tokens from a comma-separated string (``ANYWORK_TOKENS``); blanks are dropped."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def check_bearer(request: Request, tokens: Sequence[bytes] | None) -> None:
    """Pass when the request carries one of ``tokens`` (None: auth is off).

    Raises:
        Problem: 401 with ``WWW-Authenticate: Bearer``.
    """
    if tokens is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Problem(401, "an Authorization: Bearer token is required", headers=_CHALLENGE)
    candidate = given.strip().encode()
    # Compare against every token, without stopping early, so timing says nothing about which.
    match = False
    for token in tokens:
        match |= hmac.compare_digest(candidate, token)
    if not match:
        raise Problem(401, "the bearer token is not valid", headers=_CHALLENGE)
