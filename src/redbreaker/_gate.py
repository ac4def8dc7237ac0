"""The sync store's gate on calls in flight, for a client whose pool limits its
connections (:mod:`redbreaker._pool_limit` says how many and how long a call may wait)."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["CallGate"]


class CallGate:
    """A semaphore that hands a freed slot to the longest waiter.

    ``threading.Semaphore`` lets the thread that just released take the slot again before
    the waiter it woke gets the GIL: with 64 threads on 8 slots some waited past half a
    second in a test, and a call that waits past the store's deadline counts as an outage.
    Here a release gives the slot to the first waiter directly, so waits stay first in,
    first out.
    """

    __slots__ = ("_free", "_lock", "_waiters")

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self, wait: float) -> bool:
        """Take a slot, waiting up to ``wait`` seconds; False when none came."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=wait):
            return True
        with self._lock:
            try:
                self._waiters.remove(turn)
            except ValueError:
                return True  # handed a slot just as the wait ran out: it is ours
            return False

    def release(self) -> None:
        """Give the slot back: to the first waiter, if any."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1
