"""Whether a queue's broker is the very Redis that holds the breakers: no I/O here.

When it is, one outage of that server stops the queue *and* the breakers at once: the
consumers cannot fetch, and every breaker call meets an unreachable store. The breaker
then does what ``on_store_error`` says; only ``"local"`` keeps counting failures (in each
process) while the shared store is gone, so an adapter says so, loudly, at start-up.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from ._hooks import logger

__all__ = ["check_broker", "redis_endpoint", "same_server", "store_endpoint"]

Endpoint = tuple[str, str]
"""(host, port) of a TCP server, or ("unix", path) of a socket."""

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+socket", "socket"})


def _host(host: str) -> str:
    host = host.strip("[]").lower()
    return "localhost" if host in _LOOPBACK else host


def redis_endpoint(url: str) -> Endpoint | None:
    """The server a ``redis://``, ``rediss://`` or ``unix://`` URL names; None for any
    other broker (``amqp://``, ``sqs://``...) or a URL that cannot be read."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _REDIS_SCHEMES:
            return None
        if scheme in ("unix", "redis+socket", "socket"):
            return ("unix", parts.path)
        return (_host(parts.hostname or ""), str(parts.port or 6379))
    except ValueError:
        return None


def store_endpoint(client: Any) -> Endpoint | None:  # noqa: ANN401 (any redis-py client)
    """The server a store's redis-py client talks to; None when it cannot be told (a
    cluster or Sentinel client: they move between servers)."""
    pool = getattr(client, "connection_pool", None)
    settings = getattr(pool, "connection_kwargs", None)
    if not isinstance(settings, dict) or "service_name" in settings:
        return None
    if "path" in settings:
        return ("unix", str(settings["path"]))
    if "host" not in settings:
        return None
    return (_host(str(settings["host"])), str(settings.get("port", 6379)))


def same_server(broker: object, client: Any) -> bool:  # noqa: ANN401
    """Whether ``broker`` (a URL, or the queue's own redis-py client) names the server
    the store ``client`` talks to."""
    endpoint = redis_endpoint(broker) if isinstance(broker, str) else store_endpoint(broker)
    return endpoint is not None and endpoint == store_endpoint(client)


def check_broker(
    broker: object,
    client: Any,  # noqa: ANN401
    *,
    breaker: str,
    on_store_error: str,
    queue: str,
) -> bool:
    """Warn (a WARNING on the ``redbreaker`` logger) when ``broker`` (a URL, or the
    queue's redis-py client) is the server that holds breaker ``breaker``; True then."""
    if not same_server(broker, client):
        return False
    advice = (
        "on_store_error='local' keeps each process counting while it is down"
        if on_store_error != "local"
        else "on_store_error='local' is set: each process counts on its own while it is down"
    )
    logger.warning(
        "%s's broker is the Redis server that holds circuit %r: one outage of that server "
        "stops the queue and the breaker together; %s; a broker of its own is better",
        queue,
        breaker,
        advice,
        extra={"event": "shared_broker", "breaker": breaker, "queue": queue},
    )
    return True
