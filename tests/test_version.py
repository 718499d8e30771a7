"""One version: pyproject reads work.__version__, and `anywork --version` prints it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import work

ROOT = Path(__file__).resolve().parent.parent


def test_version_has_one_source() -> None:
    """pyproject.toml declares no version of its own: hatch reads it from work/__init__.py."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "work/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", work.__version__)
    assert version("anywork") == work.__version__


def test_cli_prints_the_version() -> None:
    """`anywork --version` prints the program name and work.__version__, and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "work.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"anywork {work.__version__}\n"
