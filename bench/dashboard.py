"""Dashboard page times on a large store, next to the store queries they make, run directly.

Run ``python -m bench.dashboard [--stores sqlite,postgresql] [--finished N] [--queued N]
[--samples N]``.

For each store it writes ``--finished`` finished jobs (default 1,000,000: 95 % succeeded, 4 %
failed, 1 % cancelled, over 3 queues and 5 handlers, finished during the last week) and then
``--queued`` queued ones (default 10,000) with bulk SQL (the events triggers are off while it
does, so the setup is not what is measured). Then it times, in the same run:

- the pages and list routes, through the service's ASGI app (``create_app``, as ``anywork
  serve`` builds it) in process with its lifespan running as under a server (no socket, so no
  network time): the overview (``/``), the first page of jobs (``/jobs``), the queued jobs of
  one queue, an args search (``/jobs?q=customer=7``: 1 job in 1,000 matches), and
  ``GET /v1/jobs`` filtered by state, handler, queue and state, a page from the middle
  (``after=``), by args (a common value, and a value only one job holds) and ``/v1/queues``;
- the store calls behind them, run directly through ``Queue``: ``stats()`` (the overview's
  counts), ``list(limit=51)`` (a jobs page), ``list(state=queued, queue=q, limit=1)`` per
  queue (the oldest queued job), ``list(args=..., limit=51)`` and ``finished_per_minute()``
  (the overview's chart; about 6,000 of the finished jobs are in the last hour).

It prints the median and p95 in milliseconds and the page / direct ratio. The target is under
100 ms for the overview and the jobs page. When counting takes 50 ms or more, the overview
serves counts taken in the background (see docs/dashboard.md), so its time is then the
page's own and the direct rows show what that background count costs. Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from work import JobState, Queue
from work.server import create_app
from work.stores import Store, open_store

__all__ = ["main"]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
QUEUES = ("default", "mail", "reports")
TOKEN = "bench"

# One row per i: queue, handler, state and times derived from i (SQLite's dialect).
_SQLITE_FILL = """
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < :n)
INSERT INTO anywork_jobs (id, handler, queue, args, headers, priority, state, status,
    attempts, max_attempts, result, error, enqueued_at, started_at, finished_at, due_at)
SELECT :prefix || i, 'h' || (i % 5),
    CASE i % 3 WHEN 0 THEN 'default' WHEN 1 THEN 'mail' ELSE 'reports' END,
    '{"customer": ' || (i % 1000) || ', "n": ' || i || '}', '{}', 0,
    CASE WHEN :finished = 0 THEN 'queued' WHEN i % 100 < 95 THEN 'succeeded'
         WHEN i % 100 < 99 THEN 'failed' ELSE 'cancelled' END,
    CASE WHEN :finished = 0 THEN -1 WHEN i % 100 < 95 THEN 200
         WHEN i % 100 < 99 THEN 500 ELSE 499 END,
    :finished, 1, NULL, NULL,
    :now - :span + i * :span / :n,
    CASE WHEN :finished = 1 THEN :now - :span + i * :span / :n END,
    CASE WHEN :finished = 1 THEN :now - :span + i * :span / :n + 0.01 END,
    :now - :span + i * :span / :n
FROM c
"""

_PG_FILL = """
INSERT INTO {s}.jobs (id, handler, queue, args, headers, priority, state, status, attempts,
    max_attempts, enqueued_at, started_at, finished_at)
SELECT $1 || i, 'h' || (i % 5),
    (ARRAY['default', 'mail', 'reports'])[i % 3 + 1],
    '{{"customer": ' || (i % 1000) || ', "n": ' || i || '}}', '{{}}', 0,
    CASE WHEN NOT $3 THEN 'queued' WHEN i % 100 < 95 THEN 'succeeded'
         WHEN i % 100 < 99 THEN 'failed' ELSE 'cancelled' END,
    CASE WHEN NOT $3 THEN -1 WHEN i % 100 < 95 THEN 200 WHEN i % 100 < 99 THEN 500 ELSE 499 END,
    CASE WHEN $3 THEN 1 ELSE 0 END, 1,
    now() - interval '7 days' + i * (interval '7 days' / $2),
    CASE WHEN $3 THEN now() - interval '7 days' + i * (interval '7 days' / $2) END,
    CASE WHEN $3 THEN now() - interval '7 days' + i * (interval '7 days' / $2) END
FROM generate_series(1, $2) AS i
"""


def fill_sqlite(path: Path, finished: int, queued: int) -> None:
    """Bulk-insert the rows with the events triggers dropped, then put the triggers back."""
    conn = sqlite3.connect(path)
    try:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master"
            " WHERE type = 'trigger' AND tbl_name = 'anywork_jobs'"
        ).fetchall()
        with conn:
            for name, _ in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            now = time.time()
            for prefix, n, done in (("done-", finished, 1), ("todo-", queued, 0)):
                span = 7 * 86400.0 if done else 60.0
                conn.execute(
                    _SQLITE_FILL,
                    {"n": n, "prefix": prefix, "finished": done, "now": now, "span": span},
                )
            for _, sql in triggers:
                conn.execute(sql)
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def fill_postgres(schema: str, finished: int, queued: int) -> None:
    """Bulk-insert the rows with the table's own triggers disabled meanwhile."""
    import asyncpg  # type: ignore[import-untyped]  # only this store needs it

    from work.stores.postgres import recount

    conn = await asyncpg.connect(PG_URL)
    try:
        s = f'"{schema}"'
        async with conn.transaction():
            await conn.execute(f"ALTER TABLE {s}.jobs DISABLE TRIGGER USER")
            await conn.execute(_PG_FILL.format(s=s), "done-", finished, True)
            await conn.execute(_PG_FILL.format(s=s), "todo-", queued, False)
            await conn.execute(f"ALTER TABLE {s}.jobs ENABLE TRIGGER USER")
            # The counts the triggers would have kept, rebuilt as the v6 migration does.
            for statement in recount(s):
                await conn.execute(statement)
        await conn.execute(f"ANALYZE {s}.jobs")
    finally:
        await conn.close()


