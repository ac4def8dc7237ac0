"""redbreaker benchmarks: one interleaved run, every figure a ratio to the same run's EVALSHA.

    pip install -e '.[bench]'
    python benchmarks/run.py            # the full run (~10 min on 2 cores), for docs/performance.md
    python benchmarks/run.py --smoke    # tiny samples (< 1 min), for CI: never fails on noise
    python benchmarks/run.py --only aio # one section (here: the asyncio rows)

Starts its own redis-server on a free port of 127.0.0.1 and prints markdown. A missed target
is printed as MISS and is not an error. The exit code is non-zero only when something is
broken: a crash, or a correctness check (a strict-mode leak above failure_threshold + the
calls in flight, a worker that never saw the breaker open).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _aio
import _consumers
import _counts
import _latency
import _memory
import _multi
import _policies
import _scale
import _variants
import redis
from _fleet import Fleet
from _server import BenchServer
from _stats import Spread, num, percentile, ratios, spread_text, table

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    import redbreaker

SECTIONS = ("latency", "throughput", "roundtrips", "propagation", "leak", "memory", "aio",
            "consumers", "scale", "policies")
WORKERS = 8
THRESHOLD = 5


@dataclass(frozen=True)
class Plan:
    calls: int  # timed calls per variant per round (latency)
    rounds: int
    warmup: int
    duration: float  # seconds per throughput cell
    reps: int  # throughput reps
    counts: tuple[int, ...]
    trials: int  # propagation and leak trials per mode
    settle: float  # seconds workers hammer before the open (propagation)
    lead: float  # seconds workers call before the dependency fails (leak)
    memory_n: int
    recovery: float  # recovery_timeout of the round-trip breakers
    stream_messages: int  # backlog per consumer run (consumers)
    stream_rounds: int
    idle_window: float  # seconds idle consumers are counted
    adapter_rounds: int  # rounds of plan.calls jobs per adapter
    scale: _scale.Size  # processes x tasks on breakers (scale)
    policies: _policies.Size  # retry budget and quorum runs (policies)


FULL = Plan(
    calls=600, rounds=50, warmup=300, duration=1.0, reps=5, counts=(1, 2, 4, 8),
    trials=20, settle=0.15, lead=0.3, memory_n=1000, recovery=1.0,
    stream_messages=2000, stream_rounds=10, idle_window=5.0, adapter_rounds=20,
    scale=_scale.FULL, policies=_policies.FULL,
)  # fmt: skip
SMOKE = Plan(
    calls=150, rounds=3, warmup=30, duration=0.2, reps=1, counts=(1, 2, 4, 8),
    trials=3, settle=0.1, lead=0.25, memory_n=50, recovery=1.0,
    stream_messages=150, stream_rounds=2, idle_window=0.5, adapter_rounds=2,
    scale=_scale.SMOKE, policies=_policies.SMOKE,
)  # fmt: skip


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" (uncommitted changes)" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Report:
    """Collects figures, target verdicts and correctness errors; prints markdown."""

    def __init__(self) -> None:
        self.targets: list[tuple[str, str, str, str]] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.data: dict[str, Any] = {}

    @staticmethod
    def out(text: str = "") -> None:
        print(text, flush=True)

    def target(self, name: str, spread: Spread | None, goal: str, ok: Callable[[float], bool],
               *, unit: str = "x", missing: str = "n/a", text: str = "") -> None:
        """One target; the verdict reads ``spread.median`` (``text`` overrides the figure)."""
        if spread is None:
            self.targets.append((name, missing, goal, "n/a"))
            return
        verdict = "PASS" if ok(spread.median) else "MISS"
        self.targets.append((name, text or spread_text(spread, 3, unit), goal, verdict))


# --------------------------------------------------------------------------- sections


def latency(report: Report, plan: Plan, url: str) -> None:
    built = _variants.build(url, "bench-latency")
    admin = _variants.raw_client(url, decode_responses=True)

    def commandstats() -> dict[str, tuple[int, int]]:
        stats = admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                for k, v in stats.items()}

    try:
        # Redis time per call of what each variant sends: a strict success is one FCALL.
        result = _latency.measure(
            built.fns, calls=plan.calls, rounds=plan.rounds, warmup=plan.warmup,
            commandstats=commandstats,
            server_commands={"evalsha": "evalsha", "evalsha_held": "evalsha", "strict": "fcall"},
        )
    finally:
        built.close()
        admin.close()
    med, p99 = result.medians, result.p99
    ref = med["evalsha"]
    report.out("## Per-call cost, one process\n")
    report.out(
        f"{plan.rounds} rounds x {plan.calls} timed calls per variant, the variant order "
        f"rotated each round. µs per call: the median of the per-round medians (min-max "
        f"of the per-round medians); p99: median over rounds. x EVALSHA: per-round ratio "
        f"to the same round's EVALSHA, median (min-max). Each sample includes one timer "
        f"reading ({result.timer_ns:.0f} ns).\n"
    )
    rows = []
    for spec in _variants.SPECS:
        if spec.key in built.missing:
            rows.append([spec.label, built.missing[spec.key], "", ""])
            continue
        rows.append([
            spec.label,
            spread_text(Spread.of(med[spec.key])),
            num(statistics.median(p99[spec.key])),
            spread_text(Spread.of(ratios(med[spec.key], ref)), 3, "x"),
        ])
    report.out(table(["variant", "µs per call", "p99 µs", "x EVALSHA"], rows))
    report.out()

    def ratio(top: str, bottom: str) -> Spread | None:
        if top not in med or bottom not in med:
            return None
        return Spread.of(ratios(med[top], med[bottom]))

    report.target("strict success ÷ one EVALSHA", ratio("strict", "evalsha"), "≤ 1.1x",
                  lambda v: v <= 1.1)
    report.target("strict success ÷ one EVALSHA on a held connection",
                  ratio("strict", "evalsha_held"), "≤ 1.4x", lambda v: v <= 1.4)
    server = result.server_us
    if "strict" in server and "evalsha" in server:
        report.out(
            "Redis time per call (INFO commandstats usec_per_call over each round's block): "
            f"strict success's FCALL {spread_text(Spread.of(server['strict']))} µs, the "
            f"reference EVALSHA {spread_text(Spread.of(server['evalsha']))} µs.\n"
        )
        report.target("Redis time per strict admission ÷ the reference script's",
                      Spread.of(ratios(server["strict"], server["evalsha"])), "≤ 1.5x",
                      lambda v: v <= 1.5)
    report.target("strict failure ÷ one EVALSHA", ratio("strict_fail", "evalsha"), "≤ 2.1x",
                  lambda v: v <= 2.1)
    report.target("cached success ÷ one EVALSHA", ratio("cached", "evalsha"), "≤ 0.05x",
                  lambda v: v <= 0.05, missing=_variants.CACHED_NA)
    report.target("guard (cached) ÷ ThreadPoolExecutor submit+result", ratio("guard", "tpe"),
                  "≤ 1.3x", lambda v: v <= 1.3, missing=_variants.CACHED_NA)
    report.target("pybreaker+Redis ÷ strict (speed-up per call)", ratio("pyb_redis", "strict"),
                  "≥ 1.6x", lambda v: v >= 1.6)
    report.target("pybreaker+Redis ÷ cached (speed-up per call)", ratio("pyb_redis", "cached"),
                  "≥ 20x", lambda v: v >= 20, missing=_variants.CACHED_NA)
    report.target("cached success ÷ pybreaker in memory", ratio("cached", "pyb_mem"),
                  "≤ 1.0x", lambda v: v <= 1.0, missing=_variants.CACHED_NA)
    for mode in ("strict", "cached"):
        report.target(f"{mode} success with PrometheusMetrics ÷ without",
                      ratio(f"{mode}_prom", mode), "≤ 1.1x" if mode == "strict" else "≤ 2x",
                      (lambda v: v <= 1.1) if mode == "strict" else (lambda v: v <= 2.0),
                      missing=built.missing.get(f"{mode}_prom", _variants.PROMETHEUS_NA))
    report.target("strict success with min_reporters=3 ÷ without", ratio("strict_quorum", "strict"),
                  "≤ 1.1x", lambda v: v <= 1.1)
    report.target("cached success with min_reporters=3 ÷ one EVALSHA",
                  ratio("cached_quorum", "evalsha"), "≤ 0.2x", lambda v: v <= 0.2,
                  missing=_variants.CACHED_NA)
    report.target("guarded success with retry_budget=0.2 ÷ without",
                  ratio("guard_budget", "guard_strict"), "≤ 1.05x", lambda v: v <= 1.05)
    guard_strict = ratio("guard_strict", "tpe")
    if guard_strict is not None:
        report.notes.append(
            "for reference, the guard around a strict breaker costs "
            f"{spread_text(guard_strict, 3, 'x')} a ThreadPoolExecutor submit+result "
            "(no target: it pays one Redis round trip)"
        )
    report.data["latency"] = asdict(result)
    report.data["evalsha_us"] = statistics.median(ref)


def throughput(report: Report, plan: Plan, fleet: Fleet, keys: list[str],
               missing: dict[str, str]) -> None:
    rates = _multi.throughput(fleet, keys, plan.counts, duration=plan.duration, reps=plan.reps)
    ref = rates["evalsha"]
    report.out("## Aggregate calls/s from several processes\n")
    report.out(
        f"{plan.reps} rep(s) x {plan.duration:g} s per cell; each process calls in a loop, "
        "all starting at one instant; the figure is the sum of their rates. Breakers and "
        "pybreaker storage are shared by all processes. Cells of one process count run back "
        "to back, the variant order rotated per rep. calls/s: median (min-max over reps).\n"
    )
    heads = ["variant"] + [f"{n} process{'es' if n > 1 else ''}" for n in plan.counts]
    rows, ratio_rows = [], []
    for spec in _variants.SPECS:
        if not spec.throughput:
            continue
        if spec.key in missing:
            rows.append([spec.label, missing[spec.key]] + [""] * (len(plan.counts) - 1))
            ratio_rows.append(rows[-1])
            continue
        rows.append([spec.label] + [spread_text(Spread.of(rates[spec.key][n]))
                                    for n in plan.counts])
        ratio_rows.append([spec.label] + [
            spread_text(Spread.of(ratios(rates[spec.key][n], ref[n])), 3, "x")
            for n in plan.counts
        ])
    report.out(table(heads, rows))
    report.out("\nThe same, as a ratio to EVALSHA from the same number of processes, same rep:\n")
    report.out(table(heads, ratio_rows))
    report.out()
    top = max(plan.counts)

    def ratio(key: str) -> Spread | None:
        if key not in rates:
            return None
        return Spread.of(ratios(rates[key][top], ref[top]))

    report.target(f"{top}-process throughput: strict ÷ EVALSHA", ratio("strict"), "≥ 0.9x",
                  lambda v: v >= 0.9)
    report.target(f"{top}-process throughput: cached ÷ EVALSHA", ratio("cached"), "≥ 5x",
                  lambda v: v >= 5, missing=_variants.CACHED_NA)
    report.data["throughput"] = {k: {str(n): v for n, v in r.items()} for k, r in rates.items()}


def roundtrips(report: Report, plan: Plan, server: BenchServer, cached: bool) -> None:
    with server.client() as admin:
        strict = _counts.redbreaker_paths(admin, server.url, "bench-rt", "strict",
                                          recovery=plan.recovery)
        cached_costs = (
            _counts.redbreaker_paths(admin, server.url, "bench-rt", "cached",
                                     recovery=plan.recovery) if cached else None
        )
        pyb = (_counts.pybreaker_paths(admin, server.url, "bench-rt-pybreaker")
               if _variants.pybreaker is not None else None)
    report.out("## Redis round trips and commands per guarded call\n")
    report.out(
        "Round trips: writes by the client's connections (one request/reply exchange each; "
        "a MULTI/EXEC pipeline counts once). Commands: INFO commandstats deltas on the "
        "server, including the commands a Lua script runs inside Redis. Averaged over the "
        "calls of the path (200 successes, 50 later rejections, 1 call otherwise). "
        "failure_threshold=5; pybreaker fail_max=5.\n"
    )

    def cells(costs: dict[str, _counts.Cost] | None, key: str, na: str) -> list[str]:
        if costs is None:
            return [na, ""]
        cost = costs[key]
        return [num(cost.round_trips), num(cost.commands)]

    rows = []
    for key, label in _counts.PATHS:
        expected = _counts.STRICT_EXPECTED[key]
        got = strict[key].round_trips
        mark = "" if got == expected else f" ≠ documented {expected}"
        if mark:
            report.notes.append(f"strict round trips on path {key!r}: {got:g}, documented "
                                f"{expected}")
        rows.append([label, num(got) + mark, num(strict[key].commands),
                     *cells(cached_costs, key, "n/a (cached mode not available)"),
                     *cells(pyb, key, "n/a (pybreaker not installed)")])
    report.out(table(
        ["path", "strict: round trips", "strict: commands", "cached: round trips",
         "cached: commands", "pybreaker+Redis: round trips", "pybreaker+Redis: commands"],
        rows,
    ))

    def detail(costs: dict[str, _counts.Cost] | None, key: str) -> str:
        if costs is None:
            return "n/a"
        cost = costs[key]
        parts = ", ".join(f"{k} {num(v)}" for k, v in cost.detail.items())
        return f"{parts or 'none'} → {cost.state_after}"

    report.out("\nServer commands per call, and the state after the path:\n")
    rows = [[label, detail(strict, key)] + ([detail(cached_costs, key)] if cached else [])
            + [detail(pyb, key)] for key, label in _counts.PATHS]
    report.out(table(["path", "strict"] + (["cached"] if cached else []) + ["pybreaker+Redis"],
                     rows, align="l" * (4 if cached else 3)))
    report.out()
    report.data["roundtrips"] = {
        name: {k: asdict(v) for k, v in costs.items()}
        for name, costs in (("strict", strict), ("cached", cached_costs), ("pybreaker", pyb))
        if costs is not None
    }


def propagation(report: Report, plan: Plan, fleet: Fleet, store: redbreaker.Store,
                modes: list[str]) -> None:
    report.out(f"## Propagation of an open to {WORKERS} workers\n")
    report.out(
        f"{WORKERS} processes call through one breaker in a loop; the parent opens it in Redis "
        "(force_open) and each worker notes (time.time()) its first rejection. Per trial: the "
        f"last of the {WORKERS} workers. Measured from the open, taken as the later of the "
        "wall clock before force_open and the transition's server time in whole ms: never "
        "after the true instant, so a lag is never understated (and overstated by 1 ms at "
        f"most). {plan.trials} trial(s) per mode; p99 is interpolated between the two largest "
        "trials (below 100 trials it is close to the max). In EVALSHA round trips: ÷ the "
        "EVALSHA median of the latency section.\n"
    )
    rows = []
    rt_ms = report.data.get("evalsha_us", math.nan) / 1000
    for mode in ("strict", "cached"):
        if mode not in modes:
            rows.append([mode, _variants.CACHED_NA, "", "", "", "", ""])
            report.target("propagation to all 8 workers, cached: p99", None, "≤ 5 ms",
                          lambda v: v <= 5, missing=_variants.CACHED_NA)
            continue
        trials = _multi.propagation(fleet, store, mode, trials=plan.trials, workers=WORKERS,
                                    settle=plan.settle, timeout=10.0)
        worst = [t.worst * 1000 for t in trials if t.lags]
        lags = [lag * 1000 for t in trials for lag in t.lags]
        missed = sum(t.missed for t in trials)
        early = sum(t.early for t in trials)
        events = [e for t in trials for e in t.events]
        p99 = percentile(worst, 99)
        median = statistics.median(worst) if worst else math.nan
        rows.append([mode, num(median), num(p99), num(max(worst)) if worst else "n/a",
                     num(statistics.median(lags)) if lags else "n/a",
                     f"{num(median / rt_ms)} / {num(p99 / rt_ms)}", f"{missed} / {early}"])
        if missed or early:
            report.errors.append(f"propagation ({mode}): {missed} worker(s) never rejected and "
                                 f"{early} rejected before the open, over {plan.trials} trials")
        if events:
            report.notes.append(f"propagation ({mode}): store events in workers: {events}")
        if worst:
            report.target(f"propagation to all 8 workers, {mode}: p99",
                          Spread(p99, min(worst), max(worst), len(worst)), "≤ 5 ms",
                          lambda v: v <= 5,
                          text=f"p99 {num(p99)} ms (median {num(median)}, max {num(max(worst))})")
        report.data.setdefault("propagation", {})[mode] = [asdict(t) for t in trials]
    report.out(table(["mode", "all rejecting after, median ms", "p99 ms", "max ms",
                      "per-worker lag, median ms", "median / p99 in EVALSHA round trips",
                      "never / early rejections"], rows))
    report.out()


def leak(report: Report, plan: Plan, fleet: Fleet, store: redbreaker.Store,
         modes: list[str]) -> None:
    report.out(f"## Leak: calls reaching a failing dependency, {WORKERS} workers\n")
    bound = THRESHOLD + WORKERS - 1
    report.out(
        f"{WORKERS} processes call one dependency through one breaker (failure_threshold="
        f"{THRESHOLD}); at one shared instant the dependency starts failing. Leak: its calls "
        "fleet-wide from that instant until every worker has been rejected. Bound: "
        f"failure_threshold + the calls that can be in flight when it trips (one per other "
        f"worker) = {THRESHOLD} + {WORKERS - 1} = {bound}. {plan.trials} trial(s) per mode.\n"
    )
    rows = []
    for mode in ("strict", "cached"):
        if mode not in modes:
            rows.append([mode, _variants.CACHED_NA, "", "", "", ""])
            report.target("leak, cached: calls after the failure start, worst trial", None,
                          f"≤ {bound}", lambda v: v <= bound, missing=_variants.CACHED_NA)
            continue
        trials = _multi.leak(fleet, store, mode, trials=plan.trials, workers=WORKERS,
                             threshold=THRESHOLD, lead=plan.lead, timeout=10.0)
        clean = [t for t in trials if not t.events and not t.late]
        leaked = [t.leaked for t in trials]
        over = [t for t in clean if t.leaked > t.bound]
        stop = [t.all_rejected_after * 1000 for t in trials if not math.isnan(t.all_rejected_after)]
        missed = sum(t.missed for t in trials)
        disturbed = len(trials) - len(clean)
        rows.append([mode, spread_text(Spread.of(leaked), 3), str(bound),
                     f"{len(over)} of {len(clean)}",
                     spread_text(Spread.of(stop), 3) if stop else "n/a",
                     f"{missed} / {disturbed}"])
        if disturbed:
            report.notes.append(f"leak ({mode}): {disturbed} trial(s) disturbed (a worker "
                                "started late or saw Redis unavailable); not checked")
        if missed:
            report.errors.append(f"leak ({mode}): {missed} worker(s) never rejected")
        report.target(f"leak, {mode}: calls after the failure start, worst trial",
                      Spread(max(leaked), min(leaked), max(leaked), len(leaked)), f"≤ {bound}",
                      lambda v: v <= bound,
                      text=f"max {max(leaked)} (median {num(statistics.median(leaked))}, "
                           f"min {min(leaked)})")
        if over and mode == "strict":
            report.errors.append(
                f"leak ({mode}): {len(over)} trial(s) above {bound}: "
                f"{sorted(t.leaked for t in over)} (a correctness failure, not noise)"
            )
        elif over:
            # Cached admissions are local until the trip is pushed (milliseconds), so the
            # bound holds in practice but is not a guarantee: a MISS, not an error.
            report.notes.append(
                f"leak ({mode}): {len(over)} trial(s) above {bound}: "
                f"{sorted(t.leaked for t in over)}"
            )
        report.data.setdefault("leak", {})[mode] = [asdict(t) for t in trials]
    report.out(table(["mode", "leaked calls, median (min-max)", "bound", "trials over bound",
                      "all rejected after, ms", "never rejected / disturbed trials"], rows))
    report.out()


def memory(report: Report, plan: Plan, server: BenchServer) -> None:
    with server.client() as admin:
        result = _memory.measure(admin, server.url, "bench-mem", plan.memory_n)
    report.out("## Redis memory per breaker\n")
    report.out(
        "MEMORY USAGE (SAMPLES 0) of all of one breaker's keys, and the growth of used_memory "
        f"over {result.n} breakers (redbreaker: 10 live window buckets and a failure streak; "
        "pybreaker: after a success and a failure). redbreaker keeps a hash and, while "
        "probes run, a ZSET of leases; pybreaker keeps 3-4 string keys.\n"
    )
    rows = [["redbreaker: " + u.label, f"{u.bytes:,}", str(u.keys), u.encoding]
            for u in result.states]
    rows += [["pybreaker+Redis: " + u.label, f"{u.bytes:,}", str(u.keys), u.encoding]
             for u in result.pybreaker_states]
    report.out(table(["breaker", "bytes", "keys", "encoding of the first key"], rows,
                     align="lrrl"))
    report.out()
    report.out(table(
        ["used_memory growth per breaker", "bytes"],
        [[f"redbreaker ({result.n} breakers)", num(result.per_breaker)],
         [f"pybreaker+Redis ({result.n} breakers)", num(result.pybreaker_per_breaker)]],
    ))
    report.out()
    report.data["memory"] = asdict(result)


# --------------------------------------------------------------------------- asyncio

# The targets of the asyncio section: (name, goal, test of the median).
AIO_TARGETS: tuple[tuple[str, str, Callable[[float], bool]], ...] = (
    ("async strict success ÷ one async EVALSHA", "≤ 1.1x", lambda v: v <= 1.1),
    ("async cached success ÷ one async EVALSHA", "≤ 0.05x", lambda v: v <= 0.05),
    ("async guard (cached) ÷ bare asyncio.timeout(1)", "≤ 1.5x", lambda v: v <= 1.5),
    ("async purgatory+Redis ÷ strict (speed-up per call)", "≥ 1.6x", lambda v: v >= 1.6),
    ("async purgatory+Redis ÷ cached (speed-up per call)", "≥ 20x", lambda v: v >= 20),
    (f"{_aio.TASKS}-task throughput: async strict ÷ async EVALSHA", "≥ 0.9x",
     lambda v: v >= 0.9),
    ("async round trips per path = sync driver's", "all equal", lambda v: v == 0),
)


def _aio_target(report: Report, index: int, spread: Spread | None, missing: str = "n/a",
                text: str = "") -> None:
    name, goal, ok = AIO_TARGETS[index]
    report.target(name, spread, goal, ok, missing=missing, text=text)


def aio(report: Report, plan: Plan, server: BenchServer) -> None:
    report.out("## asyncio: redbreaker.aio beside redis.asyncio and purgatory\n")
    if _aio.rb_aio is None:
        report.out(f"{_aio.AIO_NA}: no asyncio rows.\n")
        for i in range(len(AIO_TARGETS)):
            _aio_target(report, i, None, _aio.AIO_NA)
        return
    loop = _aio.new_loop()
    try:
        built = loop.run_until_complete(_aio.build(server.url, "bench-aio"))
        try:
            aio_latency(report, plan, loop, built)
            aio_throughput(report, plan, loop, built)
        finally:
            loop.run_until_complete(built.aclose())
        aio_roundtrips(report, plan, server, loop, cached="cached" not in built.missing)
    finally:
        _aio.close_loop(loop)


def aio_latency(report: Report, plan: Plan, loop: asyncio.AbstractEventLoop,
                built: _aio.Built) -> None:
    result = loop.run_until_complete(
        _aio.measure(built.fns, calls=plan.calls, rounds=plan.rounds, warmup=plan.warmup)
    )
    med, p99 = result.medians, result.p99
    ref = med["evalsha"]
    report.out("### Per-call cost, one task\n")
    report.out(
        f"One event loop; {plan.rounds} rounds x {plan.calls} timed awaits per variant, the "
        "variant order rotated each round. As in the sync table, µs per call is the median "
        "of the per-round medians (min-max), p99 the median over rounds, and x async EVALSHA "
        "the per-round ratio to the same round's redis.asyncio EVALSHA of the reference "
        "script. The guards use `breaker.guard(attempt_timeout=1)` (an `asyncio.timeout` per "
        "attempt, no retry_on). purgatory: `async with await factory.get_breaker(name)` per "
        "call (what its decorator does), with `AsyncRedisUnitOfWork`; in memory with its "
        "default unit of work.\n"
    )
    rows = []
    for spec in _aio.SPECS:
        if spec.key in built.missing:
            rows.append([spec.label, built.missing[spec.key], "", ""])
            continue
        rows.append([
            spec.label,
            spread_text(Spread.of(med[spec.key])),
            num(statistics.median(p99[spec.key])),
            spread_text(Spread.of(ratios(med[spec.key], ref)), 3, "x"),
        ])
    report.out(table(["variant", "µs per call", "p99 µs", "x async EVALSHA"], rows))
    report.out()

    def ratio(top: str, bottom: str) -> Spread | None:
        if top not in med or bottom not in med:
            return None
        return Spread.of(ratios(med[top], med[bottom]))

    na = {"cached": _aio.CACHED_NA, "purgatory": _aio.PURGATORY_NA}
    _aio_target(report, 0, ratio("strict", "evalsha"))
    _aio_target(report, 1, ratio("cached", "evalsha"), na["cached"])
    _aio_target(report, 2, ratio("guard", "timeout"),
                _aio.TIMEOUT_NA if "timeout" in built.missing else na["cached"])
    _aio_target(report, 3, ratio("purgatory", "strict"), na["purgatory"])
    _aio_target(report, 4, ratio("purgatory", "cached"),
                na["purgatory"] if "purgatory" in built.missing else na["cached"])
    suspending = ratio("guard_suspends", "timeout_suspends")
    if suspending is not None:
        report.notes.append(
            "the async guard (cached) around a coroutine that suspends once (it gets its "
            "asyncio.timeout; one that never suspends, like the no-op above, needs none) "
            f"costs {spread_text(suspending, 3, 'x')} asyncio.timeout(1) around the same "
            "coroutine (no target)"
        )
    guard_strict = ratio("guard_strict", "timeout")
    if guard_strict is not None:
        report.notes.append(
            "for reference, the async guard around a strict breaker costs "
            f"{spread_text(guard_strict, 3, 'x')} a bare asyncio.timeout(1) (no target: it "
            "pays one Redis round trip)"
        )
    report.data.setdefault("aio", {})["latency"] = asdict(result)


def aio_throughput(report: Report, plan: Plan, loop: asyncio.AbstractEventLoop,
                   built: _aio.Built) -> None:
    keys = [s.key for s in _aio.SPECS if s.throughput and s.key in built.fns]
    rates = loop.run_until_complete(_aio.throughput(
        built.fns, keys, tasks=_aio.TASKS, duration=plan.duration, reps=plan.reps
    ))
    ref = rates["evalsha"]
    report.out(f"### Calls/s from {_aio.TASKS} concurrent tasks, one process\n")
    report.out(
        f"{plan.reps} rep(s) x {plan.duration:g} s per variant; {_aio.TASKS} tasks of one "
        "event loop call in a loop, all released at one instant (each client's pool opened "
        f"its {_aio.TASKS} connections beforehand). The variant order rotates per rep. "
        "calls/s: median (min-max over reps); x async EVALSHA: per-rep ratio to the same "
        "rep's EVALSHA from as many tasks.\n"
    )
    rows = []
    for spec in _aio.SPECS:
        if not spec.throughput:
            continue
        if spec.key in built.missing:
            rows.append([spec.label, built.missing[spec.key], ""])
            continue
        rows.append([spec.label, spread_text(Spread.of(rates[spec.key])),
                     spread_text(Spread.of(ratios(rates[spec.key], ref)), 3, "x")])
    report.out(table(["variant", "calls/s", "x async EVALSHA"], rows))
    report.out()
    _aio_target(report, 5, Spread.of(ratios(rates["strict"], ref)))
    if "cached" in rates:
        report.notes.append(
            f"{_aio.TASKS}-task throughput, async cached ÷ async EVALSHA: "
            f"{spread_text(Spread.of(ratios(rates['cached'], ref)), 3, 'x')} (no target)"
        )
    report.data.setdefault("aio", {})["throughput"] = rates


def _sync_round_trips(report: Report, mode: str, key: str) -> float:
    """The sync driver's round trips on a path: measured in this run by the roundtrips
    section when it ran, else the documented figure."""
    measured = report.data.get("roundtrips", {}).get(mode)
    if measured is not None:
        return float(measured[key]["round_trips"])
    expected = _counts.STRICT_EXPECTED if mode == "strict" else _aio.CACHED_EXPECTED
    return float(expected[key])


def aio_roundtrips(report: Report, plan: Plan, server: BenchServer,
                   loop: asyncio.AbstractEventLoop, *, cached: bool) -> None:
    modes = ["strict", "cached"] if cached else ["strict"]
    with server.client() as admin:
        costs: dict[str, dict[str, _counts.Cost] | None] = {
            mode: _aio.redbreaker_paths(loop, admin, server.url, "bench-aio-rt", mode,
                                        recovery=plan.recovery)
            for mode in modes
        }
        costs["purgatory"] = (
            _aio.purgatory_paths(loop, admin, server.url, "bench-aio-rt-purgatory",
                                 ttl=plan.recovery)
            if _aio.purgatory is not None else None
        )
    source = "measured above" if "roundtrips" in report.data else "documented"
    report.out("### Redis round trips and commands per call, asyncio\n")
    report.out(
        "As the sync table: round trips are writes by the client's connections (an asyncio "
        "connection class adding to the same counter), commands are INFO commandstats "
        "deltas; the same walk through one breaker (failure_threshold=5, recovery "
        f"{plan.recovery:g} s; purgatory threshold 5, ttl {plan.recovery:g} s). A redbreaker.aio "
        f"figure that differs from the sync driver's ({source}) is marked ≠.\n"
    )
    mismatches, compared = [], 0

    def cells(name: str, key: str) -> list[str]:
        nonlocal compared
        mode_costs = costs.get(name)
        if mode_costs is None:
            na = _aio.PURGATORY_NA if name == "purgatory" else _aio.CACHED_NA
            return [na, ""]
        cost = mode_costs[key]
        text = num(cost.round_trips)
        if name != "purgatory":
            compared += 1
            sync = _sync_round_trips(report, name, key)
            if cost.round_trips != sync:
                text += f" ≠ sync {num(sync)}"
                mismatches.append(f"{name} {key}: {num(cost.round_trips)} (sync {num(sync)})")
        return [text, num(cost.commands)]

    rows = [[label, *cells("strict", key), *cells("cached", key), *cells("purgatory", key)]
            for key, label in _counts.PATHS]
    report.out(table(
        ["path", "aio strict: round trips", "aio strict: commands", "aio cached: round trips",
         "aio cached: commands", "purgatory+Redis: round trips", "purgatory+Redis: commands"],
        rows,
    ))

    def detail(name: str, key: str) -> str:
        mode_costs = costs.get(name)
        if mode_costs is None:
            return "n/a"
        cost = mode_costs[key]
        parts = ", ".join(f"{k} {num(v)}" for k, v in cost.detail.items())
        return f"{parts or 'none'} → {cost.state_after}"

    names = [*modes, "purgatory"]
    report.out("\nServer commands per call, and the state after the path:\n")
    report.out(table(["path"] + [f"aio {n}" if n != "purgatory" else "purgatory+Redis"
                                 for n in names],
                     [[label] + [detail(n, key) for n in names] for key, label in _counts.PATHS],
                     align="l" * (len(names) + 1)))
    report.out()
    _aio_target(report, 6, Spread(len(mismatches), 0, len(mismatches), compared),
                text=f"{compared - len(mismatches)} of {compared} paths equal")
    if mismatches:
        report.notes.append("redbreaker.aio round trips ≠ the sync driver's: "
                            + "; ".join(mismatches))
    pur = costs["purgatory"]
    if pur is not None:
        report.notes.append(
            "purgatory+Redis round trips per call: success "
            f"{num(pur['success'].round_trips)}, failure {num(pur['failure'].round_trips)}, "
            f"rejected while open {num(pur['rejected_first'].round_trips)} (first) / "
            f"{num(pur['rejected_later'].round_trips)} (later)"
        )
    report.data.setdefault("aio", {})["roundtrips"] = {
        name: {k: asdict(v) for k, v in c.items()} for name, c in costs.items() if c is not None
    }


# --------------------------------------------------------------------------- main


def _header(report: Report, plan: Plan, server: BenchServer, smoke: bool) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    hiredis = redis.utils.HIREDIS_AVAILABLE
    title = "redbreaker benchmark" + (" (smoke: tiny samples, figures are noise)" if smoke else "")
    report.out(f"# {title}\n")
    report.out(f"- date: {now}")
    report.out(f"- machine: {_cpu_model()}, {os.cpu_count()} CPU(s), {platform.system()} "
               f"{platform.release()}")
    report.out(f"- Python {platform.python_version()}, redis-py {_version('redis')} "
               f"({'hiredis ' + _version('hiredis') if hiredis else 'pure-Python parser'}), "
               f"redis-server {server.version()} (127.0.0.1:{server.port}, no persistence), "
               f"pybreaker {_version('pybreaker')}, purgatory {_version('purgatory')}, "
               f"tenacity {_version('tenacity')}")
    report.out(f"- redbreaker {_version('redbreaker')} at commit {_git_commit()}")
    report.out(f"- plan: {plan}")
    report.out()
    report.data["meta"] = {"date": now, "cpu": _cpu_model(), "cpus": os.cpu_count(),
                           "smoke": smoke, "plan": asdict(plan)}


def _summary(report: Report) -> None:
    report.out("## Targets\n")
    report.out("Verdicts use the median of the per-round ratios (for propagation the p99, for "
               "the leak the worst trial); a MISS is reported, never an error.\n")
    report.out(table(["target", "measured, median (min-max)", "goal", "verdict"],
                     [list(t) for t in report.targets], align="lrrl"))
    report.out()
    if report.notes:
        report.out("Notes:\n")
        for note in report.notes:
            report.out(f"- {note}")
        report.out()
    if report.errors:
        report.out("## CORRECTNESS ERRORS\n")
        for error in report.errors:
            report.out(f"- {error}")
        report.out()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny samples, < 1 min (CI)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--rounds", type=int, help="latency rounds")
    parser.add_argument("--calls", type=int, help="timed calls per variant per round")
    parser.add_argument("--duration", type=float, help="seconds per throughput cell")
    parser.add_argument("--reps", type=int, help="throughput reps")
    parser.add_argument("--trials", type=int, help="propagation and leak trials per mode")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    overrides = {k: getattr(args, k) for k in ("rounds", "calls", "duration", "reps", "trials")
                 if getattr(args, k) is not None}
    plan = replace(plan, **overrides)
    sections = args.only or list(SECTIONS)
    started = time.monotonic()
    report = Report()

    with BenchServer() as server:
        _header(report, plan, server, args.smoke)
        fleet = None
        store = _variants.open_store(server.url, "bench-fleet")
        try:
            cached = _variants.cached_mode_available(store)
            modes = ["strict", "cached"] if cached else ["strict"]
            if not cached:
                report.notes.append("cached consistency mode: Breaker(consistency='cached') "
                                    "raised ConfigError, so its rows say n/a")
            if {"throughput", "propagation", "leak"} & set(sections):
                fleet = Fleet(server.url, WORKERS)
            if "latency" in sections:
                latency(report, plan, server.url)
            if "throughput" in sections:
                assert fleet is not None
                keys = fleet.ask(WORKERS, "setup", "bench-throughput", plan.warmup // 3 + 1,
                                 timeout=120)[0]
                wanted = [s.key for s in _variants.SPECS if s.throughput and s.key in keys]
                missing = {s.key: (_variants.CACHED_NA if s.needs == "cached"
                                   else _variants.PYBREAKER_NA)
                           for s in _variants.SPECS if s.throughput and s.key not in keys}
                throughput(report, plan, fleet, wanted, missing)
            if "roundtrips" in sections:
                roundtrips(report, plan, server, cached)
            if "propagation" in sections:
                assert fleet is not None
                propagation(report, plan, fleet, store, modes)
            if "leak" in sections:
                assert fleet is not None
                leak(report, plan, fleet, store, modes)
            if "memory" in sections:
                memory(report, plan, server)
            if "aio" in sections:
                aio(report, plan, server)
            if "consumers" in sections:
                _consumers.section(report, plan, server)
            if "scale" in sections:
                _scale.section(report, plan.scale, server)
            if "policies" in sections:
                _policies.section(report, plan.policies, server)
        finally:
            store.close()
            if fleet is not None:
                fleet.close()
    _summary(report)
    report.out(f"Ran in {time.monotonic() - started:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps(report.data, indent=1, default=str))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
