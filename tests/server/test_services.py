"""serverless-job-manager's flow over HTTP, black box, on SQLite and PostgreSQL: PUT a job,
receive its webhooks on a receiver served by the test, heartbeat, succeed, 410, executions
history, ``last_successful_execution`` in the next webhook, an exclusive job's 409, and a
ttl expiry as 504."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from .conftest import Receiver, Served, wait_for

JOB = "/v1/services/billing/jobs/nightly"


def _config(receiver: Receiver, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "async": True,
        "enabled": True,
        "exclusive": True,
        "invocation_target": receiver.url,
        "invocation_type": "http",
        "payload": '{"foo": "bar"}',
        "schedule": "rate(1 second)",
        "ttl_seconds": 30,
    }
    body.update(changes)
    return body


def _executions(service: Served, **params: Any) -> dict[str, Any]:
    r = service.client.get(f"{JOB}/executions", params=params)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


def test_the_webhook_flow_of_an_exclusive_job(service: Served, receiver: Receiver) -> None:
    """PUT (201, then 200), the webhook with the seed's fields, a heartbeat, a 409 fire while
    it waits, success, 410 afterwards, last_successful_execution in the next webhook, and the
    executions history newest first with paging and ?status=."""
    c = service.client
    r = c.put(JOB, json=_config(receiver))
    assert r.status_code == 201, r.text
    assert r.json()["service"] == "billing" and r.json()["name"] == "nightly"
    assert c.put(JOB, json=_config(receiver)).status_code == 200
    first = receiver.next()
    assert first["job_name"] == "nightly" and first["schedule"] == "rate(1 second)"
    assert first["payload"] == '{"foo": "bar"}' and first["last_successful_execution"] is None
    assert first["scheduled_time"].endswith("Z") and first["invocation_latency_pct"] is not None
    url = first["callback_url"]
    waiting = wait_for(
        lambda: _executions(service, status="waiting")["items"], 20, "a waiting execution"
    )
    execution = waiting[0]
    assert execution["service"] == "billing" and execution["job_name"] == "nightly"
    assert execution["http_status"] == 202 and execution["status"] == "waiting"
    assert c.post(url, json={"status": "heartbeat"}).status_code == 200
    conflict = wait_for(
        lambda: [
            e for e in _executions(service, status="failure")["items"] if e["http_status"] == 409
        ],
        20,
        "an exclusive 409 fire",
    )
    assert "still running" in conflict[0]["summary"]
    done = {"status": "success", "state": "done", "summary": "42 rows", "correlation_id": "c-1"}
    assert c.post(url, json=done).status_code == 200
    assert c.post(url, json=done).status_code == 410
    second = receiver.next()
    last = second["last_successful_execution"]
    assert last["name"] == execution["id"] and last["status"] == "success"
    assert last["state"] == "done" and last["summary"] == "42 rows"
    assert c.put(JOB, json=_config(receiver, enabled=False)).status_code == 200
    history = _executions(service, limit=100)["items"]
    times = [e["scheduled_time_ms"] for e in history]
    assert times == sorted(times, reverse=True) and len(history) >= 3
    success = _executions(service, status="success")["items"]
    assert [e["id"] for e in success] == [execution["id"]]
    assert success[0]["state"] == "done" and success[0]["correlation_id"] == "c-1"
    page = _executions(service, limit=1)
    assert len(page["items"]) == 1 and page["next_cursor"] == page["items"][0]["id"]
    rest = _executions(service, limit=100, cursor=page["next_cursor"])["items"]
    assert [e["id"] for e in rest] == [e["id"] for e in history[1:]]
    one = c.get(f"/v1/executions/{execution['id'].replace('/', '%2F')}")
    assert one.status_code == 200 and one.json()["status"] == "success"
    listed = c.get("/v1/services/billing/jobs", params={"enabled": "false"}).json()["items"]
    assert [j["name"] for j in listed] == ["nightly"]
    assert c.delete(JOB).status_code == 200
    assert c.get(JOB).status_code == 404
    assert _executions_after_delete(service)


def _executions_after_delete(service: Served) -> bool:
    # The job is gone: its executions route answers 404, its executions stay as jobs.
    return bool(service.client.get(f"{JOB}/executions").status_code == 404)


def test_ttl_expiry_is_a_504_and_trigger_runs_now(service: Served, receiver: Receiver) -> None:
    """trigger runs an execution at once; without a callback within ttl_seconds it fails 504;
    a bad schedule expression is a 422 naming the field."""
    c = service.client
    r = c.put(JOB, json=_config(receiver, schedule="rate(1 hour)", ttl_seconds=1, exclusive=False))
    assert r.status_code == 201
    r = c.post(f"{JOB}/trigger")
    assert r.status_code == 201 and "@manual-" in r.json()["id"]
    try:
        receiver.next(timeout=60)
    except queue.Empty:
        executions = c.get(f"{JOB}/executions", params={"limit": 10}).text
        pytest.fail(
            f"no webhook within 60 s; the executions: {executions}\n"
            f"the service printed:\n{service.output[-4000:]}"
        )
    failed = wait_for(
        lambda: _executions(service, status="failure")["items"], 30, "the ttl to expire"
    )
    assert failed[0]["http_status"] == 504 and failed[0]["status"] == "failure"
    r = c.put(JOB, json=_config(receiver, schedule="cron(nope)"))
    assert r.status_code == 422 and "body.schedule" in r.json()["errors"]
    r = c.put(JOB, json=_config(receiver, invocation_type="sqs"))
    assert r.status_code == 422 and "body.invocation_type" in r.json()["errors"]
