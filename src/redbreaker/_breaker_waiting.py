"""The sync breaker's waits for admission: ``acquire(max_wait=...)`` and
``wait_admitting()``, whose every decision (how long to nap, when to give up) is the
core's (:mod:`redbreaker._waiting`); this module only sleeps and asks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from ._breaker_policies import own_breaker_now
from ._exceptions import CircuitOpenError, StoreUnavailableError
from ._observe import quiet_rejections

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._breaker import Breaker
    from ._config import Seconds
    from ._permit import Permit

__all__ = ["acquire_waiting", "wait_admitting", "waiting", "would_admit"]

R = TypeVar("R")


def acquire_waiting(self: Breaker, max_wait: Seconds | None) -> Permit:
    try:
        return self._waiting(max_wait, self.acquire)
    except CircuitOpenError as exc:
        self._core.reports.wait_gave_up(exc.state)  # one refused call, however long
        raise


def waiting(self: Breaker, max_wait: Seconds | None, ask: Callable[[], R]) -> R:
    """``ask()`` again after each rejection it raises, sleeping as the core says,
    until it answers or ``max_wait`` is spent (the last rejection is raised then)."""
    wait = self._admission_wait(max_wait)
    store = self.store
    store.start_feed()
    while True:
        heard = store.view.heard(self.name)
        rejection = self._held_rejection(store.feed_live)
        if rejection is None:
            try:
                with quiet_rejections():
                    return ask()
            except CircuitOpenError as exc:
                rejection = exc
        nap = wait.nap(rejection, self._core.now(), store.feed_live)
        if nap is None:
            raise rejection
        if store.await_news(self.name, heard, nap):
            time.sleep(wait.settle(self._core.now()))


def wait_admitting(self: Breaker, max_wait: Seconds | None = None) -> bool:
    """Wait until the breaker would admit a call, taking no permit: for a consumer
    that pauses fetching while its breaker is open.

    Woken by the breaker's deadline or by a transition heard on the store's feed
    (started by the first wait), never by polling; every wake-up is jittered over a
    tenth of ``recovery_timeout`` (50 ms to 1 s) so a fleet does not ask at once.
    One round trip per wake-up at most.

    Args:
        max_wait: the longest wait in seconds; None waits as long as it takes.

    Returns:
        True once a call would be admitted (closed, half-open with a probe slot free,
        open past its deadline, forced closed, metrics only); False when ``max_wait``
        passed first.
    """
    try:
        return self._waiting(max_wait, self._would_admit)
    except CircuitOpenError:
        return False


def would_admit(self: Breaker) -> bool:
    if self._own is not None:
        try:
            own_breaker_now(self)._would_admit()
        except CircuitOpenError as exc:
            raise self._process_rejection(exc, refused=False) from None
    try:
        snapshot = self.snapshot()
    except StoreUnavailableError as exc:
        # What acquire() would do while Redis is unreachable: on_store_error decides.
        if self._core.without_store(exc, 0.0) is not None:
            return True  # "allow": calls run unguarded
        return self._local_breaker()._would_admit()  # "local"
    rejection = self._snapshot_rejection(snapshot)
    if rejection is not None:
        raise rejection
    return True
