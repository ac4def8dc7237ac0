"""The transition feed, sync driver: pub/sub on ``<prefix>:events``.

Two readers of the channel live here: :class:`TransitionFeed`, which keeps a store's
:class:`~redbreaker._view.FleetView` up to date for cached breakers, and :func:`watch`,
behind ``Store.transitions()``, which hands every event to a caller. What they decide is
:mod:`redbreaker._feed_core`'s; here they subscribe, sleep and read.

Each subscription runs on a client of its own (:func:`subscriber_client`): undecoded, and
never reconnecting by itself (:func:`~redbreaker._feed_core.subscriber_settings` says why).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from . import _feed_core as core
from ._exceptions import StoreError, StoreUnavailableError
from ._health import FEED_BACKOFF, library_errors, wait_after

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._state import Transition
    from ._view import FleetView

__all__ = ["TransitionFeed", "subscriber_client", "watch"]


def subscriber_client(client: Any) -> redis.Redis:  # noqa: ANN401 (any sync redis-py client)
    """A new client to the same server as ``client``, for one subscription: undecoded,
    without redis-py retries. The caller closes it (:func:`_close_quietly`)."""
    retry = Retry(NoBackoff(), 0)
    if isinstance(client, RedisCluster):
        # Plain PUBLISH reaches every node of a cluster: any node will do. A random one, so
        # that resubscribing after a node died does not keep asking that node.
        node = client.get_random_node()  # type: ignore[no-untyped-call]
        source = client.get_redis_connection(node).connection_pool
        settings = core.subscriber_settings(source, retry)
        return redis.Redis(connection_pool=redis.ConnectionPool(**settings))
    source = client.connection_pool
    settings = core.subscriber_settings(source, retry)
    pool: redis.ConnectionPool
    if isinstance(source, SentinelConnectionPool):
        # Its connections ask the Sentinels where the master is: the twin must too.
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            source.service_name, source.sentinel_manager, is_master=source.is_master, **settings
        )
    else:
        # One connection needs none of the caller's pool policy (a blocking limit, a
        # subclass's constructor): the connection class and its settings say where to go.
        pool = redis.ConnectionPool(**settings)
    return redis.Redis(connection_pool=pool)


def _subscribe(pubsub: Any, channel: str) -> None:  # noqa: ANN401
    """SUBSCRIBE, and wait for the server's confirmation: from then on nothing published
    on ``channel`` is missed."""
    pubsub.subscribe(channel)
    deadline = time.monotonic() + core.CONFIRM_WAIT
    while (left := deadline - time.monotonic()) > 0:
        if core.confirms(pubsub.get_message(timeout=left)):
            return
    raise redis.TimeoutError(core.unconfirmed(channel))


def _close_quietly(pubsub: Any, client: redis.Redis | None) -> None:  # noqa: ANN401
    # Closing what failed may fail again (the server is gone): nothing left to learn.
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()
    if client is not None:
        with contextlib.suppress(Exception):
            client.connection_pool.disconnect()  # the client does not own its pool


class TransitionFeed(core.FeedCore):
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
        super().__init__(prefix, view, closed)
        view.on_news = self._wake_waiters

    def _start_afresh(self) -> None:
        self._lock = threading.Lock()
        self._reader = threading.Lock()
        self._thread: threading.Thread | None = None
        # Callers waiting for admission sleep on it until a transition is heard.
        self._news = threading.Condition(threading.Lock())
        super()._start_afresh()

    def _wake_waiters(self) -> None:
        with self._news:
            self._news.notify_all()

    def await_news(self, name: str, heard: int, seconds: float) -> bool:
        """Sleep up to ``seconds``, or until a transition of breaker ``name`` is heard
        after the view's count ``heard`` (or events may have been missed): True then."""
        view = self._view
        with self._news:
            return self._news.wait_for(lambda: view.heard(name) != heard, seconds)

    def start(self) -> None:
        """Start the thread that subscribes and keeps the feed read (once)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._closed():
                self._thread = threading.Thread(
                    target=self._run, name=self._worker_name, daemon=True
                )
                self._thread.start()

    def poll(self) -> None:
        """Read the transitions published since the feed was last read, unless it was read
        less than a ms ago or another thread is reading it (no I/O then)."""
        if self._due(time.monotonic()):
            self._read(blocking=False)

    def _read(self, *, blocking: bool) -> None:
        if not self._reader.acquire(blocking):
            return
        try:
            pubsub = self._pubsub
            if pubsub is None or not self._live:
                return
            self._read_at = time.monotonic()
            while self._hear(pubsub.get_message(timeout=0)):
                pass
        except Exception:
            self._lost()
        finally:
            self._reader.release()

    def _run(self) -> None:
        while not self._closed():
            client = pubsub = None
            try:
                client = subscriber_client(self._client)
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                _subscribe(pubsub, self._channel)
                with self._reader:
                    self._went_live(pubsub)
                while not self._closed() and self._live:
                    time.sleep(core.IDLE)
                    if self._unread(time.monotonic()):
                        self._read(blocking=True)
            except Exception:  # any failure: subscribe again after a pause
                pass
            finally:
                with self._reader:
                    failures = self._ended()
                _close_quietly(pubsub, client)
            if self._closed():
                return
            time.sleep(wait_after(FEED_BACKOFF, failures))


def watch(client: Any, prefix: str, closed: Callable[[], bool]) -> Iterator[Transition]:  # noqa: ANN401
    """Every transition under ``prefix``, as it is PUBLISHed (``Store.transitions()``).

    The subscription is live (confirmed) when this returns, so no event published after
    the call is missed. Iterating blocks; it ends when the caller stops or ``closed()``
    turns true. Payloads are JSON, never evaluated; anything on the channel that is not a
    redbreaker event is skipped.
    """
    events_channel = core.channel(prefix)
    subscriber = pubsub = None
    try:
        with library_errors(f"subscribing to {events_channel}", prefix):
            subscriber = subscriber_client(client)
            pubsub = subscriber.pubsub()  # type: ignore[no-untyped-call]
            _subscribe(pubsub, events_channel)
    except BaseException as exc:
        _close_quietly(pubsub, subscriber)
        if core.ends_quietly(exc, closed()):
            return iter(())  # closed while subscribing: nothing more to watch
        raise

    def events() -> Iterator[Transition]:
        try:
            for message in _listen(pubsub, events_channel, prefix, closed):
                event = core.transition(message)
                if event is not None:
                    yield event
        finally:
            _close_quietly(pubsub, subscriber)

    return events()


def _listen(
    pubsub: Any, channel: str, prefix: str, closed: Callable[[], bool]  # noqa: ANN401
) -> Iterator[dict[str, Any]]:
    # Losing the connection mid-watch is the library's StoreUnavailableError too, unless
    # the store was closed: that is how a watch is ended from another thread.
    try:
        with library_errors(f"watching {channel}", prefix):
            # Short waits, not listen(): this loop sees close() within WATCH_WAIT.
            while not closed():
                try:
                    message = pubsub.get_message(timeout=core.WATCH_WAIT)
                except Exception:
                    if closed():
                        return  # close() pulled the connection from under the read
                    raise
                if message is not None:
                    yield message
    except (StoreUnavailableError, StoreError) as exc:
        if not core.ends_quietly(exc, closed()):
            raise
