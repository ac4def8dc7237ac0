"""Behaviour of one breaker: trip rules, open/half-open cycle, fencing, classification,
permits, operator orders, persistence, hooks, snapshots and hostile hash content.

Every test runs on both drivers (``redbreaker`` and ``redbreaker.aio``, through the
``driver`` fixture), on the embedded store and on a real redis-server (decode_responses off
and on) through the ``store`` fixture. Time moves only through ``clock.advance``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from redbreaker import CircuitOpenError, State, Transition

if TYPE_CHECKING:
    from collections.abc import Callable

    from drivers import AnyBreaker, AnyStore, Driver

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


class DownError(ConnectionError):
    """The dependency failed."""


class Counter:
    """A guarded function that counts its calls and fails or returns on demand."""

    def __init__(self) -> None:
        self.calls = 0

    def ok(self, value: object = "ok") -> object:
        self.calls += 1
        return value

    def fail(self) -> None:
        self.calls += 1
        raise DownError("down")


def key_of(store: AnyStore, name: str) -> str:
    return f"{store.prefix}:{{{name}}}"


def make(
    driver: Driver,
    store: AnyStore,
    name: str = "dep",
    *,
    seen: list[Transition] | None = None,
    **kw: Any,
) -> AnyBreaker:
    hooks: list[Callable[[Transition], None]] = [] if seen is None else [seen.append]
    return driver.breaker(name, store=store, on_transition=hooks, **kw)


def fail_times(breaker: AnyBreaker, fn: Counter, n: int) -> None:
    for _ in range(n):
        with pytest.raises(DownError):
            breaker.call(fn.fail)


def rejected(breaker: AnyBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    return info.value


def moves(seen: list[Transition]) -> list[tuple[State | None, State, str]]:
    return [(t.previous, t.current, t.reason) for t in seen]


# -- 1. consecutive failures -------------------------------------------------------------


def test_trips_on_nth_consecutive_failure(driver: Driver, store: AnyStore) -> None:
    """failure_threshold=3 keeps the breaker closed after 2 failures and opens it on the 3rd."""
    seen: list[Transition] = []
    breaker = make(driver, store, seen=seen, failure_threshold=3, recovery_timeout=10)
    fn = Counter()
    fail_times(breaker, fn, 2)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 2)
    assert seen == []
    fail_times(breaker, fn, 1)
    assert breaker.state is OPEN
    assert moves(seen) == [(CLOSED, OPEN, "consecutive_failures")]
    assert fn.calls == 3


def test_success_between_failures_resets_streak(driver: Driver, store: AnyStore) -> None:
    """fail, fail, success, fail, fail leaves a streak of 2 (closed); one more failure opens."""
    breaker = make(driver, store, failure_threshold=3)
    fn = Counter()
    fail_times(breaker, fn, 2)
    assert breaker.call(fn.ok) == "ok"
    assert breaker.snapshot().consecutive_failures == 0
    fail_times(breaker, fn, 2)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 2)
    fail_times(breaker, fn, 1)
    assert breaker.state is OPEN


def test_open_rejects_without_calling(driver: Driver, store: AnyStore) -> None:
    """While open, calls raise CircuitOpenError(name, "open", recovery_timeout); fn never runs."""
    breaker = make(driver, store, "payments", failure_threshold=2, recovery_timeout=10)
    fn = Counter()
    fail_times(breaker, fn, 2)
    assert fn.calls == 2
    for _ in range(5):
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(fn.ok)
        assert info.value.name == "payments"
        assert info.value.state == "open"
        assert info.value.retry_after == pytest.approx(10.0)
    assert fn.calls == 2


def test_first_rejection_retry_after_is_exact(driver: Driver, store: AnyStore) -> None:
    """The rejection right after the trip carries retry_after == recovery_timeout exactly."""
    breaker = make(driver, store, failure_threshold=1, recovery_timeout=10)
    fail_times(breaker, Counter(), 1)
    err = rejected(breaker)
    assert (err.name, err.state, err.retry_after) == ("dep", "open", 10.0)


# -- 2. failure rate over the window ----------------------------------------------------


def rate_breaker(driver: Driver, store: AnyStore, seen: list[Transition] | None = None) -> Any:
    return make(
        driver,
        store,
        seen=seen,
        failure_rate=0.5,
        minimum_calls=10,
        failure_threshold=None,
        window=60,
    )


def test_failure_rate_needs_minimum_calls_then_trips(driver: Driver, store: AnyStore) -> None:
    """4 failures + 5 successes (9 calls) stay closed; a 10th call failing (5/10) trips."""
    seen: list[Transition] = []
    breaker = rate_breaker(driver, store, seen)
    fn = Counter()
    fail_times(breaker, fn, 4)
    for _ in range(5):
        breaker.call(fn.ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 9, 4)
    fail_times(breaker, fn, 1)
    assert breaker.state is OPEN
    assert moves(seen) == [(CLOSED, OPEN, "failure_rate")]


def test_failure_rate_below_threshold_does_not_trip(driver: Driver, store: AnyStore) -> None:
    """4 failures + 6 successes (rate 0.4 over 10 calls) stay closed."""
    breaker = rate_breaker(driver, store)
    fn = Counter()
    fail_times(breaker, fn, 4)
    for _ in range(6):
        breaker.call(fn.ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 10, 4)
    assert snap.failure_rate == 0.4


def test_failures_inside_window_still_count(driver: Driver, store: AnyStore, clock: Any) -> None:
    """9 failures, 30 s later a 10th failure: all 10 are in the 60 s window, so it trips."""
    breaker = rate_breaker(driver, store)
    fn = Counter()
    fail_times(breaker, fn, 9)
    assert breaker.state is CLOSED
    clock.advance(30)
    fail_times(breaker, fn, 1)
    assert breaker.state is OPEN


def test_old_buckets_age_out(driver: Driver, store: AnyStore, clock: Any) -> None:
    """9 failures, then past the window 9 successes + 1 failure: old failures are forgotten."""
    breaker = rate_breaker(driver, store)
    fn = Counter()
    fail_times(breaker, fn, 9)
    clock.advance(61)
    assert breaker.snapshot().window_calls == 0
    for _ in range(9):
        breaker.call(fn.ok)
    fail_times(breaker, fn, 1)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 10, 1)


# -- 3. slow calls ---------------------------------------------------------------------


def test_slow_call_rate_trips(driver: Driver, store: AnyStore, clock: Any) -> None:
    """Calls that take >= 1 s are slow; 2 slow of 4 calls (rate 0.5) trip "slow_call_rate"."""
    seen: list[Transition] = []
    breaker = make(
        driver,
        store,
        seen=seen,
        slow_call_duration=1.0,
        slow_call_rate=0.5,
        failure_threshold=None,
        minimum_calls=4,
    )

    def takes(seconds: float) -> Callable[[], str]:
        def fn() -> str:
            clock.advance(seconds)
            return "done"

        return fn

    assert breaker.call(takes(0.999)) == "done"
    assert breaker.call(takes(0)) == "done"
    assert breaker.call(takes(1.0)) == "done"
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_slow_calls) == (CLOSED, 3, 1)
    assert breaker.call(takes(2.5)) == "done"
    assert breaker.state is OPEN
    assert moves(seen) == [(CLOSED, OPEN, "slow_call_rate")]


# -- 4. open duration growth and jitter ------------------------------------------------


def test_open_duration_grows_caps_and_resets(driver: Driver, store: AnyStore, clock: Any) -> None:
    """Open 10 s; failed probes re-open for 20, 40, then 60 (cap) twice; a close resets to 10."""
    breaker = make(
        driver,
        store,
        failure_threshold=1,
        recovery_timeout=10,
        recovery_backoff=2,
        max_recovery_timeout=60,
    )
    fn = Counter()
    fail_times(breaker, fn, 1)
    assert rejected(breaker).retry_after == 10.0
    durations = []
    for wait in (10, 20, 40, 60):
        clock.advance(wait)
        fail_times(breaker, fn, 1)  # the probe fails
        durations.append(rejected(breaker).retry_after)
    assert durations == [20.0, 40.0, 60.0, 60.0]
    assert breaker.snapshot().consecutive_opens == 5
    clock.advance(60)
    assert breaker.call(fn.ok) == "ok"
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_opens) == (CLOSED, 0)
    fail_times(breaker, fn, 1)
    assert rejected(breaker).retry_after == 10.0


def test_jitter_shortens_open_duration_within_bounds(
    driver: Driver, store: AnyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """recovery_jitter=0.5: sample 0.0 gives the full 10 s, sample 0.999 gives floor(5004.99) ms."""
    breaker = make(driver, store, failure_threshold=1, recovery_timeout=10, recovery_jitter=0.5)
    fn = Counter()
    monkeypatch.setattr(breaker._core, "_random", lambda: 0.0)
    fail_times(breaker, fn, 1)
    assert rejected(breaker).retry_after == 10.0
    breaker.reset()
    monkeypatch.setattr(breaker._core, "_random", lambda: 0.999)
    fail_times(breaker, fn, 1)
    retry_after = rejected(breaker).retry_after
    assert retry_after == math.floor(10_000 * (1 - 0.5 * 0.999)) / 1000 == 5.004
    assert 10 * 0.5 <= retry_after <= 10


# -- 5. half-open ------------------------------------------------------------------------


def half_open(driver: Driver, store: AnyStore, clock: Any, seen: Any = None, **kw: Any) -> Any:
    """A breaker tripped by one failure and moved past its 10 s recovery timeout."""
    settings: dict[str, Any] = {"failure_threshold": 1, "recovery_timeout": 10, **kw}
    breaker = make(driver, store, seen=seen, **settings)
    fail_times(breaker, Counter(), 1)
    clock.advance(10)
    return breaker


def test_half_open_admits_exactly_max_calls_probes(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """half_open_max_calls=2 admits two probes; the third acquire is rejected as half_open."""
    breaker = half_open(driver, store, clock, half_open_max_calls=2, probe_lease=5)
    p1, p2 = breaker.acquire(), breaker.acquire()
    assert (p1.is_probe, p2.is_probe) == (True, True)
    err = rejected(breaker)
    # Probes usually report in ms: wait a little, not the 5 s lease.
    assert (err.state, err.retry_after) == ("half_open", 0.05)
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight) == (HALF_OPEN, 2)


def test_half_open_retry_after_grows_with_the_probes_age(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """With every slot taken, retry_after is the oldest probe's age (at least 50 ms),
    never past the end of its lease."""
    breaker = half_open(driver, store, clock, half_open_max_calls=1, probe_lease=5)
    assert breaker.acquire().is_probe
    waits = []
    for step in (0.01, 0.2, 1.0, 2.0, 1.5):
        clock.advance(step)
        waits.append(rejected(breaker).retry_after)
    # ages 0.01, 0.21, 1.21, 3.21, 4.71 s; lease left 4.99, 4.79, 3.79, 1.79, 0.29 s
    assert waits == [0.05, 0.21, 1.21, 1.79, 0.29]


def test_unsettled_probe_frees_slot_after_lease(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """A probe never settled holds its slot until probe_lease has passed, then frees it."""
    breaker = half_open(driver, store, clock, probe_lease=5)
    assert breaker.acquire().is_probe
    clock.advance(4.999)
    err = rejected(breaker)
    assert (err.state, err.retry_after) == ("half_open", 0.001)
    clock.advance(0.001)
    assert breaker.snapshot().probes_in_flight == 0
    permit = breaker.acquire()
    assert permit.is_probe
    assert breaker.snapshot().probes_in_flight == 1


def test_success_threshold_needs_that_many_probe_successes(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """success_threshold=2: one probe success keeps half_open, the second closes."""
    seen: list[Transition] = []
    breaker = half_open(driver, store, clock, seen, half_open_max_calls=2, success_threshold=2)
    p1, p2 = breaker.acquire(), breaker.acquire()
    p1.success()
    snap = breaker.snapshot()
    assert (snap.state, snap.half_open_successes, snap.probes_in_flight) == (HALF_OPEN, 1, 1)
    p2.success()
    snap = breaker.snapshot()
    assert (snap.state, snap.half_open_successes, snap.probes_in_flight) == (CLOSED, 0, 0)
    assert moves(seen)[-1] == (HALF_OPEN, CLOSED, "probes_succeeded")


def test_probe_failure_reopens(driver: Driver, store: AnyStore, clock: Any) -> None:
    """A failing probe re-opens the breaker ("probe_failed"); the other probe's outcome is stale."""
    seen: list[Transition] = []
    breaker = half_open(driver, store, clock, seen, half_open_max_calls=2)
    p1, p2 = breaker.acquire(), breaker.acquire()
    p1.failure()
    assert moves(seen)[-1] == (HALF_OPEN, OPEN, "probe_failed")
    before = breaker.snapshot()
    assert before.probes_in_flight == 1  # p2 still runs: its slot outlives the re-open
    p2.success()
    assert breaker.snapshot() == dataclasses.replace(before, probes_in_flight=0)
    err = rejected(breaker)
    assert (err.state, err.retry_after) == ("open", 10.0)


