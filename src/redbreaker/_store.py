"""Where breakers live: a Redis (or the embedded in-process one) plus a key prefix."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import redis
from redis.cluster import RedisCluster

from . import _fork
from ._clock import Clock, SystemClock
from ._cluster import node_pools, router_for
from ._config import hooks_setting
from ._direct import DirectPath, is_plain
from ._exceptions import ConfigError
from ._feed import TransitionFeed, watch
from ._gate import CallGate
from ._health import SCRIPT_CALL_ERRORS, ScriptRoute, StoreEvent, StoreHealth, library_errors
from ._keys import BreakerKeys, check_prefix
from ._memory import fakeredis_module, memory_server
from ._observe import BreakerObserver, observers_setting
from ._pool_limit import call_limit
from ._scripts import SCRIPT_NAMES, function_name, library_source, script_source
from ._view import FleetView

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from redis.commands.core import Script

    from ._doctor_core import DoctorReport
    from ._state import Transition

__all__ = ["RedisClient", "Store", "StoreHook", "memory_client"]

StoreHook = Callable[[StoreEvent], None]
"""A callable run once per edge of a store's reachability (degraded, recovered)."""

RedisClient = Union[redis.Redis, RedisCluster]  # noqa: UP007 (a runtime alias on 3.10)
"""A synchronous redis-py client: standalone, from a Sentinel, or a cluster client."""


