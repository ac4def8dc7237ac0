"""A real fleet: 8+ separate processes (``spawn``), each with its own store and breaker, on
one real redis-server, started together on a barrier. No test clock: Redis ``TIME`` rules.

What must hold fleet-wide, whatever the interleaving:
- one trip is one transition, reported by exactly one process and published exactly once;
- no failure or call is lost from the streak or the window;
- never more probes hold a lease than ``half_open_max_calls``;
- a (re)started worker never resets an open breaker;
- a worker killed while holding a probe lease does not wedge the breaker.

Every test runs twice: with the workers' breakers in the default ``strict`` consistency,
and in ``cached`` consistency (closed-state calls admitted from a local copy, successes
batched: each worker flushes before it reports, so the totals must still be exact).

Each test prints one compact ``[fleet] ...`` line of measured figures (see with ``-s``)
and writes them to ``fleet_figures.json`` in its ``tmp_path``.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import pytest

import fleet_workers
import redbreaker
from redbreaker import State

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from redis_servers import RedisServer

pytestmark = pytest.mark.slow

FLEET = 8
PREFIX = "redbreaker"
CHANNEL = f"{PREFIX}:events"
STOP = "__stop_watching__"
RESULT_TIMEOUT = 60.0
CONSISTENCY = pytest.mark.parametrize("consistency", ["strict", "cached"])


# ------------------------------------------------------------------------------ helpers


class Fleet:
    """Processes running one worker of ``fleet_workers``, released together by a barrier
    the parent also waits on (parties = workers + 1)."""

    def __init__(self, work: str, url: str, params: list[dict[str, Any]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.barrier = ctx.Barrier(len(params) + 1)
        self.size = len(params)
        self.procs = [
            ctx.Process(
                target=fleet_workers.entry,
                args=(work, i, url, p),
                kwargs={"barrier": self.barrier, "results": self.results},
                daemon=True,
                name=f"fleet-{work}-{i}",
            )
            for i, p in enumerate(params)
        ]

    def __enter__(self) -> Fleet:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            proc.close()
        self.results.close()
        self.results.join_thread()

    def go(self) -> None:
        """Wait until every worker is built and waiting, then release them all at once."""
        try:
            self.barrier.wait(fleet_workers.BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            self._raise_worker_errors("the fleet never assembled at the barrier")

    def collect(self) -> list[Any]:
        """Every worker's result, by index; a worker's exception fails the test."""
        done: dict[int, Any] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(done) < self.size:
            try:
                left = max(0.1, deadline - time.monotonic())
                index, kind, payload = self.results.get(timeout=left)
            except queue.Empty:
                missing = sorted(set(range(self.size)) - set(done))
                raise AssertionError(f"workers {missing} gave no result in time") from None
            if kind == "error":
                raise AssertionError(f"worker {index} failed:\n{payload}")
            if kind == "done":
                done[index] = payload
        for proc in self.procs:
            proc.join(10)
        return [done[i] for i in range(self.size)]

    def _raise_worker_errors(self, what: str) -> None:
        errors = []
        while True:
            try:
                index, kind, payload = self.results.get(timeout=1.0)
            except queue.Empty:
                break
            if kind == "error":
                errors.append(f"worker {index}:\n{payload}")
        raise AssertionError(what + ("\n" + "\n".join(errors) if errors else ""))


class EventWatcher:
    """Collects every transition PUBLISHed on the events channel via ``Store.transitions()``
    in a thread, from before the fleet starts until ``stop()``."""

    def __init__(self, server: RedisServer, url: str) -> None:
        self.server = server
        self.store = redbreaker.connect(url, prefix=PREFIX)
        self.events: list[redbreaker.Transition] = []
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        stream = self.store.transitions()
        try:
            for transition in stream:
                if transition.name == STOP:
                    return
                self.events.append(transition)
        finally:
            stream.close()

    def __enter__(self) -> EventWatcher:
        self.thread.start()
        deadline = time.monotonic() + 10
        with self.server.client() as r:
            while dict(r.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0) < 1:
                assert time.monotonic() < deadline, "the watcher never subscribed"
                time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[redbreaker.Transition]:
        """Stop watching (a marker event sent after everything else) and return the events."""
        if self.thread.is_alive():
            marker = {
                "name": STOP,
                "from_state": "closed",
                "to_state": "closed",
                "reason": "stop",
                "generation": 0,
                "at_ms": 0,
            }
            with self.server.client() as r:
                r.publish(CHANNEL, json.dumps(marker))
            self.thread.join(10)
            assert not self.thread.is_alive(), "the watcher did not stop"
            self.store.close()
        return self.events


def _config(consistency: str, **settings: Any) -> dict[str, Any]:
    return {"config": settings, "consistency": consistency}


def _transitions(results: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Every transition any worker's hooks saw, ordered by generation."""
    return sorted((t for r in results for t in r["transitions"]), key=lambda t: t[3])