def test_half_open_max_wait_reopens(driver: Driver, store: AnyStore, clock: Any) -> None:
    """A half-open breaker whose probe never reports re-opens after half_open_max_wait."""
    seen: list[Transition] = []
    breaker = half_open(driver, store, clock, seen, probe_lease=60, half_open_max_wait=20)
    assert breaker.acquire().is_probe
    clock.advance(19.999)
    assert rejected(breaker).state == "half_open"
    clock.advance(0.001)
    err = rejected(breaker)
    assert (err.state, err.retry_after) == ("open", 10.0)
    assert moves(seen)[-1] == (HALF_OPEN, OPEN, "half_open_max_wait")
    snap = breaker.snapshot()
    # The silent probe keeps its slot until its 60 s lease ends: it may still be running.
    assert (snap.consecutive_opens, snap.probes_in_flight) == (2, 1)


# -- 6. generation fencing -------------------------------------------------------------


def test_stale_permit_failure_changes_nothing(driver: Driver, store: AnyStore, clock: Any) -> None:
    """A permit from before a trip settles as stale: snapshot unchanged, and never counted."""
    breaker = make(driver, store, failure_threshold=2, recovery_timeout=10)
    fn = Counter()
    old = breaker.acquire()
    old2 = breaker.acquire()
    assert old.generation == old2.generation == 1
    fail_times(breaker, fn, 2)
    before = breaker.snapshot()
    assert before.state is OPEN
    old.failure()
    assert breaker.snapshot() == before
    clock.advance(10)
    assert breaker.call(fn.ok) == "ok"  # probe closes it
    assert breaker.state is CLOSED
    old2.failure()
    assert breaker.snapshot().consecutive_failures == 0
    fail_times(breaker, fn, 1)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 1)


