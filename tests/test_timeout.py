"""The thread-based attempt timeout (AttemptRunner, reached through ``breaker.guard``).

Thread timeouts wait in real time, so every store here runs on the real clock
(``connect("memory://")``, no ManualClock). Latency upper bounds use the issue's margin
(attempt budget + 50 ms) on the median of several runs, with a generous cap on each run,
because the machine is shared; nothing else about speed is asserted.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import redbreaker
from redbreaker import AttemptRejectedError, AttemptTimeoutError, State
from redbreaker._timeout import AttemptRunner

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MARGIN = 0.05  # the promise: control back within the budget + 50 ms
CAP = 0.25  # per-run ceiling against scheduling noise on a shared 2-core machine
CHILD = Path(__file__).with_name("timeout_child.py")


@pytest.fixture
def real_store() -> Iterator[redbreaker.Store]:
    """A private in-process store on the real clock (thread timeouts wait in real time)."""
    store = redbreaker.connect("memory://")
    yield store
    store.close()


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 9 // 10) - 1)]  # nearest rank


# -- 1. a hung call gives control back in time ---------------------------------------------


@pytest.mark.slow
def test_hung_call_returns_within_budget_plus_margin(real_store: redbreaker.Store) -> None:
    """A hung attempt raises AttemptTimeoutError(started=True) after 0.1 s, median < +50 ms."""
    breaker = redbreaker.Breaker("hung", store=real_store, failure_threshold=100)
    guard = breaker.guard(attempt_timeout=0.1)
    elapsed: list[float] = []
    for _ in range(10):
        gate = threading.Event()
        started = time.perf_counter()
        with pytest.raises(AttemptTimeoutError) as raised:
            guard.call(gate.wait, 5)
        elapsed.append(time.perf_counter() - started)
        assert raised.value.started is True
        assert raised.value.budget == 0.1
        assert raised.value.name == "hung"
        gate.set()
        assert _wait_until(lambda: breaker.abandoned_attempts == 0)
    overshoot = [e - 0.1 for e in elapsed]
    print(
        f"\n[timeout] attempt_timeout=100ms overshoot over 10 runs: "
        f"median={_ms(statistics.median(overshoot))}ms p90={_ms(_p90(overshoot))}ms "
        f"max={_ms(max(overshoot))}ms min={_ms(min(overshoot))}ms"
    )
    assert min(elapsed) >= 0.1  # never early
    assert statistics.median(elapsed) < 0.1 + MARGIN
    assert max(elapsed) < 0.1 + CAP
    assert breaker.snapshot().consecutive_failures == 10


# -- 2. a queued attempt is cancelled and never runs ---------------------------------------


def test_queued_attempt_is_cancelled_and_never_runs(real_store: redbreaker.Store) -> None:
    """With both threads busy, a queued attempt times out unstarted and never runs later."""
    breaker = redbreaker.Breaker(
        "queued",
        store=real_store,
        failure_threshold=100,
        attempt_threads=2,
        max_abandoned_attempts=1,
    )
    long_guard = breaker.guard(attempt_timeout=10)
    short_guard = breaker.guard(attempt_timeout=0.1)
    release = threading.Event()
    running: list[threading.Event] = [threading.Event(), threading.Event()]
    results: list[object] = []

    def long_call(index: int) -> str:
        running[index].set()
        release.wait(10)
        return f"long-{index}"

    workers = [
        threading.Thread(target=lambda i=i: results.append(long_guard.call(long_call, i)))
        for i in range(2)
    ]
    ran: list[int] = []
    elapsed: list[float] = []
    try:
        for worker in workers:
            worker.start()
        assert all(event.wait(5) for event in running)
        runner = breaker._attempt_runner()
        assert runner.threads == 2
        for attempt in range(5):
            started = time.perf_counter()
            with pytest.raises(AttemptTimeoutError) as raised:
                short_guard.call(ran.append, attempt)
            elapsed.append(time.perf_counter() - started)
            assert raised.value.started is False
            assert breaker.abandoned_attempts == 0  # cancelled, not abandoned
    finally:
        release.set()
        for worker in workers:
            worker.join(10)
    assert sorted(results) == ["long-0", "long-1"]
    # The freed threads look for work; a new call goes through the same queue after the
    # cancelled ones would have, so had they stayed queued they would have run by now.
    assert breaker.guard(attempt_timeout=5).call(lambda: "after") == "after"
    time.sleep(0.05)
    assert ran == []
    assert runner.threads <= 2
    overshoot = [e - 0.1 for e in elapsed]
    print(
        f"\n[timeout] queued attempt, overshoot over 5 runs: "
        f"median={_ms(statistics.median(overshoot))}ms max={_ms(max(overshoot))}ms"
    )
    assert min(elapsed) >= 0.1
    assert statistics.median(elapsed) < 0.1 + MARGIN
    assert max(elapsed) < 0.1 + CAP


# -- 3. a hung dependency cannot take more than its thread cap -----------------------------


@pytest.mark.slow
def test_thousand_hung_calls_stay_under_thread_cap(real_store: redbreaker.Store) -> None:
    """1,000 hung calls: threads never exceed attempt_threads; past the abandoned cap calls
    fail fast with AttemptRejectedError, which does not count for the breaker."""
    breaker = redbreaker.Breaker("flood", store=real_store, failure_threshold=1000)
    cap = breaker.config.attempt_threads
    max_abandoned = breaker.config.max_abandoned_attempts
    assert (cap, max_abandoned) == (16, 8)
    guard = breaker.guard(attempt_timeout=0.005)
    OWN = "redbreaker-flood-"  # noqa: N806
    release = threading.Event()
    stop_sampling = threading.Event()
    peak = {"runner": 0, "live": 0}
    lock = threading.Lock()
    baseline = 0

    def sample() -> None:
        runner = breaker._runner
        runner_threads = 0 if runner is None else runner.threads
        # This breaker's threads are named redbreaker-flood-*; the library's threads of
        # other tests (the full suite runs in one process) come and go on their own.
        live = sum(1 for t in threading.enumerate() if t.name.startswith(OWN)) - baseline
        with lock:
            peak["runner"] = max(peak["runner"], runner_threads)
            peak["live"] = max(peak["live"], live)

    def sampler() -> None:
        while not stop_sampling.is_set():
            sample()
            time.sleep(0.0005)

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    baseline = sum(1 for t in threading.enumerate() if t.name.startswith(OWN))
    started_timeouts = cancelled_timeouts = rejections = 0
    rejected_with: set[int] = set()
    try:
        for _ in range(1000):
            try:
                guard.call(release.wait, 30)
            except AttemptTimeoutError as exc:
                if exc.started:
                    started_timeouts += 1
                else:
                    cancelled_timeouts += 1
            except AttemptRejectedError as exc:
                rejections += 1
                rejected_with.add(exc.abandoned)
            sample()
        snapshot = breaker.snapshot()
    finally:
        release.set()
        stop_sampling.set()
        sampling.join(5)
    timeouts = started_timeouts + cancelled_timeouts
    print(
        f"\n[timeout] 1000 hung calls: thread cap={cap} max runner threads={peak['runner']} "
        f"max live threads over baseline={peak['live']} timeouts={timeouts} "
        f"(started={started_timeouts}, cancelled={cancelled_timeouts}) rejections={rejections}"
    )
    assert peak["runner"] <= cap
    assert peak["live"] <= cap
    assert started_timeouts == max_abandoned
    assert rejected_with == {max_abandoned}
    assert timeouts + rejections == 1000
    assert rejections >= 900
    # Timeouts are failures; rejections count as nothing, so the breaker stayed closed.
    assert snapshot.state is State.CLOSED
    assert snapshot.consecutive_failures == timeouts
    assert snapshot.window_failures == timeouts
    assert snapshot.window_calls == timeouts
    assert _wait_until(lambda: breaker.abandoned_attempts == 0)
    assert breaker.guard(attempt_timeout=5).call(lambda: "ok") == "ok"
    assert breaker._attempt_runner().threads <= cap


# -- 4. abandoned attempts do not hold the process open ------------------------------------


@pytest.mark.slow
def test_process_with_abandoned_attempts_exits_promptly() -> None:
    """A process that abandoned 5 attempts sleeping 30 s exits at once (daemon threads)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(CHILD), "guard", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    wall = time.monotonic() - started
    print(f"\n[timeout] child with 5 abandoned 30 s attempts exited in {wall:.2f}s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timeouts=5 abandoned=5"
    assert wall < 3.0


# -- 5. cancellation passes through, is not retried and not counted ------------------------


BASE_EXCEPTIONS = [KeyboardInterrupt, asyncio.CancelledError]
MODES = {"inline": None, "thread": 2.0}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_base_exception_propagates_unretried_and_uncounted(
    real_store: redbreaker.Store, exc_type: type[BaseException], mode: str
) -> None:
    """KeyboardInterrupt / CancelledError from fn propagate unchanged, once, uncounted."""
    breaker = redbreaker.Breaker("cancel", store=real_store, failure_threshold=10)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_raise, ConnectionError("down"))
    before = breaker.snapshot()
    assert before.consecutive_failures == 2
    guard = breaker.guard(
        attempt_timeout=MODES[mode],
        retry_on=(Exception,),
        max_attempts=3,
        backoff_base=0.001,
        backoff_max=0.001,
    )
    error = exc_type("stop")
    calls: list[str] = []

    def fn() -> None:
        calls.append(threading.current_thread().name)
        raise error

    with pytest.raises(exc_type) as raised:
        guard.call(fn)
    assert raised.value is error
    assert len(calls) == 1
    assert calls[0].startswith("redbreaker-cancel-") is (mode == "thread")
    after = breaker.snapshot()
    assert after.state is State.CLOSED
    assert after.consecutive_failures == 2
    assert after.window_failures == before.window_failures == 2
    assert after.generation == before.generation
    assert breaker.abandoned_attempts == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_base_exception_releases_probe_lease(
    real_store: redbreaker.Store, exc_type: type[BaseException], mode: str
) -> None:
    """A probe ended by KeyboardInterrupt / CancelledError frees its lease: next is a probe."""
    breaker = redbreaker.Breaker(
        "probe", store=real_store, failure_threshold=1, recovery_timeout=0.05
    )
    with pytest.raises(ConnectionError):
        breaker.call(_raise, ConnectionError("down"))
    assert breaker.state is State.OPEN
    time.sleep(0.1)
    guard = breaker.guard(attempt_timeout=MODES[mode], retry_on=(Exception,), max_attempts=3)
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise exc_type("stop")

    with pytest.raises(exc_type):
        guard.call(fn)
    assert calls == [1]
    snapshot = breaker.snapshot()
    assert snapshot.state is State.HALF_OPEN
    assert snapshot.probes_in_flight == 0
    assert snapshot.half_open_successes == 0
    permit = breaker.acquire()
    assert permit.is_probe
    permit.release()


