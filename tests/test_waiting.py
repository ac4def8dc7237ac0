"""Admission waiting: ``acquire(max_wait=...)`` and ``wait_admitting()``, both drivers.

The decisions (how long to nap, the jitter, deferrals) are tested on the core with an
injected random; the drivers are tested for what a consumer relies on: admitted once the
deadline passes, woken by the feed rather than a timer, only probe holders go on while
half-open, no polling of Redis, and a fleet's wake-ups spread out (real processes).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from redbreaker._waiting import (
    HALF_OPEN_BACKSTOP,
    NO_DEADLINE_BACKSTOP,
    AdmissionWait,
    defer_delay,
    max_wait_setting,
    wake_spread,
)

if TYPE_CHECKING:
    from drivers import Driver

# -- the core's decisions ---------------------------------------------------------------


def _rejection(state: str = "open", retry_after: float | None = 2.0) -> redbreaker.CircuitOpenError:
    return redbreaker.CircuitOpenError("dep", state, retry_after)


def test_a_nap_lasts_until_the_deadline_plus_a_jitter() -> None:
    wait = AdmissionWait(10.0, now=100.0, spread=0.2, random=lambda: 0.5)
    assert wait.nap(_rejection(retry_after=2.0), 100.0, feed_live=True) == pytest.approx(2.1)


def test_a_nap_never_outlasts_max_wait_and_a_spent_wait_naps_no_more() -> None:
    wait = AdmissionWait(1.0, now=0.0, spread=0.2, random=lambda: 0.0)
    assert wait.nap(_rejection(retry_after=30.0), 0.25, feed_live=True) == pytest.approx(0.75)
    assert wait.nap(_rejection(retry_after=30.0), 1.0, feed_live=True) is None
    assert AdmissionWait(0.0, now=5.0, spread=0.2).nap(_rejection(), 5.0, True) is None


def test_a_busy_half_open_breaker_is_waited_out_on_the_feed() -> None:
    wait = AdmissionWait(None, now=0.0, spread=0.1, random=lambda: 0.0)
    busy = _rejection("half_open", 0.05)
    # The probe's outcome is pushed: no re-asking every 50 ms while it runs.
    assert wait.nap(busy, 0.0, feed_live=True) == HALF_OPEN_BACKSTOP
    # Without a feed, the spread paces it (never the 50 ms guess alone).
    assert wait.nap(busy, 0.0, feed_live=False) == pytest.approx(0.1)


def test_no_deadline_is_waited_out_on_the_feed_with_a_backstop() -> None:
    wait = AdmissionWait(None, now=0.0, spread=0.1, random=lambda: 0.0)
    assert wait.nap(_rejection("forced_open", None), 0.0, feed_live=True) == NO_DEADLINE_BACKSTOP


def test_a_wake_up_is_followed_by_a_jittered_pause_within_the_wait() -> None:
    draws = iter([0.0, 0.999, 0.5])
    wait = AdmissionWait(1.0, now=0.0, spread=0.2, random=lambda: next(draws))
    assert wait.settle(0.0) == 0.0
    assert wait.settle(0.0) == pytest.approx(0.1998)
    assert wait.settle(0.95) == pytest.approx(0.05)  # what is left of max_wait


def test_deferrals_are_the_deadline_plus_jitter() -> None:
    assert defer_delay(_rejection(retry_after=3.0), 0.5, lambda: 0.5) == 3.25
    assert defer_delay(_rejection("forced_open", None), 0.5, lambda: 0.0) == NO_DEADLINE_BACKSTOP


@pytest.mark.parametrize(
    ("recovery_timeout", "spread"), [(30.0, 1.0), (2.0, 0.2), (0.1, 0.05)]
)
def test_the_spread_is_a_tenth_of_recovery_timeout_within_bounds(
    recovery_timeout: float, spread: float
) -> None:
    config = redbreaker.BreakerConfig(recovery_timeout=recovery_timeout)
    assert wake_spread(config) == pytest.approx(spread)


@pytest.mark.parametrize("bad", [-1, float("inf"), "5", True, 0.0001])
def test_a_bad_max_wait_is_a_config_error_naming_it(bad: object) -> None:
    with pytest.raises(redbreaker.ConfigError, match="max_wait"):
        max_wait_setting(bad)  # type: ignore[arg-type]
    breaker = redbreaker.Breaker("dep", store=redbreaker.connect("memory://"))
    with pytest.raises(redbreaker.ConfigError, match="max_wait"):
        breaker.acquire(max_wait=bad)  # type: ignore[arg-type]


def test_defer_delay_of_a_breaker_spreads_over_its_recovery_timeout() -> None:
    breaker = redbreaker.Breaker(
        "dep", store=redbreaker.connect("memory://"), recovery_timeout=2.0
    )
    delays = [breaker.defer_delay(_rejection(retry_after=1.0)) for _ in range(200)]
    assert all(1.0 <= d < 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.1  # spread out, not one value
    with pytest.raises(TypeError):
        breaker.defer_delay(ValueError("not a rejection"))  # type: ignore[arg-type]


# -- the drivers ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def target(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://wait-{uuid.uuid4().hex}"
    url: str = request.getfixturevalue("redis_url")
    return url


def _tripped(driver: Driver, target: str, **settings: Any) -> Any:
    store = driver.connect(target)
    breaker = driver.breaker("dep", store=store, failure_threshold=1, **settings)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    return breaker


def test_a_waiting_caller_is_admitted_as_the_probe_once_the_deadline_passes(
    driver: Driver, target: str
) -> None:
    breaker = _tripped(driver, target, recovery_timeout=0.4)
    started = time.monotonic()
    permit = breaker.acquire(max_wait=5)
    waited = time.monotonic() - started
    assert permit.is_probe
    assert waited >= 0.3  # never before the deadline (less the time the trip took)
    permit.success()
    assert breaker.snapshot().state == redbreaker.State.CLOSED


def test_a_wait_that_runs_out_raises_the_rejection(driver: Driver, target: str) -> None:
    breaker = _tripped(driver, target, recovery_timeout=30)
    with pytest.raises(redbreaker.CircuitOpenError) as caught:
        breaker.acquire(max_wait=0.2)
    assert caught.value.state == "open"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 25
    assert breaker.wait_admitting(max_wait=0.1) is False


def test_an_operators_order_wakes_the_waiters_through_the_feed(
    driver: Driver, target: str
) -> None:
    store = driver.connect(target)
    breaker = driver.breaker("dep", store=store, recovery_timeout=1)
    breaker.force_open()  # no deadline: only an order can end it
    operator = redbreaker.Breaker("dep", store=redbreaker.connect(target))
    timer = threading.Timer(0.3, operator.force_close)
    timer.start()
    try:
        started = time.monotonic()
        assert breaker.wait_admitting(max_wait=20) is True
        # The backstop is 5 s: waking sooner means the feed woke it.
        assert time.monotonic() - started < NO_DEADLINE_BACKSTOP - 1
        with breaker.acquire(max_wait=1):
            pass
    finally:
        timer.cancel()
        operator.store.close()


def test_while_half_open_only_the_probe_holder_goes_on(driver: Driver, target: str) -> None:
    breaker = _tripped(driver, target, recovery_timeout=0.3)
    probe = breaker.acquire(max_wait=5)
    assert probe.is_probe
    admitted: list[float] = []

    def waiter() -> object:
        permit = breaker.acquire(max_wait=10)
        admitted.append(time.monotonic())
        permit.success()
        return permit

    def probe_holder() -> object:
        driver.sleep(0.6)
        released = time.monotonic()
        probe.success()  # closes the breaker: pushed on the feed
        return released

    results = driver.concurrently(waiter, waiter, waiter, probe_holder)
    released = results[-1]
    assert not any(isinstance(r, Exception) for r in results), results
    assert len(admitted) == 3
    assert min(admitted) >= released  # nobody went on while the probe ran


@pytest.mark.slow
def test_a_waiter_does_not_poll_redis(driver: Driver, redis_url: str) -> None:
    breaker = _tripped(driver, redis_url, recovery_timeout=2.0)
    client = redis.Redis.from_url(redis_url)

    def script_calls() -> int:
        stats = client.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("fcall", "evalsha")
        )

    before = script_calls()
    with breaker.acquire(max_wait=10) as permit:
        assert permit.is_probe
    asked = script_calls() - before
    # Over 2 s: one ask learns the deadline, one after it takes the probe, one records
    # it; a loop polling every 10 ms would have asked ~200 times.
    print(f"script calls by a waiter through a 2 s open period: {asked}")
    assert asked <= 4, asked


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_fleet_woken_by_one_order_asks_over_a_spread_not_in_one_ms(
    redis_url: str, kind: str
) -> None:
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    settings = {"recovery_timeout": 1.0}  # spread: 100 ms
    operator = redbreaker.Breaker(name, store=redbreaker.connect(redis_url), **settings)
    operator.force_open()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    from wait_workers import wait_then_report

    workers = [
        ctx.Process(target=wait_then_report, args=(redis_url, name, settings, kind, out))
        for _ in range(6)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            assert out.get(timeout=60)[0] == "ready"
        time.sleep(1.5)  # every worker is waiting on the feed by now
        operator.force_close()
        reports = [out.get(timeout=30) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        operator.store.close()
    assert all(kind == "admitted" for kind, _ in reports), reports
    times = sorted(ms for _, ms in reports)
    assert len(set(times)) >= 4, times
    assert times[-1] - times[0] >= 10, times


@pytest.mark.parametrize(
    ("policy", "admitting"), [("allow", True), ("local", True), ("reject", False)]
)
def test_waiting_while_redis_is_unreachable_follows_on_store_error(
    driver: Driver, policy: str, admitting: bool
) -> None:
    # Nothing listens on port 1: what acquire() would do then is what on_store_error says.
    store = driver.connect("redis://127.0.0.1:1/0")
    breaker = driver.breaker("dep", store=store, on_store_error=policy)
    assert breaker.wait_admitting(max_wait=0.3) is admitting
