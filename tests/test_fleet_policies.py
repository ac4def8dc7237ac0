"""Issue 14's fleet policies, proven by a real fleet: 8 processes (``spawn``) on one real
redis-server, strict consistency, one breaker name per run. The scenarios live in
``policy_fleet`` (the benchmark's ``policies`` section runs the same ones).

- The retry budget bounds the fleet's dependency calls per logical call: 3 attempts each
  at p=1 without it, at most 1 + retry_budget + the floor's share with it; each refusal
  is counted once fleet-wide.
- Quorum opening: one sick process never opens the fleet's breaker; its own breaker
  rejects its calls after failure_threshold failures; when everyone fails, the fleet trips
  with at most min_reporters - 1 more leaked calls than today's bound.

Each test prints one ``[policies] ...`` line of measured figures (see with ``-s``) and
writes them to ``policy_figures.json`` in its ``tmp_path``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import policy_fleet as pf
from redbreaker import State

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.redis_server]

CALLS_EACH = 150  # logical calls per process per amplification run: 1,200 fleet-wide


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Measured figures of one test: printed as one line and saved as JSON in tmp_path."""
    measured: dict[str, Any] = {}
    yield measured
    name = request.node.name.removeprefix("test_")
    (tmp_path / "policy_figures.json").write_text(json.dumps({name: measured}, indent=1))
    print(f"\n[policies] {name}: " + " ".join(f"{k}={v}" for k, v in measured.items()))


def test_retry_budget_bounds_amplification(redis_url: str, figures: dict[str, Any]) -> None:
    """p=1 and p=0.3, without a budget and with retry_budget=0.2 (breaker in metrics_only)."""
    with pf.PolicyFleet(redis_url) as fleet:
        runs = {
            (p, budget): pf.amplification(fleet, p, budget=budget, calls=CALLS_EACH)
            for p in (1.0, 0.3)
            for budget in (None, pf.BUDGET)
        }
    for (p, budget), run in runs.items():
        tag = f"p{round(p * 100)}_{'budget' if budget else 'none'}"
        figures[f"{tag}_ratio"] = round(run.ratio, 4)
        figures[f"{tag}_success"] = round(run.success_share, 4)
        figures[f"{tag}_refused"] = sum(run.refused_by_process)
        if run.bound is not None:
            figures[f"{tag}_bound"] = round(run.bound, 4)
            figures[f"{tag}_window_retries"] = run.window_retries

    logical = pf.PROCESSES * CALLS_EACH
    unbudgeted = runs[1.0, None], runs[0.3, None]
    for run in unbudgeted:
        assert run.logical == logical
        assert (run.window_retries, run.exhausted_delta, sum(run.refused_by_process)) == (0, 0, 0)
    # Every call makes its 3 attempts: nothing limits the retries.
    assert runs[1.0, None].dependency_calls == 3 * logical
    assert runs[1.0, None].ended == {"retries_exhausted": logical}
    # 1 + p + p^2 = 1.39 expected; the mean of 1,200 calls has a standard error of 0.019.
    assert runs[0.3, None].ratio == pytest.approx(1.39, abs=0.1)

    for p in (1.0, 0.3):
        run = runs[p, pf.BUDGET]
        assert run.bound is not None
        assert run.bound == pytest.approx(1.2 + pf.FLOOR * pf.WINDOW / logical)  # 1.205
        # No tolerance: the run ended before the window's first bucket could slide out,
        # so every counted call and granted retry stayed in it, and each grant obeyed
        # retries + 1 <= 0.2 * calls + FLOOR * WINDOW with calls <= the run's logical calls.
        assert run.span < pf.WINDOW * 0.9
        assert run.ratio <= run.bound + 1e-9  # 1e-9: float rounding of 0.2 * 1,200 and 1.2
        # Each granted retry was counted once in the window, each refusal once fleet-wide,
        # and each refusal ended exactly one call (its fallback saw the budget's reason).
        assert run.window_retries == run.dependency_calls - run.logical
        assert sum(run.refused_by_process) == run.exhausted_delta
        assert run.ended.get("retry_budget_exhausted", 0) == run.exhausted_delta
        assert run.exhausted_delta > 0  # 1 and 0.39 retries per call were wanted: 0.2 given
    assert runs[1.0, pf.BUDGET].succeeded == 0
    assert runs[0.3, pf.BUDGET].success_share < runs[0.3, None].success_share


def test_quorum_opening(redis_url: str, figures: dict[str, Any]) -> None:
    """min_reporters=3: one sick process alone never opens the fleet's breaker (its own
    breaker rejects it); when all fail, the fleet trips leaking at most today's bound plus
    min_reporters - 1. The same scenario with min_reporters=1 (today) is measured beside."""
    with pf.PolicyFleet(redis_url) as fleet:
        quorum = pf.quorum_run(fleet, pf.MIN_REPORTERS)
        today = pf.quorum_run(fleet, 1)
    bound = pf.leak_bound() + pf.MIN_REPORTERS - 1
    figures.update(
        sick_calls_before_local_rejection=quorum.sick_phase1_calls,
        sick_local_rejections=quorum.sick_phase1_rejected.get("process", 0),
        healthy_phase1_rejections=sum(quorum.healthy_phase1_rejected.values()),
        open_count_after_phase1=quorum.mid.open_count,
        reporters_after_phase1=quorum.mid.reporters,
        leak_quorum=quorum.leak,
        leak_quorum_by_process=quorum.leak_by_process,
        leak_quorum_bound=bound,
        leak_today=today.leak,
        leak_today_bound=pf.leak_bound(),
        today_sick_phase1_calls=today.sick_phase1_calls,
        today_phase1_opens=today.phase1_opens,
    )

    assert quorum.late == 0, "a worker started calling after phase 2 began"
    # Phase 1: exactly failure_threshold failures, then its own breaker rejects it (60 s
    # recovery: it stays open); the fleet's breaker never opens, no one else is rejected.
    assert quorum.sick_phase1_calls == pf.THRESHOLD
    assert set(quorum.sick_phase1_rejected) == {"process"}
    assert quorum.healthy_phase1_rejected == {}
    assert quorum.mid.now_ms < quorum.fail_at_ms  # read in phase 1
    assert (quorum.mid.state, quorum.mid.open_count, quorum.mid.reporters) == (
        State.CLOSED,
        0,
        1,
    )
    assert quorum.phase1_opens == 0
    # Phase 2: one trip, decided after phase 2 began; the sick process is still rejected by
    # its own breaker and calls nothing.
    assert quorum.transitions == quorum.opens
    assert [t[:4] for t in quorum.opens] == [("closed", "open", "consecutive_failures", 2)]
    assert quorum.opens[0][4] >= quorum.fail_at_ms
    assert (quorum.after.state, quorum.after.open_count) == (State.OPEN, 1)
    assert quorum.first_phase2_scope[0] == "process"
    assert quorum.leak_by_process[0] == 0
    assert all(quorum.first_phase2_scope)  # every worker was rejected before RUN_LIMIT
    assert quorum.leak <= bound

    # Today: the same fleet, no quorum, no own breakers; one trip fleet-wide all the same.
    assert today.late == 0, "a worker started calling after phase 2 began"
    assert (today.after.state, today.after.open_count) == (State.OPEN, 1)
    assert set(today.first_phase2_scope) == {"fleet"}
