"""The cached mode's quiet lane (``_lane.py``): a locally admitted call that returns and is a
plain success is counted in the batch without a permit; every other call admitted there
leaves the lane and is settled as before. These tests drive the sync ``Breaker.call`` (the
one caller of the lane) on the embedded store and check what Redis learns."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import redbreaker
from redbreaker import AsyncCallError, Breaker, ManualClock, State

NAME = "lane-dep"


class Boom(Exception):  # noqa: N818 (the dependency's own error)
    """The guarded dependency failed."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> redbreaker.Store:
    with contextlib.closing(redbreaker.connect("memory://", clock=clock)) as opened:
        yield opened


def _cached(store: redbreaker.Store, **settings: object) -> Breaker:
    breaker = Breaker(NAME, store=store, consistency="cached", **settings)  # type: ignore[arg-type]
    breaker.call(lambda: "warm")  # the first call asks Redis and starts the feed
    deadline = time.monotonic() + 5
    while not store.feed_live and time.monotonic() < deadline:
        time.sleep(0.01)  # a subscription counts as news: a copy taken before it is stale
    breaker._core._local.forget_copies()
    breaker.call(lambda: "warm")  # asks Redis again and leaves a local copy
    assert breaker._lane is not None
    assert breaker._core._local.copy is not None
    return breaker


def test_plain_successes_go_through_the_lane_and_reach_redis_in_the_batch(
    store: redbreaker.Store, clock: ManualClock
) -> None:
    breaker = _cached(store, flush_interval=10.0, max_staleness=60.0)
    for _ in range(25):
        assert breaker.call(lambda: "ok") == "ok"
    assert breaker.snapshot().window_calls == 27  # snapshot() flushes the batch first


def test_a_result_failure_leaves_the_lane_and_trips(store: redbreaker.Store) -> None:
    breaker = _cached(store, failure_threshold=3, failure_result=lambda r: r == "bad",
                      max_staleness=60.0)
    for _ in range(3):
        breaker.call(lambda: "bad")
    snap = breaker.snapshot()
    assert (snap.state, snap.last_reason) == (State.OPEN, "consecutive_failures")


def test_a_slow_success_leaves_the_lane_and_is_counted_slow(
    store: redbreaker.Store, clock: ManualClock
) -> None:
    breaker = _cached(store, slow_call_duration=1.0, max_staleness=60.0)

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    assert breaker.call(slow) == "late"
    assert breaker.snapshot().window_slow_calls == 1


def test_a_success_after_a_failure_ends_the_streak_in_redis_at_once(
    store: redbreaker.Store,
) -> None:
    breaker = _cached(store, failure_threshold=5, max_staleness=60.0)

    def boom() -> None:
        raise Boom

    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(boom)
    other = Breaker(NAME, store=store, failure_threshold=5)  # strict: reads Redis itself
    assert other.snapshot().consecutive_failures == 2
    breaker.call(lambda: "ok")
    assert other.snapshot().consecutive_failures == 0


def test_an_awaitable_result_is_refused_and_counts_nothing(store: redbreaker.Store) -> None:
    breaker = _cached(store, flush_interval=10.0, max_staleness=60.0)

    async def work() -> None:
        return None

    coroutine = work()
    with pytest.raises(AsyncCallError):
        breaker.call(lambda: coroutine)
    coroutine.close()
    assert breaker.snapshot().window_calls == 2  # the warm-up calls only
    asyncio.run(work())  # the event loop is fine: nothing was left pending


def test_observers_hear_of_every_call_of_the_lane(clock: ManualClock) -> None:
    seen: list[tuple[str, str]] = []

    class Watcher(redbreaker.BreakerObserver):
        def on_call(self, record: redbreaker.CallRecord) -> None:
            seen.append((record.outcome, record.state))

    with contextlib.closing(
        redbreaker.connect("memory://", clock=clock, observers=[Watcher()])
    ) as observed:
        breaker = _cached(observed, flush_interval=10.0, max_staleness=60.0)
        for _ in range(5):
            breaker.call(lambda: "ok")
        assert seen == [("success", "closed")] * 7
        assert Breaker(NAME, store=observed)._lane is None  # strict: never
