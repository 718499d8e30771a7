"""The dashboard app: its routes, the login cookie and CSRF checks, and what each page shows."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ... import JobEvent, JobRecord, JobState, Queue
from ...abc import Store
from ...scheduling import Schedules

__all__ = ["create_dashboard"]

_HERE = Path(__file__).parent
COOKIE = "anywork_dashboard"
PAGE_SIZE = 50
# Queued jobs read per queue to find handlers no live worker has (as the API's /v1/queues).
UNSERVED_SCAN = 1000
_STATES = list(JobState)
_NO_MINUTES = [(0, 0)] * 60
_MESSAGES = {
    "cancelled": "Cancel requested.",
    "not-cancelled": "Not cancelled: the job had already finished.",
    "retried": "The job was queued again.",
    "not-retried": "Not retried: only a failed or cancelled job can run again.",
    "paused": "The schedule is disabled: it fires nothing until enabled.",
    "resumed": "The schedule is enabled again, from now.",
    "triggered": "One execution was started now.",
    "wf-cancelled": "The workflow was cancelled.",
    "wf-not-cancelled": "Not cancelled: the workflow had already ended.",
}
# The most steps a workflow page draws and looks up (a 10,000-member chord stays one page).
MAX_STEPS = 200


def utc(value: datetime | None) -> str:
    """Format an aware datetime in UTC as ``YYYY-MM-DD HH:MM:SS`` ("" for None)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def in_zone(value: datetime | None, zone: str) -> str:
    """Format an aware datetime as wall time in the IANA zone ``zone`` ("" for None)."""
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def _layout(kind: str, count: int) -> list[list[int]]:
    """Columns of step indexes for the graph: a chain's steps one after another, a group's
    side by side, a chord's header side by side and then its callback. (The record gives
    the top-level form only: a nested form is drawn as the steps' order.)"""
    if count == 0:
        return []
    if kind == "group":
        return [list(range(count))]
    if kind == "chord" and count > 1:
        return [list(range(count - 1)), [count - 1]]
    return [[i] for i in range(count)]


@dataclass(frozen=True)
class _Session:
    digest: str
    read_only: bool
    csrf: str


class _Auth:
    """Checks tokens at login and the session cookie afterwards (the cookie holds an HMAC of
    the token, never the token itself)."""

    def __init__(
        self, tokens: Iterable[str] | None, read_only: Iterable[str], secret: bytes
    ) -> None:
        self._key = secret
        self._sessions: dict[str, bool] = {}
        # No tokens at all (``anywork serve --insecure``, loopback only): no login either.
        self.open = tokens is None and not list(read_only)
        for token in tokens or ():
            self._sessions[self._mac("session", token)] = False
        for token in read_only:
            # A token given as both is read-only: the narrower grant wins.
            self._sessions[self._mac("session", token)] = True
        if not self._sessions and not self.open:
            raise ValueError(
                "the dashboard needs at least one token (tokens or read_only_tokens), "
                "or tokens=None for no login"
            )

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def _find(self, digest: str) -> bool | None:
        found: bool | None = None
        for known, read_only in self._sessions.items():
            # Every entry is compared, so the time taken does not say which one matched.
            if hmac.compare_digest(known, digest):
                found = read_only
        return found

    def login(self, token: str) -> str | None:
        digest = self._mac("session", token)
        return digest if self._find(digest) is not None else None

    def session(self, request: Request) -> _Session | None:
        if self.open:
            return _Session("open", False, self._mac("csrf", "open"))
        digest = request.cookies.get(COOKIE, "")
        read_only = self._find(digest) if digest else None
        if read_only is None:
            return None
        return _Session(digest, read_only, self._mac("csrf", digest))


@dataclass(frozen=True)
class _Snapshot:
    stats: dict[str, dict[str, int]]
    oldest: dict[str, JobRecord]
    unserved: dict[str, dict[str, int]]
    taken_at: datetime
    took: float
    # {queue: [(succeeded, failed)] * 60}: the store's finished jobs per minute, last hour.
    minutes: dict[str, list[tuple[int, int]]]


