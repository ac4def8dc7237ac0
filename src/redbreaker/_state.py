"""What the scripts reply, decoded into frozen values. Pure: no I/O here.

Replies may hold ``bytes`` or ``str`` (``decode_responses`` off or on) and ints; every
decoder goes through :func:`_text` and :func:`_int` so both client settings read the same.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from ._config import script_defaults

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "AcquireReply",
    "ControlReply",
    "RecordReply",
    "Snapshot",
    "State",
    "Transition",
    "decode_acquire",
    "decode_control",
    "decode_event",
    "decode_record",
    "decode_snapshot",
]


class State(str, enum.Enum):
    """A breaker's state; each value is exactly the text stored in the ``state`` field."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    METRICS_ONLY = "metrics_only"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Transition:
    """One change of a breaker's state, made by one script call.

    Attributes:
        name: the breaker's name.
        previous: the state before, or None when the stored state was unreadable and the
            breaker repaired itself.
        current: the state after. It can equal ``previous``: a ``reset`` of a closed
            breaker, or a would-trip report of a ``metrics_only`` breaker (``reason``
            starts with ``"would_trip:"``; the only event that keeps the generation).
        reason: why, e.g. ``"consecutive_failures"``, ``"failure_rate"``,
            ``"slow_call_rate"``, ``"recovery_timeout_elapsed"``, ``"probe_failed"``,
            ``"probes_succeeded"``, ``"half_open_max_wait"``, ``"operator:force_open"``,
            ``"operator_deadline_passed"``, ``"reset"``, ``"repaired_invalid_fields"``.
        generation: the breaker's generation after the change.
        at_ms: when, in Unix ms on the Redis server's clock.
        scope: ``"fleet"`` for the shared breaker; ``"process"`` for the breaker a process
            keeps of its own with ``min_reporters`` > 1 (its transitions are this process's
            alone: they are never published).
    """

    name: str
    previous: State | None
    current: State
    reason: str
    generation: int
    at_ms: int
    scope: Literal["fleet", "process"] = "fleet"


class AcquireReply(NamedTuple):
    """The decoded reply of ``acquire.lua``."""

    verdict: str
    state: State
    generation: int
    consecutive_failures: int
    probe_token: str
    retry_after_ms: int
    now_ms: int
    incarnation: str
    transitions: tuple[Transition, ...]


class RecordReply(NamedTuple):
    """The decoded reply of ``record.lua``."""

    status: str
    state: State
    generation: int
    consecutive_failures: int
    now_ms: int
    retry_after_ms: int
    reporters: int  # short of min_reporters when a trip rule fired; else 0
    transitions: tuple[Transition, ...]


class ControlReply(NamedTuple):
    """The decoded reply of ``control.lua``."""

    state: State
    generation: int
    forced_until_ms: int
    now_ms: int
    transitions: tuple[Transition, ...]


@dataclass(frozen=True)
class Snapshot:
    """A breaker as Redis holds it at one moment (see :meth:`Breaker.snapshot`).

    Times are Unix ms on the Redis server's clock; durations are seconds.

    Attributes:
        name: the breaker's name.
        exists: False when Redis holds no breaker of that name yet (or it expired); the
            other fields then describe a fresh closed breaker.
        state: the stored state. An ``open`` breaker whose deadline passed stays ``open``
            here until the next call moves it to ``half_open``.
        generation: bumped by every transition; outcomes of older generations are dropped.
        consecutive_failures: the current fleet-wide failure streak.
        window_calls, window_failures, window_slow_calls: counts in the sliding window.
        failure_rate, slow_call_rate: the window's ratios, None while it holds no calls.
        open_until_ms: when an open breaker admits probes, else None.
        retry_after: seconds until an open or forced-open breaker admits calls again: 0
            when it is not open (in half_open, whether a call gets a probe slot depends on
            the leases in flight), None when no deadline is known (forced open without one).
        probes_in_flight: probe leases held now.
        half_open_successes: probe successes so far in this half-open period.
        consecutive_opens: re-opens in a row (drives ``recovery_backoff``).
        open_count: times the breaker has opened since it was created.
        would_trip_count: times a ``metrics_only`` breaker would have tripped.
        forced_until_ms: deadline of an operator state, None without one.
        changed_at_ms: time of the last transition.
        last_reason: reason of the last transition.
        now_ms: the server time the snapshot was taken at.
        window_retries: retries the fleet's retry budget granted in the window.
        retry_budget_exhausted_count: retries the budget refused since the breaker was
            created (fleet-wide).
        reporters: distinct processes that reported a failure or slow call in the window
            (kept only with ``min_reporters`` > 1, at most that many).
        reporter_ids: those processes' identities (``host:pid:random``), newest first:
            which workers are failing.
        process_state: the state of this process's own breaker (``min_reporters`` > 1),
            which rejects this process's calls alone; None without one.
    """

    name: str
    exists: bool
    state: State
    generation: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    open_until_ms: int | None
    retry_after: float | None
    probes_in_flight: int
    half_open_successes: int
    consecutive_opens: int
    open_count: int
    would_trip_count: int
    forced_until_ms: int | None
    changed_at_ms: int | None
    last_reason: str | None
    now_ms: int
    window_retries: int = 0
    retry_budget_exhausted_count: int = 0
    reporters: int = 0
    reporter_ids: tuple[str, ...] = ()
    process_state: State | None = None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: object, default: int = 0) -> int:
    if type(value) is int:  # what Lua numbers arrive as: the hot path
        return value
    if value is None:
        return default
    try:
        return int(_text(value))
    except ValueError:
        return default


