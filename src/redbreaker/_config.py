"""The settings of one breaker: a frozen dataclass, validated when it is built."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal, NamedTuple, TypedDict, Union

from ._exceptions import ConfigError
from ._policy_config import fleet_policy_values

# The value checkers live in _settings; they are imported from here by the rest of the
# library, as before the split.
from ._settings import (
    count_setting,
    hooks_setting,
    matcher_setting,
    plain_callable_setting,
    ratio_setting,
    seconds_setting,
)

__all__ = [
    "SCRIPT_FIELDS",
    "BreakerConfig",
    "BreakerSettings",
    "Consistency",
    "ExceptionMatcher",
    "ScriptField",
    "Seconds",
    "StoreErrorPolicy",
    "count_setting",
    "hooks_setting",
    "matcher_setting",
    "plain_callable_setting",
    "ratio_setting",
    "script_defaults",
    "seconds_setting",
]

Seconds = Union[float, timedelta]  # noqa: UP007 (a runtime alias must work on 3.10)
"""A duration: seconds as a number, or a :class:`datetime.timedelta`."""

ExceptionMatcher = Union[  # noqa: UP007 (a runtime alias must work on 3.10)
    type[BaseException], tuple[type[BaseException], ...], Callable[[BaseException], bool]
]
"""Exception types, or a predicate that takes the exception."""

Consistency = Literal["strict", "cached"]
"""How a breaker admits calls in the closed state (see ``consistency``)."""

StoreErrorPolicy = Literal["allow", "reject", "local"]
"""What a breaker does when Redis cannot be reached (see ``on_store_error``)."""

_DEFAULT_MAX_RECOVERY = 300.0


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else str(max(1, round(seconds * 1000)))


class ScriptField(NamedTuple):
    """One setting the Lua scripts read from the config text (ARGV[5])."""

    name: str
    """Its name in the text, in Lua and in the breaker hash's ``config`` field."""
    may_be_empty: bool
    """An empty value turns the rule off."""
    meaning: str


SCRIPT_FIELDS: tuple[ScriptField, ...] = (
    ScriptField("failure_threshold", True, "consecutive failures that trip"),
    ScriptField("failure_rate", True, "failure ratio in (0, 1] over the window that trips"),
    ScriptField("window_ms", False, "length of the sliding window"),
    ScriptField("minimum_calls", False, "calls in the window before a rate can trip"),
    ScriptField("slow_call_rate", True, "slow ratio in (0, 1] that trips (empty: untracked)"),
    ScriptField("recovery_timeout_ms", False, "first open duration"),
    ScriptField("recovery_backoff", False, "open duration multiplier per re-open (>= 1)"),
    ScriptField("max_recovery_timeout_ms", False, "cap of the grown open duration"),
    ScriptField("recovery_jitter", False, "fraction in [0, 1) an open may be shortened by"),
    ScriptField("half_open_max_calls", False, "probes in flight at once, fleet-wide"),
    ScriptField("success_threshold", False, "probe successes that close the breaker"),
    ScriptField("probe_lease_ms", False, "how long a probe holds its slot at most"),
    ScriptField("half_open_max_wait_ms", True, "longest stay in half_open (empty: none)"),
    ScriptField("key_ttl_ms", True, "idle lifetime of both keys (empty: they never expire)"),
    ScriptField("retry_budget", True, "retries per call over the window, fleet-wide (empty: off)"),
    ScriptField("retry_budget_floor", False, "retries per second allowed on top of the ratio"),
    ScriptField("min_reporters", False, "distinct processes whose failures a trip needs"),
)
"""The one list of what the scripts read: the config text is built from it, and the Lua
parser's field list is written from it when the library is composed (``_scripts``)."""


