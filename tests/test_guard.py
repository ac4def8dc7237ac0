"""The guard: retry, attempt timeout and fallback composed around one breaker.

Most tests use a private embedded store on a ManualClock, so backoff sleeps only move the
clock. The headline scenarios also run on a real redis-server through the ``store``
fixture. Timeout tests use a real-clock embedded store and budgets of a few tens of ms.

Every test that means the same for both drivers runs on both (``redbreaker`` and
``redbreaker.aio``, through the ``driver`` fixture). The sync-only ones are about what
only the sync guard has: attempts abandoned in its attempt threads (and their cap), and
its attempt runner, replaced by an inline one on the manual clock; ``test_aio.py`` has
their asyncio twins (attempts cancelled on timeout, the deadline on a manual clock).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import types
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import redbreaker
from drivers import unwrap
from redbreaker import (
    AttemptInfo,
    AttemptRejectedError,
    AttemptTimeoutError,
    Breaker,
    CircuitOpenError,
    ConfigError,
    Failure,
    GuardConfig,
    LastGoodValue,
    ManualClock,
    Outcome,
    State,
    fallback_value,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from drivers import AnyStore, Driver


# -- helpers ---------------------------------------------------------------------------


class Script:
    """A stand-in dependency: each call plays the next step, the last step repeats.

    A step that is an exception class is raised as a fresh instance, an exception instance
    is raised as is, anything else is returned. ``raised`` keeps every exception raised,
    ``started_ms`` the clock (when given) at the start of each call.
    """

    def __init__(self, *steps: object, clock: ManualClock | None = None) -> None:
        self.steps = steps
        self.clock = clock
        self.calls = 0
        self.raised: list[BaseException] = []
        self.started_ms: list[int] = []
        self.args: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.clock is not None:
            self.started_ms.append(self.clock.server_ms())
        self.args.append((args, kwargs))
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        if isinstance(step, type) and issubclass(step, BaseException):
            step = step(f"call {self.calls}")
        if isinstance(step, BaseException):
            self.raised.append(step)
            raise step
        return step


class ThrottledError(Exception):
    """A 429-like error that says when to come back."""

    def __init__(self, retry_after: object) -> None:
        super().__init__(f"throttled, retry after {retry_after!r}")
        self.retry_after = retry_after


class RecordingClock(ManualClock):
    """A ManualClock that notes when (server ms) each of its sleeps ended."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        super().__init__(start_ms)
        self.sleep_ends_ms: list[int] = []

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.sleep_ends_ms.append(self.server_ms())


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The captured records of one redbreaker ``event``."""
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def fixed_random(*samples: float) -> Callable[[], float]:
    """A stand-in for ``random.random`` that cycles through ``samples``."""
    state = {"i": 0}

    def sample() -> float:
        value = samples[state["i"] % len(samples)]
        state["i"] += 1
        return value

    return sample


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds (real time); fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def _testing_mode_off() -> Iterator[None]:
    """Every test starts with set_testing off; whatever a test sets is undone after it."""
    with redbreaker.set_testing(False):
        yield


@pytest.fixture
def mem(driver: Driver, clock: ManualClock) -> AnyStore:
    """A private embedded store of the test's driver, on the test's ManualClock (the driver
    closes it)."""
    return driver.connect("memory://", clock=clock)


@pytest.fixture
def rt_store() -> Iterator[redbreaker.Store]:
    """A private embedded store on real time (for attempt timeouts)."""
    store = redbreaker.connect("memory://")
    yield store
    store.close()


# -- the named scenarios (every store kind) ------------------------------------


def test_retry_succeeds_on_second_attempt(
    driver: Driver, store: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A retryable failure then a success: 2 calls, the value, one WARNING retry log."""
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    breaker = driver.breaker("retry-ok", store=store)
    fn = Script(ConnectionError, "ok")
    outcome = breaker.guard(retry_on=ConnectionError).outcome(fn)
    assert outcome == Outcome("ok", False, None, 2)
    assert fn.calls == 2
    retries = events(caplog, "retry")
    assert [(r.levelno, r.attempt, r.max_attempts) for r in retries] == [(logging.WARNING, 1, 3)]
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.window_calls, snap.window_failures) == (0, 1, 0)


def test_retry_gives_up_with_the_last_original_exception(driver: Driver, store: AnyStore) -> None:
    """After max_attempts the very last exception object is raised, unwrapped."""
    breaker = driver.breaker("give-up", store=store)
    fn = Script(ConnectionError)
    with pytest.raises(ConnectionError) as info:
        breaker.guard(retry_on=ConnectionError, max_attempts=4).call(fn)
    assert fn.calls == 4
    assert len(fn.raised) == 4
    assert info.value is fn.raised[-1]
    assert type(info.value) is ConnectionError
    assert str(info.value) == "call 4"
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.window_calls, snap.window_failures) == (1, 1, 1)


def test_breaker_opens_after_threshold_logical_calls_then_fails_fast(
    driver: Driver,
    store: AnyStore,
) -> None:
    """N logical calls of 3 attempts each open a threshold-N breaker; then fn is not called."""
    breaker = driver.breaker("threshold", store=store, failure_threshold=3, recovery_timeout=30)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=3)
    fn = Script(ConnectionError)
    for logical in range(1, 3):
        with pytest.raises(ConnectionError):
            guard.call(fn)
        snap = breaker.snapshot()
        assert (snap.state, snap.consecutive_failures) == (State.CLOSED, logical)
    with pytest.raises(ConnectionError):
        guard.call(fn)
    assert fn.calls == 9
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        guard.call(fn)
    assert (info.value.state, info.value.retry_after) == ("open", 30.0)
    assert fn.calls == 9


