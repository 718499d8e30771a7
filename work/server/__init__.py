"""The HTTP service: ``create_app(store, tokens=...)``, a Starlette app serving the v1 API.

Needs the ``server`` extra (Starlette, uvicorn, pydantic). ``anywork serve`` runs the same app
beside a worker in one process.
"""

from __future__ import annotations

from ._app import create_app as create_app

__all__ = ["create_app"]
