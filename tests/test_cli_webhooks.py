"""CLI webhooks: ``schedules put --webhook``, and ``anywork worker --public-url`` running
``anywork.webhook`` in a real process against a receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from work import SyncQueue, Webhook
from work.scheduling import Schedules, stored_public_url
from work.stores import open_store

from .test_cli import WorkerProcess, run, spawn, store_url, wait_for, worker_dir

__all__ = ["spawn", "store_url", "worker_dir"]  # fixtures used by name

PUBLIC = "https://jobs.example.test"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on 127.0.0.1 in a thread: (url, the JSON bodies it got)."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_schedules_put_webhook(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """put --webhook URL --payload STR --ttl stores a Webhook target; a --payload without
    --webhook, a callback webhook without --ttl and --job with --webhook are refused (2)."""
    url = "http://127.0.0.1:9/hook"
    code, out, _ = run(
        capsys, "schedules", "put", "svc/hook", "rate(1 hour)", "--store", store_url,
        "--webhook", url, "--payload", '{"a":1}', "--ttl", "60", "--queue", "hooks", "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["target"] == {
        "webhook": {
            "url": url,
            "payload": '{"a":1}',
            "callback": True,
            "headers": {},
            "timeout": 10.0,
            "queue": "hooks",
        }
    }

    async def stored() -> Any:
        async with open_store(store_url) as store:
            return await Schedules(store).get("svc/hook")

    record = anyio.run(stored)
    assert record is not None and record.schedule.target == Webhook(
        url, payload='{"a":1}', queue="hooks"
    )
    code, _, err = run(capsys, "schedules", "put", "x", "rate(1 hour)", "--store", store_url,
                       "--job", "j", "--payload", "p")  # fmt: skip
    assert code == 2 and "--webhook" in err
    code, _, err = run(capsys, "schedules", "put", "x", "rate(1 hour)", "--store", store_url,
                       "--webhook", url)  # fmt: skip
    assert code == 2 and "ttl" in err
    code, _, _ = run(capsys, "schedules", "put", "x", "rate(1 hour)", "--store", store_url,
                     "--webhook", url, "--job", "j")  # fmt: skip
    assert code == 2
    code, out, _ = run(capsys, "schedules", "put", "p", "rate(1 hour)", "--store", store_url,
                       "--webhook", url, "--no-callback", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["target"]["webhook"]["callback"] is False


def test_worker_runs_webhooks_with_the_public_url_it_keeps(
    spawn: Any, store_url: str, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    """anywork worker registers anywork.webhook; --public-url goes into the callback_url and
    into the store, where a later worker without the option finds it."""
    url, bodies = receiver
    proc: WorkerProcess = spawn("tasks:worker", "--store", store_url, "--public-url", PUBLIC)
    proc.wait_for_output("serving")
    with SyncQueue(store_url) as queue:
        rec = queue.enqueue(Webhook(url).job(ttl=60))
        wait_for(lambda: bodies, 20, "the webhook's POST")
        assert bodies[0]["callback_url"].startswith(f"{PUBLIC}/v1/callback/")
        wait_for(lambda: queue.get(rec.id).state == "waiting", 20, "WAITING")  # type: ignore[union-attr]
    assert proc.stop() == 0

    async def kept() -> str | None:
        async with open_store(store_url) as store:
            return await stored_public_url(store)

    assert anyio.run(kept) == PUBLIC
    again: WorkerProcess = spawn("tasks:worker", "--store", store_url)
    again.wait_for_output("serving")
    with SyncQueue(store_url) as queue:
        queue.enqueue(Webhook(url).job(ttl=60))
        wait_for(lambda: len(bodies) == 2, 20, "the second POST")
    assert bodies[1]["callback_url"].startswith(f"{PUBLIC}/v1/callback/")
    assert again.stop() == 0


def test_bad_public_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--public-url that is not an absolute http(s) URL exits 2 naming it."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code, _, err = run(capsys, "scheduler", "--store", url, "--public-url", "ftp:/x")
    assert code == 2 and "ftp:/x" in err
