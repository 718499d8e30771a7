"""The ``anywork`` program: one module per command group, ``main`` is the entry point."""

from __future__ import annotations

from ..stores import mask_url as mask_url
from ._common import CLIError as CLIError
from ._main import build_parser as build_parser
from ._main import main as main
from ._main import record_to_dict as record_to_dict
from .worker import load_worker as load_worker

__all__ = ("CLIError", "build_parser", "load_worker", "main", "mask_url", "record_to_dict")
