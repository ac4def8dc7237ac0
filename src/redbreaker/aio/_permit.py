"""The asyncio permit: leave to make one call through a :class:`~redbreaker.aio.Breaker`,
settled exactly once with ``await``; and what ``breaker.acquire()`` returns, to await or to
enter with ``async with``. The twin of :mod:`redbreaker._permit`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._bases import PermitBase

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine, Generator
    from types import TracebackType

    from .._config import Seconds
    from .._core import Outcome
    from ._breaker import Breaker

__all__ = ["Permit"]


async def _in_turn(first: Awaitable[object], then: Awaitable[object]) -> object:
    await first
    return await then


class Permit(PermitBase["Breaker"]):
    """Leave to make one call through an async breaker; report how it went exactly once.

    Get one with ``permit = await breaker.acquire()`` and ``await permit.success()``,
    ``await permit.failure(exc)`` or ``await permit.release()``; or use ``async with
    breaker.acquire() as permit:``, where leaving the block normally is a success and an
    exception is classified by the breaker's config (and re-raised). A cancelled block
    (``asyncio.CancelledError``) frees a probe's slot at once and counts nothing.
    """

    __slots__ = ()

    async def success(self) -> None:
        """The call succeeded."""
        await self._settle("success")

    async def failure(self, exc: BaseException | None = None) -> None:
        """The call failed. With ``exc``, the config's classification decides whether it
        counts as a failure, is ignored, or (a non-``Exception``) only releases the permit."""
        await self._settle(self._failure_outcome(exc))

    async def release(self) -> None:
        """The call ended without an outcome: count nothing, free a probe slot."""
        await self._settle("release")

    async def _settle(self, outcome: Outcome) -> None:
        self._take_settlement()
        breaker = self._breaker
        if self._state.own is not None:
            recording = breaker._settle_own(self._state, outcome=outcome)
            if recording is not None:
                await recording
        args = breaker._core.record_args(self._state, outcome)
        if args is not None:
            await breaker._send_record(self._state, outcome, args)

    def _finish(
        self, *, exc: BaseException | None = None, result: object = None
    ) -> Awaitable[object] | None:
        """Settle by how the call ended: the record to await, or None when Redis has
        nothing to learn (most successes: no coroutine is made for them)."""
        # The breaker that admitted the call records it: during an outage with
        # on_store_error="local" that is the process's own breaker, not the shared one.
        breaker = self._breaker
        own = None
        if self._state.own is not None:
            own = breaker._settle_own(self._state, exc=exc, result=result)
        outcome, args = breaker._core.finish_args(self._state, exc=exc, result=result)
        fleet = None if args is None else breaker._send_record(self._state, outcome, args)
        if own is None:
            return fleet
        return own if fleet is None else _in_turn(own, fleet)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome = self._block_outcome(exc)
        if outcome is not None:
            await self._settle(outcome)


class _Acquiring:
    """What ``breaker.acquire()`` returns: await it for a :class:`Permit`, or enter it with
    ``async with`` to have the permit settled by how the block ends."""

    __slots__ = ("_breaker", "_max_wait", "_permit")

    def __init__(self, breaker: Breaker, max_wait: Seconds | None) -> None:
        self._breaker = breaker
        self._max_wait = max_wait
        self._permit: Permit | None = None

    def _acquire(self) -> Coroutine[Any, Any, Permit]:
        if self._max_wait == 0:
            return self._breaker._acquire()
        return self._breaker._acquire_waiting(self._max_wait)

    def __await__(self) -> Generator[Any, None, Permit]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Permit:
        self._permit = await self._acquire()
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._permit is not None
        await self._permit.__aexit__(exc_type, exc, tb)
