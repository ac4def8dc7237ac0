"""The fleet's retry budget (issue 14): its settings, its arithmetic on injected time, what
a guard does with each answer, and what it says (logs, observers), on both drivers.

The budget is asked before each retry with the record script's ``retry`` outcome. In
closed, a retry is granted while ``granted + 1 <= retry_budget * calls + floor * window_s``,
the calls being those of the window, the call under way included (calls are counted when
admitted). Backoffs here are 1 ms: the guard sleeps on the test's ManualClock, so time
moves only by what a test advances.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from redbreaker import BreakerConfig, CircuitOpenError, ConfigError, Failure, ManualClock, State

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from drivers import AnyBreaker, AnyStore, Driver

WINDOW_S = 10.0
# No trip rule fires in these tests unless they mean it to.
QUIET: dict[str, Any] = {"failure_threshold": 1000, "window": WINDOW_S}
FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.001}


class Dependency:
    """Raises a fresh ConnectionError per call (kept in ``raised``), or returns the next
    of ``values`` when given."""

    def __init__(self, *values: object) -> None:
        self.values = values
        self.calls = 0
        self.raised: list[Exception] = []

    def __call__(self) -> object:
        self.calls += 1
        if self.values:
            return self.values[min(self.calls, len(self.values)) - 1]
        exc = ConnectionError(f"attempt {self.calls}")
        self.raised.append(exc)
        raise exc


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def succeed(breaker: AnyBreaker, times: int) -> None:
    for _ in range(times):
        breaker.call(lambda: "ok")


@pytest.fixture
def mem(driver: Driver, clock: ManualClock) -> AnyStore:
    return driver.connect("memory://", clock=clock)


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"retry_budget": -0.1}, "retry_budget"),
        ({"retry_budget": 10.5}, "retry_budget"),
        ({"retry_budget": math.nan}, "retry_budget"),
        ({"retry_budget": math.inf}, "retry_budget"),
        ({"retry_budget": "0.2"}, "retry_budget"),
        ({"retry_budget": True}, "retry_budget"),
        ({"retry_budget": 0, "retry_budget_floor": 0}, "retry_budget"),
        ({"retry_budget": 0.2, "retry_budget_floor": -1}, "retry_budget_floor"),
        ({"retry_budget": 0.2, "retry_budget_floor": 1e6 + 1}, "retry_budget_floor"),
        ({"retry_budget": 0.2, "retry_budget_floor": math.nan}, "retry_budget_floor"),
        ({"retry_budget": 0.2, "retry_budget_floor": "1"}, "retry_budget_floor"),
        ({"retry_budget_floor": 5.0}, "retry_budget_floor"),
        ({"retry_budget_floor": 0.0}, "retry_budget_floor"),
    ],
)
def test_each_invalid_budget_setting_is_named(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BreakerConfig(**settings)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{field}: ")


def test_invalid_budget_fails_at_construction_of_either_breaker(
    driver: Driver, mem: AnyStore
) -> None:
    with pytest.raises(ConfigError) as info:
        driver.breaker("bad", store=mem, retry_budget=11)
    assert info.value.field == "retry_budget"


@pytest.mark.parametrize(
    "settings",
    [
        {"retry_budget": 0, "retry_budget_floor": 0.5},
        {"retry_budget": 10},
        {"retry_budget": 0.2, "retry_budget_floor": 0},
        {"retry_budget": 0.2, "retry_budget_floor": 1e6},
        {"retry_budget_floor": 10},
    ],
)
def test_budget_edges_are_accepted(settings: dict[str, Any]) -> None:
    BreakerConfig(**settings)


def test_defaults_send_an_empty_config_and_a_budget_sends_its_fields() -> None:
    assert BreakerConfig().script_config == ""
    assert BreakerConfig(retry_budget_floor=10).script_config == ""
    text = BreakerConfig(retry_budget=0.2, retry_budget_floor=0.5).script_config
    assert text.split() == ["retry_budget=0.2", "retry_budget_floor=0.5"]
    assert BreakerConfig(retry_budget=0.25).script_config == "retry_budget=0.25"


# -- the arithmetic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (0.5, 0.0, 4, 2),  # 0.5 * 5 calls = 2.5
        (1.0, 0.0, 2, 3),  # 1 * 3 calls = 3
        (0.0, 0.3, 0, 3),  # the floor alone: 0.3/s * 10 s = 3
        (0.2, 0.1, 9, 3),  # 0.2 * 10 + 0.1 * 10 = 3
        (0.1, 0.0, 8, 0),  # 0.1 * 9 = 0.9: not even one
    ],
    ids=lambda case: "budget={}-floor={}-successes={}-granted={}".format(*case),
)
def test_granted_retries_are_the_ratio_of_calls_plus_the_floor(
    driver: Driver, mem: AnyStore, case: tuple[float, float, int, int]
) -> None:
    """One call that always fails, with attempts to spare: it gets exactly the allowance
    (budget, floor, successes before it: granted), then the refusal ends it, counted."""
    budget, floor, successes, granted = case
    breaker = driver.breaker(
        "dep", store=mem, retry_budget=budget, retry_budget_floor=floor, **QUIET
    )
    succeed(breaker, successes)
    fn = Dependency()
    with pytest.raises(ConnectionError):
        breaker.guard(retry_on=ConnectionError, max_attempts=10, **FAST).call(fn)
    assert fn.calls == granted + 1
    snap = breaker.snapshot()
    assert snap.window_retries == granted
    assert snap.retry_budget_exhausted_count == 1
    assert snap.window_calls == successes + 1


def test_retries_are_counted_fleet_wide(driver: Driver, clock: ManualClock) -> None:
    """Two stores (two processes, in effect) draw on one budget."""
    one = driver.connect(f"memory://budget-{uuid.uuid4().hex}", clock=clock)
    two = driver.reconnect(one, clock=clock)
    settings = {"retry_budget": 0.0, "retry_budget_floor": 0.3, **QUIET}
    first = driver.breaker("dep", store=one, **settings)
    second = driver.breaker("dep", store=two, **settings)
    fn = Dependency()
    with pytest.raises(ConnectionError):
        first.guard(retry_on=ConnectionError, max_attempts=3, **FAST).call(fn)
    assert fn.calls == 3
    with pytest.raises(ConnectionError):
        second.guard(retry_on=ConnectionError, max_attempts=3, **FAST).call(fn)
    assert fn.calls == 3 + 2  # one retry left of the three
    assert second.snapshot().window_retries == 3


def test_granted_retries_expire_with_the_window(
    driver: Driver, mem: AnyStore, clock: ManualClock
) -> None:
    """Floor 0.2/s over 10 s: two retries. One at t0, one at t0+5 s; at t0+10.5 s the
    first has left the window and one retry is granted again; at t0+16 s both."""
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.2, **QUIET)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=2, **FAST)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            guard.call(Dependency())
        clock.advance(5)
    assert breaker.snapshot().window_retries == 1  # t0+10 s: the t0 bucket is gone
    clock.advance(0.5)
    fn = Dependency()
    with pytest.raises(ConnectionError):
        breaker.guard(retry_on=ConnectionError, max_attempts=5, **FAST).call(fn)
    assert fn.calls == 2
    assert breaker.snapshot().window_retries == 2
    clock.advance(20)
    snap = breaker.snapshot()
    assert (snap.window_retries, snap.window_calls) == (0, 0)
    assert snap.retry_budget_exhausted_count == 1  # a count since creation, not windowed


def test_a_refusal_raises_the_last_real_error(driver: Driver, mem: AnyStore) -> None:
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.1, **QUIET)
    fn = Dependency()
    with pytest.raises(ConnectionError) as info:
        breaker.guard(retry_on=ConnectionError, max_attempts=5, **FAST).call(fn)
    assert fn.calls == 2
    assert info.value is fn.raised[-1]
    assert str(info.value) == "attempt 2"
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.consecutive_failures) == (1, 1, 1)


def test_the_fallback_is_told_retry_budget_exhausted(driver: Driver, mem: AnyStore) -> None:
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.1, **QUIET)
    fn = Dependency()
    guard = breaker.guard(
        retry_on=ConnectionError, max_attempts=5, fallback=lambda failure: failure, **FAST
    )
    outcome = guard.outcome(fn)
    assert outcome.degraded
    assert outcome.value == Failure("retry_budget_exhausted", fn.raised[-1], "dep", 2)
    assert outcome.value.exception is fn.raised[-1]
    # The budget is spent: the next call ends at its first failure, with the same reason.
    again = guard.outcome(fn)
    assert again.value == Failure("retry_budget_exhausted", fn.raised[-1], "dep", 1)
    assert guard.degraded_counts == {"retry_budget_exhausted": 2}


def test_with_retry_result_the_last_value_is_returned(driver: Driver, mem: AnyStore) -> None:
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.2, **QUIET)
    fn = Dependency("busy-1", "busy-2", "busy-3", "ok")
    guard = breaker.guard(retry_result=lambda v: v != "ok", max_attempts=5, **FAST)
    assert guard.call(fn) == "busy-3"
    assert fn.calls == 3
    assert breaker.snapshot().retry_budget_exhausted_count == 1


@pytest.mark.parametrize("how", ["force_open", "trip"])
def test_an_open_breaker_ends_the_retries(driver: Driver, mem: AnyStore, how: str) -> None:
    """Opened during attempt 1 (by another Breaker object): the budget's ask is refused
    with a rejection, and nothing is counted as exhausted."""
    settings = {"retry_budget": 1.0, "failure_threshold": 1}
    breaker = driver.breaker("dep", store=mem, **settings)
    other = driver.breaker("dep", store=mem, **settings)
    fn = Dependency()

    def attempt() -> object:
        if how == "force_open":
            other.force_open()
        else:
            other.acquire().failure()
        return fn()

    with pytest.raises(CircuitOpenError) as info:
        breaker.guard(retry_on=ConnectionError, max_attempts=3, **FAST).call(driver.nested(attempt))
    assert info.value.state == ("forced_open" if how == "force_open" else "open")
    assert info.value.scope == "fleet"
    assert fn.calls == 1
    assert breaker.snapshot().retry_budget_exhausted_count == 0


class SleepHook(ManualClock):
    """A test clock that runs ``during_sleep`` once, inside the first sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.during_sleep: list[Callable[[], None]] = []

    def sleep(self, seconds: float) -> None:
        while self.during_sleep:
            self.during_sleep.pop()()
        super().sleep(seconds)


