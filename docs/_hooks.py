"""mkdocs hook: leave out the API pages of modules this checkout does not have yet."""

from __future__ import annotations

import importlib.util
import re
import textwrap
from typing import Any

# API reference pages for modules that land in later releases: a page is built only when its
# module can be imported, so the strict build passes before and after they exist.
OPTIONAL_PAGES = {"api/testing.md": "work.testing", "api/scheduling.md": "work.scheduling"}


def _missing() -> set[str]:
    """The pages of OPTIONAL_PAGES whose module is not there."""
    return {
        page for page, module in OPTIONAL_PAGES.items() if importlib.util.find_spec(module) is None
    }


def _prune(nav: Any, missing: set[str]) -> Any:
    """Return ``nav`` without the entries that point at a missing page."""
    if isinstance(nav, list):
        kept = [_prune(item, missing) for item in nav]
        return [item for item in kept if item is not None]
    if isinstance(nav, dict):
        kept = {key: _prune(value, missing) for key, value in nav.items()}
        return {key: value for key, value in kept.items() if value is not None} or None
    return None if nav in missing else nav


def on_config(config: Any) -> Any:
    """Drop the missing modules' pages from the navigation."""
    config["nav"] = _prune(config["nav"], _missing())
    return config


def on_files(files: Any, config: Any) -> Any:
    """Drop the missing modules' pages from the site."""
    for page in _missing():
        file = files.get_file_from_path(page)
        if file is not None:
            files.remove(file)
    return files


ERROR_TREE_MARKER = "<!-- the error tree -->"


def _error_tree() -> str:
    """Markdown for the error tree: work/_core/exceptions.py's docstring, then each class.

    The docstring's ``::`` block becomes a code block; every name drawn in the tree gets its
    reference entry, from ``work`` when it is exported there.
    """
    import work
    from work._core import exceptions

    intro, _, rest = (exceptions.__doc__ or "").partition("::")
    tree, _, after = rest.strip("\n").partition("\n\n")
    lines = [intro.strip(), "", "```text", textwrap.dedent(tree), "```", "", after.strip(), ""]
    for name in re.findall(r"^[\s│├└─]*([A-Z]\w*)", textwrap.dedent(tree), re.M):
        if not isinstance(getattr(exceptions, name, None), type):
            raise ValueError(f"the error tree names {name!r}, which work._core.exceptions lacks")
        module = "work" if name in work.__all__ else "work._core.exceptions"
        lines += [f"::: {module}.{name}", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the exceptions page's marker with the error tree."""
    if ERROR_TREE_MARKER in markdown:
        markdown = markdown.replace(ERROR_TREE_MARKER, _error_tree())
    return markdown
