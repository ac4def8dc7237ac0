"""Transitions on pub/sub: the JSON on ``<prefix>:events``, ``Store.transitions()``, prefix
isolation, garbage on the channel, and hooks firing only where a transition was made."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from redbreaker import Breaker, CircuitOpenError, ManualClock, State, Transition

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from redis_servers import RedisServer

START_MS = 1_700_000_000_000
STOP = "zz-stop-watching"
STOP_PAYLOAD = json.dumps(
    {
        "name": STOP,
        "from_state": "closed",
        "to_state": "closed",
        "reason": "test:stop",
        "generation": 0,
        "at_ms": 0,
    }
)


def _wait_subscribed(raw: redis.Redis, channel: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        ((_, subscribers),) = raw.pubsub_numsub(channel)
        if subscribers >= count:
            return
        assert time.monotonic() < deadline, f"nobody subscribed to {channel} in 10 s"
        time.sleep(0.005)


class Watcher:
    """``store.transitions()`` consumed by a thread until the STOP event arrives.

    The iterator blocks, so it ends in one of two ways: a STOP payload is PUBLISHed (the
    normal way), or, if the thread does not end by itself, the store's client is closed,
    which breaks the blocking read.
    """

    def __init__(self, store: redbreaker.Store, raw: redis.Redis) -> None:
        self.store = store
        self.raw = raw
        self.channel = f"{store.prefix}:events"
        self.seen: list[Transition] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def _run(self) -> None:
        events = self.store.transitions()
        try:
            for transition in events:
                if transition.name == STOP:
                    return
                self.seen.append(transition)
        except BaseException as exc:  # reported by stop(), never lost in the thread
            self.error = exc
        finally:
            events.close()

    def __enter__(self) -> Watcher:
        before = self.raw.pubsub_numsub(self.channel)[0][1]
        self._thread.start()
        _wait_subscribed(self.raw, self.channel, before + 1)
        return self

    def stop(self) -> list[Transition]:
        """Send STOP, wait for the thread, and return what it saw (raises what it raised)."""
        if self._thread.is_alive():
            self.raw.publish(self.channel, STOP_PAYLOAD)
            self._thread.join(10)
        if self._thread.is_alive():
            self.store.close()
            self._thread.join(10)
            pytest.fail("Store.transitions() did not stop at the STOP event")
        if self.error is not None:
            raise AssertionError(
                f"Store.transitions() raised {self.error!r} after {self.seen}"
            ) from self.error
        return self.seen

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():
            self.raw.publish(self.channel, STOP_PAYLOAD)
            self._thread.join(10)
        if self._thread.is_alive():
            self.store.close()
            self._thread.join(10)


@pytest.fixture
def raw(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the (emptied) session redis-server, for publishing and checking."""
    del redis_url
    with redis_server.client() as client:
        yield client


def _store(
    url: str, *, prefix: str = "ev", decode: bool = False, clock: ManualClock | None = None
) -> redbreaker.Store:
    client = redis.Redis.from_url(url, decode_responses=decode)
    return redbreaker.connect(client, prefix=prefix, clock=clock)


def _fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)


def _cycle(breaker: Breaker, clock: ManualClock) -> None:
    """closed -> open -> half_open -> closed -> forced_open -> closed (reset)."""
    breaker.call(lambda: None)
    _fail(breaker, 2)
    clock.advance(5)
    breaker.call(lambda: None)
    breaker.force_open(60)
    breaker.reset()


CYCLE = [
    ("closed", "open", "consecutive_failures", 2, START_MS),
    ("open", "half_open", "recovery_timeout_elapsed", 3, START_MS + 5000),
    ("half_open", "closed", "probes_succeeded", 4, START_MS + 5000),
    ("closed", "forced_open", "operator:force_open", 5, START_MS + 5000),
    ("forced_open", "closed", "reset", 6, START_MS + 5000),
]
# What each of those tells a watcher that caches rejections: the ms the new state rejects
# for (open: the recovery timeout; forced_open: its 60 s duration; others: 0).
RETRY_AFTER_MS = [5000, 0, 0, 60000, 0]
NAME = "zahlungs-dienst-ü:eu/1"


