"""Every example runs on the README's first install (`pip install -e .`) or names its extra."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NEEDS = re.compile(r"^# Needs: pip install '?anywork(?:\[(?P<extras>[\w,]+)\])?'?(?P<more>[^\n]*)$")

# Run in a child process: allow only the distributions that the declared install brings (the
# closure of anywork's requirements with those extras), then run the example's imports.
# A module is blocked when its file belongs to an installed distribution outside that set.
CHILD = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, importlib.metadata, os, sys
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    extras, more, source = sys.argv[1].split(","), sys.argv[2].split(), sys.argv[3]
    extras = [e for e in extras if e]

    def closure(name, extras):
        todo, seen = [(name, tuple(extras))], set()
        while todo:
            dist, want = todo.pop()
            key = (canonicalize_name(dist), want)
            if key in seen:
                continue
            seen.add(key)
            for line in importlib.metadata.requires(dist) or []:
                req = Requirement(line)
                envs = [{"extra": e} for e in want] or [{"extra": ""}]
                if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                    todo.append((req.name, tuple(sorted(req.extras))))
        return {dist for dist, _ in seen}

    allowed = closure("anywork", extras)
    for name in more:
        allowed |= closure(name, [])
    owner = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            owner[os.path.normpath(dist.locate_file(file))] = name

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            origin = spec.origin if spec is not None else None
            if origin and origin not in ("built-in", "frozen"):
                dist = owner.get(os.path.normpath(origin))
                if dist is not None and dist not in allowed:
                    raise ModuleNotFoundError(
                        f"{fullname} comes from {dist}, which this install lacks", name=fullname
                    )
            return None

    sys.meta_path.insert(0, Block())
    exec(compile(source, "<imports>", "exec"), {"__name__": "imports"})
    """
)


def declared(source: str) -> tuple[str, str]:
    """The extras and further packages an example's ``# Needs:`` line names ("" when none)."""
    for line in source.splitlines()[:3]:
        match = NEEDS.match(line)
        if match:
            return match["extras"] or "", match["more"].strip()
    return "", ""


def imports_of(source: str) -> str:
    """The example's module-level import statements, as source."""
    tree = ast.parse(source)
    nodes = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return "\n".join(ast.unparse(node) for node in nodes)


def run_imports(source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source``'s imports with only its declared install's distributions importable."""
    extras, more = declared(source)
    return subprocess.run(
        [sys.executable, "-c", CHILD, extras, more, imports_of(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_imports_on_its_declared_install(example: Path) -> None:
    """The example's imports succeed with only the base install plus the extras it declares."""
    done = run_imports(example.read_text())
    assert done.returncode == 0, done.stderr


def test_an_undeclared_extra_is_caught() -> None:
    """An example importing httpx or the OpenTelemetry SDK without a `# Needs:` line fails."""
    for module in ("httpx", "opentelemetry.sdk.trace", "uvicorn"):
        done = run_imports(f'"""An example."""\n\nimport {module}\n')
        assert done.returncode != 0, module
        assert "which this install lacks" in done.stderr
    base = run_imports('"""An example."""\n\nimport anyio\nimport opentelemetry.trace\n')
    assert base.returncode == 0, base.stderr
    ok = run_imports(
        '# Needs: pip install \'anywork[otel,server]\' httpx\n"""An example."""\n\n'
        "import httpx\nimport opentelemetry.sdk.trace\nimport uvicorn\n"
    )
    assert ok.returncode == 0, ok.stderr
