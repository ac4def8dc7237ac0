"""The asyncio breaker's reading and operator orders, the twin of
:mod:`redbreaker._breaker_orders`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._config import Seconds
    from .._state import Snapshot, State
    from ._breaker import Breaker

__all__ = ["force_close", "force_open", "metrics_only", "order", "reset", "snapshot"]


async def snapshot(self: Breaker) -> Snapshot:
    """The breaker as Redis holds it now (one round trip; changes nothing but the
    sending of a cached breaker's counted successes)."""
    await self.flush()
    raw = await self.store.run("inspect", self._keys, self._core.inspect_args())
    snapshot = self._core.on_inspect_reply(raw)
    if self._quorum:
        own = self._own
        return self._with_process_state(
            snapshot, None if own is None else await own.snapshot()
        )
    return snapshot


async def order(self: Breaker, order: str, duration: Seconds | None) -> State:
    args = self._core.control_args(order, duration)
    return self._core.on_control_reply(await self.store.run("control", self._keys, args))


async def force_open(self: Breaker, duration: Seconds | None = None) -> State:
    """Reject every call fleet-wide, for ``duration`` or until another order."""
    return await self._order("force_open", duration)


async def force_close(self: Breaker, duration: Seconds | None = None) -> State:
    """Admit every call fleet-wide and count nothing, for ``duration`` or until another
    order."""
    return await self._order("force_close", duration)


async def metrics_only(self: Breaker, duration: Seconds | None = None) -> State:
    """Admit every call fleet-wide, count, and report would-trips instead of opening,
    for ``duration`` or until another order."""
    return await self._order("metrics_only", duration)


async def reset(self: Breaker) -> State:
    """Back to closed with empty counts and no open backoff, fleet-wide (and this
    process's own breaker too, with ``min_reporters`` > 1; other processes' own
    breakers when they hear the reset on the feed, else by their own recovery)."""
    state = await self._order("reset", None)
    if self._own is not None:
        await self._own.reset()
    return state
