"""A Redis Cluster, asyncio driver: each FCALL sent to the primary that owns its breaker.

The twin of :mod:`redbreaker._cluster`: the slot from the breaker's hash tag, the call on
that primary's connections (never redis-py's routing, which would ask ``COMMAND
GETKEYS`` first), one MOVED or ASK followed, TRYAGAIN sent again after a short pause
(twice at most), the slot table refreshed after a lost connection, the library loaded on
a node (the owner, or the one an ASK points to) when it first lacks it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, TryAgainError

from .._cluster import slot_of
from .._health import no_such_function
from .._scripts import library_source
from .._shards import TRYAGAIN_PAUSES, SlotChannels, scripts_spublish

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from .._keys import BreakerKeys

__all__ = ["ClusterRouter"]


class ClusterRouter:
    """Sends a breaker's FCALL (or FUNCTION LOAD) to the primary that owns its slot."""

    def __init__(self, client: RedisCluster, prefix: str) -> None:
        self.client = client
        self._probe_channel = SlotChannels(prefix).of_slot(0)
        # Read now, so that no call reads a file on the event loop later.
        self._library = library_source()
        self._stale = False  # a connection was lost: refresh the slot table first
        self._sharded: bool | None = None

    async def refresh(self) -> None:
        """Learn the slot table: at first use (the client's own start, under its lock),
        and again after a connection was lost (callers meanwhile use the old table)."""
        if getattr(self.client, "_initialize", False):
            await self.client.initialize()
        if self._stale:
            self._stale = False
            try:
                await self.client.nodes_manager.initialize()
            except BaseException:
                self._stale = True
                raise

    async def owner(self, slot: int) -> ClusterNode:
        """The primary that serves ``slot``, as the slot table says now."""
        await self.refresh()
        node: ClusterNode = self.client.nodes_manager.get_node_from_slot(slot)
        return node

    def lost(self) -> None:
        """A connection to a node failed: the next call refreshes the slot table first."""
        self._stale = True

    async def fcall(self, function: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        """FCALL ``function`` for one breaker, on its slot's primary."""
        return await self.send(
            slot_of(keys), "FCALL", function, 2, keys.state, keys.probes, *args
        )

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
