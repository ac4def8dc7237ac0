"""What a breaker and a permit are, whichever driver sends their calls: the parts of
:class:`redbreaker.Breaker` and :class:`redbreaker.aio.Breaker` (and of their permits)
that do no I/O, written once. The drivers subclass them and add only the sending.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._core import BreakerCore
from ._exceptions import CircuitOpenError, ConfigError, PermitError
from ._lane import quiet_lane
from ._state import State
from ._waiting import AdmissionWait, defer_delay, max_wait_setting, wake_spread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractContextManager

    from typing_extensions import Self, Unpack

    from ._classify import Outcome
    from ._clock import Clock
    from ._config import BreakerConfig, BreakerSettings, Seconds
    from ._core import PermitState, TransitionHook
    from ._health import StoreHealth
    from ._observe import BreakerObserver
    from ._state import Snapshot
    from ._view import FleetView

__all__ = ["BreakerBase", "PermitBase", "StoreLike"]


class StoreLike(Protocol):
    """What a breaker reads of its store when it is built (both drivers' stores have it)."""

    prefix: str
    clock: Clock
    view: FleetView
    observers: tuple[BreakerObserver, ...]
    health: StoreHealth

    def local_fallback(self) -> Self:
        """The embedded store breakers of this one fall back to during an outage."""
        ...

    def process_store(self) -> Self:
        """The embedded store of the breakers processes keep of their own (a quorum's)."""
        ...


S = TypeVar("S", bound=StoreLike)


class BreakerBase(Generic[S]):
    """A breaker's identity and decisions: its name, config, keys and core.

    Raises:
        ConfigError: an invalid name or setting, or a store of the other driver.
    """

    _store_type: type[S]
    _store_hint: str  # says which connect() builds the right store
    _batch_lock: Callable[[], AbstractContextManager[Any]]  # for the cached mode's batch

    def __init__(
        self,
        name: str,
        *,
        store: S,
        config: BreakerConfig | None = None,
        on_transition: TransitionHook | Iterable[TransitionHook] = (),
        **settings: Unpack[BreakerSettings],
    ) -> None:
        if not isinstance(store, self._store_type):
            raise ConfigError("store", f"expected {self._store_hint}, got {store!r}")
        self._core = BreakerCore(
            name,
            prefix=store.prefix,
            clock=store.clock,
            view=store.view,
            config=config,
            on_transition=on_transition,
            settings=dict(settings),
            batch_lock=type(self)._batch_lock,
            on_unguarded=store.health.unguarded,
            observers=store.observers,
        )
        self.name = self._core.name
        self.config = self._core.config
        self.store = store
        self._keys = self._core.keys
        self._cached = self.config.consistency == "cached"
        # With a quorum every call also asks this process's own breaker: no quiet lane.
        self._quorum = self._core.policies.quorum
        # The cached mode's local decisions (None in strict mode: Redis admits every call).
        self._lane = None if self._quorum else quiet_lane(self._core)
        self._hooks = on_transition
        self._wake_spread = wake_spread(self.config)
        # This process's own breaker while Redis is unreachable (on_store_error="local").
        self._local: Self | None = None
        if self.config.on_store_error == "local":
            self._embedded_store()  # fails now, not in an outage, if fakeredis is missing
        # The breaker this process keeps of its own (min_reporters > 1), made on first call.
        self._own: Self | None = None
        if self._quorum:
            self.store.process_store()  # fails now, not at the first call, without fakeredis
        self._built()

    def _own_breaker(self) -> Self:
        """This process's own breaker (min_reporters > 1): same name and trip rules, on
        an in-process Redis, fed this process's outcomes only; it rejects this process's
        calls while the fleet's breaker waits for a quorum."""
        own = self._own
        if own is None:
            own = type(self)(
                self.name,
                store=self.store.process_store(),
                config=self._core.own_config(),
                on_transition=self._core.own_transition,
            )
            own._core.scope = "process"
            self._own = own
        return own

    def _process_rejection(
        self, exc: CircuitOpenError, *, refused: bool = True
    ) -> CircuitOpenError:
        """The rejection of this process's own breaker, as this breaker raises it;
        ``refused``: a call was refused (observers count it), not only asked about."""
        if refused and self._core._observers:
            self._core.reports.rejection(exc.state)
        return CircuitOpenError(self.name, exc.state, exc.retry_after, "process")

    def _with_process_state(self, snapshot: Snapshot, own: Snapshot | None) -> Snapshot:
        """``snapshot`` with the state of this process's own breaker (a quorum's)."""
        if not self._quorum:
            return snapshot
        return replace(snapshot, process_state=State.CLOSED if own is None else own.state)

    def _local_breaker(self) -> Self:
        """This process's own breaker while Redis is unreachable (on_store_error="local"):
        same name, config and Lua, on an embedded Redis, until the shared one answers."""
        local = self._local
        if local is None:
            local = self._local = type(self)(
                self.name,
                store=self._embedded_store(),
                config=self._core.local_config(),
                on_transition=self._hooks,
            )
        return local

    def _built(self) -> None:
        """What a driver's breaker sets up once the common parts are in place."""

    def _embedded_store(self) -> S:
        """The in-process store this breaker falls back to with on_store_error="local"."""
        return self.store.local_fallback()

    def defer_delay(self, rejection: CircuitOpenError) -> float:
        """Seconds to put away a message this breaker rejected (a queue's countdown,
        defer or delay): until its deadline, plus a jitter over a tenth of
        ``recovery_timeout`` (50 ms to 1 s), so a fleet's deferred messages do not all
        come back in one millisecond. No deadline (forced open without a duration): 5 s.

        Raises:
            TypeError: ``rejection`` is not a :class:`CircuitOpenError`.
        """
        if not isinstance(rejection, CircuitOpenError):
            raise TypeError(f"expected a CircuitOpenError, got {rejection!r}")
        return defer_delay(rejection, self._wake_spread)

    # -- waiting for admission (the loops are the drivers'; every decision is here) ------

    def _admission_wait(self, max_wait: Seconds | None) -> AdmissionWait:
        """A wait of ``max_wait`` seconds from now (None: unbounded).

        Raises:
            ConfigError: ``max_wait`` is not 0, None or a duration.
        """
        return AdmissionWait(max_wait_setting(max_wait), self._core.now(), self._wake_spread)

    def _held_rejection(self, feed_live: bool) -> CircuitOpenError | None:
        """A rejection this process knows of without asking Redis. While the feed is live
        a deadline Redis gave holds until it passes: anything that would end it sooner
        (an order, a DEL) is pushed, and a missed push starts a new epoch that drops it."""
        max_age = float("inf") if feed_live else self._core._max_staleness
        cached = self.store.view.cached_rejection(self._keys.state, max_age)
        return None if cached is None else CircuitOpenError(self.name, cached[1], cached[0])

    def _snapshot_rejection(self, snapshot: Snapshot) -> CircuitOpenError | None:
        """The rejection a call would meet in ``snapshot``'s breaker; None: it would be
        admitted (closed, an operator's admitting state, open past its deadline, or
        half-open with a probe slot free)."""
        state = snapshot.state.value
        if state in ("open", "forced_open"):
            if snapshot.retry_after is None or snapshot.retry_after > 0:
                return CircuitOpenError(self.name, state, snapshot.retry_after)
            return None
        if state == "half_open" and snapshot.probes_in_flight >= self.config.half_open_max_calls:
            return CircuitOpenError(self.name, state, None)
        return None

    def __repr__(self) -> str:
        module = type(self).__module__.replace("._breaker", "")
        return f"<{module}.Breaker {self.name!r} prefix={self.store.prefix!r}>"


B = TypeVar("B", bound=BreakerBase[Any])


class PermitBase(Generic[B]):
    """Leave to make one call, settled exactly once: what a permit says about itself."""

    __slots__ = ("_breaker", "_state")

    def __init__(self, breaker: B, state: PermitState) -> None:
        self._breaker = breaker
        self._state = state

    @property
    def is_probe(self) -> bool:
        """True when this call is one of the half-open probes."""
        return bool(self._state.probe_token)

    @property
    def generation(self) -> int:
        """The breaker generation the call was admitted under."""
        return self._state.generation

    def _failure_outcome(self, exc: BaseException | None) -> Outcome:
        """What ``failure(exc)`` counts: a failure, or what the config makes of ``exc``."""
        return "failure" if exc is None else self._breaker._core.classify_exception(exc)

    def _block_outcome(self, exc: BaseException | None) -> Outcome | None:
        """How leaving a ``with`` block settles the permit: a success, or the block's
        exception classified; None when the block settled it already."""
        if self._state.settled:
            return None
        return "success" if exc is None else self._failure_outcome(exc)

    def _take_settlement(self) -> None:
        """Mark the permit settled, once.

        Raises:
            PermitError: it was settled before.
        """
        if self._state.settled:
            raise PermitError(f"this permit of circuit {self._breaker.name!r} is already settled")
        self._state.settled = True