def test_stale_probe_changes_nothing_and_frees_lease(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """A probe from an older half-open period settles as stale; the current probe is unaffected."""
    breaker = half_open(driver, store, clock)
    stale = breaker.acquire()
    assert stale.is_probe
    breaker.reset()
    fail_times(breaker, Counter(), 1)
    clock.advance(10)
    current = breaker.acquire()
    assert current.is_probe
    assert current.generation > stale.generation
    before = breaker.snapshot()
    assert (before.state, before.probes_in_flight) == (HALF_OPEN, 1)
    stale.failure()
    assert breaker.snapshot() == before
    current.success()
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight) == (CLOSED, 0)


def test_stale_probe_lease_is_freed_when_settled(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """A probe settled after half_open_max_wait re-opened the breaker frees its lease."""
    breaker = half_open(driver, store, clock, probe_lease=60, half_open_max_wait=20)
    probe = breaker.acquire()
    clock.advance(20)
    probe.success()  # the record call itself applies half_open_max_wait: stale
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight, snap.half_open_successes) == (OPEN, 0, 0)
    assert store.client.zcard(key_of(store, "dep") + ":probes") == 0


# -- 7. classification ------------------------------------------------------------------


def test_record_on_ignores_other_exceptions(driver: Driver, store: AnyStore) -> None:
    """record_on=(ConnectionError,): a ValueError passes through unchanged and counts nothing."""
    breaker = make(driver, store, failure_threshold=1, record_on=(ConnectionError,))
    error = ValueError("bad input")

    def raises() -> None:
        raise error

    for _ in range(3):
        with pytest.raises(ValueError, match="bad input") as info:
            breaker.call(raises)
        assert info.value is error
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.window_calls) == (CLOSED, 0, 0)
    fail_times(breaker, Counter(), 1)
    assert breaker.state is OPEN


