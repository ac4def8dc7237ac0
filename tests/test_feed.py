"""The transition feed: the decisions both drivers share (_feed_core), the backoff policy
of the store's health and of both feeds (redis-py's equal jitter), and the sync feed's
subscriptions (confirmed before live; a client of their own, undecoded, never retrying by
itself, a Sentinel's included)."""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.backoff import EqualJitterBackoff, ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

import redbreaker
from redbreaker import ManualClock, State, StoreUnavailableError
from redbreaker import _feed as feed
from redbreaker import _feed_core as feed_core
from redbreaker._feed_core import FeedCore, confirms, transition
from redbreaker._health import FEED_BACKOFF, STORE_BACKOFF, StoreHealth, wait_after
from redbreaker._view import FleetView
from redis_servers import RedisServer, find_free_port
from test_topologies import SentinelServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NO_RETRY = Retry(NoBackoff(), 0)
PREFIX = "fd"
CHANNEL = f"{PREFIX}:events"


def _event(name: str, to_state: str = "open") -> str:
    return json.dumps(
        {
            "name": name,
            "from_state": "closed",
            "to_state": to_state,
            "reason": "test",
            "generation": 1,
            "at_ms": 1,
        }
    )


def _until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _closed_port() -> int:
    """A port nothing listens on (refused at once)."""
    port = find_free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


# -- the backoff policy -------------------------------------------------------------------


def test_store_and_feed_backoffs_are_redis_py_equal_jitter() -> None:
    """The store's tries and the feeds' subscriptions back off with redis-py's equal jitter,
    the store from 0.1 s to 5 s, the feeds from 0.05 s to 2 s."""
    assert EqualJitterBackoff(cap=5.0, base=0.1) == STORE_BACKOFF
    assert EqualJitterBackoff(cap=2.0, base=0.05) == FEED_BACKOFF
    assert StoreHealth(PREFIX, ManualClock(), ())._backoff is STORE_BACKOFF


@pytest.mark.parametrize(
    ("backoff", "first", "cap"), [(STORE_BACKOFF, 0.1, 5.0), (FEED_BACKOFF, 0.05, 2.0)]
)
def test_waits_double_to_the_cap_drawn_from_the_upper_half(
    backoff: EqualJitterBackoff, first: float, cap: float
) -> None:
    for failures in range(1, 30):
        ceiling = min(cap, first * 2 ** (failures - 1))
        waits = [wait_after(backoff, failures) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits), failures
    # However long the outage, the exponent stops growing (2**n would overflow a float).
    assert cap / 2 <= wait_after(backoff, 10**6) <= cap


def test_wait_after_counts_the_first_failure_as_the_base() -> None:
    """The upper end of the jitter is the plain doubling: the base after one failure."""
    upper = ExponentialBackoff(cap=5.0, base=0.1)
    assert [wait_after(upper, n) for n in (0, 1, 2, 3, 7, 10**6)] == [
        0.1,
        0.1,
        0.2,
        0.4,
        5.0,
        5.0,
    ]


# -- the shared decisions -----------------------------------------------------------------


def test_a_message_is_a_transition_only_if_it_is_a_redbreaker_event() -> None:
    event = transition({"type": "message", "data": _event("dep").encode()})
    assert event is not None
    assert (event.name, event.current) == ("dep", State.OPEN)
    assert transition(None) is None
    assert transition({"type": "subscribe", "data": 1}) is None
    assert transition({"type": "message", "data": b"\xff\xfe not json"}) is None
    assert transition({"type": "message", "data": b'{"name": "x"}'}) is None


def test_only_the_servers_reply_to_subscribe_confirms() -> None:
    assert confirms({"type": "subscribe", "channel": CHANNEL, "data": 1})
    assert not confirms(None)
    assert not confirms({"type": "message", "data": _event("dep")})


