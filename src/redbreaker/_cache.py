"""The local side of the cached consistency mode: a copy of the shared breaker, and the
successes counted locally until they are sent. Pure bookkeeping: no I/O here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._state import State

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["LOCAL_STATES", "Batch", "HeldOpen", "LocalCopy", "PermitKey"]

LOCAL_STATES = frozenset({State.CLOSED, State.METRICS_ONLY, State.FORCED_CLOSED})
"""States whose admissions a cached breaker may decide from its local copy."""


class PermitKey(Protocol):
    """The generation and incarnation a call was admitted under."""

    generation: int
    incarnation: str


class LocalCopy:
    """What a cached breaker knows of the shared one, and since when."""

    __slots__ = ("generation", "heard", "incarnation", "streak", "taken_at")

    def __init__(
        self, generation: int, incarnation: str, streak: int, heard: int, taken_at: float
    ) -> None:
        self.generation = generation
        self.incarnation = incarnation
        self.streak = streak
        self.heard = heard
        self.taken_at = taken_at


class HeldOpen:
    """A breaker forced open without a deadline, as a cached breaker last learned it (from
    Redis or from the feed): rejected locally while no transition is heard, for at most
    max_staleness."""

    __slots__ = ("heard", "taken_at")

    def __init__(self, heard: int, taken_at: float) -> None:
        self.heard = heard
        self.taken_at = taken_at


class Batch:
    """Successes counted locally, waiting to be sent in one round trip.

    ``lock`` guards it: a real lock where threads share the breaker, a no-op on an event
    loop (never held across an await: every method is synchronous).
    """

    def __init__(self, lock: AbstractContextManager[Any]) -> None:
        self._lock = lock
        self._calls = 0
        self._generation = 0
        self._incarnation = ""
        self._since = 0.0

    def add(
        self, permit: PermitKey, calls: int, interval: float, now: float
    ) -> tuple[int, str, int] | None:
        """Count ``calls``; return (generation, incarnation, calls) when a send is due."""
        with self._lock:
            if (permit.generation, permit.incarnation) != (self._generation, self._incarnation):
                if (
                    self._calls
                    and permit.incarnation == self._incarnation
                    and permit.generation < self._generation
                ):
                    # A late outcome of an earlier generation: stale in Redis anyway, and
                    # no reason to drop what the current generation has counted.
                    return None
                # The breaker moved on: what was counted under the old generation is stale.
                self._calls, self._since = 0, now
                self._generation, self._incarnation = permit.generation, permit.incarnation
            self._calls += calls
            if self._calls == 0 or now - self._since < interval:
                return None
            due = (self._generation, self._incarnation, self._calls)
            self._calls, self._since = 0, now
            return due

    def take(self, generation: int, incarnation: str) -> int:
        """The counted calls of that generation, to ride along with an outcome."""
        with self._lock:
            if (generation, incarnation) != (self._generation, self._incarnation):
                return 0
            calls, self._calls = self._calls, 0
            return calls

    def drain(self) -> tuple[int, str, int] | None:
        """Everything counted, to send now; None when there is nothing."""
        with self._lock:
            if self._calls == 0:
                return None
            due = (self._generation, self._incarnation, self._calls)
            self._calls = 0
            return due
