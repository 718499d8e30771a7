"""``Webhook`` and ``WebhookHandler``: a schedule's HTTP target, posted as the seed does."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._core.clock import clock_of
from .._core.deferred import Deferred
from .._core.exceptions import StatusError
from .._core.job import Job
from .._core.status import Status
from ._callbacks import callback_token, callback_url

if TYPE_CHECKING:
    from ..stores._base import JobRecord, Store

__all__ = [
    "BODY_LIMIT",
    "PUBLIC_URL_SETTING",
    "WEBHOOK_HANDLER",
    "Webhook",
    "WebhookHandler",
    "keep_public_url",
    "stored_public_url",
]

WEBHOOK_HANDLER = "anywork.webhook"
"""The handler name a Webhook's jobs run under."""

BODY_LIMIT = 64 * 1024
"""Bytes of a plain (``callback=False``) webhook's answer kept as the job's result."""


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class Webhook:
    """A schedule's target that POSTs JSON to ``url`` (the seed's webhook, see
    ``docs/schedules.md``), run by the ``anywork.webhook`` handler (:class:`WebhookHandler`).

    With ``callback=True`` a 2xx answer leaves the execution WAITING until the service calls
    its ``callback_url`` back (or heartbeats) within the schedule's ``ttl``; with
    ``callback=False`` a 2xx answer succeeds at once with the answer's body as result. Any
    other answer is a 502, a connection error or timeout a 503: both retried by the
    schedule's policy.

    Args:
        url: an absolute ``http://`` or ``https://`` URL.
        payload: a string sent as ``payload`` with every call (often JSON text).
        callback: wait for a callback (True) or finish on the answer (False).
        headers: extra HTTP headers for the POST.
        timeout: seconds the POST may take.
        queue: the queue the webhook's jobs go to.

    Raises:
        ValueError: a bad URL, timeout or queue; TypeError: a wrongly typed value.
    """

    __slots__ = ("callback", "headers", "payload", "queue", "timeout", "url")

    def __init__(
        self,
        url: str,
        *,
        payload: str = "",
        callback: bool = True,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        queue: str = "default",
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"Webhook url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Webhook url must be an absolute http(s) URL, got {url!r}")
        if not isinstance(payload, str):
            raise TypeError(f"Webhook payload must be a str, got {type(payload).__name__}")
        if not isinstance(callback, bool):
            raise TypeError(f"Webhook callback must be a bool, got {callback!r}")
        checked: dict[str, str] = {}
        for key, value in (headers or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"Webhook headers must map str to str, got {key!r}: {value!r}")
            checked[key] = value
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"Webhook queue must be a non-empty str, got {queue!r}")
        self.url = url
        self.payload = payload
        self.callback = callback
        self.headers = checked
        self.timeout = _positive(timeout, "Webhook timeout")
        self.queue = queue

    def __repr__(self) -> str:
        return f"Webhook({self.url!r}, callback={self.callback!r}, queue={self.queue!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Webhook):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # compared by value, holds a dict

    def to_dict(self) -> dict[str, Any]:
        """The webhook's settings as JSON-ready values (what a job's args carry)."""
        return {
            "url": self.url,
            "payload": self.payload,
            "callback": self.callback,
            "headers": dict(self.headers),
            "timeout": self.timeout,
            "queue": self.queue,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Webhook:
        """Rebuild a Webhook from :meth:`to_dict`'s output.

        Raises:
            ValueError, TypeError: as the constructor (a ``url`` missing is a ValueError).
        """
        if "url" not in data:
            raise ValueError("a webhook needs a url")
        return cls(
            data["url"],
            payload=data.get("payload", ""),
            callback=data.get("callback", True),
            headers=data.get("headers") or None,
            timeout=data.get("timeout", 10.0),
            queue=data.get("queue", "default"),
        )

    def job(
        self,
        *,
        id: str | None = None,
        ttl: float | None = None,
        schedule_id: str | None = None,
        schedule: str | None = None,
        scheduled_time: datetime | None = None,
    ) -> Job:
        """The job that calls this webhook once (what a schedule's fire enqueues).

        Args:
            id: the job id (a schedule's fire id).
            ttl: seconds to wait for the callback (required with ``callback=True``).
            schedule_id: the schedule's id (its part after the last ``/`` is ``job_name``).
            schedule: the schedule's expression, sent as ``schedule``.
            scheduled_time: when the fire was due (default: the job's enqueue time).

        Raises:
            ValueError: no ``ttl`` (or one <= 0) for a callback webhook.
        """
        if self.callback and ttl is None:
            raise ValueError(f"a callback webhook needs a ttl (seconds to wait): {self!r}")
        args: dict[str, Any] = self.to_dict()
        if ttl is not None:
            args["ttl"] = _positive(ttl, "ttl")
        if schedule_id is not None:
            args["schedule_id"] = schedule_id
        if schedule is not None:
            args["schedule"] = schedule
        if scheduled_time is not None:
            if scheduled_time.tzinfo is None:
                raise ValueError(f"scheduled_time must be aware, got {scheduled_time!r}")
            args["scheduled_time"] = scheduled_time.astimezone(UTC).isoformat()
        return Job(WEBHOOK_HANDLER, args, queue=self.queue, id=id)


PUBLIC_URL_SETTING = "public_url"
"""The store setting that keeps the public URL given to ``anywork worker``/``scheduler``/
``serve --public-url``, for the handlers of later processes started without one."""


def _check_public_url(public_url: str) -> str:
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public_url must be an absolute http(s) URL, got {public_url!r}")
    return public_url.rstrip("/")


async def keep_public_url(store: Store, public_url: str) -> str:
    """Keep ``public_url`` in the store's settings (replacing any) and return it, checked.

    Raises:
        ValueError: not an absolute http(s) URL.
    """
    url = _check_public_url(public_url)
    setter = getattr(store, "set_setting", None)
    if setter is not None:
        await setter(PUBLIC_URL_SETTING, url)
    else:  # a store of another package: the first URL kept stays
        await store.setdefault_setting(PUBLIC_URL_SETTING, url)
    return url


async def stored_public_url(store: Store) -> str | None:
    """The public URL kept in the store's settings, or None."""
    getter = getattr(store, "get_setting", None)
    if getter is None:
        return None
    value = await getter(PUBLIC_URL_SETTING)
    return value if isinstance(value, str) and value else None


class WebhookHandler:
    """The ``anywork.webhook`` handler: POSTs a :class:`Webhook` job's body and waits for the
    service's callback (see ``docs/schedules.md``)::

        worker.register("anywork.webhook", WebhookHandler(store, public_url="https://jobs.example"))

    Args:
        store: the store the worker serves (an entered one): it holds the callback secret and
            the executions the callbacks finish.
        public_url: the base URL at which ``anywork serve`` answers ``/v1/callback/…``; without
            it, the one kept in the store (``--public-url`` of ``anywork worker``,
            ``scheduler`` or ``serve``, read at each call) is used, and with neither a
            callback webhook fails 400 "no public URL for callbacks".
    """

    def __init__(self, store: Store, public_url: str | None = None) -> None:
        if public_url is not None:
            public_url = _check_public_url(public_url)
        self.store = store
        self.public_url = public_url

    def __repr__(self) -> str:
        return f"WebhookHandler({self.store!r}, public_url={self.public_url!r})"

    async def __call__(self, job: Job) -> Any:
        """POST the webhook of ``job`` and return ``Deferred(ttl)`` (callback) or the answer's
        body (no callback).

        Raises:
            StatusError: 400 for a bad job or no public URL, 502 for a non-2xx answer, 503
                when the service cannot be reached in time.
        """
        try:
            hook = Webhook.from_dict(job.args)
            ttl = _positive(job.args["ttl"], "ttl") if job.args.get("ttl") is not None else None
        except (TypeError, ValueError) as exc:
            raise StatusError(Status.BAD_REQUEST, f"bad webhook job: {exc}") from None
        record = await self.store.get(job.id)
        schedule_id = job.args.get("schedule_id") or getattr(record, "schedule_id", None)
        found = await _schedule_of(self.store, schedule_id)
        if ttl is None and found is not None:
            ttl = getattr(found.schedule, "ttl", None)
        if hook.callback and ttl is None:
            raise StatusError(Status.BAD_REQUEST, "a callback webhook needs a ttl")
        public_url = self.public_url
        if hook.callback and public_url is None:
            public_url = await stored_public_url(self.store)
        if hook.callback and public_url is None:
            raise StatusError(Status.BAD_REQUEST, "no public URL for callbacks")
        body = await self._body(job, hook, record, ttl, schedule_id, found, public_url)
        answer = await _post(hook, body)
        if not 200 <= answer[0] < 300:
            raise StatusError(
                Status.BAD_GATEWAY, f"webhook {hook.url} answered {answer[0]}, not 2xx"
            )
        if hook.callback:
            assert ttl is not None
            return Deferred(ttl, result={"status_code": answer[0]})
        return answer[1]

    async def _body(
        self,
        job: Job,
        hook: Webhook,
        record: JobRecord | None,
        ttl: float | None,
        schedule_id: str | None,
        found: Any,
        public_url: str | None,
    ) -> dict[str, Any]:
        scheduled = _parse_time(job.args.get("scheduled_time"))
        if scheduled is None and record is not None:
            scheduled = record.scheduled_for or record.enqueued_at
        now = clock_of(self.store).now()  # the store's clock (a VirtualClock in tests)
        if scheduled is None:
            scheduled = now
        expression = job.args.get("schedule")
        if expression is None and found is not None:
            expression = getattr(found.schedule, "expression", None)
        latency_ms = max(_ms(now) - _ms(scheduled), 0)
        url = None
        if hook.callback and public_url is not None:
            token = await callback_token(self.store, job.id)
            url = callback_url(public_url, job.id, token)
        last = getattr(found, "last_success", None) if found is not None else None
        return {
            "callback_url": url,
            "job_name": (schedule_id or job.id).rsplit("/", 1)[-1],
            "schedule": expression,
            "scheduled_time": _iso(scheduled),
            "scheduled_time_ms": _ms(scheduled),
            "invocation_latency_ms": latency_ms,
            "invocation_latency_pct": (
                round(latency_ms / (ttl * 1000) * 100, 1) if ttl is not None else None
            ),
            "payload": hook.payload,
            "last_successful_execution": _last_success(last),
        }


def _last_success(record: Any) -> dict[str, Any] | None:
    """The seed's ``last_successful_execution`` for a schedule's last SUCCEEDED execution."""
    if record is None:
        return None
    scheduled = record.scheduled_for or record.enqueued_at
    started = record.started_at or scheduled
    result = record.result if isinstance(record.result, dict) else {}
    return {
        "name": record.id,
        "scheduled_time": _iso(scheduled) if scheduled is not None else None,
        "scheduled_time_ms": _ms(scheduled) if scheduled is not None else None,
        "service_invoked_at_ms": _ms(started) if started is not None else None,
        "state": result.get("state"),
        "status": "success",
        "summary": result.get("summary"),
    }


async def _schedule_of(store: Store, schedule_id: object) -> Any:
    """The ScheduleRecord of ``schedule_id`` when the schedules feature is there, else None."""
    if not isinstance(schedule_id, str):
        return None
    # Looked up by name: schedules (work.scheduling.Schedules) are another module's feature,
    # and a webhook job enqueued by hand works without them.
    schedules = getattr(importlib.import_module("work.scheduling"), "Schedules", None)
    if schedules is None:
        return None
    try:
        return await schedules(store).get(schedule_id)
    except (LookupError, TypeError, ValueError, AttributeError, NotImplementedError):
        return None


async def _post(hook: Webhook, body: dict[str, Any]) -> tuple[int, str]:
    """POST ``body`` to the webhook; return its status and (at most 64 KiB of) its body.

    Raises:
        StatusError: 503 when the service cannot be reached or does not answer in time.
    """
    # httpx belongs to the `webhooks` extra: imported where a webhook is called, so that
    # `import work` does not need it.
    import httpx

    try:
        async with (
            httpx.AsyncClient(timeout=hook.timeout, follow_redirects=False) as client,
            client.stream("POST", hook.url, json=body, headers=hook.headers) as response,
        ):
            chunks: list[bytes] = []
            size = 0
            # Read to the end (breaking out would leave httpx's generators unclosed) but keep
            # only the first BODY_LIMIT bytes: memory stays bounded, the timeout bounds time.
            async for chunk in response.aiter_bytes():
                if size < BODY_LIMIT:
                    chunks.append(chunk)
                    size += len(chunk)
            text = b"".join(chunks)[:BODY_LIMIT].decode("utf-8", errors="replace")
            return response.status_code, text
    except httpx.TimeoutException as exc:
        raise StatusError(
            Status.UNAVAILABLE, f"webhook {hook.url} did not answer within {hook.timeout:g}s"
        ) from exc
    except httpx.TransportError as exc:
        raise StatusError(
            Status.UNAVAILABLE, f"webhook {hook.url} unreachable: {type(exc).__name__}: {exc}"
        ) from exc
