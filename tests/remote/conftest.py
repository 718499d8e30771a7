"""Fixtures of the remote tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .asgi_peer import close_peers


@pytest.fixture(autouse=True)
def _close_peers() -> Iterator[None]:
    """Close the in-memory connections a test opened."""
    yield
    close_peers()
