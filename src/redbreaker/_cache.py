"""The local side of the cached consistency mode: a copy of the shared breaker, and the
successes counted locally until they are sent. Pure bookkeeping: no I/O here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._exceptions import CircuitOpenError
from ._state import State

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from ._state import AcquireReply, RecordReply
    from ._view import FleetView

__all__ = ["LOCAL_STATES", "Batch", "HeldOpen", "LocalCopy", "LocalKnowledge", "PermitKey"]

LOCAL_STATES = frozenset({State.CLOSED, State.METRICS_ONLY, State.FORCED_CLOSED})
"""States whose admissions a cached breaker may decide from its local copy."""


class PermitKey(Protocol):
    """The generation and incarnation a call was admitted under."""

    generation: int
    incarnation: str


class LocalCopy:
    """What a cached breaker knows of the shared one, and since when."""

    __slots__ = (
        "consecutive_failures", "generation", "heard", "incarnation", "state", "taken_at",
    )

    def __init__(
        self,
        generation: int,
        incarnation: str,
        consecutive_failures: int,
        heard: int,
        taken_at: float,
        *,
        state: str = "closed",
    ) -> None:
        self.state = state  # one of LOCAL_STATES: what the calls it admits run in
        self.generation = generation
        self.incarnation = incarnation
        self.consecutive_failures = consecutive_failures
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

    def add_one_unless_due(self, permit: PermitKey, interval: float, now: float) -> bool:
        """Count one call of the batch's generation unless that makes a send due; False:
        nothing was counted (the caller settles the call the long way)."""
        with self._lock:
            if (
                (permit.generation, permit.incarnation) != (self._generation, self._incarnation)
                or now - self._since >= interval
            ):
                return False
            self._calls += 1
            return True

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


class LocalKnowledge:
    """What a cached breaker holds of the shared one: its local copy, a forced-open it
    rejects from, and its batch of counted successes."""

    def __init__(
        self,
        name: str,
        max_staleness: float,
        batch_lock: Callable[[], AbstractContextManager[Any]],
        view: FleetView,
    ) -> None:
        self._name = name
        self._view = view
        self._max_staleness = max_staleness
        self.copy: LocalCopy | None = None
        self._held_open: HeldOpen | None = None
        self.batch = Batch(batch_lock())
        # A copy that only grew old (no transition heard) is renewed by one caller while
        # the others wait for its answer: else every thread or task calling the breaker
        # when the copy expires asks Redis at once, which is most of a busy fleet's load.
        self._renewable = False
        self.refreshing = False

    def forget_copies(self) -> None:
        """Ask Redis again at the next call (this process gave an order)."""
        self.copy = None
        self._held_open = None
        self._renewable = False

    def refresh_role(self) -> str:
        """How a caller the copy did not admit asks Redis: "lead" (it renews the copy for
        everyone: call :meth:`refresh_ended` after), "follow" (another caller is renewing
        it: wait for that, then try the copy again) or "alone" (nothing to share: the
        copy did not just grow old, e.g. a transition was heard or there was none; only
        a closed breaker's admissions are shared, so a leader never holds a probe slot)."""
        if not self._renewable:
            return "alone"
        if self.refreshing:
            return "follow"
        self.refreshing = True
        return "lead"

    def refresh_ended(self) -> None:
        """The leading caller has Redis's answer (or an error) in."""
        self.refreshing = False

    def fresh_copy(self, heard: int, now: float) -> LocalCopy | None:
        """The local copy if it may still admit: no transition heard since it was taken
        and younger than max_staleness; else None (Redis must decide).

        Raises:
            CircuitOpenError: the breaker is forced open without a deadline, as learned
                from Redis or from the feed.
        """
        copy = self.copy
        if copy is not None and (
            now - copy.taken_at >= self._max_staleness or heard != copy.heard
        ):
            self._renewable = heard == copy.heard  # it only grew old
            copy = self.copy = None  # a transition was pushed, or the copy is too old
        if copy is None:
            self._check_held_open(heard, now)
        return copy

    def _check_held_open(self, heard: int, now: float) -> None:
        held = self._held_open
        if held is not None and (
            held.heard != heard or now - held.taken_at >= self._max_staleness
        ):
            held = self._held_open = None
        if held is None:
            if self._view.last_event(self._name) != (heard, State.FORCED_OPEN.value, -1):
                return
            held = self._held_open = HeldOpen(heard, now)
        raise CircuitOpenError(self._name, State.FORCED_OPEN.value, None)

    def keep(self, reply: AcquireReply, heard: int, taken_at: float) -> None:
        """Take in an acquire's reply: a copy to admit from, or a forced-open to hold."""
        if (
            reply.verdict == "reject"
            and reply.state is State.FORCED_OPEN
            and reply.retry_after_ms < 0
            and not reply.transitions
        ):
            self._held_open = HeldOpen(heard, taken_at)
        self._renewable = False
        if reply.verdict == "admit" and reply.state in LOCAL_STATES and not reply.transitions:
            self.copy = LocalCopy(
                reply.generation, reply.incarnation, reply.consecutive_failures, heard, taken_at,
                state=reply.state.value,
            )
        else:
            self.copy = None

    def learn(self, reply: RecordReply) -> None:
        """The copy follows what this process's own records reveal."""
        copy = self.copy
        if copy is None:
            return
        if reply.status == "stale" or reply.transitions or reply.generation != copy.generation:
            # Redis moved on (or lost the breaker): ask it again at the next call.
            self.copy = None
        else:
            copy.consecutive_failures = reply.consecutive_failures
