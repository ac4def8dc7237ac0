"""The policies section: issue 14's fleet policies (retry budget, quorum opening) measured by
8 real processes on the benchmark's redis-server.

The scenarios are ``tests/policy_fleet.py``'s, the very runs ``tests/test_fleet_policies.py``
asserts on: written once, imported here (see ``_scenarios``). Counts, not speeds: the
figures are dependency calls, rejections and transitions, so a noisy machine moves them
little.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _stats import Spread, num, table

import redbreaker

if TYPE_CHECKING:
    from types import ModuleType


@dataclass(frozen=True)
class Size:
    calls: int  # logical calls per process per amplification run
    phase1: float  # seconds the sick process fails alone (quorum)
    trials: int  # quorum runs per min_reporters setting


FULL = Size(calls=500, phase1=3.0, trials=3)
SMOKE = Size(calls=40, phase1=1.0, trials=1)


def _scenarios() -> ModuleType:
    # The scenario driver and its workers live beside the tests that assert on them, so
    # nothing is written twice; tests/ on sys.path makes them importable here and in the
    # spawned workers (spawn hands the parent's sys.path to each child).
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import policy_fleet

    return policy_fleet


def _fixed(value: float) -> Spread:
    return Spread(value, value, value, 1)


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else num(value)


def section(report: Any, size: Size, server: Any) -> None:
    """Measure and print the section; ``report`` and ``server`` are run.py's."""
    pf = _scenarios()
    report.out(f"## Fleet policies: retry budget and quorum opening, {pf.PROCESSES} processes\n")
    with pf.PolicyFleet(server.url) as fleet:
        amplification(report, pf, fleet, size)
        try:  # each process's own breaker (min_reporters > 1) runs on the embedded store
            redbreaker.connect("memory://").close()
        except redbreaker.ConfigError as exc:
            report.out(f"Quorum opening: n/a ({exc}).\n")
            return
        quorum(report, pf, fleet, size)


def amplification(report: Any, pf: ModuleType, fleet: Any, size: Size) -> None:
    logical = pf.PROCESSES * size.calls
    runs = {(p, b): pf.amplification(fleet, p, budget=b, calls=size.calls)
            for p in (1.0, 0.3) for b in (None, pf.BUDGET)}  # fmt: skip
    # A would-trip in metrics_only starts the calls' window afresh but keeps the granted
    # retries: with the default failure_threshold=5 at p=100% the budget must still hold.
    caveat = pf.amplification(fleet, 1.0, budget=pf.BUDGET, calls=size.calls, threshold=5)
    report.out("### Retry budget: dependency calls per logical call\n")
    report.out(
        f"Each process makes {size.calls} logical calls ({logical:,} fleet-wide) through "
        f"`guard(retry_on=ConnectionError, max_attempts={pf.MAX_ATTEMPTS}, "
        f"backoff_base={pf.BACKOFF_BASE:g})` around a dependency failing with probability p "
        "(each process its own seeded random), every attempt counted; one breaker, held in "
        f"metrics_only (it never opens), window {pf.WINDOW:g} s (a run never outlasts its "
        f"first bucket), failure_threshold {pf.NEVER_TRIPS:,} (no would-trip). Bound: 1 + "
        f"retry_budget + floor x window / logical calls = 1 + {pf.BUDGET:g} + "
        f"{pf.FLOOR:g} x {pf.WINDOW:g} / {logical:,} (retry_budget_floor={pf.FLOOR:g}/s). "
        "Success share: logical calls that returned the dependency's value.\n"
    )
    rows, snaps = [], []
    for p in (1.0, 0.3):
        none, budget = runs[p, None], runs[p, pf.BUDGET]
        rows.append([f"p={p:.0%}", num(none.ratio, 4), num(budget.ratio, 4),
                     num(budget.bound, 4),
                     f"{none.success_share:.1%} / {budget.success_share:.1%}"])
        for run in (none, budget):
            snaps.append([f"p={p:.0%}, " + ("no budget" if run.budget is None
                                             else f"retry_budget={run.budget:g}"),
                          str(run.window_retries), str(run.exhausted_delta),
                          str(sum(run.refused_by_process)),
                          str(run.ended.get("retry_budget_exhausted", 0))])
    report.out(table(["failure probability", "without budget", f"retry_budget={pf.BUDGET:g}",
                      "bound", "success share without / with"], rows))
    report.out("\nThe breaker's snapshot after each run, beside the processes' own counts:\n")
    report.out(table(["run", "window_retries", "retry_budget_exhausted_count",
                      "refusals told to observers", "calls ended by the budget"], snaps))
    report.out(
        f"\nWith the default failure_threshold=5 instead (a would-trip every 5 failures, each "
        f"counting calls afresh), p=100%: {num(caveat.ratio, 4)} dependency calls per logical "
        f"call (bound {num(caveat.bound, 4)}).\n"
    )
    report.target("retry_budget, metrics_only would-tripping: dependency calls per call",
                  _fixed(caveat.ratio), f"≤ {num(caveat.bound, 4)}",
                  lambda v: v <= caveat.bound + 1e-9, text=num(caveat.ratio, 4))
    for p in (1.0, 0.3):
        run = runs[p, pf.BUDGET]
        report.target(f"retry_budget={pf.BUDGET:g}, p={p:.0%}: dependency calls per call",
                      _fixed(run.ratio), f"≤ {num(run.bound, 4)}",
                      lambda v, bound=run.bound: v <= bound + 1e-9, text=num(run.ratio, 4))
        # Each granted retry is one more attempt and one count in the window (which a run
        # never outlasts); each refusal one count and one observer call.
        granted = run.dependency_calls - run.logical
        if (run.ratio > run.bound + 1e-9 or sum(run.refused_by_process) != run.exhausted_delta
                or granted != run.window_retries):
            report.errors.append(
                f"policies: retry_budget at p={p:.0%}: {num(run.ratio, 4)} calls per call "
                f"(bound {num(run.bound, 4)}), {granted} retries made, {run.window_retries} "
                f"counted; refusals {sum(run.refused_by_process)} told, "
                f"{run.exhausted_delta} counted; calls ended: {run.ended}"
            )
    if runs[1.0, None].dependency_calls != pf.MAX_ATTEMPTS * logical:
        report.errors.append(f"policies: without a budget at p=100%, "
                             f"{runs[1.0, None].dependency_calls} calls, not {3 * logical}")
    report.data["policies"] = {"amplification": [asdict(r) for r in runs.values()],
                               "caveat_threshold_5": asdict(caveat)}