def _max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals ``[start, end)`` covering one instant (touching ends do not overlap)."""
    edges = []
    for start, end in intervals:
        if end > start:
            edges += [(start, 1), (end, -1)]
    edges.sort()  # at equal times -1 sorts first: an end before a start
    best = now = 0
    for _, delta in edges:
        now += delta
        best = max(best, now)
    return best


Intervals = list[tuple[float, float]]


def _probes_by_generation(results: Iterable[dict[str, Any]]) -> dict[int, Intervals]:
    by_gen: dict[int, Intervals] = defaultdict(list)
    for r in results:
        for generation, start, end in r["probes"]:
            by_gen[generation].append((start, end))
    return by_gen


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Measured figures of one test: printed as one line and saved as JSON in tmp_path."""
    measured: dict[str, Any] = {}
    yield measured
    name = request.node.name.removeprefix("test_")
    (tmp_path / "fleet_figures.json").write_text(json.dumps({name: measured}, indent=1))
    print(f"\n[fleet] {name}: " + " ".join(f"{k}={v}" for k, v in measured.items()))


def _snapshot(url: str, **settings: Any) -> redbreaker.Snapshot:
    store = redbreaker.connect(url, prefix=PREFIX)
    try:
        return redbreaker.Breaker(fleet_workers.NAME, store=store, **settings).snapshot()
    finally:
        store.close()


# ------------------------------------------------------------------------------ tests