def test_ignore_on_wins_over_record_on(driver: Driver, store: AnyStore) -> None:
    """ConnectionResetError matches record_on and ignore_on: ignored, the breaker stays closed."""
    breaker = make(
        driver,
        store,
        failure_threshold=1,
        record_on=ConnectionError,
        ignore_on=(ConnectionResetError,),
    )

    def reset_by_peer() -> None:
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        breaker.call(reset_by_peer)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.window_calls) == (CLOSED, 0, 0)


def test_failure_result_marks_result_a_failure(driver: Driver, store: AnyStore) -> None:
    """failure_result=lambda r: r == 503: 200 is a success, a returned 503 is a failure."""
    breaker = make(driver, store, failure_threshold=2, failure_result=lambda r: r == 503)
    fn = Counter()
    assert breaker.call(fn.ok, 200) == 200
    assert breaker.call(fn.ok, 503) == 503
    assert breaker.snapshot().consecutive_failures == 1
    assert breaker.call(fn.ok, 503) == 503
    assert breaker.state is OPEN


def test_keyboard_interrupt_on_probe_releases_lease(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """KeyboardInterrupt in a probe propagates, frees the lease, counts nothing."""
    breaker = half_open(driver, store, clock, probe_lease=60)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight, snap.half_open_successes) == (HALF_OPEN, 0, 0)
    permit = breaker.acquire()
    assert permit.is_probe


