"""OpenTelemetry (``pip install 'redbreaker[otel]'``): each process's calls and transitions
through the OTel metrics API, and the breaker's verdict on the current span::

    from redbreaker.contrib.otel import OtelMetrics

    store = redbreaker.connect(url, observers=[OtelMetrics()])

Only the API is used: the application's SDK (its MeterProvider, exporters, sampling)
decides where the data goes; without one every call here is a no-op. Names and attributes
are listed in docs/metrics.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._metric_names import DURATION_BUCKETS, call_kind_label, process_open_value, state_label

try:
    from opentelemetry import metrics, trace
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "redbreaker.contrib.otel needs opentelemetry-api: pip install 'redbreaker[otel]'"
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from .._observe import CallRecord
    from .._state import Transition

__all__ = [
    "CALLS_DURATION",
    "NOT_PERMITTED",
    "PROCESS_OPEN",
    "PROCESS_TRANSITIONS",
    "RETRY_BUDGET_EXHAUSTED",
    "STATE_CHANGE_EVENT",
    "TRANSITIONS",
    "OtelMetrics",
]

CALLS_DURATION = "redbreaker.calls.duration"
"""Histogram, seconds, attributes ``name`` and ``kind`` (successful, failed, ignored)."""
NOT_PERMITTED = "redbreaker.calls.not_permitted"
"""Counter of refused calls, attribute ``name``."""
TRANSITIONS = "redbreaker.transitions"
"""Counter of the transitions of the fleet's breakers this process made, attributes
``name``, ``from_state``, ``to_state``."""
RETRY_BUDGET_EXHAUSTED = "redbreaker.retry_budget.exhausted"
"""Counter of the retries the fleet's retry budget refused this process, attribute
``name``."""
PROCESS_TRANSITIONS = "redbreaker.process.transitions"
"""Counter of the transitions of this process's own breaker (``min_reporters`` > 1),
attributes ``name``, ``from_state``, ``to_state``."""
PROCESS_OPEN = "redbreaker.process.open"
"""UpDownCounter: 1 while this process's own breaker is open or half-open, else 0
(summed over processes: how many reject on their own), attribute ``name``."""
STATE_CHANGE_EVENT = "circuitbreaker.state_change"
"""The span event added for each transition this process's call made."""

_OUTCOMES = {"success": "success", "failure": "failure", "ignored": "ignored",
             "rejected": "rejected"}


class OtelMetrics:
    """An observer reporting calls and transitions through OpenTelemetry.

    Metrics: :data:`CALLS_DURATION`, :data:`NOT_PERMITTED`, :data:`TRANSITIONS`, and for
    the fleet policies :data:`RETRY_BUDGET_EXHAUSTED`, :data:`PROCESS_TRANSITIONS`,
    :data:`PROCESS_OPEN`.

    Spans (``spans=True``): the span current when a call's outcome is known gets
    ``circuitbreaker.name``, ``circuitbreaker.state`` (the state the call ran in, or
    that refused it) and ``circuitbreaker.outcome`` (``success``, ``failure``,
    ``ignored`` -- the breaker counted it as no call -- or ``rejected``); a transition
    made by the call adds a :data:`STATE_CHANGE_EVENT` event to it (one of this process's
    own breaker with ``circuitbreaker.scope`` = ``process``). Several calls in one
    span: the last call's attributes win, every transition event stays.

    Args:
        meter_provider: where the instruments come from (default: the global one).
        spans: also annotate the current span.
    """

    def __init__(
        self, meter_provider: MeterProvider | None = None, *, spans: bool = True
    ) -> None:
        meter = metrics.get_meter("redbreaker", meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            CALLS_DURATION,
            unit="s",
            description="Calls through each breaker, by outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._not_permitted = meter.create_counter(
            NOT_PERMITTED, unit="{call}", description="Calls each breaker refused"
        )
        self._transitions = meter.create_counter(
            TRANSITIONS, unit="{transition}", description="State changes this process made"
        )
        self._budget_exhausted = meter.create_counter(
            RETRY_BUDGET_EXHAUSTED,
            unit="{retry}",
            description="Retries the fleet's retry budget refused this process",
        )
        # A process's own breaker apart from the fleet's: summing the fleet counter over
        # processes must count each fleet transition once.
        self._process_transitions = meter.create_counter(
            PROCESS_TRANSITIONS,
            unit="{transition}",
            description="State changes of this process's own breaker",
        )
        # An UpDownCounter, not a gauge: moved by each transition's change, and its sum over
        # processes is how many reject on their own.
        self._process_open = meter.create_up_down_counter(
            PROCESS_OPEN,
            unit="{breaker}",
            description="1 while this process's own breaker is open or half-open",
        )
        self._spans = spans
        # Attribute dicts made once per breaker and kind, not once per call.
        self._call_attributes: dict[tuple[str, str], dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"<OtelMetrics spans={self._spans}>"

    def on_call(self, record: CallRecord) -> None:
        """Record ``record``, and annotate the current span."""
        if record.seconds is None:  # a refused call
            self._not_permitted.add(1, self._attributes(record.breaker, ""))
        else:
            kind = call_kind_label(record.outcome)
            self._duration.record(record.seconds, self._attributes(record.breaker, kind))
        if self._spans:
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attributes({
                    "circuitbreaker.name": record.breaker,
                    "circuitbreaker.state": record.state,
                    "circuitbreaker.outcome": _OUTCOMES[record.outcome],
                })

    def on_transition(self, transition: Transition) -> None:
        """Count ``transition``, and add it to the current span as an event."""
        previous = state_label(transition.previous, "redbreaker")
        current = state_label(transition.current, "redbreaker")
        attributes = {"name": transition.name, "from_state": previous, "to_state": current}
        own = transition.scope == "process"
        if own:
            self._process_transitions.add(1, attributes)
            now_open = process_open_value(transition.current)
            change = int(now_open - process_open_value(transition.previous))
            if change:
                self._process_open.add(change, {"name": transition.name})
        else:
            self._transitions.add(1, attributes)
        if self._spans:
            span = trace.get_current_span()
            if span.is_recording():
                event: dict[str, str | int] = {
                    "circuitbreaker.name": transition.name,
                    "circuitbreaker.from_state": previous,
                    "circuitbreaker.to_state": current,
                    "circuitbreaker.reason": transition.reason,
                    "circuitbreaker.generation": transition.generation,
                }
                if own:
                    event["circuitbreaker.scope"] = "process"
                span.add_event(STATE_CHANGE_EVENT, event)

    def on_policy_event(self, breaker: str, event: str) -> None:
        """Count a fleet policy's event: a retry the budget refused."""
        if event == "retry_budget_exhausted":
            self._budget_exhausted.add(1, self._attributes(breaker, ""))

    def _attributes(self, breaker: str, kind: str) -> dict[str, str]:
        key = (breaker, kind)
        attributes = self._call_attributes.get(key)
        if attributes is None:
            attributes = {"name": breaker, "kind": kind} if kind else {"name": breaker}
            self._call_attributes[key] = attributes
        return attributes
