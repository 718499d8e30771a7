"""``anywork serve`` over HTTP, black box: auth, problem details, the job routes, queues,
the worker registry and events, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from .conftest import AUTH, ROOT, Served, wait_for

PROBLEM = "application/problem+json"


def finished(served: Served, id: str, timeout: float = 20) -> dict[str, Any]:
    """Wait until the job is final and return it."""

    def look() -> dict[str, Any] | None:
        job: dict[str, Any] = served.client.get(f"/v1/jobs/{quote(id, safe='')}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(look, timeout, f"job {id} to finish")
    return result


def test_auth_needs_a_bearer_token_and_leaves_health_open(service: Served) -> None:
    """/v1/ routes answer 401 problem+json with WWW-Authenticate: Bearer without a valid
    token; /live, /ready, /metrics and /openapi.json stay open."""
    bare = httpx.Client(base_url=service.url, timeout=10)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        r = bare.get("/v1/jobs", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["status"] == 401 and r.json()["title"] == "Unauthorized"
    assert bare.get("/v1/jobs", headers=AUTH).status_code == 200
    for path in ("/live", "/ready", "/metrics", "/openapi.json"):
        assert bare.get(path).status_code == 200, path
    assert bare.get("/openapi.json").json()["openapi"] == "3.1.0"
    bare.close()


def test_problem_details_for_bad_input(service: Served) -> None:
    """Bad bodies and queries get 422 with field errors, a huge body 413, unknown jobs and
    routes 404, all as RFC 9457 problems; no input makes a 500."""
    c = service.client
    r = c.post("/v1/jobs", json={"handler": "", "priority": "high", "extra": 1})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail", "errors"}
    assert set(body["errors"]) == {"body.handler", "body.priority", "body.extra"}
    r = c.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "body" in r.json()["errors"]
    r = c.post("/v1/jobs", json={"handler": "echo", "at": "2030-01-01T00:00:00"})
    assert r.status_code == 422 and "body.at" in r.json()["errors"]  # naive time
    r = c.get("/v1/jobs", params={"state": "nope", "limit": "0"})
    assert r.status_code == 422 and {"query.state", "query.limit"} <= set(r.json()["errors"])
    r = c.get("/v1/jobs", params={"args": "[1]"})
    assert r.status_code == 422 and "query.args" in r.json()["errors"]
    r = c.post("/v1/jobs", content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    for path in ("/v1/jobs/unknown", "/v1/jobs/%00bad", "/v1/nothing-here"):
        r = c.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, path
    assert c.put("/v1/jobs").status_code == 405


def test_enqueue_run_and_get_a_job(service: Served) -> None:
    """POST /v1/jobs answers 201 with the JobRecord's fields (lowercase state, int status,
    UTC times ending in Z); the served worker runs it; GET shows the result; an id with a
    slash works percent-encoded."""
    c = service.client
    r = c.post("/v1/jobs", json={"handler": "echo", "args": {"n": 1}, "id": "order/42"})
    assert r.status_code == 201
    job = r.json()
    assert job["id"] == "order/42" and job["state"] in ("queued", "running", "succeeded")
    assert job["status"] in (-1, 200) and job["enqueued_at"].endswith("Z")
    done = finished(service, "order/42")
    assert done["state"] == "succeeded" and done["status"] == 200
    assert done["result"] == {"n": 1} and done["finished_at"].endswith("Z")
    assert done["attempts"] == 1 and done["workflow_id"] is None
    failed = finished(service, c.post("/v1/jobs", json={"handler": "fail"}).json()["id"])
    assert failed["state"] == "failed" and failed["status"] == 400
    assert "told to fail" in failed["error"]


def test_list_filters_and_pages(service: Served) -> None:
    """GET /v1/jobs filters on state, queue, handler and args (a JSON object) and pages with
    next_cursor."""
    c = service.client
    for i in range(5):
        args = {"customer": "acme" if i % 2 == 0 else "other", "i": i}
        assert (
            c.post("/v1/jobs", json={"handler": "nobody", "args": args, "queue": "q2"}).status_code
            == 201
        )
    r = c.get("/v1/jobs", params={"queue": "q2", "args": json.dumps({"customer": "acme"})})
    assert [j["args"]["i"] for j in r.json()["items"]] == [0, 2, 4]
    page = c.get("/v1/jobs", params={"queue": "q2", "limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"] == page["items"][-1]["id"]
    rest = c.get("/v1/jobs", params={"queue": "q2", "after": page["next_cursor"]}).json()
    assert [j["args"]["i"] for j in rest["items"]] == [2, 3, 4] and rest["next_cursor"] is None
    r = c.get("/v1/jobs", params={"handler": "nobody", "state": "queued", "limit": 100})
    assert len(r.json()["items"]) == 5
    assert c.get("/v1/jobs", params={"state": "failed", "queue": "q2"}).json()["items"] == []


def test_cancel_and_retry(service: Served) -> None:
    """DELETE /v1/jobs/{id} cancels (499); again it is 409; retry of a cancelled job runs it
    again; retry of a job that is not FAILED or CANCELLED is 409; unknown ids are 404."""
    c = service.client
    id = c.post("/v1/jobs", json={"handler": "echo", "delay": 3600}).json()["id"]
    r = c.delete(f"/v1/jobs/{id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert r.json()["status"] == 499
    assert c.delete(f"/v1/jobs/{id}").status_code == 409
    r = c.post(f"/v1/jobs/{id}/retry")
    assert r.status_code == 200 and r.json()["state"] in ("queued", "running", "succeeded")
    assert finished(service, id)["state"] == "succeeded"
    r = c.post(f"/v1/jobs/{id}/retry")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]
    assert c.post("/v1/jobs/unknown/retry").status_code == 404
    assert c.delete("/v1/jobs/unknown").status_code == 404


def test_queues_flag_handlers_no_live_worker_has(service: Served) -> None:
    """GET /v1/queues gives counts per state and lists queued jobs whose handler no live
    worker serving that queue has."""
    c = service.client
    for handler in ("nobody", "nobody", "echo"):
        c.post("/v1/jobs", json={"handler": handler, "queue": "unserved-q"})
    id = c.post("/v1/jobs", json={"handler": "nobody"}).json()["id"]
    # A worker lacking the handler hands the job back without using an attempt: it was
    # claimed once it has a start time.
    wait_for(
        lambda: c.get(f"/v1/jobs/{id}").json()["started_at"] is not None,
        60,
        "the worker to look at it",
    )
    items = {q["name"]: q for q in c.get("/v1/queues").json()["items"]}
    other = items["unserved-q"]
    assert other["counts"]["queued"] == 3 and other["total"] == 3
    # No worker serves unserved-q at all: both handlers are flagged.
    assert other["unserved"] == [
        {"handler": "echo", "queued": 1},
        {"handler": "nobody", "queued": 2},
    ]
    default = items["default"]
    flagged = {u["handler"] for u in default["unserved"]}
    assert flagged <= {"nobody"} and "echo" not in flagged


def test_worker_registry_live_then_lost(serve: Callable[..., Served]) -> None:
    """A serving process shows in GET /v1/workers and `anywork workers` as live with its
    handlers and counts; killed, it is lost after 3 missed heartbeats; stopped cleanly, it
    leaves the registry."""
    first = serve("--heartbeat", "0.3")
    second = serve("--heartbeat", "0.3", "--queues", "other")
    id = first.client.post("/v1/jobs", json={"handler": "echo"}).json()["id"]
    finished(first, id)

    def workers() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = first.client.get("/v1/workers").json()["items"]
        return items

    def both_seen() -> list[dict[str, Any]] | None:
        found = workers()
        return found if len(found) == 2 and sum(w["processed"] for w in found) >= 1 else None

    found = wait_for(both_seen, 20, "both workers, one having processed a job")
    assert {w["pid"] for w in found} == {first.proc.pid, second.proc.pid}
    mine = next(w for w in found if w["pid"] == first.proc.pid)
    assert mine["state"] == "live" and mine["queues"] == ["default"]
    # The app's handlers, plus anywork.webhook that serve registers.
    assert {"echo", "fail", "slow", "anywork.webhook"} <= set(mine["handlers"])
    assert mine["handlers"] == sorted(mine["handlers"]) and mine["concurrency"] == 16
    assert mine["last_seen"].endswith("Z") and mine["processed"] == 1 and mine["failed"] == 0
    cli = subprocess.run(
        [sys.executable, "-m", "work.cli", "workers", *second.store_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert str(second.proc.pid) in cli.stdout and " live " in cli.stdout
    second.stop(signal.SIGKILL)
    wait_for(
        lambda: [w["state"] for w in workers() if w["pid"] == second.proc.pid] == ["lost"],
        20,
        "the killed worker to be lost",
    )
    assert [w["state"] for w in workers() if w["pid"] == first.proc.pid] == ["live"]
    third = serve("--heartbeat", "0.3", "--queues", "third")
    wait_for(lambda: any(w["pid"] == third.proc.pid for w in workers()), 20, "the third")
    assert third.stop() == 0
    assert not any(w["pid"] == third.proc.pid for w in workers())


def test_events_stream_as_server_sent_events(service: Served) -> None:
    """GET /v1/events streams `event: <kind>` and `data:` JobEvent JSON for each change."""
    events: list[tuple[str, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=service.url, headers=AUTH, timeout=20) as sse,
        sse.stream("GET", "/v1/events", params={"queues": "default"}) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": subscribed"
        id = service.client.post("/v1/jobs", json={"handler": "echo"}).json()["id"]
        kind = ""
        for line in lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "succeeded":
                    break
    assert [k for k, _ in events] == ["enqueued", "succeeded"] or [k for k, _ in events] == [
        "enqueued",
        "started",
        "succeeded",
    ]
    assert all(e["job_id"] == id and e["queue"] == "default" for _, e in events)
    assert events[-1][1]["status"] == 200 and events[-1][1]["at"].endswith("Z")
    r = service.client.get("/v1/events", params={"kinds": "nonsense"})
    assert r.status_code == 422


def test_serve_refuses_to_start_without_a_token(store_args: list[str]) -> None:
    """No token and no --insecure: exit 2; --insecure on a non-loopback address: exit 2."""
    base = [sys.executable, "-m", "work.cli", "serve", *store_args]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "refusing to serve without a token" in r.stderr
    r = subprocess.run(
        [*base, "--insecure", "--http", "0.0.0.0:0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2 and "loopback" in r.stderr


def test_insecure_on_loopback_serves_without_auth(serve: Callable[..., Served]) -> None:
    """--insecure on 127.0.0.1 serves the API without tokens."""
    served = serve("--insecure", token=False, worker=False)
    bare = httpx.Client(base_url=served.url, timeout=10)
    assert bare.get("/v1/jobs").status_code == 200
    assert "security" not in bare.get("/openapi.json").json()["paths"]["/v1/jobs"]["get"]
    bare.close()


def test_sigterm_drains_and_hands_back(service: Served) -> None:
    """SIGTERM stops claiming, hands a running job back (QUEUED) and exits 0."""
    c = service.client
    id = c.post("/v1/jobs", json={"handler": "slow", "args": {"seconds": 60}}).json()["id"]
    wait_for(lambda: c.get(f"/v1/jobs/{id}").json()["state"] == "running", 20, "running")
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 25
    assert "draining" in service.output
    check = subprocess.run(
        [sys.executable, "-m", "work.cli", "jobs", "get", id, "--json", *service.store_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(check.stdout)["state"] == "queued", check.stderr