def test_non_critical_dependency_degrades_logs_and_counts(
    driver: Driver, store: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing dependency with a fallback: flagged degraded, WARNING event=degraded, counted."""
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    breaker = driver.breaker("recommendations", store=store)
    guard = breaker.guard(
        retry_on=ConnectionError, max_attempts=2, fallback=fallback_value(["popular"])
    )
    fn = Script(ConnectionError)
    outcome = guard.outcome(fn)
    assert outcome.value == ["popular"]
    assert outcome.degraded is True
    assert outcome.attempts == 2
    assert outcome.failure == Failure("retries_exhausted", fn.raised[-1], "recommendations", 2)
    assert outcome.failure.exception is fn.raised[-1]
    [record] = events(caplog, "degraded")
    assert record.levelno == logging.WARNING
    assert (record.breaker, record.reason, record.attempts, record.error) == (
        "recommendations",
        "retries_exhausted",
        2,
        "ConnectionError",
    )
    assert "retries_exhausted" in record.getMessage()
    assert guard.degraded_counts == {"retries_exhausted": 1}
    assert guard.call(Script(ValueError)) == ["popular"]
    assert guard.degraded_counts == {"retries_exhausted": 1, "error": 1}


def test_value_error_is_not_retried_when_retry_on_names_connection_error(
    driver: Driver, store: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """retry_on=(ConnectionError,): a ValueError ends the call after one attempt."""
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    breaker = driver.breaker("no-retry", store=store)
    fn = Script(ValueError)
    with pytest.raises(ValueError, match="call 1") as info:
        breaker.guard(retry_on=(ConnectionError,), max_attempts=5).call(fn)
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert events(caplog, "retry") == []


# -- retry_on, retry_result ----------------------------------------------------------


def test_nothing_is_retried_without_retry_on(driver: Driver, mem: AnyStore) -> None:
    """With retry_on unset, even max_attempts=5 makes one attempt."""
    fn = Script(ConnectionError)
    with pytest.raises(ConnectionError):
        driver.breaker("no-retry-on", store=mem).guard(max_attempts=5).call(fn)
    assert fn.calls == 1


def test_retry_on_predicate_decides(driver: Driver, mem: AnyStore) -> None:
    """A predicate retry_on retries what it accepts and stops at what it refuses."""
    fn = Script(OSError("transient"), OSError("transient"), OSError("fatal"), "never")
    guard = driver.breaker("predicate", store=mem).guard(
        max_attempts=5, retry_on=lambda exc: str(exc) == "transient"
    )
    with pytest.raises(OSError, match="fatal"):
        guard.call(fn)
    assert fn.calls == 3


def test_retry_result_retries_then_returns_the_last_value(
    driver: Driver, mem: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """retry_result retries a marked value; when attempts run out the last value returns."""
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    guard = driver.breaker("retry-result", store=mem).guard(
        max_attempts=3, retry_result=lambda value: value is None
    )
    assert guard.outcome(Script(None, None, "ok")) == Outcome("ok", False, None, 3)
    fn = Script(None, None, None, "late")
    assert guard.outcome(fn) == Outcome(None, False, None, 3)
    assert fn.calls == 3
    assert [r.error for r in events(caplog, "retry")] == ["result"] * 4


# -- composition ---------------------------------------------------------------------


def test_composition_order_attempts_then_one_breaker_outcome_then_fallback(
    driver: Driver,
    mem: AnyStore,
) -> None:
    """Attempts (each with its hook) run first, then ONE breaker record, then the fallback."""
    seen: list[str] = []

    def on_transition(t: redbreaker.Transition) -> None:
        assert t.previous is not None
        seen.append(f"transition {t.previous.value}->{t.current.value}")

    def on_attempt(info: AttemptInfo) -> None:
        seen.append(f"attempt {info.attempt}/{info.max_attempts} {type(info.exception).__name__}")

    def fallback(failure: Failure) -> str:
        seen.append(f"fallback {failure.reason} {failure.attempts}")
        return "degraded"

    def fn() -> str:
        seen.append("call")
        raise ConnectionError("down")

    breaker = driver.breaker("order", store=mem, failure_threshold=1, on_transition=on_transition)
    guard = breaker.guard(
        max_attempts=3, retry_on=ConnectionError, on_attempt=on_attempt, fallback=fallback
    )
    assert guard.call(fn) == "degraded"
    assert seen == [
        "call",
        "attempt 1/3 ConnectionError",
        "call",
        "attempt 2/3 ConnectionError",
        "call",
        "attempt 3/3 ConnectionError",
        "transition closed->open",
        "fallback retries_exhausted 3",
    ]
    seen.clear()
    outcome = guard.outcome(fn)
    assert seen == ["fallback circuit_open 0"]
    assert outcome.failure is not None
    assert isinstance(outcome.failure.exception, CircuitOpenError)
    assert outcome.failure.exception.state == "open"
    assert (outcome.degraded, outcome.attempts) == (True, 0)
    assert guard.degraded_counts == {"retries_exhausted": 1, "circuit_open": 1}


def test_breaker_records_one_outcome_per_logical_call(driver: Driver, store: AnyStore) -> None:
    """Streak and window move by one per logical call, however many attempts it made."""
    breaker = driver.breaker("one-outcome", store=store, failure_threshold=10)
    guard = breaker.guard(max_attempts=3, retry_on=ConnectionError)
    fn = Script(ConnectionError)
    for logical in range(1, 4):
        with pytest.raises(ConnectionError):
            guard.call(fn)
        snap = breaker.snapshot()
        assert (snap.consecutive_failures, snap.window_calls, snap.window_failures) == (
            logical,
            logical,
            logical,
        )
    assert fn.calls == 9
    assert guard.call(Script(ConnectionError, ConnectionError, "ok")) == "ok"
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.window_calls, snap.window_failures) == (0, 4, 3)


@pytest.mark.sync_only("attempts abandoned in the sync guard's attempt threads")
def test_each_attempt_is_timed_out_separately(rt_store: redbreaker.Store) -> None:
    """attempt_timeout sits inside retry: 3 hung attempts, each cut at its own 0.05 s."""
    release = threading.Event()
    calls: list[int] = []
    infos: list[AttemptInfo] = []

    def hang() -> None:
        calls.append(1)
        release.wait(1)

    breaker = Breaker("per-attempt", store=rt_store, slow_call_duration=10)
    guard = breaker.guard(
        attempt_timeout=0.05,
        retry_on=(AttemptTimeoutError,),
        max_attempts=3,
        backoff_base=0.001,
        backoff_max=0.001,
        on_attempt=infos.append,
    )
    try:
        with pytest.raises(AttemptTimeoutError) as info:
            guard.call(hang)
        assert (info.value.name, info.value.budget) == ("per-attempt", 0.05)
        assert [(i.attempt, i.max_attempts, i.duration) for i in infos] == [
            (1, 3, 0.05),
            (2, 3, 0.05),
            (3, 3, 0.05),
        ]
        assert all(isinstance(i.exception, AttemptTimeoutError) for i in infos)
        assert infos[-1].exception is info.value
        snap = breaker.snapshot()
        assert (snap.window_calls, snap.window_failures, snap.window_slow_calls) == (1, 1, 1)
        assert snap.consecutive_failures == 1
    finally:
        release.set()
    wait_for(lambda: breaker.abandoned_attempts == 0)
    assert len(calls) == 3


@pytest.mark.sync_only("attempts abandoned in the sync guard's attempt threads")
def test_single_timeout_is_reason_timeout_and_a_slow_failure_whatever_record_on(
    rt_store: redbreaker.Store,
) -> None:
    """One timed-out attempt: reason "timeout", recorded as failure + slow despite record_on."""
    release = threading.Event()
    breaker = Breaker("timeout-reason", store=rt_store, record_on=ValueError, slow_call_duration=10)
    guard = breaker.guard(attempt_timeout=0.05, fallback=fallback_value("stale"))
    try:
        outcome = guard.outcome(lambda: release.wait(1))
    finally:
        release.set()
    assert outcome.value == "stale"
    assert outcome.failure is not None
    assert (outcome.failure.reason, outcome.failure.attempts) == ("timeout", 1)
    assert isinstance(outcome.failure.exception, AttemptTimeoutError)
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.window_slow_calls) == (1, 1, 1)
    wait_for(lambda: breaker.abandoned_attempts == 0)


# -- never retried -------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry_on", [Exception, (CircuitOpenError, ConnectionError), lambda exc: True]
)
def test_circuit_open_error_from_a_nested_breaker_is_not_retried(
    driver: Driver, mem: AnyStore, retry_on: Any
) -> None:
    """A CircuitOpenError raised inside fn ends the call at once, whatever retry_on says."""
    inner = driver.breaker("inner-dependency", store=mem)
    inner.force_open()
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        return inner.call(lambda: "never")

    guard = driver.breaker("outer-service", store=mem).guard(max_attempts=3, retry_on=retry_on)
    with pytest.raises(CircuitOpenError) as info:
        guard.call(driver.nested(fn))
    assert (info.value.name, info.value.state) == ("inner-dependency", "forced_open")
    assert len(calls) == 1


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_base_exceptions_propagate_unretried_and_uncounted(
    driver: Driver, mem: AnyStore, kind: type[BaseException]
) -> None:
    """KeyboardInterrupt & co: raised at once, no fallback, only the admission is counted."""
    breaker = driver.breaker("interrupted", store=mem)
    with pytest.raises(ConnectionError):
        breaker.call(Script(ConnectionError))
    before = breaker.snapshot()
    fallback_calls: list[Failure] = []
    guard = breaker.guard(
        max_attempts=3,
        retry_on=(kind, ConnectionError),
        fallback=fallback_calls.append,
    )
    fn = Script(kind)
    with pytest.raises(kind) as info:
        guard.call(fn)
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert fallback_calls == []
    after = breaker.snapshot()
    assert after.window_calls == before.window_calls + 1
    assert (after.state, after.generation, after.consecutive_failures) == (
        before.state,
        before.generation,
        before.consecutive_failures,
    )
    assert (after.window_failures, after.window_slow_calls) == (1, 0)


@pytest.mark.sync_only("the cap on attempts abandoned in the sync guard's threads")
def test_attempt_rejected_error_is_not_retried_and_counts_nothing(
    rt_store: redbreaker.Store,
) -> None:
    """At the abandoned-attempt cap a call fails fast: fn never runs, no retry, no count."""
    release = threading.Event()
    breaker = Breaker("saturated", store=rt_store, attempt_threads=2, max_abandoned_attempts=1)
    fn = Script("never")
    try:
        with pytest.raises(AttemptTimeoutError):
            breaker.guard(attempt_timeout=0.2).call(lambda: release.wait(5))
        assert breaker.abandoned_attempts == 1
        before = breaker.snapshot()
        guard = breaker.guard(
            attempt_timeout=1, max_attempts=3, retry_on=Exception, fallback=lambda f: f
        )
        outcome = guard.outcome(fn)
    finally:
        release.set()
    assert fn.calls == 0
    failure = outcome.value
    assert isinstance(failure, Failure)
    assert isinstance(failure.exception, AttemptRejectedError)
    assert (failure.reason, failure.attempts, outcome.attempts) == ("error", 1, 1)
    after = breaker.snapshot()
    assert (after.window_calls, after.window_failures, after.consecutive_failures) == (
        before.window_calls,
        before.window_failures,
        before.consecutive_failures,
    )
    wait_for(lambda: breaker.abandoned_attempts == 0)


def test_half_open_probe_is_a_single_attempt(
    driver: Driver, store: AnyStore, clock: ManualClock
) -> None:
    """A half-open probe that fails retryably makes exactly 1 call and re-opens the breaker."""
    breaker = driver.breaker("probe", store=store, failure_threshold=1, recovery_timeout=5)
    with pytest.raises(ConnectionError):
        breaker.call(Script(ConnectionError))
    assert breaker.state is State.OPEN
    clock.advance(5)
    infos: list[AttemptInfo] = []
    guard = breaker.guard(max_attempts=3, retry_on=ConnectionError, on_attempt=infos.append)
    fn = Script(ConnectionError)
    with pytest.raises(ConnectionError):
        guard.call(fn)
    assert fn.calls == 1
    assert [(i.attempt, i.max_attempts) for i in infos] == [(1, 1)]
    snap = breaker.snapshot()
    assert (snap.state, snap.open_count, snap.last_reason) == (State.OPEN, 2, "probe_failed")


# -- re-check between attempts ---------------------------------------------------------


@pytest.mark.parametrize("how", ["force_open", "trip"])
def test_recheck_stops_retrying_into_a_breaker_opened_meanwhile(
    driver: Driver, mem: AnyStore, how: str
) -> None:
    """Another Breaker object opens it during attempt 1: no attempt 2, CircuitOpenError."""
    breaker = driver.breaker("shared", store=mem, failure_threshold=1)
    other = driver.breaker("shared", store=mem, failure_threshold=1)
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if how == "force_open":
            other.force_open()
        else:
            other.acquire().failure()
        raise ConnectionError("down")

    guard = breaker.guard(max_attempts=3, retry_on=ConnectionError)
    with pytest.raises(CircuitOpenError) as info:
        guard.call(driver.nested(fn))
    assert info.value.state == ("forced_open" if how == "force_open" else "open")
    assert len(calls) == 1


def test_recheck_hands_the_fallback_circuit_open_after_one_attempt(
    driver: Driver,
    mem: AnyStore,
) -> None:
    """Opened during attempt 1: the fallback gets reason circuit_open and attempts == 1."""
    breaker = driver.breaker("shared-fb", store=mem)
    other = driver.breaker("shared-fb", store=mem)
    fn = Script(ConnectionError)

    def first_attempt() -> str:
        other.force_open()
        return fn()

    guard = breaker.guard(max_attempts=3, retry_on=ConnectionError, fallback=lambda f: f)
    outcome = guard.outcome(driver.nested(first_attempt))
    assert fn.calls == 1
    failure = outcome.value
    assert isinstance(failure, Failure)
    assert failure.reason == "circuit_open"
    assert isinstance(failure.exception, CircuitOpenError)
    # One attempt ran; the rejected re-check is not an attempt.
    assert (failure.attempts, outcome.attempts) == (1, 1)


def test_without_recheck_the_retries_go_on(driver: Driver, mem: AnyStore) -> None:
    """recheck_breaker=False: opened during attempt 1, all 3 attempts still run."""
    breaker = driver.breaker("no-recheck", store=mem)
    other = driver.breaker("no-recheck", store=mem)
    fn = Script(ConnectionError)

    def attempt() -> str:
        other.force_open()
        return fn()

    guard = breaker.guard(max_attempts=3, retry_on=ConnectionError, recheck_breaker=False)
    with pytest.raises(ConnectionError) as info:
        guard.call(driver.nested(attempt))
    assert info.value is fn.raised[-1]
    assert fn.calls == 3
    assert breaker.state is State.FORCED_OPEN


# -- server-directed delay --------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected_ms"),
    [(2.0, 2000), (2, 2000), (timedelta(seconds=2), 2000), (30.0, 30000), (60, 60000)],
)
def test_retry_after_is_slept_exactly_as_given(
    driver: Driver, mem: AnyStore, clock: ManualClock, retry_after: object, expected_ms: int
) -> None:
    """An exception's retry_after is slept as given: not jittered, not capped by backoff_max."""
    guard = driver.breaker("throttled", store=mem).guard(
        retry_on=ThrottledError, max_attempts=2, backoff_base=0.1, backoff_max=5
    )
    guard._random = fixed_random(0.25)
    fn = Script(ThrottledError(retry_after), "ok", clock=clock)
    assert guard.call(fn) == "ok"
    assert fn.started_ms[1] - fn.started_ms[0] == expected_ms


@pytest.mark.parametrize("retry_after", [-1, True, "2", None, math.nan])
def test_unusable_retry_after_falls_back_to_jittered_backoff(
    driver: Driver, mem: AnyStore, clock: ManualClock, retry_after: object
) -> None:
    """A retry_after that is not a non-negative number is ignored: the jittered backoff runs."""
    guard = driver.breaker("bad-retry-after", store=mem).guard(
        retry_on=ThrottledError, max_attempts=2, backoff_base=0.1, backoff_max=5
    )
    guard._random = fixed_random(0.5)
    fn = Script(ThrottledError(retry_after), "ok", clock=clock)
    assert guard.call(fn) == "ok"
    assert fn.started_ms[1] - fn.started_ms[0] == 50


def test_retry_after_past_the_deadline_gives_up_at_once(
    driver: Driver, mem: AnyStore, clock: ManualClock
) -> None:
    """retry_after=2 with deadline=1.5: one attempt, its exception raised, no sleep."""
    guard = driver.breaker("throttled-deadline", store=mem).guard(
        retry_on=ThrottledError, max_attempts=3, deadline=1.5
    )
    fn = Script(ThrottledError(2.0), "never", clock=clock)
    before = clock.server_ms()
    with pytest.raises(ThrottledError) as info:
        guard.call(fn)
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert clock.server_ms() == before


@pytest.mark.parametrize(("retry_after", "max_retry_after"), [(61, 60.0), (5.001, 5)])
def test_retry_after_above_max_retry_after_gives_up_at_once(
    driver: Driver, mem: AnyStore, clock: ManualClock, retry_after: float, max_retry_after: float
) -> None:
    """retry_after above max_retry_after: one attempt, its exception raised, no sleep."""
    guard = driver.breaker("throttled-max", store=mem).guard(
        retry_on=ThrottledError, max_attempts=3, max_retry_after=max_retry_after
    )
    fn = Script(ThrottledError(retry_after), "never", clock=clock)
    before = clock.server_ms()
    with pytest.raises(ThrottledError) as info:
        guard.call(fn)
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert clock.server_ms() == before


# -- backoff --------------------------------------------------------------------------


def test_backoff_is_full_jitter_of_the_capped_exponential(
    driver: Driver, mem: AnyStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each sleep is sample * min(backoff_max, backoff_base * 2**(n-1)), exactly."""
    caplog.set_level(logging.WARNING, logger="redbreaker")
    guard = driver.breaker("backoff", store=mem).guard(
        retry_on=ConnectionError, max_attempts=6, backoff_base=1.0, backoff_max=8.0
    )
    samples = (0.5, 0.999)
    guard._random = fixed_random(*samples)
    fn = Script(ConnectionError, clock=clock)
    with pytest.raises(ConnectionError):
        guard.call(fn)
    expected = [samples[(n - 1) % 2] * min(8.0, 1.0 * 2 ** (n - 1)) for n in range(1, 6)]
    assert [r.delay for r in events(caplog, "retry")] == expected
    deltas = [b - a for a, b in zip(fn.started_ms, fn.started_ms[1:], strict=False)]
    assert deltas == [500, 1998, 2000, 7992, 4000]


def test_many_attempts_do_not_overflow_the_backoff(
    driver: Driver, mem: AnyStore, clock: ManualClock
) -> None:
    """2000 attempts: 2**n never overflows, and every sleep stays within backoff_max."""
    guard = driver.breaker("many", store=mem).guard(
        retry_on=ConnectionError,
        max_attempts=2000,
        backoff_base=0.001,
        backoff_max=1.0,
        recheck_breaker=False,
    )
    guard._random = fixed_random(0.999)
    fn = Script(ConnectionError, clock=clock)
    with pytest.raises(ConnectionError):
        guard.call(fn)
    assert fn.calls == 2000
    deltas = [b - a for a, b in zip(fn.started_ms, fn.started_ms[1:], strict=False)]
    assert len(deltas) == 1999
    assert max(deltas) == 999
    assert deltas[-1] == 999


# -- deadline -------------------------------------------------------------------------


class InlineRunner:
    """Stands in for the attempt threads: runs the attempt inline on the manual clock.

    An attempt that would take longer than its budget moves the clock by the budget and
    times out, as the thread runner would hand control back.
    """

    def __init__(self, clock: ManualClock, durations_ms: list[int]) -> None:
        self.clock = clock
        self.durations_ms = durations_ms
        self.budgets: list[float] = []
        self.started_ms: list[int] = []
        self.last: BaseException | str | None = None

    def run(self, fn: Callable[[], Any], budget: float, watcher: Any = None) -> Any:
        self.started_ms.append(self.clock.server_ms())
        self.budgets.append(budget)
        wanted_ms = self.durations_ms[(len(self.budgets) - 1) % len(self.durations_ms)]
        if wanted_ms > round(budget * 1000):
            self.clock.advance(budget)
            self.last = AttemptTimeoutError("deadline", budget, started=True)
            raise self.last
        self.clock.advance(wanted_ms / 1000)
        try:
            self.last = fn()
        except Exception as exc:
            self.last = exc
            raise
        return self.last


@pytest.mark.sync_only("replaces the sync guard's attempt runner (InlineRunner)")
def test_deadline_is_never_overshot() -> None:
    """Property: no sleep ends past the deadline, no attempt starts at it, none runs past it."""

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        start_ms=st.sampled_from([1_700_000_000_000, 0]) | st.integers(0, 4 * 10**12),
        base_ms=st.integers(1, 2000),
        extra_cap_ms=st.integers(0, 8000),
        deadline_ms=st.integers(1, 20000),
        attempt_timeout_ms=st.none() | st.integers(1, 5000),
        max_attempts=st.integers(1, 12),
        durations_ms=st.lists(st.integers(0, 4000), min_size=1, max_size=12),
        samples=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=12),
        succeed_at=st.none() | st.integers(0, 11),
    )
    # The sleep (0.9996 s, the clock moves by whole ms: 1 s) lands exactly on the deadline.
    @example(
        start_ms=1_700_000_000_000,
        base_ms=1000,
        extra_cap_ms=0,
        deadline_ms=1000,
        attempt_timeout_ms=None,
        max_attempts=2,
        durations_ms=[0],
        samples=[0.9996],
        succeed_at=None,
    )
    # 2.011 s is 2011.0000000000002 ms in floats: a plain ceiling gave a 2012 ms budget.
    @example(
        start_ms=1_700_000_000_000,
        base_ms=1,
        extra_cap_ms=0,
        deadline_ms=2011,
        attempt_timeout_ms=None,
        max_attempts=1,
        durations_ms=[0],
        samples=[0.0],
        succeed_at=None,
    )
    # Attempt 2 ends exactly on the deadline; in float seconds deadline_at is 1 ulp later.
    @example(
        start_ms=1_700_000_000_002,
        base_ms=1,
        extra_cap_ms=0,
        deadline_ms=200,
        attempt_timeout_ms=None,
        max_attempts=3,
        durations_ms=[100],
        samples=[0.0],
        succeed_at=None,
    )
    def check(
        *,
        start_ms: int,
        base_ms: int,
        extra_cap_ms: int,
        deadline_ms: int,
        attempt_timeout_ms: int | None,
        max_attempts: int,
        durations_ms: list[int],
        samples: list[float],
        succeed_at: int | None,
    ) -> None:
        clock = RecordingClock(start_ms)
        store = redbreaker.connect("memory://", clock=clock)
        try:
            breaker = Breaker("deadline", store=store)
            runner = InlineRunner(clock, durations_ms)
            breaker._attempt_runner = lambda: runner  # type: ignore[method-assign]
            calls: list[int] = []

            def fn() -> str:
                calls.append(1)
                if len(calls) - 1 == succeed_at:
                    return "ok"
                raise ConnectionError(f"attempt {len(calls)}")

            guard = breaker.guard(
                retry_on=(ConnectionError, AttemptTimeoutError),
                max_attempts=max_attempts,
                backoff_base=base_ms / 1000,
                backoff_max=(base_ms + extra_cap_ms) / 1000,
                deadline=deadline_ms / 1000,
                attempt_timeout=None if attempt_timeout_ms is None else attempt_timeout_ms / 1000,
                fallback=lambda failure: failure,
            )
            guard._random = fixed_random(*samples)
            outcome = guard.outcome(fn)
        finally:
            store.close()
        deadline_at_ms = start_ms + deadline_ms

        assert all(end <= deadline_at_ms for end in clock.sleep_ends_ms)
        assert all(started < deadline_at_ms for started in runner.started_ms)
        assert clock.server_ms() - start_ms <= deadline_ms
        for started, budget in zip(runner.started_ms, runner.budgets, strict=True):
            left_ms = deadline_at_ms - started
            wanted = left_ms if attempt_timeout_ms is None else min(attempt_timeout_ms, left_ms)
            assert round(budget * 1000) == wanted
        assert outcome.attempts == len(runner.budgets) <= max_attempts
        # A zero-second sleep is skipped, so at most one sleep between two attempts.
        assert len(clock.sleep_ends_ms) <= len(runner.budgets) - 1
        if outcome.degraded:
            assert outcome.failure is not None
            assert outcome.failure.exception is runner.last
        else:
            assert outcome.value == "ok" == runner.last

    check()


def test_a_sleep_ending_on_the_deadline_gives_up_with_the_last_error(
    driver: Driver, mem: AnyStore, clock: ManualClock
) -> None:
    """A last sleep that lands on the deadline ends the call with fn's own last exception."""
    guard = driver.breaker("on-the-deadline", store=mem).guard(
        retry_on=ConnectionError,
        max_attempts=2,
        backoff_base=1.0,
        backoff_max=1.0,
        deadline=1.0,
        fallback=lambda failure: failure,
    )
    # 0.9996 s passes the "ends before the deadline" check; the clock (like a real sleep
    # that oversleeps) moves by a little more: 1 s, exactly the deadline.
    guard._random = fixed_random(0.9996)
    fn = Script(ConnectionError, clock=clock)
    outcome = guard.outcome(fn)
    assert fn.calls == 1
    failure = outcome.value
    assert isinstance(failure, Failure)
    assert failure.exception is fn.raised[0]
    assert (failure.reason, failure.attempts, outcome.attempts) == ("error", 1, 1)


@pytest.mark.sync_only("replaces the sync guard's attempt runner (InlineRunner)")
def test_an_attempt_ending_on_the_deadline_is_the_last() -> None:
    """Attempt 2 ends exactly on the deadline: no attempt 3 starts, its error is raised."""
    # At this start time, float seconds put deadline_at 1 ulp after start + 200 ms.
    clock = ManualClock(1_700_000_000_002)
    store = redbreaker.connect("memory://", clock=clock)
    try:
        breaker = Breaker("deadline-edge", store=store)
        runner = InlineRunner(clock, [100])
        breaker._attempt_runner = lambda: runner  # type: ignore[method-assign]
        guard = breaker.guard(
            retry_on=(ConnectionError, AttemptTimeoutError),
            max_attempts=3,
            backoff_base=0.001,
            backoff_max=0.001,
            deadline=0.2,
            fallback=lambda failure: failure,
        )
        guard._random = fixed_random(0.0)
        fn = Script(ConnectionError, clock=clock)
        outcome = guard.outcome(fn)
    finally:
        store.close()
    assert runner.started_ms == [1_700_000_000_002, 1_700_000_000_102]
    assert fn.calls == 2
    failure = outcome.value
    assert isinstance(failure, Failure)
    assert failure.exception is fn.raised[-1]
    assert (failure.reason, failure.attempts, outcome.attempts) == ("retries_exhausted", 2, 2)


# -- nesting --------------------------------------------------------------------------


def test_nested_guarded_calls_do_not_multiply(driver: Driver, mem: AnyStore) -> None:
    """Outer 3 x inner 3 attempts cost 3 calls, not 9; the inner guard alone still retries."""
    fn = Script(ConnectionError)
    inner = driver.breaker("nested-db", store=mem)
    outer = driver.breaker("nested-api", store=mem)
    fetch = inner.guard(max_attempts=3, retry_on=ConnectionError)(fn)
    with pytest.raises(ConnectionError):
        outer.guard(max_attempts=3, retry_on=ConnectionError).call(fetch)
    assert fn.calls == 3
    assert inner.snapshot().consecutive_failures == 3
    assert outer.snapshot().consecutive_failures == 1
    with pytest.raises(ConnectionError):
        fetch()
    assert fn.calls == 6
    assert inner.snapshot().consecutive_failures == 4


def test_nested_guard_in_an_attempt_thread_runs_once(driver: Driver, mem: AnyStore) -> None:
    """The outer attempt runs under an attempt timeout (the sync guard: in one of its
    threads): the inner guard still makes 1 attempt."""
    fn = Script(ConnectionError)
    fetch = driver.breaker("nested-db-t", store=mem).guard(
        max_attempts=3, retry_on=ConnectionError
    )(fn)
    guard = driver.breaker("nested-api-t", store=mem).guard(
        max_attempts=3, retry_on=ConnectionError, attempt_timeout=5
    )
    with pytest.raises(ConnectionError):
        guard.call(fetch)
    assert fn.calls == 3


# -- fallback -------------------------------------------------------------------------


def test_fallback_exception_is_chained_to_the_original(driver: Driver, mem: AnyStore) -> None:
    """An exception the fallback raises propagates with __cause__ = the original failure."""

    def fallback(failure: Failure) -> str:
        raise LookupError("no cache either")

    fn = Script(ConnectionError)
    guard = driver.breaker("fb-raises", store=mem).guard(fallback=fallback)
    with pytest.raises(LookupError, match="no cache either") as info:
        guard.call(fn)
    assert info.value.__cause__ is fn.raised[0]


def test_fallback_value_returns_its_value(driver: Driver, mem: AnyStore) -> None:
    """fallback_value(x) makes every failure return x, flagged degraded with reason error."""
    sentinel = object()
    guard = driver.breaker("fb-value", store=mem).guard(fallback=fallback_value(sentinel))
    outcome = guard.outcome(Script(RuntimeError))
    assert outcome.value is sentinel
    assert outcome.failure is not None
    assert (outcome.degraded, outcome.failure.reason, outcome.attempts) == (True, "error", 1)
    assert guard.outcome(Script(7)) == Outcome(7, False, None, 1)


def test_last_good_value_serves_the_last_real_result(driver: Driver, mem: AnyStore) -> None:
    """LastGoodValue returns the latest real value after a failure."""
    guard = driver.breaker("lgv", store=mem).guard(fallback=LastGoodValue())
    assert guard.call(Script("v1")) == "v1"
    assert guard.call(Script("v2")) == "v2"
    outcome = guard.outcome(Script(ConnectionError))
    assert (outcome.value, outcome.degraded) == ("v2", True)


def test_last_good_value_without_a_value_reraises_the_original(
    driver: Driver, mem: AnyStore
) -> None:
    """No good value yet and no default: the original exception itself propagates."""
    fn = Script(ConnectionError)
    guard = driver.breaker("lgv-empty", store=mem).guard(fallback=LastGoodValue())
    with pytest.raises(ConnectionError) as info:
        guard.call(fn)
    assert info.value is fn.raised[0]
    assert info.value.__cause__ is None


def test_last_good_value_default(driver: Driver, mem: AnyStore) -> None:
    """No good value yet: the default is returned (None counts as a default)."""
    guard = driver.breaker("lgv-default", store=mem).guard(fallback=LastGoodValue(default=[]))
    assert guard.outcome(Script(ConnectionError)).value == []
    guard = driver.breaker("lgv-none", store=mem).guard(fallback=LastGoodValue(None))
    assert guard.outcome(Script(ConnectionError)).value is None


def test_last_good_value_respects_max_age(
    driver: Driver, mem: AnyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered value is served up to max_age seconds old, then the default (or raise)."""
    now = [1000.0]
    monkeypatch.setattr("redbreaker._guard.time", types.SimpleNamespace(monotonic=lambda: now[0]))
    fallback: LastGoodValue[str] = LastGoodValue("default", max_age=10)
    guard = driver.breaker("lgv-age", store=mem).guard(fallback=fallback)
    assert guard.call(Script("fresh")) == "fresh"
    now[0] = 1010.0
    assert guard.call(Script(ConnectionError)) == "fresh"
    now[0] = 1010.001
    assert guard.call(Script(ConnectionError)) == "default"
    fn = Script(ConnectionError)
    strict = driver.breaker("lgv-age-strict", store=mem).guard(
        fallback=LastGoodValue(max_age=timedelta(seconds=1))
    )
    assert strict.call(Script("fresh")) == "fresh"
    now[0] = 1011.5
    with pytest.raises(ConnectionError) as info:
        strict.call(fn)
    assert info.value is fn.raised[0]


def test_remember_sees_only_real_results(driver: Driver, mem: AnyStore) -> None:
    """The fallback's remember() gets every real result and never a degraded one."""
    remembered: list[object] = []

    class Fallback:
        def remember(self, value: object) -> None:
            remembered.append(value)

        def __call__(self, failure: Failure) -> str:
            return "degraded"

    guard = driver.breaker("remember", store=mem).guard(
        fallback=Fallback(), retry_on=ConnectionError, max_attempts=2
    )
    assert guard.call(Script("a")) == "a"
    assert guard.call(Script(ConnectionError)) == "degraded"
    assert guard.call(Script(ConnectionError, "b")) == "b"
    assert remembered == ["a", "b"]


# -- decorator, reasons -------------------------------------------------------------------


def test_decorator_keeps_identity_and_passes_arguments(driver: Driver, mem: AnyStore) -> None:
    """@guard keeps __name__/__doc__/__wrapped__, passes args and kwargs, has .outcome()."""
    guard = driver.breaker("decorated", store=mem).guard(fallback=fallback_value(-1))

    def add(a: int, b: int = 0, *, c: int = 0) -> int:
        """Add numbers."""
        if a < 0:
            raise ValueError("negative")
        return a + b + c

    guarded = guard(add)
    assert isinstance(unwrap(guarded), driver.guarded_function_type)
    assert (guarded.__name__, guarded.__doc__, guarded.__qualname__) == (
        "add",
        "Add numbers.",
        add.__qualname__,
    )
    # What the guard was given: ``add`` itself (aio: the coroutine function calling it).
    assert unwrap(guarded).__wrapped__ is driver.as_async(add)
    assert guarded(1, 2, c=3) == 6
    assert guarded.outcome(1, b=1) == Outcome(2, False, None, 1)
    assert guarded(-1) == -1
    outcome = guarded.outcome(-5)
    assert (outcome.value, outcome.degraded) == (-1, True)


def test_decorator_works_on_methods(driver: Driver, mem: AnyStore) -> None:
    """A decorated method binds its instance like a plain method."""
    guard = driver.breaker("method", store=mem).guard()

    class Client:
        def __init__(self, name: str) -> None:
            self.name = name

        @guard
        def get(self, key: str, *, suffix: str = "") -> str:
            """Fetch a key."""
            return f"{self.name}:{key}{suffix}"

    a, b = Client("a"), Client("b")
    assert a.get("k") == "a:k"
    assert b.get("k", suffix="!") == "b:k!"
    assert a.get.outcome("x") == Outcome("a:x", False, None, 1)
    assert isinstance(unwrap(Client.__dict__["get"]), driver.guarded_function_type)
    assert Client.get is Client.__dict__["get"]
    assert a.get.__doc__ == "Fetch a key."


def test_store_unavailable_reason(driver: Driver) -> None:
    """Redis cannot be asked: fallback reason store_unavailable, the function never runs."""
    store = driver.connect("redis://127.0.0.1:1/0")
    try:
        breaker = driver.breaker("unreachable", store=store, on_store_error="reject")
        fn = Script("never")
        guard = breaker.guard(fallback=lambda f: f, retry_on=Exception)
        outcome = guard.outcome(fn)
        failure = outcome.value
        assert isinstance(failure, Failure)
        assert (failure.reason, failure.attempts, outcome.degraded) == (
            "store_unavailable",
            0,
            True,
        )
        assert isinstance(failure.exception, redbreaker.StoreUnavailableError)
        assert guard.degraded_counts == {"store_unavailable": 1}
        with pytest.raises(redbreaker.StoreUnavailableError):
            breaker.guard().call(fn)
        assert fn.calls == 0
    finally:
        store.close()


# -- set_testing ----------------------------------------------------------------------


def test_set_testing_caps_attempts_and_skips_sleeps(
    driver: Driver, mem: AnyStore, clock: ManualClock
) -> None:
    """In testing mode 2 attempts, no sleep; after the block the old mode is back."""
    guard = driver.breaker("testing", store=mem).guard(
        max_attempts=5, retry_on=ConnectionError, backoff_base=10, backoff_max=10
    )
    guard._random = fixed_random(0.5)
    fn = Script(ConnectionError)
    before = clock.server_ms()
    assert redbreaker.is_testing() is False
    with redbreaker.set_testing(max_attempts=2):
        assert redbreaker.is_testing() is True
        with pytest.raises(ConnectionError):
            guard.call(fn)
        assert fn.calls == 2
        assert clock.server_ms() == before
        with pytest.raises(ThrottledError):
            guard.call(Script(ThrottledError(30.0)))
        assert clock.server_ms() == before
    assert redbreaker.is_testing() is False
    with pytest.raises(ConnectionError):
        guard.call(fn)
    assert fn.calls == 7
    assert clock.server_ms() - before == 4 * 5000


def test_set_testing_as_a_call_and_nested(driver: Driver, mem: AnyStore) -> None:
    """set_testing() defaults to 1 attempt, set_testing(False) turns it off, blocks nest."""
    guard = driver.breaker("testing-call", store=mem).guard(
        max_attempts=3, retry_on=ConnectionError
    )
    redbreaker.set_testing()
    assert redbreaker.is_testing() is True
    fn = Script(ConnectionError)
    with pytest.raises(ConnectionError):
        guard.call(fn)
    assert fn.calls == 1
    with redbreaker.set_testing(max_attempts=10):
        with pytest.raises(ConnectionError):
            guard.call(fn)
        assert fn.calls == 4
        with redbreaker.set_testing(False):
            assert redbreaker.is_testing() is False
        assert redbreaker.is_testing() is True
    assert redbreaker.is_testing() is True
    redbreaker.set_testing(False)
    assert redbreaker.is_testing() is False
    with pytest.raises(ConfigError) as info:
        redbreaker.set_testing(max_attempts=0)
    assert info.value.field == "max_attempts"


# -- configuration ----------------------------------------------------------------------


def _hook(info: AttemptInfo) -> None:
    """An attempt hook that does nothing."""


BAD_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    *[
        ("attempt_timeout", {"attempt_timeout": v})
        for v in (-1, 0, math.nan, math.inf, "1", True, 0.0001)
    ],
    *[("max_attempts", {"max_attempts": v}) for v in (0, -1, 1.5, True, "3", None)],
    *[
        ("retry_on", {"retry_on": v})
        for v in ("ConnectionError", 42, int, (), (ConnectionError, 42))
    ],
    *[("retry_result", {"retry_result": v}) for v in (42, "x")],
    *[("backoff_base", {"backoff_base": v}) for v in (-1, 0, math.nan, math.inf, "0.1", None)],
    *[("backoff_max", {"backoff_max": v}) for v in (-1, math.nan, math.inf, "5", None)],
    ("backoff_max", {"backoff_base": 1.0, "backoff_max": 0.5}),
    ("backoff_max", {"backoff_base": timedelta(seconds=2), "backoff_max": 1.999}),
    *[("deadline", {"deadline": v}) for v in (-1, 0, math.nan, math.inf, "5")],
    *[("max_retry_after", {"max_retry_after": v}) for v in (-1, 0, math.nan, math.inf, None)],
    *[("recheck_breaker", {"recheck_breaker": v}) for v in (1, "yes", None)],
    *[("fallback", {"fallback": v}) for v in (42, "cached")],
    *[("on_attempt", {"on_attempt": v}) for v in (42, "hook", None, (_hook, 42))],
]


@pytest.mark.parametrize(("field", "settings"), BAD_SETTINGS)
def test_guard_config_rejects_bad_values(
    driver: Driver, mem: AnyStore, field: str, settings: dict[str, Any]
) -> None:
    """Every invalid GuardConfig value raises ConfigError naming its field, both ways in."""
    with pytest.raises(ConfigError) as info:
        GuardConfig(**settings)
    assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        driver.breaker("config", store=mem).guard(**settings)
    assert info.value.field == field


def test_guard_config_accepts_good_values_and_settings_override(
    driver: Driver, mem: AnyStore
) -> None:
    """Valid values pass; keyword settings override a config; a lone hook becomes a tuple."""
    config = GuardConfig(
        attempt_timeout=timedelta(milliseconds=1),
        max_attempts=1,
        retry_on=(ConnectionError,),
        backoff_base=0.5,
        backoff_max=timedelta(seconds=0.5),
        deadline=0.001,
        max_retry_after=timedelta(minutes=2),
        recheck_breaker=False,
        on_attempt=_hook,
    )
    assert config.on_attempt == (_hook,)
    assert GuardConfig(on_attempt=[_hook, _hook]).on_attempt == (_hook, _hook)
    guard = driver.breaker("config-ok", store=mem).guard(config, max_attempts=4)
    assert (guard.config.max_attempts, guard.config.backoff_base) == (4, 0.5)
    assert config.max_attempts == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"foo": 1}, "foo"),
        ({"config": "fast"}, "config"),
        ({"config": {"max_attempts": 2}}, "config"),
    ],
)
def test_guard_rejects_unknown_settings_and_bad_config(
    driver: Driver, mem: AnyStore, kwargs: dict[str, Any], field: str
) -> None:
    """breaker.guard(foo=1) and a config that is not a GuardConfig raise ConfigError."""
    with pytest.raises(ConfigError) as info:
        driver.breaker("config-bad", store=mem).guard(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("max_age", [-1, 0, math.nan, "10"])
def test_last_good_value_rejects_a_bad_max_age(max_age: object) -> None:
    """LastGoodValue(max_age=...) is validated like any duration."""
    with pytest.raises(ConfigError) as info:
        LastGoodValue(max_age=max_age)  # type: ignore[arg-type]
    assert info.value.field == "max_age"


# -- logging, hooks -------------------------------------------------------------------


def test_each_retry_is_logged_with_its_details(
    driver: Driver, mem: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A WARNING per retry: event, breaker, attempt, max_attempts, delay, error, a clear text."""
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    guard = driver.breaker("logged", store=mem).guard(
        max_attempts=3, retry_on=ConnectionError, backoff_base=0.2, backoff_max=1.0
    )
    guard._random = fixed_random(0.5)
    fn = Script(ConnectionError("refused #1"), ConnectionError("refused #2"), "ok")
    assert guard.call(fn) == "ok"
    retries = events(caplog, "retry")
    assert [
        (r.levelno, r.breaker, r.attempt, r.max_attempts, r.delay, r.error) for r in retries
    ] == [
        (logging.WARNING, "logged", 1, 3, 0.1, "ConnectionError"),
        (logging.WARNING, "logged", 2, 3, 0.2, "ConnectionError"),
    ]
    first, second = (r.getMessage() for r in retries)
    for text in ("'logged'", "attempt 1 of 3", "ConnectionError: refused #1", "0.100s"):
        assert text in first
    for text in ("attempt 2 of 3", "ConnectionError: refused #2", "0.200s"):
        assert text in second
    attempts = events(caplog, "attempt")
    assert [(r.levelno, r.attempt, r.breaker) for r in attempts] == [
        (logging.DEBUG, 1, "logged"),
        (logging.DEBUG, 2, "logged"),
        (logging.DEBUG, 3, "logged"),
    ]


def test_attempt_hooks_see_every_attempt_and_a_broken_hook_is_contained(
    driver: Driver, mem: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """on_attempt hooks get each attempt's number and exception; a raising hook is logged."""
    seen: list[tuple[int, int, str]] = []

    def hook(info: AttemptInfo) -> None:
        seen.append((info.attempt, info.max_attempts, type(info.exception).__name__))

    def broken(info: AttemptInfo) -> None:
        raise RuntimeError("hook bug")

    guard = driver.breaker("hooks", store=mem).guard(
        max_attempts=3, retry_on=ConnectionError, on_attempt=(broken, hook)
    )
    assert guard.call(Script(ConnectionError, "ok")) == "ok"
    assert seen == [(1, 3, "ConnectionError"), (2, 3, "NoneType")]
    broken_logs = [r for r in caplog.records if "hook" in r.getMessage() and r.exc_info]
    assert len(broken_logs) == 2
