"""Redis Cluster, fully: cached mode's transitions on sharded pub/sub, each on the
channel of its breaker's slot, heard on the shard that owns it; Store.transitions() on
every slot's channel. Sync and asyncio stores alike.

Until lua/_common.lua SPUBLISHes a channel with a brace, the scripts PUBLISH and these
tests are skipped (the reason says what the Lua must do).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

import pytest

import redbreaker
import redbreaker.aio
from redbreaker._scripts import library_source
from redbreaker._shards import SlotChannels, scripts_spublish
from test_cluster_full import (
    _WAIT,
    DRIVERS,
    _boom,
    _migrate_slot,
    _one_name_per_node,
    _reset_stats,
    _restore_slot,
)
from test_topologies import NAMES, _cluster_url, _keyslot, cluster, cluster_nodes

if TYPE_CHECKING:
    from collections.abc import Callable

    from redbreaker._view import FleetView
    from redis_servers import RedisServer

__all__ = ["cluster", "cluster_nodes"]  # the fixtures, imported for pytest to find

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis_server,
    pytest.mark.skipif(
        not scripts_spublish(library_source()),
        reason="waiting on the Lua: publish() in lua/_common.lua must SPUBLISH a channel "
        "with a '{' (redis.call(string.find(CHANNEL, '{', 1, true) and 'SPUBLISH' or "
        "'PUBLISH', CHANNEL, ...))",
    ),
]


def _shard_subscribers(node: RedisServer, channel: str) -> int:
    with node.client() as r:
        reply = r.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


def _await(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _heard_open(view: FleetView, name: str) -> bool:
    """The view heard (pushed on its feed) that breaker ``name`` opened."""
    last = view.last_event(name)
    return last is not None and last[1] == "open"


def _check_feed(
    nodes: list[RedisServer], prefix: str, picked: dict[int, str], view: FleetView
) -> None:
    """The channels of ``picked`` are subscribed on their owner only; a trip of each,
    made by another store, is SPUBLISHed by its owner only and heard by ``view``."""
    for owner, name in picked.items():
        channel = SlotChannels(prefix).of_breaker(name)[1]
        counts = [_shard_subscribers(node, channel) for node in nodes]
        assert counts == [1 if i == owner else 0 for i in range(3)], (name, counts)
    assert not any(_heard_open(view, name) for name in picked.values())
    tripper = redbreaker.connect(_cluster_url(nodes), prefix=prefix)
    try:
        assert tripper._cluster is not None
        assert tripper._cluster.sharded()  # its one probe (an empty SPUBLISH), not counted
        _reset_stats(nodes)
        for name in picked.values():
            with pytest.raises(ValueError, match="boom"):
                redbreaker.Breaker(name, store=tripper, failure_threshold=1).call(_boom)
    finally:
        tripper.close()
    for owner, node in enumerate(nodes):
        stats = node.commandstats()
        assert stats.get("spublish") == 1, (owner, stats)  # its own breaker's trip only
        assert "publish" not in stats, (owner, stats)
    for name in picked.values():
        _await(lambda name=name: _heard_open(view, name), f"the trip of {name} was not heard")


@pytest.mark.parametrize("driver", DRIVERS)
def test_cached_transitions_arrive_by_sharded_pubsub_on_the_owning_shard(
    cluster_nodes: list[RedisServer], driver: str
) -> None:
    """A cached store subscribes each breaker's own channel on the shard that owns it, and
    hears the trips another store makes, SPUBLISHed by that shard alone."""
    picked = _one_name_per_node(cluster_nodes)
    prefix = f"feed-{driver}"
    url = _cluster_url(cluster_nodes)
    if driver == "sync":
        store = redbreaker.connect(url, prefix=prefix)
        try:
            for name in picked.values():
                redbreaker.Breaker(name, store=store, consistency="cached").call(lambda: 1)
            _await(lambda: store.feed_live, "the sharded feed did not go live")
            _check_feed(cluster_nodes, prefix, picked, store.view)
        finally:
            store.close()
        return

    async def run() -> None:
        async with redbreaker.aio.connect(url, prefix=prefix) as astore:

            async def one() -> int:
                return 1

            for name in picked.values():
                await redbreaker.aio.Breaker(name, store=astore, consistency="cached").call(one)
            deadline = time.monotonic() + _WAIT
            while not astore.feed_live:
                assert time.monotonic() < deadline, "the sharded feed did not go live"
                await asyncio.sleep(0.01)
            # The checks block; the feed's task reads meanwhile on a thread of its own loop.
            await asyncio.to_thread(_check_feed, cluster_nodes, prefix, picked, astore.view)

    asyncio.run(run())


def test_the_feed_follows_a_slot_to_its_new_shard(cluster_nodes: list[RedisServer]) -> None:
    """A cached store's feed, subscribed on node 0 for a breaker's slot: the slot moves to
    node 2 (node 0 ends the subscription), the feed subscribes again on node 2, and a trip
    made there is heard."""
    name, prefix = _one_name_per_node(cluster_nodes)[0], "follow"
    slot = _keyslot(cluster_nodes[0], name)
    channel = SlotChannels(prefix).of_breaker(name)[1]
    store = redbreaker.connect(_cluster_url(cluster_nodes), prefix=prefix)
    try:
        redbreaker.Breaker(name, store=store, consistency="cached").call(lambda: 1)
        _await(lambda: _shard_subscribers(cluster_nodes[0], channel) == 1, "no subscription")
        _migrate_slot(cluster_nodes, slot, 0, 2, finish=True)
        _await(lambda: _shard_subscribers(cluster_nodes[2], channel) == 1, "no resubscription")
        assert _shard_subscribers(cluster_nodes[0], channel) == 0
        _await(lambda: store.feed_live, "the feed did not come back")
        _trip_all(cluster_nodes, prefix, [name])
        _await(lambda: _heard_open(store.view, name), "the trip on node 2 was not heard")
    finally:
        store.close()
        _restore_slot(cluster_nodes, slot, owner=0)

def _trip_all(nodes: list[RedisServer], prefix: str, names: list[str]) -> None:
    tripper = redbreaker.connect(_cluster_url(nodes), prefix=prefix)
    try:
        for name in names:
            with pytest.raises(ValueError, match="boom"):
                redbreaker.Breaker(name, store=tripper, failure_threshold=1).call(_boom)
    finally:
        tripper.close()


def _expected(names: list[str]) -> list[tuple[str, str, str]]:
    return sorted((name, "closed", "open") for name in names)


def test_transitions_hear_every_slot_breakers_created_later_included(
    cluster_nodes: list[RedisServer],
) -> None:
    """Store.transitions() on a cluster subscribes every slot's channel on its primary:
    breakers that did not exist when it started are heard, from all three shards."""
    prefix, names = "watch-sync", list(NAMES)
    watcher = redbreaker.connect(_cluster_url(cluster_nodes), prefix=prefix)
    received: list[redbreaker.Transition] = []
    events = watcher.transitions()  # subscribed when this returns
    counts = []
    for node in cluster_nodes:
        with node.client() as r:
            counts.append(len(r.execute_command("PUBSUB", "SHARDCHANNELS", f"{prefix}:*")))
    assert sum(counts) == 16384, counts
    assert all(count > 4000 for count in counts), counts  # each primary its own slots'

    def read() -> None:
        for transition in events:
            received.append(transition)
            if len(received) == len(names):
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        _trip_all(cluster_nodes, prefix, names)
        thread.join(_WAIT)
    finally:
        watcher.close()
        thread.join(_WAIT)
    assert not thread.is_alive()
    assert sorted((t.name, t.previous.value, t.current.value) for t in received) == _expected(
        names
    )


def test_aio_transitions_hear_every_slot(cluster_nodes: list[RedisServer]) -> None:
    """The asyncio store's transitions() on a cluster: the same, every slot's channel."""
    prefix, names = "watch-aio", list(NAMES)

    async def run() -> list[tuple[str, str, str]]:
        received = []
        url = _cluster_url(cluster_nodes)
        async with (
            redbreaker.aio.connect(url, prefix=prefix) as store,
            store.transitions() as events,
        ):
            await asyncio.to_thread(_trip_all, cluster_nodes, prefix, names)
            async for transition in events:
                previous = transition.previous.value if transition.previous else ""
                received.append((transition.name, previous, transition.current.value))
                if len(received) == len(names):
                    break
        return sorted(received)

    assert asyncio.run(asyncio.wait_for(run(), _WAIT)) == _expected(names)


def _kill_shard_subscribers(node: RedisServer) -> int:
    """Drop every pub/sub connection of ``node`` (as a node restart or a network cut
    would): how many."""
    with node.client() as r:
        return int(r.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_feed_subscribes_again_after_losing_its_connection(
    cluster_nodes: list[RedisServer], driver: str
) -> None:
    """The owner drops the feed's connection: the feed asks for the slot table again,
    subscribes again on the owner, and hears the next trip."""
    name, prefix = _one_name_per_node(cluster_nodes)[1], f"lost-{driver}"
    channel = SlotChannels(prefix).of_breaker(name)[1]
    owner = cluster_nodes[1]

    def cut_and_trip(view: FleetView, live: Callable[[], bool]) -> None:
        _await(lambda: _shard_subscribers(owner, channel) == 1, "no subscription")
        assert _kill_shard_subscribers(owner) >= 1
        _await(lambda: _shard_subscribers(owner, channel) == 1, "no new subscription")
        _await(live, "the feed did not come back")
        _trip_all(cluster_nodes, prefix, [name])
        _await(lambda: _heard_open(view, name), "the trip after the cut was not heard")

    url = _cluster_url(cluster_nodes)
    if driver == "sync":
        store = redbreaker.connect(url, prefix=prefix)
        try:
            redbreaker.Breaker(name, store=store, consistency="cached").call(lambda: 1)
            cut_and_trip(store.view, lambda: store.feed_live)
        finally:
            store.close()
        return

    async def run() -> None:
        async def one() -> int:
            return 1

        async with redbreaker.aio.connect(url, prefix=prefix) as astore:
            await redbreaker.aio.Breaker(name, store=astore, consistency="cached").call(one)
            await asyncio.to_thread(cut_and_trip, astore.view, lambda: astore.feed_live)

    asyncio.run(run())
