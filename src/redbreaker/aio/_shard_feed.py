"""The transition feed on a Redis Cluster, asyncio driver: sharded pub/sub, one
connection per shard.

The twin of :mod:`redbreaker._shard_feed`: :class:`ShardedFeed` hears the channel of
every breaker the store used (its slot's), SSUBSCRIBEd on the slot's primary when the
breaker is first used, with a new epoch of the view at every confirmation, and every
subscription made again (after a fresh slot table and a pause) when a connection is lost,
a MOVED comes back or the server ends a subscription. :class:`ShardedStream` is
``Store.transitions()`` on such a cluster: the channels of all 16384 slots. Where the
cluster cannot (Redis < 7) or the scripts do not SPUBLISH, the store uses the plain feed
and stream of the prefix's channel (:mod:`redbreaker.aio._feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import _feed_core as core
from .._exceptions import StoreError, StoreUnavailableError
from .._health import FEED_BACKOFF, library_errors, wait_after
from .._shards import ShardBook, SlotChannels
from ._feed import TransitionFeed, TransitionStream

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from redis.asyncio.client import PubSub
    from redis.asyncio.cluster import ClusterNode

    from .._state import Transition
    from .._view import FleetView
    from ._cluster import ClusterRouter

__all__ = ["ShardSubscriber", "ShardedFeed", "ShardedStream"]

BATCH = 1024
"""SSUBSCRIBEs sent before their confirmations are read (a watcher of every breaker
subscribes the channels of all 16384 slots)."""


class ShardSubscriber:
    """Sharded subscriptions on one connection per primary: the channels a
    :class:`~redbreaker._shards.ShardBook` wants, each on its slot's primary. ``hear``
    takes every message read (transitions and the server's own notices)."""

    def __init__(
        self,
        router: ClusterRouter,
        book: ShardBook,
        hear: Callable[[Mapping[str, Any] | None], bool],
    ) -> None:
        self.router = router
        self.book = book
        self.nodes: dict[str, PubSub] = {}
        self._hear = hear

    async def subscribe_pending(self) -> bool:
        """SSUBSCRIBE every wanted channel not confirmed yet on its slot's primary, and
        wait for the confirmations: True when there were any."""
        await self.router.refresh()
        manager = self.router.client.nodes_manager
        owners: dict[str, ClusterNode] = {}

        def owner(slot: int) -> str:
            node: ClusterNode = manager.get_node_from_slot(slot)
            owners[node.name] = node
            return node.name

        plan = self.book.pending(owner)
        for name, channels in plan.items():
            pubsub = self.nodes.get(name)
            if pubsub is None:
                pubsub = self.nodes[name] = _node_pubsub(owners[name])
            for first in range(0, len(channels), BATCH):
                batch = channels[first : first + BATCH]
                for channel in batch:  # one each: an SSUBSCRIBE's channels share a slot
                    await pubsub.ssubscribe(channel)
                await self._await_confirmations(name, pubsub, batch)
        return bool(plan)

    async def _await_confirmations(self, name: str, pubsub: PubSub, channels: list[str]) -> None:
        waiting = set(channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + core.CONFIRM_WAIT
        while waiting and (left := deadline - loop.time()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "ssubscribe":
                channel = core.text(message["channel"])
                waiting.discard(channel)
                self.book.confirmed(name, channel)
            else:
                self._hear(message)
        if waiting:
            raise redis.TimeoutError(core.unconfirmed(f"{len(waiting)} sharded channels"))

    async def read(self) -> bool:
        """Read every message that arrived on every shard: True when there was one."""
        heard = False
        for pubsub in list(self.nodes.values()):
            while self._hear(await pubsub.get_message(timeout=0)):
                heard = True
        return heard

    async def aclose(self, *, failed: bool = True) -> None:
        """Close every connection; their channels are pending again in the book. After a
        failure the slot table is asked for again before the next call or subscription."""
        nodes, self.nodes = self.nodes, {}
        for name, pubsub in nodes.items():
            self.book.node_lost(name)
            await _close_quietly(pubsub)
        if failed:
            self.router.lost()


class ShardedFeed(TransitionFeed):
    """Hears the transitions of the breakers one store uses, each on its slot's channel."""

    def __init__(
        self, router: ClusterRouter, prefix: str, view: FleetView, closed: Callable[[], bool]
    ) -> None:
        self._router = router
        self._channels = SlotChannels(prefix)
        self._sharded: bool | None = None  # decided by the feed's task, once
        super().__init__(router.client, prefix, view, closed)

    def _start_afresh(self) -> None:
        # The channels asked for stay wanted; the subscriptions were the old thread's,
        # task's or process's, gone with it.
        book: ShardBook | None = getattr(self, "_book", None)
        if book is None:
            book = ShardBook()
        book.unconfirmed()
        self._book = book
        self._wake: asyncio.Event | None = None  # made on the task's loop
        self._shards = ShardSubscriber(self._router, self._book, self._hear_shard)
        super()._start_afresh()

    @property
    def live(self) -> bool:
        """True while every channel asked for is subscribed (and confirmed)."""
        return self._live and (not self._sharded or self._book.settled)

    def channel(self, name: str) -> str:
        """The sharded channel breaker ``name``'s transitions go out on (its slot's), heard
        from now on: subscribed by the feed's task once the feed runs (no I/O here)."""
        slot, channel = self._channels.of_breaker(name)
        if self._book.want(channel, slot) and self._wake is not None:
            self._wake.set()
        return channel

    async def read(self) -> None:
        """Read every message that arrived on every shard, without waiting for more."""
        if not self._sharded:
            await super().read()
            return
        if self._reading or not self._live:
            return
        self._reading = True
        self._read_at = time.monotonic()
        try:
            await self._shards.read()
        except Exception:
            self._lost()
        finally:
            self._reading = False

    def _hear_shard(self, message: Mapping[str, Any] | None) -> bool:
        """Take in what one read returned; False when it returned nothing."""
        if message is None:
            return False
        kind = message.get("type")
        if kind == "smessage":
            self._view.heard_event(message["data"])
        elif kind == "sunsubscribe":
            self._lost()  # never sent by us: the slot moved to another shard
        return True

    async def _run(self) -> None:
        while self._sharded is None and not self._closed():
            try:
                self._sharded = await self._router.sharded()
            except Exception:  # the cluster did not answer: ask again after a pause
                self._failures += 1
                await asyncio.sleep(wait_after(FEED_BACKOFF, self._failures))
        if not self._sharded:
            await super()._run()
            return
        wake = self._wake = asyncio.Event()
        while not self._closed():
            try:
                self._live = True
                while self._live and not self._closed():
                    await self._subscribe_pending()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), core.IDLE)
                    wake.clear()
                    if self._unread(time.monotonic()):
                        await self.read()
            except Exception:  # any failure: every subscription again after a pause
                pass
            finally:
                failures = self._ended()
                await self._shards.aclose()
            if self._closed():
                return
            await asyncio.sleep(wait_after(FEED_BACKOFF, failures))

    async def _subscribe_pending(self) -> None:
        if self._book.settled:
            return  # nothing to subscribe: callers read undisturbed
        while self._reading:  # a caller's read (never waiting) is under way
            await asyncio.sleep(0)
        self._reading = True  # callers skip their reads meanwhile
        try:
            subscribed = await self._shards.subscribe_pending()
        finally:
            self._reading = False
        if subscribed:
            self._failures = 0
            self._view.new_epoch()  # what came before may have been missed


class ShardedStream:
    """``Store.transitions()`` on a cluster: where the scripts SPUBLISH (Redis >= 7), every
    transition under a prefix from the channels of all 16384 slots, each subscribed on its
    primary; else a :class:`~redbreaker.aio._feed.TransitionStream` of the prefix's
    channel, which this hands everything to. Used like one (``async with``, then ``async
    for``); a lost connection or a slot that moved ends it with StoreUnavailableError."""

    def __init__(self, router: ClusterRouter, prefix: str, closed: Callable[[], bool]) -> None:
        self._router = router
        self._plain: TransitionStream | None = None
        self._prefix = prefix
        self._closed = closed
        self._what = f"the sharded channels of {prefix}"
        book = ShardBook()
        for channel, slot in SlotChannels(prefix).all().items():
            book.want(channel, slot)
        self._shards = ShardSubscriber(router, book, self._hear)
        self._heard: list[Mapping[str, Any]] = []
        self._lost: list[str] = []
        self._started = False
        self._ended = False

    def _hear(self, message: Mapping[str, Any] | None) -> bool:
        if message is None:
            return False
        if message.get("type") == "sunsubscribe":
            self._lost.append(core.text(message["channel"]))
        elif message.get("type") == "smessage":
            self._heard.append(message)
        return True

    async def start(self) -> ShardedStream:
        """Subscribe, and return once every shard confirmed it (once)."""
        if self._started:
            return self
        self._started = True
        try:
            with library_errors(f"subscribing to {self._what}", self._prefix):
                if not await self._router.sharded():
                    plain = TransitionStream(self._router.client, self._prefix, self._closed)
                    self._plain = await plain.start()
                    return self
                await self._shards.subscribe_pending()
        except BaseException as exc:
            await self.aclose()
            if core.ends_quietly(exc, self._closed()):
                return self
            raise
        return self

    async def __aenter__(self) -> ShardedStream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> ShardedStream:
        return self

    async def __anext__(self) -> Transition:
        await self.start()
        if self._plain is not None:
            return await self._plain.__anext__()
        while not self._ended and not self._closed():
            while self._heard:
                event = core.transition(self._heard.pop(0))
                if event is not None:
                    return event
            try:
                with library_errors(f"watching {self._what}", self._prefix):
                    if self._lost:
                        raise redis.ConnectionError(f"the server ended {self._lost[0]}")
                    if not await self._shards.read():
                        await asyncio.sleep(core.SHARD_POLL)
            except (StoreUnavailableError, StoreError) as exc:
                await self.aclose()
                if core.ends_quietly(exc, self._closed()):
                    break
                raise
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Unsubscribe and close this stream's connections (idempotent)."""
        self._ended = True
        if self._plain is not None:
            await self._plain.aclose()
        await self._shards.aclose(failed=False)


def _node_pubsub(node: ClusterNode) -> PubSub:
    """A pub/sub on a connection of its own to ``node``: undecoded, never retrying."""
    settings = core.subscriber_settings(node, Retry(NoBackoff(), 0))
    client = redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(**settings))
    return client.pubsub()


async def _close_quietly(pubsub: PubSub) -> None:
    # Closing what failed may fail again (the node is gone): nothing left to learn.
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    with contextlib.suppress(Exception):
        await pubsub.connection_pool.disconnect()
