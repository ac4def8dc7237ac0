"""The asyncio store's gate on calls in flight, for a client whose pool limits its
connections (:mod:`redbreaker._pool_limit` says how many and how long a call may wait)."""

from __future__ import annotations

import asyncio

__all__ = ["CallGate"]


class CallGate:
    """An ``asyncio.Semaphore`` of ``slots``, made anew on each event loop the store is
    used from (a semaphore that ever waited belongs to its loop; ``asyncio.run`` twice
    is two loops)."""

    __slots__ = ("_loop", "_semaphore", "_slots")

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore = asyncio.Semaphore(slots)

    async def acquire(self, wait: float) -> bool:
        """Take a slot, waiting up to ``wait`` seconds; False when none came."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self._slots)
        semaphore = self._semaphore
        if not semaphore.locked():
            return await semaphore.acquire()  # free: returns at once, no task, no timer
        try:
            return await asyncio.wait_for(semaphore.acquire(), wait)
        except asyncio.TimeoutError:
            return False

    def release(self) -> None:
        self._semaphore.release()

    def forget(self) -> None:
        """In a forked child: the parent's waiters and loop are not the child's."""
        self._loop, self._semaphore = None, asyncio.Semaphore(self._slots)
