"""``redbreaker.aio.connect()``: the asyncio twin of :func:`redbreaker.connect`, the same
URLs and settings, a ``redis.asyncio`` client behind the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .._config import hooks_setting, seconds_setting
from .._exceptions import ConfigError
from .._keys import check_prefix
from .._observe import observers_setting
from .._url import StoreURL, parse_store_url
from ._cluster import cluster_client
from ._store import AsyncRedisClient, Store, StoreHook, memory_client

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from .._clock import Clock
    from .._observe import BreakerObserver

__all__ = ["connect"]


def _sentinel_client(
    spec: StoreURL, socket: dict[str, Any]
) -> tuple[AsyncRedisClient, list[Callable[[], Awaitable[object]]]]:
    auth: dict[str, Any] = {"username": spec.username, "password": spec.password}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(spec.sentinels), sentinel_kwargs={**auth, **socket}, **socket
    )
    master: redis.asyncio.Redis = sentinel.master_for(spec.service, db=spec.db, **auth, **socket)
    return master, [s.aclose for s in sentinel.sentinels]


def connect(
    target: str | AsyncRedisClient,
    *,
    prefix: str = "redbreaker",
    store_timeout: float = 0.5,
    on_store_event: StoreHook | Iterable[StoreHook] = (),
    clock: Clock | None = None,
    observers: Iterable[BreakerObserver] = (),
) -> Store:
    """Open the store that holds ``redbreaker.aio`` breakers. No I/O here: the client
    connects on first use (call it inside or outside the event loop).

    Args:
        target: a URL, or a ``redis.asyncio`` client (``decode_responses`` on or off),
            used as it is. The URLs are :func:`redbreaker.connect`'s:

            - ``memory://`` -- an in-process Redis (fakeredis) private to this store;
              ``memory://<name>`` one shared by every store of that name in this
              process, sync stores included.
            - ``redis://``, ``rediss://`` (TLS), ``unix://`` -- as redis-py reads them.
            - ``redis+sentinel://host:port[,host:port]/service_name[/db]``.
            - ``redis+cluster://host:port`` -- any node of a Redis Cluster.
        prefix: every key starts with ``<prefix>:``.
        store_timeout: seconds one store call (connect, send, reply) may take on a client
            built from a URL, which also never retries a call by itself.
        on_store_event: callables run with a :class:`StoreEvent` once per edge
            (``store_degraded``, ``store_recovered``), on the event loop.
        clock: a test clock (:class:`ManualClock`); production uses Redis ``TIME``.
        observers: objects told of every call and transition of this store's breakers in
            this process (``redbreaker.contrib.prometheus.PrometheusMetrics``,
            ``redbreaker.contrib.otel.OtelMetrics``; see docs/metrics.md).

    Raises:
        ConfigError: an unknown scheme, a malformed URL, or a synchronous client (a
            ``ValueError``).
    """
    timeout = seconds_setting("store_timeout", store_timeout)
    if not isinstance(target, str):
        return Store(
            target, prefix=prefix, clock=clock, on_store_event=on_store_event, observers=observers
        )
    # Checked before a client exists, so that a bad setting leaves nothing to close.
    check_prefix(prefix)
    hooks_setting("on_store_event", on_store_event)
    observers = observers_setting(observers)
    # Short, single tries: the breaker's own policy decides what a failed call means, and
    # redis-py's default retries would multiply every stall.
    socket: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    spec = parse_store_url(target)
    client: AsyncRedisClient
    also_close: list[Callable[[], Awaitable[object]]] = []
    try:
        if spec.scheme == "memory":
            client = memory_client(spec.memory_name)
        elif spec.scheme == "redis+sentinel":
            client, also_close = _sentinel_client(spec, socket)
        elif spec.scheme == "redis+cluster":
            client = cluster_client(spec.client_url, timeout)
        else:
            client = redis.asyncio.Redis.from_url(spec.client_url, **socket)
    except ValueError as exc:
        raise ConfigError("target", f"{target!r}: {exc}") from exc
    store = Store(
        client, prefix=prefix, clock=clock, on_store_event=on_store_event, observers=observers
    )
    store._also_close = also_close
    return store
