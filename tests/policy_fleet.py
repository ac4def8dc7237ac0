"""Issue 14's fleet policies run by a real fleet: the scenario driver and its workers.

Used by ``tests/test_fleet_policies.py`` (which asserts) and ``benchmarks/_policies.py``
(which prints the same figures), so each scenario is written once. No pytest here, and
nothing but the package: the benchmark puts ``tests/`` on ``sys.path`` to import this.

``PROCESSES`` worker processes (``spawn``: fresh interpreters) are started once and take
orders over a pipe; each order builds the worker's own store and strict ``Breaker`` (one
name fleet-wide), waits for a shared wall-clock instant, runs, and answers with plain data.
Wall-clock times are ``time.time()`` in every process and the Redis server's clock in
transitions: one machine, one CLOCK_REALTIME. The scenarios: ``amplification`` (the
retry budget) and ``quorum_run`` (quorum opening).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
import secrets
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redbreaker

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

PROCESSES = 8
PREFIX = "redbreaker-policies"
MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.001  # seconds: retries stay cheap, the figures are about counts
BUDGET = 0.2
WINDOW = 60.0
"""Seconds of the amplification breakers' window: a run lasts far less than its first
bucket takes to slide out (checked), so every counted call and granted retry of the run
stays in the window and the budget's inequality holds over the whole run, exactly."""
FLOOR = 0.1
"""Retries per second of the floor: FLOOR * WINDOW = 6 retries on top of the ratio."""
NEVER_TRIPS = 1_000_000
"""The amplification breakers' failure_threshold. In metrics_only a rule that fires is a
would-trip, which starts the window afresh and with it the budget's count of retries: a
threshold no run reaches keeps one window for the whole run."""
THRESHOLD = 5  # failure_threshold of the quorum breakers
RECOVERY = 60.0  # seconds: no quorum breaker (fleet's or a process's own) recovers in a run
MIN_REPORTERS = 3
PHASE1 = 3.0  # seconds process 0 fails alone
PAUSE = 0.008  # seconds between two calls of a quorum worker: ~100 calls/s per process
START_LEAD = 0.5  # seconds between an order and its start instant: every worker is built
RUN_LIMIT = 20.0  # no worker loop runs longer, whatever happens to the breaker
ORDER_TIMEOUT = 60.0


class Boom(Exception):  # noqa: N818 (the dependency's own error, not a redbreaker one)
    """The quorum scenario's dependency failed."""


class PolicyFleetError(RuntimeError):
    """A worker crashed, raised, or did not answer in time."""


class _RefusalCounter:
    """A store observer counting the retries the fleet's budget refused in this process."""

    def __init__(self) -> None:
        self.refused = 0

    def on_call(self, record: redbreaker.CallRecord) -> None: ...

    def on_transition(self, transition: redbreaker.Transition) -> None: ...

    def on_policy_event(self, breaker: str, event: str) -> None:
        if event == "retry_budget_exhausted":
            self.refused += 1


# --------------------------------------------------------------------------- the workers


def _sleep_until(instant: float) -> None:
    left = instant - time.time()
    if left > 0:
        time.sleep(left)


def amplify(url: str, index: int, params: dict[str, Any]) -> dict[str, Any]:
    """``params["calls"]`` guarded calls of a dependency failing with probability ``p``."""
    counter = _RefusalCounter()
    store = redbreaker.connect(url, prefix=PREFIX, observers=[counter])
    try:
        breaker = redbreaker.Breaker(params["name"], store=store, **params["config"])
        rng = random.Random(params["seed"] * 1000 + index)
        p = params["p"]
        attempts = 0

        def dependency() -> str:
            nonlocal attempts
            attempts += 1
            if rng.random() < p:
                raise ConnectionError("the dependency failed")
            return "ok"

        guard = breaker.guard(
            retry_on=ConnectionError,
            max_attempts=MAX_ATTEMPTS,
            backoff_base=BACKOFF_BASE,
            fallback=lambda failure: failure.reason,
        )
        _sleep_until(params["start_at"])
        started = time.time()
        ended: Counter[str] = Counter()
        for _ in range(params["calls"]):
            ended[guard.call(dependency)] += 1
        return {
            "logical": params["calls"],
            "attempts": attempts,
            "ended": dict(ended),  # "ok", or the Failure.reason its fallback was given
            "refused": counter.refused,
            "started": started,
            "ended_at": time.time(),
        }
    finally:
        store.close()


