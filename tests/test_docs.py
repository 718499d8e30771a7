"""The docs: every public name documents itself, and benchmark notes stay on their own page."""

from __future__ import annotations

import importlib
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ("work", "work.adapters", "work.stores", "work.abc")


def _documented(obj: griffe.Object | griffe.Alias) -> bool:
    """True when ``obj`` (an alias is followed to its target) has a non-blank docstring."""
    target = obj.final_target if isinstance(obj, griffe.Alias) else obj
    return bool(target.docstring and target.docstring.value.strip())


@pytest.fixture(scope="module")
def loader() -> griffe.GriffeLoader:
    """One griffe loader (what mkdocstrings reads the docstrings with) for the whole module."""
    return griffe.GriffeLoader(search_paths=[str(ROOT)])


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str, loader: griffe.GriffeLoader) -> None:
    """Each name in __all__ has a docstring as the API reference reads it (type aliases too)."""
    module = importlib.import_module(module_name)
    package = loader.load(module_name)
    assert isinstance(package, griffe.Module)
    missing = [name for name in module.__all__ if not _documented(package[name])]
    assert not missing, f"{module_name}: no docstring on {missing}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_method_has_a_docstring(module_name: str, loader: griffe.GriffeLoader) -> None:
    """Each public function member of an exported class has a docstring (attributes are
    documented in their class's Attributes section)."""
    module = importlib.import_module(module_name)
    package = loader.load(module_name)
    assert isinstance(package, griffe.Module)
    missing = []
    for name in module.__all__:
        obj = package[name]
        target = obj.final_target if isinstance(obj, griffe.Alias) else obj
        if not isinstance(target, griffe.Class):
            continue
        for member_name, member in target.members.items():
            if member_name.startswith("_") or not member.is_function:
                continue
            if not _documented(member):
                missing.append(f"{name}.{member_name}")
    assert not missing, f"{module_name}: no docstring on {missing}"


def test_benchmark_verdicts_only_on_the_performance_page() -> None:
    """Targets met or missed (PASS/MISS) are developer notes: only docs/performance.md has them."""
    pages = [p for p in (ROOT / "docs").rglob("*.md") if p.name != "performance.md"]
    assert pages
    for page in [*pages, ROOT / "README.md"]:
        text = page.read_text()
        assert "MISS" not in text and "PASS" not in text, page
