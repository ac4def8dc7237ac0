"""A Redis Cluster, asyncio driver: each FCALL sent to the primary that owns its breaker.

The twin of :mod:`redbreaker._cluster`: the slot from the breaker's hash tag, the call on
that primary's connections (never redis-py's routing, which would ask ``COMMAND
GETKEYS`` first), one MOVED or ASK followed, TRYAGAIN sent again after a short pause
(twice at most), the slot table refreshed after a lost connection, the library loaded on
a node (the owner, or the one an ASK points to) when it first lacks it; the store's
health told each call's primary (no I/O) and the primaries of each slot table learnt.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException, TryAgainError

from .._cluster import slot_of, slot_owners
from .._health import no_such_function
from .._scripts import library_source
from .._shards import TRYAGAIN_PAUSES, SlotChannels, scripts_spublish
from ._shard_feed import ShardedFeed, ShardedStream

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from redis.asyncio.cluster import ClusterNode

    from .._keys import BreakerKeys
    from .._view import FleetView

__all__ = ["ClusterRouter", "cluster_client", "router_for"]


def cluster_client(url: str, store_timeout: float | None) -> RedisCluster:
    """A cluster client for a ``redis+cluster://`` URL (as ``redis://``), each node's
    connect, send and reply bounded by ``store_timeout``."""
    return RedisCluster.from_url(
        url, socket_timeout=store_timeout, socket_connect_timeout=store_timeout
    )


def router_for(
    client: object, prefix: str, on_table: Callable[[Collection[str]], None]
) -> ClusterRouter | None:
    """The router of a cluster client; None for any other client."""
    return ClusterRouter(client, prefix, on_table) if isinstance(client, RedisCluster) else None


class ClusterRouter:
    """Sends a breaker's FCALL (or FUNCTION LOAD) to the primary that owns its slot.

    Args:
        on_table: told the primaries' names each time the slot table is learnt.
    """

    def __init__(
        self, client: RedisCluster, prefix: str, on_table: Callable[[Collection[str]], None]
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._probe_channel = SlotChannels(prefix).of_slot(0)
        # Read now, so that no call reads a file on the event loop later.
        self._library = library_source()
        self._stale = False  # a connection was lost: refresh the slot table first
        self._sharded: bool | None = None
        self._on_table = on_table
        self.feed: ShardedFeed | None = None  # the store's, which hears the slot channels

    async def refresh(self) -> None:
        """Learn the slot table: at first use (the client's own start, under its lock),
        and again after a connection was lost (callers meanwhile use the old table)."""
        if getattr(self.client, "_initialize", False):
            await self.client.initialize()
            self._on_table(slot_owners(self.client.nodes_manager.slots_cache))
        if self._stale:
            self._stale = False
            try:
                await self.client.nodes_manager.initialize()
            except BaseException:
                self._stale = True
                raise
            self._on_table(slot_owners(self.client.nodes_manager.slots_cache))

    def sharded_feed(self, view: FleetView, closed: Callable[[], bool]) -> ShardedFeed:
        """The store's transition feed: each breaker's transitions heard in its own shard
        (sharded pub/sub, Redis >= 7), where the scripts publish them."""
        self.feed = ShardedFeed(self, self.prefix, view, closed)
        return self.feed

    def transitions(self, closed: Callable[[], bool]) -> ShardedStream:
        """Every slot's sharded channel, each on its primary, where the scripts SPUBLISH;
        else the prefix's channel. Which, is asked when the stream starts."""
        return ShardedStream(self, self.prefix, closed)

    def node_name(self, keys: BreakerKeys) -> str:
        """The name of the primary of this breaker's slot, as the slot table says now (no
        I/O): which record of the store's health its calls go by. ``""`` (the cluster as
        a whole) where the table does not say (not learnt yet, the slot not covered)."""
        try:
            node = self.client.nodes_manager.get_node_from_slot(slot_of(keys))
        except (RedisClusterException, KeyError, IndexError):
            if not getattr(self.client, "_initialize", False):  # else learnt at first use
                self._stale = True  # asked again: "" is forgotten then (it owns nothing)
            return ""
        return str(node.name)

    async def script_args(self, keys: BreakerKeys, args: Sequence[str]) -> Sequence[str]:
        """A script's arguments, with ARGV[2] naming the sharded channel of the breaker's
        slot where the scripts SPUBLISH (it has a brace, which a prefix never has)."""
        if not (self.known_sharded or await self.sharded()):
            return args
        assert self.feed is not None
        return [args[0], self.feed.channel(keys.name), *args[2:]]

    async def owner(self, slot: int) -> ClusterNode:
        """The primary that serves ``slot``, as the slot table says now."""
        await self.refresh()
        node: ClusterNode = self.client.nodes_manager.get_node_from_slot(slot)
        return node

    def lost(self) -> None:
        """A connection to a node failed: the next call refreshes the slot table first."""
        self._stale = True

    async def fcall(
        self, function: str, keys: BreakerKeys, names: tuple[str, ...], args: Sequence[str]
    ) -> Any:  # noqa: ANN401
        """FCALL ``function`` with the KEYS ``names`` of one breaker, on its slot's primary."""
        return await self.send(slot_of(keys), "FCALL", function, len(names), *names, *args)

    async def load(self, keys: BreakerKeys) -> None:
        """FUNCTION LOAD the library on the primary of this breaker's slot."""
        await self.send(slot_of(keys), "FUNCTION", "LOAD", "REPLACE", self._library)

    async def send(self, slot: int, *command: Any) -> Any:  # noqa: ANN401
        """Send ``command`` to the primary of ``slot``, following one MOVED or ASK, and
        again after a short pause while a migrating slot holds part of its keys."""
        for pause in (*TRYAGAIN_PAUSES, None):
            try:
                return await self._send_once(slot, command)
            except TryAgainError:
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _send_once(self, slot: int, command: Sequence[Any]) -> Any:  # noqa: ANN401
        node = await self.owner(slot)
        try:
            try:
                return await self._on(node, command, asking=False)
            except MovedError as moved:
                # A resharding or a failover the table has not seen: patch it, go there.
                await self.client.nodes_manager.move_slot(moved)
                return await self._on(await self.owner(slot), command, asking=False)
            except AskError as ask:
                # The slot is being migrated and the keys are on the importing node.
                asked = self.client.nodes_manager.get_node(host=ask.host, port=ask.port)
                if asked is None:
                    self.lost()
                    raise
                return await self._on(asked, command, asking=True)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self.lost()
            raise

    async def _on(self, node: ClusterNode, command: Sequence[Any], *, asking: bool) -> Any:  # noqa: ANN401
        """``command`` on ``node``; an FCALL the node cannot find the function of loads the
        library there first (never loaded, flushed, a promoted replica, a new owner)."""
        try:
            return await _execute(node, command, asking=asking)
        except redis.ResponseError as exc:
            if command[0] != "FCALL" or not no_such_function(exc):
                raise
        await _execute(node, ("FUNCTION", "LOAD", "REPLACE", self._library), asking=False)
        return await _execute(node, command, asking=asking)

    @property
    def known_sharded(self) -> bool:
        """True once :meth:`sharded` found it is (no await on the calls' path then)."""
        return self._sharded is True

    async def sharded(self) -> bool:
        """Whether this cluster's transitions go out on sharded channels: the scripts
        SPUBLISH, and this user may SPUBLISH on the prefix's slot channels (Redis >= 7, an
        ACL that allows it). Asked once, by an empty SPUBLISH, which every reader skips."""
        if self._sharded is None:
            if not scripts_spublish(self._library):
                self._sharded = False
            else:
                channel = self._probe_channel
                try:
                    await self.send(key_slot(channel.encode()), "SPUBLISH", channel, "")
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    raise  # ask again at the next call
                except redis.ResponseError:  # an unknown command, NOPERM: plain PUBLISH
                    self._sharded = False
                else:
                    self._sharded = True
        return self._sharded


async def _execute(node: ClusterNode, command: Sequence[Any], *, asking: bool) -> Any:  # noqa: ANN401
    if not asking:
        return await node.execute_command(*command)
    # ASKING admits the one command after it, on the same connection.
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(
            connection.pack_commands([("ASKING",), tuple(command)])
        )
        await connection.read_response()
        return await connection.read_response()
    except BaseException:
        await connection.disconnect()  # a reply may be left unread on it
        raise
    finally:
        node.release(connection)
