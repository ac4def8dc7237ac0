"""Worker functions for ``test_fleet.py``: each runs in its own process (``spawn``).

Every worker builds its own store with :func:`redbreaker.connect` (real Redis ``TIME``, no
test clock) and its own ``Breaker("dep", ...)`` in the consistency mode the test asks for
(``params["consistency"]``: "strict" unless given, or "cached"), waits on the shared barrier
so the fleet really starts together, and returns plain picklable data. Each worker flushes
its breaker before it reports, so the successes a cached breaker batched are in Redis by
then. The parent imports this module by name: ``tests/`` is on ``sys.path`` and ``spawn``
hands the parent's ``sys.path`` to the child.

Times are ``time.monotonic()`` readings: CLOCK_MONOTONIC is system-wide on Linux, so the
readings of different processes on one host can be compared.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from typing import TYPE_CHECKING, Any

import redbreaker

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

NAME = "dep"
BARRIER_TIMEOUT = 60.0
"""Seconds a worker waits for the rest of the fleet (spawning 8 interpreters on a busy
2-core machine takes a while); a worker that never arrives breaks the barrier."""
RUN_LIMIT = 20.0
"""No worker loop runs longer than this, whatever happens to the breaker."""

Event = tuple[str | None, str, str, int]
"""A transition as a worker reports it: (previous, current, reason, generation)."""


class Boom(Exception):  # noqa: N818 (the dependency's own error, not a redbreaker one)
    """The guarded dependency failed."""


def entry(
    work: str,
    index: int,
    url: str,
    params: dict[str, Any],
    *,
    barrier: Barrier,
    results: Queue[tuple[int, str, Any]],
) -> None:
    """Process target: run ``work`` and put ``(index, "done", result)`` or
    ``(index, "error", traceback)`` on ``results``."""
    # Transitions are logged at WARNING; with no handler configured they would reach
    # stderr through logging's last resort, once per re-open, from every process.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    try:
        worker: Callable[..., Any] = globals()[work]
        result = worker(index, url, params, barrier, results)
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
    else:
        results.put((index, "done", result))


def _event(t: redbreaker.Transition) -> Event:
    return (t.previous.value if t.previous else None, t.current.value, t.reason, t.generation)


def _build(
    url: str, params: dict[str, Any]
) -> tuple[redbreaker.Store, redbreaker.Breaker, list[Event]]:
    store = redbreaker.connect(url)
    seen: list[Event] = []
    settings = {**params["config"], "consistency": params.get("consistency", "strict")}
    breaker = redbreaker.Breaker(
        NAME, store=store, on_transition=[lambda t: seen.append(_event(t))], **settings
    )
    return store, breaker, seen


def fail() -> None:
    raise Boom


def succeed() -> str:
    return "ok"


def trip_until_rejected(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, results: Any
) -> dict[str, Any]:
    """Call an always-failing dependency until the breaker rejects a call."""
    store, breaker, seen = _build(url, params)
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        raise Boom

    try:
        barrier.wait(BARRIER_TIMEOUT)
        deadline = time.monotonic() + RUN_LIMIT
        while time.monotonic() < deadline:
            try:
                breaker.call(failing)
            except Boom:
                continue
            except redbreaker.CircuitOpenError as exc:
                breaker.flush()
                return {
                    "calls": calls,
                    "transitions": seen,
                    "rejected": exc.state,
                    "retry_after": exc.retry_after,
                }
        raise AssertionError(f"worker {index}: never rejected after {calls} failing calls")
    finally:
        store.close()


def fail_n_times(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, results: Any
) -> dict[str, Any]:
    """``n`` failing calls, each followed by ``successes_each`` succeeding ones."""
    store, breaker, seen = _build(url, params)
    n, successes_each = params["n"], params["successes_each"]
    failures = successes = 0
    try:
        barrier.wait(BARRIER_TIMEOUT)
        started = time.monotonic()
        for _ in range(n):
            try:
                breaker.call(fail)
            except Boom:
                failures += 1
            for _ in range(successes_each):
                breaker.call(succeed)
                successes += 1
        breaker.flush()
        return {
            "failures": failures,
            "successes": successes,
            "transitions": seen,
            "elapsed": time.monotonic() - started,
        }
    finally:
        store.close()


def probe_hammer(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, results: Any
) -> dict[str, Any]:
    """Hammer the breaker for ``duration`` seconds.

    A call admitted while closed fails (so it trips again). A probe holds for ``hold``
    seconds, then succeeds or fails as ``probe_succeeds`` says. Each probe is logged as
    ``(generation, start, end)``: ``start`` is read after ``acquire`` returned (the lease is
    already held) and ``end`` before the outcome is sent (the lease is still held unless a
    transition cleared it), so each logged interval lies inside the time its lease existed.
    """
    store, breaker, seen = _build(url, params)
    hold, succeed = params["hold"], params["probe_succeeds"]
    probes: list[tuple[int, float, float]] = []
    rejected: Counter[str] = Counter()
    closed_calls = 0
    try:
        barrier.wait(BARRIER_TIMEOUT)
        deadline = time.monotonic() + params["duration"]
        while time.monotonic() < deadline:
            try:
                permit = breaker.acquire()
            except redbreaker.CircuitOpenError as exc:
                rejected[exc.state] += 1
                time.sleep(params["reject_pause"])
                continue
            if not permit.is_probe:
                closed_calls += 1
                permit.failure()
                continue
            start = time.monotonic()
            time.sleep(hold)
            end = time.monotonic()
            if succeed:
                permit.success()
            else:
                permit.failure()
            probes.append((permit.generation, start, end))
        breaker.flush()
        return {
            "probes": probes,
            "rejected": dict(rejected),
            "closed_calls": closed_calls,
            "transitions": seen,
        }
    finally:
        store.close()


def restarted(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, results: Any
) -> dict[str, Any]:
    """A freshly started worker: read the snapshot first, or make a call first."""
    store, breaker, seen = _build(url, params)
    called = 0

    def dependency() -> str:
        nonlocal called
        called += 1
        return "ok"

    try:
        barrier.wait(BARRIER_TIMEOUT)
        before = breaker.snapshot() if params["snapshot_first"] else None
        rejected: tuple[str, float | None] | None = None
        try:
            breaker.call(dependency)
        except redbreaker.CircuitOpenError as exc:
            rejected = (exc.state, exc.retry_after)
        breaker.flush()
        return {
            "before": before,
            "after": breaker.snapshot(),
            "called": called,
            "rejected": rejected,
            "transitions": seen,
        }
    finally:
        store.close()


def probe_and_hang(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, results: Any
) -> None:
    """Wait for a probe, report it, then hang while holding the lease (to be SIGKILLed)."""
    store, breaker, _ = _build(url, params)
    deadline = time.monotonic() + RUN_LIMIT
    while time.monotonic() < deadline:
        asked = time.monotonic()
        try:
            permit = breaker.acquire()
        except redbreaker.CircuitOpenError:
            time.sleep(0.005)
            continue
        if not permit.is_probe:
            raise AssertionError("the victim was admitted without a probe: breaker not open")
        results.put(
            (
                index,
                "holding",
                {"generation": permit.generation, "asked": asked, "got": time.monotonic()},
            )
        )
        time.sleep(RUN_LIMIT * 3)  # the parent kills us here, the lease still held
    store.close()
    raise AssertionError("the victim never got a probe")


def close_after_kill(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, results: Any
) -> dict[str, Any]:
    """After the victim is killed: call until admitted in closed state (probes succeed)."""
    store, breaker, seen = _build(url, params)
    probes: list[tuple[int, float, float]] = []
    rejected: Counter[str] = Counter()
    first_rejection = last_rejection = None
    try:
        barrier.wait(BARRIER_TIMEOUT)
        deadline = time.monotonic() + params["duration"]
        while time.monotonic() < deadline:
            try:
                permit = breaker.acquire()
            except redbreaker.CircuitOpenError as exc:
                now = time.monotonic()
                rejected[exc.state] += 1
                first_rejection = first_rejection or now
                last_rejection = now
                time.sleep(params["reject_pause"])
                continue
            if permit.is_probe:
                start = time.monotonic()
                time.sleep(params["hold"])
                end = time.monotonic()
                permit.success()
                probes.append((permit.generation, start, end))
                continue
            permit.success()
            breaker.flush()
            return {
                "probes": probes,
                "rejected": dict(rejected),
                "closed_seen": True,
                "first_rejection": first_rejection,
                "last_rejection": last_rejection,
                "transitions": seen,
            }
        breaker.flush()
        return {
            "probes": probes,
            "rejected": dict(rejected),
            "closed_seen": False,
            "first_rejection": first_rejection,
            "last_rejection": last_rejection,
            "transitions": seen,
        }
    finally:
        store.close()
