"""Every ```python block in docs/ and README.md runs as pasted (pytest-markdown-docs' rules).

The blocks are found with pytest-markdown-docs' own parser, in its superfences syntax (the one
mkdocs-material renders), so its info strings apply: a block opened with ``{.python notest}`` is
skipped (the page says why in a comment next to it), and ``{.python continuation}`` runs after
the block before it. Each block runs in its own interpreter, in an empty folder, as a
user who pastes it into a file would run it, so one page's logging, tracing or metrics set-up
never leaks into another test. PostgreSQL and Redis blocks use the 127.0.0.1 services.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from pytest_markdown_docs.plugin import FenceSyntax, extract_fence_tests

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]

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


@pytest.mark.parametrize(("page", "source"), _snippets())
def test_snippet_runs(page: Path, source: str, tmp_path: Path) -> None:
    """The block runs to the end, exit 0, in a fresh interpreter and an empty folder."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(page)],
        input=source,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{page.name}: the block failed:\n{done.stderr}"


def test_every_page_is_read() -> None:
    """The pages exist and hold blocks, so an empty glob cannot pass silently."""
    assert len(PAGES) > 10
    assert len(_snippets()) > 20
