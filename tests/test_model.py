"""Model-based test: the real Lua scripts, driven through Breaker/Permit, against a small
pure-Python model of the state machine written from the scripts' contracts.

After every step the machine compares what the caller saw (admit / probe / reject, the
rejecting state, retry_after), how many scripts ran (the documented round trips, the
local rejection cache included), the transitions the hooks saw, and ``snapshot()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import redbreaker

START_MS = 1_700_000_000_000
OPERATOR = frozenset({"forced_open", "forced_closed", "metrics_only"})
ORDERS = {
    "force_open": "forced_open",
    "force_close": "forced_closed",
    "metrics_only": "metrics_only",
    "reset": "closed",
}


class Ignored(Exception):  # noqa: N818 (named for what the breaker does with it)
    """Configured as ``ignore_on``: counts as no call."""


class Abort(BaseException):
    """Not an ``Exception``: never a failure, only releases a probe slot."""


def _bad(result: object) -> bool:
    return result == "bad"


COMMON: dict[str, Any] = {"recovery_jitter": 0.0, "ignore_on": Ignored, "failure_result": _bad}
CASES: dict[str, dict[str, Any]] = {
    "consecutive": {"failure_threshold": 2, "window": 10, "recovery_timeout": 5, "probe_lease": 3},
    "rate": {
        "failure_threshold": None,
        "failure_rate": 0.5,
        "minimum_calls": 4,
        "window": 10,
        "recovery_timeout": 5,
        "probe_lease": 3,
    },
    "probes": {
        "failure_threshold": 3,
        "window": 10,
        "recovery_timeout": 4,
        "recovery_backoff": 2.0,
        "max_recovery_timeout": 20,
        "half_open_max_calls": 2,
        "success_threshold": 2,
        "probe_lease": 2,
        "half_open_max_wait": 7,
    },
    "mixed": {
        "failure_threshold": 3,
        "failure_rate": 0.6,
        "minimum_calls": 3,
        "window": 7.777,
        "slow_call_duration": 1.5,
        "slow_call_rate": 0.5,
        "recovery_timeout": 3,
        "recovery_backoff": 1.5,
        "max_recovery_timeout": 10,
        "probe_lease": 2.5,
    },
}


@dataclass
class MPermit:
    """What the model remembers of one admitted call."""

    generation: int
    probe: int  # probe id, 0 when the call is not a probe
    admitted_at: int
    consecutive_failures: int


@dataclass
class Model:
    """The breaker as the Lua contracts describe it; times are ms on the manual clock."""

    cfg: dict[str, Any]
    exists: bool = False
    state: str = "closed"
    generation: int = 1
    consecutive_failures: int = 0
    open_until: int = 0
    consecutive_opens: int = 0
    half_open_at: int = 0
    half_open_successes: int = 0
    forced_until: int = 0
    open_count: int = 0
    would_trip_count: int = 0
    last_reason: str | None = None
    changed_at: int | None = None
    buckets: dict[int, list[int]] = field(default_factory=dict)  # slot -> [start, c, f, s]
    probes: dict[int, int] = field(default_factory=dict)  # probe id -> lease expiry
    next_probe: int = 1
    events: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    cache_until: int = 0  # local rejection cache deadline, 0 when nothing is cached
    cache_at: int = 0  # when it was cached: it lasts max_staleness at most
    runs: int = 0  # scripts (acquire/record/control) the library should have run
    paths: set[str] = field(default_factory=set)  # what this run exercised (statistics)

    def ms(self, key: str, default: float | None = None) -> int | None:
        value = self.cfg.get(key, default)
        return None if value is None else round(value * 1000)

    @property
    def window(self) -> int:
        return self.ms("window", 60) or 0

    # -- the shared script prologue and helpers ----------------------------------------

    def _script(self, now: int) -> None:
        self.runs += 1
        if not self.exists:
            self.exists, self.last_reason, self.changed_at = True, "created", now
        if self.state in OPERATOR and 0 < self.forced_until <= now:
            self.consecutive_opens = 0
            self._transition("closed", "operator_deadline_passed", now)
        if self.state == "open" and now >= self.open_until:
            self._transition("half_open", "recovery_timeout_elapsed", now)
            self.half_open_at = now
        max_wait = self.ms("half_open_max_wait")
        if self.state == "half_open" and max_wait and now - self.half_open_at >= max_wait:
            self._trip("half_open_max_wait", now)

    def _transition(self, to: str, reason: str, now: int) -> None:
        self.paths.add(f"{self.state}->{to}:{reason}")
        self.events.append((self.state, to, reason, self.generation + 1, now))
        self.state, self.generation, self.consecutive_failures, self.half_open_successes = (
            to,
            self.generation + 1,
            0,
            0,
        )
        self.half_open_at = 0
        self.open_until = 0
        if to not in OPERATOR:
            self.forced_until = 0
        self.buckets.clear()  # probe leases outlive transitions: those calls still run
        self.last_reason, self.changed_at = reason, now
        self.cache_until = 0  # the process that made a transition forgets its cache

    def _trip(self, reason: str, now: int) -> None:
        self.consecutive_opens = self.consecutive_opens + 1 if self.state == "half_open" else 1
        self.open_count += 1
        recovery = self.ms("recovery_timeout", 30) or 0
        cap = self.ms("max_recovery_timeout") or max(recovery, 300_000)
        try:
            grown = recovery * self.cfg.get("recovery_backoff", 1.0) ** (self.consecutive_opens - 1)
        except OverflowError:
            grown = math.inf
        if grown > cap:
            self.paths.add("open duration capped")
        self._transition("open", reason, now)
        self.open_until = now + max(1, math.floor(min(cap, grown)))

    def _bump(self, at: int, now: int, calls: int, failures: int, slow: int) -> None:
        width = max(1, math.ceil(self.window / 10))
        start = at // width * width
        if start <= now - self.window:
            return
        old = self.buckets.get(at // width % 10)
        if old is None or old[0] != start:
            if old is not None and start < old[0] <= now:
                return
            old = [start, 0, 0, 0]
        new_failures = max(0, old[2] + failures)
        new_slow = max(0, old[3] + slow)
        # A bucket never holds more failures or slow calls than calls.
        self.buckets[at // width % 10] = [
            start,
            max(0, old[1] + calls, new_failures, new_slow),
            new_failures,
            new_slow,
        ]

    def totals(self, now: int) -> tuple[int, int, int]:
        live = [b for b in self.buckets.values() if now - self.window < b[0] <= now]
        return sum(b[1] for b in live), sum(b[2] for b in live), sum(b[3] for b in live)

    def _trip_reason(self, now: int) -> str | None:
        threshold = self.cfg.get("failure_threshold", 5)
        if threshold is not None and self.consecutive_failures >= threshold:
            return "consecutive_failures"
        rate = self.cfg.get("failure_rate")
        slow_rate = self.cfg.get("slow_call_rate", 1.0) if self.ms("slow_call_duration") else None
        calls, failures, slow = self.totals(now)
        if (
            (rate is None and slow_rate is None)
            or calls == 0
            or calls < self.cfg.get("minimum_calls", 10)
        ):
            return None
        if rate is not None and failures / calls >= rate:
            return "failure_rate"
        if slow_rate is not None and slow / calls >= slow_rate:
            return "slow_call_rate"
        return None

    # -- what a caller does ------------------------------------------------------------

    def acquire(self, now: int) -> tuple[str, str, int | None, MPermit | None]:
        """(verdict, state, retry_after_ms, permit); retry None = no deadline known."""
        staleness = self.ms("max_staleness", 1.0) or 0
        if now < self.cache_until and now - self.cache_at < staleness:
            self.paths.add("cached rejection")
            # Cached locally: no script runs, so no time-driven transition is applied. The
            # verdict must still be what Redis would say.
            deadline = self.open_until if self.state == "open" else self.forced_until
            assert self.state in {"open", "forced_open"}, self.state
            assert deadline == self.cache_until, (deadline, self.cache_until)
            return "reject", self.state, deadline - now, None
        self.cache_until = 0
        self._script(now)
        permit = MPermit(self.generation, 0, now, self.consecutive_failures)
        if self.state in {"closed", "metrics_only"}:
            self._bump(now, now, 1, 0, 0)
            return "admit", self.state, 0, permit
        if self.state == "forced_closed":
            return "admit", self.state, 0, permit
        if self.state == "half_open":
            self.probes = {k: v for k, v in self.probes.items() if v > now}
            if len(self.probes) < self.cfg.get("half_open_max_calls", 1):
                permit.probe, self.next_probe = self.next_probe, self.next_probe + 1
                self.probes[permit.probe] = now + (self.ms("probe_lease", 10) or 0)
                return "probe", self.state, 0, permit
            self.paths.add("half_open full")
            # Wait as long as the oldest probe has run (>= 50 ms), never past its lease.
            expiry = min(self.probes.values())
            age = now - (expiry - (self.ms("probe_lease", 10) or 0))
            return "reject", self.state, max(1, min(expiry - now, max(50, age))), None
        deadline = self.open_until if self.state == "open" else self.forced_until
        if deadline == 0:
            return "reject", self.state, None, None
        self.cache_until, self.cache_at = deadline, now
        return "reject", self.state, deadline - now, None

    def settle(self, permit: MPermit, outcome: str, now: int, slow: bool) -> None:
        quiet = not permit.probe and not slow and permit.consecutive_failures == 0
        if outcome == "success" and quiet:
            return  # documented: the admission already counted it; Redis learns nothing
        if outcome == "release" and not permit.probe:
            return
        if permit.probe and self.probes.pop(permit.probe, None) is None:
            self.paths.add("probe reported after its lease was reclaimed")
        self._script(now)
        if permit.generation != self.generation:
            self.paths.add("stale outcome")
            return
        if outcome == "release":
            return  # a probe that ended without an outcome
        if self.state in {"closed", "metrics_only"}:
            if outcome == "ignore":
                self._bump(permit.admitted_at, now, -1, 0, 0)
                return
            self.consecutive_failures = self.consecutive_failures + 1 if outcome == "failure" else 0
            if outcome == "failure" or slow:  # into the bucket the call was counted in
                self._bump(permit.admitted_at, now, 0, int(outcome == "failure"), int(slow))
            reason = self._trip_reason(now)
            if reason is None:
                return
            if self.state == "closed":
                self._trip(reason, now)
                return
            self.paths.add("would_trip:" + reason)
            self.would_trip_count += 1
            self.consecutive_failures = 0
            self.buckets.clear()
            self.last_reason = "would_trip:" + reason
            self.events.append(
                ("metrics_only", "metrics_only", self.last_reason, self.generation, now)
            )
            self.cache_until = 0
        elif self.state == "half_open" and permit.probe:
            if outcome == "failure":
                self._trip("probe_failed", now)
            elif outcome == "success":
                self.half_open_successes += 1
                if self.half_open_successes >= self.cfg.get("success_threshold", 1):
                    self.consecutive_opens = 0
                    self._transition("closed", "probes_succeeded", now)

    def order(self, order: str, hold_ms: int | None, now: int) -> str:
        self._script(now)
        until = now + hold_ms if hold_ms is not None and order != "reset" else 0
        if order == "reset":
            self.consecutive_opens = 0
            self.probes.clear()  # a reset frees every probe slot
            self._transition("closed", "reset", now)
        elif self.state != ORDERS[order]:
            self.forced_until = until
            self._transition(ORDERS[order], "operator:" + order, now)
        else:
            self.forced_until = until
        self.cache_until = 0
        return self.state

    def snapshot(self, now: int) -> dict[str, Any]:
        calls, failures, slow = self.totals(now)
        retry: float | None = 0.0
        if self.state == "open":
            retry = max(0, self.open_until - now) / 1000
        elif self.state == "forced_open":
            retry = max(0, self.forced_until - now) / 1000 if self.forced_until else None
        return {
            "exists": self.exists,
            "state": self.state,
            "generation": self.generation,
            "consecutive_failures": self.consecutive_failures,
            "window_calls": calls,
            "window_failures": failures,
            "window_slow_calls": slow,
            "open_until_ms": self.open_until if self.state == "open" else None,
            "retry_after": retry,
            "probes_in_flight": sum(1 for v in self.probes.values() if v > now),
            "half_open_successes": self.half_open_successes,
            "consecutive_opens": self.consecutive_opens,
            "open_count": self.open_count,
            "would_trip_count": self.would_trip_count,
            "forced_until_ms": self.forced_until or None,
            "changed_at_ms": self.changed_at,
            "last_reason": self.last_reason,
        }

    def deadlines(self) -> list[int]:
        """Moments where something is due: jumping exactly onto them tests the boundaries."""
        out = [self.open_until, self.forced_until, self.cache_until, *self.probes.values()]
        max_wait = self.ms("half_open_max_wait")
        if self.state == "half_open" and max_wait:
            out.append(self.half_open_at + max_wait)
        out += [b[0] + self.window for b in self.buckets.values()]
        return [d for d in out if d > 0]


class CountingStore(redbreaker.Store):
    """A Store that counts the scripts that change or decide (inspect is not counted)."""

    runs = 0

    def run(self, script: str, keys: Any, args: Any) -> list[Any]:
        if script != "inspect":
            self.runs += 1
        return super().run(script, keys, args)


def _rejection(exc: redbreaker.CircuitOpenError) -> tuple[str, str, float | None]:
    return "reject", exc.state, exc.retry_after


class BreakerMachine(RuleBasedStateMachine):
    """One breaker, one process, one manual clock; every step checked against Model."""

    target = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.store: CountingStore | None = None
        self.outstanding: list[tuple[redbreaker.Permit, MPermit, int]] = []
        self.settled: list[redbreaker.Permit] = []
        self.seen: list[redbreaker.Transition] = []
        self.retry_at = 0  # when the last rejection said a call may pass again

    @initialize(case=st.sampled_from(sorted(CASES)), offset=st.integers(0, 10**6))
    def build(self, case: str, offset: int) -> None:
        self.clock = redbreaker.ManualClock(START_MS + offset)
        base = redbreaker.connect(self.target, clock=self.clock)
        self.store = CountingStore(base.client, clock=self.clock)
        cfg = {**COMMON, **CASES[case]}
        self.breaker = redbreaker.Breaker(
            "model", store=self.store, on_transition=[self.seen.append], **cfg
        )
        self.model = Model(cfg)

    def teardown(self) -> None:
        for path in sorted(self.model.paths if hasattr(self, "model") else ()):
            event(path)
        if self.store is not None:
            if self.target != "memory://":
                self.store.client.flushdb()
            self.store.close()

    @property
    def now(self) -> int:
        return self.clock.server_ms()

    def _check_verdict(
        self, expected: tuple[str, str, int | None, MPermit | None], got: tuple[str, Any, Any]
    ) -> None:
        verdict, state, retry_ms, permit = expected
        if verdict == "reject":
            if retry_ms is not None:
                self.retry_at = self.now + retry_ms
            assert got[0] == "reject", (expected, got)
            assert got[1] == state, (expected, got)
            if retry_ms is None:
                assert got[2] is None, (expected, got)
            else:
                assert got[2] is not None, (expected, got)
                assert abs(got[2] - retry_ms / 1000) < 1e-6, (expected, got)
        else:
            assert permit is not None
            assert got == (verdict, permit.generation, None), (expected, got)

    def _slow(self, started: int) -> bool:
        slow_ms = self.model.ms("slow_call_duration")
        return slow_ms is not None and self.now - started >= slow_ms

    # -- rules ---------------------------------------------------------------------------

    @rule()
    def acquire(self) -> None:
        expected = self.model.acquire(self.now)
        started = self.now
        try:
            permit = self.breaker.acquire()
        except redbreaker.CircuitOpenError as exc:
            self._check_verdict(expected, _rejection(exc))
            return
        got = ("probe" if permit.is_probe else "admit", permit.generation, None)
        self._check_verdict(expected, got)
        assert expected[3] is not None
        self.outstanding.append((permit, expected[3], started))

    @precondition(lambda self: self.outstanding)
    @rule(
        pick=st.integers(0, 9),
        how=st.sampled_from(["success", "failure", "error", "ignored", "release", "abort"]),
    )
    def settle(self, pick: int, how: str) -> None:
        permit, mpermit, started = self.outstanding.pop(pick % len(self.outstanding))
        outcome = {"error": "failure", "ignored": "ignore", "abort": "release"}.get(how, how)
        slow = outcome in {"success", "failure"} and self._slow(started)
        self.model.settle(mpermit, outcome, self.now, slow)
        if how == "success":
            permit.success()
        elif how == "failure":
            permit.failure()
        elif how == "error":
            permit.failure(RuntimeError("boom"))
        elif how == "ignored":
            permit.failure(Ignored())
        elif how == "release":
            permit.release()
        else:
            permit.failure(Abort())
        self.settled.append(permit)

    @precondition(lambda self: self.settled)
    @rule(pick=st.integers(0, 9))
    def settle_twice(self, pick: int) -> None:
        permit = self.settled[pick % len(self.settled)]
        with pytest.raises(redbreaker.PermitError):
            permit.success()

    @rule(
        calls=st.lists(
            st.tuples(
                st.sampled_from(["ok", "bad", "error", "ignored", "abort"]),
                st.sampled_from([0, 0, 0, 1, 1499, 1500, 1501, 4000]),
            ),
            min_size=1,
            max_size=5,
        )
    )
    def call(self, calls: list[tuple[str, int]]) -> None:
        for how, took in calls:
            self._call(how, took)

    @rule(n=st.integers(1, 4), how=st.sampled_from(["bad", "error"]))
    def failing_calls(self, n: int, how: str) -> None:
        for _ in range(n):
            self._call(how, 0)

    @rule(n=st.integers(1, 4), took=st.sampled_from([1499, 1500, 1501]))
    def slow_calls(self, n: int, took: int) -> None:
        for _ in range(n):
            self._call("ok", took)

    def _call(self, how: str, took: int) -> None:
        start = self.now
        expected = self.model.acquire(start)

        def work() -> str:
            self.clock.advance(took / 1000)
            if how in {"ok", "bad"}:
                return how
            raise {"error": RuntimeError("boom"), "ignored": Ignored(), "abort": Abort()}[how]

        try:
            result = self.breaker.call(work)
        except redbreaker.CircuitOpenError as exc:
            self._check_verdict(expected, _rejection(exc))
            return
        except (RuntimeError, Ignored, Abort):
            pass
        else:
            assert result == how
        permit = expected[3]
        assert permit is not None, expected
        outcome = {
            "ok": "success",
            "bad": "failure",
            "error": "failure",
            "ignored": "ignore",
            "abort": "release",
        }[how]
        slow = outcome in {"success", "failure"} and self._slow(start)
        self.model.settle(permit, outcome, self.now, slow)

    @rule(ms=st.one_of(st.integers(0, 2_500), st.sampled_from([1, 778, 1000, 5_000, 12_000])))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)

    @precondition(lambda self: self.retry_at > self.now)
    @rule()
    def wait_as_told_then_acquire(self) -> None:
        """What a caller does with retry_after: sleep exactly that long, then try again."""
        self.clock.advance((self.retry_at - self.now) / 1000)
        self.acquire()

    @rule(pick=st.integers(0, 3), delta=st.sampled_from([-1, 0, 0, 1]))
    def advance_to_deadline(self, pick: int, delta: int) -> None:
        due = self.model.deadlines() + [
            s + (self.model.ms("slow_call_duration") or 0) for _, _, s in self.outstanding
        ]
        due = sorted({d + delta for d in due if d + delta > self.now})
        if due:
            self.clock.advance((due[pick % len(due)] - self.now) / 1000)

    @rule(order=st.sampled_from(sorted(ORDERS)), hold=st.one_of(st.none(), st.integers(1, 15_000)))
    def operator(self, order: str, hold: int | None) -> None:
        expected = self.model.order(order, hold, self.now)
        if order == "reset":
            assert self.breaker.reset() == expected
        else:
            duration = None if hold is None else hold / 1000
            assert getattr(self.breaker, order)(duration) == expected

    # -- after every step ------------------------------------------------------------------

    @invariant()
    def agrees(self) -> None:
        assert self.store is not None
        assert self.store.runs == self.model.runs, "script round trips differ"
        got_events = [(t.previous, t.current, t.reason, t.generation, t.at_ms) for t in self.seen]
        assert got_events == self.model.events
        snap = self.breaker.snapshot()
        expected = self.model.snapshot(self.now)
        got = {k: getattr(snap, k) for k in expected}
        assert got == expected


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_scripts_match_model_memory() -> None:
    """The Lua scripts on the embedded store behave exactly as the pure-Python model."""
    run_state_machine_as_test(BreakerMachine, settings=SETTINGS)


@pytest.mark.slow
def test_scripts_match_model_redis(redis_url: str) -> None:
    """The same model check against a real redis-server, with a smaller budget."""
    machine = type("RedisBreakerMachine", (BreakerMachine,), {"target": redis_url})
    run_state_machine_as_test(
        machine, settings=settings(SETTINGS, max_examples=50, stateful_step_count=40)
    )


def test_cached_rejection_ends_exactly_at_the_open_deadline() -> None:
    """Waiting exactly the retry_after a rejection gave lets the probe through."""
    clock = redbreaker.ManualClock(start_ms=START_MS + 1)
    store = redbreaker.connect("memory://", clock=clock)
    try:
        breaker = redbreaker.Breaker("edge", store=store, failure_threshold=1, recovery_timeout=5)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        clock.advance(0.001)
        with pytest.raises(redbreaker.CircuitOpenError) as rejected:
            breaker.call(lambda: None)
        assert rejected.value.retry_after == 4.999
        clock.advance(4.999)
        assert clock.server_ms() == breaker.snapshot().open_until_ms
        # Redis admits a probe now; the local cache must not still reject (it did, with
        # retry_after 2.4e-07: the deadline was kept as a float sum of seconds).
        assert breaker.call(lambda: "probe") == "probe"
        assert breaker.state is redbreaker.State.CLOSED
    finally:
        store.close()
