"""Where a breaker gets its time from.

A fleet shares one clock, the Redis server's (``TIME`` inside every script). A process uses
its own monotonic clock only to time a call and to age a rejection it cached.
:class:`ManualClock` replaces both, so tests move time without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """The two readings a breaker needs."""

    def server_ms(self) -> int | None:
        """Unix ms the scripts should take as "now", or None to use Redis ``TIME``."""

    def monotonic(self) -> float:
        """Seconds on a local clock that never goes back."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (between retry attempts)."""


class SystemClock:
    """Production time: Redis ``TIME`` for shared decisions, ``time.monotonic`` locally."""

    def server_ms(self) -> None:
        return None

    # The builtin itself, not a method around it: the cached hot path reads it per call.
    monotonic = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class ManualClock:
    """A clock that moves only when told, for tests.

    Both readings come from one counter, so advancing it moves the scripts' "now" and ages
    locally cached rejections together. Every process of a fleet must share one clock, so
    this is for a single process (or a test that hands the same readings to each).
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._lock = threading.Lock()

    def server_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._now_ms / 1000

    def sleep(self, seconds: float) -> None:
        """Sleeping on a manual clock moves it: retries in tests take no real time."""
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (rounded to whole ms)."""
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        with self._lock:
            self._now_ms += round(seconds * 1000)
