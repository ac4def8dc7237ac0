"""redbreaker for asyncio: the same breakers, the same names and settings, awaited.

::

    import redbreaker.aio

    store = redbreaker.aio.connect("redis://localhost:6379/0")   # or "memory://"
    payments = redbreaker.aio.Breaker("payments-api", store=store, failure_threshold=5)

    await payments.call(fetch, url)

A breaker here and a :class:`redbreaker.Breaker` of the same name on the same Redis are one
breaker: both drivers send the same Lua the same arguments, decided by one sans-I/O core.
"""

from __future__ import annotations

from .._config import BreakerConfig
from .._core import TransitionHook
from .._doctor_core import DoctorReport, Finding
from .._exceptions import (
    AsyncCallError,
    AttemptRejectedError,
    AttemptTimeoutError,
    CircuitOpenError,
    ConfigError,
    PermitError,
    RedbreakerError,
    StoreError,
    StoreUnavailableError,
)
from .._state import Snapshot, State, Transition
from .._streams_core import StreamConfig, StreamMessage, StreamStats
from ._breaker import Breaker
from ._connect import connect
from ._permit import Permit
from ._store import Store
from ._streams import StreamConsumer

__all__ = [
    "AsyncCallError",
    "AttemptRejectedError",
    "AttemptTimeoutError",
    "Breaker",
    "BreakerConfig",
    "CircuitOpenError",
    "ConfigError",
    "DoctorReport",
    "Finding",
    "Permit",
    "PermitError",
    "RedbreakerError",
    "Snapshot",
    "State",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "StreamConfig",
    "StreamConsumer",
    "StreamMessage",
    "StreamStats",
    "Transition",
    "TransitionHook",
    "connect",
]
