"""Where breakers live, asyncio driver: a ``redis.asyncio`` client plus a key prefix.

The twin of :mod:`redbreaker._store`: the same scripts, the same arguments and replies,
the same error mapping and reachability rules (:class:`~redbreaker._health.StoreHealth`),
the same URLs (:func:`~redbreaker._url.parse_store_url`). Nothing here blocks the event
loop: every Redis call is awaited, and the Lua sources are read from disk at construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from .. import _fork
from .._clock import Clock, SystemClock
from .._config import hooks_setting
from .._exceptions import ConfigError
from .._health import SCRIPT_CALL_ERRORS, ScriptRoute, StoreEvent, StoreHealth, library_errors
from .._keys import BreakerKeys, check_prefix
from .._memory import fakeredis_module, memory_server
from .._observe import BreakerObserver, observers_setting
from .._pool_limit import call_limit
from .._scripts import SCRIPT_NAMES, function_name, library_source, script_source
from .._view import FleetView
from ._cluster import router_for
from ._direct import DirectPath, is_plain
from ._feed import TransitionFeed, TransitionStream
from ._gate import CallGate

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import TracebackType

    from redis.commands.core import AsyncScript

    from .._doctor_core import DoctorReport
    from ._shard_feed import ShardedStream

__all__ = ["AsyncRedisClient", "Store", "StoreHook", "memory_client"]

StoreHook = Callable[[StoreEvent], None]
"""A callable run once per edge of a store's reachability (degraded, recovered)."""

AsyncRedisClient = Union[redis.asyncio.Redis, RedisCluster]  # noqa: UP007 (a runtime alias on 3.10)
"""An asyncio redis-py client: standalone, from a Sentinel, or a cluster client."""


def _check_client(client: object) -> None:
    if isinstance(client, (str, bytes)) or not hasattr(client, "register_script"):
        raise ConfigError("target", f"expected a URL or a redis.asyncio client, got {client!r}")
    if isinstance(client, (redis.Redis, redis.RedisCluster)) or not hasattr(client, "__aenter__"):
        raise ConfigError(
            "target",
            f"{client!r} is a synchronous client: use redbreaker.connect and redbreaker.Breaker "
            "for it, or give redbreaker.aio.connect a redis.asyncio client",
        )