def quorum(report: Any, pf: ModuleType, fleet: Any, size: Size) -> None:
    trials = {m: [pf.quorum_run(fleet, m, phase1=size.phase1) for _ in range(size.trials)]
              for m in (pf.MIN_REPORTERS, 1)}
    bound = pf.leak_bound() + pf.MIN_REPORTERS - 1
    report.out("### Quorum opening: one sick process, then the whole fleet\n")
    report.out(
        f"failure_threshold={pf.THRESHOLD}, recovery_timeout={pf.RECOVERY:g} s, strict. "
        f"Phase 1 ({size.phase1:g} s): process 0 fails every call, the other "
        f"{pf.PROCESSES - 1} succeed, each calling every {pf.PAUSE * 1000:g} ms. Phase 2, "
        "from one shared instant: every call fails; each process stops at its first "
        "rejection. Leak: the failing dependency calls of phase 2, fleet-wide. Bound "
        f"today: failure_threshold + one call in flight per other process = "
        f"{pf.leak_bound()}; with the quorum, + (min_reporters - 1) = {bound}. "
        f"{size.trials} trial(s) per setting; figures are medians (min-max).\n"
    )

    def cell(m: int, figure: Any) -> str:
        values = [float(figure(q)) for q in trials[m]]
        spread = Spread.of(values)
        assert spread is not None
        if spread.low == spread.high:
            return _count(spread.median)
        return f"{_count(spread.median)} ({_count(spread.low)}-{_count(spread.high)})"

    figures = [
        ("sick process's dependency calls in phase 1", lambda q: q.sick_phase1_calls),
        ("its rejections by its own breaker (scope process)",
         lambda q: q.sick_phase1_rejected.get("process", 0)),
        ("fleet rejections seen by the healthy processes in phase 1",
         lambda q: q.healthy_phase1_rejected.get("fleet", 0)),
        ("their rejections of any scope in phase 1",
         lambda q: sum(q.healthy_phase1_rejected.values())),
        ("fleet open_count after phase 1", lambda q: q.mid.open_count),
        ("fleet opens decided in phase 1", lambda q: q.phase1_opens),
        ("distinct reporters after phase 1", lambda q: q.mid.reporters),
        ("phase-2 leak", lambda q: q.leak),
        ("fleet open_count at the end", lambda q: q.after.open_count),
    ]
    heads = ["figure", f"min_reporters={pf.MIN_REPORTERS}", "min_reporters=1 (today)"]
    rows = [[label, cell(pf.MIN_REPORTERS, f), cell(1, f)] for label, f in figures]
    rows.append(["leak bound", str(bound), str(pf.leak_bound())])
    report.out(table(heads, rows))
    report.out()

    with_quorum = trials[pf.MIN_REPORTERS]
    leaks = [q.leak for q in with_quorum]
    off = sum(1 for q in with_quorum if q.sick_phase1_calls != pf.THRESHOLD)
    report.target("quorum: sick process's dependency calls before its own breaker rejects",
                  _fixed(off), f"{pf.THRESHOLD} in every trial", lambda v: v == 0,
                  text=" / ".join(str(q.sick_phase1_calls) for q in with_quorum))
    phase1_fleet = sum(q.phase1_opens + q.mid.open_count
                       + sum(q.healthy_phase1_rejected.values()) for q in with_quorum)
    report.target("quorum: fleet opens and fleet rejections in phase 1", _fixed(phase1_fleet),
                  "0", lambda v: v == 0, text=str(phase1_fleet))
    report.target(f"quorum: phase-2 leak, worst trial (today's {pf.leak_bound()} + "
                  f"{pf.MIN_REPORTERS - 1})", _fixed(max(leaks)), f"≤ {bound}",
                  lambda v: v <= bound,
                  text=f"max {max(leaks)} (median {_count(statistics.median(leaks))})")
    broken = [q for q in with_quorum
              if q.sick_phase1_calls != pf.THRESHOLD or q.phase1_opens or q.leak > bound
              or q.healthy_phase1_rejected or q.after.open_count != 1]
    if broken:
        report.errors.append(
            "policies: quorum trial(s) broke a guarantee: "
            + "; ".join(f"sick calls {q.sick_phase1_calls}, phase-1 opens {q.phase1_opens}, "
                        f"healthy rejections {q.healthy_phase1_rejected}, leak {q.leak}, "
                        f"open_count {q.after.open_count}" for q in broken)
        )
    late = sum(q.late for qs in trials.values() for q in qs)
    if late:
        report.notes.append(f"policies: {late} worker start(s) after phase 2 began")
    report.data.setdefault("policies", {})["quorum"] = {
        str(m): [asdict(q) for q in qs] for m, qs in trials.items()
    }
