"""``connect()``: a store from a URL (pure parsing in :mod:`redbreaker._url`) or from a
redis-py client, with the short single-try socket settings every store's client gets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._cluster import cluster_client
from ._config import seconds_setting
from ._exceptions import ConfigError
from ._observe import observers_setting
from ._store import RedisClient, Store, StoreHook, memory_client
from ._url import StoreURL, parse_store_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._clock import Clock
    from ._observe import BreakerObserver

__all__ = ["connect"]


def _sentinel_client(
    spec: StoreURL, socket: dict[str, Any]
) -> tuple[RedisClient, list[Callable[[], None]]]:
    auth = {"username": spec.username, "password": spec.password}
    sentinel = redis.Sentinel(  # type: ignore[no-untyped-call]
        list(spec.sentinels), sentinel_kwargs={**auth, **socket}, **socket
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        spec.service, db=spec.db, **auth, **socket
    )
    return master, [s.close for s in sentinel.sentinels]


def connect(
    target: str | RedisClient,
    *,
    prefix: str = "redbreaker",
    store_timeout: float = 0.5,
    on_store_event: StoreHook | Iterable[StoreHook] = (),
    clock: Clock | None = None,
    observers: Iterable[BreakerObserver] = (),
) -> Store:
    """Open the store that holds breakers.

    Args:
        target: a URL, or a synchronous redis-py client (``decode_responses`` on or off).

            - ``memory://`` -- the embedded default: an in-process Redis (fakeredis)
              running the same Lua; private to this store. ``memory://<name>`` shares
              one in-process Redis between every store of that name in this process.
            - ``redis://``, ``rediss://`` (TLS), ``unix://`` -- as redis-py reads them,
              credentials included: ``redis://user:password@host:6379/0``.
            - ``redis+sentinel://host:port[,host:port]/service_name[/db]``.
            - ``redis+cluster://host:port`` -- any node of a Redis Cluster.
        prefix: every key starts with ``<prefix>:``; separate apps on one Redis use
            separate prefixes and never see each other's breakers or events.
        store_timeout: seconds one store call (connect, send, reply) may take on a client
            built from a URL, which also never retries a call by itself: when Redis stalls,
            a caller waits at most this long before its breaker's ``on_store_error``
            applies. A client passed in keeps its own settings.
        on_store_event: callables run with a :class:`StoreEvent` once per edge: when Redis
            stops answering (``store_degraded``) and when it answers again
            (``store_recovered``).
        clock: a test clock (:class:`ManualClock`); production uses Redis ``TIME``.
        observers: objects told of every call and transition of this store's breakers in
            this process (``redbreaker.contrib.prometheus.PrometheusMetrics``,
            ``redbreaker.contrib.otel.OtelMetrics``; see docs/metrics.md).

    Raises:
        ConfigError: an unknown scheme or a malformed URL (a ``ValueError``).
    """
    timeout = seconds_setting("store_timeout", store_timeout)
    if not isinstance(target, str):
        return Store(
            target, prefix=prefix, clock=clock, on_store_event=on_store_event, observers=observers
        )
    observers = observers_setting(observers)  # checked before a client exists
    # Short, single tries: the breaker's own policy decides what a failed call means, and
    # redis-py's default retries would multiply every stall.
    socket = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    spec = parse_store_url(target)
    client: RedisClient
    also_close: list[Callable[[], None]] = []
    try:
        if spec.scheme == "memory":
            client = memory_client(spec.memory_name)
        elif spec.scheme == "redis+sentinel":
            client, also_close = _sentinel_client(spec, socket)
        elif spec.scheme == "redis+cluster":
            client = cluster_client(spec.client_url, timeout)
        else:
            client = redis.Redis.from_url(spec.client_url, **socket)
    except ValueError as exc:
        raise ConfigError("target", f"{target!r}: {exc}") from exc
    store = Store(
        client, prefix=prefix, clock=clock, on_store_event=on_store_event, observers=observers
    )
    store._also_close = also_close
    return store