def test_keyboard_interrupt_on_closed_call_counts_nothing(driver: Driver, store: AnyStore) -> None:
    """KeyboardInterrupt in a closed call propagates and neither fails nor resets the streak."""
    breaker = make(driver, store, failure_threshold=3)
    fail_times(breaker, Counter(), 2)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    snap = breaker.snapshot()
    # Admission counted the call; its outcome added no failure and kept the streak.
    assert (snap.state, snap.consecutive_failures) == (CLOSED, 2)
    assert (snap.window_calls, snap.window_failures) == (3, 2)


# -- 8. permit API -----------------------------------------------------------------------


def test_permit_context_manager(driver: Driver, store: AnyStore) -> None:
    """Leaving the block is a success; a raised failure is counted and re-raised."""
    breaker = make(driver, store, failure_threshold=3)
    with breaker.acquire() as permit:
        assert not permit.is_probe
        assert permit.generation == 1
    with pytest.raises(DownError), breaker.acquire():
        raise DownError("down")
    assert breaker.snapshot().consecutive_failures == 1
    with breaker.acquire():
        pass
    assert breaker.snapshot().consecutive_failures == 0


def test_settling_twice_raises(driver: Driver, store: AnyStore) -> None:
    """A second success/failure/release, or settling after the with block, raises PermitError."""
    breaker = make(driver, store)
    permit = breaker.acquire()
    permit.success()
    with pytest.raises(redbreaker.PermitError):
        permit.success()
    with pytest.raises(redbreaker.PermitError):
        permit.failure()
    with pytest.raises(redbreaker.PermitError):
        permit.release()
    with breaker.acquire() as used:
        pass
    with pytest.raises(redbreaker.PermitError):
        used.failure()
    assert breaker.snapshot().consecutive_failures == 0


def test_permit_failure_classifies_exception(driver: Driver, store: AnyStore) -> None:
    """failure(exc) uses record_on/ignore_on; failure() without exc always counts."""
    breaker = make(driver, store, failure_threshold=10, record_on=ConnectionError)
    breaker.acquire().failure(ValueError("not ours"))
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.window_calls) == (0, 0)
    breaker.acquire().failure(KeyboardInterrupt())
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.window_calls) == (0, 1)
    breaker.acquire().failure(DownError("down"))
    breaker.acquire().failure()
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.window_calls, snap.window_failures) == (2, 3, 2)


def test_decorator_keeps_metadata_and_arguments(driver: Driver, store: AnyStore) -> None:
    """@breaker keeps __name__/__doc__ and passes args and kwargs through."""
    breaker = make(driver, store, failure_threshold=1)

    @breaker
    def charge(order: int, *, amount: float = 0.0) -> tuple[int, float]:
        """Charge an order."""
        return order, amount

    assert charge.__name__ == "charge"
    assert charge.__doc__ == "Charge an order."
    assert charge(7, amount=2.5) == (7, 2.5)
    assert charge(8) == (8, 0.0)
    assert breaker.snapshot().window_calls == 2


# -- 9. operator states -----------------------------------------------------------------


def test_force_open_without_deadline(driver: Driver, store: AnyStore, clock: Any) -> None:
    """force_open() rejects with retry_after None forever; the keys have no TTL."""
    breaker = make(driver, store)
    fn = Counter()
    assert breaker.force_open() is State.FORCED_OPEN
    for _ in range(2):
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(fn.ok)
        assert (info.value.state, info.value.retry_after) == ("forced_open", None)
    assert store.client.pttl(key_of(store, "dep")) == -1
    clock.advance(86_400 * 3)
    assert rejected(breaker).state == "forced_open"
    assert fn.calls == 0


