"""redbreaker: one shared circuit breaker per dependency for a whole fleet of processes.

Breaker state and counts live in Redis and change only through atomic Lua scripts, so
every process that builds ``Breaker("payments-api", store=...)`` sees and drives the same
breaker.
"""

from __future__ import annotations

from ._breaker import Breaker, Permit, TransitionHook
from ._clock import Clock, ManualClock, SystemClock
from ._config import BreakerConfig, ExceptionMatcher, Seconds, StoreErrorPolicy
from ._connect import connect
from ._doctor_core import DoctorReport, Finding
from ._exceptions import (
    AsyncCallError,
    AttemptRejectedError,
    AttemptTimeoutError,
    CircuitOpenError,
    ConfigError,
    PermitError,
    RedbreakerError,
    StoreError,
    StoreOutageWarning,
    StoreUnavailableError,
)
from ._guard import (
    AttemptInfo,
    Failure,
    FailureReason,
    Guard,
    GuardConfig,
    GuardedFunction,
    LastGoodValue,
    Outcome,
    fallback_value,
)
from ._health import StoreEvent
from ._keys import check_name
from ._observe import BreakerObserver, CallRecord
from ._state import Snapshot, State, Transition
from ._store import Store, StoreHook
from ._streams import StreamConsumer
from ._streams_core import StreamConfig, StreamMessage, StreamStats
from ._testing import is_testing, set_testing

__all__ = [
    "AsyncCallError",
    "AttemptInfo",
    "AttemptRejectedError",
    "AttemptTimeoutError",
    "Breaker",
    "BreakerConfig",
    "BreakerObserver",
    "CallRecord",
    "CircuitOpenError",
    "Clock",
    "ConfigError",
    "DoctorReport",
    "ExceptionMatcher",
    "Failure",
    "FailureReason",
    "Finding",
    "Guard",
    "GuardConfig",
    "GuardedFunction",
    "LastGoodValue",
    "ManualClock",
    "Outcome",
    "Permit",
    "PermitError",
    "RedbreakerError",
    "Seconds",
    "Snapshot",
    "State",
    "Store",
    "StoreError",
    "StoreErrorPolicy",
    "StoreEvent",
    "StoreHook",
    "StoreOutageWarning",
    "StoreUnavailableError",
    "StreamConfig",
    "StreamConsumer",
    "StreamMessage",
    "StreamStats",
    "SystemClock",
    "Transition",
    "TransitionHook",
    "check_name",
    "connect",
    "fallback_value",
    "is_testing",
    "set_testing",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 (only when asked)

        return version("redbreaker")
    raise AttributeError(f"module 'redbreaker' has no attribute {name!r}")