def test_an_open_heard_during_the_backoff_ends_the_retries(driver: Driver) -> None:
    """The budget is asked before the backoff; an open this process hears while it sleeps
    (its feed, another call's rejection) still stops the retry, with no round trip."""
    clock = SleepHook()
    store = driver.connect("memory://", clock=clock)
    breaker = driver.breaker("dep", store=store, retry_budget=1.0, **QUIET)
    fn = Dependency()
    event = json.dumps({"name": "dep", "to_state": "open", "retry_after_ms": 5000})
    clock.during_sleep.append(lambda: store.view.heard_event(event))
    with pytest.raises(CircuitOpenError) as info:
        breaker.guard(retry_on=ConnectionError, max_attempts=3, **FAST).call(fn)
    assert info.value.state == "open"
    assert fn.calls == 1
    # the retry had been granted (counted) before the sleep
    assert breaker.snapshot().window_retries == 1


def test_forced_closed_grants_every_retry_uncounted(driver: Driver, mem: AnyStore) -> None:
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.1, **QUIET)
    breaker.force_close()
    fn = Dependency()
    with pytest.raises(ConnectionError):
        breaker.guard(retry_on=ConnectionError, max_attempts=4, **FAST).call(fn)
    assert fn.calls == 4
    snap = breaker.snapshot()
    assert (snap.window_retries, snap.retry_budget_exhausted_count) == (0, 0)


