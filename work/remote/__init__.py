"""Remote workers: a Relay hands jobs over WebSocket to workers that join it, and scalers
start and stop those workers with the load (jobber's relay). See docs/remote.md."""

from __future__ import annotations

from ._relay import Relay as Relay
from ._relay import RelayState as RelayState
from ._relay import RemoteResult as RemoteResult
from ._scalers import ProcessScaler as ProcessScaler
from ._scalers import Scaler as Scaler

__all__ = ("ProcessScaler", "Relay", "RelayState", "RemoteResult", "Scaler")
