"""The thread-based attempt timeout: one bounded set of daemon threads per breaker.

What it promises:
    - the caller gets control back within the attempt's budget (plus scheduling jitter),
      even when the attempt was still waiting for a thread;
    - an attempt that had not started when its budget ran out is cancelled and never runs;
    - a hung dependency can hold at most ``max_threads`` threads of its own breaker, and
      once ``max_abandoned`` timed-out attempts are still running, new attempts fail fast
      (:class:`AttemptRejectedError`) instead of adding threads;
    - the threads are daemons and never delay interpreter exit.

What it cannot promise: that timed-out work stops. Python cannot kill a thread safely, so
an abandoned attempt runs to its end in the background and its result is dropped. Its side
effects still happen. That is why the number of abandoned attempts is exposed and capped.

``concurrent.futures.ThreadPoolExecutor`` is not used because it joins its workers at
exit: one hung call would hold the process open for as long as it hangs. The handoff is
the cheapest CPython has: attempts travel on a ``queue.SimpleQueue`` (C), and each carries
one plain lock, held until the attempt is done, that its caller waits on with the budget
as the timeout (no ``Condition``, no per-wait allocation).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from . import _fork
from ._exceptions import AttemptRejectedError, AttemptTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AbandonWatcher", "AttemptRunner"]

T = TypeVar("T")
logger = logging.getLogger("redbreaker")

_QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)
# An idle thread waits this long for work before it ends; busy breakers keep theirs warm.
_IDLE_SECONDS = 30.0


class AbandonWatcher(Protocol):
    """Told when its attempt is abandoned still running, and when that attempt ends."""

    def abandoned(self) -> None:
        """Called in the caller's thread, before it gets its exception."""

    def ended(self) -> None:
        """Called in the attempt's thread once the abandoned work returned or raised."""


class _Attempt(Generic[T]):
    __slots__ = ("abandoned", "done", "error", "fn", "started_at", "state", "value", "watcher")

    def __init__(self, fn: Callable[[], T], watcher: AbandonWatcher | None) -> None:
        self.fn = fn
        self.watcher = watcher
        self.state = _QUEUED
        self.abandoned = False
        # Held while the attempt is not done: the thread that finishes it releases it.
        self.done = threading.Lock()
        self.done.acquire()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.started_at = 0.0


class AttemptRunner:
    """Runs attempts of one breaker in its own bounded set of daemon threads.

    Args:
        name: the breaker's name (thread names and errors say it).
        max_threads: threads this breaker may hold at once, running or abandoned.
        max_abandoned: timed-out attempts still running at which new attempts are refused.
    """

    def __init__(self, name: str, *, max_threads: int, max_abandoned: int) -> None:
        self.name = name
        self.max_threads = max_threads
        self.max_abandoned = max_abandoned
        self._spawned = 0
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._forks = _fork.generation()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Attempt[object]] = queue.SimpleQueue()
        self._waiting = 0  # attempts queued and not yet taken by a thread
        self._threads = 0
        self._idle = 0
        self._abandoned = 0

    @property
    def abandoned(self) -> int:
        """Timed-out attempts whose threads are still running."""
        return self._abandoned

    @property
    def threads(self) -> int:
        """Threads alive now (running, abandoned or idle)."""
        return self._threads

    def run(self, fn: Callable[[], T], budget: float, watcher: AbandonWatcher | None = None) -> T:
        """Run ``fn()`` in a thread; return its result or raise its exception.

        ``watcher`` hears if the attempt is abandoned while running (a timeout, or the
        caller interrupted) and when that abandoned work ends.

        Raises:
            AttemptTimeoutError: ``fn`` did not finish within ``budget`` seconds.
            AttemptRejectedError: ``max_abandoned`` timed-out attempts are still running.
        """
        if self._forks != _fork.generation():
            # A forked child: the parent's threads did not come along (nor did the
            # attempts they ran); counting them would leave every attempt unserved.
            self._start_afresh()
        attempt = _Attempt(fn, watcher)
        try:
            with self._lock:
                if self._abandoned >= self.max_abandoned:
                    raise AttemptRejectedError(self.name, self._abandoned)
                self._waiting += 1
                # An idle thread counts as idle until it takes work, so compare with the
                # attempts waiting: a burst must not all wait for the one idle thread.
                start = self._waiting > self._idle and self._threads < self.max_threads
                if start:
                    self._threads += 1
                    self._spawned += 1
            self._queue.put(attempt)  # type: ignore[arg-type]
            if start:
                threading.Thread(
                    target=self._serve, name=f"redbreaker-{self.name}-{self._spawned}", daemon=True
                ).start()
            finished = attempt.done.acquire(timeout=budget)
        except BaseException:
            # Refused, or interrupted (KeyboardInterrupt) after queueing: the work must not
            # run unseen later.
            self._give_up(attempt)
            raise
        if not finished and self._give_up(attempt):
            raise AttemptTimeoutError(self.name, budget, started=attempt.state != _CANCELLED)
        if attempt.error is not None:
            raise attempt.error
        return attempt.value  # type: ignore[return-value]

    def _give_up(self, attempt: _Attempt[T]) -> bool:
        """Cancel or abandon ``attempt``; False when it finished in the meantime."""
        with self._lock:
            if attempt.state == _QUEUED:
                # It stays in the queue; the thread that takes it skips it.
                attempt.state = _CANCELLED
                return True
            if attempt.state == _RUNNING:
                attempt.abandoned = True
                self._abandoned += 1
                if attempt.watcher is not None:
                    attempt.watcher.abandoned()
                return True
            return False

    def _take(self) -> _Attempt[object] | None:
        """The next attempt to run, or None when this thread should end (idle too long)."""
        while True:
            with self._lock:
                self._idle += 1
            try:
                attempt = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    # Work may have been queued between the timeout and this lock: stay.
                    if self._waiting == 0:
                        self._threads -= 1
                        return None
                continue
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
                if attempt.state == _CANCELLED:
                    continue  # its caller gave up before it started: it never runs
                attempt.state = _RUNNING
                attempt.started_at = time.monotonic()
                return attempt

    def _serve(self) -> None:
        while True:
            attempt = self._take()
            if attempt is None:
                return
            try:
                attempt.value = attempt.fn()
            except BaseException as exc:  # handed to the waiting caller, who re-raises it
                attempt.error = exc
            with self._lock:
                attempt.state = _DONE
                if attempt.abandoned:
                    self._abandoned -= 1
            attempt.done.release()
            if attempt.abandoned:
                self._ended(attempt)

    def _ended(self, attempt: _Attempt[object]) -> None:
        logger.info(
            "circuit %r: an abandoned attempt finished after %.3fs (result dropped)",
            self.name,
            time.monotonic() - attempt.started_at,
            extra={"event": "abandoned_attempt_finished", "breaker": self.name},
        )
        if attempt.watcher is not None:
            try:
                attempt.watcher.ended()
            except Exception:  # this thread serves other attempts: it must go on
                logger.exception("circuit %r: ending an abandoned attempt failed", self.name)
