"""What a breaker and a permit are, whichever driver sends their calls: the parts of
:class:`redbreaker.Breaker` and :class:`redbreaker.aio.Breaker` (and of their permits)
that do no I/O, written once. The drivers subclass them and add only the sending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._core import BreakerCore
from ._exceptions import ConfigError, PermitError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractContextManager

    from typing_extensions import Self, Unpack

    from ._classify import Outcome
    from ._clock import Clock
    from ._config import BreakerConfig, BreakerSettings
    from ._core import PermitState, TransitionHook
    from ._view import FleetView

__all__ = ["BreakerBase", "PermitBase", "StoreLike"]


class StoreLike(Protocol):
    """What a breaker reads of its store when it is built (both drivers' stores have it)."""

    prefix: str
    clock: Clock
    view: FleetView

    def local_fallback(self) -> Self:
        """The embedded store breakers of this one fall back to during an outage."""
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
        )
        self.name = self._core.name
        self.config = self._core.config
        self.store = store
        self._keys = self._core.keys
        self._cached = self.config.consistency == "cached"
        self._hooks = on_transition
        # This process's own breaker while Redis is unreachable (on_store_error="local").
        self._local: Self | None = None
        if self.config.on_store_error == "local":
            self._embedded_store()  # fails now, not in an outage, if fakeredis is missing
        self._built()

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

