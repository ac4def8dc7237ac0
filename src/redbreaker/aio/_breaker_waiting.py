"""The asyncio breaker's waits for admission, the twin of
:mod:`redbreaker._breaker_waiting`: every decision is the core's; this module only sleeps
and asks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

from .._exceptions import CircuitOpenError, StoreUnavailableError
from .._observe import quiet_rejections
from ._breaker_policies import own_breaker_now

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._config import Seconds
    from ._breaker import Breaker
    from ._permit import Permit

__all__ = ["acquire_waiting", "wait_admitting", "waiting", "would_admit"]

R = TypeVar("R")

async def acquire_waiting(self: Breaker, max_wait: Seconds | None) -> Permit:
    try:
        return await self._waiting(max_wait, self._acquire)
    except CircuitOpenError as exc:
        self._core.reports.wait_gave_up(exc.state)  # one refused call, however long
        raise


async def waiting(
    self: Breaker, max_wait: Seconds | None, ask: Callable[[], Awaitable[R]]
) -> R:
    """``await ask()`` again after each rejection it raises, sleeping as the core
    says, until it answers or ``max_wait`` is spent (the last rejection is raised)."""
    wait = self._admission_wait(max_wait)
    store = self.store
    store.start_feed()
    while True:
        heard = store.view.heard(self.name)
        rejection = self._held_rejection(store.feed_live)
        if rejection is None:
            try:
                with quiet_rejections():
                    return await ask()
            except CircuitOpenError as exc:
                rejection = exc
        nap = wait.nap(rejection, self._core.now(), store.feed_live)
        if nap is None:
            raise rejection
        if await store.await_news(self.name, heard, nap):
            await asyncio.sleep(wait.settle(self._core.now()))


async def wait_admitting(self: Breaker, max_wait: Seconds | None = None) -> bool:
    """Wait until the breaker would admit a call, taking no permit: the twin of
    :meth:`redbreaker.Breaker.wait_admitting` (woken by the deadline or the feed,
    jittered, never polling).

    Returns:
        True once a call would be admitted; False when ``max_wait`` passed first.
    """
    try:
        return await self._waiting(max_wait, self._would_admit)
    except CircuitOpenError:
        return False


async def would_admit(self: Breaker) -> bool:
    if self._own is not None:
        try:
            await (await own_breaker_now(self))._would_admit()
        except CircuitOpenError as exc:
            raise self._process_rejection(exc, refused=False) from None
    try:
        snapshot = await self.snapshot()
    except StoreUnavailableError as exc:
        # What acquire() would do while Redis is unreachable: on_store_error decides.
        if self._core.without_store(exc, 0.0) is not None:
            return True  # "allow": calls run unguarded
        return await self._local_breaker()._would_admit()  # "local"
    rejection = self._snapshot_rejection(snapshot)
    if rejection is not None:
        raise rejection
    return True