class Store:
    """A Redis that holds breakers under one key prefix.

    Build it with :func:`connect`. One store per process per Redis is enough: breakers
    built on it share its connection pool, its registered scripts, and its cache of open
    deadlines (a rejected breaker rejects locally, without a round trip, until its
    deadline passes).

    Attributes:
        client: the redis-py client.
        prefix: every key starts with ``<prefix>:``.
        clock: where time comes from (Redis ``TIME`` unless a test clock is given).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "redbreaker",
        clock: Clock | None = None,
        on_store_event: StoreHook | Iterable[StoreHook] = (),
        observers: Iterable[BreakerObserver] = (),
    ) -> None:
        if isinstance(client, str) or not hasattr(client, "register_script"):
            raise ConfigError("target", f"expected a URL or a redis-py client, got {client!r}")
        if hasattr(client, "__aenter__") and not hasattr(client, "__enter__"):
            raise ConfigError(
                "target", "an asyncio client: use redbreaker.aio.connect and redbreaker.aio.Breaker"
            )
        self.client = client
        self.prefix = check_prefix(prefix)
        self.observers = observers_setting(observers)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._scripts: dict[str, Script] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        self._functions = {name: function_name(name) for name in SCRIPT_NAMES}
        # FCALL until the server shows it cannot (Redis < 7, an ACL without it): then the
        # same scripts by EVALSHA. On a cluster each goes to its slot's primary (_cluster).
        self._route = ScriptRoute(functions=True)
        hooks = hooks_setting("on_store_event", on_store_event)
        self.health = StoreHealth(self.prefix, self.clock, hooks)
        self._cluster = router_for(client, self.prefix, self.health.serving)
        # A pool limits its connections (redis-py's default: 100): calls beyond it wait
        # for one in flight to end, never "Too many connections" (which would read as an
        # outage). A plain client is driven a level lower (see _direct): up to half the
        # pool is kept by calling threads, and the calls of others share the rest.
        limit = call_limit(getattr(client, "connection_pool", None))
        self._direct: DirectPath | None = None
        if is_plain(client):
            keep = None if limit is None else limit.calls // 2
            self._direct = DirectPath(client, keep=keep)
        self._limit = limit
        self._gate = self._new_gate()
        self._closed = False
        # What this process knows without asking: rejections it repeats, transitions heard.
        self.view = FleetView(self.prefix, self.clock)
        self._feed: TransitionFeed = (
            TransitionFeed(client, self.prefix, self.view, lambda: self._closed)
            if self._cluster is None
            else self._cluster.sharded_feed(self.view, lambda: self._closed)
        )
        # Read the transitions published since the feed was last read (no I/O when it was
        # read less than a ms ago); bound once, as every cached call makes it.
        self.poll_feed: Callable[[], None] = self._feed.poll
        _fork.after_fork_in_child(self)
        # Connections connect() opened beside the client (a Sentinel's), closed with it.
        self._also_close: list[Callable[[], None]] = []
        self._fallback: Store | None = None
        self._process: Store | None = None
        self._fallback_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<redbreaker.Store prefix={self.prefix!r} client={self.client!r}>"

    def run(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> list[Any]:
        """Run one script for one breaker: one round trip (an FCALL, or an EVALSHA where
        Functions are missing or refused); three when the server lost the code (the
        refused call, FUNCTION LOAD or SCRIPT LOAD, the call again).

        Raises:
            StoreUnavailableError: Redis could not answer (or did not, recently, and the
                backoff before trying it again has not passed: no I/O then).
            StoreError: Redis answered with an error (a key of the wrong type, NOPERM...).
        """
        node = "" if self._cluster is None else self._cluster.node_name(keys)
        self.health.before_call(keys.name, node)
        try:
            direct = self._direct
            if self._gate is None or (
                direct is not None and self._route.functions and direct.holding()
            ):
                reply = self._call(script, keys, args)  # on a connection this thread keeps
            else:
                reply = self._gated_call(script, keys, args)
        except SCRIPT_CALL_ERRORS as exc:
            raise self.health.script_error(exc, script, keys.name, node) from exc
        return self.health.answered(script, reply, node)

    def _new_gate(self) -> CallGate | None:
        """The gate on calls that check a connection out of the pool: all of its slots but
        those threads keep."""
        if self._limit is None:
            return None
        kept = (self._direct.keep or 0) if self._direct is not None else 0
        return CallGate(self._limit.calls - kept)

    def _gated_call(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        gate, limit = self._gate, self._limit
        assert gate is not None
        assert limit is not None
        if not gate.acquire(limit.wait):
            raise redis.ConnectionError(limit.exhausted())
        try:
            return self._call(script, keys, args)
        finally:
            gate.release()

    def _call(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        if self._cluster is not None:
            args = self._cluster.script_args(keys, args)
        route = self._route
        if route.functions:
            try:
                return self._fcall(script, keys, args)
            except redis.ResponseError as exc:
                if route.after_fcall_error(exc) == "load":
                    try:
                        self._load_library(keys)
                    except redis.ResponseError as load_exc:
                        route.after_load_error(load_exc)
                    else:
                        return self._fcall(script, keys, args)
        return self._scripts[script](keys=list(keys.script_keys(script)), args=list(args))

    def _fcall(self, script: str, keys: BreakerKeys, args: Sequence[str]) -> Any:  # noqa: ANN401
        names = keys.script_keys(script)
        if self._cluster is not None:
            return self._cluster.fcall(self._functions[script], keys, names, args)
        if self._direct is None:
            return self.client.execute_command(  # type: ignore[no-untyped-call]
                "FCALL", self._functions[script], len(names), *names, *args
            )
        direct = self._direct
        return direct.send(direct.packer.fcall(self._functions[script], names, args))

    def _load_library(self, keys: BreakerKeys) -> None:
        """FUNCTION LOAD where the call was refused: the server, or on a cluster the
        primary of the breaker's slot (each primary gets it when it first lacks it)."""
        if self._cluster is not None:
            self._cluster.load(keys)
        elif self._direct is not None:
            self._direct.send(self._direct.packer.function_load(library_source()))
        else:
            self.client.function_load(library_source(), replace=True)

    # -- the transition feed (cached consistency) ---------------------------------------

    @property
    def feed_live(self) -> bool:
        """True while the transition feed (of cached breakers) is subscribed."""
        return self._feed.live

    def start_feed(self) -> None:
        """Start hearing every transition under this prefix (once; cached breakers and
        callers waiting for admission do)."""
        self._feed.start()

    def await_news(self, name: str, heard: int, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until a transition of ``name`` is heard after the
        view's count ``heard``: True then."""
        return self._feed.await_news(name, heard, seconds)

    def local_fallback(self) -> Store:
        """The in-process store that ``on_store_error="local"`` breakers of this store
        fall back to while Redis is unreachable: one, made on first need (an embedded
        Redis with this prefix and clock), closed with this store."""
        with self._fallback_lock:
            if self._fallback is None:
                self._fallback = Store(
                    memory_client(""),
                    prefix=self.prefix,
                    clock=self.clock,
                    observers=self.observers,
                )
            return self._fallback

    def process_store(self) -> Store:
        """The in-process store of the breakers each process keeps of its own
        (``min_reporters`` > 1): one, made on first need, with no observers (their
        owners report for them), new in a forked child (a new process has a new one)."""
        with self._fallback_lock:
            if self._process is None:
                self._process = Store(memory_client(""), prefix=self.prefix, clock=self.clock)
            return self._process

    def _after_fork_in_child(self) -> None:
        """In a forked child: the feed starts afresh, and locks a parent thread held at the
        fork (the client's pools' included) are released."""
        self.health.after_fork()
        _fork.reinit_lock(self._fallback_lock)
        self._process = None  # the parent's own breakers are not this process's
        self._gate = self._new_gate()  # parent threads inside a call at the fork hold slots
        _release_client_locks(self.client)
        if self._cluster is not None:
            _fork.reinit_lock(self._cluster.lock)
        self._feed.after_fork_in_child()

    def transitions(self) -> Iterator[Transition]:
        """Every transition of every breaker under this prefix, as it is PUBLISHed (on a
        Redis Cluster, SPUBLISHed: the channels of all 16384 slots, each subscribed on its
        primary).

        The subscription is live when this returns, so no event published after the call
        is missed. Iterating blocks; it ends when the caller stops or the store is closed.
        Payloads are JSON, never evaluated; anything on the channel that is not a
        redbreaker event is skipped.

        Raises:
            StoreUnavailableError: Redis could not be reached, or the connection was lost
                while watching.
        """
        closed = lambda: self._closed  # noqa: E731
        shards = None if self._cluster is None else self._cluster.transitions(closed)
        return shards if shards is not None else watch(self.client, self.prefix, closed)

    def breaker_names(self) -> list[str]:
        """Names of the breakers under this prefix, sorted (SCAN; never KEYS)."""
        names = set()
        head = f"{self.prefix}:{{"
        with library_errors(f"listing the breakers under {self.prefix!r}", self.prefix):
            for raw in self.client.scan_iter(match=f"{self.prefix}:{{*}}", count=500):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if key.startswith(head) and key.endswith("}"):
                    names.add(key[len(head) : -1])
        return sorted(names)

    def close(self) -> None:
        """Close the client's connections (and end any :meth:`transitions` loop)."""
        self._closed = True
        if self._cluster is not None:
            self._cluster.close_pools()
        self.client.close()
        for close in self._also_close:
            close()
        if self._fallback is not None:
            self._fallback.close()
        if self._process is not None:
            self._process.close()

    def doctor(self) -> DoctorReport:
        """Check this store's Redis and explain what is wrong: reachability and round
        trip, credentials, version, every ACL permission the library needs, Functions or
        scripts, persistence, eviction, and the keys under the prefix (docs/cli.md). On a
        Redis Cluster each primary is checked, and a finding names those that differ.

        Never raises for what it finds: an unreachable Redis is a failed ``reachable``
        finding. Where ``ACL DRYRUN`` is not allowed, the permissions are checked by
        running the library's path on the scratch breaker ``__redbreaker_doctor__``,
        whose keys expire within seconds.
        """
        from ._doctor import diagnose  # noqa: PLC0415 (it imports Breaker, which imports this)

        return diagnose(self)


def _release_client_locks(client: RedisClient) -> None:
    """Release, in a forked child, the locks of the client's connection pools (and of the
    embedded server): a parent thread inside the pool at the fork leaves them held, and
    redis-py would wait on them forever, or 5 s before raising ChildDeadlockedError. The
    pool's own fork check then drops the parent's connections as usual."""
    pools = node_pools(client) if isinstance(client, RedisCluster) else [client.connection_pool]
    for pool in pools:
        for name in ("_fork_lock", "_lock"):
            _fork.reinit_lock(getattr(pool, name, None))
        if hasattr(pool, "_locked"):
            pool._locked = False  # BlockingConnectionPool: "I hold _lock" was the parent's
        server = getattr(pool, "connection_kwargs", {}).get("server")
        _fork.reinit_lock(getattr(server, "lock", None))  # fakeredis's embedded server


def memory_client(name: str) -> RedisClient:
    client: RedisClient = fakeredis_module().FakeRedis(server=memory_server(name))
    return client