def test_feed_core_counts_failed_subscriptions_until_one_goes_live() -> None:
    """The wait before the next subscription grows with the failures in a row; a live one
    starts a new epoch of the view and the count afresh."""
    view = FleetView(PREFIX, ManualClock())
    core = FeedCore(PREFIX, view, lambda: False)
    assert [core._ended() for _ in range(3)] == [1, 2, 3]
    core._went_live(object())
    assert core.live
    assert view.heard("dep") == 1  # the epoch
    assert core._ended() == 1
    assert not core.live
    assert core._pubsub is None


def test_feed_core_hears_messages_and_says_when_to_read() -> None:
    view = FleetView(PREFIX, ManualClock())
    core = FeedCore(PREFIX, view, lambda: False)
    assert not core._due(100.0)  # not live: nothing to read
    core._went_live(object())
    assert core._due(100.0)
    core._read_at = 100.0
    assert not core._due(100.0005)  # a caller reads at most once per ms
    assert core._due(100.0015)
    assert not core._unread(100.01)  # the feed's own reader waits 20 ms for a caller
    assert core._unread(100.025)
    assert core._hear({"type": "subscribe", "data": 1})
    assert core._hear({"type": "message", "data": _event("dep").encode()})
    assert not core._hear(None)
    assert view.heard("dep") == 2  # the epoch and the event
    core._lost()
    assert not core.live


# -- the sync feed's subscriptions --------------------------------------------------------


class _Unconfirmed:
    """A pub/sub whose server never confirms the SUBSCRIBE."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        time.sleep(min(timeout, 0.01))
        return None

    def close(self) -> None:
        pass


class _UnconfirmedClient:
    def __init__(self) -> None:
        self.connection_pool = redis.ConnectionPool()

    def pubsub(self) -> _Unconfirmed:
        return _Unconfirmed()


def test_an_unconfirmed_subscription_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_core, "CONFIRM_WAIT", 0.05)
    pubsub = _Unconfirmed()
    with pytest.raises(redis.TimeoutError, match="not confirmed"):
        feed._subscribe(pubsub, CHANNEL)
    assert pubsub.subscribed == [CHANNEL]


def test_sync_feed_does_not_go_live_unconfirmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the sync feed went live after one read whether or not Redis had confirmed
    the subscription; now, as in the asyncio feed, it subscribes again instead."""
    monkeypatch.setattr(feed_core, "CONFIRM_WAIT", 0.02)
    made: list[_UnconfirmedClient] = []

    def unconfirmed_client(client: Any) -> _UnconfirmedClient:
        made.append(_UnconfirmedClient())
        return made[-1]

    monkeypatch.setattr(feed, "subscriber_client", unconfirmed_client)
    closed = False
    view = FleetView(PREFIX, ManualClock())
    transition_feed = feed.TransitionFeed(None, PREFIX, view, lambda: closed)
    transition_feed.start()
    try:
        _until(lambda: len(made) >= 3, "three subscriptions")
        assert not transition_feed.live
        assert view.heard("dep") == 0  # never a new epoch: it never went live
    finally:
        closed = True
        assert transition_feed._thread is not None
        transition_feed._thread.join(5)
    assert not transition_feed._thread.is_alive()


def test_watch_of_an_unconfirmed_subscription_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_core, "CONFIRM_WAIT", 0.02)
    monkeypatch.setattr(feed, "subscriber_client", lambda client: _UnconfirmedClient())
    with pytest.raises(StoreUnavailableError, match="not confirmed"):
        feed.watch(None, PREFIX, lambda: False)