def _raise(exc: BaseException) -> None:
    raise exc


# -- 6. a timeout is a failure and a slow call ---------------------------------------------


def test_timeouts_open_breaker_by_consecutive_failures(real_store: redbreaker.Store) -> None:
    """Two timed-out logical calls open a breaker with failure_threshold=2."""
    breaker = redbreaker.Breaker("t-fail", store=real_store, failure_threshold=2)
    guard = breaker.guard(attempt_timeout=0.05)
    release = threading.Event()
    try:
        with pytest.raises(AttemptTimeoutError):
            guard.call(release.wait, 10)
        first = breaker.snapshot()
        assert (first.state, first.consecutive_failures, first.window_failures) == (
            State.CLOSED,
            1,
            1,
        )
        with pytest.raises(AttemptTimeoutError):
            guard.call(release.wait, 10)
        snapshot = breaker.snapshot()
        assert snapshot.state is State.OPEN
        assert snapshot.last_reason == "consecutive_failures"
        ran: list[int] = []
        with pytest.raises(redbreaker.CircuitOpenError):
            guard.call(ran.append, 1)
        assert ran == []
    finally:
        release.set()
    assert _wait_until(lambda: breaker.abandoned_attempts == 0)


def test_timeouts_count_as_slow_calls(real_store: redbreaker.Store) -> None:
    """A timed-out call counts as slow even when shorter than slow_call_duration."""
    breaker = redbreaker.Breaker(
        "t-slow",
        store=real_store,
        failure_threshold=None,
        slow_call_duration=5,
        slow_call_rate=1.0,
        minimum_calls=2,
    )
    guard = breaker.guard(attempt_timeout=0.05)
    release = threading.Event()
    try:
        with pytest.raises(AttemptTimeoutError):
            guard.call(release.wait, 10)
        first = breaker.snapshot()
        assert first.state is State.CLOSED
        assert (first.window_calls, first.window_slow_calls, first.window_failures) == (1, 1, 1)
        assert first.slow_call_rate == 1.0
        with pytest.raises(AttemptTimeoutError):
            guard.call(release.wait, 10)
        snapshot = breaker.snapshot()
        assert snapshot.state is State.OPEN
        assert snapshot.last_reason == "slow_call_rate"
    finally:
        release.set()
    assert _wait_until(lambda: breaker.abandoned_attempts == 0)


