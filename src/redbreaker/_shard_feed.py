"""The transition feed on a Redis Cluster, sync driver: sharded pub/sub, one connection
per shard.

Transitions are SPUBLISHed on the channel of their breaker's slot
(:mod:`redbreaker._shards`), so only the primary that ran the script delivers them.

- :class:`ShardedFeed`, for cached breakers: SSUBSCRIBEs the channel of every breaker the
  store used, when the breaker is first used, on one connection to each primary that owns
  one of them; every confirmation starts a new epoch of the view (what was published
  before it may have been missed). A lost connection, a MOVED answer, or a subscription
  the server ended (its slot moved to another shard) drops every subscription: the slot
  table is refreshed and they are made again after a pause.
- :func:`watch_shards`, behind ``Store.transitions()``: the channels of all 16384 slots.

Where the cluster cannot (Redis < 7) or the scripts do not SPUBLISH, the store uses the
plain feed and watch of the prefix's channel (:mod:`redbreaker._feed`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import _feed_core as core
from ._exceptions import StoreError, StoreUnavailableError
from ._feed import TransitionFeed
from ._health import FEED_BACKOFF, library_errors, wait_after
from ._shards import ShardBook, SlotChannels

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from contextlib import AbstractContextManager

    from redis.client import PubSub
    from redis.cluster import ClusterNode

    from ._cluster import ClusterRouter
    from ._state import Transition
    from ._view import FleetView

__all__ = ["ShardSubscriber", "ShardedFeed", "watch_shards"]


BATCH = 1024
"""SSUBSCRIBEs sent before their confirmations are read (a watcher of every breaker
subscribes the channels of all 16384 slots)."""


class ShardSubscriber:
    """Sharded subscriptions on one connection per primary: the channels a
    :class:`~redbreaker._shards.ShardBook` wants, each on its slot's primary.

    ``hear`` takes every message read (transitions and the server's own notices);
    ``book_lock`` guards the book against threads adding channels while it is planned.
    """

    def __init__(
        self,
        router: ClusterRouter,
        book: ShardBook,
        hear: Callable[[Mapping[str, Any] | None], bool],
        book_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.router = router
        self.book = book
        self.nodes: dict[str, PubSub] = {}
        self._hear = hear
        self._book_lock = book_lock if book_lock is not None else contextlib.nullcontext()

    def subscribe_pending(self) -> bool:
        """SSUBSCRIBE every wanted channel not confirmed yet on its slot's primary, and
        wait for the confirmations: True when there were any."""
        self.router.refresh()
        owners: dict[str, ClusterNode] = {}

        def owner(slot: int) -> str:
            node = self.router.owner(slot)
            owners[node.name] = node
            return node.name

        with self._book_lock:
            plan = self.book.pending(owner)
        for name, channels in plan.items():
            pubsub = self.nodes.get(name)
            if pubsub is None:
                pubsub = self.nodes[name] = _node_pubsub(self.router, owners[name])
            for first in range(0, len(channels), BATCH):
                batch = channels[first : first + BATCH]
                for channel in batch:  # one each: an SSUBSCRIBE's channels share a slot
                    pubsub.ssubscribe(channel)
                self._await_confirmations(name, pubsub, batch)
        return bool(plan)

    def _await_confirmations(self, name: str, pubsub: PubSub, channels: list[str]) -> None:
        waiting = set(channels)
        deadline = time.monotonic() + core.CONFIRM_WAIT
        while waiting and (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "ssubscribe":
                channel = core.text(message["channel"])
                waiting.discard(channel)
                self.book.confirmed(name, channel)
            else:
                self._hear(message)
        if waiting:
            raise redis.TimeoutError(core.unconfirmed(f"{len(waiting)} sharded channels"))

    def read(self) -> bool:
        """Read every message that arrived on every shard: True when there was one."""
        heard = False
        for pubsub in self.nodes.values():
            while self._hear(pubsub.get_message(timeout=0)):
                heard = True
        return heard

    def close(self, *, failed: bool = True) -> None:
        """Close every connection; their channels are pending again in the book. After a
        failure the slot table is asked for again before the next call or subscription (a
        failover or a resharding may be why)."""
        nodes, self.nodes = self.nodes, {}
        with self._book_lock:
            for name in nodes:
                self.book.node_lost(name)
        for pubsub in nodes.values():
            _close_quietly(pubsub)
        if failed:
            self.router.lost()


class ShardedFeed(TransitionFeed):
    """Hears the transitions of the breakers one store uses, each on its slot's channel."""

    def __init__(
        self, router: ClusterRouter, prefix: str, view: FleetView, closed: Callable[[], bool]
    ) -> None:
        self._router = router
        self._channels = SlotChannels(prefix)
        self._sharded: bool | None = None  # decided by the feed's thread, once
        super().__init__(router.client, prefix, view, closed)

    def _start_afresh(self) -> None:
        # The channels asked for stay wanted; the subscriptions were the old thread's,
        # task's or process's, gone with it.
        book: ShardBook | None = getattr(self, "_book", None)
        if book is None:
            book = ShardBook()
        book.unconfirmed()
        self._book = book
        self._book_lock = threading.Lock()
        self._wake = threading.Event()
        self._shards = ShardSubscriber(self._router, self._book, self._hear_shard, self._book_lock)
        super()._start_afresh()

    @property
    def live(self) -> bool:
        """True while every channel asked for is subscribed (and confirmed)."""
        return self._live and (not self._sharded or self._book.settled)

    def channel(self, name: str) -> str:
        """The sharded channel breaker ``name``'s transitions go out on (its slot's), heard
        from now on: subscribed by the feed's thread once the feed runs (no I/O here)."""
        slot, channel = self._channels.of_breaker(name)
        if not self._book.wanted(channel):
            with self._book_lock:
                added = self._book.want(channel, slot)
            if added:
                self._wake.set()
        return channel

    def _read(self, *, blocking: bool) -> None:
        if not self._sharded:
            super()._read(blocking=blocking)
            return
        if not self._reader.acquire(blocking):
            return
        try:
            if not self._live:
                return
            self._read_at = time.monotonic()
            self._shards.read()
        except Exception:
            self._lost()
        finally:
            self._reader.release()

    def _hear_shard(self, message: Mapping[str, Any] | None) -> bool:
        """Take in what one read returned; False when it returned nothing."""
        if message is None:
            return False
        kind = message.get("type")
        if kind == "smessage":
            self._view.heard_event(message["data"])
        elif kind == "sunsubscribe":
            # Never sent by us: the slot moved to another shard. Resubscribing on the
            # slot's new owner needs a fresh table, and everything starts again.
            self._lost()
        return True

    def _run(self) -> None:
        while self._sharded is None and not self._closed():
            try:
                self._sharded = self._router.sharded()
            except Exception:  # the cluster did not answer: ask again after a pause
                self._failures += 1
                time.sleep(wait_after(FEED_BACKOFF, self._failures))
        if not self._sharded:
            super()._run()
            return
        while not self._closed():
            try:
                with self._reader:
                    self._live = True
                while not self._closed() and self._live:
                    if not self._book.settled:  # else no lock: callers read undisturbed
                        with self._reader:  # callers skip their reads meanwhile, never wait
                            if self._shards.subscribe_pending():
                                self._failures = 0
                                self._view.new_epoch()  # what came before may be missed
                    self._wake.wait(core.IDLE)
                    self._wake.clear()
                    if self._unread(time.monotonic()):
                        self._read(blocking=True)
            except Exception:  # any failure: every subscription again after a pause
                pass
            finally:
                with self._reader:
                    failures = self._ended()
                    self._shards.close()
            if self._closed():
                return
            time.sleep(wait_after(FEED_BACKOFF, failures))


def watch_shards(
    router: ClusterRouter, prefix: str, closed: Callable[[], bool]
) -> Iterator[Transition]:
    """Every transition under ``prefix`` on a cluster whose scripts SPUBLISH: the channels
    of all 16384 slots, each on its primary (``Store.transitions()``). Subscribed when
    this returns; a lost connection or a slot that moved ends the watch with
    StoreUnavailableError, as a lost subscription does on one server."""
    book = ShardBook()
    for channel, slot in SlotChannels(prefix).all().items():
        book.want(channel, slot)
    lost: list[str] = []

    def hear(message: Mapping[str, Any] | None) -> bool:
        if message is None:
            return False
        if message.get("type") == "sunsubscribe":
            lost.append(core.text(message["channel"]))
        elif message.get("type") == "smessage":
            heard.append(message)
        return True

    heard: list[Mapping[str, Any]] = []
    shards = ShardSubscriber(router, book, hear)
    what = f"the sharded channels of {prefix}"
    try:
        with library_errors(f"subscribing to {what}", prefix):
            shards.subscribe_pending()
    except BaseException as exc:
        shards.close()
        if core.ends_quietly(exc, closed()):
            return iter(())
        raise

    def events() -> Iterator[Transition]:
        failed = True
        try:
            with library_errors(f"watching {what}", prefix):
                while not closed():
                    if not shards.read():
                        time.sleep(core.SHARD_POLL)
                    if lost:
                        raise redis.ConnectionError(f"the server ended {lost[0]} (resharding)")
                    while heard:
                        event = core.transition(heard.pop(0))
                        if event is not None:
                            yield event
            failed = False
        except (StoreUnavailableError, StoreError) as exc:
            if not core.ends_quietly(exc, closed()):
                raise
        finally:
            shards.close(failed=failed)

    return events()


def _node_pubsub(router: ClusterRouter, node: ClusterNode) -> PubSub:
    """A pub/sub on a connection of its own to ``node``: undecoded, never retrying."""
    source = router.client.get_redis_connection(node).connection_pool
    settings = core.subscriber_settings(source, Retry(NoBackoff(), 0))
    client = redis.Redis(connection_pool=redis.ConnectionPool(**settings))
    pubsub: PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    return pubsub


def _close_quietly(pubsub: PubSub) -> None:
    # Closing what failed may fail again (the node is gone): nothing left to learn.
    with contextlib.suppress(Exception):
        pubsub.close()
    with contextlib.suppress(Exception):
        pubsub.connection_pool.disconnect()
