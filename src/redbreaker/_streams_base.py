"""What the sync and the asyncio stream consumers share, with no I/O: their keyword
settings, the checks of the stream client or URL they are given, the warning when that is
the breakers' own server, and the parts of a consumer built from all of it. The drivers
add the sending (``_streams.py``, ``aio/_streams.py``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any, TypedDict

from ._brokers import check_broker, store_endpoint
from ._exceptions import ConfigError
from ._hooks import logger
from ._streams_core import ACK_SCRIPT, FAIL_SCRIPT, StreamConfig, StreamCore, StreamStats
from ._url import parse_store_url

if TYPE_CHECKING:
    from ._config import Seconds

__all__ = ["LOGS", "SOCKET_SLACK", "ConsumerBase", "StreamSettings", "url_spec"]

SOCKET_SLACK = 10.0
"""Seconds a stream client opened from a URL waits for a reply beyond one blocking read
(its socket timeout is ``max_block`` plus this) or for a connection."""


LOGS = {
    "dead_lettered": (
        logging.WARNING, "message %s dead-lettered to %r after %d failed runs (last: %s)"
    ),
    "stream_unavailable": (
        logging.WARNING, "the stream's Redis is unreachable (%s); trying again every %.3gs"
    ),
    "stream_recovered": (logging.WARNING, "the stream's Redis answers again"),
    "stream_stopping": (logging.INFO, "%s, stopping after the message in hand"),
}
"""What a consumer logs: event -> (level, message after ``stream consumer <name>: ``)."""


class StreamSettings(TypedDict, total=False):
    """The keyword settings of a ``StreamConsumer`` beyond ``stream`` and ``group`` (see
    :class:`StreamConfig`); ``consumer`` None picks ``<host>-<pid>-<random>``."""

    consumer: str | None
    dead_letter: str
    max_deliveries: int | None
    min_idle: Seconds
    batch_size: int
    max_block: Seconds


def url_spec(target: str) -> tuple[str, str]:
    """``("memory", name)`` or ``("redis", url)``: what a stream URL opens.

    Raises:
        ConfigError: not a URL of a single server.
    """
    try:
        spec = parse_store_url(target)
    except ConfigError as exc:
        raise ConfigError("client", exc.problem) from None
    if spec.scheme == "memory":
        return "memory", spec.memory_name
    if spec.scheme in ("redis", "rediss", "unix"):
        return "redis", spec.client_url
    raise ConfigError(
        "client",
        f"{target!r}: a stream URL names one server (redis://, rediss://, unix:// or "
        "memory://); pass a redis-py client for Sentinel or Cluster",
    )


def _client_timeout(client: Any, max_block: float) -> None:  # noqa: ANN401 (any client)
    settings = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    limit = settings.get("socket_timeout") if isinstance(settings, dict) else None
    if isinstance(limit, (int, float)) and limit <= max_block:
        raise ConfigError(
            "max_block",
            f"must be shorter than the stream client's socket_timeout ({limit}s), got "
            f"{max_block}s: every blocking read would time out",
        )


def _endpoint_url(client: Any) -> str:  # noqa: ANN401 (any redis-py client)
    """A URL of the server ``client`` talks to ("" when it cannot be told)."""
    endpoint = store_endpoint(client)
    if endpoint is None:
        return ""
    host, port = endpoint
    if host == "unix":
        return f"unix://{port}"
    return f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}"


class ConsumerBase:
    """A consumer's settings, stream client, core and scripts; the driver's subclass
    sets the class attributes and calls :meth:`_setup` from its ``__init__``."""

    _api: str  # the module whose Breaker and StreamConsumer these are
    _breaker_type: type[Any]
    _client_hint: str  # what a client must be, for the error

    client: Any
    """The stream's redis-py client (the one given, or opened from the URL)."""

    def _open(self, url: str, max_block: float) -> Any:  # noqa: ANN401 (the driver's client)
        """A client of the driver's kind for ``url`` (no I/O: redis-py connects lazily)."""
        raise NotImplementedError

    def _accepts(self, client: object) -> bool:
        raise NotImplementedError

    def _setup(
        self, breaker: Any, target: object, stream: str, group: str, settings: StreamSettings  # noqa: ANN401
    ) -> None:
        if not isinstance(breaker, self._breaker_type):
            raise ConfigError("breaker", f"expected a {self._api}.Breaker, got {breaker!r}")
        unknown = set(settings) - set(StreamSettings.__annotations__)
        if unknown:
            raise ConfigError(
                sorted(unknown)[0],
                "is not a StreamConsumer setting; settings: stream, group, handler, "
                + ", ".join(StreamSettings.__annotations__),
            )
        given: dict[str, Any] = dict(settings)
        if given.get("consumer") is None:
            given["consumer"] = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.config = StreamConfig(stream=stream, group=group, **given)
        self.breaker = breaker
        self._max_block = self.config.max_block_seconds
        if isinstance(target, str):
            self.client = self._open(target, self._max_block)
            self._owns_client = True
            shared = target
        else:
            if not self._accepts(target):
                raise ConfigError(
                    "client", f"expected a URL or {self._client_hint}, got {target!r}"
                )
            _client_timeout(target, self._max_block)
            self.client = target
            self._owns_client = False
            shared = _endpoint_url(target)
        self._core = StreamCore(self.config)
        self._ack = self.client.register_script(ACK_SCRIPT)
        self._fail = self.client.register_script(FAIL_SCRIPT)
        self._group_ready = False
        self._stream_down = False
        if shared:
            check_broker(
                shared,
                breaker.store.client,
                breaker=breaker.name,
                on_store_error=breaker.config.on_store_error,
                queue=f"stream {self.config.stream!r}",
            )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<{self._api}.StreamConsumer stream={c.stream!r} group={c.group!r} "
            f"consumer={c.consumer!r} breaker={self.breaker.name!r}>"
        )

    def _log(self, event: str, *args: object) -> None:
        """Log ``event`` (see :data:`LOGS`) on the ``redbreaker`` logger."""
        level, text = LOGS[event]
        config = self.config
        logger.log(
            level, "stream consumer %r: " + text, config.consumer, *args,
            extra={"event": event, "stream": config.stream, "consumer": config.consumer},
        )

    @property
    def stats(self) -> StreamStats:
        """What this consumer did so far: handled, failed, deferred, dead_lettered,
        reclaimed."""
        return self._core.stats
