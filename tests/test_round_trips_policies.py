"""What issue 14's fleet policies cost per path, counted as tests/test_round_trips.py counts
(the client's commands and the server's commandstats must agree): a retry budget's ask
replaces the recheck (one round trip per retry without it), and a quorum's reporter is
written inside the failure's record call. Run with ``-rP`` to see the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from test_round_trips import (
    PATHS,
    Harness,
    Scenario,
    _nothing,
    _run_path,
    _table,
    harness,
    measure_each,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from redbreaker import Breaker, ManualClock
    from redis_servers import RedisServer

__all__ = ["harness"]  # the fixture, imported for pytest to find

pytestmark = pytest.mark.redis_server

G: dict[str, Any] = {"retry_on": ConnectionError, "max_attempts": 3, "backoff_base": 0.001}
BUDGET = {"retry_budget": 1.0}
SPENT = {"retry_budget": 0.0, "retry_budget_floor": 0.01}  # 0.01/s * 60 s: no retry
QUORUM = {"min_reporters": 3}


def _guarded(steps: int, recheck: bool = True) -> Callable[[Breaker, ManualClock], None]:
    """A guarded call whose first ``steps`` attempts fail (3 or more: it fails)."""

    def act(breaker: Breaker, clock: ManualClock) -> None:
        failed = [0]

        def fn() -> str:
            failed[0] += 1
            if failed[0] <= steps:
                raise ConnectionError
            return "ok"

        guard = breaker.guard(**G, recheck_breaker=recheck)
        if steps < 3:
            guard.call(fn)
            return
        with pytest.raises(ConnectionError):
            guard.call(fn)

    return act


# Each budget path beside the same path without one.
POLICY_PATHS = [
    Scenario("guarded success", {}, _nothing, _guarded(0), 1),
    Scenario("guarded success, budget", BUDGET, _nothing, _guarded(0), 1),
    Scenario("retried once, recheck", {}, _nothing, _guarded(1), 2),
    Scenario("retried once, recheck, budget", BUDGET, _nothing, _guarded(1), 2),
    Scenario("retried once, no recheck", {}, _nothing, _guarded(1, recheck=False), 1),
    Scenario("retried once, no recheck, budget", BUDGET, _nothing, _guarded(1, False), 2),
    Scenario("3 attempts failed, recheck", {}, _nothing, _guarded(3), 4),
    Scenario("3 attempts failed, recheck, budget", BUDGET, _nothing, _guarded(3), 4),
    Scenario("3 attempts failed, no recheck", {}, _nothing, _guarded(3, False), 2),
    Scenario("3 attempts failed, no recheck, budget", BUDGET, _nothing, _guarded(3, False), 4),
    Scenario("retry refused by the budget", SPENT, _nothing, _guarded(3), 3),
    Scenario("closed success, min_reporters=3", QUORUM, _nothing, PATHS[0].act, 1),
    Scenario("closed failure, min_reporters=3", QUORUM, _nothing, PATHS[1].act, 2),
]  # fmt: skip


@pytest.mark.parametrize("path", POLICY_PATHS, ids=[p.name for p in POLICY_PATHS])
def test_policy_round_trips_per_path(harness: Harness, path: Scenario) -> None:
    """A budget's ask replaces the recheck (one per retry without it); a quorum's reporter
    is written inside the record call: success and failure cost what they cost without."""
    measured = _run_path(harness, path)
    assert measured.client == ["FCALL"] * path.round_trips
    if path.settings.get("min_reporters") and path.round_trips == 2:
        assert measured.inner["zadd"] == 1  # the reporter, inside the record call


def test_print_policy_round_trip_table(redis_server: RedisServer, redis_url: str) -> None:
    """Every policy path on a fresh store each, printed as a table (see -rP)."""
    rows = measure_each(redis_server, redis_url, POLICY_PATHS)
    print("\n" + _table(rows))
    cost = {name: m.round_trips for name, m in rows}
    assert list(cost.values()) == [p.round_trips for p in POLICY_PATHS]
    # As the issue states it: with the recheck a budget costs nothing more; without it,
    # one round trip per retry (1 and 2 retries); a quorum costs nothing more at all.
    for what, retries in [("retried once", 1), ("3 attempts failed", 2)]:
        assert cost[f"{what}, recheck, budget"] == cost[f"{what}, recheck"]
        assert cost[f"{what}, no recheck, budget"] == cost[f"{what}, no recheck"] + retries
    assert cost["guarded success, budget"] == cost["guarded success"]
    assert cost["closed success, min_reporters=3"] == PATHS[0].round_trips
    assert cost["closed failure, min_reporters=3"] == PATHS[1].round_trips