def test_timeout_is_failure_whatever_record_on(real_store: redbreaker.Store) -> None:
    """With record_on=(ConnectionError,), a ValueError is ignored but a timeout counts."""
    breaker = redbreaker.Breaker(
        "t-record", store=real_store, failure_threshold=2, record_on=(ConnectionError,)
    )
    guard = breaker.guard(attempt_timeout=0.05)
    release = threading.Event()
    try:
        with pytest.raises(ValueError, match="not recorded"):
            guard.call(_raise, ValueError("not recorded"))
        assert breaker.snapshot().consecutive_failures == 0
        with pytest.raises(AttemptTimeoutError):
            guard.call(release.wait, 10)
        assert breaker.snapshot().consecutive_failures == 1
        with pytest.raises(AttemptTimeoutError):
            guard.call(release.wait, 10)
        assert breaker.state is State.OPEN
    finally:
        release.set()
    assert _wait_until(lambda: breaker.abandoned_attempts == 0)


# -- 7. context variables reach the attempt thread -----------------------------------------


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def test_contextvars_reach_attempt_thread(real_store: redbreaker.Store) -> None:
    """fn run in the attempt thread sees the caller's ContextVar; its own sets stay there."""
    breaker = redbreaker.Breaker("ctx", store=real_store)
    guard = breaker.guard(attempt_timeout=2)

    def fn() -> tuple[str, str]:
        seen = REQUEST_ID.get()
        REQUEST_ID.set("changed-in-attempt")
        return seen, threading.current_thread().name

    token = REQUEST_ID.set("req-42")
    try:
        seen, thread_name = guard.call(fn)
        assert REQUEST_ID.get() == "req-42"
    finally:
        REQUEST_ID.reset(token)
    assert seen == "req-42"
    assert thread_name.startswith("redbreaker-ctx-")
    assert thread_name != threading.current_thread().name


