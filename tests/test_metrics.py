"""What a store's observers are told, through both drivers: every call once with its
outcome and state, every rejection once (a waiting caller once, when it gives up), every
transition this process made, nothing for a release; an observer that raises never breaks
a call; bad observers are refused at construction.

Fast tests on the embedded store; the feed comparison on a real redis-server is in
tests/test_metrics_processes.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from redbreaker import CallRecord, ConfigError, Transition

if TYPE_CHECKING:
    from drivers import Driver


class Recorder:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.transitions: list[Transition] = []

    def on_call(self, record: CallRecord) -> None:
        self.calls.append(record)

    def on_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)

    def outcomes(self) -> list[tuple[str, str]]:
        return [(r.outcome, r.state) for r in self.calls]

    def moves(self) -> list[tuple[str | None, str, str]]:
        return [
            (t.previous.value if t.previous else None, t.current.value, t.reason)
            for t in self.transitions
        ]


class BoomError(Exception):
    """A dependency's failure."""


def boom() -> None:
    raise BoomError


def ok() -> str:
    return "ok"


def _fail(breaker: Any, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(BoomError):
            breaker.call(boom)


def _memory(driver: Driver, recorder: Recorder, **kw: Any) -> Any:
    return driver.connect("memory://", observers=[recorder], **kw)


@pytest.mark.parametrize("consistency", ["strict", "cached"])
def test_each_call_is_reported_once_with_its_kind(driver: Driver, consistency: str) -> None:
    seen = Recorder()
    store = _memory(driver, seen)
    breaker = driver.breaker(
        "dep", store=store, failure_threshold=10, ignore_on=KeyError, consistency=consistency
    )

    def missing() -> None:
        raise KeyError("x")

    assert breaker.call(ok) == "ok"
    _fail(breaker, 2)
    with pytest.raises(KeyError):
        breaker.call(missing)
    permit = breaker.acquire()
    permit.success()
    permit = breaker.acquire()
    permit.release()  # ended without an outcome: not a call
    with breaker.acquire():
        pass

    assert seen.outcomes() == [
        ("success", "closed"),
        ("failure", "closed"),
        ("failure", "closed"),
        ("ignored", "closed"),
        ("success", "closed"),
        ("success", "closed"),
    ]
    assert all(r.breaker == "dep" for r in seen.calls)
    assert all(r.seconds is not None and r.seconds >= 0 for r in seen.calls)
    assert seen.transitions == []


@pytest.mark.parametrize("consistency", ["strict", "cached"])
def test_rejections_and_the_trip_are_reported(driver: Driver, consistency: str) -> None:
    seen = Recorder()
    store = _memory(driver, seen)
    breaker = driver.breaker(
        "dep", store=store, failure_threshold=2, recovery_timeout=60, consistency=consistency
    )
    _fail(breaker, 2)
    for _ in range(3):  # the first asks Redis, the others are repeated locally
        with pytest.raises(redbreaker.CircuitOpenError):
            breaker.call(ok)

    assert seen.outcomes() == [("failure", "closed")] * 2 + [("rejected", "open")] * 3
    assert [r.seconds for r in seen.calls[2:]] == [None] * 3
    assert seen.moves() == [("closed", "open", "consecutive_failures")]


def test_a_probe_reports_half_open_and_both_transitions(
    driver: Driver, clock: redbreaker.ManualClock
) -> None:
    seen = Recorder()
    store = _memory(driver, seen, clock=clock)
    breaker = driver.breaker("dep", store=store, failure_threshold=1, recovery_timeout=5)
    _fail(breaker)
    clock.advance(6)
    breaker.call(ok)

    assert seen.outcomes() == [("failure", "closed"), ("success", "half_open")]
    assert seen.moves() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "recovery_timeout_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]


def test_operator_states_are_the_calls_states(driver: Driver) -> None:
    seen = Recorder()
    store = _memory(driver, seen)
    breaker = driver.breaker("dep", store=store, consistency="cached")
    breaker.metrics_only()
    breaker.call(ok)
    breaker.call(ok)  # admitted from the cached breaker's local copy
    breaker.force_close()
    breaker.call(ok)
    breaker.force_open()
    with pytest.raises(redbreaker.CircuitOpenError):
        breaker.call(ok)

    assert seen.outcomes() == [
        ("success", "metrics_only"),
        ("success", "metrics_only"),
        ("success", "forced_closed"),
        ("rejected", "forced_open"),
    ]
    assert [m[:2] for m in seen.moves()] == [
        ("closed", "metrics_only"),
        ("metrics_only", "forced_closed"),
        ("forced_closed", "forced_open"),
    ]


def test_a_wait_that_gives_up_is_one_rejection(driver: Driver) -> None:
    seen = Recorder()
    store = _memory(driver, seen)
    breaker = driver.breaker("dep", store=store)
    breaker.force_open()
    with pytest.raises(redbreaker.CircuitOpenError):
        breaker.acquire(max_wait=0.3)
    assert seen.outcomes() == [("rejected", "forced_open")]


def test_a_wait_that_is_admitted_is_no_rejection(driver: Driver) -> None:
    seen = Recorder()
    store = _memory(driver, seen)
    breaker = driver.breaker("dep", store=store)
    breaker.force_open(0.2)  # the deadline passes while the caller waits
    permit = breaker.acquire(max_wait=10)
    permit.success()
    assert seen.outcomes() == [("success", "closed")]


def test_calls_without_redis_under_allow_report_state_unknown(driver: Driver) -> None:
    seen = Recorder()
    store = driver.connect("redis://127.0.0.1:1/0", observers=[seen], store_timeout=0.2)
    breaker = driver.breaker("dep", store=store, on_store_error="allow")
    assert breaker.call(ok) == "ok"
    _fail(breaker)
    assert seen.outcomes() == [("success", "unknown"), ("failure", "unknown")]


def test_the_local_fallback_reports_to_the_same_observers(driver: Driver) -> None:
    seen = Recorder()
    store = driver.connect("redis://127.0.0.1:1/0", observers=[seen], store_timeout=0.2)
    breaker = driver.breaker("dep", store=store, on_store_error="local", failure_threshold=1)
    _fail(breaker)
    with pytest.raises(redbreaker.CircuitOpenError):
        breaker.call(ok)
    assert seen.outcomes() == [("failure", "closed"), ("rejected", "open")]
    assert seen.moves() == [("closed", "open", "consecutive_failures")]


class Raising:
    def on_call(self, record: CallRecord) -> None:
        raise RuntimeError("observer broken")

    def on_transition(self, transition: Transition) -> None:
        raise RuntimeError("observer broken")


def test_an_observer_that_raises_never_breaks_a_call(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Recorder()
    store = driver.connect("memory://", observers=[Raising(), seen])
    breaker = driver.breaker("dep", store=store, failure_threshold=2)
    with caplog.at_level(logging.ERROR, logger="redbreaker"):
        assert breaker.call(ok) == "ok"
        _fail(breaker, 2)  # BoomError itself, unchanged, and the trip happens
        with pytest.raises(redbreaker.CircuitOpenError):
            breaker.call(ok)
    assert seen.outcomes() == [
        ("success", "closed"),
        ("failure", "closed"),
        ("failure", "closed"),
        ("rejected", "open"),
    ]
    assert len(seen.transitions) == 1
    failed = [r for r in caplog.records if "observer" in r.getMessage()]
    assert len(failed) == 5  # four calls and one transition
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failed)


class RaisingOnPolicy(Recorder):
    def on_policy_event(self, breaker: str, event: str) -> None:
        raise RuntimeError("observer broken")


def test_an_observer_whose_policy_method_raises_never_breaks_a_call(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry the budget refused still ends the call with the attempt's own error, and
    the next observer still hears of the call."""
    broken, seen = RaisingOnPolicy(), Recorder()
    store = driver.connect("memory://", observers=[broken, seen])
    breaker = driver.breaker(
        "dep", store=store, retry_budget=0.0, retry_budget_floor=0.01, failure_threshold=100
    )
    guard = breaker.guard(retry_on=BoomError, max_attempts=3, backoff_base=0.001)
    with caplog.at_level(logging.ERROR, logger="redbreaker"), pytest.raises(BoomError):
        guard.call(boom)  # 0.01/s over 60 s allows no retry at all
    assert seen.outcomes() == [("failure", "closed")]
    failed = [r for r in caplog.records if "policy event" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None


class OnlyCalls:
    def on_call(self, record: CallRecord) -> None:
        """No on_transition."""


@pytest.mark.parametrize(
    "observers",
    [[OnlyCalls()], [object()], [Recorder], 5, "recorder", [Recorder(), None]],
    ids=["no-on_transition", "object", "a-class", "int", "str", "none-item"],
)
def test_observers_that_are_not_observers_are_refused(driver: Driver, observers: Any) -> None:
    with pytest.raises(ConfigError, match="observers"):
        driver.connect("memory://", observers=observers)


def test_observers_of_a_store(driver: Driver) -> None:
    assert driver.connect("memory://").observers == ()
    one = Recorder()
    assert driver.connect("memory://", observers=one).observers == (one,)
    two = (Recorder(), Recorder())
    assert driver.connect("memory://", observers=iter(two)).observers == two


def test_a_store_built_from_a_client_takes_observers() -> None:
    import fakeredis

    seen = Recorder()
    store = redbreaker.Store(fakeredis.FakeRedis(), observers=[seen])
    try:
        redbreaker.Breaker("dep", store=store).call(ok)
    finally:
        store.close()
    assert seen.outcomes() == [("success", "closed")]
    with pytest.raises(ConfigError, match="observers"):
        redbreaker.Store(fakeredis.FakeRedis(), observers=[object()])


def test_a_guard_recheck_is_not_a_rejection(driver: Driver) -> None:
    """A guard that stops retrying because the breaker opened meanwhile refused no call:
    the call was admitted; its outcome is what is reported, once."""
    seen = Recorder()
    store = _memory(driver, seen)
    breaker = driver.breaker("dep", store=store, failure_threshold=100)
    guard = breaker.guard(retry_on=BoomError, max_attempts=3, backoff_base=0.01)
    attempts = []

    def opens_then_fails() -> None:
        attempts.append(1)
        breaker.force_open()  # another process's operator, in effect
        raise BoomError

    with pytest.raises((redbreaker.CircuitOpenError, BoomError)):
        guard.call(driver.nested(opens_then_fails))
    assert len(attempts) == 1  # the recheck before the retry saw the open breaker
    assert len(seen.calls) == 1
    assert seen.calls[0].outcome != "rejected"
    assert seen.calls[0].state == "closed"


_IMPORTS = """
import sys
import redbreaker, redbreaker.aio
print(sorted(m for m in sys.modules
             if m.startswith(("prometheus_client", "redbreaker.contrib"))))
"""

_MISSING = """
import sys
import redbreaker
for name in list(sys.modules):
    if name.split(".")[0] == sys.argv[1]:
        del sys.modules[name]
sys.modules[sys.argv[1]] = None  # the extra is not installed
try:
    __import__(sys.argv[2])
except ImportError as exc:
    print(exc)
"""


def test_the_integrations_are_imported_only_when_used() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("package", "module", "extra"),
    [
        ("prometheus_client", "redbreaker.contrib.prometheus", "prometheus"),
        ("opentelemetry", "redbreaker.contrib.otel", "otel"),
    ],
)
def test_a_missing_extra_names_itself(package: str, module: str, extra: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MISSING, package, module],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"pip install 'redbreaker[{extra}]'" in done.stdout
