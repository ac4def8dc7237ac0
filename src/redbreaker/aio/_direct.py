"""The asyncio store's direct path: script calls sent on connections of a plain
``redis.asyncio`` client's pool, a level below ``execute_command``.

``execute_command`` checks a connection out of the pool and back in (an asyncio lock each
way), wraps the call in retry and instrumentation, and bounds the send with
``asyncio.wait_for`` (a task per send on Python 3.11). A script call needs none of it: it
is one small write and one read, and the read's own deadline (the client's
``socket_timeout``) bounds both. That is a quarter of the client's CPU per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeGuard

import redis
import redis.asyncio

from .._wire import ScriptPacker

__all__ = ["DirectPath", "is_plain"]

_EXECUTE = redis.asyncio.Redis.execute_command
_SEND = redis.asyncio.Connection.send_packed_command


def is_plain(client: object) -> TypeGuard[redis.asyncio.Redis]:
    """A standalone client nobody wrapped or overrode ``execute_command`` of (for tracing,
    say): one the direct path may bypass."""
    if not isinstance(client, redis.asyncio.Redis) or client.single_connection_client:
        return False
    execute = type(client).execute_command
    return execute is _EXECUTE and not hasattr(execute, "__wrapped__")


class DirectPath:
    """Connections kept out of one pool between calls, each used by one call at a time:
    as many as there were calls in flight at once, closed with the client."""

    __slots__ = ("_idle", "_keep", "_loop", "_pool", "packer")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._pool: Any = client.connection_pool
        # Script calls packed in the client's encoding, each breaker's head once.
        self.packer = ScriptPacker(self._pool.connection_kwargs)
        self._idle: list[Any] = []
        # At most half the pool is kept here, so that the client's other users (the
        # transition feed, the application's own commands) always find connections.
        self._keep = max(1, int(getattr(self._pool, "max_connections", 2) or 2) // 2)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute(self, packed: bytes) -> Any:  # noqa: ANN401 (a Redis reply)
        """Send one packed command and read its reply.

        Raises:
            redis.RedisError: as redis-py raises it (an error reply, a timeout, a lost
                connection).
        """
        if asyncio.get_running_loop() is not self._loop:
            self._moved_to_running_loop()
        idle = self._idle
        connection = idle.pop() if idle else await self._pool.get_connection()
        try:
            if not connection.is_connected:
                await connection.connect()
            # The stream writer only buffers a command this small; the read's deadline
            # bounds a server that does not read it. A connection that must check its
            # health first, whose sending was overridden (to trace or count it), or that is
            # not a socket's (the embedded Redis) goes the public way.
            writer = getattr(connection, "_writer", None)
            if (
                type(connection).send_packed_command is not _SEND
                or connection.health_check_interval
                or not isinstance(writer, asyncio.StreamWriter)
            ):
                await connection.send_packed_command(packed)
            else:
                writer.write(packed)
            reply = await connection.read_response()
        except redis.ResponseError:
            if not self._kept(connection):  # an error reply, read in full: in step
                await self._release(connection)
            raise
        except BaseException:
            # A timeout or a cancellation may leave a reply on its way, which the next
            # command would read as its own: redis-py drops the socket of a failed send or
            # read; this covers the rest. The connection reconnects when next used.
            if connection.is_connected:
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
            if not self._kept(connection):
                await self._release(connection)
            raise
        if not self._kept(connection):  # kept: the common case awaits nothing
            await self._release(connection)
        return reply

    def _kept(self, connection: Any) -> bool:  # noqa: ANN401
        """Keep ``connection`` for the next call if fewer than half the pool are kept."""
        if len(self._idle) < self._keep:
            self._idle.append(connection)
            return True
        return False

    async def _release(self, connection: Any) -> None:  # noqa: ANN401
        with contextlib.suppress(Exception):
            await self._pool.release(connection)

    def _moved_to_running_loop(self) -> None:
        """First use, or the store is used from a new event loop (``asyncio.run`` called
        again, a test's fresh loop): a connection serves the loop it was made on, and one
        made on a closed loop can be neither used nor closed, so the pool forgets those."""
        old, self._loop = self._loop, asyncio.get_running_loop()
        self._idle.clear()
        if old is not None and old.is_closed():
            with contextlib.suppress(Exception):
                self._pool.reset()

    def before_close(self) -> None:
        """Before the client closes its pool: connections of a closed loop cannot be
        closed (their sockets went with it), so the pool forgets them instead."""
        if self._loop is not None and self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._pool.reset()

    def forget(self) -> None:
        """In a forked child, or once the client is closed: the connections are not this
        store's to use (the pool forgets or closes them itself)."""
        self._idle.clear()
        self._loop = None
