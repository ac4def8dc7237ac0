"""What a process knows of its store's breakers without asking Redis: the rejections it may
repeat locally, and the transitions it heard pushed on the feed.

No I/O here: the sync and the async store each own one :class:`FleetView`, hand it the
feed's payloads and their own clock, and the breaker core reads it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ._keys import breaker_keys, check_name

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._clock import Clock

__all__ = ["FleetView", "LastEvent"]

LastEvent = tuple[int, str, int]
"""(:meth:`FleetView.heard` just after it, to_state, retry_after_ms) of a transition."""

_REJECTING = ("open", "forced_open")


class FleetView:
    """Rejections cached per breaker key and transitions heard per breaker name.

    Every method is a few dict operations, safe to call from several threads under the GIL
    (a lost race costs at most one extra round trip, never a wrong admission).
    """

    def __init__(self, prefix: str, clock: Clock) -> None:
        self.prefix = prefix
        self.clock = clock
        # Per breaker key: (deadline, state, learned at), in local ms.
        self._rejections: dict[str, tuple[int, str, int]] = {}
        # Per breaker name: how many transitions this process heard of; a local copy taken
        # before the latest one is stale.
        self._heard: dict[str, int] = {}
        self._last_event: dict[str, LastEvent] = {}
        # Per breaker name: operator resets heard, which reach each process's own breaker.
        self._resets: dict[str, int] = {}
        # Bumped at every (re)subscription, which may have missed events, and at a fork.
        self._epoch = 0
        # Called after every transition heard and every new epoch: how the drivers wake
        # the callers waiting for admission (a Condition, futures), with no I/O here.
        self.on_news: Callable[[], None] = _nothing

    def _local_ms(self) -> int:
        return round(self.clock.monotonic() * 1000)

    # -- rejections repeated locally ---------------------------------------------------

    def cached_rejection(self, key: str, max_age: float) -> tuple[float, str] | None:
        """(seconds left, state) of a rejection cached for ``key``, if still in force: its
        deadline has not passed and it was learned less than ``max_age`` seconds ago."""
        entry = self._rejections.get(key)
        if entry is None:
            return None
        # Whole ms, like the server's deadline: float seconds near 1.7e9 would leave a
        # sub-microsecond remainder and reject a caller who waited exactly retry_after.
        now_ms = self._local_ms()
        left_ms = entry[0] - now_ms
        # The age bound is what lets an operator's order (or a DEL of the key) reach a
        # process that is rejecting locally: it asks Redis again at least that often.
        if left_ms <= 0 or now_ms - entry[2] >= max_age * 1000:
            self._rejections.pop(key, None)
            return None
        return left_ms / 1000, entry[1]

    def cache_rejection(self, key: str, retry_after_ms: int, state: str) -> None:
        """Reject calls to ``key`` locally for ``retry_after_ms`` (a deadline Redis gave)."""
        now_ms = self._local_ms()
        self._rejections[key] = (now_ms + retry_after_ms, state, now_ms)

    def forget_rejection(self, key: str) -> None:
        """Drop a cached rejection, e.g. after this process changed the breaker."""
        self._rejections.pop(key, None)

    # -- transitions heard on the feed --------------------------------------------------

    def heard(self, name: str) -> int:
        """Transitions of breaker ``name`` heard (pub/sub), plus one per (re)subscription
        and fork: compare two readings to learn whether anything happened in between."""
        return self._heard.get(name, 0) + self._epoch

    def last_event(self, name: str) -> LastEvent | None:
        """The latest transition of breaker ``name`` heard on the feed, if any: it is still
        the latest while :meth:`heard` gives the same count."""
        return self._last_event.get(name)

    def resets_heard(self, name: str) -> int:
        """Operator resets of breaker ``name`` this process heard on the feed."""
        return self._resets.get(name, 0)

    def new_epoch(self) -> None:
        """Events may have been missed (a new subscription, a fork): every copy taken
        before now is stale, and so is every rejection cached (an order that ended one
        may have been missed; waiters trust them only while nothing was missed)."""
        self._epoch += 1
        self._rejections.clear()
        self.on_news()

    def heard_event(self, payload: bytes | str) -> None:
        """Take in one payload from ``<prefix>:events``; anything not ours is skipped."""
        try:
            data = json.loads(payload)
            name = check_name(data["name"])
            to_state = str(data["to_state"])
            retry_after_ms = int(data.get("retry_after_ms", 0))
        except Exception:  # not ours to decode: skip it
            return
        if data.get("reason") == "reset":
            self._resets[name] = self._resets.get(name, 0) + 1
        count = self._heard.get(name, 0) + 1
        self._last_event[name] = (count + self._epoch, to_state, retry_after_ms)
        self._heard[name] = count
        key = breaker_keys(self.prefix, name).state
        if to_state in _REJECTING and retry_after_ms > 0:
            # The server's deadline, pushed: every process now rejects locally until then.
            self.cache_rejection(key, retry_after_ms, to_state)
        else:
            self.forget_rejection(key)
        self.on_news()


def _nothing() -> None:
    """No driver is waiting for news."""
