"""The guard: the four resilience layers composed in one order, here and only here.

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
import logging
import math
import random
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

import tenacity as _t

from . import _fork
from ._callables import require_sync
from ._config import (
    ExceptionMatcher,
    Seconds,
    count_setting,
    matcher_setting,
    seconds_setting,
)
from ._exceptions import (
    AsyncCallError,
    AttemptRejectedError,
    AttemptTimeoutError,
    CircuitOpenError,
    ConfigError,
    StoreError,
    StoreUnavailableError,
)
from ._testing import testing_mode

if TYPE_CHECKING:
    from ._breaker import Breaker, LeaseHold, Permit

__all__ = [
    "AttemptInfo",
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
logger = logging.getLogger("redbreaker")

FailureReason = Literal[
    "circuit_open", "timeout", "retries_exhausted", "store_unavailable", "error"
]
"""Why a guarded call failed, as its fallback is told."""

# Set while a guard's retry loop runs an attempt: a guarded call nested inside it runs a
# single attempt, so three layers of 3 attempts cost 3 calls, not 27.
_IN_RETRY_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "redbreaker_in_retry_loop", default=False
)
# Exponents past this only produce the cap; clamping first keeps 2**n finite.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class Failure:
    """What a fallback is told.

    Attributes:
        reason: ``"circuit_open"`` (rejected, the call never ran), ``"timeout"`` (the
            attempt outlived its budget), ``"retries_exhausted"`` (more than one attempt,
            all failed), ``"store_unavailable"`` (Redis could not be asked), ``"error"``.
        exception: the exception that ended the call.
        breaker: the breaker's name.
        attempts: attempts made (0 when the call never ran).
    """

    reason: FailureReason
    exception: Exception
    breaker: str
    attempts: int


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The result of a guarded call, and whether it is the real thing.

    Attributes:
        value: the call's result, or the fallback's when ``degraded``.
        degraded: True when the fallback produced ``value``.
        failure: why, when degraded; else None.
        attempts: attempts made.
    """

    value: R
    degraded: bool
    failure: Failure | None
    attempts: int


@dataclass(frozen=True)
class AttemptInfo:
    """One attempt, as the ``on_attempt`` hooks see it.

    Attributes:
        breaker: the breaker's name.
        attempt: 1-based number of this attempt.
        max_attempts: attempts this call may make.
        duration: seconds it took (its budget, when it timed out).
        exception: what it raised, or None when it returned.
    """

    breaker: str
    attempt: int
    max_attempts: int
    duration: float
    exception: BaseException | None


def _never_retry_result(result: object) -> bool:
    return False