@CONSISTENCY
def test_one_trip_fleet_wide(
    redis_server: RedisServer, redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """8 processes failing at once trip the breaker exactly once: one hook, one event."""
    config = _config(consistency, failure_threshold=5, recovery_timeout=30)
    with (
        EventWatcher(redis_server, redis_url) as watcher,
        Fleet("trip_until_rejected", redis_url, [config] * FLEET) as fleet,
    ):
        fleet.go()
        results = fleet.collect()
        events = watcher.stop()

    hooked = _transitions(results)
    trips = [t for t in hooked if (t[0], t[1]) == ("closed", "open")]
    published = [(e.previous, e.current, e.reason, e.generation) for e in events]
    calls = sum(r["calls"] for r in results)
    figures.update(
        trips_hooked=len(trips),
        trips_published=len(published),
        expected=1,
        dependency_calls=calls,
        reporters=sum(1 for r in results if r["transitions"]),
    )

    assert hooked == [("closed", "open", "consecutive_failures", 2)]
    assert published == [(State.CLOSED, State.OPEN, "consecutive_failures", 2)]
    assert all(e.name == fleet_workers.NAME for e in events)
    # Exactly 5 failures were counted; every other call was admitted before the trip and
    # recorded after it (stale): at most one per other process. (Cached: a call admitted
    # from a copy after the trip is one of those; its stale reply drops the copy.)
    assert 5 <= calls <= 5 + FLEET - 1
    assert {r["rejected"] for r in results} == {"open"}
    snap = _snapshot(redis_url)
    assert (snap.state, snap.generation, snap.open_count, snap.consecutive_opens) == (
        State.OPEN,
        2,
        1,
        1,
    )


@CONSISTENCY
def test_no_failure_lost_from_streak(
    redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """8 processes x N concurrent failures: the fleet-wide streak is exactly 8*N."""
    n = 150
    params = {**_config(consistency, failure_threshold=10_000), "n": n, "successes_each": 0}
    with Fleet("fail_n_times", redis_url, [params] * FLEET) as fleet:
        fleet.go()
        results = fleet.collect()

    snap = _snapshot(redis_url, failure_threshold=10_000)
    figures.update(
        expected=FLEET * n,
        streak=snap.consecutive_failures,
        lost=FLEET * n - snap.consecutive_failures,
    )
    assert [r["failures"] for r in results] == [n] * FLEET
    assert _transitions(results) == []
    assert (snap.state, snap.generation) == (State.CLOSED, 1)
    assert snap.consecutive_failures == FLEET * n


@CONSISTENCY
def test_no_call_lost_from_window(
    redis_server: RedisServer, redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """8 processes x (N failures + k*N successes) at once: the window holds exactly 8*N
    failures and 8*(k+1)*N calls (strict, k=1: calls counted at admission, failures at
    record; cached, k=3: the success after a failure is sent at once, the next two are
    batched, and each worker flushes before it reports)."""
    n = 100
    each = 1 if consistency == "strict" else 3
    settings = {
        "failure_threshold": None,
        "failure_rate": 0.5,
        "window": 600,
        "minimum_calls": 10 * FLEET * n,
    }  # counted, never tripped
    params = {**_config(consistency, **settings), "n": n, "successes_each": each}
    with Fleet("fail_n_times", redis_url, [params] * FLEET) as fleet:
        redis_server.reset_stats()
        fleet.go()
        results = fleet.collect()
    evalsha = redis_server.commandstats().get("evalsha", 0)

    snap = _snapshot(redis_url, **settings)
    calls = (each + 1) * FLEET * n
    longest = max(r["elapsed"] for r in results)
    figures.update(
        expected_failures=FLEET * n,
        window_failures=snap.window_failures,
        expected_calls=calls,
        window_calls=snap.window_calls,
        calls_lost=calls - snap.window_calls,
        failures_lost=FLEET * n - snap.window_failures,
        evalsha=evalsha,
        worker_seconds=round(longest, 3),
    )
    assert [(r["failures"], r["successes"]) for r in results] == [(n, each * n)] * FLEET
    assert _transitions(results) == []
    assert (snap.state, snap.generation) == (State.CLOSED, 1)
    assert snap.window_failures == FLEET * n
    assert snap.window_calls == calls
    if consistency == "cached":
        # Per worker: one record per failure and per success after it; besides, at most a
        # flush per flush_interval, a refresh per max_staleness, the first acquire, the one
        # after the feed subscribed, the final flush, and NOSCRIPT retries of a cold server.
        extra = int(longest / 0.1) + int(longest / 1.0) + 3 + 3
        assert evalsha <= FLEET * (2 * n + extra)


@CONSISTENCY
def test_probes_in_flight_never_exceed_limit(
    redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """Over many half-open windows, 8 hammering processes never hold more than
    half_open_max_calls=2 probe leases, and each window admits at most 2 probes."""
    limit = 2
    params = {
        **_config(
            consistency, failure_threshold=1, recovery_timeout=0.05, half_open_max_calls=limit
        ),
        "duration": 2.5,
        "hold": 0.005,
        "probe_succeeds": False,
        "reject_pause": 0.001,
    }
    with Fleet("probe_hammer", redis_url, [params] * FLEET) as fleet:
        fleet.go()
        results = fleet.collect()

    by_gen = _probes_by_generation(results)
    hooked = _transitions(results)
    half_open_gens = {t[3] for t in hooked if t[1] == "half_open"}
    reopen_gens = {
        t[3] for t in hooked if (t[0], t[1], t[2]) == ("half_open", "open", "probe_failed")
    }
    per_gen = {g: len(v) for g, v in by_gen.items()}
    per_gen_overlap = max((_max_overlap(v) for v in by_gen.values()), default=0)
    # Each logged interval lies inside the time its probe held a lease (start after acquire
    # returned, end before the outcome was sent), and leases outlive re-opens (a probe of
    # an earlier window still running keeps its slot), so across all windows together no
    # instant may see more than `limit` probes.
    raw_overlap = _max_overlap(iv for v in by_gen.values() for iv in v)
    rejected: Counter[str] = Counter()
    for r in results:
        rejected.update(r["rejected"])
    figures.update(
        windows=len(by_gen),
        probes=sum(per_gen.values()),
        allowed_per_window=limit,
        max_probes_per_window=max(per_gen.values(), default=0),
        windows_with_2=sum(1 for c in per_gen.values() if c == 2),
        max_overlap_same_gen=per_gen_overlap,
        max_overlap_all_windows=raw_overlap,
        rejected=dict(rejected),
    )

    # Every transition made by any process was reported once: generations 2, 3, ... gapless.
    assert [t[3] for t in hooked] == list(range(2, len(hooked) + 2))
    assert len(by_gen) >= 10
    assert set(by_gen) == half_open_gens  # probes only in half-open windows, every window probed
    assert {g + 1 for g in by_gen} == reopen_gens  # each window ended by its failed probe
    assert max(per_gen.values()) <= limit
    assert per_gen_overlap <= limit
    assert raw_overlap <= limit
    assert any(c == limit for c in per_gen.values())  # the fleet did contend for the slots


@CONSISTENCY
def test_succeeding_probes_one_at_a_time(
    redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """With half_open_max_calls=1 and success_threshold=3, each half-open window admits
    probes one at a time, and exactly 3 successes close it."""
    params = {
        **_config(
            consistency,
            failure_threshold=1,
            recovery_timeout=0.05,
            half_open_max_calls=1,
            success_threshold=3,
        ),
        "duration": 2.5,
        "hold": 0.005,
        "probe_succeeds": True,
        "reject_pause": 0.001,
    }
    with Fleet("probe_hammer", redis_url, [params] * FLEET) as fleet:
        fleet.go()
        results = fleet.collect()

    by_gen = _probes_by_generation(results)
    hooked = _transitions(results)
    last_gen = hooked[-1][3]
    half_open_gens = {t[3] for t in hooked if t[1] == "half_open"}
    closes = {
        t[3] - 1
        for t in hooked
        if (t[0], t[1], t[2]) == ("half_open", "closed", "probes_succeeded")
    }
    overlap = _max_overlap(iv for v in by_gen.values() for iv in v)
    rejected: Counter[str] = Counter()
    for r in results:
        rejected.update(r["rejected"])
    figures.update(
        windows=len(by_gen),
        closed_by_probes=len(closes),
        probes_per_closed_window=sorted({len(by_gen[g]) for g in closes}),
        allowed_in_flight=1,
        max_overlap=overlap,
        rejected=dict(rejected),
    )

    assert [t[3] for t in hooked] == list(range(2, len(hooked) + 2))
    assert set(by_gen) == half_open_gens
    assert len(closes) >= 5
    for generation, probes in by_gen.items():
        if generation in closes:
            assert len(probes) == 3, (generation, probes)
        else:  # only a window the run ended in can be unfinished
            assert generation == last_gen
            assert 1 <= len(probes) <= 3
    assert overlap == 1
    assert rejected["half_open"] > 0  # other processes were turned away while a probe ran


@CONSISTENCY
def test_restarted_workers_keep_breaker_open(
    redis_server: RedisServer, redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """Fresh processes started while the breaker is open see it open, unchanged, and their
    first call is rejected without running the dependency."""
    config = _config(consistency, failure_threshold=5, recovery_timeout=60)
    with Fleet("trip_until_rejected", redis_url, [config] * FLEET) as first:
        first.go()
        first.collect()
    tripped = _snapshot(redis_url)
    with redis_server.client() as r:
        created_at = r.hget(f"{PREFIX}:{{{fleet_workers.NAME}}}", "created_at")
    assert (tripped.state, tripped.generation, tripped.open_count) == (State.OPEN, 2, 1)
    assert tripped.open_until_ms is not None

    params = [{**config, "snapshot_first": i % 2 == 0} for i in range(FLEET)]
    with Fleet("restarted", redis_url, params) as second:
        second.go()
        results = second.collect()

    after = _snapshot(redis_url)
    with redis_server.client() as r:
        created_again = r.hget(f"{PREFIX}:{{{fleet_workers.NAME}}}", "created_at")
    seen = [
        (s.state, s.generation, s.open_until_ms, s.open_count, s.changed_at_ms)
        for r in results
        for s in (r["before"], r["after"])
        if s is not None
    ]
    expected = (State.OPEN, 2, tripped.open_until_ms, 1, tripped.changed_at_ms)
    figures.update(
        restarted=FLEET,
        saw_open_unchanged=sum(1 for s in seen if s == expected),
        snapshots=len(seen),
        dependency_calls=sum(r["called"] for r in results),
        rejected=sum(1 for r in results if r["rejected"]),
    )

    assert seen == [expected] * (FLEET + FLEET // 2)
    assert [r["called"] for r in results] == [0] * FLEET
    assert [r["rejected"][0] for r in results] == ["open"] * FLEET
    assert all(0 < r["rejected"][1] <= 60 for r in results)
    assert _transitions(results) == []
    assert (after.state, after.generation, after.open_until_ms, after.changed_at_ms) == (
        State.OPEN,
        2,
        tripped.open_until_ms,
        tripped.changed_at_ms,
    )
    assert created_again == created_at


@CONSISTENCY
def test_killed_probe_holder_does_not_wedge(
    redis_url: str, consistency: str, figures: dict[str, Any]
) -> None:
    """A process SIGKILLed while it holds the only probe lease blocks probes only until the
    lease expires; then another process probes and closes the breaker."""
    lease = 0.5
    settings = {
        "failure_threshold": 1,
        "recovery_timeout": 0.2,
        "half_open_max_calls": 1,
        "probe_lease": lease,
    }
    params = {
        **_config(consistency, **settings),
        "duration": 8.0,
        "hold": 0.005,
        "reject_pause": 0.002,
    }
    store = redbreaker.connect(redis_url, prefix=PREFIX)
    parent = redbreaker.Breaker(fleet_workers.NAME, store=store, **settings)
    ctx = multiprocessing.get_context("spawn")
    try:
        with Fleet("close_after_kill", redis_url, [params] * FLEET) as fleet:
            with pytest.raises(fleet_workers.Boom):
                parent.call(fleet_workers.fail)  # trip: open for 0.2 s
            # Its own queue: a process killed just after a put may still hold the queue's
            # write lock, which would block every other writer of that queue.
            told = ctx.Queue()
            victim = ctx.Process(
                target=fleet_workers.entry,
                args=("probe_and_hang", FLEET, redis_url, params),
                kwargs={"barrier": fleet.barrier, "results": told},
                daemon=True,
            )
            victim.start()
            try:
                index, kind, holding = told.get(timeout=RESULT_TIMEOUT)
                assert (index, kind) == (FLEET, "holding"), holding
                victim.kill()
                victim.join(10)
                assert victim.exitcode == -9
            finally:
                if victim.is_alive():
                    victim.kill()
                    victim.join(10)
                victim.close()
                told.close()
            # The dead process's lease still blocks: no probe for anyone yet.
            snap = parent.snapshot()
            with pytest.raises(redbreaker.CircuitOpenError) as blocked:
                parent.acquire()
            blocked_at = time.monotonic()
            fleet.go()
            results = fleet.collect()
    finally:
        store.close()

    after = _snapshot(redis_url, **settings)
    hooked = _transitions(results)
    probes = [p for r in results for p in r["probes"]]
    first_probe = min((p[1] for p in probes), default=None)
    figures.update(
        lease_s=lease,
        blocked_for_s=None if first_probe is None else round(first_probe - holding["asked"], 3),
        probes_after_kill=len(probes),
        allowed=1,
        rejected_half_open=sum(r["rejected"].get("half_open", 0) for r in results),
        closed_seen=sum(1 for r in results if r["closed_seen"]),
    )

    assert (snap.state, snap.generation, snap.probes_in_flight) == (
        State.HALF_OPEN,
        holding["generation"],
        1,
    )
    assert blocked.value.state == "half_open"
    assert blocked_at - holding["asked"] < lease  # the check above ran inside the lease
    # Exactly one probe, in the victim's generation, only once its lease had run out.
    assert [p[0] for p in probes] == [holding["generation"]]
    assert first_probe is not None
    assert first_probe - holding["asked"] >= lease - 0.01
    assert hooked == [("half_open", "closed", "probes_succeeded", holding["generation"] + 1)]
    assert all(r["closed_seen"] for r in results)
    assert (after.state, after.generation) == (State.CLOSED, holding["generation"] + 1)
