"""Build hook: put adapters/ into the wheel as work/adapters (the repository's symlink target)."""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class AdaptersHook(BuildHookInterface):
    """Copy adapters/ to work/adapters in a regular wheel, never in an editable one.

    An sdist cannot carry the ``work/adapters -> ../adapters`` symlink, so a wheel built from it
    would lack ``work.adapters``. ``force-include`` in pyproject.toml would fix that but also
    copies the files into editable installs, where they would shadow nothing and go stale; the
    editable install reaches them through the symlink instead.
    """

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Force-include adapters/ as work/adapters for the standard (non-editable) wheel."""
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"]["adapters"] = "work/adapters"