@dataclass(frozen=True)
class BreakerConfig:
    """How a breaker decides. Every process that shares a breaker should use the same.

    Trip rules (at least one must be on; any one trips):
        failure_threshold: consecutive failures fleet-wide that open the breaker; None
            turns the rule off.
        failure_rate: failure ratio in (0, 1] over the sliding ``window``, once it holds
            ``minimum_calls`` calls; None turns the rule off.
        window: length of the time-based sliding window (10 buckets).
        minimum_calls: calls in the window before either rate may trip.
        slow_call_duration: a call that takes at least this long is slow; None turns slow
            calls off.
        slow_call_rate: slow ratio in (0, 1] over the window that opens the breaker.

    Open and half-open:
        recovery_timeout: how long the breaker stays open before it admits probes.
        recovery_backoff: multiplier (>= 1) of the open duration for each consecutive
            re-open (a probe that fails); 1 keeps it constant.
        max_recovery_timeout: cap of the grown open duration (default: the larger of
            ``recovery_timeout`` and 300 s).
        recovery_jitter: fraction in [0, 1) by which each open duration is shortened at
            random, so breakers that tripped together do not all probe together.
        half_open_max_calls: probes in flight at once across the whole fleet.
        success_threshold: probe successes that close the breaker.
        probe_lease: how long a probe may run before its slot is reclaimed, so a worker
            that dies mid-probe cannot wedge the breaker. Make it longer than the call.
        half_open_max_wait: longest stay in half-open before the breaker re-opens; None
            waits for the probes.
        key_ttl: idle lifetime of the breaker's keys, refreshed on every write. An
            abandoned breaker vanishes and comes back closed. None: the keys never
            expire, which also keeps them out of a ``volatile-*`` eviction policy's reach
            on a Redis shared with a cache (abandoned breakers then stay until deleted).

    Fleet policies (see docs/policies.md; both off by default):
        retry_budget: retries a guard may make, fleet-wide, as a fraction of the calls in
            the window (0.2: retries stay under 20% of calls, plus the floor). Asked in one
            round trip before each retry, which also stands in for the guard's
            ``recheck_breaker``; an exhausted budget ends the retries. None: no budget.
        retry_budget_floor: retries per second (over the window) the budget allows on top
            of the ratio, so a quiet dependency can still be retried.
        min_reporters: distinct processes whose failures (or slow calls) in the window a
            trip rule needs before the fleet's breaker opens; 1 trips on anyone's. Above 1,
            each process also keeps a breaker of its own with the same settings, which
            rejects that process's calls alone while the fleet's stays closed.

    When Redis cannot be reached (local to each process):
        on_store_error: ``"allow"`` lets calls through unguarded (fail open; outcomes are
            not recorded), ``"reject"`` rejects them with :class:`StoreUnavailableError`
            (fail closed; a :class:`CircuitOpenError`), ``"local"`` hands over to a breaker
            of this process alone with the same config (needs the ``embedded`` extra).
            Shared state is used again as soon as Redis answers.

    Consistency (local to each process):
        consistency: ``"strict"`` asks Redis on every call (one round trip for a healthy
            call). ``"cached"`` admits closed-state calls from a local copy of the breaker
            that every transition updates at once through pub/sub: no round trip for a
            healthy call. Successes are counted locally and sent in batches; failures are
            sent at once, so trips are not delayed; half-open is always decided in Redis,
            so the probe limit holds fleet-wide.
        max_staleness: the oldest local copy a cached breaker admits from; an older one is
            refreshed with one round trip (the backstop when a pub/sub message is lost).
        flush_interval: how long a cached breaker may hold counted successes before it
            sends them (with the next call after the interval, or any failure).

    Attempt threads (local; used only by guards with an ``attempt_timeout`` or deadline):
        attempt_threads: threads this breaker's attempts may hold at once in a process,
            running or abandoned after a timeout.
        max_abandoned_attempts: timed-out attempts still running at which new attempts
            fail fast with :class:`AttemptRejectedError`; below ``attempt_threads``.

    Classification (local to each process; never sent to Redis):
        record_on: exceptions that count as failures (types or a predicate).
        ignore_on: exceptions that count as neither success nor failure; wins over
            ``record_on``.
        failure_result: a predicate on the return value that marks it a failure, e.g.
            ``lambda r: r.status_code >= 500``.

    ``BaseException``\\ s that are not ``Exception``\\ s (KeyboardInterrupt, SystemExit,
    asyncio.CancelledError) are never failures: they release a probe slot and count nothing.
    """

    failure_threshold: int | None = 5
    failure_rate: float | None = None
    window: Seconds = 60.0
    minimum_calls: int = 10
    slow_call_duration: Seconds | None = None
    slow_call_rate: float = 1.0
    recovery_timeout: Seconds = 30.0
    recovery_backoff: float = 1.0
    max_recovery_timeout: Seconds | None = None
    recovery_jitter: float = 0.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    probe_lease: Seconds = 10.0
    half_open_max_wait: Seconds | None = None
    key_ttl: Seconds | None = 86_400.0
    retry_budget: float | None = None
    retry_budget_floor: float = 10.0
    min_reporters: int = 1
    on_store_error: StoreErrorPolicy = "allow"
    consistency: Consistency = "strict"
    max_staleness: Seconds = 1.0
    flush_interval: Seconds = 0.1
    attempt_threads: int = 16
    max_abandoned_attempts: int = 8
    record_on: ExceptionMatcher = Exception
    ignore_on: ExceptionMatcher | None = None
    failure_result: Callable[[Any], bool] | None = None
    _argv: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _script_config: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        count_setting("failure_threshold", self.failure_threshold, optional=True)
        ratio_setting("failure_rate", self.failure_rate, optional=True)
        window = seconds_setting("window", self.window)
        count_setting("minimum_calls", self.minimum_calls)
        slow = seconds_setting("slow_call_duration", self.slow_call_duration, optional=True)
        ratio_setting("slow_call_rate", self.slow_call_rate)
        recovery = seconds_setting("recovery_timeout", self.recovery_timeout)
        backoff = self.recovery_backoff
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)):
            raise ConfigError("recovery_backoff", f"must be a number >= 1, got {backoff!r}")
        if not math.isfinite(backoff) or backoff < 1:
            raise ConfigError("recovery_backoff", f"must be a finite number >= 1, got {backoff!r}")
        max_recovery = seconds_setting(
            "max_recovery_timeout", self.max_recovery_timeout, optional=True
        )
        assert recovery is not None
        if max_recovery is None:
            max_recovery = max(recovery, _DEFAULT_MAX_RECOVERY)
        elif max_recovery < recovery:
            raise ConfigError(
                "max_recovery_timeout",
                f"must be >= recovery_timeout ({recovery}s), got {max_recovery}s",
            )
        jitter = self.recovery_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
            raise ConfigError("recovery_jitter", f"must be a number in [0, 1), got {jitter!r}")
        if not math.isfinite(jitter) or not 0 <= jitter < 1:
            raise ConfigError("recovery_jitter", f"must be in [0, 1), got {jitter!r}")
        count_setting("half_open_max_calls", self.half_open_max_calls)
        count_setting("success_threshold", self.success_threshold)
        lease = seconds_setting("probe_lease", self.probe_lease)
        max_wait = seconds_setting("half_open_max_wait", self.half_open_max_wait, optional=True)
        ttl = seconds_setting("key_ttl", self.key_ttl, optional=True)
        if self.consistency not in ("strict", "cached"):
            raise ConfigError(
                "consistency", f'must be "strict" or "cached", got {self.consistency!r}'
            )
        seconds_setting("max_staleness", self.max_staleness)
        seconds_setting("flush_interval", self.flush_interval)
        if self.on_store_error not in ("allow", "reject", "local"):
            raise ConfigError(
                "on_store_error",
                f'must be "allow", "reject" or "local", got {self.on_store_error!r}',
            )
        count_setting("attempt_threads", self.attempt_threads, minimum=2)
        count_setting("max_abandoned_attempts", self.max_abandoned_attempts)
        if self.max_abandoned_attempts >= self.attempt_threads:
            raise ConfigError(
                "max_abandoned_attempts",
                f"must be below attempt_threads ({self.attempt_threads}) so live attempts "
                f"keep a thread, got {self.max_abandoned_attempts}",
            )
        matcher_setting("record_on", self.record_on)
        matcher_setting("ignore_on", self.ignore_on, optional=True)
        if self.failure_result is not None:
            plain_callable_setting("failure_result", self.failure_result, what="a predicate")
        if self.failure_threshold is None and self.failure_rate is None and slow is None:
            raise ConfigError(
                "failure_threshold",
                "no trip rule is on: set failure_threshold, failure_rate or slow_call_duration",
            )
        assert window is not None
        assert lease is not None
        longest = max(window, max_recovery, lease, max_wait or 0.0)
        if ttl is not None and ttl < 2 * longest:
            raise ConfigError(
                "key_ttl",
                f"must be at least twice the longest other duration ({longest}s), got {ttl}s",
            )
        values = {
            "failure_threshold": (
                "" if self.failure_threshold is None else str(self.failure_threshold)
            ),
            "failure_rate": "" if self.failure_rate is None else repr(float(self.failure_rate)),
            "window_ms": _ms(window),
            "minimum_calls": str(self.minimum_calls),
            "slow_call_rate": "" if slow is None else repr(float(self.slow_call_rate)),
            "recovery_timeout_ms": _ms(recovery),
            "recovery_backoff": repr(float(backoff)),
            "max_recovery_timeout_ms": _ms(max_recovery),
            "recovery_jitter": repr(float(jitter)),
            "half_open_max_calls": str(self.half_open_max_calls),
            "success_threshold": str(self.success_threshold),
            "probe_lease_ms": _ms(lease),
            "half_open_max_wait_ms": _ms(max_wait),
            "key_ttl_ms": _ms(ttl),
            **fleet_policy_values(self),
        }
        argv = tuple(values.pop(f.name) for f in SCRIPT_FIELDS)
        assert not values, f"fields missing from SCRIPT_FIELDS: {sorted(values)}"
        object.__setattr__(self, "_argv", argv)
        object.__setattr__(self, "_script_config", "")

    @property
    def script_argv(self) -> tuple[str, ...]:
        """The config values the scripts read, in the order of :data:`SCRIPT_FIELDS`."""
        return self._argv

    @property
    def script_config(self) -> str:
        """ARGV[5] of every script: the ``name=value`` pairs that differ from the defaults
        (``BreakerConfig()``'s, written into the scripts), as ``lua/_common.lua`` reads
        them and as the breaker hash's ``config`` field shows them; empty for the defaults.
        Every script call sends it, so shorter is cheaper for client and server alike."""
        if not self._script_config and self._argv != _default_argv():
            defaults = _default_argv()
            text = " ".join(
                f"{f.name}={v}"
                for f, v, d in zip(SCRIPT_FIELDS, self._argv, defaults, strict=True)
                if v != d
            )
            object.__setattr__(self, "_script_config", text)
        return self._script_config

    @property
    def slow_call_seconds(self) -> float | None:
        """``slow_call_duration`` in seconds, or None when slow calls are not tracked."""
        return seconds_setting("slow_call_duration", self.slow_call_duration, optional=True)

    @property
    def window_seconds(self) -> float:
        """``window`` in seconds."""
        value = seconds_setting("window", self.window)
        assert value is not None
        return value

    @classmethod
    def setting_names(cls) -> frozenset[str]:
        """The names a breaker accepts as keyword settings."""
        return frozenset(f.name for f in fields(cls) if f.init)


