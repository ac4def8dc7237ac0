"""The decisions of a store's reachability (redbreaker._reach), with no server: which
node's record a call goes by, when the store's one degraded/recovered pair is due, and
which records a new slot table drops."""

from __future__ import annotations

import pytest

from redbreaker import ManualClock, StoreEvent, StoreUnavailableError
from redbreaker._health import StoreHealth
from redbreaker._reach import Reachability


def _doubling(failures: int) -> float:
    return 0.1 * 2.0 ** (failures - 1)


def test_a_failed_node_alone_waits_out_its_backoff() -> None:
    reach = Reachability(_doubling)
    assert reach.failed("a:1", now=10.0)  # the store's outage begins
    assert reach.degraded
    assert reach.claim_try("a:1", now=10.05) == pytest.approx(0.05)
    assert reach.claim_try("b:2", now=10.05) == 0.0  # another primary: no wait
    assert not reach.down("b:2")
    assert reach.claim_try("a:1", now=10.1) == 0.0  # this caller tries a:1 ...
    assert reach.claim_try("a:1", now=10.1) == pytest.approx(0.1)  # ... the next waits
    assert not reach.failed("a:1", now=10.1)  # no second edge in one outage
    assert reach.wait_left("a:1", now=10.1) == pytest.approx(0.2)  # 2 failures: doubled


def test_the_store_recovers_when_its_last_degraded_node_answers() -> None:
    reach = Reachability(_doubling)
    assert reach.failed("a:1", now=1.0)
    assert not reach.failed("b:2", now=2.0)  # one degraded edge for both
    assert reach.succeeded("c:3", now=3.0) is None  # a healthy node: nothing ends
    assert reach.succeeded("a:1", now=4.0) is None  # b:2 still down
    assert reach.down_nodes() == ["b:2"]
    assert reach.succeeded("b:2", now=5.0) == pytest.approx(4.0)  # from the first failure
    assert not reach.degraded
    assert reach.succeeded("b:2", now=6.0) is None  # once
    assert reach.failed("a:1", now=7.0)  # a new outage: a new edge
    assert reach.wait_left("a:1", now=7.0) == pytest.approx(0.1)  # its backoff from base


def test_a_node_the_slot_table_no_longer_names_is_forgotten() -> None:
    """A dead primary a failover replaced gets no call again: forgotten, the store's
    outage ends at the next answer (its successor's, or another primary's)."""
    reach = Reachability(_doubling)
    reach.failed("dead:1", now=1.0)
    reach.failed("b:2", now=1.5)
    assert reach.forget_all_but({"b:2", "new:1"}) == ["dead:1"]
    assert reach.degraded  # b:2 is still down
    assert reach.succeeded("new:1", now=2.0) is None
    assert reach.forget_all_but({"new:1"}) == ["b:2"]  # b:2 resharded away
    assert reach.degraded  # pruning alone never declares the store recovered
    assert reach.succeeded("new:1", now=3.0) == pytest.approx(2.0)
    assert reach.forget_all_but(set()) == []


def test_store_health_reports_one_pair_per_cluster_outage() -> None:
    """StoreHealth over the core: two primaries failing and recovering make one
    store_degraded and one store_recovered, and a healthy primary's calls are let
    through meanwhile."""
    clock = ManualClock()
    events: list[StoreEvent] = []
    health = StoreHealth("p", clock, (events.append,))
    health.failed(ConnectionError("a down"), "a:1")
    health.failed(ConnectionError("b down"), "b:2")
    health.before_call("x", "c:3")  # no StoreUnavailableError: c:3 never failed
    with pytest.raises(StoreUnavailableError):
        health.before_call("y", "a:1")  # a:1's backoff has not passed
    assert health.wait_left_peek("a:1") > 0
    health.succeeded("a:1")
    health.serving({"b:2", "c:3"})
    clock.advance(3)
    health.succeeded("b:2")
    assert [e.kind for e in events] == ["store_degraded", "store_recovered"]
    assert events[0].error == "ConnectionError: a down"
    assert events[1].outage_seconds == pytest.approx(3.0)
    assert not health.degraded


def test_a_standalone_store_is_one_node() -> None:
    """No node named: the one record "" (a standalone or Sentinel store), as before."""
    clock = ManualClock()
    events: list[StoreEvent] = []
    health = StoreHealth("p", clock, (events.append,))
    health.failed(ConnectionError("down"))
    assert health.degraded
    assert health.wait_left_peek() > 0
    with pytest.raises(StoreUnavailableError):
        health.before_call("x")
    health.succeeded()
    assert [e.kind for e in events] == ["store_degraded", "store_recovered"]