def test_metrics_only_keeps_the_budget(driver: Driver, mem: AnyStore) -> None:
    """Shadow mode trips nothing, but the budget still holds retries back."""
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.1, **QUIET)
    breaker.metrics_only()
    fn = Dependency()
    with pytest.raises(ConnectionError):
        breaker.guard(retry_on=ConnectionError, max_attempts=4, **FAST).call(fn)
    assert fn.calls == 2
    snap = breaker.snapshot()
    assert (snap.state, snap.window_retries, snap.retry_budget_exhausted_count) == (
        State.METRICS_ONLY,
        1,
        1,
    )


def test_a_would_trip_keeps_the_granted_retries(driver: Driver, mem: AnyStore) -> None:
    """metrics_only counts afresh after each would-trip, but the retries it granted stay
    in the window: the budget holds over a run that would-trips every 5 failures."""
    breaker = driver.breaker(
        "dep", store=mem, retry_budget=0.2, retry_budget_floor=0.1, failure_threshold=5,
        window=WINDOW_S,
    )
    breaker.metrics_only()
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=3, **FAST)
    fn = Dependency()
    for _ in range(100):
        with pytest.raises(ConnectionError):
            guard.call(fn)
    snap = breaker.snapshot()
    assert snap.would_trip_count >= 19  # 100 failed calls, one would-trip per 5
    # Retries <= 0.2 * calls + 0.1/s * 10 s: at most 21 over the 100 calls.
    assert fn.calls - 100 == snap.window_retries <= 0.2 * 100 + 0.1 * WINDOW_S


def test_a_transition_clears_the_granted_retries(driver: Driver, mem: AnyStore) -> None:
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.2, **QUIET)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=5, **FAST)
    with pytest.raises(ConnectionError):
        guard.call(Dependency())
    before = breaker.snapshot()
    assert before.window_retries == 2
    breaker.reset()
    after = breaker.snapshot()
    assert after.generation > before.generation
    assert after.window_retries == 0
    fn = Dependency()
    with pytest.raises(ConnectionError):
        guard.call(fn)
    assert fn.calls == 3  # the full allowance again


# -- on a real redis-server too -------------------------------------------------------------


def test_budget_on_every_store_kind(driver: Driver, store: AnyStore, clock: ManualClock) -> None:
    """The headline on the embedded store and a real server (bytes and decoded replies)."""
    breaker: AnyBreaker = driver.breaker(
        "dep", store=store, retry_budget=0.5, **QUIET, retry_budget_floor=0
    )
    succeed(breaker, 3)
    fn = Dependency()
    fallback = breaker.guard(
        retry_on=ConnectionError, max_attempts=5, fallback=lambda f: f, **FAST
    ).call(fn)
    assert fn.calls == 3  # 0.5 * 4 calls = 2 retries
    assert fallback == Failure("retry_budget_exhausted", fn.raised[-1], "dep", 3)
    snap = breaker.snapshot()
    assert (snap.window_retries, snap.retry_budget_exhausted_count) == (2, 1)
    assert snap.state is State.CLOSED
    clock.advance(WINDOW_S + 1)
    snap = breaker.snapshot()
    assert (snap.window_retries, snap.window_calls) == (0, 0)
