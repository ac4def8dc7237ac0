"""The dashboard's fleet board: what every breaker under a prefix looks like now, what
happened to it lately, and what the viewers are told. Pure: no I/O here.

The dashboard driver (:mod:`redbreaker._dashboard`) feeds it snapshots it read, the
transitions it heard and the edges of Redis's reachability, with wall-clock times in ms;
every feeding method returns the events to fan out to the viewers (JSON-ready dicts, each
with a ``"type"``), and the board's JSON is what ``/api/breakers`` serves.

Decisions made here:

- A snapshot that differs from the last one (ignoring the read time and the ticking
  ``retry_after``) is news; the same snapshot again is not.
- A transition heard is kept in a bounded per-breaker history and asks for an immediate
  read of that breaker (its counts and deadlines changed with it).
- A generation that moved without a heard transition (the feed was down, or the snapshot
  overtook the PUBLISH) becomes a history entry marked ``"heard": false``; the transition,
  heard later, replaces it rather than appearing twice.
- A breaker Redis no longer holds (its keys expired) leaves the board.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._state import Snapshot, Transition

__all__ = ["HISTORY_LENGTH", "Board", "Event", "sse_message"]

HISTORY_LENGTH = 50
"""Transitions kept per breaker (newest first in the JSON)."""

Event = dict[str, Any]
"""One message for the viewers: JSON-ready, with a ``"type"`` key."""


def _transition_json(transition: Transition, *, heard: bool) -> dict[str, Any]:
    return {
        "name": transition.name,
        "previous": None if transition.previous is None else transition.previous.value,
        "current": transition.current.value,
        "reason": transition.reason,
        "generation": transition.generation,
        "at_ms": transition.at_ms,
        "heard": heard,
    }


def _comparable(snapshot: Snapshot) -> Snapshot:
    """The snapshot without what changes by merely reading it again later."""
    return dataclasses.replace(snapshot, now_ms=0, retry_after=None)


def _breaker_json(snapshot: Snapshot, history: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": snapshot.name,
        "state": snapshot.state.value,
        "failure_rate": snapshot.failure_rate,
        "slow_call_rate": snapshot.slow_call_rate,
        "window_calls": snapshot.window_calls,
        "window_failures": snapshot.window_failures,
        "window_slow_calls": snapshot.window_slow_calls,
        "consecutive_failures": snapshot.consecutive_failures,
        # The fleet policies: retries the budget granted in the window and refused in all,
        # and a quorum's distinct reporters. Not process_state: the dashboard keeps no
        # breaker of its own, so it would always be None here.
        "window_retries": snapshot.window_retries,
        "retry_budget_exhausted_count": snapshot.retry_budget_exhausted_count,
        "reporters": snapshot.reporters,
        "reporter_ids": list(snapshot.reporter_ids),
        "retry_after": snapshot.retry_after,
        "open_until_ms": snapshot.open_until_ms,
        "forced_until_ms": snapshot.forced_until_ms,
        "probes_in_flight": snapshot.probes_in_flight,
        "half_open_successes": snapshot.half_open_successes,
        "consecutive_opens": snapshot.consecutive_opens,
        "open_count": snapshot.open_count,
        "would_trip_count": snapshot.would_trip_count,
        "generation": snapshot.generation,
        "changed_at_ms": snapshot.changed_at_ms,
        "last_reason": snapshot.last_reason,
        "read_at_ms": snapshot.now_ms,
        "history": list(history),
    }


class Board:
    """Every breaker under one prefix as last read, with its recent transitions.

    Args:
        prefix: the key prefix watched (shown on the page).
        admin_actions: whether the server accepts operator orders (an admin token was
            configured); the page shows no buttons otherwise.
        history_length: transitions kept per breaker.
    """

    def __init__(
        self, prefix: str, *, admin_actions: bool, history_length: int = HISTORY_LENGTH
    ) -> None:
        self.prefix = prefix
        self.admin_actions = admin_actions
        self._history_length = history_length
        self._snapshots: dict[str, Snapshot] = {}
        # Newest first; kept for names not (yet) on the board too, so that a breaker's
        # first transitions are there when its first snapshot arrives.
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._down_since_ms: int | None = None
        self._problem: str | None = None
        # Unreachable until the first full read succeeded: the page says "connecting".
        self._reachable = False

    # -- reading ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The breakers on the board, sorted."""
        return sorted(self._snapshots)

    def has(self, name: str) -> bool:
        return name in self._snapshots

    def snapshots(self) -> list[Snapshot]:
        """The last snapshot of every breaker, by name (what the fleet gauges export)."""
        return [self._snapshots[name] for name in sorted(self._snapshots)]

    def breaker_json(self, name: str) -> dict[str, Any]:
        return _breaker_json(self._snapshots[name], self._history.get(name, ()))

    def redis_json(self) -> dict[str, Any]:
        return {
            "reachable": self._reachable,
            "down_since_ms": self._down_since_ms,
            "problem": self._problem,
        }

    def board_json(self) -> dict[str, Any]:
        """What ``/api/breakers`` serves, and the first event of every viewer's stream."""
        return {
            "type": "board",
            "prefix": self.prefix,
            "admin_actions": self.admin_actions,
            "redis": self.redis_json(),
            "breakers": [self.breaker_json(name) for name in self.names()],
        }

    # -- feeding ------------------------------------------------------------------------

    def hear(self, transition: Transition) -> tuple[list[Event], list[str]]:
        """A transition heard on the feed: the events to send, and the breakers to read
        again now."""
        entry = _transition_json(transition, heard=True)
        history = self._history_of(transition.name)
        for index, kept in enumerate(history):
            if not kept["heard"] and kept["generation"] == transition.generation:
                history[index] = entry  # inferred from a snapshot first: now known
                break
        else:
            history.appendleft(entry)
        return [{"type": "transition", "transition": entry}], [transition.name]

    def update(self, snapshot: Snapshot) -> list[Event]:
        """A breaker as just read: the events to send (none when nothing changed)."""
        name = snapshot.name
        if not snapshot.exists:
            return self._remove(name)
        old = self._snapshots.get(name)
        self._snapshots[name] = snapshot
        if old is not None and _comparable(old) == _comparable(snapshot):
            return []
        if old is not None and snapshot.generation > old.generation:
            self._infer_missed(old, snapshot)
        return [{"type": "breaker", "breaker": self.breaker_json(name)}]

    def present(self, names: Iterable[str]) -> list[Event]:
        """The names Redis holds now: breakers no longer among them leave the board."""
        keep = set(names)
        events: list[Event] = []
        for name in [n for n in self._snapshots if n not in keep]:
            events.extend(self._remove(name))
        for name in [n for n in self._history if n not in keep and n not in self._snapshots]:
            del self._history[name]
        return events

    def redis_lost(self, at_ms: int, problem: str) -> list[Event]:
        """Redis stopped answering (or the feed dropped): an event on the first edge only."""
        was_reachable = self._reachable or self._down_since_ms is None
        self._reachable = False
        self._problem = problem
        if self._down_since_ms is None:
            self._down_since_ms = at_ms
        return [{"type": "redis", "redis": self.redis_json()}] if was_reachable else []

    def redis_back(self) -> list[Event]:
        """Redis answers again (the feed is subscribed and a full read succeeded)."""
        if self._reachable:
            return []
        self._reachable = True
        self._down_since_ms = None
        self._problem = None
        return [{"type": "redis", "redis": self.redis_json()}]

    # -- internals ----------------------------------------------------------------------

    def _history_of(self, name: str) -> deque[dict[str, Any]]:
        history = self._history.get(name)
        if history is None:
            history = self._history[name] = deque(maxlen=self._history_length)
        return history

    def _infer_missed(self, old: Snapshot, new: Snapshot) -> None:
        history = self._history_of(new.name)
        if any(kept["generation"] == new.generation for kept in history):
            return
        history.appendleft(
            {
                "name": new.name,
                "previous": old.state.value,
                "current": new.state.value,
                "reason": new.last_reason or "unknown",
                "generation": new.generation,
                "at_ms": new.changed_at_ms if new.changed_at_ms is not None else new.now_ms,
                "heard": False,
                "missed": new.generation - old.generation,
            }
        )

    def _remove(self, name: str) -> list[Event]:
        self._history.pop(name, None)
        if self._snapshots.pop(name, None) is None:
            return []
        return [{"type": "removed", "name": name}]


def sse_message(event: Event, event_id: int) -> str:
    """One Server-Sent Events message: ``event:`` is the event's type, ``data:`` its JSON
    (one line: JSON escapes every newline inside strings)."""
    data = json.dumps(event, separators=(",", ":"), allow_nan=False)
    return f"id: {event_id}\nevent: {event['type']}\ndata: {data}\n\n"
