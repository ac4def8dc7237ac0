"""The dashboard's link to Redis: one transition feed and one refresh loop for the whole
server, whatever the number of viewers, and the fan-out of the board's events to them.

What the events say is :mod:`redbreaker._board`'s decision; here the feed is subscribed
(again, with backoff, after Redis blips), snapshots are read, and events are queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from ._board import Board, Event
from ._exceptions import ConfigError, StoreError
from ._health import FEED_BACKOFF, wait_after
from .aio import Breaker
from .aio import connect as aio_connect

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._state import Snapshot

__all__ = ["ORDERS", "FleetWatcher"]

ORDERS = ("force-open", "force-close", "metrics-only", "reset")
"""The operator actions the dashboard offers (the CLI's command names)."""

# Snapshots read at once during a full refresh: enough to read hundreds of breakers in a
# few round-trip times, few enough not to open hundreds of connections.
_READ_CONCURRENCY = 16
# Events a slow viewer may lag behind before it is dropped (its EventSource reconnects
# and starts again from a full board).
_VIEWER_BACKLOG = 1000


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _problem(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class FleetWatcher:
    """Watches every breaker under a prefix for the dashboard.

    Args:
        url: the store URL (as :func:`redbreaker.aio.connect` takes it).
        prefix: the key prefix to watch.
        admin_actions: whether operator orders are accepted (shown on the board).
        refresh_seconds: how often every breaker is read again (window counts change
            without transitions); a heard transition reads its breaker at once.

    Raises:
        ConfigError: a malformed URL or prefix (at construction).
    """

    def __init__(
        self, url: str, *, prefix: str, admin_actions: bool, refresh_seconds: float = 2.0
    ) -> None:
        self.store = aio_connect(url, prefix=prefix)
        self.board = Board(self.store.prefix, admin_actions=admin_actions)
        self._refresh_seconds = refresh_seconds
        self._breakers: dict[str, Breaker] = {}
        self._viewers: set[asyncio.Queue[Event | None]] = set()
        self._wanted: set[str] = set()
        self._wanted_event: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._feed_live = False
        self._event_id = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the feed and refresh tasks on the running loop."""
        self._wanted_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._feed_loop(), name="redbreaker-dashboard-feed"),
            loop.create_task(self._refresh_loop(), name="redbreaker-dashboard-refresh"),
        ]
        self._publish(self.board.redis_lost(_wall_ms(), "connecting"))

    async def aclose(self) -> None:
        """Stop the tasks, end every viewer's stream and close the store."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.end_streams()
        await self.store.aclose()

    # -- viewers ------------------------------------------------------------------------

    def subscribe(self) -> tuple[Event, asyncio.Queue[Event | None]]:
        """A new viewer: the board as it is now, and the queue of what follows (None
        ends the stream)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=_VIEWER_BACKLOG)
        self._viewers.add(queue)
        return self.board.board_json(), queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._viewers.discard(queue)

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def next_event_id(self) -> int:
        self._event_id += 1
        return self._event_id

    def end_streams(self) -> None:
        """Tell every viewer's stream to end (the server is stopping)."""
        for queue in list(self._viewers):
            self._drop(queue)

    def _drop(self, queue: asyncio.Queue[Event | None]) -> None:
        self._viewers.discard(queue)
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                queue.get_nowait()
        queue.put_nowait(None)

    def _publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for queue in list(self._viewers):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._drop(queue)

    # -- operator orders ----------------------------------------------------------------

    async def order(self, name: str, action: str, duration: float | None) -> Event | None:
        """Apply an operator's order to an existing breaker: its new JSON, or None when
        Redis holds no breaker of that name (nothing is created then).

        Raises:
            ConfigError: an unknown action or an invalid duration.
            StoreUnavailableError, StoreError: Redis could not do it.
        """
        if action not in ORDERS:
            raise ConfigError("action", f"must be one of {', '.join(ORDERS)}, got {action!r}")
        try:
            breaker = self._breaker(name)
        except ConfigError:
            return None  # not a valid name, so not one Redis can hold
        if not (await breaker.snapshot()).exists:
            return None
        if action == "reset":
            await breaker.reset()
        elif action == "force-open":
            await breaker.force_open(duration)
        elif action == "force-close":
            await breaker.force_close(duration)
        else:
            await breaker.metrics_only(duration)
        await self._read([name])
        return self.board.breaker_json(name) if self.board.has(name) else None

    # -- reading ------------------------------------------------------------------------

    def _breaker(self, name: str) -> Breaker:
        # Building a breaker writes nothing to Redis; its snapshot() only reads.
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = Breaker(name, store=self.store)
        return breaker

    async def _snapshot(self, name: str, limit: asyncio.Semaphore) -> Snapshot | None:
        async with limit:
            try:
                return await self._breaker(name).snapshot()
            except (ConfigError, StoreError):
                # A key under the prefix that is no breaker (a bad name, another type):
                # nothing to show for it, and no reason to stop showing the rest.
                return None

    async def _read(self, names: Iterable[str]) -> None:
        limit = asyncio.Semaphore(_READ_CONCURRENCY)
        wanted = list(names)
        snapshots = await asyncio.gather(*(self._snapshot(name, limit) for name in wanted))
        for snapshot in snapshots:
            if snapshot is not None:
                self._publish(self.board.update(snapshot))

    async def refresh_all(self) -> None:
        """Read every breaker under the prefix (SCAN, then one snapshot each)."""
        names = await self.store.breaker_names()
        self._publish(self.board.present(names))
        for gone in set(self._breakers).difference(names):
            del self._breakers[gone]
        await self._read(names)
        if self._feed_live:
            self._publish(self.board.redis_back())

    def _want(self, names: Iterable[str]) -> None:
        self._wanted.update(names)
        if self._wanted_event is not None:
            self._wanted_event.set()

    def _lost(self, exc: BaseException) -> None:
        self._publish(self.board.redis_lost(_wall_ms(), _problem(exc)))

    async def _feed_loop(self) -> None:
        """Hold the one subscription; after it drops, subscribe again with backoff and
        re-read everything (what was missed shows up as moved generations)."""
        failures = 0
        while True:
            try:
                async with self.store.transitions() as events:
                    self._feed_live = True
                    failures = 0
                    await self.refresh_all()
                    async for transition in events:
                        heard, wanted = self.board.hear(transition)
                        self._publish(heard)
                        self._want(wanted)
                return  # the iteration ends only when the store is closed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever Redis did: show it, never stop watching
                self._feed_live = False
                self._lost(exc)
            failures += 1
            await asyncio.sleep(wait_after(FEED_BACKOFF, failures))

    async def _refresh_loop(self) -> None:
        """One loop for the server: every breaker every ``refresh_seconds``, and the
        breakers a heard transition named as soon as it is heard."""
        assert self._wanted_event is not None
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._refresh_seconds
        while True:
            left = next_full - loop.time()
            if left > 0 and not self._wanted:
                self._wanted_event.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wanted_event.wait(), left)
            if not self._feed_live:
                # The feed task is reconnecting; it reads everything once it is back.
                self._wanted.clear()
                next_full = loop.time() + self._refresh_seconds
                continue
            try:
                if loop.time() >= next_full:
                    next_full = loop.time() + self._refresh_seconds
                    self._wanted.clear()
                    await self.refresh_all()
                else:
                    names, self._wanted = self._wanted, set()
                    await self._read(names)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # shown on the page; the next round tries again
                self._lost(exc)
