"""examples/workflows.py runs as users run it and prints what it promises."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_examples import run_example


def test_workflows_example_fetches_parses_and_aggregates(tmp_path: Path) -> None:
    """The example's chord ends SUCCEEDED with the top words; the flaky fetch took 2 tries."""
    out = run_example("workflows.py", str(tmp_path / "jobs.db"))
    assert re.search(r"enqueued workflow \w+ \(chord, 7 steps\)", out)
    assert "succeeded: top words [['the', 4], ['fox', 4], ['quick', 2]]" in out
    assert len(re.findall(r"fetch\s+succeeded attempts=2", out)) == 1
    assert "failed" not in out
