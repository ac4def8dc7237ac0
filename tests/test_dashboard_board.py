"""The dashboard's board (the sans-I/O core deciding what viewers are told), on the
embedded store, and the dashboard's import and configuration rules."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest

import redbreaker
from redbreaker._board import HISTORY_LENGTH, Board, sse_message
from redbreaker._state import State, Transition


def _touch(store: Any, name: str) -> redbreaker.Breaker:
    """A breaker that exists in the store (one successful call)."""
    breaker = redbreaker.Breaker(name, store=store, failure_threshold=2)
    breaker.call(lambda: None)
    assert breaker.snapshot().exists
    return breaker


@pytest.fixture
def memory_store():
    store = redbreaker.connect("memory://")
    yield store
    store.close()


def test_board_news_only_when_a_snapshot_changed(memory_store: redbreaker.Store) -> None:
    board = Board("redbreaker", admin_actions=False)
    breaker = _touch(memory_store, "payments")
    first = board.update(breaker.snapshot())
    assert [e["type"] for e in first] == ["breaker"]
    assert board.update(breaker.snapshot()) == []  # read again later: nothing new
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    (event,) = board.update(breaker.snapshot())
    assert event["breaker"]["window_failures"] == 1
    assert event["breaker"]["consecutive_failures"] == 1


def test_board_shows_the_fleet_policies(memory_store: redbreaker.Store) -> None:
    """A retry budget of 3 retries per window (the floor alone) spent by 3 guarded calls,
    and one reporter of a quorum of 3: the board's JSON says so, and it is news."""
    board = Board("redbreaker", admin_actions=False)
    fleet = redbreaker.Breaker(
        "fleet",
        store=memory_store,
        retry_budget=0.0,
        retry_budget_floor=0.05,
        min_reporters=3,
        failure_threshold=100,
    )
    fleet.call(lambda: None)
    board.update(fleet.snapshot())
    quiet = board.breaker_json("fleet")
    assert (quiet["window_retries"], quiet["retry_budget_exhausted_count"]) == (0, 0)
    assert quiet["reporters"] == 0
    guard = fleet.guard(retry_on=ZeroDivisionError, max_attempts=3, backoff_base=0.001)
    for _ in range(3):
        with pytest.raises(ZeroDivisionError):
            guard.call(lambda: 1 / 0)
    (event,) = board.update(fleet.snapshot())
    shown = event["breaker"]
    assert (shown["window_retries"], shown["retry_budget_exhausted_count"]) == (3, 2)
    assert shown["reporters"] == 1
    assert "process_state" not in shown  # the dashboard keeps no breaker of its own


def test_board_keeps_heard_transitions_newest_first_and_bounded() -> None:
    board = Board("redbreaker", admin_actions=False)
    for generation in range(2, HISTORY_LENGTH + 12):
        events, wanted = board.hear(
            Transition("db", State.CLOSED, State.OPEN, "failure_rate", generation, generation)
        )
        assert wanted == ["db"]
        assert events[0]["transition"]["generation"] == generation
    store = redbreaker.connect("memory://")
    try:
        board.update(_touch(store, "db").snapshot())
    finally:
        store.close()
    history = board.breaker_json("db")["history"]
    assert len(history) == HISTORY_LENGTH
    assert history[0]["generation"] == HISTORY_LENGTH + 11
    assert all(entry["heard"] for entry in history)


def test_board_infers_missed_transitions_and_then_replaces_them(
    memory_store: redbreaker.Store,
) -> None:
    board = Board("redbreaker", admin_actions=False)
    breaker = _touch(memory_store, "search")
    board.update(breaker.snapshot())
    for _ in range(2):  # trips (generation 2) while the board heard nothing
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    tripped = breaker.snapshot()
    board.update(tripped)
    (missed,) = board.breaker_json("search")["history"]
    assert missed["heard"] is False
    assert (missed["previous"], missed["current"]) == ("closed", "open")
    assert missed["generation"] == tripped.generation
    # The PUBLISH arrives after the snapshot: one entry, now a heard one.
    board.hear(
        Transition(
            "search",
            State.CLOSED,
            State.OPEN,
            "consecutive_failures",
            tripped.generation,
            tripped.changed_at_ms or 0,
        )
    )
    (heard,) = board.breaker_json("search")["history"]
    assert heard["heard"] is True
    assert heard["reason"] == "consecutive_failures"


def test_board_drops_breakers_redis_no_longer_holds(memory_store: redbreaker.Store) -> None:
    board = Board("redbreaker", admin_actions=False)
    board.update(_touch(memory_store, "a").snapshot())
    board.update(_touch(memory_store, "b").snapshot())
    assert board.present(["b"]) == [{"type": "removed", "name": "a"}]
    assert board.names() == ["b"]
    gone = redbreaker.Breaker("never-made", store=memory_store).snapshot()
    assert not gone.exists
    assert board.update(gone) == []
    assert board.names() == ["b"]


def test_board_reports_each_redis_edge_once() -> None:
    board = Board("redbreaker", admin_actions=True)
    assert board.board_json()["redis"]["reachable"] is False
    (lost,) = board.redis_lost(1000, "connecting")
    assert lost["redis"] == {"reachable": False, "down_since_ms": 1000, "problem": "connecting"}
    assert board.redis_back()[0]["redis"]["reachable"] is True
    assert board.redis_back() == []
    (lost,) = board.redis_lost(5000, "Connection refused")
    assert board.redis_lost(6000, "Connection refused") == []
    assert board.board_json()["redis"]["down_since_ms"] == 5000
    assert board.board_json()["admin_actions"] is True


def test_sse_message_is_one_event_with_one_data_line() -> None:
    text = sse_message({"type": "removed", "name": "a\nb"}, 7)
    assert text == 'id: 7\nevent: removed\ndata: {"type":"removed","name":"a\\nb"}\n\n'


def test_importing_redbreaker_imports_no_web_stack() -> None:
    code = (
        "import sys, redbreaker, redbreaker.aio\n"
        "assert not {'starlette', 'uvicorn', 'prometheus_client'} & set(sys.modules), "
        "sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bad_naming_is_a_config_error() -> None:
    from redbreaker._dashboard import run_dashboard

    with pytest.raises(redbreaker.ConfigError, match="naming"):
        run_dashboard(
            "redis://127.0.0.1:1/0",
            prefix="p",
            host="127.0.0.1",
            port=0,
            admin_token=None,
            naming="micrometer",
            out=io.StringIO(),
        )


def test_a_bad_url_is_a_config_error() -> None:
    from redbreaker._dashboard import run_dashboard

    with pytest.raises(redbreaker.ConfigError):
        run_dashboard(
            "http://example.com",
            prefix="p",
            host="127.0.0.1",
            port=0,
            admin_token=None,
            out=io.StringIO(),
        )
