"""The Redis-down policy, on the embedded store with an outage switched on and off.

The real-server faults (kill -9, CLIENT PAUSE, ...) are in test_faults.py; here the outage
is a switch in front of the script calls, so edges, backoff and policies are exact and fast.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

import redbreaker
from redbreaker import Breaker, ManualClock, StoreEvent, StoreUnavailableError


class Outage:
    """Stands in front of a store's scripts; while ``down``, every call fails like a lost
    Redis connection. Counts the calls that reached it."""

    def __init__(self, store: redbreaker.Store) -> None:
        self.down = False
        self.tries = 0
        real = store._call

        def call(script: str, keys: Any, args: Any) -> Any:
            self.tries += 1
            if self.down:
                raise redis.ConnectionError("Connection refused (simulated)")
            return real(script, keys, args)

        store._call = call  # type: ignore[method-assign]


@pytest.fixture
def setup() -> tuple[redbreaker.Store, ManualClock, Outage, list[StoreEvent]]:
    clock = ManualClock()
    events: list[StoreEvent] = []
    store = redbreaker.connect("memory://", clock=clock, on_store_event=events.append)
    return store, clock, Outage(store), events


def test_one_event_and_one_log_line_per_edge(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    """50 calls during an outage give one store_degraded; the first answer one recovered."""
    store, clock, outage, events = setup
    breaker = Breaker("dep", store=store)
    outage.down = True
    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        for _ in range(50):
            assert breaker.call(lambda: "ran") == "ran"
            clock.advance(0.5)
        outage.down = False
        clock.advance(6)
        for _ in range(5):
            breaker.call(lambda: None)
    assert [e.kind for e in events] == ["store_degraded", "store_recovered"]
    kinds = [getattr(r, "event", None) for r in caplog.records]
    assert kinds.count("store_degraded") == 1
    assert kinds.count("store_recovered") == 1
    assert events[0].error is not None
    assert "ConnectionError" in events[0].error
    assert events[1].outage_seconds is not None
    assert events[1].outage_seconds >= 25


def test_no_io_while_backing_off(setup: Any) -> None:
    """After a failure, calls skip Redis until the jittered backoff passes; then one tries."""
    store, clock, outage, _ = setup
    breaker = Breaker("dep", store=store)
    store.health._backoff = redis.backoff.ExponentialBackoff(cap=5.0, base=0.1)  # jitter's top
    outage.down = True
    breaker.call(lambda: None)
    assert outage.tries == 1
    for _ in range(100):
        breaker.call(lambda: None)
    assert outage.tries == 1
    clock.advance(0.1)
    breaker.call(lambda: None)
    breaker.call(lambda: None)
    assert outage.tries == 2  # one try, and the next wait (0.2 s) starts again
    clock.advance(0.2)
    breaker.call(lambda: None)
    assert outage.tries == 3


def test_backoff_grows_to_its_cap(setup: Any) -> None:
    """Waits double from 0.1 s and stop growing at 5 s."""
    store, _, _, _ = setup
    health = store.health
    health._backoff = redis.backoff.ExponentialBackoff(cap=5.0, base=0.1)  # the jitter's top
    waits = []
    for _ in range(12):
        health.failed(redis.ConnectionError("x"))
        waits.append(round(health.wait_left_peek(), 3))
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    health._backoff = redis.backoff.ExponentialBackoff(cap=2.5, base=0.05)  # its bottom: half
    health.failed(redis.ConnectionError("x"))
    assert health.wait_left_peek() == 2.5  # the lower end of the jitter: half the wait


def test_allow_runs_the_call_and_records_nothing(setup: Any) -> None:
    """"allow": the dependency runs; its failures are not recorded anywhere."""
    store, clock, outage, _ = setup
    breaker = Breaker("dep", store=store, failure_threshold=1)
    outage.down = True
    for _ in range(5):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    outage.down = False
    clock.advance(6)  # past the store backoff
    assert breaker.snapshot().exists is False


def test_reject_raises_store_unavailable(setup: Any) -> None:
    """"reject": a CircuitOpenError subclass; the first is chained to redis' error."""
    store, _, outage, _ = setup
    breaker = Breaker("dep", store=store, on_store_error="reject")
    store.health._backoff = redis.backoff.ExponentialBackoff(cap=5.0, base=0.1)
    outage.down = True
    ran: list[int] = []
    with pytest.raises(StoreUnavailableError) as first:
        breaker.call(ran.append, 1)
    assert isinstance(first.value.__cause__, redis.ConnectionError)
    assert first.value.state == "store_unavailable"
    assert first.value.retry_after == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(redbreaker.CircuitOpenError) as second:
        breaker.call(ran.append, 2)
    assert isinstance(second.value, StoreUnavailableError)
    assert ran == []