# -- 8. AttemptRunner directly -------------------------------------------------------------


def test_runner_rejects_at_abandoned_cap_then_recovers() -> None:
    """At max_abandoned, run() fails fast; once the hung fn ends, abandoned is 0 again."""
    runner = AttemptRunner("unit", max_threads=2, max_abandoned=1)
    release = threading.Event()
    try:
        with pytest.raises(AttemptTimeoutError) as raised:
            runner.run(lambda: release.wait(10), 0.05)
        assert raised.value.started is True
        assert runner.abandoned == 1
        ran: list[int] = []
        elapsed: list[float] = []
        for i in range(10):
            started = time.perf_counter()
            with pytest.raises(AttemptRejectedError) as rejected:
                runner.run(lambda i=i: ran.append(i), 5)
            elapsed.append(time.perf_counter() - started)
            assert rejected.value.abandoned == 1
        assert ran == []
        assert runner.threads == 1  # rejections add no thread
    finally:
        release.set()
    print(f"\n[timeout] runner rejection median={_ms(statistics.median(elapsed))}ms")
    assert statistics.median(elapsed) < 0.02
    assert _wait_until(lambda: runner.abandoned == 0)
    assert runner.run(lambda: "again", 5) == "again"
    assert ran == []


def test_runner_reuses_idle_threads() -> None:
    """50 sequential quick calls reuse threads: at most 2 ever exist, though 16 may."""
    runner = AttemptRunner("reuse", max_threads=16, max_abandoned=8)
    names = {runner.run(lambda: threading.current_thread().name, 5) for _ in range(50)}
    # A caller can submit before the thread that just served it is back waiting, so a
    # second thread may start once; with one call at a time there is never a third.
    assert runner.threads <= 2
    assert 1 <= len(names) <= 2
    assert all(name.startswith("redbreaker-reuse-") for name in names)