@dataclass(frozen=True)
class GuardConfig:
    """How a guard retries, times out and degrades. Validated when built.

    Attributes:
        attempt_timeout: seconds each attempt may take before the caller gets control
            back with :class:`AttemptTimeoutError`; None runs attempts in the caller's
            thread with no timeout (unless a ``deadline`` is set). The timed-out work is
            **not** killed: it keeps running in a daemon thread (see
            ``BreakerConfig.max_abandoned_attempts``).
        max_attempts: attempts per call, the first included (default 3). Only exceptions
            that ``retry_on`` names, or results ``retry_result`` marks, are retried.
        retry_on: exceptions to retry: types or a predicate. No default: without it
            nothing is retried. Name ``AttemptTimeoutError`` (or ``TimeoutError``) only
            when the call is safe to repeat while an abandoned attempt may still run.
        retry_result: a predicate on a returned value that asks for another attempt. When
            attempts run out the last value is returned.
        backoff_base: the first backoff's upper bound; it doubles per attempt.
        backoff_max: cap of the backoff. Each sleep is drawn uniformly from 0 to the
            capped bound (full jitter).
        deadline: seconds for the whole call, every attempt and sleep included. No sleep
            that would end past it is started, and each attempt gets
            ``min(attempt_timeout, time left)``.
        max_retry_after: an exception's ``retry_after`` (seconds or timedelta, e.g. from a
            429) is slept as given, never jittered down; above this, or past the deadline,
            the call gives up at once.
        recheck_breaker: ask the shared breaker before every retry, so no worker retries
            into a breaker another worker has just opened (one round trip per retry).
        fallback: called with a :class:`Failure` when the call fails with an
            ``Exception``; its return value becomes the degraded result. An exception it
            raises propagates, chained to the original failure.
        on_attempt: callables run with an :class:`AttemptInfo` after every attempt.
    """

    attempt_timeout: Seconds | None = None
    max_attempts: int = 3
    retry_on: ExceptionMatcher | None = None
    retry_result: Callable[[Any], bool] | None = None
    backoff_base: Seconds = 0.1
    backoff_max: Seconds = 5.0
    deadline: Seconds | None = None
    max_retry_after: Seconds = 60.0
    recheck_breaker: bool = True
    fallback: Callable[[Failure], Any] | None = None
    on_attempt: tuple[Callable[[AttemptInfo], None], ...] = ()

    def __post_init__(self) -> None:
        seconds_setting("attempt_timeout", self.attempt_timeout, optional=True)
        count_setting("max_attempts", self.max_attempts)
        matcher_setting("retry_on", self.retry_on, optional=True)
        for name in ("retry_result", "fallback"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(name, f"must be callable, got {value!r}")
        base = seconds_setting("backoff_base", self.backoff_base)
        cap = seconds_setting("backoff_max", self.backoff_max)
        assert base is not None
        assert cap is not None
        if cap < base:
            raise ConfigError("backoff_max", f"must be >= backoff_base ({base}s), got {cap}s")
        seconds_setting("deadline", self.deadline, optional=True)
        seconds_setting("max_retry_after", self.max_retry_after)
        if not isinstance(self.recheck_breaker, bool):
            raise ConfigError("recheck_breaker", f"must be a bool, got {self.recheck_breaker!r}")
        hooks = self.on_attempt
        if callable(hooks):
            object.__setattr__(self, "on_attempt", (hooks,))
        elif isinstance(hooks, Iterable) and not isinstance(hooks, (str, bytes)):
            object.__setattr__(self, "on_attempt", tuple(hooks))
        else:
            raise ConfigError("on_attempt", f"must be a callable or callables, got {hooks!r}")
        for hook in self.on_attempt:
            if not callable(hook):
                raise ConfigError("on_attempt", f"{hook!r} is not callable")

    @classmethod
    def setting_names(cls) -> frozenset[str]:
        """The names a guard accepts as keyword settings."""
        return frozenset(f.name for f in fields(cls))


def _seconds(value: Seconds | None) -> float | None:
    return seconds_setting("duration", value, optional=True)


def _server_delay(exc: BaseException | None) -> float | None:
    """An exception's ``retry_after`` in seconds, if it carries a usable one."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return None
    return float(value)


class _First:
    """The outcome of a call's first attempt, handed to the retry loop to replay."""

    __slots__ = ("error", "replayed", "value")

    def __init__(self, error: Exception | None, value: object) -> None:
        self.error = error
        self.value = value
        self.replayed = False


class _Call:
    """What one guarded call has done so far (never shared between calls)."""

    __slots__ = ("attempts", "deadline_ms", "give_up", "hold", "last_error", "max_attempts",
                 "store_failed")

    def __init__(self) -> None:
        self.attempts = 0
        # A probe's lease, kept while its attempt runs on abandoned (None: not a probe).
        self.hold: LeaseHold | None = None
        self.max_attempts = 1
        # Whole ms on the local clock: float seconds near 1.7e9 carry a remainder that let
        # an attempt start exactly at the deadline.
        self.deadline_ms: int | None = None
        self.give_up = False
        self.store_failed = False
        self.last_error: BaseException | None = None


class Guard:
    """A breaker with retry, attempt timeout and fallback around it.

    Get one from :meth:`Breaker.guard`. ``guard.call(fn, ...)`` returns the value (the
    fallback's when degraded), ``guard.outcome(fn, ...)`` returns an :class:`Outcome` that
    says which, and ``@guard`` decorates a function keeping its signature; the decorated
    function has ``.outcome(...)`` too.
    """

    def __init__(self, breaker: Breaker, config: GuardConfig) -> None:
        self.breaker = breaker
        self.config = config
        self._attempt_timeout = _seconds(config.attempt_timeout)
        self._deadline = _seconds(config.deadline)
        self._base = _seconds(config.backoff_base) or 0.0
        self._cap = _seconds(config.backoff_max) or 0.0
        self._max_retry_after = _seconds(config.max_retry_after) or 0.0
        self._retry_result = config.retry_result or _never_retry_result
        self._degraded: Counter[str] = Counter()
        self._degraded_lock = threading.Lock()
        self._random = random.random
        _fork.after_fork_in_child(self)

    def _after_fork_in_child(self) -> None:
        """A parent thread may have held the counts' lock at the fork."""
        self._degraded_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<redbreaker.Guard of {self.breaker!r}>"

    @property
    def degraded_counts(self) -> dict[str, int]:
        """Degraded results this guard returned in this process, by reason."""
        with self._degraded_lock:
            return dict(self._degraded)

    # -- public entry points -------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn`` through fallback, breaker, retry and timeout; return the value."""
        return self.outcome(fn, *args, **kwargs).value

    def outcome(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Outcome[R]:
        """Like :meth:`call`, but say whether the value is degraded and why."""
        require_sync(fn, self, "call()")
        call = _Call()
        try:
            value = self._through_breaker(call, functools.partial(fn, *args, **kwargs))
        except AsyncCallError:
            raise  # a programming error, not the dependency's: no fallback hides it
        except Exception as exc:
            fallback = self.config.fallback
            if fallback is None:
                raise
            failure = Failure(self._reason(exc, call), exc, self.breaker.name, call.attempts)
            return Outcome(self._degrade(fallback, failure), True, failure, call.attempts)
        remember = getattr(self.config.fallback, "remember", None)
        if remember is not None:
            remember(value)
        return Outcome(value, False, None, call.attempts)

    def __call__(self, fn: Callable[P, R]) -> GuardedFunction[P, R]:
        """Decorate ``fn``: every call goes through the guard; the signature is kept.

        Raises:
            AsyncCallError: ``fn`` is a coroutine function (use ``redbreaker.aio``).
        """
        require_sync(fn, self, "the decorator")
        return GuardedFunction(self, fn)

    # -- fallback ------------------------------------------------------------------------

    def _reason(self, exc: Exception, call: _Call) -> FailureReason:
        if call.store_failed or isinstance(exc, StoreUnavailableError):
            return "store_unavailable"
        if isinstance(exc, CircuitOpenError):
            return "circuit_open"
        if call.attempts > 1:
            return "retries_exhausted"
        if isinstance(exc, AttemptTimeoutError):
            return "timeout"
        return "error"

    def _degrade(self, fallback: Callable[[Failure], R], failure: Failure) -> R:
        with self._degraded_lock:
            self._degraded[failure.reason] += 1
        exc = failure.exception
        logger.warning(
            "circuit %r: degraded result (%s) after %d attempt(s): %s: %s",
            failure.breaker,
            failure.reason,
            failure.attempts,
            type(exc).__name__,
            exc,
            extra={
                "event": "degraded",
                "breaker": failure.breaker,
                "reason": failure.reason,
                "attempts": failure.attempts,
                "error": type(exc).__name__,
            },
        )
        try:
            return fallback(failure)
        except Exception as fallback_exc:
            if fallback_exc is exc:
                raise
            raise fallback_exc from exc

    # -- breaker -------------------------------------------------------------------------

    def _through_breaker(self, call: _Call, fn: Callable[[], R]) -> R:
        finishing = False
        try:
            permit = self.breaker.acquire()
        except (StoreUnavailableError, StoreError):
            call.store_failed = True
            raise
        # Nothing between the permit and the try: an interrupt there would hold a probe's
        # slot until its lease expired.
        try:
            call.hold = permit._lease_hold()
            call.max_attempts = self._attempts_allowed(permit)
            if self._deadline is not None:
                call.deadline_ms = self._now_ms() + math.ceil(self._deadline * 1000)
            result = self._with_retries(call, fn)
            finishing = True
            permit._finish(result=result, origin=fn)
        except AsyncCallError:
            permit.release()  # nothing ran: count nothing
            raise
        except BaseException as exc:
            permit._ended_by(exc, finishing=finishing, hold=call.hold)
            raise
        return result

    def _attempts_allowed(self, permit: Permit) -> int:
        if permit.is_probe or _IN_RETRY_LOOP.get():
            # A probe is one call, not a burst; a nested guard leaves retrying to the outer.
            return 1
        mode = testing_mode()
        if mode is not None:
            return min(self.config.max_attempts, mode.max_attempts)
        return self.config.max_attempts

    # -- retry ---------------------------------------------------------------------------

    def _with_retries(self, call: _Call, fn: Callable[[], R]) -> R:
        if call.max_attempts == 1:
            return self._attempt(call, fn)
        # The first attempt runs outside tenacity: most calls succeed at once, and a retry
        # loop built for them would cost more than the attempt's own thread handoff. When
        # it asks for a retry, tenacity takes over with its outcome as attempt 1.
        try:
            value = self._attempt(call, fn)
        except Exception as exc:
            if not self._retries_error(exc):
                raise
            first = _First(exc, None)
        else:
            if not self._retry_result(value):
                return value
            first = _First(None, value)
        retrying = _t.Retrying(
            stop=lambda state: self._stop(call, state),
            wait=lambda state: self._wait(call, state),
            retry=self._should_retry,
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(call, state),
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            reraise=True,
        )
        result: R = retrying(self._attempt_after, first, call, fn)
        return result

    def _attempt_after(self, first: _First, call: _Call, fn: Callable[[], R]) -> R:
        """Attempt 1 replayed from ``first`` (it already ran), then real attempts."""
        if not first.replayed:
            first.replayed = True
            if first.error is not None:
                raise first.error
            return first.value  # type: ignore[return-value]
        return self._attempt(call, fn)

    def _should_retry(self, state: _t.RetryCallState) -> bool:
        outcome = state.outcome
        assert outcome is not None
        if not outcome.failed:
            return bool(self._retry_result(outcome.result()))
        return self._retries_error(outcome.exception())

    def _retries_error(self, exc: BaseException | None) -> bool:
        if not isinstance(exc, Exception) or isinstance(
            exc, (CircuitOpenError, AttemptRejectedError)
        ):
            return False
        matcher = self.config.retry_on
        if matcher is None:
            return False
        if isinstance(matcher, (type, tuple)):
            return isinstance(exc, matcher)
        return bool(matcher(exc))

    def _wait(self, call: _Call, state: _t.RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        server = _server_delay(exc)
        if server is not None:
            if server > self._max_retry_after:
                call.give_up = True
            delay = server
        else:
            exponent = min(state.attempt_number - 1, _MAX_EXPONENT)
            delay = self._random() * min(self._cap, self._base * 2.0**exponent)
        if testing_mode() is not None:
            return 0.0
        return delay

    def _stop(self, call: _Call, state: _t.RetryCallState) -> bool:
        if call.give_up or state.attempt_number >= call.max_attempts:
            return True
        if call.deadline_ms is None:
            return False
        # Never start a sleep that ends at or past the deadline: no time would be left.
        return self._now_ms() + math.ceil(state.upcoming_sleep * 1000) >= call.deadline_ms

    def _now_ms(self) -> int:
        return round(self.breaker.store.clock.monotonic() * 1000)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.breaker.store.clock.sleep(seconds)

    def _log_retry(self, call: _Call, state: _t.RetryCallState) -> None:
        outcome = state.outcome
        assert outcome is not None
        exc = outcome.exception() if outcome.failed else None
        error = f"{type(exc).__name__}: {exc}" if exc is not None else "result asked to retry"
        logger.warning(
            "circuit %r: attempt %d of %d failed (%s); retrying in %.3fs",
            self.breaker.name,
            state.attempt_number,
            call.max_attempts,
            error,
            state.upcoming_sleep,
            extra={
                "event": "retry",
                "breaker": self.breaker.name,
                "attempt": state.attempt_number,
                "max_attempts": call.max_attempts,
                "delay": state.upcoming_sleep,
                "error": type(exc).__name__ if exc is not None else "result",
            },
        )

    # -- one attempt, with its timeout ---------------------------------------------------

    def _attempt(self, call: _Call, fn: Callable[[], R]) -> R:
        if call.attempts and self.config.recheck_breaker:
            self._recheck()
        budget = self._budget(call)
        call.attempts += 1
        clock = self.breaker.store.clock
        started = clock.monotonic()
        # A fresh copy per attempt: an abandoned attempt may still run in the previous one,
        # and the worker thread sees the caller's context variables.
        context = contextvars.copy_context()
        if call.max_attempts > 1:
            context.run(_IN_RETRY_LOOP.set, True)
        try:
            if budget is None:
                result = context.run(fn)
            else:
                runner = self.breaker._attempt_runner()
                result = runner.run(functools.partial(context.run, fn), budget, call.hold)
        except BaseException as exc:
            call.last_error = exc
            duration = budget if isinstance(exc, AttemptTimeoutError) and budget else None
            self._attempted(call, duration or clock.monotonic() - started, exc)
            raise
        self._attempted(call, clock.monotonic() - started, None)
        return result

    def _budget(self, call: _Call) -> float | None:
        budget = self._attempt_timeout
        if call.deadline_ms is not None:
            left_ms = call.deadline_ms - self._now_ms()
            if left_ms <= 0:
                # A real sleep can overrun the planned one: no time is left for this attempt,
                # so the call ends with what the previous one raised.
                if call.last_error is not None:
                    raise call.last_error
                raise AttemptTimeoutError(self.breaker.name, 0.0, started=False)
            left = left_ms / 1000
            budget = left if budget is None else min(budget, left)
        return budget

    def _recheck(self) -> None:
        """Stop retrying if the shared breaker opened meanwhile (by any process)."""
        self.breaker._check_cached_rejection()
        try:
            snapshot = self.breaker.snapshot()
        except StoreUnavailableError:
            if self.breaker.config.on_store_error == "reject":
                raise
            return  # the outage is the policy's business: keep retrying the dependency
        if snapshot.state.value in ("open", "forced_open"):
            raise CircuitOpenError(self.breaker.name, snapshot.state.value, snapshot.retry_after)

    def _attempted(self, call: _Call, duration: float, exc: BaseException | None) -> None:
        if not self.config.on_attempt and not logger.isEnabledFor(logging.DEBUG):
            return
        info = AttemptInfo(self.breaker.name, call.attempts, call.max_attempts, duration, exc)
        logger.debug(
            "circuit %r: attempt %d of %d %s in %.3fs",
            info.breaker,
            info.attempt,
            info.max_attempts,
            "succeeded" if exc is None else f"raised {type(exc).__name__}",
            duration,
            extra={"event": "attempt", "breaker": info.breaker, "attempt": info.attempt},
        )
        for hook in self.config.on_attempt:
            try:
                hook(info)
            except Exception:
                logger.exception("redbreaker attempt hook %r failed", hook)


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


def fallback_value(value: R) -> Callable[[Failure], R]:
    """A fallback that returns ``value`` whatever failed."""

    def static(failure: Failure) -> R:
        return value

    return static


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


def build_guard(breaker: Breaker, config: GuardConfig | None, settings: dict[str, Any]) -> Guard:
    """A guard for ``breaker``: ``config`` with keyword ``settings`` applied."""
    if config is not None and not isinstance(config, GuardConfig):
        raise ConfigError("config", f"expected a GuardConfig, got {config!r}")
    unknown = set(settings) - GuardConfig.setting_names()
    if unknown:
        raise ConfigError(
            sorted(unknown)[0],
            "is not a guard setting; settings: " + ", ".join(sorted(GuardConfig.setting_names())),
        )
    return Guard(breaker, replace(config or GuardConfig(), **settings))