def test_local_trips_in_process_and_shared_state_returns(setup: Any) -> None:
    """"local": the process's own breaker trips during the outage; when Redis answers the
    shared breaker (which never saw those failures) decides again."""
    store, clock, outage, _ = setup
    seen: list[redbreaker.Transition] = []
    breaker = Breaker(
        "dep", store=store, on_store_error="local", failure_threshold=2, on_transition=seen.append
    )
    breaker.call(lambda: None)  # the shared breaker exists
    outage.down = True
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    with pytest.raises(redbreaker.CircuitOpenError) as rejected:
        breaker.call(lambda: None)
    assert rejected.value.state == "open"
    assert [(t.previous, t.current) for t in seen] == [
        (redbreaker.State.CLOSED, redbreaker.State.OPEN)
    ]
    outage.down = False
    clock.advance(6)  # past the store backoff, not past the local recovery_timeout (30 s)
    assert breaker.call(lambda: "shared") == "shared"
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures) == (redbreaker.State.CLOSED, 0)


def test_store_error_while_recording_never_masks_the_outcome(setup: Any) -> None:
    """Redis lost between admission and recording: the result and exception are unchanged."""
    store, _, outage, _ = setup
    breaker = Breaker("dep", store=store)
    permit = breaker.acquire()
    outage.down = True
    permit.failure(ValueError("x"))  # no exception escapes
    outage.down = False
    boom = RuntimeError("the call's own")

    def fails_after_outage_begins() -> None:
        outage.down = True
        raise boom

    with pytest.raises(RuntimeError) as raised:
        breaker.call(fails_after_outage_begins)
    assert raised.value is boom


def test_guard_reasons_by_policy(setup: Any) -> None:
    """The guard's fallback hears store_unavailable under "reject"; "allow" just runs."""
    store, _, outage, _ = setup
    outage.down = True
    rejecting = Breaker("a", store=store, on_store_error="reject").guard(fallback=lambda f: f)
    failure = rejecting.call(lambda: "ran")
    assert isinstance(failure, redbreaker.Failure)
    assert (failure.reason, failure.attempts) == ("store_unavailable", 0)
    allowing = Breaker("b", store=store).guard(fallback=lambda f: f)
    assert allowing.call(lambda: "ran") == "ran"


def test_snapshot_and_orders_raise_library_errors(setup: Any) -> None:
    """Reading or ordering a breaker during an outage raises StoreUnavailableError."""
    store, _, outage, _ = setup
    breaker = Breaker("dep", store=store)
    outage.down = True
    with pytest.raises(StoreUnavailableError):
        breaker.snapshot()
    with pytest.raises(StoreUnavailableError):
        breaker.force_open()


def test_bad_policy_is_a_config_error() -> None:
    """on_store_error accepts only its three names."""
    with pytest.raises(redbreaker.ConfigError) as bad:
        redbreaker.BreakerConfig(on_store_error="ignore")  # type: ignore[arg-type]
    assert bad.value.field == "on_store_error"


def test_bad_store_timeout_is_a_config_error() -> None:
    """store_timeout must be a positive duration."""
    for value in (0, -1, float("nan"), "1"):
        with pytest.raises(redbreaker.ConfigError) as bad:
            redbreaker.connect("memory://", store_timeout=value)  # type: ignore[arg-type]
        assert bad.value.field == "store_timeout"
