"""The sync store's direct path: script calls sent on connections of a plain
``redis.Redis`` client's pool, a level below ``execute_command``.

A plain client (nobody wrapped or overrode ``execute_command``, e.g. for tracing) is driven
this way: a thread keeps one connection of the pool and sends on it directly, which spares
redis-py's per-command machinery (pool checkout, retry wrapper, instrumentation): a third
of a round trip's client CPU. A pool has a limit (redis-py's default is 100 connections),
so at most half of it is kept by threads; the calls of other threads borrow a connection
and give it back, through the store's gate on the rest.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, TypeGuard

import redis

from . import _fork
from ._wire import ScriptPacker

__all__ = ["DirectPath", "is_plain"]

_REDIS_EXECUTE = redis.Redis.execute_command


def is_plain(client: object) -> TypeGuard[redis.Redis]:
    """A standalone client nobody wrapped or overrode ``execute_command`` of."""
    if not isinstance(client, redis.Redis):
        return False
    execute = type(client).execute_command
    return execute is _REDIS_EXECUTE and not hasattr(execute, "__wrapped__")


class DirectPath:
    """Sends packed script calls on the pool's connections.

    Args:
        client: a plain client (:func:`is_plain`).
        keep: how many threads may keep a connection (None: every thread).
    """

    __slots__ = ("_held", "_keepers", "_pool", "keep", "packer")

    def __init__(self, client: redis.Redis, *, keep: int | None) -> None:
        self._pool: Any = client.connection_pool
        self.packer = ScriptPacker(self._pool.connection_kwargs)
        self._held = threading.local()
        self.keep = keep
        self._keepers = _Keepers()

    def holding(self) -> bool:
        """True when this thread's calls go out on a connection it keeps: one it has, or
        one it takes now, while fewer than ``keep`` threads keep one. Otherwise its calls
        borrow a connection each (and pass the store's gate first)."""
        held: _HeldConnection | None = getattr(self._held, "connection", None)
        if held is not None and held.forks == _fork.generation():
            return True
        keep = self.keep
        if keep is not None and not self._keepers.take(keep):
            self._held.connection = None
            return False
        try:
            self._held.connection = _HeldConnection(self._pool, self._keepers)
        except BaseException:
            self._keepers.give_back(os.getpid())
            raise
        return True

    def held(self) -> Any:  # noqa: ANN401 (a redis-py connection)
        """This thread's connection, if it keeps one (for tests)."""
        held: _HeldConnection | None = getattr(self._held, "connection", None)
        return None if held is None else held.connection

    def send(self, packed: bytes) -> Any:  # noqa: ANN401 (a Redis reply)
        """Send one packed command and read its reply.

        Raises:
            redis.RedisError: as redis-py raises it.
        """
        held: _HeldConnection | None = getattr(self._held, "connection", None)
        if held is None or held.forks != _fork.generation():
            if not self.holding():
                return self._send_borrowed(packed)
            held = self._held.connection
            assert held is not None
        connection = held.connection
        try:
            _connected(connection)
            connection.send_packed_command([packed])
            return connection.read_response()
        except redis.ResponseError:
            raise  # an error reply, read in full: the connection is in step
        except BaseException:
            # A timeout or an interrupt may leave a reply on its way, which the next
            # command would read as its own: start that one on a new connection. (redis-py
            # drops the connection itself when a read fails; this covers the rest.)
            connection.disconnect()
            raise

    def _send_borrowed(self, packed: bytes) -> Any:  # noqa: ANN401
        pool = self._pool
        connection = pool.get_connection()
        try:
            _connected(connection)
            connection.send_packed_command([packed])
            return connection.read_response()
        except redis.ResponseError:
            raise
        except BaseException:
            connection.disconnect()  # a reply may still be on its way (see send)
            raise
        finally:
            pool.release(connection)


def _connected(connection: Any) -> None:  # noqa: ANN401 (a redis-py connection)
    """Connect ``connection`` by its own ``connect()`` if it lost its socket.

    ``send_packed_command`` reconnects by itself, but to the address the connection had:
    a Sentinel-managed connection must ask the sentinels where the master is now, which
    only its ``connect()`` does (else, after a failover, every try goes to the dead one).
    """
    if connection._sock is None:
        connection.connect()


class _HeldConnection:
    """One connection of a pool, kept by one thread; back in the pool when the thread (and
    with it this object) is gone."""

    __slots__ = ("__weakref__", "connection", "forks")

    def __init__(self, pool: Any, keepers: _Keepers) -> None:  # noqa: ANN401 (untyped pools)
        self.connection = pool.get_connection()
        self.forks = _fork.generation()
        weakref.finalize(self, _give_back, pool, self.connection, os.getpid(), keepers)


class _Keepers:
    """How many threads of this process keep a connection."""

    __slots__ = ("_count", "_lock", "_pid")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._pid = os.getpid()

    def take(self, keep: int) -> bool:
        if self._pid != os.getpid():
            # A forked child: no thread of it keeps one yet, and the lock may be held by a
            # parent thread that is not here.
            self._lock, self._count, self._pid = threading.Lock(), 0, os.getpid()
        with self._lock:
            if self._count >= keep:
                return False
            self._count += 1
            return True

    def give_back(self, pid: int) -> None:
        with self._lock:
            if pid == self._pid and self._count > 0:
                self._count -= 1


def _give_back(pool: Any, connection: Any, pid: int, keepers: _Keepers) -> None:  # noqa: ANN401
    # A child leaves its parent's connections alone. The process id, not the fork count:
    # inside fork() the child drops the parent's other threads (and runs this for their
    # connections) before any at-fork hook has counted the fork or released the pool's
    # lock, which one of those threads may hold.
    if pid == os.getpid():
        keepers.give_back(pid)
        with contextlib.suppress(Exception):
            pool.release(connection)