class _Counts:
    """The overview's counts and oldest queued jobs. Taken per request while that is cheap;
    once one take is slow (a store whose counts scan its history), taken in the background
    instead, at most every few times its own duration, and the page shows the last one with
    its age: viewers never wait for, nor multiply, a slow count."""

    SLOW = 0.05

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self.current: _Snapshot | None = None
        self.following = False  # True while the app's lifespan refreshes in the background

    @property
    def slow(self) -> bool:
        return self.current is not None and self.current.took >= self.SLOW

    async def take(self) -> _Snapshot:
        started = time.perf_counter()
        stats = await self._queue.stats()
        now = datetime.now(UTC)
        live = [info for info in await self._queue.workers() if not info.is_lost(now)]
        oldest: dict[str, JobRecord] = {}
        unserved: dict[str, dict[str, int]] = {}
        for name, by_state in stats.items():
            if not by_state.get(JobState.QUEUED.value):
                continue
            # The oldest queued jobs, and among them the handlers no live worker on this
            # queue has (as GET /v1/queues flags them).
            queued = await self._queue.list(state=JobState.QUEUED, queue=name, limit=UNSERVED_SCAN)
            if queued:
                oldest[name] = queued[0]
            served = {h for info in live if name in info.queues for h in info.handlers}
            lacking = Counter(r.handler for r in queued if r.handler not in served)
            if lacking:
                unserved[name] = dict(sorted(lacking.items()))
        minutes = await self._queue.finished_per_minute()
        took = time.perf_counter() - started
        snap = _Snapshot(stats, oldest, unserved, datetime.now(UTC), took, minutes)
        self.current = snap
        return snap

    async def refresh_forever(self) -> None:
        while True:
            if self.slow:
                # A failed count is retried next time; the page keeps the last one.
                with contextlib.suppress(Exception):
                    await self.take()
            took = self.current.took if self.current is not None else 0.0
            # A slow count runs at most a fifth of the time, and never more than every 2 s.
            await anyio.sleep(max(2.0, 5 * took))


def _chart(series: list[tuple[int, int]]) -> dict[str, Any]:
    """Bars for an inline SVG: succeeded above the axis, failed below, one per minute."""
    peak = max([max(s, f) for s, f in series] + [1])
    bars = []
    for i, (ok, failed) in enumerate(series):
        bars.append(
            {
                "x": i * 4,
                "ok": round(20 * ok / peak, 1),
                "failed": round(20 * failed / peak, 1),
            }
        )
    return {
        "bars": bars,
        "succeeded": sum(s for s, _ in series),
        "failed": sum(f for _, f in series),
    }


def _parse_search(text: str) -> dict[str, Any]:
    """``key=value`` pairs separated by spaces: the value as JSON when it parses (``n=3``,
    ``vip=true``, ``name="3"``), else as text (``tier=gold``)."""
    wanted: dict[str, Any] = {}
    for part in text.split():
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise ValueError(f"search terms are key=value, got {part!r}")
        try:
            wanted[key] = json.loads(raw)
        except ValueError:
            wanted[key] = raw
    return wanted


async def _form(request: Request) -> dict[str, str]:
    """The posted form's fields (urlencoded, as the pages send; no multipart library needed)."""
    body = await request.body()
    if len(body) > 65536:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _event_json(event: JobEvent) -> dict[str, Any]:
    return {
        "kind": str(event.kind),
        "job_id": event.job_id,
        "queue": event.queue,
        "handler": event.handler,
        "status": int(event.status),
        "attempt": event.attempt,
        "at": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "at_text": utc(event.at),
        "workflow_id": event.workflow_id,
        "schedule_id": event.schedule_id,
        "progress": event.progress,
        "lost": event.lost,
    }