# Every spelling a reply may carry a state in (bytes, or str on a decoding client).
_STATES: dict[object, State] = {
    **{s.value: s for s in State}, **{s.value.encode(): s for s in State}
}


def _state(value: object) -> State:
    state = _STATES.get(value)
    return state if state is not None else State(_text(value))


def _maybe_state(value: object) -> State | None:
    try:
        return State(_text(value))
    except ValueError:
        return None


def _transitions(name: str, generation: int, at_ms: int, flat: Sequence[object]) -> tuple[
    Transition, ...
]:
    # The script lists its transitions in order; the last one left the final generation,
    # so earlier ones are numbered back from it.
    # A would-trip report is the only event that does not start a new generation.
    triples = [flat[i : i + 3] for i in range(0, len(flat) - len(flat) % 3, 3)]
    moved = sum(1 for t in triples if not _text(t[2]).startswith("would_trip:"))
    out = []
    gen = generation - moved
    for previous, current, reason in triples:
        if not _text(reason).startswith("would_trip:"):
            gen += 1
        out.append(
            Transition(name, _maybe_state(previous), _state(current), _text(reason), gen, at_ms)
        )
    return tuple(out)


def decode_acquire(name: str, reply: Sequence[object]) -> AcquireReply:
    """Decode ``acquire.lua``'s reply."""
    generation, now_ms = _int(reply[2]), _int(reply[6])
    return AcquireReply(
        verdict=_text(reply[0]),
        state=_state(reply[1]),
        generation=generation,
        consecutive_failures=_int(reply[3]),
        probe_token=_text(reply[4]),
        retry_after_ms=_int(reply[5]),
        now_ms=now_ms,
        incarnation=_text(reply[7]),
        transitions=_transitions(name, generation, now_ms, reply[8:]) if len(reply) > 8 else (),
    )


def decode_record(name: str, reply: Sequence[object]) -> RecordReply:
    """Decode ``record.lua``'s reply."""
    generation, now_ms = _int(reply[2]), _int(reply[4])
    return RecordReply(
        status=_text(reply[0]),
        state=_state(reply[1]),
        generation=generation,
        consecutive_failures=_int(reply[3]),
        now_ms=now_ms,
        retry_after_ms=_int(reply[5]),
        reporters=_int(reply[6]),
        transitions=_transitions(name, generation, now_ms, reply[7:]) if len(reply) > 7 else (),
    )


def decode_control(name: str, reply: Sequence[object]) -> ControlReply:
    """Decode ``control.lua``'s reply."""
    generation, now_ms = _int(reply[1]), _int(reply[3])
    return ControlReply(
        state=_state(reply[0]),
        generation=generation,
        forced_until_ms=_int(reply[2]),
        now_ms=now_ms,
        transitions=_transitions(name, generation, now_ms, reply[4:]),
    )


