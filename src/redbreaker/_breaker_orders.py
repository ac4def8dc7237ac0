"""The sync breaker's reading and operator orders: a snapshot of what Redis holds, and the
fleet-wide orders (force open, force close, metrics only, reset), each one script call
whose reply the core decodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._config import Seconds
    from ._state import Snapshot, State

__all__ = ["force_close", "force_open", "metrics_only", "order", "reset", "snapshot"]


def snapshot(self: Breaker) -> Snapshot:
    """The breaker as Redis holds it now (one round trip; changes nothing but the
    sending of a cached breaker's counted successes)."""
    self.flush()
    raw = self.store.run("inspect", self._keys, self._core.inspect_args())
    snapshot = self._core.on_inspect_reply(raw)
    if self._quorum:
        own = self._own
        return self._with_process_state(snapshot, None if own is None else own.snapshot())
    return snapshot


def order(self: Breaker, order: str, duration: Seconds | None) -> State:
    args = self._core.control_args(order, duration)
    return self._core.on_control_reply(self.store.run("control", self._keys, args))


def force_open(self: Breaker, duration: Seconds | None = None) -> State:
    """Reject every call fleet-wide, for ``duration`` or until another order."""
    return self._order("force_open", duration)


def force_close(self: Breaker, duration: Seconds | None = None) -> State:
    """Admit every call fleet-wide and count nothing, for ``duration`` or until another
    order."""
    return self._order("force_close", duration)


def metrics_only(self: Breaker, duration: Seconds | None = None) -> State:
    """Admit every call fleet-wide, count, and report would-trips instead of opening,
    for ``duration`` or until another order."""
    return self._order("metrics_only", duration)


def reset(self: Breaker) -> State:
    """Back to closed with empty counts and no open backoff, fleet-wide (and this
    process's own breaker too, with ``min_reporters`` > 1; other processes' own
    breakers when they hear the reset on the feed, else by their own recovery)."""
    state = self._order("reset", None)
    if self._own is not None:
        self._own.reset()
    return state
