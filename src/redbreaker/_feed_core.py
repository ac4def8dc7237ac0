"""The transition feed's decisions, shared by the sync and the asyncio drivers: no I/O here.

Both drivers read pub/sub on ``<prefix>:events`` in two ways: a feed that keeps a store's
:class:`~redbreaker._view.FleetView` up to date for cached breakers, and a watch that hands
every event to a caller (``Store.transitions()``). What a message means, when a
subscription counts as confirmed, live or lost, when a caller reads, how many failed
subscriptions in a row the wait before the next grows with, and how a subscriber's
connection is set up are answered here; the drivers (:mod:`redbreaker._feed`, a thread;
:mod:`redbreaker.aio._feed`, a task) only subscribe, sleep, wait and read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._exceptions import StoreError, StoreUnavailableError
from ._state import decode_event

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._state import Transition
    from ._view import FleetView

__all__ = [
    "CONFIRM_WAIT",
    "IDLE",
    "POLL",
    "SHARD_POLL",
    "WATCH_WAIT",
    "ConnectionSource",
    "FeedCore",
    "channel",
    "confirms",
    "ends_quietly",
    "subscriber_settings",
    "text",
    "transition",
    "unconfirmed",
]

POLL = 0.001
"""How often a caller reads the feed at most."""
IDLE = 0.02
"""How long the feed's own thread or task lets the feed go unread when no call reads it."""
CONFIRM_WAIT = 1.0
"""How long a SUBSCRIBE may go unconfirmed before the subscription counts as failed."""
WATCH_WAIT = 0.25
"""How often a watching caller checks whether the store was closed."""
SHARD_POLL = 0.005
"""How long a watcher of a cluster's shards (one connection each) sleeps when none of
them had a message."""


def channel(prefix: str) -> str:
    """The channel the scripts PUBLISH the transitions under ``prefix`` on."""
    return f"{prefix}:events"


class ConnectionSource(Protocol):
    """Where a client's connections come from: its pool, or a cluster node."""

    @property
    def connection_class(self) -> type: ...

    @property
    def connection_kwargs(self) -> Mapping[str, Any]: ...


def subscriber_settings(source: ConnectionSource, retry: object) -> dict[str, Any]:
    """The settings of a connection for one subscription, from ``source``'s.

    Undecoded: a decoding connection fails inside redis-py on a payload that is not UTF-8,
    before it could be skipped. ``retry`` is one that never retries: a subscription that
    came back by itself would have missed events without anyone starting a new epoch.
    """
    # A Sentinel pool adds a reference to itself to the settings; the twin adds its own.
    settings = source.connection_kwargs
    kept = {key: value for key, value in settings.items() if key != "connection_pool"}
    overrides = {"decode_responses": False, "retry": retry}
    return {**kept, **overrides, "connection_class": source.connection_class}


def text(raw: bytes | str) -> str:
    """A channel name as read (undecoded connections give bytes)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def confirms(message: Mapping[str, Any] | None) -> bool:
    """Whether a read returned the server's confirmation of a SUBSCRIBE."""
    return message is not None and message.get("type") == "subscribe"


def unconfirmed(channel: str) -> str:
    """Why a subscription failed that the server did not confirm in time."""
    return f"SUBSCRIBE {channel} was not confirmed within {CONFIRM_WAIT} s"


def transition(message: Mapping[str, Any] | None) -> Transition | None:
    """The transition a read returned; None for anything else (nothing, a subscription's
    confirmation, a stranger's message on our channel). Payloads are JSON, never
    evaluated. A sharded channel's messages (``smessage``) count like any other."""
    if message is None or message.get("type") not in ("message", "smessage"):
        return None
    try:
        return decode_event(message["data"])
    except Exception:  # not ours to decode: skip it
        return None


def ends_quietly(exc: BaseException, closed: bool) -> bool:
    """Whether a watch that failed with ``exc`` just ends: closing the store pulls the
    connection from under it, and that is how a watch is ended from another thread."""
    return closed and isinstance(exc, (StoreUnavailableError, StoreError))


class FeedCore:
    """A feed's bookkeeping: whether it is live, when it was last read, how many
    subscriptions failed in a row. The driver subclasses it, and guards it (the sync
    driver with its reader lock; the asyncio driver has one loop)."""

    def __init__(self, prefix: str, view: FleetView, closed: Callable[[], bool]) -> None:
        self._channel = channel(prefix)
        self._view = view
        self._closed = closed
        self._worker_name = f"redbreaker-feed-{prefix}"
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._live = False
        self._read_at = 0.0
        self._failures = 0
        self._pubsub: Any = None

    @property
    def live(self) -> bool:
        """True while the feed is subscribed."""
        return self._live

    def after_fork_in_child(self) -> None:
        """The parent's reader and subscription did not come along: the next cached call
        starts a feed of the child's own, and copies taken before the fork are stale."""
        self._start_afresh()
        self._view.new_epoch()

    def _due(self, now: float) -> bool:
        """Whether a caller reads now: subscribed, and last read a ms ago or more."""
        return self._live and now - self._read_at >= POLL

    def _unread(self, now: float) -> bool:
        """Whether the feed's own reader reads now: no call read it for a while."""
        return now - self._read_at >= IDLE

    def _went_live(self, pubsub: object) -> None:
        # Events published while unsubscribed are lost: every local copy taken before now
        # must be refreshed from Redis.
        self._pubsub = pubsub
        self._view.new_epoch()
        self._live = True
        self._failures = 0

    def _hear(self, message: Mapping[str, Any] | None) -> bool:
        """Take in what one read returned; False when it returned nothing (all read)."""
        if message is None:
            return False
        if message.get("type") == "message":
            self._view.heard_event(message["data"])
        return True

    def _lost(self) -> None:
        # A read failed (the connection is gone): the feed's own reader subscribes again.
        self._live = False

    def _ended(self) -> int:
        """The subscription failed or was lost: how many in a row now (the wait before
        the next one grows with it)."""
        self._live = False
        self._pubsub = None
        self._failures += 1
        return self._failures
