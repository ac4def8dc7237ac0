"""A permit: leave to make one call through a sync breaker, settled exactly once; and the
hold that keeps an abandoned probe's lease until its attempt ends."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ._bases import PermitBase
from ._callables import refuse_result

if TYPE_CHECKING:
    from types import TracebackType

    from ._breaker import Breaker
    from ._core import Outcome, PermitState

__all__ = ["LeaseHold", "Permit"]


class LeaseHold:
    """Keeps a probe's lease while its attempt runs on abandoned (it timed out, or its
    caller was interrupted): the caller has its answer and the breaker its outcome, but the
    dependency is still serving the probe, so no other probe may take its slot until it
    ends (or its lease expires). An :class:`AbandonWatcher` for the attempt runner."""

    __slots__ = ("_breaker", "_lock", "_owed", "_permit", "_running")

    def __init__(self, breaker: Breaker, permit: PermitState) -> None:
        self._breaker = breaker
        self._permit = permit
        self._lock = threading.Lock()
        self._running = False
        self._owed = False  # the outcome went out keeping the lease: ended() frees it

    def abandoned(self) -> None:
        with self._lock:
            self._running = True

    def keep(self) -> bool:
        """True when the attempt still runs: the outcome must leave the lease in place."""
        with self._lock:
            self._owed = self._running
            return self._owed

    def ended(self) -> None:
        with self._lock:
            self._running = False
            owed, self._owed = self._owed, False
        if owed:
            self._breaker._record(self._permit, "release")


class Permit(PermitBase["Breaker"]):
    """Leave to make one call through a breaker; report how it went exactly once.

    Get one from :meth:`Breaker.acquire`. Call :meth:`success`, :meth:`failure` or
    :meth:`release`, or use it as a context manager: leaving the block normally is a
    success, an exception is classified by the breaker's config (and re-raised).

    A permit that is never settled counts as a call that did not fail; if it was a probe,
    its slot returns after ``probe_lease``.
    """

    __slots__ = ()

    def success(self) -> None:
        """The call succeeded."""
        self._settle("success")

    def failure(self, exc: BaseException | None = None) -> None:
        """The call failed. With ``exc``, the config's classification decides whether it
        counts as a failure, is ignored, or (a non-``Exception``) only releases the permit."""
        self._settle(self._failure_outcome(exc))

    def release(self) -> None:
        """The call ended without an outcome (cancelled): count nothing, free a probe slot."""
        self._settle("release")

    def _settle(self, outcome: Outcome) -> None:
        self._take_settlement()
        self._breaker._record(self._state, outcome)

    def _finish(
        self,
        *,
        exc: BaseException | None = None,
        result: object = None,
        hold: LeaseHold | None = None,
        origin: object = None,
    ) -> None:
        """Settle by how the call ended: ``exc``, or returning ``result`` (refused with
        :class:`AsyncCallError` before anything is recorded when it is an awaitable that
        ``origin`` returned)."""
        # is_awaitable(), inlined: this runs for every call.
        if exc is None and hasattr(result, "__await__"):
            raise refuse_result(origin, result)
        # The breaker that admitted the call records it: during an outage with
        # on_store_error="local" that is the process's own breaker, not the shared one.
        self._breaker._settle(self._state, exc=exc, result=result, hold=hold)

    def _ended_by(
        self, exc: BaseException, *, finishing: bool, hold: LeaseHold | None = None
    ) -> None:
        """The call (or, ``finishing``, the recording of its result) raised ``exc``."""
        if not finishing:
            self._finish(exc=exc, hold=hold)
        elif not isinstance(exc, Exception):
            self._finish(exc=exc)  # interrupted while recording: free a probe's slot

    def _lease_hold(self) -> LeaseHold | None:
        """A hold on this probe's lease for an attempt that may be abandoned; None when
        the call is not a probe."""
        return LeaseHold(self._breaker, self._state) if self._state.probe_token else None

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome = self._block_outcome(exc)
        if outcome is not None:
            self._settle(outcome)