def test_transitions_are_published_as_json(redis_url: str, raw: redis.Redis) -> None:
    """Each transition is one PUBLISH on <prefix>:events of exactly the documented JSON."""
    clock = ManualClock(START_MS)
    store = _store(redis_url, clock=clock)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("ev:events")
        _wait_subscribed(raw, "ev:events", 1)
        breaker = Breaker(NAME, store=store, failure_threshold=2, recovery_timeout=5)
        _cycle(breaker, clock)
        payloads: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(payloads) < len(CYCLE) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is not None:
                assert message["channel"] == b"ev:events"
                payloads.append(json.loads(message["data"]))
        assert pubsub.get_message(timeout=0.2) is None  # nothing more
    finally:
        pubsub.close()
        store.close()
    assert payloads == [
        {
            "name": NAME,
            "from_state": from_state,
            "to_state": to_state,
            "reason": reason,
            "generation": generation,
            "at_ms": at_ms,
            "retry_after_ms": retry_after_ms,
        }
        for (from_state, to_state, reason, generation, at_ms), retry_after_ms in zip(
            CYCLE, RETRY_AFTER_MS, strict=True
        )
    ]


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_store_transitions_yields_them(redis_url: str, raw: redis.Redis, decode: bool) -> None:
    """Store.transitions() yields every transition, equal to what the hooks received."""
    clock = ManualClock(START_MS)
    store = _store(redis_url, clock=clock)
    watching = _store(redis_url, decode=decode)
    hooked: list[Transition] = []
    try:
        breaker = Breaker(
            NAME, store=store, failure_threshold=2, recovery_timeout=5, on_transition=hooked.append
        )
        with Watcher(watching, raw) as watcher:
            _cycle(breaker, clock)
            seen = watcher.stop()
    finally:
        store.close()
        watching.close()
    expected = [
        Transition(NAME, State(f), State(t), reason, gen, at) for f, t, reason, gen, at in CYCLE
    ]
    assert hooked == expected
    assert seen == expected


def test_prefixes_are_isolated(redis_url: str, raw: redis.Redis) -> None:
    """Two prefixes on one Redis ("shop", "shop:eu") share neither breakers nor events."""
    shop, shop_eu = _store(redis_url, prefix="shop"), _store(redis_url, prefix="shop:eu")
    watch_shop = _store(redis_url, prefix="shop")
    watch_eu = _store(redis_url, prefix="shop:eu")
    try:
        with Watcher(watch_shop, raw) as shop_events, Watcher(watch_eu, raw) as eu_events:
            eu_payments = Breaker("payments", store=shop_eu, failure_threshold=1)
            _fail(eu_payments)
            Breaker("only-eu", store=shop_eu).force_open()
            shop_payments = Breaker("payments", store=shop, failure_threshold=1)
            shop_payments.call(lambda: None)
            shop_payments.metrics_only()
            seen_shop, seen_eu = shop_events.stop(), eu_events.stop()
        assert shop.breaker_names() == ["payments"]
        assert shop_eu.breaker_names() == ["only-eu", "payments"]
        assert shop_payments.state is State.METRICS_ONLY
        assert eu_payments.state is State.OPEN
        assert [(t.name, t.current) for t in seen_shop] == [("payments", State.METRICS_ONLY)]
        assert [(t.name, t.current) for t in seen_eu] == [
            ("payments", State.OPEN),
            ("only-eu", State.FORCED_OPEN),
        ]
        assert sorted(raw.scan_iter(match="shop:*")) == [
            b"shop:eu:{only-eu}",
            b"shop:eu:{payments}",
            b"shop:{payments}",
        ]
    finally:
        for store in (shop, shop_eu, watch_shop, watch_eu):
            store.close()