def quorum(url: str, index: int, params: dict[str, Any]) -> dict[str, Any]:
    """Call in a loop every ``PAUSE`` s from ``start_at``: the dependency fails for process
    0 from the start and for everyone from ``fail_at``; stop at the first rejection seen
    from ``fail_at`` on. A call's phase is that of the dependency's own clock reading; a
    rejection's, that of the clock read after it was raised (so a phase-1 rejection was
    decided before phase 2 began)."""
    store = redbreaker.connect(url, prefix=PREFIX)
    transitions: list[tuple[str, str, str, int, int]] = []

    def hook(t: redbreaker.Transition) -> None:
        previous = t.previous.value if t.previous else "unreadable"
        transitions.append((previous, t.current.value, t.reason, t.generation, t.at_ms))

    try:
        breaker = redbreaker.Breaker(
            params["name"], store=store, on_transition=[hook], **params["config"]
        )
        fail_at, sick = params["fail_at"], index == 0
        calls = {1: 0, 2: 0}  # dependency calls by phase (every phase-2 call fails)

        def dependency() -> None:
            phase = 2 if time.time() >= fail_at else 1
            calls[phase] += 1
            if sick or phase == 2:
                raise Boom

        rejected: dict[int, Counter[str]] = {1: Counter(), 2: Counter()}
        first_phase2_scope = None
        _sleep_until(params["start_at"])
        started = time.time()
        deadline = time.monotonic() + RUN_LIMIT
        while time.monotonic() < deadline:
            try:
                breaker.call(dependency)
            except Boom:
                pass
            except redbreaker.CircuitOpenError as exc:
                phase = 2 if time.time() >= fail_at else 1
                rejected[phase][exc.scope] += 1
                if phase == 2:
                    first_phase2_scope = exc.scope
                    break
            time.sleep(PAUSE)
        return {
            "calls": calls,
            "rejected": {phase: dict(c) for phase, c in rejected.items()},
            "first_phase2_scope": first_phase2_scope,
            "transitions": transitions,
            "started": started,
        }
    finally:
        store.close()


WORKS = {"amplify": amplify, "quorum": quorum}


def worker_main(conn: Connection, url: str, index: int) -> None:
    """Process target: answer each order ``(work, params)`` with ("ok", result) or
    ("error", traceback) until told to stop or the parent goes away."""
    # Budget and quorum edges are logged at WARNING; with no handler configured they would
    # reach stderr through logging's last resort, from every process.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    conn.send(("ok", index))
    while True:
        try:
            order = conn.recv()
        except EOFError:
            return
        if order[0] == "stop":
            return
        try:
            conn.send(("ok", WORKS[order[0]](url, index, order[1])))
        except Exception:
            conn.send(("error", traceback.format_exc()))


# --------------------------------------------------------------------------- the parent


class PolicyFleet:
    """``size`` worker processes on the redis-server at ``url``."""

    def __init__(self, url: str, size: int = PROCESSES, *, start_timeout: float = 120.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.url = url
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for i in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(child, url, i), name=f"policy-worker-{i}", daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.collect(start_timeout)

    def __enter__(self) -> PolicyFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, work: str, params: dict[str, Any]) -> None:
        """Give every worker the order ``(work, params)``."""
        for conn in self.conns:
            conn.send((work, params))

    def collect(self, timeout: float = ORDER_TIMEOUT) -> list[Any]:
        """Every worker's answer, by index."""
        answers = []
        deadline = time.monotonic() + timeout
        for i, conn in enumerate(self.conns):
            if not conn.poll(max(0.1, deadline - time.monotonic())):
                raise PolicyFleetError(f"worker {i} sent nothing for {timeout:g} s")
            try:
                kind, payload = conn.recv()
            except EOFError as exc:
                code = self.procs[i].exitcode
                raise PolicyFleetError(f"worker {i} died (exit code {code})") from exc
            if kind == "error":
                raise PolicyFleetError(f"worker {i} failed:\n{payload}")
            answers.append(payload)
        return answers

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


def _snapshot(url: str, name: str, config: dict[str, Any]) -> redbreaker.Snapshot:
    store = redbreaker.connect(url, prefix=PREFIX)
    try:
        return redbreaker.Breaker(name, store=store, **config).snapshot()
    finally:
        store.close()


# --------------------------------------------------------------------------- amplification


@dataclass(frozen=True)
class Amplification:
    """One amplification run's fleet-wide figures."""

    p: float
    budget: float | None
    logical: int
    dependency_calls: int
    succeeded: int
    ended: dict[str, int]  # calls by how they ended: "ok" or the fallback's Failure.reason
    refused_by_process: list[int]  # refusals each process's observer was told of
    window_retries: int  # the snapshot's, after the run
    exhausted_delta: int  # the snapshot's retry_budget_exhausted_count, after - before
    span: float  # seconds from the first worker's start to the last one's end
    floor_retries: float  # FLOOR * WINDOW with a budget, else 0

    @property
    def ratio(self) -> float:
        """Dependency calls per logical call."""
        return self.dependency_calls / self.logical

    @property
    def success_share(self) -> float:
        return self.succeeded / self.logical

    @property
    def bound(self) -> float | None:
        """1 + budget + the floor's share (FLOOR * WINDOW / the logical calls of the run,
        every one of them in the window): what the budget allows per logical call."""
        if self.budget is None:
            return None
        return 1 + self.budget + self.floor_retries / self.logical


