"""Which Redis nodes a store can reach, and when the store as a whole is degraded: the
decisions of :class:`redbreaker._health.StoreHealth`, with no I/O, clock or lock (the
caller brings the time and holds its lock around every change).

A store keeps one record per node its script calls go to that failed: a standalone (or
Sentinel's) server is one node, named ``""``; each primary of a cluster is one, by the
``host:port`` name the slot table gives it. A failed call degrades its node alone: the
calls of breakers on other primaries still go to Redis, and only the degraded node's
calls wait out its backoff. The store is degraded from the first node's failure until a
call answers with no node degraded: one ``store_degraded`` and one ``store_recovered``
per outage, however many primaries it spans. A node that no longer serves any slot (a
dead primary that a failover replaced) is forgotten, so that its record, which no call
would ever clear, does not keep the store degraded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

__all__ = ["NodeOutage", "Reachability"]


@dataclass
class NodeOutage:
    """One node's outage: the failures in a row, and when it may be tried again."""

    failures: int = 0
    next_try: float = 0.0


class Reachability:
    """The degraded nodes of one store and the store's own outage.

    Args:
        wait_after: seconds to wait before trying a node again after ``failures`` (>= 1)
            failures in a row.
    """

    __slots__ = ("_down", "_wait_after", "since")

    def __init__(self, wait_after: Callable[[int], float]) -> None:
        self._wait_after = wait_after
        self._down: dict[str, NodeOutage] = {}
        self.since: float | None = None
        """When the store's outage began (its first node's failure); None when none is on."""

    @property
    def degraded(self) -> bool:
        """True from a node's failure until a call answers with no node degraded."""
        return self.since is not None

    def down(self, node: str) -> bool:
        """True while ``node``'s last call failed for lack of Redis (a dict lookup: safe to
        read without the caller's lock)."""
        return node in self._down

    def down_nodes(self) -> list[str]:
        """The degraded nodes' names."""
        return list(self._down)

    def claim_try(self, node: str, now: float) -> float:
        """Seconds until ``node`` may be tried again; 0 when it may be now. The caller
        that gets 0 for a degraded node tries it, and the next try is moved on at once,
        so that a thousand callers do not all try a dead node together."""
        outage = self._down.get(node)
        if outage is None:
            return 0.0
        if now < outage.next_try:
            return outage.next_try - now
        outage.next_try = now + self._wait_after(outage.failures)
        return 0.0

    def wait_left(self, node: str, now: float) -> float:
        """Seconds until ``node`` may be tried again, without claiming the try."""
        outage = self._down.get(node)
        return 0.0 if outage is None else max(0.0, outage.next_try - now)

    def failed(self, node: str, now: float) -> bool:
        """A call on ``node`` failed for lack of Redis. True when this begins the store's
        outage (no node was degraded): the one ``store_degraded`` edge."""
        outage = self._down.get(node)
        if outage is None:
            outage = self._down[node] = NodeOutage()
        outage.failures += 1
        outage.next_try = now + self._wait_after(outage.failures)
        if self.since is not None:
            return False
        self.since = now
        return True

    def succeeded(self, node: str, now: float) -> float | None:
        """A call on ``node`` answered. The outage's length in seconds when this ends the
        store's outage (no node is degraded any more): the one ``store_recovered`` edge;
        None otherwise."""
        self._down.pop(node, None)
        since = self.since
        if since is None or self._down:
            return None
        self.since = None
        return now - since

    def forget_all_but(self, owners: Collection[str]) -> list[str]:
        """Forget the degraded nodes not among ``owners`` (the primaries the slot table
        names now): no call goes to them again. Returns their names.

        The store's outage is not ended here: the next call that answers ends it, if no
        node is degraded then (a dead primary's successor has not answered yet).
        """
        gone = [node for node in self._down if node not in owners]
        for node in gone:
            del self._down[node]
        return gone
