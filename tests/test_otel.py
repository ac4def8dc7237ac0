"""redbreaker.contrib.otel, read back through opentelemetry-sdk's in-memory metric reader
and span exporter: the instruments and their attributes, the verdict on the current span,
a span event per transition this process made, through both drivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import redbreaker
from redbreaker.contrib.otel import (
    CALLS_DURATION,
    NOT_PERMITTED,
    PROCESS_OPEN,
    PROCESS_TRANSITIONS,
    RETRY_BUDGET_EXHAUSTED,
    STATE_CHANGE_EVENT,
    TRANSITIONS,
    OtelMetrics,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan

    from drivers import Driver


class BoomError(Exception):
    """A dependency's failure."""


def boom() -> None:
    raise BoomError


def ok() -> str:
    return "ok"


class Otel:
    """An SDK of the test's own (the global providers are left alone)."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracers.get_tracer("test")

    def points(self, metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of ``metric`` by their sorted attributes."""
        data = self.reader.get_metrics_data()
        found = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        for point in m.data.data_points:
                            found[tuple(sorted(point.attributes.items()))] = point
        return found

    def span(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.exporter.get_finished_spans() if s.name == name]
        return span

    def close(self) -> None:
        self.meters.shutdown()
        self.tracers.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = Otel()
    yield made
    made.close()


def test_metrics(driver: Driver, otel: Otel) -> None:
    store = driver.connect("memory://", observers=[OtelMetrics(otel.meters)])
    breaker = driver.breaker("pay", store=store, failure_threshold=2, ignore_on=KeyError)

    def missing() -> None:
        raise KeyError("x")

    breaker.call(ok)
    with pytest.raises(KeyError):
        breaker.call(missing)
    for _ in range(2):
        with pytest.raises(BoomError):
            breaker.call(boom)
    for _ in range(3):
        with pytest.raises(redbreaker.CircuitOpenError):
            breaker.call(ok)

    durations = otel.points(CALLS_DURATION)
    counts = {dict(k)["kind"]: p.count for k, p in durations.items()}
    assert counts == {"successful": 1, "failed": 2, "ignored": 1}
    assert all(dict(k)["name"] == "pay" for k in durations)
    assert all(p.sum >= 0 for p in durations.values())
    assert {k: p.value for k, p in otel.points(NOT_PERMITTED).items()} == {(("name", "pay"),): 3}
    assert {k: p.value for k, p in otel.points(TRANSITIONS).items()} == {
        (("from_state", "closed"), ("name", "pay"), ("to_state", "open")): 1
    }


def test_the_verdict_on_the_current_span(driver: Driver, otel: Otel) -> None:
    store = driver.connect("memory://", observers=[OtelMetrics(otel.meters)])
    breaker = driver.breaker("pay", store=store, failure_threshold=1, ignore_on=KeyError)

    def missing() -> None:
        raise KeyError("x")

    with otel.tracer.start_as_current_span("succeeds"):
        breaker.call(ok)
    with otel.tracer.start_as_current_span("ignored"), pytest.raises(KeyError):
        breaker.call(missing)
    with otel.tracer.start_as_current_span("trips"), pytest.raises(BoomError):
        breaker.call(boom)
    with otel.tracer.start_as_current_span("rejected"), pytest.raises(redbreaker.CircuitOpenError):
        breaker.call(ok)

    def verdict(span: str) -> tuple[Any, ...]:
        attributes = otel.span(span).attributes or {}
        return tuple(attributes.get(f"circuitbreaker.{k}") for k in ("name", "state", "outcome"))

    assert verdict("succeeds") == ("pay", "closed", "success")
    assert verdict("ignored") == ("pay", "closed", "ignored")
    assert verdict("trips") == ("pay", "closed", "failure")
    assert verdict("rejected") == ("pay", "open", "rejected")

    (event,) = otel.span("trips").events
    assert event.name == STATE_CHANGE_EVENT
    assert dict(event.attributes or {}) == {
        "circuitbreaker.name": "pay",
        "circuitbreaker.from_state": "closed",
        "circuitbreaker.to_state": "open",
        "circuitbreaker.reason": "consecutive_failures",
        "circuitbreaker.generation": 2,
    }
    assert not otel.span("succeeds").events
    assert not otel.span("rejected").events


def test_spans_off_and_no_span(otel: Otel) -> None:
    store = redbreaker.connect("memory://", observers=[OtelMetrics(otel.meters, spans=False)])
    breaker = redbreaker.Breaker("pay", store=store, failure_threshold=1)
    with otel.tracer.start_as_current_span("quiet"), pytest.raises(BoomError):
        breaker.call(boom)
    assert not otel.span("quiet").attributes
    assert not otel.span("quiet").events

    both = redbreaker.connect("memory://", observers=[OtelMetrics(otel.meters)])
    assert redbreaker.Breaker("other", store=both).call(ok) == "ok"  # no span is current
    store.close()
    both.close()


def test_with_no_sdk_configured_every_call_is_a_no_op() -> None:
    """Only the API: with the global no-op providers nothing is recorded or raised."""
    store = redbreaker.connect("memory://", observers=[OtelMetrics()])
    breaker = redbreaker.Breaker("pay", store=store, failure_threshold=1)
    with pytest.raises(BoomError):
        breaker.call(boom)
    with pytest.raises(redbreaker.CircuitOpenError):
        breaker.call(ok)
    store.close()


def test_the_fleet_policies(driver: Driver, otel: Otel, clock: redbreaker.ManualClock) -> None:
    """Refused retries are counted; a process's own breaker (a quorum of 2, this process
    alone failing) moves the process counter and the open count, never the fleet's."""
    store = driver.connect("memory://", observers=[OtelMetrics(otel.meters)], clock=clock)
    budget = driver.breaker(
        "budget", store=store, retry_budget=0.0, retry_budget_floor=0.05, failure_threshold=100
    )
    guard = budget.guard(retry_on=BoomError, max_attempts=3, backoff_base=0.001)
    for _ in range(3):  # 3 retries granted (0.05/s over 60 s), 2 refused
        with pytest.raises(BoomError):
            guard.call(boom)
    quorum = driver.breaker(
        "quorum", store=store, min_reporters=2, failure_threshold=2, recovery_timeout=5
    )
    with otel.tracer.start_as_current_span("trips-own"):
        for _ in range(2):
            with pytest.raises(BoomError):
                quorum.call(boom)
    with pytest.raises(redbreaker.CircuitOpenError):
        quorum.call(ok)

    def values(metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        return {k: p.value for k, p in otel.points(metric).items()}

    assert values(RETRY_BUDGET_EXHAUSTED) == {(("name", "budget"),): 2}
    assert values(PROCESS_TRANSITIONS) == {
        (("from_state", "closed"), ("name", "quorum"), ("to_state", "open")): 1
    }
    assert values(PROCESS_OPEN) == {(("name", "quorum"),): 1}
    assert values(TRANSITIONS) == {}
    (event,) = otel.span("trips-own").events
    assert (event.attributes or {})["circuitbreaker.scope"] == "process"

    clock.advance(6)
    assert quorum.call(ok) == "ok"  # the own breaker's probe: half_open, then closed
    assert values(PROCESS_OPEN) == {(("name", "quorum"),): 0}
    assert sum(values(PROCESS_TRANSITIONS).values()) == 3
    assert values(TRANSITIONS) == {}
