"""Workflows over HTTP, black box, on SQLite and PostgreSQL: async's function chains
(``POST /v1/job``, ``GET /v1/job/{id}``) and ``POST/GET /v1/workflows``."""

from __future__ import annotations

from typing import Any

from .conftest import Served, wait_for


def test_async_function_chain(service: Served) -> None:
    """The functions run in order with ``data`` as the first input and each result the next
    input; retries are counted per function; current_function ends at len(functions)."""
    c = service.client
    body = {
        "name": "pipeline",
        "data": 1,
        "functions": [
            {"name": "add_one"},
            {"name": "flaky", "retry_options": {"retry_limit": 2}},
            {"name": "add_one", "retry_options": {"retry_limit": 0}},
        ],
    }
    r = c.post("/v1/job", json=body)
    assert r.status_code == 200 and set(r.json()) == {"job_id"}
    id = r.json()["job_id"]

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = c.get(f"/v1/job/{id}").json()["Job"]
        return job if job["state"] != "running" else None

    job = wait_for(done, 30, "the function chain to end")
    assert job["state"] == "succeeded" and job["current_function"] == 3
    assert job["job_id"] == id and job["name"] == "pipeline" and job["data"] == 1
    assert [f["name"] for f in job["functions"]] == ["add_one", "flaky", "add_one"]
    assert [f["retry_count"] for f in job["functions"]] == [0, 1, 0]
    assert job["functions"][1]["retry_options"] == {"retry_limit": 2}
    assert job["created_at"].endswith("Z") and job["scheduled_at"].endswith("Z")
    workflow = c.get(f"/v1/workflows/{id}").json()
    assert workflow["result"] == 21 and workflow["kind"] == "chain"
    assert c.get("/v1/job/unknown").status_code == 404
    r = c.post("/v1/job", json={"name": "x", "data": 1, "functions": []})
    assert r.status_code == 422 and "body.functions" in r.json()["errors"]


def test_chord_over_http(service: Served) -> None:
    """A chord posted as JSON runs its header in parallel and its callback on their results;
    its steps carry workflow_id."""
    c = service.client
    header = [{"handler": "add_one", "args": {"input": n}} for n in (1, 2, 3)]
    body = {"chord": {"header": header, "callback": {"handler": "total"}}, "name": "sum"}
    r = c.post("/v1/workflows", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["kind"] == "chord" and len(created["jobs"]) == 4 and created["name"] == "sum"

    def ended() -> dict[str, Any] | None:
        wf: dict[str, Any] = c.get(f"/v1/workflows/{created['id']}").json()
        return wf if wf["state"] != "running" else None

    workflow = wait_for(ended, 30, "the chord to end")
    assert workflow["state"] == "succeeded" and workflow["result"] == 9
    assert workflow["current"] == 4 and workflow["finished_at"].endswith("Z")
    step = c.get(f"/v1/jobs/{created['jobs'][0]}").json()
    assert step["workflow_id"] == created["id"]
    r = c.post("/v1/workflows", json={"chain": [{"handler": "a"}], "group": [{"handler": "b"}]})
    assert r.status_code == 422
    assert c.get("/v1/workflows/unknown").status_code == 404
