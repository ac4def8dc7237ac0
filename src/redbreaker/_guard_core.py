"""The guard's decisions, shared by the sync and the asyncio drivers: no I/O here.

The guard: the four resilience layers composed in one order, here and only here.

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

The drivers (:mod:`redbreaker._guard`, :mod:`redbreaker.aio._guard`) only run attempts,
sleep and talk to the breaker; every "whether", "how long" and "what now" is answered
here: how many attempts, which exceptions and results are retried, the backoff, the
deadline's arithmetic, the fallback and what a degraded result says.
"""

from __future__ import annotations

import contextvars
import logging
import math
import random
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._classify import matches
from ._config import (
    Seconds,
    seconds_setting,
)
from ._exceptions import (
    AttemptRejectedError,
    AttemptTimeoutError,
    CircuitOpenError,
    StoreUnavailableError,
)
from ._guard_config import AttemptInfo, Failure, FailureReason, GuardConfig, Outcome
from ._testing import testing_mode

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    import tenacity as _t

    from ._clock import Clock
    from ._permit import LeaseHold
    from ._state import Snapshot

__all__ = ["IN_RETRY_LOOP", "GuardCall", "GuardCore", "ReplayedFirst"]

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("redbreaker")

IN_RETRY_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "redbreaker_in_retry_loop", default=False
)
# Exponents past this only produce the cap; clamping first keeps 2**n finite.
_MAX_EXPONENT = 62


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


def _retry_note(state: _t.RetryCallState) -> tuple[int, BaseException | None, float]:
    """What a retry's log line says: the attempt that failed, its error, the delay."""
    outcome = state.outcome
    assert outcome is not None
    exc = outcome.exception() if outcome.failed else None
    return state.attempt_number, exc, state.upcoming_sleep


def _never_retry_result(result: object) -> bool:
    return False


class ReplayedFirst:
    """The outcome of a call's first attempt, handed to the retry loop to replay."""

    __slots__ = ("error", "replayed", "value")

    def __init__(self, error: Exception | None, value: object) -> None:
        self.error = error
        self.value = value
        self.replayed = False

    def replay(self) -> Any:  # noqa: ANN401 (the guarded function's value)
        """Attempt 1 for tenacity, once: its value again, or its error raised again."""
        self.replayed = True
        if self.error is not None:
            raise self.error
        return self.value


class GuardCall:
    """What one guarded call has done so far (never shared between calls)."""

    __slots__ = (
        "attempts",
        "budget_exhausted",
        "deadline_ms",
        "give_up",
        "hold",
        "last_error",
        "last_value",
        "max_attempts",
        "permit",
        "retry_note",
        "store_failed",
    )

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
        # The last attempt's value, when a result was asked to be retried (retry_result).
        self.last_value: Any = None
        # The call's permit (either driver's), for the retry budget's questions.
        self.permit: Any = None
        self.budget_exhausted = False
        # The retry about to sleep (attempt, error, delay), said once the budget grants it.
        self.retry_note: tuple[int, BaseException | None, float] = (0, None, 0.0)


