"""``POST /v1/callback/{id}/{token}``: a called service reports on a webhook execution
(success, failure, heartbeat), authenticated by the execution's HMAC token, not a bearer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..scheduling import handle_callback
from ._problems import Problem
from ._routing import Call, Endpoint, json_response

__all__ = ["ENDPOINTS", "CallbackIn", "CallbackOut"]


class CallbackIn(BaseModel):
    """serverless-job-manager's callback body."""

    model_config = ConfigDict(extra="allow")

    status: Literal["success", "failure", "heartbeat"]
    state: str | None = None
    summary: str | None = None
    correlation_id: str | None = None


class CallbackOut(BaseModel):
    """The execution after the callback: its new state and status, or (heartbeat) its new
    deadline."""

    id: str
    state: str | None = None
    status: int | None = None
    deadline: str | None = Field(None, description="ISO 8601 UTC (heartbeat)")


async def _callback(call: Call) -> Response:
    # handle_callback checks the token first (a bad token is 404 whatever the body), then
    # the body: the route hands it the decoded JSON as it came.
    await call.service.ensure_secret()
    status, answer = await handle_callback(
        call.service.store, call.path["id"], call.path["token"], call.body
    )
    if status != 200:
        fields: dict[str, Any] | None = answer.get("fields")
        errors = {f"body.{k}": str(v) for k, v in fields.items()} if fields else None
        raise Problem(status, str(answer.get("error", "")), errors=errors)
    deadline = answer.get("deadline")
    if isinstance(deadline, str):
        answer["deadline"] = deadline.replace("+00:00", "Z")
    return json_response(answer)


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v1/callback/{id}/{token}",
        _callback,
        "A webhook's callback: success, failure or heartbeat (HMAC token in the URL)",
        response=CallbackOut,
        body=CallbackIn,
        auth=False,
        errors=(404, 409, 410),
        tag="callbacks",
        raw_body=True,
    ),
]
