"""Metric names, labels and values, for both namings (redbreaker's own and resilience4j's
Micrometer names). Pure: no I/O here; the Prometheus and OpenTelemetry adapters
(:mod:`redbreaker.contrib`) export what this module computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._exceptions import ConfigError
from ._state import State

if TYPE_CHECKING:
    from ._observe import CallKind
    from ._state import Snapshot, Transition

__all__ = [
    "DURATION_BUCKETS",
    "NAMINGS",
    "FleetGauge",
    "Names",
    "Naming",
    "call_kind_label",
    "fleet_gauges",
    "names",
    "naming_setting",
    "process_open_value",
    "state_label",
    "transition_labels",
]

DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Bucket bounds of the call-duration histograms, in seconds."""

Naming = Literal["redbreaker", "resilience4j"]
NAMINGS: tuple[Naming, ...] = ("redbreaker", "resilience4j")

_KIND_LABELS: dict[str, str] = {"success": "successful", "failure": "failed", "ignored": "ignored"}

# resilience4j has no "forced_closed": its DISABLED state admits every call and counts
# nothing, which is what forced_closed does.
_R4J_STATES: dict[State, str] = {
    State.CLOSED: "closed",
    State.OPEN: "open",
    State.HALF_OPEN: "half_open",
    State.FORCED_OPEN: "forced_open",
    State.FORCED_CLOSED: "disabled",
    State.METRICS_ONLY: "metrics_only",
}


@dataclass(frozen=True)
class Names:
    """Every metric name of one naming (Prometheus spelling; counters without ``_total``)."""

    naming: Naming
    calls: str  # the call timer: a histogram (redbreaker) or a summary plus a max gauge
    calls_max: str | None  # Micrometer's windowed max gauge (resilience4j only)
    not_permitted: str
    transitions: str
    state: str
    failure_rate: str
    slow_call_rate: str
    window_calls: str
    window_slow_calls: str | None
    consecutive_failures: str | None
    # Per process, the fleet policies (issue 14). resilience4j has none of them: its names
    # keep the resilience4j_circuitbreaker_ prefix, as the transitions counter does, so
    # both namings can share one registry, and docs/metrics.md says they are ours.
    retry_budget_exhausted: str
    process_transitions: str
    process_open: str
    # Fleet-wide, read from Redis: redbreaker naming only (as the slow calls and the
    # streak), since resilience4j exports nothing like them.
    window_retries: str | None
    reporters: str | None
    fleet_retry_budget_exhausted: str | None


_NAMES = {
    "redbreaker": Names(
        naming="redbreaker",
        calls="redbreaker_calls_seconds",
        calls_max=None,
        not_permitted="redbreaker_not_permitted_calls",
        transitions="redbreaker_transitions",
        state="redbreaker_state",
        failure_rate="redbreaker_failure_rate",
        slow_call_rate="redbreaker_slow_call_rate",
        window_calls="redbreaker_window_calls",
        window_slow_calls="redbreaker_window_slow_calls",
        consecutive_failures="redbreaker_consecutive_failures",
        retry_budget_exhausted="redbreaker_retry_budget_exhausted",
        process_transitions="redbreaker_process_transitions",
        process_open="redbreaker_process_open",
        window_retries="redbreaker_window_retries",
        reporters="redbreaker_reporters",
        # Not redbreaker_retry_budget_exhausted: that is the per-process counter's family,
        # and a registry holding both would refuse the second.
        fleet_retry_budget_exhausted="redbreaker_fleet_retry_budget_exhausted",
    ),
    "resilience4j": Names(
        naming="resilience4j",
        calls="resilience4j_circuitbreaker_calls_seconds",
        calls_max="resilience4j_circuitbreaker_calls_seconds_max",
        not_permitted="resilience4j_circuitbreaker_not_permitted_calls",
        transitions="resilience4j_circuitbreaker_transitions",
        state="resilience4j_circuitbreaker_state",
        failure_rate="resilience4j_circuitbreaker_failure_rate",
        slow_call_rate="resilience4j_circuitbreaker_slow_call_rate",
        window_calls="resilience4j_circuitbreaker_buffered_calls",
        window_slow_calls=None,
        consecutive_failures=None,
        retry_budget_exhausted="resilience4j_circuitbreaker_retry_budget_exhausted",
        process_transitions="resilience4j_circuitbreaker_process_transitions",
        process_open="resilience4j_circuitbreaker_process_open",
        window_retries=None,
        reporters=None,
        fleet_retry_budget_exhausted=None,
    ),
}


def naming_setting(naming: object) -> Naming:
    """``naming`` checked.

    Raises:
        ConfigError: not ``"redbreaker"`` or ``"resilience4j"``.
    """
    if naming not in NAMINGS:
        raise ConfigError("naming", f"must be 'redbreaker' or 'resilience4j', got {naming!r}")
    return naming


def names(naming: Naming) -> Names:
    """The metric names of ``naming``."""
    return _NAMES[naming]


def call_kind_label(kind: CallKind) -> str:
    """The ``kind`` label of a call's outcome: successful, failed or ignored (both
    namings: they are Micrometer's)."""
    return _KIND_LABELS[kind]


