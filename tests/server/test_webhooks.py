"""The webhook flow over HTTP, black box: ``anywork serve`` POSTs a webhook job's body to a
receiver served by the test on 127.0.0.1, which answers through ``POST /v1/callback/{id}/
{token}`` (heartbeat, success, failure), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import Receiver, Served, wait_for
from .test_service import PROBLEM, finished


def _webhook_job(service: Served, receiver: Receiver, id: str, ttl: float) -> dict[str, Any]:
    args = {"url": receiver.url, "payload": "hello", "callback": True, "ttl": ttl}
    r = service.client.post("/v1/jobs", json={"handler": "anywork.webhook", "args": args, "id": id})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _state(service: Served, id: str, state: str) -> dict[str, Any]:
    def look() -> dict[str, Any] | None:
        job: dict[str, Any] = service.client.get(f"/v1/jobs/{id.replace('/', '%2F')}").json()
        return job if job["state"] == state else None

    found: dict[str, Any] = wait_for(look, 20, f"{id} to be {state}")
    return found


def test_webhook_heartbeat_success_then_gone(service: Served, receiver: Receiver) -> None:
    """The receiver gets the seed's fields with a callback_url; the job waits (202); a
    heartbeat answers the new deadline; success ends it with the callback's fields; another
    callback is 410; a wrong token is 404; a bad body 422 — all without a bearer token."""
    _webhook_job(service, receiver, "billing/nightly@1", ttl=30)
    body = receiver.next()
    assert body["payload"] == "hello" and body["job_name"] == "nightly@1"
    assert {"scheduled_time", "scheduled_time_ms", "invocation_latency_ms"} <= set(body)
    assert body["last_successful_execution"] is None
    url = body["callback_url"]
    assert url.startswith(service.url + "/v1/callback/billing%2Fnightly@1/")
    waiting = _state(service, "billing/nightly@1", "waiting")
    assert waiting["status"] == 202 and waiting["deadline"].endswith("Z")
    bare = httpx.Client(timeout=10)
    r = bare.post(url, json={"status": "heartbeat"})
    assert r.status_code == 200 and r.json()["deadline"].endswith("Z")
    r = bare.post(url, json={"status": "maybe"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "body.status" in r.json()["errors"]
    r = bare.post(url.rsplit("/", 1)[0] + "/not-the-token", json={"status": "success"})
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    done = {"status": "success", "state": "done", "summary": "42 rows", "correlation_id": "c-1"}
    r = bare.post(url, json=done)
    assert r.status_code == 200 and r.json()["state"] == "succeeded"
    job = finished(service, "billing/nightly@1")
    assert job["state"] == "succeeded" and job["status"] == 200
    assert job["result"] == {"state": "done", "summary": "42 rows", "correlation_id": "c-1"}
    r = bare.post(url, json=done)
    assert r.status_code == 410 and r.json()["status"] == 410
    bare.close()


def test_webhook_failure_and_ttl_expiry(service: Served, receiver: Receiver) -> None:
    """A failure callback fails the job with its summary; no callback within the ttl fails
    it 504."""
    _webhook_job(service, receiver, "failing", ttl=30)
    url = receiver.next()["callback_url"]
    _state(service, "failing", "waiting")
    r = httpx.post(url, json={"status": "failure", "summary": "disk full"}, timeout=10)
    assert r.status_code == 200
    job = finished(service, "failing")
    assert job["state"] == "failed" and job["status"] == 500 and job["error"] == "disk full"
    _webhook_job(service, receiver, "silent", ttl=1)
    receiver.next()
    job = finished(service, "silent", timeout=30)
    assert job["state"] == "failed" and job["status"] == 504
