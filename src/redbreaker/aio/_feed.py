"""The transition feed, asyncio driver: pub/sub on ``<prefix>:events``.

Two readers of the channel live here, twins of :mod:`redbreaker._feed`:
:class:`TransitionFeed`, a task that keeps a store's :class:`~redbreaker._view.FleetView`
up to date for cached breakers, and :class:`TransitionStream`, behind
``Store.transitions()``, which hands every event to a caller. What they decide is
:mod:`redbreaker._feed_core`'s; here they subscribe, sleep and read.

Each subscription runs on a client of its own (:func:`subscriber_client`): undecoded, and
never reconnecting by itself (:func:`~redbreaker._feed_core.subscriber_settings` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff

from .. import _feed_core as core
from .._exceptions import StoreError, StoreUnavailableError
from .._health import FEED_BACKOFF, library_errors, wait_after

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._state import Transition
    from .._view import FleetView

__all__ = ["TransitionFeed", "TransitionStream", "subscriber_client"]


async def subscriber_client(client: Any) -> redis.asyncio.Redis:  # noqa: ANN401 (any asyncio client)
    """A new client to the same server as ``client``, for one subscription: undecoded,
    without redis-py retries. The caller closes it (``aclose()``)."""
    retry = Retry(NoBackoff(), 0)
    if isinstance(client, RedisCluster):
        # Plain PUBLISH reaches every node of a cluster: any node will do. A random one, so
        # that resubscribing after a node died does not keep asking that node.
        await client.initialize()
        node = client.get_random_node()
        settings = core.subscriber_settings(node, retry)
        return redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(**settings))
    source = client.connection_pool
    settings = core.subscriber_settings(source, retry)
    pool: redis.asyncio.ConnectionPool
    if isinstance(source, SentinelConnectionPool):
        # Its connections ask the Sentinels where the master is: the twin must too.
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            source.service_name, source.sentinel_manager, is_master=source.is_master, **settings
        )
    else:
        # One connection needs none of the caller's pool policy (a blocking limit, a
        # subclass's constructor): the connection class and its settings say where to go.
        pool = redis.asyncio.ConnectionPool(**settings)
    return redis.asyncio.Redis.from_pool(pool)


async def _subscribe(pubsub: Any, channel: str) -> None:  # noqa: ANN401
    """SUBSCRIBE, and wait for the server's confirmation: from then on nothing published
    on ``channel`` is missed."""
    await pubsub.subscribe(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + core.CONFIRM_WAIT
    while (left := deadline - loop.time()) > 0:
        if core.confirms(await pubsub.get_message(timeout=left)):
            return
    raise redis.TimeoutError(core.unconfirmed(channel))


async def _close_quietly(pubsub: Any, client: Any) -> None:  # noqa: ANN401
    # Closing what failed may fail again (the server is gone): nothing left to learn.
    for resource in (pubsub, client):
        if resource is not None:
            with contextlib.suppress(Exception):
                await resource.aclose()


class TransitionFeed(core.FeedCore):
    """Hears every transition under a prefix, for the cached breakers of one store.

    The subscription is read by whoever comes first: a calling task, at most once per ms
    (so a transition counts before its next admission, without waiting for the feed task
    to be scheduled), or the feed's own task when no call read it for 20 ms. One reader at
    a time: a caller that finds a read under way skips it (a flag, never a lock, so nobody
    waits across an await).
    """

    def __init__(
        self, client: Any, prefix: str, view: FleetView, closed: Callable[[], bool]  # noqa: ANN401
    ) -> None:
        self._client = client
        self._task: asyncio.Task[None] | None = None
        # Callers waiting for admission: each awaits one of these until news comes.
        self._waiters: set[asyncio.Future[None]] = set()
        super().__init__(prefix, view, closed)
        view.on_news = self._wake_waiters

    def _start_afresh(self) -> None:
        self._reading = False
        super()._start_afresh()

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def await_news(self, name: str, heard: int, seconds: float) -> bool:
        """Sleep up to ``seconds``, or until a transition of breaker ``name`` is heard
        after the view's count ``heard`` (or events may have been missed): True then."""
        view = self._view
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while view.heard(name) == heard:
            left = deadline - loop.time()
            if left <= 0:
                return False
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                # wait(), not wait_for(): news for another breaker ends it with nothing
                # to cancel, and this caller's own cancellation still propagates.
                await asyncio.wait((waiter,), timeout=left)
            finally:
                self._waiters.discard(waiter)
        return True

    def start(self) -> None:
        """Start the task that subscribes and keeps the feed read, on the running loop
        (once per loop; nothing once the store is closed)."""
        if self._closed():
            return
        task = self._task
        loop = asyncio.get_running_loop()
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        # A task of an earlier loop that never finished (a loop closed without cancelling
        # its tasks) is gone with it: its state is not this loop's.
        self._start_afresh()
        self._task = loop.create_task(self._run(), name=self._worker_name)

    def after_fork_in_child(self) -> None:
        self._task = None
        super().after_fork_in_child()

    def due(self) -> bool:
        """Whether a caller should read now: subscribed, not being read, and last read a
        ms ago or more. No I/O, no await: the fast path of ``Store.poll_feed()``."""
        return not self._reading and self._due(time.monotonic())

    async def read(self) -> None:
        """Read every message that arrived, without waiting for more."""
        pubsub = self._pubsub
        if pubsub is None or self._reading or not self._live:
            return
        self._reading = True
        self._read_at = time.monotonic()
        try:
            while self._hear(await pubsub.get_message(timeout=0)):
                pass
        except Exception:
            self._lost()
        finally:
            # A cancelled read needs nothing more: redis-py's parsers keep a partly read
            # reply for the next read, and pub/sub reads do not drop the connection.
            self._reading = False

    async def _run(self) -> None:
        while not self._closed():
            client = pubsub = None
            try:
                client = await subscriber_client(self._client)
                pubsub = client.pubsub()
                await _subscribe(pubsub, self._channel)
                self._went_live(pubsub)
                while self._live and not self._closed():
                    await asyncio.sleep(core.IDLE)
                    if self._unread(time.monotonic()):
                        await self.read()
            except Exception:  # any failure: subscribe again after a pause
                pass
            finally:
                failures = self._ended()
                await _close_quietly(pubsub, client)
            if self._closed():
                return
            await asyncio.sleep(wait_after(FEED_BACKOFF, failures))

    async def aclose(self) -> None:
        """Stop the task (its subscription and client are closed on its way out)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop is asyncio.get_running_loop():
            task.cancel()
            # wait(), not await: the task's CancelledError is not ours to raise, and ours
            # (this caller cancelled meanwhile) must not be swallowed.
            await asyncio.wait({task})
        else:
            # Another loop's task (closed from another thread): only that loop may touch
            # it, and a closed loop has nothing left to run.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)


class TransitionStream:
    """Every transition under a prefix, as it is PUBLISHed: ``Store.transitions()``.

    Subscribe before the events you expect, then iterate::

        async with store.transitions() as events:   # subscribed (and confirmed) here
            await breaker.force_open()               # so this event is not missed
            async for transition in events:
                ...

    ``events = await store.transitions().start()`` does the same without a block (then
    ``await events.aclose()``). Iterating a stream that was never started subscribes at the
    first ``__anext__``: events published before that are missed.

    Payloads are JSON, never evaluated; anything on the channel that is not a redbreaker
    event is skipped. The iteration ends quietly when the store is closed (within 0.25 s).
    A cancelled ``__anext__`` (a timeout around it) leaves the stream usable.

    Raises (from ``start`` and ``__anext__``):
        StoreUnavailableError: Redis could not be reached, or the connection was lost.
        StoreError: Redis refused (credentials, an ACL without SUBSCRIBE).
    """

    def __init__(self, client: Any, prefix: str, closed: Callable[[], bool]) -> None:  # noqa: ANN401
        self._client = client
        self._prefix = prefix
        self._channel = core.channel(prefix)
        self._closed = closed
        self._started = False
        self._ended = False
        self._subscriber: Any = None
        self._pubsub: Any = None

    def __repr__(self) -> str:
        state = "ended" if self._ended else "live" if self._pubsub is not None else "idle"
        return f"<redbreaker.aio.TransitionStream {self._channel!r} {state}>"

    async def start(self) -> TransitionStream:
        """Subscribe, and return once Redis confirmed it (once; later calls return at once)."""
        if self._started:
            return self
        self._started = True
        client = pubsub = None
        try:
            with library_errors(f"subscribing to {self._channel}", self._prefix):
                client = await subscriber_client(self._client)
                pubsub = client.pubsub()
                await _subscribe(pubsub, self._channel)
        except BaseException as exc:
            self._ended = True
            await _close_quietly(pubsub, client)
            if core.ends_quietly(exc, self._closed()):
                return self  # closed while subscribing: nothing more to watch
            raise
        if self._ended:  # aclose() ran while this subscribed
            await _close_quietly(pubsub, client)
        else:
            self._subscriber, self._pubsub = client, pubsub
        return self

    async def __aenter__(self) -> TransitionStream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> TransitionStream:
        return self

    async def __anext__(self) -> Transition:
        await self.start()
        while not self._ended and not self._closed():
            try:
                with library_errors(f"watching {self._channel}", self._prefix):
                    # Short waits, so that a closed store ends the iteration promptly.
                    message = await self._pubsub.get_message(timeout=core.WATCH_WAIT)
            except (StoreUnavailableError, StoreError) as exc:
                if core.ends_quietly(exc, self._closed()):
                    break
                await self.aclose()
                raise
            event = core.transition(message)
            if event is not None:
                return event
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Unsubscribe and close this stream's connection (idempotent)."""
        self._ended = True
        pubsub, client = self._pubsub, self._subscriber
        self._pubsub = self._subscriber = None
        await _close_quietly(pubsub, client)
