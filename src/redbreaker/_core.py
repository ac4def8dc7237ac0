"""Every decision a breaker makes, with no I/O: the sans-I/O core of both drivers.

A driver (``Breaker`` in :mod:`redbreaker`, its twin in :mod:`redbreaker.aio`) asks the
core what to send, sends it, and hands the reply back::

    permit = core.admit_without_redis()          # cached mode: no round trip at all
    if permit is None:
        reply = <send> core.acquire_args()       # one FCALL
        permit = core.on_acquire_reply(reply, heard, started)   # or CircuitOpenError
    ...
    args = core.record_args(permit, outcome)     # None: Redis has nothing to learn
    if args is not None:
        core.on_record_reply(<send> args)

The core owns the argument building, reply decoding, classification, the rejections a
process may repeat locally, cached-mode bookkeeping (local copy, batch, held rejections)
and hook dispatch. It imports neither redis, threading, asyncio nor time: the clock, the
view of the feed and the batch's lock are handed in by the driver.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from ._cache import LocalKnowledge
from ._classify import Outcome
from ._config import (
    BreakerConfig,
    Seconds,
    seconds_setting,
)
from ._core_outcomes import OutcomeCore
from ._exceptions import (
    CircuitOpenError,
    ConfigError,
    StoreUnavailableError,
)
from ._hooks import LOUD, TransitionHook, announce, transition_hooks
from ._keys import breaker_keys, check_name
from ._observe import Reports
from ._permit_state import PermitState
from ._policies import FleetPolicies, own_config
from ._state import (
    Snapshot,
    State,
    Transition,
    decode_acquire,
    decode_control,
    decode_snapshot,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractContextManager

    from ._clock import Clock
    from ._observe import BreakerObserver
    from ._view import FleetView

__all__ = ["BreakerCore", "Outcome", "PermitState", "TransitionHook"]

# The operator states in which the fleet's breaker admits every call.
_ADMITS_ALL = frozenset({State.FORCED_CLOSED, State.METRICS_ONLY})


class BreakerCore(OutcomeCore):
    """Everything a breaker decides. Strictly private: drivers subclass it.

    Args:
        name: the breaker's name (validated).
        prefix: the store's key prefix.
        clock: where "now" comes from (local monotonic time; the scripts' override).
        view: the store's :class:`FleetView` (cached rejections, the feed's counters).
        batch_lock: a factory of the lock that guards the cached mode's batch (a real lock
            in the threaded driver, a no-op on an event loop).
        on_unguarded: told ``(name, policy)`` when a call runs without the shared breaker
            because Redis cannot be reached (the store warns once per outage).
        observers: the store's observers, told of every call and transition here.
    """

    def __init__(
        self,
        name: str,
        *,
        prefix: str,
        clock: Clock,
        view: FleetView,
        config: BreakerConfig | None,
        on_transition: TransitionHook | Iterable[TransitionHook],
        settings: dict[str, Any],
        batch_lock: Callable[[], AbstractContextManager[Any]],
        on_unguarded: Callable[[str, str], None] = lambda name, policy: None,
        observers: tuple[BreakerObserver, ...] = (),
    ) -> None:
        self.name = check_name(name)
        unknown = set(settings) - BreakerConfig.setting_names()
        if unknown:
            raise ConfigError(
                sorted(unknown)[0],
                "is not a breaker setting; settings: "
                + ", ".join(sorted(BreakerConfig.setting_names())),
            )
        if config is not None and not isinstance(config, BreakerConfig):
            raise ConfigError("config", f"expected a BreakerConfig, got {config!r}")
        self.config = replace(config or BreakerConfig(), **settings)
        self._clock = clock
        self._view = view
        self._resets_seen = view.resets_heard(self.name)
        self.keys = breaker_keys(prefix, self.name, quorum=self.config.min_reporters > 1)
        self._hooks = transition_hooks(on_transition)
        # The store's observers (validated there); empty, they cost one truthiness check.
        self._observers = observers
        self.reports = Reports(self.name, observers)
        self._slow_after = self.config.slow_call_seconds
        self._window_ms = round(self.config.window_seconds * 1000)
        self._random = random.random
        self._random_bits = random.getrandbits
        self._cached = self.config.consistency == "cached"
        self._max_staleness = seconds_setting("max_staleness", self.config.max_staleness) or 0.0
        self._flush_interval = (
            seconds_setting("flush_interval", self.config.flush_interval) or 0.0
        )
        self._batch_lock = batch_lock
        self._on_unguarded = on_unguarded
        # Local monotonic seconds, from the injected clock (bound once: the cached hot
        # path reads it twice per call).
        self.now: Callable[[], float] = clock.monotonic
        self.policies = FleetPolicies(self.name, self.config, self.reports)
        # "process" for the breaker a process keeps of its own (min_reporters > 1).
        self.scope: Literal["fleet", "process"] = "fleet"
        # The fleet's breaker was last seen in an operator state that admits every call
        # (forced_closed, metrics_only): a process's own breaker stands aside meanwhile.
        self.fleet_admits_all = False
        self._forget_local_knowledge()

    def _forget_local_knowledge(self) -> None:
        """Start with no local copy, no held rejection and an empty batch: at construction,
        and in a forked child (the parent sends its own successes: inherited, they would be
        counted once per child)."""
        self._local = LocalKnowledge(
            self.name, self._max_staleness, self._batch_lock, self._view
        )

    # -- requests ------------------------------------------------------------------------

    def _args(self, *extra: str) -> list[str]:
        override = self._clock.server_ms()
        return [
            "" if override is None else str(override),
            self.keys.channel,
            self.name,
            repr(self._random()),
            self.config.script_config,
            *extra,
        ]

    def acquire_args(self) -> list[str]:
        """The acquire script's arguments. ARGV[6] is the token a probe slot would be
        leased under, chosen here so that the slot can be freed even when the reply is
        never read (:meth:`interrupted_acquire_args`)."""
        return self._args(f"{self._random_bits(64):016x}")

    def interrupted_acquire_args(self, acquire_args: list[str]) -> list[str]:
        """The record script's arguments that free whatever probe slot an acquire sent
        with ``acquire_args`` may have been granted (nothing when it was none): for a
        caller interrupted before it held the permit."""
        return self._args("release", "0", acquire_args[5], "0", "", "", "0")

    def inspect_args(self) -> list[str]:
        """The inspect script's arguments."""
        return self._args()

    def control_args(self, order: str, duration: Seconds | None) -> list[str]:
        """The control script's arguments for an operator's order."""
        seconds = seconds_setting("duration", duration, optional=True)
        return self._args(order, "" if seconds is None else str(max(1, round(seconds * 1000))))

    # -- admission -----------------------------------------------------------------------

    def admit_without_redis(self) -> PermitState | None:
        """A permit this process may give without asking Redis (cached mode's local copy),
        or None when Redis must decide. The driver polls the feed first.

        Raises:
            CircuitOpenError: a rejection this process may repeat without asking Redis.
        """
        try:
            self.check_cached_rejection()
            return self.admit_locally(self.heard()) if self._cached else None
        except CircuitOpenError as exc:
            if self._observers:
                self.reports.rejection(exc.state)
            raise

    def heard(self) -> int:
        """The view's count of transitions of this breaker (0 in strict mode, which keeps
        no local copy to compare it with)."""
        return self._view.heard(self.name) if self._cached else 0

    def check_cached_rejection(self) -> None:
        """Raise the rejection this process may repeat without asking Redis, if any."""
        cached = self._view.cached_rejection(self.keys.state, self._max_staleness)
        if cached is not None:
            raise CircuitOpenError(self.name, cached[1], cached[0])

    def on_acquire_reply(self, raw: list[Any], heard: int, started: float) -> PermitState:
        """The permit the acquire script granted.

        Raises:
            CircuitOpenError: the script rejected the call.
        """
        reply = decode_acquire(self.name, raw)
        if self.policies.quorum:
            self.fleet_admits_all = reply.state in _ADMITS_ALL
        if self._cached:
            self._local.keep(reply, heard, started)
        self._fire(reply.transitions)
        if reply.verdict == "reject":
            retry_after = None if reply.retry_after_ms < 0 else reply.retry_after_ms / 1000
            if retry_after is not None and reply.state in LOUD:
                # The deadline is the server's; until it passes nothing can admit us.
                self._view.cache_rejection(
                    self.keys.state, reply.retry_after_ms, reply.state.value
                )
            rejection = CircuitOpenError(self.name, reply.state.value, retry_after)
            if self._observers:
                self.reports.rejection(rejection.state)
            raise rejection
        permit = PermitState(
            reply.generation,
            reply.probe_token,
            reply.now_ms,
            reply.consecutive_failures,
            started,
            incarnation=reply.incarnation,
        )
        if self._observers:
            permit.state = reply.state.value
        return permit

    def without_store(self, exc: StoreUnavailableError, started: float) -> PermitState | None:
        """What ``on_store_error`` makes of a call Redis could not decide: ``exc`` again
        ("reject"), a permit whose outcome goes nowhere ("allow"), or None ("local": the
        driver asks a breaker of this process alone, same config, on an embedded Redis)."""
        policy = self.config.on_store_error
        if policy == "reject":
            raise exc
        self._on_unguarded(self.name, policy)
        if policy == "allow":
            return PermitState(0, "", 0, 0, started, offline=True)
        return None

    def local_config(self) -> BreakerConfig:
        """The config of this process's own breaker for an outage ("local")."""
        return replace(self.config, on_store_error="reject", min_reporters=1)

    def own_config(self) -> BreakerConfig:
        """The config of the breaker this process keeps of its own (min_reporters > 1)."""
        return own_config(self.config)

    def own_reset_heard(self) -> bool:
        """True once per operator reset of this breaker heard on the feed since the last
        look: this process's own breaker resets too (a reset ordered elsewhere reaches
        the own breakers of the processes that hear the feed)."""
        heard = self._view.resets_heard(self.name)
        if heard == self._resets_seen:
            return False
        self._resets_seen = heard
        return True

    def own_transition(self, transition: Transition) -> None:
        """This process's own breaker changed state: the store's observers hear it."""
        if self._observers:
            self.reports.transition(transition)

    # -- operator orders and reading -----------------------------------------------------

    def on_control_reply(self, raw: list[Any]) -> State:
        """Take in an order's reply: this process asks Redis afresh, hooks fire."""
        reply = decode_control(self.name, raw)
        if self.policies.quorum:
            self.fleet_admits_all = reply.state in _ADMITS_ALL
        self._view.forget_rejection(self.keys.state)
        self._local.forget_copies()
        self._fire(reply.transitions)
        return reply.state

    def on_inspect_reply(self, raw: list[Any]) -> Snapshot:
        """The snapshot the inspect script read."""
        return decode_snapshot(self.name, raw, self._window_ms)

    # -- the local copy (cached consistency) ---------------------------------------------

    def admit_locally(self, heard: int) -> PermitState | None:
        """A permit from the local copy, or None when Redis must decide. ``heard`` is the
        view's count of transitions of this breaker (:meth:`heard`).

        Raises:
            CircuitOpenError: the breaker is forced open without a deadline, as this
                process learned from Redis or from the feed (held until a transition is
                heard or max_staleness passes).
        """
        now = self.now()
        copy = self._local.fresh_copy(heard, now)
        if copy is None:
            return None
        permit = PermitState(
            copy.generation,
            "",
            None,
            copy.consecutive_failures,
            now,
            incarnation=copy.incarnation,
            counted=False,
        )
        if self._observers:
            permit.state = copy.state
        return permit

    # -- hooks ---------------------------------------------------------------------------

    def _fire(self, transitions: Iterable[Transition]) -> None:
        for made in transitions:
            transition = made if self.scope == "fleet" else replace(made, scope=self.scope)
            self._view.forget_rejection(self.keys.state)
            announce(transition, self._hooks)
            if self._observers:
                self.reports.transition(transition)
