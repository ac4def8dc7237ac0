"""What the sync and the asyncio stream consumers share, with no I/O: their keyword
settings, the checks of the stream client or URL they are given, the warning when that is
the breakers' own server, whether to read before taking a permit, and the parts of a
consumer built from all of it. The drivers add the sending (``_streams.py``,
``aio/_streams.py``).

Which comes first, the read or the permit (:class:`Admission`): a consumer reads first,
taking a permit per message only once it holds one, while its store's feed is live and
the latest thing this process learned of the breaker since the feed (re)subscribed says
it admits: a permit this consumer was granted, or a transition heard to ``closed``,
``half_open``, ``forced_closed`` or ``metrics_only``. Any trip anywhere is pushed on the
feed within ms and turns it back to permit first, as does a refusal, a rejection held
locally, a feed that is not (or no longer) live, or no news since it subscribed. So an
idle consumer on an empty stream sends the breakers' Redis nothing, and a half-open
breaker's probe goes to a consumer that has a message to try it with.
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
    from ._view import LastEvent

__all__ = ["LOGS", "SOCKET_SLACK", "Admission", "ConsumerBase", "StreamSettings", "url_spec"]

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


ADMITTING = frozenset({"closed", "half_open", "forced_closed", "metrics_only"})
"""States a transition heard on the feed may leave a consumer reading first in. Half-open
is one: its probe is taken by the consumer that read a message to try it with; a consumer
refused one (every slot taken) waits for a permit until the probe's outcome is pushed."""


class Admission:
    """What one consumer knows of its breaker's admission without asking Redis: its own
    latest ask, stamped with the view's count of transitions heard (:meth:`FleetView.heard`,
    which also moves at every (re)subscription), so that any news makes it stale."""

    __slots__ = ("_admitted", "_heard")

    def __init__(self) -> None:
        self._heard: int | None = None
        self._admitted = False

    def admitted(self, heard: int) -> None:
        """The breaker granted a permit; ``heard`` is the count read before asking, so
        that news heard while it asked (a trip) makes this word stale."""
        self._heard = heard
        self._admitted = True

    def refused(self, heard: int) -> None:
        """The breaker refused a permit; ``heard`` is the count read after the refusal, so
        that it outweighs news heard before it (a half-open breaker whose probe slots are
        taken: no read until the probe's outcome is pushed)."""
        self._heard = heard
        self._admitted = False

    def reads_first(
        self, *, feed_live: bool, held: bool, heard: int, last_event: LastEvent | None
    ) -> bool:
        """Whether to read before taking a permit: the feed is live, no rejection is
        ``held`` locally, and the latest of this consumer's own ask and the transition
        heard last (both of the current count ``heard``) says the breaker admits. Nothing
        learned since the feed subscribed: a permit first (it tells)."""
        if not feed_live or held:
            return False
        if self._heard == heard:
            return self._admitted  # asked after the latest news: the freshest word
        if last_event is not None and last_event[0] == heard:
            return last_event[1] in ADMITTING
        return False


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
        self._admission = Admission()
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

    def _heard(self) -> int:
        """The store's count of transitions of this breaker heard (see :class:`Admission`)."""
        return int(self.breaker.store.view.heard(self.breaker.name))

    def _reads_first(self) -> bool:
        """Read before taking a permit (see :class:`Admission`); no I/O."""
        breaker = self.breaker
        store = breaker.store
        live = bool(store.feed_live)
        view = store.view
        return self._admission.reads_first(
            feed_live=live,
            held=breaker._held_rejection(live) is not None,
            heard=view.heard(breaker.name),
            last_event=view.last_event(breaker.name),
        )

    @property
    def stats(self) -> StreamStats:
        """What this consumer did so far: handled, failed, deferred, dead_lettered,
        reclaimed."""
        return self._core.stats