def create_dashboard(
    store: Store,
    *,
    tokens: Iterable[str] | None,
    read_only_tokens: Iterable[str] = (),
    secret: bytes | str | None = None,
) -> Starlette:
    """Build the dashboard as a Starlette app, to serve alone or mount (``Mount("/", app)``).

    The pages read the store through :class:`work.Queue`, the overview chart included (the
    store's ``finished_per_minute``), so nothing is kept in memory and a restart loses no
    history. While the app's lifespan runs (a host app that mounts it enters
    ``app.router.lifespan_context``), a slow count is taken in the background.

    Args:
        store: an open store (the caller enters and leaves it).
        tokens: the API tokens that may log in with full rights; None (and no read-only
            token): no login at all, as ``anywork serve --insecure`` on loopback.
        read_only_tokens: tokens that may log in to look but not cancel, retry or trigger.
        secret: the key the session cookies are signed with (random when None, so a restart
            logs everyone out).

    Raises:
        ValueError: an empty ``tokens`` and no read-only token.
    """
    key = secret.encode() if isinstance(secret, str) else secret or secrets.token_bytes(32)
    auth = _Auth(None if tokens is None else list(tokens), list(read_only_tokens), key)
    queue = Queue(store)
    counts = _Counts(queue)
    schedules = Schedules(store)
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
    )
    env.filters["utc"] = utc
    env.filters["in_zone"] = in_zone
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
    env.filters["url"] = lambda value: quote(str(value), safe="")

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def render(
        request: Request, template: str, session: _Session, status: int = 200, **context: Any
    ) -> HTMLResponse:
        fragment = request.headers.get("x-dashboard-fragment") == "1"
        html = env.get_template(template).render(
            base=base(request),
            session=session,
            fragment=fragment,
            now=utc(datetime.now(UTC)),
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def to_login(request: Request) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        return RedirectResponse(f"{base(request)}/login?{urlencode({'next': target})}", 303)

    def same_origin(request: Request) -> bool:
        # SameSite=Strict keeps the cookie off cross-site requests; the Origin (or Referer)
        # check refuses them too, for browsers or proxies that do not honour it.
        source = request.headers.get("origin") or request.headers.get("referer")
        if source is None:
            return True
        return urlsplit(source).netloc == request.headers.get("host", "")

    def safe_next(request: Request, target: str) -> str:
        root = base(request)
        if target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
            return target
        return root + "/"

    # -- login ---------------------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        if auth.open:
            return RedirectResponse(f"{base(request)}/", 303)
        nxt = request.query_params.get("next", "")
        html = env.get_template("login.html").render(base=base(request), next=nxt, error=None)
        return HTMLResponse(html)

    async def login(request: Request) -> Response:
        form = await _form(request)
        token = str(form.get("token", ""))
        nxt = safe_next(request, str(form.get("next", "")))
        digest = auth.login(token) if same_origin(request) and token else None
        if digest is None:
            html = env.get_template("login.html").render(
                base=base(request), next=nxt, error="That token is not accepted."
            )
            return HTMLResponse(html, status_code=401)
        response = RedirectResponse(nxt, 303)
        response.set_cookie(
            COOKIE,
            digest,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=base(request) + "/",
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{base(request)}/login", 303)
        if same_origin(request):
            response.delete_cookie(COOKIE, path=base(request) + "/")
        return response

    # -- pages ---------------------------------------------------------------------------------

    async def overview(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        snap = counts.current
        if snap is None or not counts.slow or not counts.following:
            snap = await counts.take()
        queues = []
        for name in sorted(snap.stats):
            by_state = {state.value: snap.stats[name].get(state.value, 0) for state in _STATES}
            queues.append(
                {
                    "name": name,
                    "counts": by_state,
                    "total": sum(snap.stats[name].values()),
                    "oldest": snap.oldest.get(name),
                    "unserved": snap.unserved.get(name, {}),
                    "chart": _chart(snap.minutes.get(name, _NO_MINUTES)),
                }
            )
        return render(
            request,
            "overview.html",
            session,
            page="overview",
            queues=queues,
            states=[s.value for s in _STATES],
            snapshot=snap if counts.slow and counts.following else None,
        )

    async def workers(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        now = datetime.now(UTC)
        found = await queue.workers()
        # Live ones first, each group oldest first.
        ordered = sorted(found, key=lambda info: (info.is_lost(now), info.started_at))
        rows = [{"info": info, "lost": info.is_lost(now)} for info in ordered]
        return render(request, "workers.html", session, page="workers", workers=rows)

    async def schedules_page(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        after = request.query_params.get("after") or None
        page = await schedules.list(limit=PAGE_SIZE + 1, after=after)
        shown = page[:PAGE_SIZE]
        next_cursor = shown[-1].schedule.id if len(page) > PAGE_SIZE else None
        return render(
            request,
            "schedules.html",
            session,
            page="schedules",
            schedules=shown,
            next_url=f"?{urlencode({'after': next_cursor})}" if next_cursor else None,
            first_url="?" if after else None,
        )

    async def schedule_page(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        schedule_id = request.path_params["id"]
        record = await schedules.get(schedule_id)
        if record is None:
            return render(
                request, "missing.html", session, status=404, page="schedules", id=schedule_id
            )
        sched = record.schedule
        now = datetime.now(UTC)
        anchor = record.anchor or sched.start_at or now
        fires: list[datetime] = []
        when: datetime | None = now
        while len(fires) < 5 and when is not None:
            when = sched.next_after(when, anchor=anchor)
            if when is not None:
                fires.append(when)
        runs = await schedules.executions(schedule_id, limit=20)
        executions = []
        for job in runs:
            # From when it was due (a manual trigger's: when it was made) to its start.
            due = job.scheduled_for or job.enqueued_at
            latency = None
            if job.started_at is not None and due is not None:
                latency = (job.started_at - due).total_seconds()
            executions.append({"job": job, "latency": latency})
        return render(
            request,
            "schedule.html",
            session,
            page="schedules",
            record=record,
            schedule=sched,
            fires=fires,
            executions=executions,
            message=_MESSAGES.get(request.query_params.get("msg", "")),
        )

    async def workflows_page(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        state = request.query_params.get("state", "").strip()
        after = request.query_params.get("after") or None
        error = None
        shown: list[Any] = []
        next_cursor = None
        try:
            page = await queue.list_workflows(state=state or None, limit=PAGE_SIZE + 1, after=after)
            shown = page[:PAGE_SIZE]
            next_cursor = shown[-1].id if len(page) > PAGE_SIZE else None
        except ValueError as exc:
            error = str(exc)
        query = {"state": state} if state else {}
        return render(
            request,
            "workflows.html",
            session,
            status=400 if error else 200,
            page="workflows",
            workflows=shown,
            state=state,
            states=["running", "succeeded", "failed", "cancelled"],
            error=error,
            next_url=f"?{urlencode({**query, 'after': next_cursor})}" if next_cursor else None,
            first_url=f"?{urlencode(query)}" if after else None,
        )

    async def workflow_page(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        workflow_id = request.path_params["id"]
        record = await queue.get_workflow(workflow_id)
        if record is None:
            return render(
                request, "missing.html", session, status=404, page="workflows", id=workflow_id
            )
        ids = list(record.jobs[:MAX_STEPS])
        found = [await queue.get(job_id) for job_id in ids]
        steps = [{"id": job_id, "job": job} for job_id, job in zip(ids, found, strict=True)]
        columns = _layout(record.kind, len(steps))
        # Boxes 150 x 44, 60 apart horizontally, 14 vertically.
        nodes: list[dict[str, Any]] = []
        for col, members in enumerate(columns):
            for row, index in enumerate(members):
                job = found[index]
                nodes.append(
                    {
                        "x": 10 + col * 210,
                        "y": 10 + row * 58,
                        "col": col,
                        "id": ids[index],
                        "label": job.handler if job is not None else ids[index],
                        "state": job.state.value if job is not None else "not started",
                    }
                )
        # Every box of one column links to every box of the next (a chain's step to the
        # next, a chord's header members to its callback).
        points = [(int(n["col"]), int(n["x"]), int(n["y"])) for n in nodes]
        edges = [
            {"x1": ax + 150, "y1": ay + 22, "x2": bx, "y2": by + 22}
            for acol, ax, ay in points
            for bcol, bx, by in points
            if bcol == acol + 1
        ]
        tallest = max((len(c) for c in columns), default=1)
        return render(
            request,
            "workflow.html",
            session,
            page="workflows",
            workflow=record,
            steps=steps,
            nodes=nodes,
            edges=edges,
            width=max(len(columns), 1) * 210 + 10,
            height=tallest * 58 + 14,
            more=len(record.jobs) - len(ids),
            message=_MESSAGES.get(request.query_params.get("msg", "")),
        )

    async def jobs(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        params = request.query_params
        filters = {k: params.get(k, "").strip() for k in ("state", "queue", "handler", "q")}
        after = params.get("after") or None
        records: list[JobRecord] = []
        next_cursor: str | None = None
        error = None
        try:
            wanted = _parse_search(filters["q"])
            # The store filters on args itself (an index, SQL or a bounded server-side scan).
            page = await queue.list(
                state=filters["state"] or None,
                queue=filters["queue"] or None,
                handler=filters["handler"] or None,
                args=wanted or None,
                limit=PAGE_SIZE + 1,
                after=after,
            )
            records = page[:PAGE_SIZE]
            next_cursor = records[-1].id if len(page) > PAGE_SIZE else None
        except ValueError as exc:
            error = str(exc)
        query = {k: v for k, v in filters.items() if v}
        return render(
            request,
            "jobs.html",
            session,
            status=400 if error else 200,
            page="jobs",
            jobs=records,
            filters=filters,
            states=[s.value for s in _STATES],
            next_url=f"?{urlencode({**query, 'after': next_cursor})}" if next_cursor else None,
            first_url=f"?{urlencode(query)}" if after else None,
            error=error,
        )

    async def job(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        job_id = request.path_params["id"]
        record = await queue.get(job_id)
        if record is None:
            return render(request, "missing.html", session, status=404, page="jobs", id=job_id)
        timeline = [("enqueued", record.enqueued_at)]
        if record.scheduled_for is not None and record.scheduled_for != record.enqueued_at:
            timeline.append(("due", record.scheduled_for))
        if record.started_at is not None:
            timeline.append((f"started (attempt {record.attempts})", record.started_at))
        if record.deadline is not None:
            timeline.append(("waiting until", record.deadline))
        if record.finished_at is not None:
            timeline.append((record.state.value, record.finished_at))
        timeline.sort(key=lambda item: item[1] or datetime.min.replace(tzinfo=UTC))
        return render(
            request,
            "job.html",
            session,
            page="jobs",
            job=record,
            timeline=timeline,
            message=_MESSAGES.get(request.query_params.get("msg", "")),
        )

    async def action(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return to_login(request)
        form = await _form(request)
        token = str(form.get("csrf", ""))
        if not same_origin(request) or not hmac.compare_digest(token, session.csrf):
            return HTMLResponse("cross-site request refused", status_code=403)
        if session.read_only:
            return HTMLResponse("this token is read-only", status_code=403)
        job_id = str(form.get("id", ""))
        what = request.path_params["what"]
        root = base(request)
        if what in ("pause", "resume", "trigger"):
            try:
                if what == "pause":
                    await schedules.pause(job_id)
                elif what == "resume":
                    await schedules.resume(job_id)
                else:
                    await schedules.trigger(job_id)
            except LookupError:
                return HTMLResponse(f"no schedule {job_id!r}", status_code=404)
            msg = {"pause": "paused", "resume": "resumed", "trigger": "triggered"}[what]
            return RedirectResponse(f"{root}/schedules/{quote(job_id, safe='')}?msg={msg}", 303)
        if what == "cancel-workflow":
            done = await queue.cancel_workflow(job_id)
            msg = "wf-cancelled" if done else "wf-not-cancelled"
            return RedirectResponse(f"{root}/workflows/{quote(job_id, safe='')}?msg={msg}", 303)
        if what not in ("cancel", "retry"):
            return HTMLResponse(f"no action {what!r}", status_code=404)
        try:
            if what == "cancel":
                msg = "cancelled" if await queue.cancel(job_id) else "not-cancelled"
            else:
                await queue.retry(job_id)
                msg = "retried"
        except LookupError:
            return HTMLResponse(f"no job {job_id!r}", status_code=404)
        except ValueError:
            msg = "not-retried"
        return RedirectResponse(f"{root}/jobs/{quote(job_id, safe='')}?msg={msg}", 303)

    async def events(request: Request) -> Response:
        if auth.session(request) is None:
            return Response("log in first", status_code=401)

        async def stream() -> AsyncIterator[str]:
            async with queue.events() as subscription:
                yield ": following\n\n"
                async for event in subscription:
                    yield f"event: {event.kind}\ndata: {json.dumps(_event_json(event))}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        counts.following = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(counts.refresh_forever)
                yield
                tg.cancel_scope.cancel()
        finally:
            counts.following = False

    routes = [
        Route("/", overview),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/jobs", jobs),
        Route("/schedules", schedules_page),
        Route("/schedules/{id:path}", schedule_page),
        Route("/workflows", workflows_page),
        Route("/workflows/{id:path}", workflow_page),
        Route("/workers", workers),
        Route("/jobs/{id:path}", job),
        Route("/actions/{what:str}", action, methods=["POST"]),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
