"""The transition feed, sync driver: pub/sub on ``<prefix>:events``.

Two readers of the channel live here: :class:`TransitionFeed`, which keeps a store's
:class:`~redbreaker._view.FleetView` up to date for cached breakers, and :func:`watch`,
behind ``Store.transitions()``, which hands every event to a caller.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from ._exceptions import StoreError, StoreUnavailableError
from ._health import library_errors
from ._state import Transition, decode_event

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._view import FleetView

__all__ = ["TransitionFeed", "undecoded_client", "watch"]

# How often a calling thread reads the transition feed at most, and how long the feed
# thread lets it go unread when no call reads it.
_FEED_POLL = 0.001
_FEED_IDLE = 0.02


def undecoded_client(client: Any) -> Any:  # noqa: ANN401 (any sync redis-py client)
    """``client``, or a twin that hands over bytes: a decoding connection fails inside
    redis-py on a payload that is not UTF-8, before it could be skipped."""
    pool = getattr(client, "connection_pool", None)
    settings = getattr(pool, "connection_kwargs", None)
    if pool is None or not settings or not settings.get("decode_responses"):
        return client
    raw_pool = type(pool)(
        connection_class=pool.connection_class, **{**settings, "decode_responses": False}
    )
    return redis.Redis(connection_pool=raw_pool)


class TransitionFeed:
    """Hears every transition under a prefix, for the cached breakers of one store.

    The subscription is read by whoever comes first: a calling thread, at most once per
    ms (it holds the GIL already: no thread switch between a transition and the next
    admission), or the feed's own thread when no call read it for 20 ms. Whoever holds
    the reader lock reads; the others skip.
    """

    def __init__(
        self, client: Any, prefix: str, view: FleetView, closed: Callable[[], bool]  # noqa: ANN401
    ) -> None:
        self._client = client
        self._channel = f"{prefix}:events"
        self._view = view
        self._closed = closed
        self._thread_name = f"redbreaker-feed-{prefix}"
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._lock = threading.Lock()
        self._reader = threading.Lock()
        self._thread: threading.Thread | None = None
        self._live = False
        self._pubsub: Any = None
        self._read_at = 0.0

    @property
    def live(self) -> bool:
        """True while the feed is subscribed."""
        return self._live

    def start(self) -> None:
        """Start the thread that subscribes and keeps the feed read (once)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._closed():
                self._thread = threading.Thread(
                    target=self._run, name=self._thread_name, daemon=True
                )
                self._thread.start()

    def after_fork_in_child(self) -> None:
        """The parent's thread did not come along and its subscription is the parent's to
        read: the next cached call starts a feed of the child's own, and copies taken
        before the fork are stale (a new epoch)."""
        self._start_afresh()
        self._view.new_epoch()

    def poll(self) -> None:
        """Read the transitions published since the feed was last read, unless it was read
        less than a ms ago or another thread is reading it (no I/O then)."""
        if not self._live or time.monotonic() - self._read_at < _FEED_POLL:
            return
        self._read(blocking=False)

    def _read(self, *, blocking: bool) -> None:
        if not self._reader.acquire(blocking):
            return
        try:
            pubsub = self._pubsub
            if pubsub is None or not self._live:
                return
            self._read_at = time.monotonic()
            while True:
                message = pubsub.get_message(timeout=0)
                if message is None:
                    return
                if message.get("type") == "message":
                    self._view.heard_event(message["data"])
        except Exception:  # a lost connection: the feed thread subscribes again
            self._live = False
        finally:
            self._reader.release()

    def _run(self) -> None:
        delay = 0.05
        while not self._closed():
            raw_client = undecoded_client(self._client)
            pubsub = raw_client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                pubsub.get_message(timeout=1.0)
                # Events published while unsubscribed are lost: every local copy taken
                # before now must be refreshed from Redis.
                with self._reader:
                    self._pubsub = pubsub
                    self._view.new_epoch()
                    self._live = True
                delay = 0.05
                while not self._closed() and self._live:
                    time.sleep(_FEED_IDLE)
                    if time.monotonic() - self._read_at >= _FEED_IDLE:
                        self._read(blocking=True)
            except Exception:  # any failure: resubscribe after a pause
                pass
            finally:
                with self._reader:
                    self._live = False
                    self._pubsub = None
                with contextlib.suppress(Exception):
                    pubsub.close()
                if raw_client is not self._client:
                    with contextlib.suppress(Exception):
                        raw_client.close()
            if self._closed():
                return
            time.sleep(delay * (0.5 + 0.5 * random.random()))
            delay = min(2.0, delay * 2)


def watch(client: Any, prefix: str, closed: Callable[[], bool]) -> Iterator[Transition]:  # noqa: ANN401
    """Every transition under ``prefix``, as it is PUBLISHed (``Store.transitions()``).

    The subscription is live when this returns, so no event published after the call is
    missed. Iterating blocks; it ends when the caller stops or ``closed()`` turns true.
    Payloads are JSON, never evaluated; anything on the channel that is not a redbreaker
    event is skipped.
    """
    channel = f"{prefix}:events"
    raw_client = undecoded_client(client)
    pubsub = raw_client.pubsub(ignore_subscribe_messages=True)
    try:
        with library_errors(f"subscribing to {channel}", prefix):
            pubsub.subscribe(channel)
            # The first reply confirms the subscription; reading it makes it live now.
            pubsub.get_message(timeout=1.0)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            pubsub.close()
        if raw_client is not client:
            raw_client.close()
        if closed() and isinstance(exc, (StoreUnavailableError, StoreError)):
            return iter(())  # closed while subscribing: nothing more to watch
        raise

    def events() -> Iterator[Transition]:
        try:
            for message in _listen(pubsub, channel, prefix, closed):
                if message.get("type") != "message":
                    continue
                try:
                    event = decode_event(message["data"])
                except Exception:  # a stranger's message on our channel is not ours
                    continue
                yield event
        finally:
            pubsub.close()
            if raw_client is not client:
                raw_client.close()

    return events()


def _listen(
    pubsub: Any, channel: str, prefix: str, closed: Callable[[], bool]  # noqa: ANN401
) -> Iterator[dict[str, Any]]:
    # Losing the connection mid-watch is the library's StoreUnavailableError too, unless
    # the store was closed: that is how a watch is ended from another thread.
    try:
        with library_errors(f"watching {channel}", prefix):
            # Short waits, not listen(): a client that reconnects by itself would keep a
            # blocked read alive past close(); this loop sees close() within 0.25 s.
            while not closed():
                try:
                    message = pubsub.get_message(timeout=0.25)
                except Exception:
                    if closed():
                        return  # close() pulled the connection from under the read
                    raise
                if message is not None:
                    yield message
    except (StoreUnavailableError, StoreError):
        if not closed():
            raise
