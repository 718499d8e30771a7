"""Every ```python block in docs/ and README.md runs as pasted (pytest-markdown-docs' rules).

The blocks are found with pytest-markdown-docs' own parser, in its superfences syntax (the one
mkdocs-material renders), so its info strings apply: a block opened with ``{.python notest}`` is
skipped (the page says why in a comment next to it), and ``{.python continuation}`` runs after
the block before it. Each block runs in its own interpreter, in an empty folder, as a
user who pastes it into a file would run it, so one page's logging, tracing or metrics set-up
never leaks into another test.

PostgreSQL and Redis blocks use the 127.0.0.1 services, in the schema or key prefix
``docs_example``; the test gives each run a namespace of its own (the name gets a unique
suffix) and drops it afterwards, so runs never meet each other's data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from markdown_it import MarkdownIt
from pytest_markdown_docs.plugin import FenceSyntax, extract_fence_tests

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]

NAMESPACE = "docs_example"
POSTGRES_URL = os.environ.get(
    "ANYWORK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ANYWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# The child compiles the block under the page's name, so a traceback points at the page's line.
RUN = "import sys; exec(compile(sys.stdin.read(), sys.argv[1], 'exec'), {'__name__': '__main__'})"


def _snippets() -> list[pytest.ParameterSet]:
    """One parameter per runnable block: its source, padded so line numbers match the page."""
    parser = MarkdownIt("commonmark")
    params = []
    for page in PAGES:
        fences = extract_fence_tests(
            parser, page.read_text(), 0, page, fence_syntax=FenceSyntax.superfences
        )
        for fence in fences:
            name = f"{page.relative_to(ROOT)}:{fence.start_line}"
            params.append(pytest.param(page, fence.source, id=name))
    return params


async def _drop_namespace(name: str, source: str) -> None:
    """Remove what a block left in the shared servers under ``name``."""
    if "postgresql://" in source:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await connection.close()
    if "redis://" in source:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{name}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.mark.parametrize(("page", "source"), _snippets())
def test_snippet_runs(page: Path, source: str, tmp_path: Path) -> None:
    """The block runs to the end, exit 0, in a fresh interpreter and an empty folder."""
    name = f"{NAMESPACE}_{uuid.uuid4().hex[:12]}"
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUN, str(page)],
            input=source.replace(NAMESPACE, name),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        if NAMESPACE in source:
            anyio.run(_drop_namespace, name, source)
    assert done.returncode == 0, f"{page.name}: the block failed:\n{done.stderr}"


def test_every_page_is_read() -> None:
    """The pages exist and hold blocks, so an empty glob cannot pass silently."""
    assert len(PAGES) > 10
    assert len(_snippets()) > 20