def test_force_open_with_deadline(driver: Driver, store: AnyStore, clock: Any) -> None:
    """force_open(30) rejects with retry_after 30 and closes when the deadline passes."""
    seen: list[Transition] = []
    breaker = make(driver, store, seen=seen)
    fn = Counter()
    assert breaker.force_open(30) is State.FORCED_OPEN
    pttl = store.client.pttl(key_of(store, "dep"))
    assert 0 < pttl <= (86_400 + 30) * 1000
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(fn.ok)
    assert (info.value.state, info.value.retry_after) == ("forced_open", 30.0)
    clock.advance(29.999)
    assert rejected(breaker).state == "forced_open"
    clock.advance(0.001)
    assert breaker.call(fn.ok) == "ok"
    assert fn.calls == 1
    assert moves(seen) == [
        (CLOSED, State.FORCED_OPEN, "operator:force_open"),
        (State.FORCED_OPEN, CLOSED, "operator_deadline_passed"),
    ]
    assert breaker.state is CLOSED


def test_force_close_admits_and_never_trips(driver: Driver, store: AnyStore) -> None:
    """force_close() admits every call, even 20 failures with failure_threshold=2."""
    breaker = make(driver, store, failure_threshold=2)
    fn = Counter()
    assert breaker.force_close() is State.FORCED_CLOSED
    fail_times(breaker, fn, 20)
    assert fn.calls == 20
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.open_count) == (State.FORCED_CLOSED, 0, 0)
    assert store.client.pttl(key_of(store, "dep")) == -1


def test_force_close_from_open_admits(driver: Driver, store: AnyStore) -> None:
    """force_close() of an open breaker admits calls at once."""
    breaker = make(driver, store, failure_threshold=1)
    fn = Counter()
    fail_times(breaker, fn, 1)
    rejected(breaker)
    breaker.force_close(60)
    assert breaker.call(fn.ok) == "ok"
    pttl = store.client.pttl(key_of(store, "dep"))
    assert 0 < pttl <= (86_400 + 60) * 1000


def test_metrics_only_reports_would_trip(driver: Driver, store: AnyStore) -> None:
    """metrics_only admits and counts; each threshold crossing is a would_trip transition."""
    seen: list[Transition] = []
    breaker = make(driver, store, seen=seen, failure_threshold=3)
    fn = Counter()
    assert breaker.metrics_only() is State.METRICS_ONLY
    generation = breaker.snapshot().generation
    fail_times(breaker, fn, 2)
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.would_trip_count) == (2, 0)
    fail_times(breaker, fn, 1)
    would = seen[-1]
    assert (would.previous, would.current) == (State.METRICS_ONLY, State.METRICS_ONLY)
    assert would.reason.startswith("would_trip:")
    assert would.reason == "would_trip:consecutive_failures"
    assert would.generation == generation
    snap = breaker.snapshot()
    assert (snap.state, snap.would_trip_count, snap.consecutive_failures) == (
        State.METRICS_ONLY,
        1,
        0,
    )
    fail_times(breaker, fn, 3)
    assert breaker.snapshot().would_trip_count == 2
    assert fn.calls == 6
    assert store.client.pttl(key_of(store, "dep")) == -1


def test_reset_from_open_closes_with_empty_counts(driver: Driver, store: AnyStore) -> None:
    """reset() of an open breaker closes it with no counts, no backoff, and admits at once."""
    seen: list[Transition] = []
    breaker = make(
        driver, store, seen=seen, failure_threshold=2, failure_rate=0.5, minimum_calls=10
    )
    fn = Counter()
    fail_times(breaker, fn, 2)
    rejected(breaker)
    assert breaker.reset() is CLOSED
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.window_calls, snap.window_failures) == (
        CLOSED,
        0,
        0,
        0,
    )
    assert (snap.consecutive_opens, snap.last_reason) == (0, "reset")
    assert moves(seen)[-1] == (OPEN, CLOSED, "reset")
    assert breaker.call(fn.ok) == "ok"
    assert 0 < store.client.pttl(key_of(store, "dep")) <= 86_400_000


# -- 10. persistence --------------------------------------------------------------------


def test_second_breaker_object_sees_open_state(driver: Driver, store: AnyStore) -> None:
    """A new Breaker with the same name sees the open state and does not reset it."""
    first = make(driver, store, failure_threshold=2, recovery_timeout=10)
    fail_times(first, Counter(), 2)
    before = first.snapshot()
    second = make(driver, store, failure_threshold=2, recovery_timeout=10)
    assert second.snapshot() == before
    assert second.state is OPEN
    fn = Counter()
    with pytest.raises(CircuitOpenError):
        second.call(fn.ok)
    assert fn.calls == 0