def decode_event(payload: bytes | str) -> Transition:
    """Decode one PUBLISHed transition (JSON, never evaluated or unpickled)."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("a redbreaker event is a JSON object")
    name, reason = data["name"], data["reason"]
    generation, at_ms = data["generation"], data["at_ms"]
    if not isinstance(name, str) or not isinstance(reason, str):
        raise ValueError("an event's name and reason are strings")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (generation, at_ms)):
        raise ValueError("an event's generation and at_ms are integers")
    return Transition(
        name=name,
        previous=_maybe_state(data["from_state"]),
        current=State(data["to_state"]),
        reason=reason,
        generation=generation,
        at_ms=at_ms,
    )


_BUCKET_FIELDS = tuple(f"w.{i}" for i in range(10))
_RETRY_FIELDS = tuple(f"r.{i}" for i in range(10))


def _live_sums(
    fields: dict[str, str], names: tuple[str, ...], width: int, now_ms: int, window_ms: int
) -> list[int]:
    """The column sums of the live buckets among ``names`` (exactly the fields the scripts
    read): each a ``start n1 n2 ...`` text of ``width`` numbers; one outside the window
    or in another form counts nothing."""
    sums = [0] * (width - 1)
    for key in names:
        parts = fields.get(key, "").split(" ")
        if len(parts) != width or not all(p.isdigit() for p in parts):
            continue
        start, *counts = (int(p) for p in parts)
        if now_ms - window_ms < start <= now_ms:
            sums = [total + count for total, count in zip(sums, counts, strict=True)]
    return sums


def _stored_window_ms(fields: dict[str, str]) -> int | None:
    if "config" not in fields:
        return None
    # The field keeps the settings that differ from the defaults: no window_ms is the default.
    window = script_defaults()["window_ms"]
    for setting in fields["config"].split(" "):
        key, _, value = setting.partition("=")
        if key == "window_ms":
            window = value
    return int(window) if window.isdigit() and int(window) > 0 else None


def decode_snapshot(name: str, reply: Sequence[object], window_ms: int) -> Snapshot:
    """Decode ``inspect.lua``'s reply.

    The window is summed over the window length stored with the breaker (the settings
    that drove it last), else ``window_ms``: a reader with other settings, such as the
    CLI, still sees the counts the breaker trips on.
    """
    now_ms, probes = _int(reply[0]), _int(reply[1])
    listed = reply[2]
    reporter_ids = tuple(_text(v) for v in listed) if isinstance(listed, (list, tuple)) else ()
    flat = [_text(v) for v in reply[3:]]
    fields = dict(zip(flat[0::2], flat[1::2], strict=False))
    state = _maybe_state(fields.get("state", "closed")) or State.CLOSED
    stored_window_ms = _stored_window_ms(fields) or window_ms
    calls, failures, slow = _live_sums(fields, _BUCKET_FIELDS, 4, now_ms, stored_window_ms)
    [retries] = _live_sums(fields, _RETRY_FIELDS, 2, now_ms, stored_window_ms)
    open_until = _int(fields.get("open_until")) or None
    forced_until = _int(fields.get("forced_until")) or None
    retry_after: float | None = 0.0
    if state is State.OPEN and open_until is not None:
        retry_after = max(0, open_until - now_ms) / 1000
    elif state is State.FORCED_OPEN:
        retry_after = None if forced_until is None else max(0, forced_until - now_ms) / 1000
    return Snapshot(
        name=name,
        exists=bool(fields),
        state=state,
        generation=_int(fields.get("generation"), 1),
        consecutive_failures=_int(fields.get("consecutive_failures")),
        window_calls=calls,
        window_failures=failures,
        window_slow_calls=slow,
        failure_rate=failures / calls if calls else None,
        slow_call_rate=slow / calls if calls else None,
        open_until_ms=open_until if state is State.OPEN else None,
        retry_after=retry_after,
        probes_in_flight=probes,
        half_open_successes=_int(fields.get("half_open_successes")),
        consecutive_opens=_int(fields.get("consecutive_opens")),
        open_count=_int(fields.get("open_count")),
        would_trip_count=_int(fields.get("would_trip_count")),
        forced_until_ms=forced_until,
        changed_at_ms=_int(fields.get("changed_at")) or None,
        last_reason=fields.get("last_reason"),
        now_ms=now_ms,
        window_retries=retries,
        retry_budget_exhausted_count=_int(fields.get("retry_budget_exhausted_count")),
        reporters=len(reporter_ids),
        reporter_ids=reporter_ids,
    )
