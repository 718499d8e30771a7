"""The docs: every public name documents itself, and benchmark notes stay on their own page."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import types
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The public modules; work.testing and work.scheduling join once they exist (the docs' hook
# builds their API pages on the same condition).
PUBLIC_MODULES = tuple(
    name
    for name in (
        "work",
        "work.adapters",
        "work.stores",
        "work.abc",
        "work.testing",
        "work.scheduling",
        "work.server",
        "work.remote",
    )
    if importlib.util.find_spec(name) is not None
)


def _documented(obj: griffe.Object | griffe.Alias) -> bool:
    """True when ``obj`` (an alias is followed to its target) has a non-blank docstring."""
    target = obj.final_target if isinstance(obj, griffe.Alias) else obj
    return bool(target.docstring and target.docstring.value.strip())


def _griffe_object(
    root: griffe.Module, module: types.ModuleType, name: str
) -> griffe.Object | griffe.Alias:
    """The object the API reference documents for ``module.name`` (``root`` is ``work``).

    A class or function is looked up where it is defined: in the package, a name such as
    ``retry`` would resolve to the submodule ``work.adapters.retry`` rather than the function
    it exports. Anything else (a type alias, a constant) is looked up in the package.
    """
    value = getattr(module, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        path = f"{value.__module__}.{value.__qualname__}"
    else:
        path = f"{module.__name__}.{name}"
    found = root[path.removeprefix("work.")]
    assert isinstance(found, griffe.Object | griffe.Alias), path
    return found


@pytest.fixture(scope="module")
def root() -> griffe.Module:
    """The ``work`` package as griffe (what mkdocstrings reads the docstrings with) sees it."""
    package = griffe.GriffeLoader(search_paths=[str(ROOT)]).load("work")
    assert isinstance(package, griffe.Module)
    return package


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str, root: griffe.Module) -> None:
    """Each name in __all__ has a docstring as the API reference reads it (type aliases too)."""
    module = importlib.import_module(module_name)
    missing = [
        name for name in module.__all__ if not _documented(_griffe_object(root, module, name))
    ]
    assert not missing, f"{module_name}: no docstring on {missing}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_method_has_a_docstring(module_name: str, root: griffe.Module) -> None:
    """Each public function member of an exported class has a docstring (attributes are
    documented in their class's Attributes section)."""
    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        obj = _griffe_object(root, module, name)
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


API_PAGES = {
    "work": "work.md",
    "work.adapters": "adapters.md",
    "work.stores": "stores.md",
    "work.abc": "abc.md",
    "work.testing": "testing.md",
    "work.scheduling": "scheduling.md",
    "work.server": "server.md",
    "work.remote": "remote.md",
}


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_the_api_reference(module_name: str, root: griffe.Module) -> None:
    """The module's API page lists it whole, and names the package listing would show as a
    submodule (``work.adapters.retry`` the module, not the function) get an entry of their own."""
    module = importlib.import_module(module_name)
    page = (ROOT / "docs" / "api" / API_PAGES[module_name]).read_text()
    assert f"::: {module_name}\n" in page
    package = root[module_name.removeprefix("work.")] if module_name != "work" else root
    assert isinstance(package, griffe.Module)
    for name in module.__all__:
        value = getattr(module, name)
        listed = package[name]
        if isinstance(listed, griffe.Module) and not isinstance(value, types.ModuleType):
            assert f"::: {value.__module__}.{value.__qualname__}\n" in page, name
