"""The cached consistency mode: closed-state admissions from a local copy of the breaker.

A cached breaker admits a healthy call without a round trip while its copy (taken from
the last strict acquire) is younger than ``max_staleness`` and no transition of that
breaker was heard on the store's pub/sub feed since. Successes are batched (sent after
``flush_interval``, piggy-backed on a failure, by ``flush()``, ``snapshot()`` and at
exit); failures, and successes that end a streak, are sent at once; half-open is always
decided in Redis.

Round trips are counted by wrapping the store's script callables (``store._scripts``),
which ``Store.run`` calls once per EVALSHA, and on the real server by ``INFO
commandstats``. Tests on the ``store`` fixture use its ManualClock; the ones about the
feed thread use a real clock and the session redis-server. "Another process" is another
store on the same data (its own client, rejection cache and feed thread).

Every test that means the same for both drivers runs on both (``redbreaker`` and
``redbreaker.aio``, through the ``driver`` fixture; an aio store's feed is a task, which
runs while the driver waits). The exit-time flush is the sync driver's alone.

Run with ``-s`` to see the measured figures (``[cached] ...`` lines).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from drivers import unwrap
from redbreaker import Breaker, CircuitOpenError, ConfigError, ManualClock, State

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from drivers import AnyBreaker, AnyStore, Driver
    from redis_servers import RedisServer

NAME = "cached-dep"


class Boom(Exception):  # noqa: N818 (the dependency's own error)
    """The guarded dependency failed."""


def _ok() -> str:
    return "ok"


def _fail() -> None:
    raise Boom


# ------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Trip:
    """One script call a store made: the script, and for ``record`` the outcome and the
    calls it adds to the window (ARGV[6] and ARGV[12])."""

    script: str
    outcome: str | None = None
    calls: int | None = None


class Trips:
    """Every script call (one FCALL or EVALSHA each) a store of either driver makes from
    now on."""

    def __init__(self, store: AnyStore) -> None:
        self.log: list[Trip] = []
        raw = unwrap(store)
        call = raw._call

        def note(script: str, argv: Sequence[str]) -> None:
            if script == "record":
                self.log.append(Trip(script, str(argv[5]), int(argv[11])))
            else:
                self.log.append(Trip(script))

        def counted(script: str, keys: Any, argv: Sequence[str]) -> Any:
            note(script, argv)
            return call(script, keys, argv)

        async def counted_async(script: str, keys: Any, argv: Sequence[str]) -> Any:
            note(script, argv)
            return await call(script, keys, argv)

        raw._call = counted_async if inspect.iscoroutinefunction(call) else counted

    def take(self) -> list[Trip]:
        """The calls logged since the last take."""
        taken, self.log = self.log, []
        return taken

    def count(self, script: str) -> int:
        return sum(1 for t in self.log if t.script == script)


def _feed_live(driver: Driver, store: AnyStore) -> None:
    """Start the store's transition feed and wait until it is subscribed, so that its
    subscription (which invalidates every earlier copy) happens before the test counts."""
    store.start_feed()
    driver.wait_for(lambda: store.feed_live, "the transition feed subscribed")


def _heard_change(driver: Driver, store: AnyStore, before: int) -> float:
    return driver.wait_for(
        lambda: store.view.heard(NAME) > before, "the transition reached the feed"
    )


def _no_feed(store: AnyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """This store never hears transitions: only max_staleness refreshes its copies."""
    monkeypatch.setattr(unwrap(store), "start_feed", lambda: None)


def _cached(driver: Driver, store: AnyStore, **settings: Any) -> AnyBreaker:
    return driver.breaker(NAME, store=store, consistency="cached", **settings)


@pytest.fixture
def twin(driver: Driver, store: AnyStore, clock: ManualClock) -> Callable[[], AnyStore]:
    """Builds other stores on the same data as ``store`` (other processes, in effect):
    their own client and connection pool, rejection cache and feed; the same clock. The
    driver closes them."""
    return lambda: driver.reconnect(store, clock=clock)


@pytest.fixture
def real_stores(driver: Driver, redis_url: str) -> Callable[[], AnyStore]:
    """Builds stores of the test's driver on the session redis-server with the real clock
    (Redis TIME). The driver closes them."""
    return lambda: driver.connect(redis_url)


def _figure(**measured: object) -> None:
    print("\n[cached] " + " ".join(f"{k}={v}" for k, v in measured.items()))


# ------------------------------------------------------------------------------ round trips


def test_healthy_cached_breaker_makes_no_round_trip_per_call(
    driver: Driver, store: AnyStore
) -> None:
    """1,000 healthy calls with time standing still: exactly 1 acquire, 0 records; one
    flush then sends the other 999 and the window holds exactly 1,000 calls."""
    _feed_live(driver, store)
    trips = Trips(store)
    breaker = _cached(driver, store)

    for _ in range(1000):
        assert breaker.call(_ok) == "ok"

    assert trips.take() == [Trip("acquire")]
    breaker.flush()
    assert trips.take() == [Trip("record", "flush", 999)]
    snap = breaker.snapshot()
    assert trips.take() == [Trip("inspect")]  # nothing left to flush
    assert (snap.state, snap.generation, snap.window_calls) == (State.CLOSED, 1, 1000)
    assert (snap.window_failures, snap.consecutive_failures) == (0, 0)


def test_flushes_follow_the_flush_interval(
    driver: Driver, store: AnyStore, clock: ManualClock
) -> None:
    """1,000 calls 1 ms apart (0.999 s): still 1 acquire (max_staleness 1 s), at most one
    flush per flush_interval (each carrying >= 100 calls), and not one call lost."""
    _feed_live(driver, store)
    trips = Trips(store)
    breaker = _cached(driver, store, max_staleness=1.0, flush_interval=0.1)

    for _ in range(1000):
        breaker.call(_ok)
        clock.advance(0.001)

    log = trips.take()
    flushes = [t for t in log if t.script == "record"]
    assert [t for t in log if t.script != "record"] == [Trip("acquire")]
    assert 1 <= len(flushes) <= 9  # 0.999 s / 0.1 s
    assert all(t.outcome == "flush" and t.calls is not None and t.calls >= 100 for t in flushes)
    assert breaker.snapshot().window_calls == 1000
    _figure(test="flush_interval", calls=1000, acquires=1, flushes=len(flushes))


def test_copy_refreshed_once_per_max_staleness(
    driver: Driver, store: AnyStore, clock: ManualClock
) -> None:
    """With time moving, a copy is refreshed (one acquire) once it is max_staleness old,
    never earlier."""
    _feed_live(driver, store)
    trips = Trips(store)
    breaker = _cached(driver, store, max_staleness=0.5, flush_interval=100)

    breaker.call(_ok)
    clock.advance(0.499)
    breaker.call(_ok)
    assert trips.count("acquire") == 1
    clock.advance(0.001)  # exactly max_staleness old
    breaker.call(_ok)
    breaker.call(_ok)
    assert trips.take() == [Trip("acquire"), Trip("acquire")]
    assert breaker.snapshot().window_calls == 4


def test_real_server_counts_at_most_one_acquire_plus_due_flushes(
    driver: Driver, redis_server: RedisServer, real_stores: Callable[[], AnyStore]
) -> None:
    """On a real server and clock, 1,000 healthy calls cost the server at most 1 acquire
    plus one flush per flush_interval elapsed (INFO commandstats), and all are counted."""
    store = real_stores()
    _feed_live(driver, store)
    breaker = _cached(driver, store, max_staleness=30, flush_interval=0.1)
    driver.breaker("warm-up", store=store).call(_ok)  # the acquire script is loaded: no NOSCRIPT
    redis_server.reset_stats()

    started = time.monotonic()
    for _ in range(1000):
        breaker.call(_ok)
    elapsed = time.monotonic() - started
    stats = redis_server.commandstats()

    due_flushes = int(elapsed / 0.1)
    assert 1 <= stats.get("fcall", 0) <= 1 + due_flushes
    assert "script|load" not in stats
    assert breaker.snapshot().window_calls == 1000
    _figure(
        test="real_server",
        calls=1000,
        elapsed_ms=round(1000 * elapsed, 1),
        fcall=stats.get("fcall", 0),
        allowed=1 + due_flushes,
    )


# ------------------------------------------------------------------------------ exact counts


def test_counts_exact_after_flush_across_two_stores(
    driver: Driver, store: AnyStore, clock: ManualClock, twin: Callable[[], AnyStore]
) -> None:
    """500 successes from two cached breakers on two stores (same Redis, same name),
    with some flushes due by time on the way: the window holds exactly 500 calls."""
    other = twin()
    first, second = _cached(driver, store), _cached(driver, other)
    made = Counter[str]()
    for i in range(500):
        if i % 5 < 3:
            first.call(_ok)
            made["first"] += 1
        else:
            second.call(_ok)
            made["second"] += 1
        if i % 100 == 99:
            clock.advance(0.15)  # past flush_interval, not past max_staleness (1 s)
    first.flush()
    second.flush()

    reader = driver.breaker(NAME, store=store)  # strict, nothing batched: reads without flushing
    snap = reader.snapshot()
    assert made == {"first": 300, "second": 200}
    assert (snap.window_calls, snap.window_failures, snap.generation) == (500, 0, 1)


def test_failures_sent_at_once_and_success_after_failure_resets_streak(
    driver: Driver, store: AnyStore, twin: Callable[[], AnyStore]
) -> None:
    """Each failure is one record round trip carrying the batch; window failures and
    the streak are exact at once; the success after a failure is sent at once and resets
    the streak; then successes are batched again."""
    _feed_live(driver, store)
    trips = Trips(store)
    breaker = _cached(driver, store, failure_threshold=100)
    reader = driver.breaker(NAME, store=twin(), failure_threshold=100)

    breaker.call(_ok)  # strict: counted at admission, copy taken
    breaker.call(_ok)
    breaker.call(_ok)
    breaker.call(_ok)  # 3 batched
    assert trips.take() == [Trip("acquire")]

    with pytest.raises(Boom):
        breaker.call(_fail)
    assert trips.take() == [Trip("record", "failure", 4)]  # its own call + the 3 batched
    with pytest.raises(Boom):
        breaker.call(_fail)
    assert trips.take() == [Trip("record", "failure", 1)]
    snap = reader.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.consecutive_failures) == (6, 2, 2)

    breaker.call(_ok)  # the copy knows the streak: sent at once
    assert trips.take() == [Trip("record", "success", 1)]
    snap = reader.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.consecutive_failures) == (7, 2, 0)

    breaker.call(_ok)  # streak 0 again: batched
    assert trips.take() == []
    snap = breaker.snapshot()
    assert trips.take() == [Trip("record", "flush", 1), Trip("inspect")]
    assert (snap.window_calls, snap.window_failures, snap.consecutive_failures) == (8, 2, 0)
    assert (snap.state, snap.generation) == (State.CLOSED, 1)


def test_failures_trip_at_the_threshold_without_delay(driver: Driver, store: AnyStore) -> None:
    """failure_threshold=3 on a cached breaker: the third failure opens it (that very
    record reports the transition), the next call is rejected without running."""
    seen: list[redbreaker.Transition] = []
    breaker = _cached(
        driver, store, failure_threshold=3, recovery_timeout=30, on_transition=seen.append
    )
    breaker.call(_ok)
    for _ in range(3):
        with pytest.raises(Boom):
            breaker.call(_fail)
    assert [(t.previous, t.current, t.reason) for t in seen] == [
        (State.CLOSED, State.OPEN, "consecutive_failures")
    ]
    ran = []
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(lambda: ran.append(1))
    assert ran == []
    assert (rejected.value.state, rejected.value.retry_after) == ("open", 30.0)


# ------------------------------------------------------------------------------ staleness


def test_without_feed_a_trip_elsewhere_is_noticed_after_max_staleness(
    driver: Driver,
    store: AnyStore,
    clock: ManualClock,
    twin: Callable[[], AnyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the feed off, a copy admits until it is max_staleness old; then the next call
    asks Redis and is rejected with the deadline Redis gave; the successes admitted from
    the stale copy were never counted into the tripped breaker."""
    _no_feed(store, monkeypatch)
    trips = Trips(store)
    breaker = _cached(driver, store, max_staleness=1.0, recovery_timeout=30, flush_interval=100)
    breaker.call(_ok)  # copy taken now

    elsewhere = driver.breaker(NAME, store=twin(), failure_threshold=1, recovery_timeout=30)
    with pytest.raises(Boom):
        elsewhere.call(_fail)  # open now, fleet-wide

    assert breaker.call(_ok) == "ok"  # the stale copy still admits (feed off)
    clock.advance(0.999)
    assert breaker.call(_ok) == "ok"
    assert trips.take() == [Trip("acquire")]

    clock.advance(0.001)  # the copy is max_staleness old
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(_ok)
    assert trips.take() == [Trip("acquire")]
    assert (rejected.value.state, rejected.value.retry_after) == ("open", 29.0)

    snap = breaker.snapshot()  # flushes the 2 stale successes: Redis fences them off
    assert trips.take() == [Trip("record", "flush", 2), Trip("inspect")]
    assert (snap.state, snap.generation, snap.window_calls) == (State.OPEN, 2, 0)


