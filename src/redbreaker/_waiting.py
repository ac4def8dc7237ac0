"""How long a consumer waits for its breaker, and how long a rejected message is put away:
decisions with no I/O, for both drivers and every queue adapter.

A rejection carries the server's deadline (``retry_after``). Waiting for it is the easy
part; the traps are the fleet's: a thousand consumers that all sleep exactly
``retry_after`` wake in the same millisecond, and a consumer that re-asks every few ms
while a probe runs is a loop polling Redis. So every wait here is:

- the deadline, when there is one, plus a jitter drawn from ``[0, spread)``;
- while half-open with every probe slot taken, the probe's outcome, which the transition
  feed pushes (a backstop of :data:`HALF_OPEN_BACKSTOP` in case it is lost);
- forced open with no deadline, the operator's next order, pushed the same way (a
  backstop of :data:`NO_DEADLINE_BACKSTOP`);
- after the feed wakes a waiter early, a jittered pause of ``[0, spread)`` before it asks,
  so that one PUBLISH does not send the whole fleet to Redis and the dependency at once.

``spread`` is a tenth of ``recovery_timeout``, within [50 ms, 1 s] (:func:`wake_spread`).
"""

from __future__ import annotations

import math
import random as _random
from typing import TYPE_CHECKING

from ._config import seconds_setting

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import BreakerConfig, Seconds
    from ._exceptions import CircuitOpenError

__all__ = [
    "HALF_OPEN_BACKSTOP",
    "NO_DEADLINE_BACKSTOP",
    "AdmissionWait",
    "defer_delay",
    "max_wait_setting",
    "wake_spread",
]

WAKE_SPREAD_MIN = 0.05
WAKE_SPREAD_MAX = 1.0
HALF_OPEN_BACKSTOP = 1.0
"""How long a waiter rejected by a half-open breaker (every probe slot taken) waits for
the feed to say how the probe ended, before it asks Redis again."""
NO_DEADLINE_BACKSTOP = 5.0
"""How long a waiter rejected with no deadline (forced open without a duration, or a
rejection of unknown length) waits for the feed before it asks Redis again."""


def wake_spread(config: BreakerConfig) -> float:
    """The window wake-ups and deferrals of one breaker are spread over: a tenth of its
    recovery_timeout, within [50 ms, 1 s]."""
    recovery = seconds_setting("recovery_timeout", config.recovery_timeout) or 0.0
    return min(WAKE_SPREAD_MAX, max(WAKE_SPREAD_MIN, recovery / 10))


def max_wait_setting(max_wait: Seconds | None) -> float | None:
    """``max_wait`` in seconds (None: wait as long as it takes).

    Raises:
        ConfigError: not 0 or a number of seconds from 1 ms to 10 years.
    """
    if max_wait == 0 and not isinstance(max_wait, bool):
        return 0.0  # ask once, never wait
    return seconds_setting("max_wait", max_wait, optional=True)


def defer_delay(
    rejection: CircuitOpenError,
    spread: float,
    random: Callable[[], float] = _random.random,
) -> float:
    """How long a message the breaker rejected is put away (a queue's countdown, defer
    or delay): until the breaker's deadline, plus a jitter in ``[0, spread)`` so the
    deferred messages of a whole fleet do not come back in one millisecond.

    A rejection with no deadline (forced open without a duration) defers for
    :data:`NO_DEADLINE_BACKSTOP`: the message comes back and asks again, never lost.
    """
    retry_after = rejection.retry_after
    if retry_after is None or retry_after < 0:
        retry_after = NO_DEADLINE_BACKSTOP
    return retry_after + random() * spread


class AdmissionWait:
    """One caller's wait for admission, up to ``max_wait`` seconds from ``now``.

    The driver loops: ask for a permit; on a rejection, :meth:`nap` says how long to wait
    for the feed (None: the wait is over, raise the rejection); if the feed woke it early,
    :meth:`settle` says how long to pause before asking again.
    """

    __slots__ = ("_deadline", "_random", "_spread")

    def __init__(
        self,
        max_wait: float | None,
        now: float,
        spread: float,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._deadline = math.inf if max_wait is None else now + max_wait
        self._spread = spread
        self._random = random

    def left(self, now: float) -> float:
        """Seconds left of the wait (inf: no bound)."""
        return self._deadline - now

    def nap(self, rejection: CircuitOpenError, now: float, feed_live: bool) -> float | None:
        """How long to wait after ``rejection`` before asking again (a transition heard on
        the feed ends it early); None when ``max_wait`` is spent."""
        left = self._deadline - now
        if left <= 0:
            return None
        retry_after = rejection.retry_after
        if rejection.state == "half_open":
            # The probe's outcome is pushed: waiting for it beats re-asking while it runs.
            floor = HALF_OPEN_BACKSTOP if feed_live else self._spread
            base = max(retry_after or 0.0, floor)
        elif retry_after is None or retry_after < 0:
            base = NO_DEADLINE_BACKSTOP
        else:
            base = retry_after
        return min(left, base + self._random() * self._spread)

    def settle(self, now: float) -> float:
        """The pause after the feed woke this waiter early: jittered, so that one PUBLISH
        does not send every waiter of the fleet to Redis in the same millisecond."""
        return max(0.0, min(self._deadline - now, self._random() * self._spread))