def test_runner_passes_fn_exception_and_value() -> None:
    """run() returns fn's value and re-raises fn's own exception object unchanged."""
    runner = AttemptRunner("passthrough", max_threads=2, max_abandoned=1)
    assert runner.run(lambda: 7, 5) == 7
    error = LookupError("mine")
    with pytest.raises(LookupError) as raised:
        runner.run(lambda: _raise(error), 5)
    assert raised.value is error
    assert runner.abandoned == 0


class _Interrupt(BaseException):
    """Stands in for KeyboardInterrupt, raised in the caller by a real signal."""


@pytest.fixture
def alarm() -> Iterator[Callable[[float], None]]:
    """Arm SIGALRM to raise _Interrupt in the main thread while it waits."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not (
        threading.main_thread()
    ):
        pytest.skip("needs SIGALRM delivered to the main thread")

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupt

    previous = signal.signal(signal.SIGALRM, interrupt)

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_runner_caller_interrupted_while_running(alarm: Callable[[float], None]) -> None:
    """A caller interrupted while its attempt runs abandons it (counted until it ends)."""
    runner = AttemptRunner("interrupt-running", max_threads=2, max_abandoned=1)
    release = threading.Event()
    running = threading.Event()

    def hung() -> str:
        running.set()
        release.wait(10)
        return "late"

    try:
        alarm(0.2)
        with pytest.raises(_Interrupt):
            runner.run(hung, 5)
        assert running.is_set()
        assert runner.abandoned == 1
    finally:
        release.set()
    assert _wait_until(lambda: runner.abandoned == 0)


def test_runner_caller_interrupted_while_queued(alarm: Callable[[float], None]) -> None:
    """A caller interrupted while its attempt is queued cancels it: it never runs."""
    runner = AttemptRunner("interrupt-queued", max_threads=2, max_abandoned=1)
    release = threading.Event()
    running = [threading.Event(), threading.Event()]

    def hold(index: int) -> None:
        running[index].set()
        release.wait(10)

    holders = [
        threading.Thread(target=runner.run, args=(lambda i=i: hold(i), 10)) for i in range(2)
    ]
    ran: list[int] = []
    try:
        for holder in holders:
            holder.start()
        assert all(event.wait(5) for event in running)
        alarm(0.2)
        with pytest.raises(_Interrupt):
            runner.run(lambda: ran.append(1), 5)
        assert runner.abandoned == 0
    finally:
        release.set()
        for holder in holders:
            holder.join(10)
    assert runner.run(lambda: "after", 5) == "after"
    time.sleep(0.05)
    assert ran == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads
def test_a_forked_child_runs_attempts_on_threads_of_its_own(
    real_store: redbreaker.Store,
) -> None:
    """A guard whose attempt thread runs in the parent keeps working in a forked child
    (gunicorn's preload_app): the child's attempts get threads of the child's own instead
    of waiting, unserved, for the parent's thread, which did not come along."""
    guard = redbreaker.Breaker("svc", store=real_store).guard(attempt_timeout=2.0)
    assert guard.call(lambda: 42) == 42  # the runner's thread now waits for work
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            started = time.monotonic()
            if guard.call(lambda: 7) == 7 and time.monotonic() - started < 1.0:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's attempt was not served"
    assert guard.call(lambda: 43) == 43