async def timed(call: Callable[[], Awaitable[Any]], samples: int) -> list[float]:
    """Seconds per call, after two warm-up calls."""
    for _ in range(2):
        await call()
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float]) -> str:
    p95 = sorted(values)[max(0, int(len(values) * 0.95) - 1)]
    return f"{statistics.median(values) * 1000:8.1f} {p95 * 1000:8.1f}"


async def measure(store: Store, samples: int, finished: int) -> list[tuple[str, list[float]]]:
    """Time the pages, the list routes and the direct store calls on an opened, filled
    store (the whole service app, as ``anywork serve`` builds it: the dashboard is at /)."""
    queue = Queue(store)
    app = create_app(store, tokens=[TOKEN])
    transport = httpx.ASGITransport(app=app)
    rows: list[tuple[str, list[float]]] = []
    # The lifespan runs as under a server: it keeps slow counts fresh in the background.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        login = await client.post(
            "/login", data={"token": TOKEN}, headers={"origin": "http://bench"}
        )
        assert login.status_code == 303, login.text

        async def page(path: str) -> None:
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.status_code)

        async def api(path: str) -> None:
            answer = await client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200, (path, answer.status_code, answer.text)

        middle = f"done-{max(1, finished // 2)}"
        by_customer = quote(json.dumps({"customer": 7}))
        one_job = quote(json.dumps({"n": max(1, finished * 9 // 10)}))

        async def oldest() -> None:
            for name in QUEUES:
                await queue.list(state=JobState.QUEUED, queue=name, limit=1)

        checks: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("page  /  (overview)", lambda: page("/")),
            ("  direct stats()", queue.stats),
            ("  direct oldest queued x3", oldest),
            ("page  /jobs", lambda: page("/jobs")),
            ("  direct list(limit=51)", lambda: queue.list(limit=51)),
            ("page  /jobs?state=queued&queue=mail", lambda: page("/jobs?state=queued&queue=mail")),
            (
                "  direct list(queued, mail, 51)",
                lambda: queue.list(state=JobState.QUEUED, queue="mail", limit=51),
            ),
            ("page  /jobs?q=customer=7", lambda: page("/jobs?q=customer%3D7")),
            (
                "  direct list(args=customer 7, 51)",
                lambda: queue.list(args={"customer": 7}, limit=51),
            ),
            ("  direct finished_per_minute()", queue.finished_per_minute),
            ("api   /v1/jobs?limit=50", lambda: api("/v1/jobs?limit=50")),
            ("api   /v1/jobs?state=failed", lambda: api("/v1/jobs?state=failed&limit=50")),
            ("api   /v1/jobs?handler=h3", lambda: api("/v1/jobs?handler=h3&limit=50")),
            (
                "api   /v1/jobs?queue=mail&state=queued",
                lambda: api("/v1/jobs?queue=mail&state=queued&limit=50"),
            ),
            ("api   /v1/jobs?after=<middle id>", lambda: api(f"/v1/jobs?after={middle}&limit=50")),
            ("api   /v1/jobs?args={customer: 7}", lambda: api(f"/v1/jobs?args={by_customer}")),
            ("api   /v1/jobs?args={n: <one job>}", lambda: api(f"/v1/jobs?args={one_job}")),
            ("api   /v1/queues", lambda: api("/v1/queues")),
        ]
        for name, call in checks:
            rows.append((name, await timed(call, samples)))
    return rows


def report(title: str, rows: list[tuple[str, list[float]]]) -> None:
    print(f"\n{title}\n{'':40} {'p50 ms':>8} {'p95 ms':>8}")
    for name, values in rows:
        print(f"{name:40} {ms(values)}")
    by = dict(rows)
    overview = statistics.median(by["page  /  (overview)"])
    direct = statistics.median(by["  direct stats()"]) + statistics.median(
        by["  direct oldest queued x3"]
    )
    jobs = statistics.median(by["page  /jobs"])
    jobs_direct = statistics.median(by["  direct list(limit=51)"])
    print(f"overview / its direct queries: {overview / direct:.2f}x")
    print(f"jobs page / its direct query:  {jobs / jobs_direct:.2f}x")
    verdict = "met" if max(overview, jobs) < 0.1 else "NOT met"
    print(f"target (< 100 ms for both pages): {verdict}")


async def run(stores: Sequence[str], finished: int, queued: int, samples: int) -> None:
    for kind in stores:
        started = time.perf_counter()
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "bench.db"
                async with open_store(f"sqlite:///{path}"):
                    pass  # the schema
                fill_sqlite(path, finished, queued)
                filled = time.perf_counter() - started
                async with open_store(f"sqlite:///{path}") as store:
                    rows = await measure(store, samples, finished)
        elif kind == "postgresql":
            schema = f"anywork_bench_dashboard_{int(time.time())}"
            async with open_store(PG_URL, schema=schema) as store:
                try:
                    await fill_postgres(schema, finished, queued)
                    filled = time.perf_counter() - started
                    rows = await measure(store, samples, finished)
                finally:
                    await store.drop()  # type: ignore[attr-defined]
        else:
            raise SystemExit(f"unknown store {kind!r} (sqlite or postgresql)")
        report(
            f"{kind}: {finished:,} finished + {queued:,} queued (filled in {filled:.0f} s)", rows
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the measurements."""
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args(argv)
    anyio.run(run, args.stores.split(","), args.finished, args.queued, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