class GuardCore:
    """Everything a guard decides. Strictly private: the drivers' guards subclass it.

    Args:
        name: the breaker's name (logs, errors, failures say it).
        config: the validated settings.
        clock: local time for the deadline's arithmetic.
        degraded_lock: guards the per-reason counts (a real lock in the threaded driver).
    """

    def __init__(
        self,
        name: str,
        config: GuardConfig,
        clock: Clock,
        degraded_lock: AbstractContextManager[Any],
    ) -> None:
        self._name = name
        self._clock = clock
        self.config = config
        self._attempt_timeout = _seconds(config.attempt_timeout)
        self._deadline = _seconds(config.deadline)
        self._base = _seconds(config.backoff_base) or 0.0
        self._cap = _seconds(config.backoff_max) or 0.0
        self._max_retry_after = _seconds(config.max_retry_after) or 0.0
        self._retry_result = config.retry_result or _never_retry_result
        # No error and no result is retried: every call is one attempt (and a guard inside
        # it may retry, since this one multiplies nothing).
        self._retries_nothing = config.retry_on is None and config.retry_result is None
        self._degraded: Counter[str] = Counter()
        self._degraded_lock = degraded_lock
        self._random = random.random

    @property
    def degraded_counts(self) -> dict[str, int]:
        """Degraded results this guard returned in this process, by reason."""
        with self._degraded_lock:
            return dict(self._degraded)

    def _begin(self, call: GuardCall, is_probe: bool) -> None:
        """A call was admitted: how many attempts it may make, and its deadline."""
        call.max_attempts = self._attempts_allowed(is_probe)
        if self._deadline is not None:
            # Whole ms, rounded up, but of the decimal the user wrote: 2.011 * 1000 is
            # 2011.0000000000002 in floats, and its ceiling would overshoot by a ms.
            call.deadline_ms = self._now_ms() + math.ceil(round(self._deadline * 1000, 6))

    def _budget_spent(self, call: GuardCall) -> Any:  # noqa: ANN401 (the last value)
        """The fleet's retry budget refused this retry: the call ends with its last
        attempt's outcome (its error raised again, or the value asked to be retried), and
        the stop rule ends the loop."""
        call.budget_exhausted = True
        if call.last_error is not None:
            raise call.last_error
        return call.last_value

    def _recheck_unavailable(self, exc: StoreUnavailableError, on_store_error: str) -> None:
        """Redis could not be asked before a retry: the outage is the breaker's policy's
        business, so the retry goes on unless that policy rejects."""
        if on_store_error == "reject":
            raise exc

    def _recheck_snapshot(self, snapshot: Snapshot) -> None:
        """Stop retrying if the shared breaker opened meanwhile (by any process)."""
        if snapshot.state.value in ("open", "forced_open"):
            raise CircuitOpenError(self._name, snapshot.state.value, snapshot.retry_after)

    def _degraded_outcome(self, exc: Exception, call: GuardCall) -> Outcome[Any]:
        """The fallback's answer to a failed call; ``exc`` again when there is none."""
        fallback = self.config.fallback
        if fallback is None:
            raise exc
        failure = Failure(self._reason(exc, call), exc, self._name, call.attempts)
        return Outcome(self._degrade(fallback, failure), True, failure, call.attempts)

    def _good_outcome(self, value: Any, call: GuardCall) -> Outcome[Any]:  # noqa: ANN401
        """A real result, handed to a fallback that remembers good values."""
        remember = getattr(self.config.fallback, "remember", None)
        if remember is not None:
            remember(value)
        return Outcome(value, False, None, call.attempts)

    def _reason(self, exc: Exception, call: GuardCall) -> FailureReason:
        if call.store_failed or isinstance(exc, StoreUnavailableError):
            return "store_unavailable"
        if isinstance(exc, CircuitOpenError):
            return "circuit_open"
        if call.budget_exhausted:
            return "retry_budget_exhausted"
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

    # -- retry ---------------------------------------------------------------------------

    def _replay_first(self, error: Exception | None, value: object) -> ReplayedFirst | None:
        """Attempt 1 ran outside tenacity (most calls succeed at once, and a retry loop
        built for them would cost more than the attempt): what tenacity replays as attempt
        1 when a retry is asked for, or None when the attempt's outcome is the answer."""
        if not (self._retries_error(error) if error is not None else self._retry_result(value)):
            return None
        return ReplayedFirst(error, value)

    def _retry_policy(self, call: GuardCall, *, budgeted: bool = False) -> dict[str, Any]:
        """tenacity's settings for the retries of ``call``, for either driver's
        ``Retrying`` (which adds only how to sleep). ``budgeted``: the retry is logged
        only once the fleet's retry budget grants it (the driver's sleep asks)."""
        return {
            "stop": lambda state: self._stop(call, state),
            "wait": lambda state: self._wait(call, state),
            "retry": self._should_retry,
            "before_sleep": (
                (lambda state: setattr(call, "retry_note", _retry_note(state)))
                if budgeted
                else (lambda state: self._log_retry(call, state))
            ),
            "retry_error_callback": lambda state: state.outcome.result(),
            "reraise": True,
        }

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
        return matches(self.config.retry_on, exc)

    def _wait(self, call: GuardCall, state: _t.RetryCallState) -> float:
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

    def _stop(self, call: GuardCall, state: _t.RetryCallState) -> bool:
        if call.give_up or call.budget_exhausted or state.attempt_number >= call.max_attempts:
            return True
        if call.deadline_ms is None:
            return False
        # Never start a sleep that ends at or past the deadline: no time would be left.
        return self._now_ms() + math.ceil(state.upcoming_sleep * 1000) >= call.deadline_ms

    def _now_ms(self) -> int:
        return round(self._clock.monotonic() * 1000)

    def _log_retry(self, call: GuardCall, state: _t.RetryCallState) -> None:
        self._say_retry(call, _retry_note(state))

    def _say_retry(self, call: GuardCall, note: tuple[int, BaseException | None, float]) -> None:
        attempt, exc, delay = note
        error = f"{type(exc).__name__}: {exc}" if exc is not None else "result asked to retry"
        logger.warning(
            "circuit %r: attempt %d of %d failed (%s); retrying in %.3fs",
            self._name,
            attempt,
            call.max_attempts,
            error,
            delay,
            extra={
                "event": "retry",
                "breaker": self._name,
                "attempt": attempt,
                "max_attempts": call.max_attempts,
                "delay": delay,
                "error": type(exc).__name__ if exc is not None else "result",
            },
        )

    # -- one attempt, with its timeout ---------------------------------------------------

    def _budget(self, call: GuardCall) -> float | None:
        budget = self._attempt_timeout
        if call.deadline_ms is not None:
            left_ms = call.deadline_ms - self._now_ms()
            if left_ms <= 0:
                # A real sleep can overrun the planned one: no time is left for this attempt,
                # so the call ends with what the previous one raised.
                if call.last_error is not None:
                    raise call.last_error
                raise AttemptTimeoutError(self._name, 0.0, started=False)
            left = left_ms / 1000
            budget = left if budget is None else min(budget, left)
        return budget

    def _attempted(self, call: GuardCall, duration: float, exc: BaseException | None) -> None:
        if not self.config.on_attempt and not logger.isEnabledFor(logging.DEBUG):
            return
        info = AttemptInfo(self._name, call.attempts, call.max_attempts, duration, exc)
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

    def _attempts_allowed(self, is_probe: bool) -> int:
        if self._retries_nothing or is_probe or IN_RETRY_LOOP.get():
            # A probe is one call, not a burst; a nested guard leaves retrying to the outer.
            return 1
        mode = testing_mode()
        if mode is not None:
            return min(self.config.max_attempts, mode.max_attempts)
        return self.config.max_attempts

    # -- retry ---------------------------------------------------------------------------
