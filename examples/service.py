# Needs: pip install 'anywork[server,webhooks]'
"""The HTTP service: start ``anywork serve`` on SQLite, then drive the webhook flow over HTTP.

A tiny receiver plays the called service: it gets the webhook's POST (with a
``callback_url``), answers 200 at once, and reports back through the callback URL, first a
heartbeat and then success. The script prints what each side saw.

Run it: ``python examples/service.py [path/to/jobs.db]``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

TOKEN = "example-token"


class Receiver(BaseHTTPRequestHandler):
    """The called service: takes the webhook and calls back from another thread."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        print(f"receiver: got job_name={body['job_name']} payload={body['payload']!r}")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        threading.Thread(target=call_back, args=(body["callback_url"],)).start()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def call_back(url: str) -> None:
    """Report on the execution: a heartbeat, then success (no bearer token: the URL's token
    authenticates)."""
    # The job turns WAITING just after the webhook's answer; the service waits for that.
    beat = httpx.post(url, json={"status": "heartbeat"}, timeout=10)
    print(f"receiver: heartbeat -> {beat.status_code}, deadline pushed")
    done = {"status": "success", "state": "done", "summary": "42 rows", "correlation_id": "c-1"}
    answer = httpx.post(url, json=done, timeout=10)
    print(f"receiver: success -> {answer.status_code} {answer.json()['state']}")


def start_service(db: Path) -> tuple[subprocess.Popen[str], str]:
    """``anywork serve`` on a free port of 127.0.0.1; returns the process and its URL."""
    cmd = [sys.executable, "-m", "work.cli", "serve", "--store", f"sqlite:///{db}"]
    cmd += ["--http", "127.0.0.1:0", "--token", TOKEN]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "ANYWORK_TOKENS": ""}
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"serving (http://\S+)", line)
        if found:
            # Keep reading its log so a full pipe never blocks it.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)
    raise RuntimeError("anywork serve exited before it listened")


def main(db: Path) -> None:
    """Start the service and the receiver, enqueue a webhook job, follow it to its end."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    proc, url = start_service(db)
    try:
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        args = {"url": hook, "payload": "hello", "callback": True, "ttl": 30}
        job = api.post("/v1/jobs", json={"handler": "anywork.webhook", "args": args}).json()
        print(f"service: enqueued {job['handler']} as {job['state']}")
        deadline = time.monotonic() + 30
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the job is still {job['state']}")
            time.sleep(0.05)
            job = api.get(f"/v1/jobs/{job['id']}").json()
        print(f"service: job {job['state']} {job['status']} result={json.dumps(job['result'])}")
        api.close()
    finally:
        proc.terminate()
        proc.wait(30)
        receiver.shutdown()
        receiver.server_close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "jobs.db")