def test_subscriber_client_is_undecoded_and_never_retries(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    twin = feed.subscriber_client(client)
    try:
        assert twin.connection_pool.connection_kwargs["decode_responses"] is False
        connection = twin.connection_pool.get_connection()
        assert connection.retry.get_retries() == 0
        twin.connection_pool.release(connection)
        client.set("k", "\u00e9")
        assert twin.get("k") == "\u00e9".encode()
    finally:
        feed._close_quietly(None, twin)
        client.close()


def test_subscriber_client_of_a_decoding_sentinel_client() -> None:
    """Before, a decoding Sentinel client raised TypeError here (its pool's constructor
    takes the service and the Sentinel); now its twin asks the same Sentinels."""
    sentinel = Sentinel([("127.0.0.1", _closed_port())], sentinel_kwargs={"retry": NO_RETRY})
    master = sentinel.master_for("mymaster", decode_responses=True)  # no I/O yet
    twin = feed.subscriber_client(master)
    pool = twin.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.sentinel_manager, pool.is_master) == (
        "mymaster",
        sentinel,
        True,
    )
    assert pool.connection_kwargs["decode_responses"] is False
    assert pool.connection_kwargs["retry"].get_retries() == 0
    assert pool.connection_kwargs["connection_pool"] is pool.proxy  # its own, not the source's
    # No Sentinel answers: the library's error, not a TypeError.
    with pytest.raises(StoreUnavailableError):
        feed.watch(master, PREFIX, lambda: False)


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_sync_feed_resubscribes_after_losing_its_connection(
    redis_url: str, redis_server: RedisServer, decode: bool
) -> None:
    """CLIENT KILL of the subscription: the feed subscribes again (a new epoch) and hears
    what is published afterwards. Before, with a client that retries (redis-py's default
    for ``Redis(host=..., port=...)``), redis-py reconnected and resubscribed by itself:
    no new epoch, although events published meanwhile were lost."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=decode)
    assert client.connection_pool.connection_kwargs["retry"].get_retries() > 0
    store = redbreaker.connect(client, prefix=PREFIX)
    admin = redis.Redis.from_url(redis_url)
    try:
        store.start_feed()
        _until(lambda: store.feed_live, "the feed to subscribe")
        epoch = store.view.heard("dep")
        admin.client_kill_filter(_type="pubsub")
        _until(lambda: store.view.heard("dep") > epoch and store.feed_live, "resubscribe")
        heard = store.view.heard("dep")
        admin.publish(CHANNEL, _event("dep"))
        _until(lambda: store.view.heard("dep") == heard + 1, "an event after it")
    finally:
        store.close()
        admin.close()


def _skips_a_payload_that_is_not_utf8(client: Any, publisher: redis.Redis) -> None:
    """The feed and a watch of a store on ``client`` hear an event published after one
    that is not UTF-8 (a decoding connection would fail on it inside redis-py)."""
    store = redbreaker.connect(client, prefix=PREFIX)
    try:
        store.start_feed()
        _until(lambda: store.feed_live, "the feed to subscribe")
        events = store.transitions()
        publisher.publish(CHANNEL, b"\xff\xfe")
        publisher.publish(CHANNEL, _event("dep"))
        assert next(events).name == "dep"
        _until(lambda: store.view.heard("dep") == 2, "the feed to hear it")
        events.close()  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_sync_feed_and_watch_skip_a_payload_that_is_not_utf8(redis_url: str, decode: bool) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=decode)
    _skips_a_payload_that_is_not_utf8(client, client)


@pytest.fixture
def sentinel_master(redis_server: RedisServer) -> Iterator[tuple[RedisServer, int]]:
    """A master of its own and a Sentinel that monitors it as ``mymaster``."""
    with RedisServer() as master, SentinelServer(master.port) as watcher:
        yield master, watcher.port


@pytest.mark.slow
def test_a_decoding_sentinel_client_feeds_and_watches(
    sentinel_master: tuple[RedisServer, int],
) -> None:
    master, sentinel_port = sentinel_master
    sentinel = Sentinel([("127.0.0.1", sentinel_port)])
    client = sentinel.master_for("mymaster", decode_responses=True)
    try:
        with master.client() as publisher:
            _skips_a_payload_that_is_not_utf8(client, publisher)
    finally:
        client.close()
        for link in sentinel.sentinels:
            link.close()
