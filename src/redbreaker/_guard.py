"""The guard, sync driver: runs the layers that :mod:`redbreaker._guard_core` decides,
with attempts in the breaker's own daemon threads (:mod:`redbreaker._timeout`) and
retries by tenacity's ``Retrying``.

::

    caller
      └─ fallback ........ degrades gracefully and says so (Outcome.degraded, a WARNING
          │                log line with event="degraded", a count per reason)
          └─ breaker ..... one permit per logical call, one outcome recorded for it
              └─ retry ... tenacity (private): only what retry_on names, full-jitter
                  │        backoff, never a sleep past the deadline, server retry_after
                  └─ timeout  per attempt, in the breaker's own daemon threads
                      └─ the call

Why this order: the breaker outside the retry sees one outcome per logical call, so
retries do not trip it early; the timeout inside the retry gives every attempt its own
budget; the fallback outside everything also catches rejections.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

import tenacity as _t

from . import _fork
from ._callables import refuse_generator, require_sync
from ._config import Seconds, plain_callable_setting, seconds_setting
from ._exceptions import (
    AsyncCallError,
    AttemptTimeoutError,
    StoreError,
    StoreUnavailableError,
)
from ._guard_config import (
    AttemptInfo,
    Failure,
    FailureReason,
    GuardConfig,
    Outcome,
    fallback_value,
    guard_config,
)
from ._guard_core import IN_RETRY_LOOP, GuardCall, GuardCore, ReplayedFirst

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._breaker import Breaker
    from ._permit import LeaseHold, Permit
    from ._timeout import AttemptRunner

__all__ = [
    "AttemptInfo",
    "BreakerLink",
    "Failure",
    "FailureReason",
    "Guard",
    "GuardConfig",
    "GuardedFunction",
    "LastGoodValue",
    "Outcome",
    "fallback_value",
]

P = ParamSpec("P")
R = TypeVar("R")


class BreakerLink(NamedTuple):
    """What a guard asks of its breaker beyond the public API, handed over by
    :meth:`Breaker.guard`: the guard reaches into nothing else of the breaker or its
    permits."""

    breaker: Breaker
    # The breaker's attempt threads: their limits are the breaker's, shared by its guards.
    attempt_runner: Callable[[], AttemptRunner]
    check_cached_rejection: Callable[[], None]
    lease_hold: Callable[[Permit], LeaseHold | None]
    finish: Callable[..., None]  # (permit, *, result, origin): settle by a returned value
    ended_by: Callable[..., None]  # (permit, exc, *, finishing, hold)


class Guard(GuardCore):
    """A breaker with retry, attempt timeout and fallback around it.

    Get one from :meth:`Breaker.guard`. ``guard.call(fn, ...)`` returns the value (the
    fallback's when degraded), ``guard.outcome(fn, ...)`` returns an :class:`Outcome` that
    says which, and ``@guard`` decorates a function keeping its signature; the decorated
    function has ``.outcome(...)`` too.
    """

    def __init__(self, link: BreakerLink, config: GuardConfig) -> None:
        if config.fallback is not None:
            # A coroutine fallback would be returned unawaited as the degraded value.
            plain_callable_setting("fallback", config.fallback)
        breaker = link.breaker
        super().__init__(breaker.name, config, breaker.store.clock, threading.Lock())
        self.breaker = breaker
        self._budgeted = breaker.config.retry_budget is not None
        self._link = link
        _fork.after_fork_in_child(self)

    def _after_fork_in_child(self) -> None:
        """A parent thread may have held the counts' lock at the fork."""
        self._degraded_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<redbreaker.Guard of {self.breaker!r}>"

    # -- public entry points -------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn`` through fallback, breaker, retry and timeout; return the value."""
        return self.outcome(fn, *args, **kwargs).value

    def outcome(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Outcome[R]:
        """Like :meth:`call`, but say whether the value is degraded and why."""
        require_sync(fn, self, "call()")
        refuse_generator(fn, self, "call()")
        call = GuardCall()
        try:
            value = self._through_breaker(call, functools.partial(fn, *args, **kwargs))
        except AsyncCallError:
            raise  # a programming error, not the dependency's: no fallback hides it
        except Exception as exc:
            return self._degraded_outcome(exc, call)
        return self._good_outcome(value, call)

    def __call__(self, fn: Callable[P, R]) -> GuardedFunction[P, R]:
        """Decorate ``fn``: every call goes through the guard; the signature is kept.

        Raises:
            AsyncCallError: ``fn`` is a coroutine function (use ``redbreaker.aio``).
        """
        require_sync(fn, self, "the decorator")
        refuse_generator(fn, self, "the decorator")
        return GuardedFunction(self, fn)

    def _through_breaker(self, call: GuardCall, fn: Callable[[], R]) -> R:
        finishing = False
        try:
            permit = self.breaker.acquire()
        except (StoreUnavailableError, StoreError):
            call.store_failed = True
            raise
        # Nothing between the permit and the try: an interrupt there would hold a probe's
        # slot until its lease expired.
        try:
            call.permit = permit
            call.hold = self._link.lease_hold(permit)
            self._begin(call, permit.is_probe)
            result = self._with_retries(call, fn)
            finishing = True
            self._link.finish(permit, result=result, origin=fn)
        except AsyncCallError:
            permit.release()  # nothing ran: count nothing
            raise
        except BaseException as exc:
            self._link.ended_by(permit, exc, finishing=finishing, hold=call.hold)
            raise
        return result

    def _with_retries(self, call: GuardCall, fn: Callable[[], R]) -> R:
        if call.max_attempts == 1:
            return self._attempt(call, fn)
        try:
            value = self._attempt(call, fn)
        except Exception as exc:
            first = self._replay_first(exc, None)
            if first is None:
                raise
        else:
            first = self._replay_first(None, value)
            if first is None:
                return value
        sleep = functools.partial(self._sleep_if_granted, call) if self._budgeted else self._sleep
        retrying = _t.Retrying(sleep=sleep, **self._retry_policy(call, budgeted=self._budgeted))
        result: R = retrying(self._attempt_after, first, call, fn)
        return result

    def _attempt_after(self, first: ReplayedFirst, call: GuardCall, fn: Callable[[], R]) -> R:
        """Attempt 1 replayed from ``first`` (it already ran), then real attempts."""
        return first.replay() if not first.replayed else self._attempt(call, fn)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.breaker.store.clock.sleep(seconds)

    def _attempt(self, call: GuardCall, fn: Callable[[], R]) -> R:
        if call.attempts:
            if call.budget_exhausted:
                return self._budget_spent(call)  # type: ignore[no-any-return]
            if self._budgeted:
                # The budget was asked before the backoff: an open this process heard while
                # it slept (its feed, another call's rejection) still stops the retry.
                self._link.check_cached_rejection()
            elif self.config.recheck_breaker:
                self._recheck()
        budget = self._budget(call)
        call.attempts += 1
        clock = self.breaker.store.clock
        started = clock.monotonic()
        # A fresh copy per attempt: an abandoned attempt may still run in the previous one,
        # and the worker thread sees the caller's context variables.
        context = contextvars.copy_context()
        if call.max_attempts > 1:
            context.run(IN_RETRY_LOOP.set, True)
        try:
            if budget is None:
                result = context.run(fn)
            else:
                runner = self._link.attempt_runner()
                result = runner.run(functools.partial(context.run, fn), budget, call.hold)
        except BaseException as exc:
            call.last_error = exc
            duration = budget if isinstance(exc, AttemptTimeoutError) and budget else None
            self._attempted(call, duration or clock.monotonic() - started, exc)
            raise
        call.last_error, call.last_value = None, result
        self._attempted(call, clock.monotonic() - started, None)
        return result

    def _sleep_if_granted(self, call: GuardCall, seconds: float) -> None:
        """Before a retry's backoff, ask the fleet's retry budget (its round trip also
        stands in for the recheck): refused, the call ends without sleeping."""
        if self._retry_granted(call):
            self._say_retry(call, call.retry_note)
            self._sleep(seconds)
        else:
            call.budget_exhausted = True

    def _retry_granted(self, call: GuardCall) -> bool:
        """Ask the fleet's retry budget for one retry (one round trip).

        Raises:
            CircuitOpenError: the breaker opened meanwhile (or this process holds a
                rejection of it): no more retries.
        """
        self._link.check_cached_rejection()
        permit: Permit = call.permit
        try:
            return permit._breaker._ask_retry(permit._state) == "retry"
        except StoreUnavailableError as exc:
            self._recheck_unavailable(exc, self.breaker.config.on_store_error)
            return True

    def _recheck(self) -> None:
        """Stop retrying if the shared breaker opened meanwhile (by any process)."""
        self._link.check_cached_rejection()
        try:
            snapshot = self.breaker.snapshot()
        except StoreUnavailableError as exc:
            self._recheck_unavailable(exc, self.breaker.config.on_store_error)
            return
        self._recheck_snapshot(snapshot)


class GuardedFunction(Generic[P, R]):
    """A function decorated by a guard: call it as before, or ask ``.outcome(...)``."""

    def __init__(self, guard: Guard, fn: Callable[P, R]) -> None:
        self.guard = guard
        self.__wrapped__ = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.guard.call(self.__wrapped__, *args, **kwargs)

    def outcome(self, *args: P.args, **kwargs: P.kwargs) -> Outcome[R]:
        """Call it and say whether the value is degraded (see :class:`Outcome`)."""
        return self.guard.outcome(self.__wrapped__, *args, **kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:  # noqa: ANN401
        # Decorating a method: bind like a function would.
        if instance is None:
            return self
        return GuardedFunction(self.guard, types.MethodType(self.__wrapped__, instance))


_MISSING: Any = object()


class LastGoodValue(Generic[R]):
    """A fallback that returns the last value a real call returned.

    Pass it as ``fallback=``; the guard hands it every good result. Before the first good
    result (or once it is older than ``max_age`` seconds) it returns ``default`` if one
    was given, else it re-raises the failure. One value per guard, whatever the arguments:
    use it for calls whose answer does not depend on them (a config fetch, a price list).
    """

    def __init__(self, default: R = _MISSING, *, max_age: Seconds | None = None) -> None:
        self._default = default
        self._max_age = seconds_setting("max_age", max_age, optional=True)
        self._last: tuple[float, R] | None = None

    def remember(self, value: R) -> None:
        """Keep ``value`` as the last good one."""
        self._last = (time.monotonic(), value)

    def __call__(self, failure: Failure) -> R:
        last = self._last
        if last is not None and (
            self._max_age is None or time.monotonic() - last[0] <= self._max_age
        ):
            return last[1]
        if self._default is not _MISSING:
            return self._default
        raise failure.exception


def build_guard(link: BreakerLink, config: GuardConfig | None, settings: dict[str, Any]) -> Guard:
    """A guard for ``link.breaker``: ``config`` with keyword ``settings`` applied."""
    return Guard(link, guard_config(config, settings))
