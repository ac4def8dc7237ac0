"""The sync breaker's part of the fleet policies (:mod:`redbreaker._policies` decides):
a call asks this process's own breaker before the fleet's and settles both (quorum
opening), and a guard's retry asks the fleet's budget in one round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exceptions import CircuitOpenError, StoreError
from ._hooks import logger
from ._permit import Permit

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._core import Outcome, PermitState
    from ._policies import RetryVerdict

__all__ = ["acquire_with_own", "ask_retry", "own_breaker_now", "settle_own"]


def own_breaker_now(self: Breaker) -> Breaker:
    """This process's own breaker, reset first if an operator's reset of the fleet's
    breaker was heard on the feed since the last look."""
    own = self._own_breaker()
    if self._core.own_reset_heard():
        own.reset()
    return own


def acquire_with_own(self: Breaker) -> Permit:
    """Ask this process's own breaker, then the fleet's: both must admit the call,
    and its outcome goes to both. (An operator's forced_closed or metrics_only, once
    a reply shows it, sets the own breaker aside: it admits every call fleet-wide.)"""
    try:
        own = own_breaker_now(self).acquire()
    except CircuitOpenError as exc:
        raise self._process_rejection(exc) from None
    try:
        permit = self._acquire_now()
    except BaseException:
        own.release()
        raise
    permit._state.own = own
    return permit


def settle_own(
    self: Breaker,
    permit: PermitState,
    *,
    outcome: Outcome | None = None,
    exc: BaseException | None = None,
    result: object = None,
) -> None:
    """Settle the permit of this process's own breaker as the call's own."""
    own, permit.own = permit.own, None
    assert isinstance(own, Permit)
    try:
        if outcome is not None:
            own._settle(outcome)
        else:
            own._finish(exc=exc, result=result)
    except Exception:
        # Its bookkeeping must never break the call, nor hide its outcome.
        logger.exception("circuit %r: this process's own breaker could not record", self.name)


def ask_retry(self: Breaker, permit: PermitState) -> RetryVerdict:
    """The fleet's retry budget's answer to one retry of ``permit``'s call (one round
    trip; a call admitted without Redis, "allow" in an outage, is not limited).

    Raises:
        CircuitOpenError: the breaker is open: no more retries.
        StoreUnavailableError: Redis could not be asked.
    """
    if permit.offline:
        return "retry"
    try:
        raw = self.store.run("record", self._keys, self._core.retry_args(permit))
    except StoreError as exc:
        self._core.on_record_refused("retry", exc)
        return "retry"
    return self._core.on_retry_reply(raw)
