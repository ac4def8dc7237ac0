"""Prometheus metrics (``pip install 'redbreaker[prometheus]'``): each worker's calls, and
the fleet's breakers read from Redis.

Per process (an observer of a store; each worker exports its own)::

    from redbreaker.contrib.prometheus import PrometheusMetrics

    store = redbreaker.connect(url, observers=[PrometheusMetrics()])
    prometheus_client.start_http_server(9100)   # or the app's own /metrics

Fleet-wide (once for the fleet, by the dashboard server: ``redbreaker dashboard``)::

    registry.register(fleet_collector(read_snapshots, naming="redbreaker"))

Names, labels and types for both namings are listed in docs/metrics.md.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .._config import Seconds, seconds_setting
from .._exceptions import ConfigError
from .._metric_names import (
    DURATION_BUCKETS,
    call_kind_label,
    fleet_gauges,
    names,
    naming_setting,
    process_open_value,
    transition_labels,
)

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        Summary,
        values,
    )
    from prometheus_client.core import GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "redbreaker.contrib.prometheus needs prometheus-client: "
        "pip install 'redbreaker[prometheus]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.registry import Collector

    from .._observe import CallRecord
    from .._state import Snapshot, Transition

__all__ = ["DEFAULT_BUCKETS", "FleetCollector", "PrometheusMetrics", "fleet_collector"]

DEFAULT_BUCKETS = DURATION_BUCKETS
"""Seconds: from a cached call (under 0.5 ms) to a slow dependency (10 s)."""

MAX_WINDOW = 120.0
"""Seconds the resilience4j ``_max`` gauge remembers a call's duration (Micrometer's
default expiry, rotated in 3 steps as Micrometer's TimeWindowMax is)."""


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
    was set when it was first imported)."""
    return values.ValueClass is not values.MutexValue


class WindowMax:
    """The largest value recorded in the last ``window`` seconds, as Micrometer's
    TimeWindowMax keeps it: ``slots`` maxes, each recorded into all of them, the current
    one reset and the next made current every ``window / slots`` seconds."""

    def __init__(
        self, window: float, *, slots: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._slot_seconds = window / slots
        self._maxes = [0.0] * slots
        self._index = 0
        self._clock = clock
        self._rotated_at = clock()
        self._lock = threading.Lock()

    def record(self, value: float) -> float:
        """Remember ``value``; return the max now."""
        with self._lock:
            self._rotate()
            maxes = self._maxes
            for i, seen in enumerate(maxes):
                if value > seen:
                    maxes[i] = value
            return maxes[self._index]

    def value(self) -> float:
        """The largest value recorded in the window (0.0 when none)."""
        with self._lock:
            self._rotate()
            return self._maxes[self._index]

    def _rotate(self) -> None:
        steps = int((self._clock() - self._rotated_at) // self._slot_seconds)
        if steps <= 0:
            return
        slots = len(self._maxes)
        for _ in range(min(steps, slots)):
            self._maxes[self._index] = 0.0
            self._index = (self._index + 1) % slots
        self._rotated_at += steps * self._slot_seconds


class PrometheusMetrics:
    """An observer exporting one process's calls and transitions to Prometheus.

    Args:
        registry: where the metrics are registered (default: prometheus_client's global
            ``REGISTRY``). One ``PrometheusMetrics`` per registry: share it between stores.
        naming: ``"redbreaker"`` (a histogram per call kind) or ``"resilience4j"``
            (Micrometer's names: a summary plus a ``_max`` gauge, for dashboards built on
            resilience4j, such as Grafana's 21307).
        buckets: the histogram's buckets in seconds (``"redbreaker"`` naming only).
        max_window: seconds the ``_max`` gauge remembers a duration (``"resilience4j"``).

    Raises:
        ConfigError: an unknown naming, bad buckets, or metrics of these names already in
            ``registry``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        naming: str = "redbreaker",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_window: Seconds = MAX_WINDOW,
    ) -> None:
        self.naming = naming_setting(naming)
        registry = REGISTRY if registry is None else registry
        if not isinstance(registry, CollectorRegistry):
            raise ConfigError("registry", f"expected a prometheus_client CollectorRegistry, "
                              f"got {registry!r}")
        self._max_window = seconds_setting("max_window", max_window) or MAX_WINDOW
        self._multiprocess = multiprocess_mode()
        n = names(self.naming)
        r4j = self.naming == "resilience4j"
        try:
            calls: Histogram | Summary
            if r4j:
                calls = Summary(n.calls, "Calls through each breaker, by outcome",
                                ("name", "kind"), registry=None)
            else:
                calls = Histogram(n.calls, "Calls through each breaker, by outcome",
                                  ("name", "kind"), registry=None, buckets=tuple(buckets))
        except (TypeError, ValueError) as exc:
            raise ConfigError("buckets", f"{buckets!r}: {exc}") from exc
        self._calls = calls
        self._max = (
            Gauge(str(n.calls_max), "Longest call in the recent window, by outcome",
                  ("name", "kind"), registry=None, multiprocess_mode="livemax")
            if r4j else None
        )
        # resilience4j labels its not-permitted counter with a constant kind.
        self._rejected_labels: tuple[str, ...] = ("not_permitted",) if r4j else ()
        self._rejected = Counter(
            n.not_permitted, "Calls each breaker refused",
            ("name", "kind") if r4j else ("name",), registry=None,
        )
        self._transitions = Counter(
            n.transitions, "State changes this process's calls made",
            ("name", "from_state", "to_state"), registry=None,
        )
        self._budget_exhausted = Counter(
            n.retry_budget_exhausted, "Retries the fleet's retry budget refused this process",
            ("name",), registry=None,
        )
        # A process's own breaker (min_reporters > 1) apart from the fleet's: its
        # transitions are this process's alone, and would break the fleet counter's sum.
        self._process_transitions = Counter(
            n.process_transitions, "State changes of this process's own breaker",
            ("name", "from_state", "to_state"), registry=None,
        )
        self._process_open = Gauge(
            n.process_open, "1 while this process's own breaker is open or half-open",
            ("name",), registry=None, multiprocess_mode="livesum",
        )
        _register_all(registry, [m for m in (calls, self._max, self._rejected,
                                             self._transitions, self._budget_exhausted,
                                             self._process_transitions, self._process_open)
                                 if m is not None])
        self.registry = registry
        self._lock = threading.Lock()
        self._call_children: dict[tuple[str, str], Callable[[float], None]] = {}
        self._rejected_children: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<PrometheusMetrics naming={self.naming!r}>"

    def on_call(self, record: CallRecord) -> None:
        """Count ``record``: its duration by kind, or a refused call."""
        if record.seconds is None:  # a refused call
            child = self._rejected_children.get(record.breaker)
            if child is None:
                child = self._rejected_child(record.breaker)
            child.inc()
            return
        key = (record.breaker, record.outcome)
        observe = self._call_children.get(key)
        if observe is None:
            observe = self._call_child(key)
        observe(record.seconds)

    def on_transition(self, transition: Transition) -> None:
        """Count a transition this process's script made (one of this process's own
        breaker in the process counter, and in the process-open gauge)."""
        labels = transition_labels(transition, self.naming)
        if transition.scope == "process":
            self._process_transitions.labels(*labels).inc()
            self._process_open.labels(transition.name).set(
                process_open_value(transition.current)
            )
            return
        self._transitions.labels(*labels).inc()

    def on_policy_event(self, breaker: str, event: str) -> None:
        """Count a fleet policy's event: a retry the budget refused."""
        if event == "retry_budget_exhausted":
            self._budget_exhausted.labels(breaker).inc()

    def _rejected_child(self, breaker: str) -> Any:  # noqa: ANN401 (prometheus_client's)
        with self._lock:
            labels = (breaker, *self._rejected_labels)
            child = self._rejected_children[breaker] = self._rejected.labels(*labels)
            return child

    def _call_child(self, key: tuple[str, str]) -> Callable[[float], None]:
        breaker, outcome = key
        kind = call_kind_label(outcome)  # type: ignore[arg-type]
        with self._lock:
            timer = self._calls.labels(breaker, kind)
            observe: Callable[[float], None] = timer.observe
            if self._max is not None:
                window = WindowMax(self._max_window)
                gauge = self._max.labels(breaker, kind)
                if self._multiprocess:
                    # Another process's exporter reads the files: the gauge holds the max
                    # as of this process's latest call (it cannot decay between calls).
                    def observe(seconds: float, timer: Any = timer) -> None:  # noqa: ANN401
                        timer.observe(seconds)
                        gauge.set(window.record(seconds))
                else:
                    gauge.set_function(window.value)  # decays at scrape time

                    def observe(seconds: float, timer: Any = timer) -> None:  # noqa: ANN401
                        timer.observe(seconds)
                        window.record(seconds)
            self._call_children[key] = observe
            return observe


