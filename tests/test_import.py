"""`import work` stays light: no OpenTelemetry, structlog, croniter or prometheus_client."""

from __future__ import annotations

import subprocess
import sys


def test_import_work_loads_no_optional_library() -> None:
    """A fresh interpreter that imports work (and work.stores) has none of the heavy libraries."""
    code = (
        "import sys, work, work.stores\n"
        "heavy = ('opentelemetry', 'structlog', 'croniter', 'prometheus_client')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_enqueue_still_injects_the_trace_context() -> None:
    """The lazy OpenTelemetry import still puts the current span's context in the headers."""
    code = (
        "import anyio\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from work import Job, Queue\n"
        "from work.stores.memory import MemoryStore\n"
        "async def main() -> None:\n"
        "    tracer = TracerProvider().get_tracer('t')\n"
        "    async with MemoryStore() as store:\n"
        "        with tracer.start_as_current_span('producer'):\n"
        "            rec = await Queue(store).enqueue(Job('x'))\n"
        "    print('traceparent' in rec.headers)\n"
        "anyio.run(main)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "True"
