"""What the fleet's retry budget sends and says (issue 14), on both drivers: the scripts a
guarded call runs with the budget on and off (the budget's ask stands in for the recheck),
the log lines said once per edge, and what the store's observers are told.

The helpers and settings are ``test_retry_budget.py``'s (see there for the arithmetic).
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import pytest

from drivers import unwrap
from test_retry_budget import FAST, QUIET, WINDOW_S, Dependency, events, succeed

if TYPE_CHECKING:
    import redbreaker
    from drivers import AnyStore, Driver
    from redbreaker import ManualClock


@pytest.fixture
def mem(driver: Driver, clock: ManualClock) -> AnyStore:
    return driver.connect("memory://", clock=clock)


def spy_scripts(store: AnyStore) -> list[str]:
    """Every script the store runs from now on, a record as ``record:<outcome>``."""
    raw = unwrap(store)
    seen: list[str] = []
    original = raw.run

    def name(script: str, args: Any) -> str:
        return f"record:{args[5]}" if script == "record" else script

    if inspect.iscoroutinefunction(original):

        async def run_async(script: str, keys: Any, args: Any) -> Any:
            seen.append(name(script, args))
            return await original(script, keys, args)

        raw.run = run_async
    else:

        def run(script: str, keys: Any, args: Any) -> Any:
            seen.append(name(script, args))
            return original(script, keys, args)

        raw.run = run
    return seen


# -- what it sends ----------------------------------------------------------------------


def test_without_a_budget_no_retry_is_asked(driver: Driver, mem: AnyStore) -> None:
    """Budget off: the recheck snapshots as before, never a 'retry' record."""
    breaker = driver.breaker("dep", store=mem, **QUIET)
    succeed(breaker, 1)
    seen = spy_scripts(mem)
    with pytest.raises(ConnectionError):
        breaker.guard(retry_on=ConnectionError, max_attempts=3, **FAST).call(Dependency())
    assert seen == ["acquire", "inspect", "inspect", "record:failure"]
    seen.clear()
    with pytest.raises(ConnectionError):
        breaker.guard(retry_on=ConnectionError, max_attempts=3, recheck_breaker=False, **FAST).call(
            Dependency()
        )
    assert seen == ["acquire", "record:failure"]


@pytest.mark.parametrize("recheck", [True, False])
def test_with_a_budget_each_retry_asks_it_instead_of_a_recheck(
    driver: Driver, mem: AnyStore, recheck: bool
) -> None:
    breaker = driver.breaker("dep", store=mem, retry_budget=1.0, **QUIET)
    succeed(breaker, 1)
    seen = spy_scripts(mem)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=3, recheck_breaker=recheck, **FAST)
    assert guard.call(lambda: "ok") == "ok"
    assert seen == ["acquire"]  # a success asks nothing
    seen.clear()
    with pytest.raises(ConnectionError):
        guard.call(Dependency())
    assert seen == ["acquire", "record:retry", "record:retry", "record:failure"]


# -- what it says -------------------------------------------------------------------------


def test_a_budget_at_its_limit_does_not_flap_in_the_log(
    driver: Driver, mem: AnyStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Grants and refusals in turn within one window bucket are one edge, not one per
    call: available again only once a bucket (window / 10) passed with no refusal."""
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    breaker = driver.breaker("dep", store=mem, retry_budget=0.5, retry_budget_floor=0.1, **QUIET)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=2, **FAST)
    for _ in range(20):  # 0.5 per call: every other retry is refused
        with pytest.raises(ConnectionError):
            guard.call(Dependency())
    snap = breaker.snapshot()
    # Grants and refusals alternate: about half of the 20 retries each.
    assert snap.window_retries >= 9
    assert snap.retry_budget_exhausted_count >= 9
    assert len(events(caplog, "retry_budget_exhausted")) == 1
    assert events(caplog, "retry_budget_available") == []
    clock.advance(WINDOW_S / 10)  # a bucket with no refusal, then a grant
    breaker.call(lambda: "ok")  # one more call in the window: room for one more retry
    breaker.call(lambda: "ok")
    with pytest.raises(ConnectionError):
        guard.call(Dependency())
    assert len(events(caplog, "retry_budget_available")) == 1


def test_exhaustion_is_logged_once_per_edge(
    driver: Driver, mem: AnyStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    breaker = driver.breaker("dep", store=mem, retry_budget=0, retry_budget_floor=0.1, **QUIET)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=2, **FAST)
    for _ in range(4):  # one granted, then three refusals in a row
        with pytest.raises(ConnectionError):
            guard.call(Dependency())
    assert breaker.snapshot().retry_budget_exhausted_count == 3
    [warning] = events(caplog, "retry_budget_exhausted")
    assert (warning.levelno, warning.breaker) == (logging.WARNING, "dep")
    assert events(caplog, "retry_budget_available") == []
    clock.advance(WINDOW_S + 1)
    for _ in range(2):  # granted again, then refused again
        with pytest.raises(ConnectionError):
            guard.call(Dependency())
    [info] = events(caplog, "retry_budget_available")
    assert (info.levelno, info.breaker) == (logging.INFO, "dep")
    assert len(events(caplog, "retry_budget_exhausted")) == 2
    order = [r.event for r in caplog.records if getattr(r, "event", "").startswith("retry_b")]
    assert order == ["retry_budget_exhausted", "retry_budget_available", "retry_budget_exhausted"]


class Observer:
    def __init__(self) -> None:
        self.calls = 0
        self.policy_events: list[tuple[str, str]] = []

    def on_call(self, record: redbreaker.CallRecord) -> None:
        self.calls += 1

    def on_transition(self, transition: redbreaker.Transition) -> None:
        pass

    def on_policy_event(self, breaker: str, event: str) -> None:
        self.policy_events.append((breaker, event))


class PlainObserver:
    """An observer written before policy events existed."""

    def __init__(self) -> None:
        self.calls = 0

    def on_call(self, record: redbreaker.CallRecord) -> None:
        self.calls += 1

    def on_transition(self, transition: redbreaker.Transition) -> None:
        pass


def test_observers_hear_each_refusal_and_old_observers_still_work(
    driver: Driver, clock: ManualClock
) -> None:
    told, plain = Observer(), PlainObserver()
    store = driver.connect("memory://", clock=clock, observers=[told, plain])
    breaker = driver.breaker("dep", store=store, retry_budget=0, retry_budget_floor=0.1, **QUIET)
    guard = breaker.guard(retry_on=ConnectionError, max_attempts=3, **FAST)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            guard.call(Dependency())
    # Call 1: granted, then refused; calls 2 and 3: refused at once.
    assert told.policy_events == [("dep", "retry_budget_exhausted")] * 3
    assert told.calls == plain.calls == 3