_VALID: dict[str, Any] = {
    "name": "x",
    "from_state": "closed",
    "to_state": "open",
    "reason": "r",
    "generation": 2,
    "at_ms": 1,
}
GARBAGE: dict[str, bytes] = {
    "not-json": b"hello",
    "empty": b"",
    "truncated": b'{"name": "x", "from_state"',
    "json-array": b"[1, 2]",
    "json-null": b"null",
    "json-string": b'"closed"',
    "empty-object": b"{}",
    "missing-to_state": json.dumps({k: v for k, v in _VALID.items() if k != "to_state"}).encode(),
    "unknown-to_state": json.dumps({**_VALID, "to_state": "melted"}).encode(),
    "generation-text": json.dumps({**_VALID, "generation": "two"}).encode(),
    "generation-null": json.dumps({**_VALID, "generation": None}).encode(),
    "generation-list": json.dumps({**_VALID, "generation": [2]}).encode(),
    "at_ms-NaN": json.dumps({**_VALID, "at_ms": float("nan")}).encode(),
    "generation-Infinity": json.dumps({**_VALID, "generation": float("inf")}).encode(),
    "at_ms-1e999": json.dumps(_VALID).replace('"at_ms": 1', '"at_ms": 1e999').encode(),
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
    "latin-1": b'{"name": "\xfc"}',
    "not-utf8": b"\xff\xfe\x00garbage",
    "pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
}


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
@pytest.mark.parametrize("payload", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_on_the_channel_is_skipped(
    redis_url: str, raw: redis.Redis, payload: bytes, decode: bool
) -> None:
    """A payload that is not a redbreaker event is skipped; the next real one is yielded."""
    watching = _store(redis_url, decode=decode)
    store = _store(redis_url)
    try:
        with Watcher(watching, raw) as watcher:
            raw.publish("ev:events", payload)
            Breaker("after-garbage", store=store).force_open()
            seen = watcher.stop()
    finally:
        store.close()
        watching.close()
    assert [(t.name, t.previous, t.current) for t in seen] == [
        ("after-garbage", State.CLOSED, State.FORCED_OPEN)
    ]


def test_hooks_fire_only_where_the_transition_was_made(redis_url: str, raw: redis.Redis) -> None:
    """A hook fires once in the process that made a transition, never in one that merely
    observes the new state through another store."""
    clock = ManualClock(START_MS)
    one, two = _store(redis_url, clock=clock), _store(redis_url, clock=clock)
    watching = _store(redis_url)
    in_one: list[Transition] = []
    in_two: list[Transition] = []
    try:
        settings: dict[str, Any] = {"failure_threshold": 1, "recovery_timeout": 5}
        first = Breaker("shared", store=one, on_transition=in_one.append, **settings)
        second = Breaker("shared", store=two, on_transition=in_two.append, **settings)
        with Watcher(watching, raw) as watcher:
            _fail(first)
            assert [(t.previous, t.current) for t in in_one] == [(State.CLOSED, State.OPEN)]
            with pytest.raises(CircuitOpenError):
                second.call(lambda: None)
            assert second.state is State.OPEN
            assert second.snapshot().generation == 2
            assert in_two == []
            clock.advance(5)
            assert second.call(lambda: "probe") == "probe"
            assert first.call(lambda: "after") == "after"
            assert first.state is State.CLOSED
            seen = watcher.stop()
        assert [(t.previous, t.current) for t in in_one] == [(State.CLOSED, State.OPEN)]
        assert [(t.previous, t.current) for t in in_two] == [
            (State.OPEN, State.HALF_OPEN),
            (State.HALF_OPEN, State.CLOSED),
        ]
        assert seen == in_one + in_two  # every watcher sees each transition exactly once
    finally:
        for store in (one, two, watching):
            store.close()


def test_closing_the_store_ends_a_blocked_iterator(redis_url: str, raw: redis.Redis) -> None:
    """A thread blocked in Store.transitions() is released by store.close() (no hang)."""
    watching = _store(redis_url)
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in watching.transitions():
                pass
        except (redis.ConnectionError, OSError, ValueError) as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_subscribed(raw, "ev:events", 1)
    watching.close()
    assert done.wait(10), "store.close() did not release the blocked iterator"
    thread.join(10)
    assert len(errors) <= 1
