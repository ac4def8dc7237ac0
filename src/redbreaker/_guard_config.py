"""What a guard is configured with and what it reports: its settings, the failure its
fallback is told, the outcome of a guarded call, one attempt's record. Shared by the sync
and the asyncio guards; no I/O here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, Generic, Literal, TypedDict, TypeVar

from ._config import (
    ExceptionMatcher,
    Seconds,
    count_setting,
    matcher_setting,
    plain_callable_setting,
    seconds_setting,
)
from ._exceptions import ConfigError

__all__ = [
    "AttemptInfo",
    "Failure",
    "FailureReason",
    "GuardConfig",
    "GuardSettings",
    "Outcome",
    "fallback_value",
    "guard_config",
]

R = TypeVar("R")

FailureReason = Literal[
    "circuit_open",
    "timeout",
    "retries_exhausted",
    "retry_budget_exhausted",
    "store_unavailable",
    "error",
]
"""Why a guarded call failed, as its fallback is told."""

# Set while a guard's retry loop runs an attempt: a guarded call nested inside it runs a
# single attempt, so three layers of 3 attempts cost 3 calls, not 27.


@dataclass(frozen=True)
class Failure:
    """What a fallback is told.

    Attributes:
        reason: ``"circuit_open"`` (rejected, the call never ran), ``"timeout"`` (the
            attempt outlived its budget), ``"retries_exhausted"`` (more than one attempt,
            all failed), ``"retry_budget_exhausted"`` (an attempt failed and the fleet's
            retry budget refused the retry), ``"store_unavailable"`` (Redis could not be
            asked), ``"error"``.
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
        if self.retry_result is not None:
            plain_callable_setting("retry_result", self.retry_result, what="a predicate")
        if self.fallback is not None and not callable(self.fallback):
            # A coroutine fallback is the async guard's to await; the sync guard refuses it.
            raise ConfigError("fallback", f"must be callable, got {self.fallback!r}")
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
            plain_callable_setting("on_attempt", hook)

    @classmethod
    def setting_names(cls) -> frozenset[str]:
        """The names a guard accepts as keyword settings."""
        return frozenset(f.name for f in fields(cls))


class GuardSettings(TypedDict, total=False):
    """The keyword settings of ``breaker.guard(...)``: every :class:`GuardConfig` field,
    so type checkers and IDEs see them (a test keeps the two lists equal)."""

    attempt_timeout: Seconds | None
    max_attempts: int
    retry_on: ExceptionMatcher | None
    retry_result: Callable[[Any], bool] | None
    backoff_base: Seconds
    backoff_max: Seconds
    deadline: Seconds | None
    max_retry_after: Seconds
    recheck_breaker: bool
    fallback: Callable[[Failure], Any] | None
    on_attempt: Callable[[AttemptInfo], None] | Iterable[Callable[[AttemptInfo], None]]


def guard_config(config: GuardConfig | None, settings: dict[str, Any]) -> GuardConfig:
    """``config`` (or the defaults) with keyword ``settings`` applied, validated."""
    if config is not None and not isinstance(config, GuardConfig):
        raise ConfigError("config", f"expected a GuardConfig, got {config!r}")
    unknown = set(settings) - GuardConfig.setting_names()
    if unknown:
        raise ConfigError(
            sorted(unknown)[0],
            "is not a guard setting; settings: " + ", ".join(sorted(GuardConfig.setting_names())),
        )
    return replace(config or GuardConfig(), **settings)


def fallback_value(value: R) -> Callable[[Failure], R]:
    """A fallback that returns ``value`` whatever failed."""

    def static(failure: Failure) -> R:
        return value

    return static