def _register_all(registry: CollectorRegistry, metrics: list[MetricWrapperBase]) -> None:
    """Register every metric, or none.

    Raises:
        ConfigError: one of the names is taken in ``registry``.
    """
    done: list[MetricWrapperBase] = []
    try:
        for metric in metrics:
            registry.register(metric)
            done.append(metric)
    except ValueError as exc:
        for metric in done:
            registry.unregister(metric)
        raise ConfigError(
            "registry",
            f"{exc}; one PrometheusMetrics per registry and naming: share it between stores",
        ) from exc


class FleetCollector:
    """A prometheus_client collector of the fleet gauges: every breaker's state and window
    as read from Redis (see :func:`fleet_collector`)."""

    def __init__(self, snapshots: Callable[[], Iterable[Snapshot]], naming: str) -> None:
        naming = naming_setting(naming)
        self._snapshots = snapshots
        self.naming = naming

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without reading a snapshot (registering costs no Redis call)."""
        return self._families([])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges of the snapshots ``snapshots()`` returns now."""
        return self._families(list(self._snapshots()))

    def _families(self, snapshots: list[Snapshot]) -> Iterator[GaugeMetricFamily]:
        for gauge in fleet_gauges(snapshots, self.naming):
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)
            for labels, value in gauge.samples:
                family.add_metric(labels, value)
            yield family


def fleet_collector(
    snapshots: Callable[[], Iterable[Snapshot]], *, naming: str = "redbreaker"
) -> Collector:
    """The fleet gauges, for the one server that exports them (the dashboard), never for
    each worker: a state gauge per breaker and state (0/1), the failure and slow-call rates,
    the window's calls by outcome (and, with redbreaker naming, its slow calls, the failure
    streak, the retries the retry budget granted in the window and refused in all, and the
    distinct reporters of a quorum).

    Args:
        snapshots: a zero-argument callable returning the :class:`redbreaker.Snapshot` of
            every breaker to export, already read (it is called at each scrape).
        naming: ``"redbreaker"`` or ``"resilience4j"`` (see docs/metrics.md).

    Raises:
        ConfigError: an unknown naming, or ``snapshots`` is not callable.
    """
    checked = naming_setting(naming)
    if not callable(snapshots):
        raise ConfigError("snapshots", f"expected a callable returning snapshots, "
                          f"got {snapshots!r}")
    return FleetCollector(snapshots, checked)
