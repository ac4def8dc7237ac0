"""The asyncio breaker's part of the fleet policies, the twin of
:mod:`redbreaker._breaker_policies`: a call asks this process's own breaker before the
fleet's and settles both (quorum opening), and a guard's retry asks the fleet's budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from .._exceptions import CircuitOpenError, StoreError
from .._hooks import logger

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .._core import Outcome, PermitState
    from .._policies import RetryVerdict
    from ._breaker import Breaker
    from ._permit import Permit

__all__ = ["acquire_with_own", "ask_retry", "own_abandoned", "own_breaker_now", "settle_own"]


async def own_breaker_now(self: Breaker) -> Breaker:
    """This process's own breaker, reset first if an operator's reset of the fleet's
    breaker was heard on the feed since the last look."""
    own = self._own_breaker()
    if self._core.own_reset_heard():
        await own.reset()
    return own


async def _logged(name: str, recording: Awaitable[object]) -> None:
    """Await the recording of a process's own breaker; its failure never breaks the call."""
    try:
        await recording
    except Exception:
        logger.exception("circuit %r: this process's own breaker could not record", name)


async def acquire_with_own(self: Breaker) -> Permit:
    """Ask this process's own breaker, then the fleet's: both must admit the call,
    and its outcome goes to both."""
    try:
        own = await (await own_breaker_now(self))._acquire()
    except CircuitOpenError as exc:
        raise self._process_rejection(exc) from None
    try:
        permit = await self._acquire_now()
    except BaseException as exc:
        if isinstance(exc, Exception):
            await own.release()
        else:
            self._own_abandoned(own._state)
        raise
    permit._state.own = own
    return permit


def own_abandoned(self: Breaker, own: PermitState) -> None:
    """A cancelled call's own permit: settled at once, a probe's slot freed in a task."""
    own.settled = True
    if own.probe_token:
        assert self._own is not None
        self._own._free_slot(self._own._core.release_args(own))


def settle_own(
    self: Breaker,
    permit: PermitState,
    *,
    outcome: Outcome | None = None,
    exc: BaseException | None = None,
    result: object = None,
) -> Awaitable[object] | None:
    """Settle the permit of this process's own breaker as the call's own: what to
    await, or None when its in-process Redis has nothing to learn (a success)."""
    own = cast("Permit", permit.own)  # an aio Permit of this breaker's own breaker
    permit.own = None
    if outcome is not None:
        return _logged(self.name, own._settle(outcome))
    try:
        recording = own._finish(exc=exc, result=result)
    except Exception:
        logger.exception("circuit %r: this process's own breaker could not record", self.name)
        return None
    return None if recording is None else _logged(self.name, recording)


async def ask_retry(self: Breaker, permit: PermitState) -> RetryVerdict:
    """The fleet's retry budget's answer to one retry of ``permit``'s call: the twin
    of :meth:`redbreaker.Breaker._ask_retry`."""
    if permit.offline:
        return "retry"
    try:
        raw = await self.store.run("record", self._keys, self._core.retry_args(permit))
    except StoreError as exc:
        self._core.on_record_refused("retry", exc)
        return "retry"
    return self._core.on_retry_reply(raw)
