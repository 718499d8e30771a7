"""``GET /v1/events``: job events as server-sent events (``event: <kind>``, ``data:`` JSON)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from .._durable.events import check_event_filters
from ._problems import Problem
from ._routing import Call, Endpoint
from ._schemas import EventQuery

__all__ = ["ENDPOINTS"]

# A comment line this often keeps proxies from closing an idle stream.
_KEEPALIVE = 15.0


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


async def _events(call: Call) -> Response:
    query: EventQuery = call.query
    kinds, queues = _split(query.kinds), _split(query.queues)
    try:
        check_event_filters(kinds, queues)
    except (TypeError, ValueError) as exc:
        raise Problem(422, str(exc), errors={"query": str(exc)}) from None
    queue = call.service.queue

    async def stream() -> AsyncIterator[str]:
        async with queue.events(kinds=kinds, queues=queues) as events:
            # The first line says the subscription holds: every change after it is sent.
            yield ": subscribed\n\n"
            while True:
                try:
                    event = await events.get(_KEEPALIVE)
                except StopAsyncIteration:
                    return
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                data = json.dumps(event.to_dict(), separators=(",", ":"))
                yield f"event: {event.kind}\ndata: {data}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/events",
        _events,
        "Job events as server-sent events: `event: <kind>`, `data:` the JobEvent as JSON",
        query=EventQuery,
        media="text/event-stream",
        tag="events",
    ),
]
