"""A Redis Cluster, sync driver: each FCALL sent to the primary that owns its breaker.

redis-py's cluster client routes a command by its keys, and FCALL's keys are "movable":
it would ask the server (``COMMAND GETKEYS``) before every call. A breaker's keys share
one hash tag, so the slot is known here (``key_slot``) and the call goes straight to that
slot's primary in the client's slot table, on the client's own connection pool for that
node. What redis-py's cluster machinery does for the commands it sends, this does for
these: MOVED patches the slot table and sends again (once), ASK sends ASKING and the call
on one connection of the node asked, TRYAGAIN (a slot being migrated holds one of the two
keys but not the other) sends again after a short pause, twice at most, and a lost
connection refreshes the whole table before the next call (a failover promoted a
replica, a node went away).

Each primary gets the library the first time it answers that the function does not
exist (never loaded, FUNCTION FLUSH, a replica promoted without it, a new owner of a slot
after a resharding, a node an ASK points to): FUNCTION LOAD on that very node, then the
call again. Where FUNCTION LOAD is refused (an ACL), its error reaches the store's
:class:`~redbreaker._health.ScriptRoute`, which turns to EVALSHA for good.

The store's health keeps one record per primary (:mod:`redbreaker._reach`): a call is
told the name of its slot's primary from the slot table as it is (:meth:`node_name`, no
I/O), and the health hears which primaries a refreshed table names, to forget the dead.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException, TryAgainError

from ._health import library_errors, no_such_function
from ._scripts import library_source
from ._shard_feed import ShardedFeed, watch_shards
from ._shards import TRYAGAIN_PAUSES, SlotChannels, scripts_spublish

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

    from redis.cluster import ClusterNode

    from ._keys import BreakerKeys
    from ._state import Transition
    from ._view import FleetView

__all__ = ["ClusterRouter", "cluster_client", "node_pools", "router_for", "slot_of", "slot_owners"]


def slot_of(keys: BreakerKeys) -> int:
    """The slot of every key (and the sharded channel) of one breaker."""
    return key_slot(keys.state.encode())


def slot_owners(slots: Mapping[int, Sequence[Any]]) -> set[str]:
    """The names of the primaries a slot table (redis-py's ``slots_cache``) names."""
    return {nodes[0].name for nodes in slots.values() if nodes}


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


def node_pools(client: RedisCluster) -> list[redis.ConnectionPool]:
    """The connection pools of the node clients ``client`` made so far."""
    nodes = client.get_nodes()  # type: ignore[no-untyped-call]
    return [n.redis_connection.connection_pool for n in nodes if n.redis_connection]


class ClusterRouter:
    """Sends a breaker's FCALL (or FUNCTION LOAD) to the primary that owns its slot.

    Args:
        on_table: told the primaries' names after each refresh of the slot table.
    """

    def __init__(
        self, client: RedisCluster, prefix: str, on_table: Callable[[Collection[str]], None]
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._probe_channel = SlotChannels(prefix).of_slot(0)
        self._stale = False  # a connection was lost: refresh the slot table first
        self._sharded: bool | None = None
        self._on_table = on_table
        self.lock = threading.Lock()  # guards the slot table's refresh
        self.feed: ShardedFeed | None = None  # the store's, which hears the slot channels

    def refresh(self) -> None:
        """Ask the cluster for its slot table again if a connection was lost since."""
        if self._stale:
            with self.lock:
                if self._stale:
                    self.client.nodes_manager.initialize()
                    self._stale = False
                    self._on_table(slot_owners(self.client.nodes_manager.slots_cache))

    def sharded_feed(self, view: FleetView, closed: Callable[[], bool]) -> ShardedFeed:
        """The store's transition feed: each breaker's transitions heard in its own shard
        (sharded pub/sub, Redis >= 7), where the scripts publish them."""
        self.feed = ShardedFeed(self, self.prefix, view, closed)
        return self.feed

    def close_pools(self) -> None:
        """Close the node clients' pools: those RedisCluster.from_url builds do not close
        the pools they were handed, whose sockets would stay open until collected."""
        for pool in node_pools(self.client):
            pool.disconnect()

    def node_name(self, keys: BreakerKeys) -> str:
        """The name of the primary of this breaker's slot, as the slot table says now (no
        I/O): which record of the store's health its calls go by. ``""`` (the cluster as
        a whole) where the table does not say."""
        try:
            node = self.client.nodes_manager.get_node_from_slot(slot_of(keys))
        except (RedisClusterException, KeyError, IndexError):  # not covered, no table yet
            self._stale = True  # asked again, after which "" is forgotten (it owns nothing)
            return ""
        return str(node.name)

    def script_args(self, keys: BreakerKeys, args: Sequence[str]) -> Sequence[str]:
        """A script's arguments, with ARGV[2] naming the sharded channel of the breaker's
        slot where the scripts SPUBLISH (it has a brace, which a prefix never has)."""
        if not self.sharded():
            return args
        assert self.feed is not None
        return [args[0], self.feed.channel(keys.name), *args[2:]]

    def transitions(self, closed: Callable[[], bool]) -> Iterator[Transition] | None:
        """Every slot's sharded channel, each subscribed on its primary; None where the
        scripts PUBLISH on the prefix's channel instead (no SPUBLISH: Redis < 7, an ACL)."""
        with library_errors(f"asking {self.prefix!r}'s cluster for its version", self.prefix):
            sharded = self.sharded()
        return watch_shards(self, self.prefix, closed) if sharded else None

    def owner(self, slot: int) -> ClusterNode:
        """The primary that serves ``slot``, as the slot table says now."""
        self.refresh()
        node: ClusterNode = self.client.nodes_manager.get_node_from_slot(slot)
        return node

    def lost(self) -> None:
        """A connection to a node failed: the next call refreshes the slot table first."""
        self._stale = True

    def fcall(
        self, function: str, keys: BreakerKeys, names: tuple[str, ...], args: Sequence[str]
    ) -> Any:  # noqa: ANN401
        """FCALL ``function`` with the KEYS ``names`` of one breaker, on its slot's primary."""
        return self.send(slot_of(keys), "FCALL", function, len(names), *names, *args)

    def load(self, keys: BreakerKeys) -> None:
        """FUNCTION LOAD the library on the primary of this breaker's slot."""
        self.send(slot_of(keys), "FUNCTION", "LOAD", "REPLACE", library_source())

    def send(self, slot: int, *command: Any) -> Any:  # noqa: ANN401
        """Send ``command`` to the primary of ``slot``, following one MOVED or ASK, and
        again after a short pause while a migrating slot holds part of its keys."""
        for pause in (*TRYAGAIN_PAUSES, None):
            try:
                return self._send_once(slot, command)
            except TryAgainError:
                if pause is None:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _send_once(self, slot: int, command: Sequence[Any]) -> Any:  # noqa: ANN401
        node = self.owner(slot)
        try:
            try:
                return self._on(node, command, asking=False)
            except MovedError as moved:
                # A resharding or a failover the table has not seen: patch it, go there.
                self.client.nodes_manager.move_slot(moved)
                return self._on(self.owner(slot), command, asking=False)
            except AskError as ask:
                # The slot is being migrated and the keys are on the importing node.
                asked = self.client.nodes_manager.get_node(host=ask.host, port=ask.port)
                if asked is None:
                    self.lost()
                    raise
                return self._on(asked, command, asking=True)
        except (redis.ConnectionError, redis.TimeoutError):
            self.lost()
            raise

    def _on(self, node: ClusterNode, command: Sequence[Any], *, asking: bool) -> Any:  # noqa: ANN401
        """``command`` on ``node``; an FCALL the node cannot find the function of loads the
        library there first (never loaded, flushed, a promoted replica, a new owner)."""
        try:
            return self._execute(node, command, asking=asking)
        except redis.ResponseError as exc:
            if command[0] != "FCALL" or not no_such_function(exc):
                raise
        self._execute(node, ("FUNCTION", "LOAD", "REPLACE", library_source()), asking=False)
        return self._execute(node, command, asking=asking)

    def _execute(self, node: ClusterNode, command: Sequence[Any], *, asking: bool) -> Any:  # noqa: ANN401
        client = self._node_client(node)
        if not asking:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        # ASKING admits the one command after it, on the same connection.
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        return pipe.execute()[1]

    def _node_client(self, node: ClusterNode) -> redis.Redis:
        client: redis.Redis = self.client.get_redis_connection(node)
        return client

    def sharded(self) -> bool:
        """Whether this cluster's transitions go out on sharded channels: the scripts
        SPUBLISH, and this user may SPUBLISH on the prefix's slot channels (Redis >= 7, an
        ACL that allows it). Asked once, by an empty SPUBLISH, which every reader skips."""
        if self._sharded is None:
            if not scripts_spublish(library_source()):
                self._sharded = False
            else:
                channel = self._probe_channel
                try:
                    self.send(key_slot(channel.encode()), "SPUBLISH", channel, "")
                except (redis.ConnectionError, redis.TimeoutError):
                    raise  # ask again at the next call
                except redis.ResponseError:  # an unknown command, NOPERM: plain PUBLISH
                    self._sharded = False
                else:
                    self._sharded = True
        return self._sharded