def amplification(
    fleet: PolicyFleet,
    p: float,
    *,
    budget: float | None,
    calls: int,
    seed: int = 1,
    threshold: int = NEVER_TRIPS,
) -> Amplification:
    """One run on a fresh breaker, held in metrics_only (it never opens)."""
    name = f"amplify-{secrets.token_hex(4)}"
    config: dict[str, Any] = {"failure_threshold": threshold, "window": WINDOW}
    if budget is not None:
        config.update(retry_budget=budget, retry_budget_floor=FLOOR)
    store = redbreaker.connect(fleet.url, prefix=PREFIX)
    try:
        redbreaker.Breaker(name, store=store, **config).metrics_only()
    finally:
        store.close()
    before = _snapshot(fleet.url, name, config)
    start_at = time.time() + START_LEAD
    order = {"name": name, "config": config, "p": p, "calls": calls, "seed": seed,
             "start_at": start_at}  # fmt: skip
    fleet.send("amplify", order)
    results = fleet.collect()
    after = _snapshot(fleet.url, name, config)
    ended: Counter[str] = Counter()
    for r in results:
        ended.update(r["ended"])
    return Amplification(
        p=p,
        budget=budget,
        logical=sum(r["logical"] for r in results),
        dependency_calls=sum(r["attempts"] for r in results),
        succeeded=ended["ok"],
        ended=dict(ended),
        refused_by_process=[r["refused"] for r in results],
        window_retries=after.window_retries,
        exhausted_delta=after.retry_budget_exhausted_count - before.retry_budget_exhausted_count,
        span=max(r["ended_at"] for r in results) - min(r["started"] for r in results),
        floor_retries=0.0 if budget is None else FLOOR * WINDOW,
    )


# --------------------------------------------------------------------------- quorum


@dataclass(frozen=True)
class Quorum:
    """One quorum run's figures (process 0 is the sick one)."""

    min_reporters: int
    fail_at_ms: int  # phase 2's start, in Unix ms
    sick_phase1_calls: int  # process 0's dependency calls in phase 1
    sick_phase1_rejected: dict[str, int]  # its phase-1 rejections, by scope
    healthy_phase1_rejected: dict[str, int]  # the others' phase-1 rejections, by scope
    mid: redbreaker.Snapshot  # taken in phase 1, just before fail_at
    after: redbreaker.Snapshot  # once every worker had been rejected in phase 2
    transitions: list[tuple[str, str, str, int, int]]  # every fleet transition (hooks)
    leak_by_process: list[int]  # failing dependency calls from fail_at until rejected
    first_phase2_scope: list[str | None]  # the scope of each one's first phase-2 rejection
    late: int  # workers that started calling after fail_at (the run proves nothing then)
    opens: list[tuple[str, str, str, int, int]]  # the fleet transitions to open

    @property
    def leak(self) -> int:
        return sum(self.leak_by_process)

    @property
    def phase1_opens(self) -> int:
        """Fleet opens decided (server time) before phase 2 began."""
        return sum(1 for t in self.opens if t[4] < self.fail_at_ms)


def leak_bound(processes: int = PROCESSES, threshold: int = THRESHOLD) -> int:
    """Today's bound (tests/test_fleet.py, the benchmark's leak section): the failures that
    trip plus the calls in flight when it trips, one per other process."""
    return threshold + processes - 1


def quorum_run(fleet: PolicyFleet, min_reporters: int, *, phase1: float = PHASE1) -> Quorum:
    """The quorum scenario on a fresh breaker with ``min_reporters``."""
    name = f"quorum-{secrets.token_hex(4)}"
    config = {"failure_threshold": THRESHOLD, "recovery_timeout": RECOVERY,
              "min_reporters": min_reporters}  # fmt: skip
    start_at = time.time() + START_LEAD
    fail_at = start_at + phase1
    order = {"name": name, "config": config, "start_at": start_at, "fail_at": fail_at}
    fleet.send("quorum", order)
    # Half a second before phase 2: the state phase 1 left, read while no one has failed yet.
    _sleep_until(fail_at - 0.5)
    mid = _snapshot(fleet.url, name, config)
    results = fleet.collect()
    after = _snapshot(fleet.url, name, config)
    transitions = sorted((t for r in results for t in r["transitions"]), key=lambda t: t[3])
    healthy: Counter[str] = Counter()
    for r in results[1:]:
        healthy.update(r["rejected"][1])
    return Quorum(
        min_reporters=min_reporters,
        fail_at_ms=int(fail_at * 1000),
        sick_phase1_calls=results[0]["calls"][1],
        sick_phase1_rejected=dict(results[0]["rejected"][1]),
        healthy_phase1_rejected=dict(healthy),
        mid=mid,
        after=after,
        transitions=transitions,
        leak_by_process=[r["calls"][2] for r in results],
        first_phase2_scope=[r["first_phase2_scope"] for r in results],
        late=sum(1 for r in results if r["started"] >= fail_at),
        opens=[t for t in transitions if t[1] == "open"],
    )