def test_failure_count_survives_new_instance(driver: Driver, store: AnyStore) -> None:
    """3 failures of one instance are seen by a new one, whose 2 more failures trip (5)."""
    fail_times(make(driver, store, failure_threshold=5), Counter(), 3)
    second = make(driver, store, failure_threshold=5)
    assert second.snapshot().consecutive_failures == 3
    fail_times(second, Counter(), 1)
    assert second.state is CLOSED
    fail_times(second, Counter(), 1)
    assert second.state is OPEN


def test_keys_carry_ttl_after_writes(driver: Driver, store: AnyStore, clock: Any) -> None:
    """After writes both keys expire within key_ttl (1000 s)."""
    breaker = make(driver, store, failure_threshold=2, key_ttl=1000)
    fail_times(breaker, Counter(), 1)
    pttl = store.client.pttl(key_of(store, "dep"))
    assert 0 < pttl <= 1_000_000
    fail_times(breaker, Counter(), 1)
    clock.advance(30)
    assert breaker.acquire().is_probe
    for key in (key_of(store, "dep"), key_of(store, "dep") + ":probes"):
        pttl = store.client.pttl(key)
        assert 0 < pttl <= 1_000_000


# -- 11. hooks ---------------------------------------------------------------------------


def test_hooks_see_only_own_transitions(driver: Driver, store: AnyStore, clock: Any) -> None:
    """on_transition gets exactly this breaker's transitions, generations increasing."""
    seen: list[Transition] = []
    mine = make(driver, store, seen=seen, failure_threshold=2, recovery_timeout=10)
    other = make(driver, store, failure_threshold=2, recovery_timeout=10)
    fail_times(mine, Counter(), 2)
    start = clock.server_ms()
    clock.advance(10)
    other.call(Counter().ok)  # open -> half_open -> closed, made by `other`
    mine.force_open()
    mine.reset()
    assert [(t.previous, t.current, t.reason, t.generation) for t in seen] == [
        (CLOSED, OPEN, "consecutive_failures", 2),
        (CLOSED, State.FORCED_OPEN, "operator:force_open", 5),
        (State.FORCED_OPEN, CLOSED, "reset", 6),
    ]
    assert [t.at_ms for t in seen] == [start, start + 10_000, start + 10_000]
    assert {t.name for t in seen} == {"dep"}


def test_hook_sees_both_transitions_of_one_call(
    driver: Driver, store: AnyStore, clock: Any
) -> None:
    """A probe success made by one call reports open->half_open and half_open->closed."""
    seen: list[Transition] = []
    breaker = half_open(driver, store, clock, seen)
    breaker.call(Counter().ok)
    assert [(t.previous, t.current, t.reason, t.generation) for t in seen] == [
        (CLOSED, OPEN, "consecutive_failures", 2),
        (OPEN, HALF_OPEN, "recovery_timeout_elapsed", 3),
        (HALF_OPEN, CLOSED, "probes_succeeded", 4),
    ]


