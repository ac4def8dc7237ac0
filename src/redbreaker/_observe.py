"""What a store's observers are told: each call's outcome and each transition this process's
scripts made. No I/O here; both drivers report through :class:`~redbreaker._core.BreakerCore`.

An observer (``redbreaker.contrib.prometheus.PrometheusMetrics``,
``redbreaker.contrib.otel.OtelMetrics``, or any object with the two methods) is registered
per store::

    store = redbreaker.connect(url, observers=[PrometheusMetrics()])
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from ._exceptions import ConfigError
from ._hooks import logger

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ._classify import Outcome
    from ._permit_state import PermitState
    from ._state import Transition

__all__ = [
    "UNKNOWN_STATE",
    "BreakerObserver",
    "CallKind",
    "CallRecord",
    "PolicyEvent",
    "Reports",
    "observers_setting",
    "quiet_rejections",
    "tell_call",
    "tell_transition",
]

PolicyEvent = Literal["retry_budget_exhausted"]
"""What a fleet policy did to one call: the retry budget refused a retry."""

CallKind = Literal["success", "failure", "ignored", "rejected"]
"""How a call ended for the breaker: ``ignored`` calls count as no call (``ignore_on``, an
exception not in ``record_on``); ``rejected`` calls never ran."""

UNKNOWN_STATE = "unknown"
"""The state of a call admitted while Redis was unreachable (``on_store_error="allow"``):
nobody decided it, so no state is claimed."""


class CallRecord(NamedTuple):
    """One call, as an observer is told of it once its outcome is known (immutable; a
    named tuple because one is made per call and a frozen dataclass costs twice as much).

    Attributes:
        breaker: the breaker's name.
        outcome: ``"success"``, ``"failure"``, ``"ignored"`` or ``"rejected"``.
        state: the state the call was admitted in (``"closed"``, ``"half_open"`` for a
            probe, ``"metrics_only"``, ``"forced_closed"``), the state that rejected it
            (``"open"``, ``"forced_open"``, ``"half_open"``), or ``"unknown"`` for a call
            admitted while Redis was unreachable under ``on_store_error="allow"``.
        seconds: from just before the call asked for its permit to its outcome (the
            acquire's round trip included, as ``slow_call_duration`` measures); None for
            a rejection.
    """

    breaker: str
    outcome: CallKind
    state: str
    seconds: float | None


class BreakerObserver(Protocol):
    """What a store's observers implement. Both methods run in the caller's thread (or on
    the event loop), inside the call: keep them short and non-blocking. An exception they
    raise is logged (logger ``"redbreaker"``) and never reaches the call."""

    def on_call(self, record: CallRecord) -> None:
        """A call of a breaker of this store ended (or was rejected)."""

    def on_transition(self, transition: Transition) -> None:
        """A script this process ran changed a breaker's state (each transition is made by
        exactly one process, so summing over processes counts each once). A transition
        whose ``scope`` is ``"process"`` is one of this process's own breaker
        (``min_reporters`` > 1).

        An observer may also have ``on_policy_event(breaker, event)``: told of each
        :data:`PolicyEvent` (a retry the fleet's budget refused); it is optional."""


def observers_setting(observers: object) -> tuple[BreakerObserver, ...]:
    """``observers`` (one observer or several) as a tuple.

    Raises:
        ConfigError: an item lacks ``on_call`` or ``on_transition``, or is not iterable.
    """
    if _is_observer(observers):
        return (observers,)  # type: ignore[return-value]
    if isinstance(observers, (str, bytes)) or not hasattr(observers, "__iter__"):
        raise ConfigError("observers", f"expected a list of observers, got {observers!r}")
    found = tuple(observers)
    for observer in found:
        if not _is_observer(observer):
            raise ConfigError(
                "observers",
                f"{observer!r} is not an observer: it needs callable on_call(record) and "
                "on_transition(transition) methods",
            )
    return found


def _is_observer(value: object) -> bool:
    return not isinstance(value, type) and all(
        callable(getattr(value, method, None)) for method in ("on_call", "on_transition")
    )


def tell_call(observers: Iterable[BreakerObserver], record: CallRecord) -> None:
    """Tell each observer of ``record``; one that raises is logged."""
    for observer in observers:
        try:
            observer.on_call(record)
        except Exception:
            # Bookkeeping must never break the guarded call or hide its result.
            logger.exception("redbreaker observer %r failed on a call", observer)


def tell_transition(observers: Iterable[BreakerObserver], transition: Transition) -> None:
    """Tell each observer of ``transition``; one that raises is logged."""
    for observer in observers:
        try:
            observer.on_transition(transition)
        except Exception:
            logger.exception("redbreaker observer %r failed on a transition", observer)


# Set while a caller waits for admission (acquire with max_wait): the attempts it makes
# meanwhile are not calls refused to it; the wait reports one rejection if it gives up.
_WAITING: ContextVar[bool] = ContextVar("redbreaker_waiting_for_admission", default=False)


@contextlib.contextmanager
def quiet_rejections() -> Iterator[None]:
    """Report no rejection inside: the caller is waiting, and reports its own outcome."""
    token = _WAITING.set(True)
    try:
        yield
    finally:
        _WAITING.reset(token)


class Reports:
    """What one breaker tells its store's observers. The core calls it only when there
    are observers (one truthiness check on the hot path otherwise)."""

    __slots__ = ("_name", "_observers")

    def __init__(self, name: str, observers: tuple[BreakerObserver, ...]) -> None:
        self._name = name
        self._observers = observers

    def outcome(self, outcome: Outcome, permit: PermitState, now: float) -> None:
        """A call admitted with ``permit`` ended with ``outcome`` (never ``release``: a
        call that ended without an outcome is not a call)."""
        kind: CallKind = "ignored" if outcome == "ignore" else outcome  # type: ignore[assignment]
        # Admitted while Redis was unreachable ("allow"): nobody decided, no state is claimed.
        state = UNKNOWN_STATE if permit.offline else getattr(permit, "state", "closed")
        self.call(kind, state, now - permit.started)

    def call(self, kind: CallKind, state: str, duration: float) -> None:
        """A call admitted in ``state`` ended as ``kind`` after ``duration`` seconds."""
        tell_call(self._observers, CallRecord(self._name, kind, state, duration))

    def rejection(self, state: str) -> None:
        """A call was refused in ``state`` (not reported while its caller waits on)."""
        if not _WAITING.get():
            tell_call(self._observers, CallRecord(self._name, "rejected", state, None))

    def wait_gave_up(self, state: str) -> None:
        """A caller waiting for admission gave up: one refused call."""
        if self._observers:
            tell_call(self._observers, CallRecord(self._name, "rejected", state, None))

    def transition(self, transition: Transition) -> None:
        """This process's script made ``transition``."""
        tell_transition(self._observers, transition)

    def policy(self, event: PolicyEvent) -> None:
        """A fleet policy did ``event`` to a call (observers without the method skip it)."""
        for observer in self._observers:
            method = getattr(observer, "on_policy_event", None)
            if method is None:
                continue
            try:
                method(self._name, event)
            except Exception:
                logger.exception("redbreaker observer %r failed on a policy event", observer)