def state_label(state: State | None, naming: Naming) -> str:
    """A state as the ``state``, ``from_state`` and ``to_state`` labels spell it
    (``"unreadable"``: a breaker repaired from an unreadable stored state)."""
    if state is None:
        return "unreadable"
    return _R4J_STATES[state] if naming == "resilience4j" else state.value


def transition_labels(transition: Transition, naming: Naming) -> tuple[str, str, str]:
    """(name, from_state, to_state) of a transition."""
    return (
        transition.name,
        state_label(transition.previous, naming),
        state_label(transition.current, naming),
    )


def process_open_value(state: State | None) -> float:
    """The process-open gauge of a process's own breaker in ``state``: 1 unless closed
    (half-open still rejects every call but its probes); 0 for None (the unreadable state
    a repair starts from)."""
    return 0.0 if state is None or state is State.CLOSED else 1.0


@dataclass(frozen=True)
class FleetGauge:
    """One fleet gauge family: its name, help, label names and samples."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    samples: tuple[tuple[tuple[str, ...], float], ...]


def _rate(value: float | None, naming: Naming) -> float | None:
    # resilience4j reports percent, and -1 while the rate cannot be computed; ours is a
    # ratio, absent while the window holds no calls.
    if naming == "resilience4j":
        return -1.0 if value is None else value * 100.0
    return value


def fleet_gauges(snapshots: list[Snapshot], naming: Naming) -> list[FleetGauge]:
    """The fleet gauges of ``snapshots`` (one per breaker), every family listed even when
    it has no samples."""
    n = names(naming)
    states = tuple(_R4J_STATES.values()) if naming == "resilience4j" else tuple(
        s.value for s in State
    )
    state: list[tuple[tuple[str, ...], float]] = []
    failure: list[tuple[tuple[str, ...], float]] = []
    slow: list[tuple[tuple[str, ...], float]] = []
    window: list[tuple[tuple[str, ...], float]] = []
    slow_calls: list[tuple[tuple[str, ...], float]] = []
    streak: list[tuple[tuple[str, ...], float]] = []
    retries: list[tuple[tuple[str, ...], float]] = []
    reporters: list[tuple[tuple[str, ...], float]] = []
    refused: list[tuple[tuple[str, ...], float]] = []
    for snap in snapshots:
        now = state_label(snap.state, naming)
        state += [((snap.name, s), 1.0 if s == now else 0.0) for s in states]
        for rates, value in ((failure, snap.failure_rate), (slow, snap.slow_call_rate)):
            rate = _rate(value, naming)
            if rate is not None and not math.isnan(rate):
                rates.append(((snap.name,), rate))
        succeeded = snap.window_calls - snap.window_failures
        window += [((snap.name, "successful"), float(succeeded)),
                   ((snap.name, "failed"), float(snap.window_failures))]
        slow_calls.append(((snap.name,), float(snap.window_slow_calls)))
        streak.append(((snap.name,), float(snap.consecutive_failures)))
        retries.append(((snap.name,), float(snap.window_retries)))
        reporters.append(((snap.name,), float(snap.reporters)))
        refused.append(((snap.name,), float(snap.retry_budget_exhausted_count)))
    gauges = [
        FleetGauge(n.state, "1 for the state each breaker is in, 0 for the others",
                   ("name", "state"), tuple(state)),
        FleetGauge(n.failure_rate, _RATE_HELP[naming].format("failed"), ("name",),
                   tuple(failure)),
        FleetGauge(n.slow_call_rate, _RATE_HELP[naming].format("slow"), ("name",), tuple(slow)),
        FleetGauge(n.window_calls, "Calls in each breaker's sliding window, by outcome",
                   ("name", "kind"), tuple(window)),
    ]
    if n.window_slow_calls is not None:
        gauges.append(FleetGauge(n.window_slow_calls, "Slow calls in each breaker's window",
                                 ("name",), tuple(slow_calls)))
    if n.consecutive_failures is not None:
        gauges.append(FleetGauge(n.consecutive_failures, "Each breaker's failure streak",
                                 ("name",), tuple(streak)))
    optional = (
        (n.window_retries, "Retries the retry budget granted in each breaker's window",
         retries),
        (n.reporters, "Distinct processes that reported a failure or slow call in each "
         "breaker's window (kept with min_reporters > 1, at most that many)", reporters),
        # A gauge of a count that only grows (until the breaker's keys are recreated):
        # increase() and rate() read it as a counter.
        (n.fleet_retry_budget_exhausted, "Retries the fleet's retry budget refused since "
         "each breaker was created", refused),
    )
    for name, documentation, samples in optional:
        if name is not None:
            gauges.append(FleetGauge(name, documentation, ("name",), tuple(samples)))
    return gauges


_RATE_HELP: dict[str, str] = {
    "redbreaker": "Share of {} calls in each breaker's window, 0..1 (absent while empty)",
    "resilience4j": "Percentage of {} calls in each breaker's window (-1 while empty)",
}
