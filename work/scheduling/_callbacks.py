"""Callback tokens and ``handle_callback``: what ``POST /v1/callback/{id}/{token}`` does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio

from .._core.exceptions import JobStateError
from .._core.status import Status
from .._durable.deferred import complete_waiting, heartbeat_waiting
from ..stores._base import JobState

if TYPE_CHECKING:
    from ..stores._base import JobRecord, Store

__all__ = [
    "SECRET_SETTING",
    "callback_secret",
    "callback_token",
    "callback_url",
    "handle_callback",
]

SECRET_SETTING = "callback_secret"
"""The store setting holding the secret behind callback tokens (made once, kept)."""

_STATUSES = ("success", "failure", "heartbeat")
_TEXT_FIELDS = ("state", "summary", "correlation_id")
# A callback may arrive before the worker has stored the WAITING state of the execution it
# finishes (the service answered the webhook and called back at once): wait this long for it.
_RUNNING_GRACE = 5.0
_RUNNING_POLL = 0.05


async def callback_secret(store: Store) -> bytes:
    """The store's callback secret, made (32 random bytes) and stored on first use."""
    text = await store.setdefault_setting(SECRET_SETTING, secrets.token_urlsafe(32))
    return text.encode()


def _token(secret: bytes, execution_id: str) -> str:
    digest = hmac.new(secret, execution_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def callback_token(store: Store, execution_id: str) -> str:
    """The callback token of ``execution_id``: an HMAC-SHA256 of the id with the store's
    secret, URL-safe base64 (43 characters)."""
    return _token(await callback_secret(store), execution_id)


def callback_url(public_url: str, execution_id: str, token: str) -> str:
    """``{public_url}/v1/callback/{execution_id}/{token}``, the id percent-encoded (a
    schedule's execution id holds ``/``: ``service/name@20260101T000000Z``; a server decodes
    it back, so its route takes the id as a path: ``/v1/callback/{id:path}/{token}``)."""
    return f"{public_url.rstrip('/')}/v1/callback/{quote(execution_id, safe='@:')}/{token}"


def _check_body(body: object) -> dict[str, str]:
    """Field errors of a callback body (empty when it is good)."""
    if not isinstance(body, dict):
        return {"body": f"must be a JSON object, got {type(body).__name__}"}
    errors: dict[str, str] = {}
    status = body.get("status")
    if status not in _STATUSES:
        errors["status"] = f"must be one of {', '.join(_STATUSES)}, got {status!r}"
    for name in _TEXT_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = f"must be a string or null, got {type(value).__name__}"
    return errors


async def _settled_state(store: Store, execution_id: str) -> JobRecord | None:
    """The execution's record once it is no longer RUNNING (or after a grace period)."""
    with anyio.move_on_after(_RUNNING_GRACE):
        while True:
            record = await store.get(execution_id)
            if record is None or record.state is not JobState.RUNNING:
                return record
            await anyio.sleep(_RUNNING_POLL)
    return await store.get(execution_id)


def _gone(record: JobRecord) -> tuple[int, dict[str, Any]]:
    if record.state.is_final:
        return 410, {"error": f"execution {record.id!r} has already ended ({record.state})"}
    return 409, {"error": f"execution {record.id!r} is {record.state}, not waiting for a callback"}


async def handle_callback(
    store: Store, execution_id: str, token: str, body: object
) -> tuple[int, dict[str, Any]]:
    """Apply a service's callback to a WAITING execution, as ``POST
    /v1/callback/{execution_id}/{token}`` does, and return the HTTP status and JSON answer.

    - a wrong token or an unknown execution: 404 (the token is compared in constant time);
    - a bad body: 422 with ``{"error": ..., "fields": {name: why}}``;
    - an execution that has already ended: 410; one not waiting yet (still running after
      a few seconds, or a retry pending): 409;
    - ``success``: SUCCEEDED with result ``{state, summary, correlation_id}``, 200;
    - ``failure``: FAILED 500 with the summary as error (retried by the job's policy), 200;
    - ``heartbeat``: the deadline pushed one ttl from now, 200 with ``{"deadline": iso}``.

    Args:
        store: an entered store.
        execution_id: the execution (job) id from the URL.
        token: the token from the URL.
        body: the decoded JSON body.
    """
    not_found = 404, {"error": "no such execution, or a wrong token"}
    if not isinstance(execution_id, str) or not isinstance(token, str):
        return not_found
    expected = await callback_token(store, execution_id)
    if not hmac.compare_digest(expected.encode(), token.encode(errors="replace")):
        return not_found
    record = await store.get(execution_id)
    if record is None:
        return not_found
    errors = _check_body(body)
    if errors:
        return 422, {"error": "invalid callback body", "fields": errors}
    assert isinstance(body, dict)
    if record.state is JobState.RUNNING:
        record = await _settled_state(store, execution_id)
        if record is None:
            return not_found
    if record.state is not JobState.WAITING:
        return _gone(record)
    try:
        if body["status"] == "heartbeat":
            pushed = await heartbeat_waiting(store, execution_id)
            assert pushed.deadline is not None
            return 200, {"id": execution_id, "deadline": pushed.deadline.isoformat()}
        if body["status"] == "success":
            result = {name: body.get(name) for name in _TEXT_FIELDS}
            done = await complete_waiting(store, execution_id, result=result)
        else:
            summary = body.get("summary") or "the service reported a failure"
            done = await complete_waiting(
                store, execution_id, status=Status.INTERNAL_ERROR, error=summary
            )
    except JobStateError:
        # Another callback, a cancel or the deadline got there first.
        again = await store.get(execution_id)
        return _gone(again) if again is not None else not_found
    return 200, {"id": execution_id, "state": done.state.value, "status": int(done.status)}