# ------------------------------------------------------------------------------ generations


def test_batched_successes_of_an_old_generation_are_never_counted(
    driver: Driver,
    store: AnyStore,
    clock: ManualClock,
    twin: Callable[[], AnyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Successes batched under generation 1 are fenced off after a transition (flushed,
    or piggy-backed on a failure), and never counted into generation 2."""
    _no_feed(store, monkeypatch)  # the copy stays on generation 1 until it is stale
    trips = Trips(store)
    breaker = _cached(driver, store, failure_threshold=5, flush_interval=100)
    reader = driver.breaker(NAME, store=twin(), failure_threshold=5)
    for _ in range(5):
        breaker.call(_ok)  # 1 counted at admission + 4 batched under generation 1

    assert reader.reset() is State.CLOSED  # generation 2, empty window
    breaker.flush()
    assert trips.take() == [Trip("acquire"), Trip("record", "flush", 4)]
    snap = reader.snapshot()
    assert (snap.generation, snap.window_calls) == (2, 0)

    for _ in range(3):
        breaker.call(_ok)  # the copy still says generation 1: batched under it
    with pytest.raises(Boom):
        breaker.call(_fail)  # carries the 3 + itself, all of generation 1
    assert trips.take() == [Trip("record", "failure", 4)]
    snap = reader.snapshot()
    assert (snap.generation, snap.window_calls, snap.window_failures) == (2, 0, 0)
    assert snap.consecutive_failures == 0

    # The stale record dropped the copy: the next call asks Redis (generation 2).
    breaker.call(_ok)
    breaker.call(_ok)
    breaker.call(_ok)
    assert trips.take() == [Trip("acquire")]
    snap = breaker.snapshot()
    assert trips.take() == [Trip("record", "flush", 2), Trip("inspect")]
    assert (snap.generation, snap.window_calls, snap.window_failures) == (2, 3, 0)


def test_transition_heard_on_feed_drops_the_batch(
    driver: Driver, store: AnyStore, twin: Callable[[], AnyStore]
) -> None:
    """With the feed on: a reset elsewhere is heard, the next call asks Redis (generation
    2) and the 4 successes batched under generation 1 are dropped, not sent."""
    _feed_live(driver, store)
    trips = Trips(store)
    breaker = _cached(driver, store, flush_interval=100)
    for _ in range(5):
        breaker.call(_ok)
    heard = store.view.heard(NAME)

    driver.breaker(NAME, store=twin()).reset()
    _heard_change(driver, store, heard)
    for _ in range(3):
        breaker.call(_ok)
    breaker.flush()

    assert trips.take() == [Trip("acquire"), Trip("acquire"), Trip("record", "flush", 2)]
    snap = driver.breaker(NAME, store=store).snapshot()
    assert (snap.generation, snap.window_calls) == (2, 3)


def test_late_outcome_of_an_old_generation_keeps_the_current_batch(
    driver: Driver,
    store: AnyStore,
    clock: ManualClock,
    twin: Callable[[], AnyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call admitted under generation 1 that succeeds after the breaker moved to
    generation 2 is not counted, and does not throw away the successes batched under
    generation 2 meanwhile: the window holds exactly generation 2's 3 calls."""
    _no_feed(store, monkeypatch)
    breaker = _cached(driver, store, max_staleness=1.0, flush_interval=100)
    breaker.call(_ok)
    long_call = breaker.acquire()  # admitted from the copy, generation 1
    assert long_call.generation == 1

    driver.breaker(NAME, store=twin()).reset()  # generation 2
    clock.advance(1.0)  # the copy is stale: the next call asks Redis
    breaker.call(_ok)  # generation 2, counted at admission
    breaker.call(_ok)
    breaker.call(_ok)  # 2 batched under generation 2
    long_call.success()  # the generation-1 call ends now

    snap = breaker.snapshot()
    assert (snap.generation, snap.window_calls) == (2, 3)


def test_failures_after_data_loss_count_once_redis_says_stale(
    driver: Driver, store: AnyStore, twin: Callable[[], AnyStore]
) -> None:
    """FLUSHALL publishes nothing, and another process recreates the breaker (generation
    1 again, a new incarnation): the first failure admitted from the old copy is fenced
    off as stale, but that stale reply drops the copy, so the next failures are admitted
    and counted by the new breaker and trip it at failure_threshold."""
    _feed_live(driver, store)
    trips = Trips(store)
    breaker = _cached(driver, store, failure_threshold=3, recovery_timeout=30)
    breaker.call(_ok)
    breaker.call(_ok)  # a copy of generation 1, first incarnation

    store.client.flushall()
    elsewhere = driver.breaker(NAME, store=twin(), failure_threshold=3, recovery_timeout=30)
    elsewhere.call(_ok)  # recreated: generation 1, another incarnation
    trips.take()

    for _ in range(4):
        with pytest.raises(Boom):
            breaker.call(_fail)
    log = trips.take()
    snap = elsewhere.snapshot()
    # 1 stale failure from the old copy, then 3 counted: open.
    assert (snap.state, snap.generation, snap.open_count) == (State.OPEN, 2, 1), (snap, log)
    assert log[:2] == [Trip("record", "failure", 2), Trip("acquire")]  # + 1 batched success


# ------------------------------------------------------------------------------ half-open


def test_half_open_is_decided_in_redis(
    driver: Driver, store: AnyStore, clock: ManualClock, twin: Callable[[], AnyStore]
) -> None:
    """Two cached breakers on two stores with fresh copies: after a trip and the recovery
    timeout, each asks Redis, exactly one gets the probe, its success closes the breaker,
    and both admit from fresh copies again."""
    other_store = twin()
    settings = {"failure_threshold": 1, "recovery_timeout": 5, "half_open_max_calls": 1}
    _feed_live(driver, store)
    _feed_live(driver, other_store)
    first, second = _cached(driver, store, **settings), _cached(driver, other_store, **settings)
    first.call(_ok)
    second.call(_ok)
    trips, other_trips = Trips(store), Trips(other_store)
    heard = (store.view.heard(NAME), other_store.view.heard(NAME))

    with pytest.raises(Boom):
        first.call(_fail)  # open
    # Both feeds cache the rejection for the 5 s the event gives, from when it arrives on
    # the manual clock: let it arrive before time moves.
    _heard_change(driver, store, heard[0])
    _heard_change(driver, other_store, heard[1])
    clock.advance(5)
    probe = first.acquire()
    with pytest.raises(CircuitOpenError) as rejected:
        second.acquire()
    assert probe.is_probe
    assert rejected.value.state == "half_open"
    assert [t.script for t in trips.take()] == ["record", "acquire"]
    assert other_trips.take() == [Trip("acquire")]

    probe.success()
    assert first.snapshot().state is State.CLOSED
    trips.take()
    first.call(_ok)
    second.call(_ok)
    assert [t.script for t in trips.take()] == ["acquire"]
    assert [t.script for t in other_trips.take()] == ["acquire"]


# ------------------------------------------------------------------ the feed, real clock


def _warm(driver: Driver, breaker: AnyBreaker) -> Trips:
    """First call, feed subscribed, a call on a copy taken after the subscription."""
    breaker.call(_ok)
    _feed_live(driver, breaker.store)
    breaker.call(_ok)
    trips = Trips(breaker.store)
    breaker.call(_ok)
    assert trips.take() == [], "a warm cached breaker still made a round trip"
    return trips


def _until_rejected(
    driver: Driver, breaker: AnyBreaker, limit: float = 5.0
) -> tuple[float, CircuitOpenError, int]:
    """Call until rejected; return (seconds it took, the rejection, calls admitted)."""
    start = time.monotonic()
    admitted = 0
    while True:
        try:
            breaker.call(_ok)
        except CircuitOpenError as exc:
            return time.monotonic() - start, exc, admitted
        admitted += 1
        if time.monotonic() - start > limit:
            raise AssertionError(f"still admitting after {limit}s ({admitted} calls)")
        driver.sleep(0.0005)


def _until_admitted(driver: Driver, breaker: AnyBreaker, limit: float = 5.0) -> tuple[float, int]:
    """Call until admitted; return (seconds it took, rejections meanwhile)."""
    start = time.monotonic()
    rejected = 0
    while True:
        try:
            breaker.call(_ok)
        except CircuitOpenError:
            rejected += 1
        else:
            return time.monotonic() - start, rejected
        if time.monotonic() - start > limit:
            raise AssertionError(f"still rejecting after {limit}s ({rejected} calls)")
        driver.sleep(0.0005)


@pytest.mark.slow
def test_trip_elsewhere_reaches_cached_breaker_then_probes_in_redis(
    driver: Driver,
    real_stores: Callable[[], AnyStore],
) -> None:
    """Real clock and Redis: another store trips the breaker; this cached breaker rejects
    within 1 s, with retry_after ~ recovery_timeout; after recovery two cached breakers
    on two stores ask Redis and exactly one gets the probe (half_open_max_calls=1)."""
    recovery = 2.0
    settings = {"failure_threshold": 1, "recovery_timeout": recovery, "half_open_max_calls": 1}
    here, there = (
        _cached(driver, real_stores(), **settings),
        _cached(driver, real_stores(), **settings),
    )
    trips = _warm(driver, here)
    _warm(driver, there)

    before_trip = time.monotonic()
    with pytest.raises(Boom):
        there.call(_fail)
    propagation, rejected, admitted = _until_rejected(driver, here)
    asked_redis = trips.count("acquire")
    rejected_at = time.monotonic()
    assert propagation < 1.0
    assert rejected.state == "open"
    assert rejected.retry_after is not None
    assert recovery - (rejected_at - before_trip) - 0.01 <= rejected.retry_after <= recovery
    # The rejection is cached: further calls are rejected without a round trip.
    trips.take()
    for _ in range(10):
        with pytest.raises(CircuitOpenError):
            here.call(_ok)
    assert trips.take() == []

    driver.sleep(max(0.0, before_trip + recovery - time.monotonic()) + 0.3)
    # Both ask at once (threads released by a barrier; aio: both acquires in flight on
    # the loop together).
    asked = driver.concurrently(here.acquire, there.acquire)
    outcomes = dict(zip(("here", "there"), asked, strict=True))
    probes = [p for p in outcomes.values() if isinstance(unwrap(p), driver.api.Permit)]
    refused = [e for e in outcomes.values() if isinstance(e, CircuitOpenError)]
    assert len(probes) == 1, outcomes
    assert probes[0].is_probe
    assert [e.state for e in refused] == ["half_open"]
    probes[0].success()
    assert here.snapshot().state is State.CLOSED
    _figure(
        test="trip_propagation",
        propagation_ms=round(1000 * propagation, 1),
        admitted_after_trip=admitted,
        rejected_by="redis" if asked_redis else "feed",
        retry_after_s=round(rejected.retry_after, 3),
    )


@pytest.mark.slow
def test_operator_orders_clear_cached_rejections_elsewhere(
    driver: Driver,
    real_stores: Callable[[], AnyStore],
) -> None:
    """Real clock: force_open, a trip and force_open again are cached as rejections by a
    cached breaker on another store; force_close, reset and reset pushed on the feed let
    it admit again within 1 s each (the cached deadlines were 30-60 s away)."""
    settings = {"failure_threshold": 1, "recovery_timeout": 30}
    here = _cached(driver, real_stores(), **settings)
    operator = driver.breaker(NAME, store=real_stores(), **settings)
    _warm(driver, here)
    figures: dict[str, float] = {}

    operator.force_open(60)
    _, rejected, _ = _until_rejected(driver, here)
    assert rejected.state == "forced_open"
    assert operator.force_close() is State.FORCED_CLOSED
    took, _ = _until_admitted(driver, here)
    figures["force_close_ms"] = round(1000 * took, 1)
    assert took < 1.0

    assert operator.reset() is State.CLOSED
    with pytest.raises(Boom):
        operator.call(_fail)  # tripped elsewhere: open for 30 s
    _, rejected, _ = _until_rejected(driver, here)
    assert rejected.state == "open"
    assert operator.reset() is State.CLOSED
    took, _ = _until_admitted(driver, here)
    figures["reset_after_trip_ms"] = round(1000 * took, 1)
    assert took < 1.0

    operator.force_open(60)
    _until_rejected(driver, here)
    operator.reset()
    took, _ = _until_admitted(driver, here)
    figures["reset_after_force_open_ms"] = round(1000 * took, 1)
    assert took < 1.0
    _figure(test="operator_orders", **figures)


def test_forced_open_without_deadline_heard_on_the_feed_rejects_without_round_trips(
    driver: Driver, store: AnyStore, twin: Callable[[], AnyStore]
) -> None:
    """force_open() without a deadline elsewhere: the event alone turns this cached
    breaker's calls into local rejections (no round trip, not even the first), until the
    force_close heard on the feed lets it admit again (one acquire)."""
    here = _cached(driver, store, max_staleness=30)
    trips = _warm(driver, here)
    operator = driver.breaker(NAME, store=twin())
    operator.force_open()
    _, rejected, _ = _until_rejected(driver, here)
    assert (rejected.state, rejected.retry_after) == ("forced_open", None)
    for _ in range(100):
        with pytest.raises(CircuitOpenError):
            here.call(_ok)
    assert trips.take() == []
    operator.force_close()
    _until_admitted(driver, here)
    assert [t.script for t in trips.take()] == ["acquire"]


def test_forced_open_without_deadline_learned_from_redis_holds_for_max_staleness(
    driver: Driver,
    store: AnyStore,
    clock: ManualClock,
    twin: Callable[[], AnyStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a feed: one acquire learns forced_open (no deadline); the next 50 calls are
    rejected locally; once max_staleness passes, Redis is asked again (and admits after a
    reset made elsewhere)."""
    _no_feed(store, monkeypatch)
    here = _cached(driver, store, max_staleness=2)
    here.call(_ok)
    operator = driver.breaker(NAME, store=twin())
    operator.force_open()
    clock.advance(2)  # the admitting copy is stale: Redis decides
    trips = Trips(store)
    for _ in range(51):
        with pytest.raises(CircuitOpenError):
            here.call(_ok)
    assert trips.take() == [Trip("acquire")]
    operator.reset()
    clock.advance(1.9)
    with pytest.raises(CircuitOpenError):
        here.call(_ok)  # still held: max_staleness has not passed
    clock.advance(0.1)
    assert here.call(_ok) == "ok"
    assert trips.take() == [Trip("acquire")]


def test_own_order_lifts_a_held_forced_open_at_once(
    driver: Driver, store: AnyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached breaker holding a forced_open locally admits at once after its own
    force_close, without waiting to hear it (here: no feed at all)."""
    _no_feed(store, monkeypatch)
    here = _cached(driver, store, max_staleness=30)
    here.force_open()
    with pytest.raises(CircuitOpenError):
        here.call(_ok)
    here.force_close()
    assert here.call(_ok) == "ok"


# ------------------------------------------------------------------------------ flush


def test_flush_sends_the_batch_and_is_a_no_op_when_empty(
    driver: Driver, store: AnyStore, twin: Callable[[], AnyStore]
) -> None:
    """flush() sends the batched successes in one round trip (another store's snapshot
    shows them); with nothing batched it makes no round trip at all."""
    _feed_live(driver, store)
    breaker = _cached(driver, store, flush_interval=100)
    reader = driver.breaker(NAME, store=twin())
    trips = Trips(store)

    breaker.flush()  # a breaker that never ran
    assert trips.take() == []
    for _ in range(10):
        breaker.call(_ok)
    assert reader.snapshot().window_calls == 1  # only the strict admission so far
    breaker.flush()
    assert trips.take() == [Trip("acquire"), Trip("record", "flush", 9)]
    assert reader.snapshot().window_calls == 10
    breaker.flush()
    breaker.flush()
    assert trips.take() == []
    assert reader.snapshot().window_calls == 10


_EXITING_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import redbreaker

    store = redbreaker.connect(sys.argv[1])
    breaker = redbreaker.Breaker(
        sys.argv[2], store=store, consistency="cached", flush_interval=3600, max_staleness=3600
    )
    store.start_feed()
    deadline = time.monotonic() + 10
    while not store.feed_live and time.monotonic() < deadline:
        time.sleep(0.001)
    assert store.feed_live, "feed never subscribed"
    for _ in range(5):
        breaker.call(lambda: "ok")
    if sys.argv[3] == "os._exit":
        os._exit(0)  # no atexit hooks
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("exit_by", "expected"), [("return", 5), ("os._exit", 1)])
@pytest.mark.sync_only("the exit-time flush (aio has none: README)")
def test_exiting_process_flushes_its_batch(redis_url: str, exit_by: str, expected: int) -> None:
    """A process that makes 5 cached successes (flush_interval 1 h) and exits normally
    leaves all 5 in the shared window (the atexit flush); one that skips atexit hooks
    (os._exit) leaves only the call Redis admitted itself."""
    done = subprocess.run(
        [sys.executable, "-c", _EXITING_WORKER, redis_url, NAME, exit_by],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    store = redbreaker.connect(redis_url)
    try:
        snap = Breaker(NAME, store=store).snapshot()
    finally:
        store.close()
    assert (snap.exists, snap.window_calls) == (True, expected)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("value", ["eventual", "CACHED", "", None, 1])
def test_consistency_must_be_strict_or_cached(value: object) -> None:
    """consistency accepts only "strict" and "cached"; anything else names the field."""
    with pytest.raises(ConfigError) as bad:
        redbreaker.BreakerConfig(consistency=value)  # type: ignore[arg-type]
    assert bad.value.field == "consistency"
    assert isinstance(bad.value, ValueError)


@pytest.mark.parametrize("field", ["max_staleness", "flush_interval"])
@pytest.mark.parametrize("value", [0, -1, 0.0001, float("inf"), float("nan"), "1", True, None])
def test_cached_durations_must_be_positive(field: str, value: object) -> None:
    """max_staleness and flush_interval must be positive durations (>= 1 ms, finite)."""
    with pytest.raises(ConfigError) as bad:
        redbreaker.BreakerConfig(**{field: value})
    assert bad.value.field == field


def test_cached_settings_accept_seconds_and_timedelta(driver: Driver) -> None:
    """Defaults are strict / 1 s / 0.1 s; seconds and timedeltas are accepted, and a
    Breaker takes them as keyword settings."""
    default = redbreaker.BreakerConfig()
    assert (default.consistency, default.max_staleness, default.flush_interval) == (
        "strict",
        1.0,
        0.1,
    )
    config = redbreaker.BreakerConfig(
        consistency="cached", max_staleness=timedelta(seconds=2), flush_interval=0.25
    )
    assert config.consistency == "cached"
    store = driver.connect("memory://")
    try:
        breaker = driver.breaker(
            NAME, store=store, consistency="cached", max_staleness=timedelta(milliseconds=5)
        )
        assert breaker.config.consistency == "cached"
        assert breaker.call(_ok) == "ok"
        with pytest.raises(ConfigError) as bad:
            driver.breaker(NAME, store=store, consistency="eventual")
        assert bad.value.field == "consistency"
    finally:
        store.close()


def test_strict_is_unchanged(driver: Driver, store: AnyStore) -> None:
    """The default (strict) breaker still asks Redis on every call: 5 calls, 5 acquires."""
    trips = Trips(store)
    breaker = driver.breaker(NAME, store=store)
    for _ in range(5):
        breaker.call(_ok)
    assert trips.take() == [Trip("acquire")] * 5
    breaker.flush()  # nothing batched in strict mode
    assert trips.take() == []