class Store:
    """A Redis that holds breakers under one key prefix, for ``redbreaker.aio`` breakers.

    Build it with :func:`connect`; close it with ``await store.aclose()`` (or ``async
    with``). One store per process and event loop per Redis is enough: breakers built on it
    share its connection pool, its cache of open deadlines and its transition feed.

    Attributes:
        client: the ``redis.asyncio`` client.
        prefix: every key starts with ``<prefix>:``.
        clock: where time comes from (Redis ``TIME`` unless a test clock is given).
        view: what this process knows without asking (cached rejections, heard events).
        health: whether Redis answers, with its backoff after an outage.
    """

    def __init__(
        self,
        client: AsyncRedisClient,
        *,
        prefix: str = "redbreaker",
        clock: Clock | None = None,
        on_store_event: StoreHook | Iterable[StoreHook] = (),
        observers: Iterable[BreakerObserver] = (),
    ) -> None:
        _check_client(client)
        self.client = client
        self.prefix = check_prefix(prefix)
        self.observers = observers_setting(observers)
        self.clock: Clock = clock if clock is not None else SystemClock()
        hooks = hooks_setting("on_store_event", on_store_event)
        self.health = StoreHealth(self.prefix, self.clock, hooks)
        # Read (and cached) now, so that no call reads a file on the event loop later.
        self._library = library_source()
        self._functions = {name: function_name(name) for name in SCRIPT_NAMES}
        # EVALSHA, reloaded after NOSCRIPT by redis-py's AsyncScript.
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        # FCALL until the server shows it cannot (Redis < 7, an ACL without it): then the
        # same scripts by EVALSHA. On a cluster each goes to its slot's primary (_cluster).
        self._route = ScriptRoute(functions=True)
        self._cluster = router_for(client, self.prefix, self.health.serving)
        # A plain client is driven a level lower (see _direct), each breaker's FCALL head
        # encoded once.
        self._direct = DirectPath(client) if is_plain(client) else None
        # A pool with a connection limit: calls beyond it wait for one in flight to end,
        # never "Too many connections" (which would read as an outage).
        self._limit = call_limit(getattr(client, "connection_pool", None))
        self._gate = None if self._limit is None else CallGate(self._limit.calls)
        self._closed = False
        self.view = FleetView(self.prefix, self.clock)
        self._feed: TransitionFeed = (
            TransitionFeed(client, self.prefix, self.view, self._is_closed)
            if self._cluster is None
            else self._cluster.sharded_feed(self.view, self._is_closed)
        )
        # Whether poll_feed() would read (over a ms since the last read, none running):
        # bound once and checked first, so that most cached calls await nothing.
        self.feed_due: Callable[[], bool] = self._feed.due
        # Clients connect() opened beside the client (a Sentinel's), closed with it.
        self._also_close: list[Callable[[], Awaitable[object]]] = []
        self._fallback: Store | None = None
        self._process: Store | None = None
        _fork.after_fork_in_child(self)

    def __repr__(self) -> str:
        return f"<redbreaker.aio.Store prefix={self.prefix!r} client={self.client!r}>"

    def _is_closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def run(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> list[Any]:
        """Run one script for one breaker: one round trip (an FCALL, or an EVALSHA where
        Functions are missing or refused); three when the server lost the code.

        Cancelling it is safe: redis-py drops a connection whose reply was not read in
        full (a cancelled read or send disconnects it), so no later call reads this one's
        reply. The script may have run all the same.

        Raises:
            StoreUnavailableError: Redis could not answer (or did not, recently, and the
                backoff before trying it again has not passed: no I/O then).
            StoreError: Redis answered with an error (a key of the wrong type, NOPERM...).
        """
        node = "" if self._cluster is None else self._cluster.node_name(keys)
        self.health.before_call(keys.name, node)
        try:
            if self._gate is None:
                reply = await self._call(script, keys, args)
            else:
                reply = await self._gated_call(script, keys, args)
        except SCRIPT_CALL_ERRORS as exc:
            raise self.health.script_error(exc, script, keys.name, node) from exc
        return self.health.answered(script, reply, node)

    async def _gated_call(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        gate, limit = self._gate, self._limit
        assert gate is not None
        assert limit is not None
        if not await gate.acquire(limit.wait):
            raise redis.ConnectionError(limit.exhausted())
        try:
            return await self._call(script, keys, args)
        finally:
            gate.release()

    async def _call(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        if self._cluster is not None:
            args = await self._cluster.script_args(keys, args)
        route = self._route
        if route.functions:
            try:
                return await self._fcall(script, keys, args)
            except redis.ResponseError as exc:
                if route.after_fcall_error(exc) == "load":
                    try:
                        await self._load_library(keys)
                    except redis.ResponseError as load_exc:
                        route.after_load_error(load_exc)
                    else:
                        return await self._fcall(script, keys, args)
        return await self._scripts[script](keys=list(keys.script_keys(script)), args=list(args))

    async def _fcall(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        names = keys.script_keys(script)
        if self._cluster is not None:
            return await self._cluster.fcall(self._functions[script], keys, names, args)
        direct = self._direct
        if direct is None:
            return await self.client.execute_command(
                "FCALL", self._functions[script], len(names), *names, *args
            )
        return await direct.execute(direct.packer.fcall(self._functions[script], names, args))

    async def _load_library(self, keys: BreakerKeys) -> None:
        """FUNCTION LOAD where the call was refused: the server, or on a cluster the
        primary of the breaker's slot (each primary gets it when it first lacks it)."""
        if self._cluster is not None:
            await self._cluster.load(keys)
        elif self._direct is None:
            await self.client.execute_command("FUNCTION", "LOAD", "REPLACE", self._library)
        else:
            await self._direct.execute(self._direct.packer.function_load(self._library))

    # -- the transition feed (cached consistency) ---------------------------------------

    @property
    def feed_live(self) -> bool:
        """True while the transition feed (of cached breakers) is subscribed."""
        return self._feed.live

    def start_feed(self) -> None:
        """Start hearing every transition under this prefix: a task on the running loop
        (once; cached breakers do; nothing once the store is closed)."""
        self._feed.start()

    async def await_news(self, name: str, heard: int, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until a transition of ``name`` is heard after the
        view's count ``heard``: True then."""
        return await self._feed.await_news(name, heard, seconds)

    async def poll_feed(self) -> None:
        """Read the transitions published since the feed was last read (no I/O, and no
        await, when it was read less than a ms ago or is being read)."""
        if self._feed.due():
            await self._feed.read()

    def local_fallback(self) -> Store:
        """The in-process store that ``on_store_error="local"`` breakers of this store
        fall back to while Redis is unreachable: one, made on first need (an embedded
        Redis with this prefix and clock), closed with this store."""
        if self._fallback is None:
            self._fallback = Store(
                memory_client(""), prefix=self.prefix, clock=self.clock, observers=self.observers
            )
        return self._fallback

    def process_store(self) -> Store:
        """The in-process store of the breakers each process keeps of its own
        (``min_reporters`` > 1): one, made on first need, with no observers (their
        owners report for them), new in a forked child (a new process has a new one)."""
        if self._process is None:
            self._process = Store(memory_client(""), prefix=self.prefix, clock=self.clock)
        return self._process

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's loop, task and sockets are not the child's. The
        feed starts afresh, and the pool forgets the parent's connections (without closing
        them: they are the parent's to use)."""
        self.health.after_fork()
        self._process = None  # the parent's own breakers are not this process's
        self._feed.after_fork_in_child()
        if self._gate is not None:
            self._gate.forget()
        if self._direct is not None:
            self._direct.forget()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.reset()

    def transitions(self) -> TransitionStream | ShardedStream:
        """Every transition of every breaker under this prefix, as it is PUBLISHed (on a
        Redis Cluster, SPUBLISHed: the channels of all 16384 slots, each on its primary)::

            async with store.transitions() as events:   # subscribed when this is entered
                async for transition in events:
                    ...

        ``async with`` (or ``await ....start()``) returns once the subscription is live, so
        no event published after it is missed. The iteration ends when the store is closed.
        Anything on the channel that is not a redbreaker event is skipped.

        Raises (when subscribing or iterating):
            StoreUnavailableError: Redis could not be reached, or the connection was lost
                while watching.
            StoreError: Redis refused (credentials, ACL).
        """
        if self._cluster is not None:
            return self._cluster.transitions(self._is_closed)
        return TransitionStream(self.client, self.prefix, self._is_closed)

    async def breaker_names(self) -> list[str]:
        """Names of the breakers under this prefix, sorted (SCAN; never KEYS)."""
        names = set()
        head = f"{self.prefix}:{{"
        with library_errors(f"listing the breakers under {self.prefix!r}", self.prefix):
            async for raw in self.client.scan_iter(match=f"{self.prefix}:{{*}}", count=500):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if key.startswith(head) and key.endswith("}"):
                    names.add(key[len(head) : -1])
        return sorted(names)

    async def aclose(self) -> None:
        """Stop the feed and close the client's connections (and end any
        :meth:`transitions` iteration)."""
        self._closed = True
        await self._feed.aclose()
        if self._direct is not None:
            self._direct.before_close()
        await self.client.aclose()
        if self._direct is not None:
            self._direct.forget()
        also_close, self._also_close = self._also_close, []
        for close in also_close:
            await close()
        if self._fallback is not None:
            await self._fallback.aclose()
        if self._process is not None:
            await self._process.aclose()

    close = aclose
    """An alias of :meth:`aclose`, as redis.asyncio has one."""

    async def doctor(self) -> DoctorReport:
        """Check this store's Redis and explain what is wrong; the asyncio twin of
        :meth:`redbreaker.Store.doctor` (same checks, same report)."""
        from ._doctor import diagnose  # noqa: PLC0415 (it imports Breaker, which imports this)

        return await diagnose(self)


def memory_client(name: str) -> AsyncRedisClient:
    client: AsyncRedisClient = fakeredis_module().FakeAsyncRedis(server=memory_server(name))
    return client
