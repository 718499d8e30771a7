"""The dashboard: server-rendered pages over a store's queues and jobs (a Starlette sub-app)."""

from __future__ import annotations

from ._app import create_dashboard as create_dashboard

__all__ = ["create_dashboard"]