def test_raising_hook_does_not_break_call(
    driver: Driver, store: AnyStore, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged; the call's exception and result pass through unchanged."""
    calls: list[Transition] = []

    def broken(transition: Transition) -> None:
        calls.append(transition)
        raise RuntimeError("hook bug")

    breaker = driver.breaker(
        "dep", store=store, failure_threshold=1, recovery_timeout=10, on_transition=[broken]
    )
    error = DownError("down")

    def fails() -> None:
        raise error

    with caplog.at_level(logging.ERROR, logger="redbreaker"), pytest.raises(DownError) as info:
        breaker.call(fails)
    assert info.value is error
    assert breaker.state is OPEN
    assert any("hook" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    clock.advance(10)
    assert breaker.call(lambda: 42) == 42
    assert [t.current for t in calls] == [OPEN, HALF_OPEN, CLOSED]


# -- 12. snapshot fields ------------------------------------------------------------------


def test_snapshot_before_first_use(driver: Driver, store: AnyStore, clock: Any) -> None:
    """A never-used breaker reads as a fresh closed breaker with exists False."""
    snap = make(driver, store, "fresh").snapshot()
    assert snap.exists is False
    assert (snap.state, snap.generation, snap.window_calls, snap.probes_in_flight) == (
        CLOSED,
        1,
        0,
        0,
    )
    assert (snap.failure_rate, snap.open_until_ms, snap.retry_after) == (None, None, 0.0)
    assert snap.now_ms == clock.server_ms()
    assert store.client.exists(key_of(store, "fresh")) == 0


def test_snapshot_counts_after_known_sequence(driver: Driver, store: AnyStore) -> None:
    """3 successes and 2 failures: 5 calls, 2 failures, rate 0.4, streak 2."""
    breaker = make(driver, store, failure_threshold=5)
    fn = Counter()
    for _ in range(3):
        breaker.call(fn.ok)
    fail_times(breaker, fn, 2)
    snap = breaker.snapshot()
    assert snap.exists is True
    assert (snap.window_calls, snap.window_failures, snap.failure_rate) == (5, 2, 0.4)
    assert (snap.consecutive_failures, snap.window_slow_calls, snap.slow_call_rate) == (2, 0, 0.0)
    assert (snap.state, snap.generation, snap.open_count) == (CLOSED, 1, 0)


def test_snapshot_open_and_half_open_fields(driver: Driver, store: AnyStore, clock: Any) -> None:
    """open_until_ms/retry_after while open, probes_in_flight while half-open."""
    breaker = make(driver, store, failure_threshold=1, recovery_timeout=10, half_open_max_calls=3)
    tripped_at = clock.server_ms()
    fail_times(breaker, Counter(), 1)
    snap = breaker.snapshot()
    assert (snap.state, snap.open_until_ms, snap.retry_after) == (OPEN, tripped_at + 10_000, 10.0)
    assert (snap.open_count, snap.consecutive_opens, snap.generation) == (1, 1, 2)
    assert (snap.window_calls, snap.consecutive_failures) == (0, 0)
    assert snap.last_reason == "consecutive_failures"
    clock.advance(4)
    assert breaker.snapshot().retry_after == 6.0
    clock.advance(6)
    assert breaker.snapshot().state is OPEN  # inspect applies no transition
    permits = [breaker.acquire(), breaker.acquire()]
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight, snap.open_until_ms, snap.retry_after) == (
        HALF_OPEN,
        2,
        None,
        0.0,
    )
    permits[0].release()
    assert breaker.snapshot().probes_in_flight == 1


# -- 13. hostile hash content -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "previous"),
    [
        ("state", "banana", None),
        ("generation", "-3", CLOSED),
        ("consecutive_failures", "abc", CLOSED),
        ("open_until", "1.5", CLOSED),
    ],
)
def test_mangled_field_self_repairs(  # noqa: PLR0917 (fixtures and parameters)
    driver: Driver,
    store: AnyStore,
    clock: Any,
    field: str,
    value: str,
    previous: State | None,
) -> None:
    """A hand-mangled field makes the next call repair the breaker closed and admit the call."""
    seen: list[Transition] = []
    breaker = make(driver, store, seen=seen, failure_threshold=3)
    fail_times(breaker, Counter(), 2)
    store.client.hset(key_of(store, "dep"), field, value)
    fn = Counter()
    assert breaker.call(fn.ok) == "ok"
    assert fn.calls == 1
    assert len(seen) == 1
    repair = seen[0]
    assert (repair.previous, repair.current, repair.reason) == (
        previous,
        CLOSED,
        "repaired_invalid_fields",
    )
    expected_generation = clock.server_ms() + 1 if field == "generation" else 2
    assert repair.generation == expected_generation
    snap = breaker.snapshot()
    assert (snap.state, snap.generation, snap.consecutive_failures) == (
        CLOSED,
        expected_generation,
        0,
    )
    assert snap.last_reason == "repaired_invalid_fields"
    fail_times(breaker, Counter(), 3)
    assert breaker.state is OPEN


def test_wrong_key_type_raises_store_error(driver: Driver, store: AnyStore) -> None:
    """A string at the breaker's key gives StoreError naming the key, not a redis error."""
    breaker = make(driver, store)
    key = key_of(store, "dep")
    store.client.set(key, "x")
    fn = Counter()
    with pytest.raises(redbreaker.StoreError) as info:
        breaker.call(fn.ok)
    assert not isinstance(info.value, redis.RedisError)
    assert key in str(info.value)
    assert fn.calls == 0
    with pytest.raises(redbreaker.StoreError) as inspected:
        breaker.snapshot()
    assert key in str(inspected.value)
    with pytest.raises(redbreaker.StoreError) as ordered:
        breaker.force_open()
    assert key in str(ordered.value)
    assert store.client.get(key) in (b"x", "x")