class BreakerSettings(TypedDict, total=False):
    """The keyword settings of ``Breaker(...)``: every :class:`BreakerConfig` field, so
    type checkers and IDEs see them (a test keeps the two lists equal)."""

    failure_threshold: int | None
    failure_rate: float | None
    window: Seconds
    minimum_calls: int
    slow_call_duration: Seconds | None
    slow_call_rate: float
    recovery_timeout: Seconds
    recovery_backoff: float
    max_recovery_timeout: Seconds | None
    recovery_jitter: float
    half_open_max_calls: int
    success_threshold: int
    probe_lease: Seconds
    half_open_max_wait: Seconds | None
    key_ttl: Seconds | None
    retry_budget: float | None
    retry_budget_floor: float
    min_reporters: int
    on_store_error: StoreErrorPolicy
    consistency: Consistency
    max_staleness: Seconds
    flush_interval: Seconds
    attempt_threads: int
    max_abandoned_attempts: int
    record_on: ExceptionMatcher
    ignore_on: ExceptionMatcher | None
    failure_result: Callable[[Any], bool] | None


@functools.cache
def _default_argv() -> tuple[str, ...]:
    return BreakerConfig().script_argv


@functools.cache
def script_defaults() -> dict[str, str]:
    """Each script field's text in ``BreakerConfig()``'s config: what a config text
    (ARGV[5], the breaker hash's ``config`` field) leaves out."""
    return {f.name: v for f, v in zip(SCRIPT_FIELDS, _default_argv(), strict=True)}
