"""Queue statistics (with unserved handlers flagged) and the worker registry's listing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from starlette.responses import Response

from ..stores import JobState, WorkerInfo
from ._routing import Call, Endpoint, json_response
from ._schemas import QueueList, WorkerList, worker_json

__all__ = ["ENDPOINTS", "unserved"]

# How many queued jobs per queue are read to find handlers no live worker has.
_UNSERVED_SCAN = 1000


async def unserved(call: Call, queue: str, workers: list[WorkerInfo]) -> dict[str, int]:
    """Handler -> queued jobs of ``queue`` (among the first ``_UNSERVED_SCAN``) that no live
    registered worker serving ``queue`` has."""
    served: set[str] = set()
    for info in workers:
        if queue in info.queues:
            served.update(info.handlers)
    queued = await call.service.queue.list(state=JobState.QUEUED, queue=queue, limit=_UNSERVED_SCAN)
    counts = Counter(r.handler for r in queued if r.handler not in served)
    return dict(counts)


async def _queues(call: Call) -> Response:
    stats = await call.service.queue.stats()
    now = datetime.now(UTC)
    live = [w for w in await call.service.queue.workers() if not w.is_lost(now)]
    items = []
    for name in sorted(stats):
        counts = {str(state): stats[name].get(str(state), 0) for state in JobState}
        lacking = await unserved(call, name, live) if counts.get("queued") else {}
        items.append(
            {
                "name": name,
                "counts": counts,
                "total": sum(stats[name].values()),
                "unserved": [{"handler": h, "queued": n} for h, n in sorted(lacking.items())],
            }
        )
    return json_response({"items": items, "next_cursor": None})


async def _workers(call: Call) -> Response:
    now = datetime.now(UTC)
    found = await call.service.queue.workers()
    return json_response({"items": [worker_json(w, now) for w in found], "next_cursor": None})


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/queues",
        _queues,
        "Job counts per queue and state; queued handlers no live worker has",
        response=QueueList,
        tag="queues",
    ),
    Endpoint(
        "GET",
        "/v1/workers",
        _workers,
        "Registered serving workers, live and lost",
        response=WorkerList,
        tag="workers",
    ),
]
