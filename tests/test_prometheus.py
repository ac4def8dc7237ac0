"""redbreaker.contrib.prometheus, read back the way Prometheus reads it: the text
exposition parsed by prometheus_client's own parser. Per-process metrics in both namings
through both drivers, the resilience4j ``_max`` window, prometheus_client's multiprocess
mode, construction errors, and the fleet gauges from real snapshots on a real redis-server.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import redbreaker
from redbreaker import ConfigError
from redbreaker.contrib.prometheus import PrometheusMetrics, WindowMax, fleet_collector

if TYPE_CHECKING:
    from drivers import Driver


class BoomError(Exception):
    """A dependency's failure."""


def boom() -> None:
    raise BoomError


def ok() -> str:
    return "ok"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, sorted labels) -> value), as Prometheus parses
    the registry's text exposition."""
    text = generate_latest(registry).decode()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def _drive(driver: Driver, metrics: PrometheusMetrics) -> None:
    """2 successes, 3 failures (the 3rd trips), 1 ignored, 2 rejections, then force_close."""
    store = driver.connect("memory://", observers=[metrics])
    breaker = driver.breaker("pay", store=store, failure_threshold=3, ignore_on=KeyError)

    def missing() -> None:
        raise KeyError("x")

    breaker.call(ok)
    breaker.call(ok)
    with pytest.raises(KeyError):
        breaker.call(missing)
    for _ in range(3):
        with pytest.raises(BoomError):
            breaker.call(boom)
    for _ in range(2):
        with pytest.raises(redbreaker.CircuitOpenError):
            breaker.call(ok)
    breaker.force_close()


def test_redbreaker_naming(driver: Driver) -> None:
    registry = CollectorRegistry()
    _drive(driver, PrometheusMetrics(registry))
    types, samples = scrape(registry)

    assert types["redbreaker_calls_seconds"] == "histogram"
    assert types["redbreaker_not_permitted_calls"] == "counter"
    assert types["redbreaker_transitions"] == "counter"
    count = "redbreaker_calls_seconds_count"
    assert value(samples, count, name="pay", kind="successful") == 2
    assert value(samples, count, name="pay", kind="failed") == 3
    assert value(samples, count, name="pay", kind="ignored") == 1
    assert (
        value(samples, "redbreaker_calls_seconds_bucket", name="pay", kind="failed", le="+Inf") == 3
    )
    assert value(samples, "redbreaker_calls_seconds_sum", name="pay", kind="failed") >= 0
    assert value(samples, "redbreaker_not_permitted_calls_total", name="pay") == 2
    transitions = "redbreaker_transitions_total"
    assert value(samples, transitions, name="pay", from_state="closed", to_state="open") == 1
    assert value(samples, transitions, name="pay", from_state="open", to_state="forced_closed") == 1
    assert sum(v for (n, _), v in samples.items() if n == transitions) == 2
    assert not any(n.startswith("resilience4j") for n in types)


def test_resilience4j_naming(driver: Driver) -> None:
    registry = CollectorRegistry()
    _drive(driver, PrometheusMetrics(registry, naming="resilience4j"))
    types, samples = scrape(registry)

    calls = "resilience4j_circuitbreaker_calls_seconds"
    assert types[calls] == "summary"  # Micrometer's timer: _count and _sum
    assert types[f"{calls}_max"] == "gauge"
    assert value(samples, f"{calls}_count", name="pay", kind="successful") == 2
    assert value(samples, f"{calls}_count", name="pay", kind="failed") == 3
    assert value(samples, f"{calls}_count", name="pay", kind="ignored") == 1
    for kind in ("successful", "failed", "ignored"):
        longest = value(samples, f"{calls}_max", name="pay", kind=kind)
        assert 0 < longest <= value(samples, f"{calls}_sum", name="pay", kind=kind)
    assert (
        value(
            samples,
            "resilience4j_circuitbreaker_not_permitted_calls_total",
            name="pay",
            kind="not_permitted",
        )
        == 2
    )
    transitions = "resilience4j_circuitbreaker_transitions_total"
    assert value(samples, transitions, name="pay", from_state="closed", to_state="open") == 1
    # resilience4j has no forced_closed: its DISABLED state is the same thing.
    assert value(samples, transitions, name="pay", from_state="open", to_state="disabled") == 1
    assert not any(n.startswith("redbreaker") for n in types)


def test_the_max_gauge_forgets_after_its_window() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, naming="resilience4j", max_window=0.3)
    store = redbreaker.connect("memory://", observers=[metrics])
    redbreaker.Breaker("pay", store=store).call(ok)
    gauge = (
        "resilience4j_circuitbreaker_calls_seconds_max",
        (("kind", "successful"), ("name", "pay")),
    )
    assert scrape(registry)[1][gauge] > 0
    deadline = time.monotonic() + 10
    while scrape(registry)[1][gauge] != 0:  # decays at scrape time, with no new call
        assert time.monotonic() < deadline, "the _max gauge never decayed"
        time.sleep(0.05)
    store.close()


def test_window_max_keeps_micrometers_rotation() -> None:
    now = [0.0]
    window = WindowMax(120, clock=lambda: now[0])
    assert window.value() == 0
    window.record(2.0)
    window.record(1.0)
    assert window.value() == 2.0
    now[0] = 79.0  # one slot rotated away: the value is in every slot
    assert window.value() == 2.0
    window.record(0.5)
    now[0] = 119.9
    assert window.value() == 2.0
    now[0] = 121.0  # three 40 s slots since 2.0 was recorded: gone; 0.5 (at 79 s) stays
    assert window.value() == 0.5
    now[0] = 1000.0
    assert window.value() == 0


def test_one_metrics_per_registry_and_naming() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    with pytest.raises(ConfigError, match="registry"):
        PrometheusMetrics(registry)
    # Nothing half-registered: the other naming's names are free.
    PrometheusMetrics(registry, naming="resilience4j")
    with pytest.raises(ConfigError, match="registry"):
        PrometheusMetrics(registry, naming="resilience4j")


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"naming": "micrometer"}, "naming"),
        ({"buckets": ("a",)}, "buckets"),
        ({"buckets": (2.0, 1.0)}, "buckets"),
        ({"registry": "default"}, "registry"),
        ({"max_window": 0}, "max_window"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], setting: str) -> None:
    kwargs.setdefault("registry", CollectorRegistry())
    with pytest.raises(ConfigError, match=setting):
        PrometheusMetrics(**kwargs)


def test_fleet_collector_settings() -> None:
    with pytest.raises(ConfigError, match="naming"):
        fleet_collector(list, naming="other")
    with pytest.raises(ConfigError, match="snapshots"):
        fleet_collector([])  # type: ignore[arg-type]


_MULTIPROCESS_WORKER = """
import json, sys
import redbreaker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from redbreaker.contrib.prometheus import PrometheusMetrics, multiprocess_mode

naming = sys.argv[1]
metrics = PrometheusMetrics(CollectorRegistry(), naming=naming)
store = redbreaker.connect("memory://", observers=[metrics])
breaker = redbreaker.Breaker("pay", store=store, failure_threshold=1)
breaker.call(lambda: 1)
try:
    breaker.call(lambda: 1 / 0)
except ZeroDivisionError:
    pass
try:
    breaker.call(lambda: 1)
except redbreaker.CircuitOpenError:
    pass
exported = CollectorRegistry()
MultiProcessCollector(exported)
print(json.dumps({"multiprocess": multiprocess_mode(),
                  "text": generate_latest(exported).decode()}))
"""


@pytest.mark.parametrize("naming", ["redbreaker", "resilience4j"])
def test_prometheus_multiprocess_mode(tmp_path: Any, naming: str) -> None:
    """Under gunicorn's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before
    prometheus_client is imported) the metrics reach the directory's collector."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MULTIPROCESS_WORKER), naming],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["multiprocess"] is True
    samples: Samples = {}
    for family in text_string_to_metric_families(result["text"]):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    if naming == "redbreaker":
        assert value(samples, "redbreaker_calls_seconds_count", name="pay", kind="failed") == 1
        assert value(samples, "redbreaker_not_permitted_calls_total", name="pay") == 1
        assert (
            value(
                samples,
                "redbreaker_transitions_total",
                name="pay",
                from_state="closed",
                to_state="open",
            )
            == 1
        )
    else:
        calls = "resilience4j_circuitbreaker_calls_seconds"
        assert value(samples, f"{calls}_count", name="pay", kind="successful") == 1
        # livemax: the largest of the live processes' latest windowed maxes.
        assert value(samples, f"{calls}_max", name="pay", kind="successful") > 0
        assert (
            value(
                samples,
                "resilience4j_circuitbreaker_not_permitted_calls_total",
                name="pay",
                kind="not_permitted",
            )
            == 1
        )


# -- the fleet gauges, from real snapshots ---------------------------------------------------


def _fleet(redis_url: str) -> tuple[redbreaker.Store, list[redbreaker.Breaker]]:
    store = redbreaker.connect(redis_url)
    mixed = redbreaker.Breaker("mixed", store=store, failure_threshold=100, slow_call_duration=60)
    tripped = redbreaker.Breaker("tripped", store=store, failure_threshold=1)
    disabled = redbreaker.Breaker("disabled", store=store)
    mixed.call(ok)
    mixed.call(ok)
    with pytest.raises(BoomError):
        mixed.call(boom)
    with pytest.raises(BoomError):
        tripped.call(boom)
    disabled.force_close()
    return store, [mixed, tripped, disabled]


def test_fleet_gauges_redbreaker_naming(redis_url: str) -> None:
    store, breakers = _fleet(redis_url)
    reads = []

    def snapshots() -> list[redbreaker.Snapshot]:
        reads.append(1)
        return [b.snapshot() for b in breakers]

    registry = CollectorRegistry()
    registry.register(fleet_collector(snapshots))
    assert reads == []  # registering reads nothing from Redis
    types, samples = scrape(registry)
    store.close()

    for name in (
        "redbreaker_state",
        "redbreaker_failure_rate",
        "redbreaker_slow_call_rate",
        "redbreaker_window_calls",
    ):
        assert types[name] == "gauge"
    states = ("closed", "open", "half_open", "forced_open", "forced_closed", "metrics_only")
    expected = {"mixed": "closed", "tripped": "open", "disabled": "forced_closed"}
    for breaker, current in expected.items():
        for state in states:
            assert value(samples, "redbreaker_state", name=breaker, state=state) == (
                1.0 if state == current else 0.0
            )
    assert value(samples, "redbreaker_failure_rate", name="mixed") == pytest.approx(1 / 3)
    assert value(samples, "redbreaker_slow_call_rate", name="mixed") == 0.0
    assert value(samples, "redbreaker_window_calls", name="mixed", kind="successful") == 2
    assert value(samples, "redbreaker_window_calls", name="mixed", kind="failed") == 1
    assert value(samples, "redbreaker_consecutive_failures", name="mixed") == 1
    # An empty window has no rate: the sample is absent, not 0 and not NaN.
    rates = [(n, dict(labels)["name"]) for n, labels in samples if n.endswith("_rate")]
    assert ("redbreaker_failure_rate", "disabled") not in rates
    assert ("redbreaker_failure_rate", "tripped") not in rates
    assert not any(math.isnan(v) for v in samples.values())


def test_fleet_gauges_resilience4j_naming(redis_url: str) -> None:
    store, breakers = _fleet(redis_url)
    registry = CollectorRegistry()
    registry.register(
        fleet_collector(lambda: [b.snapshot() for b in breakers], naming="resilience4j")
    )
    types, samples = scrape(registry)
    store.close()

    state = "resilience4j_circuitbreaker_state"
    assert types[state] == "gauge"
    assert value(samples, state, name="disabled", state="disabled") == 1
    assert value(samples, state, name="tripped", state="open") == 1
    assert value(samples, state, name="mixed", state="closed") == 1
    assert not any(dict(labels).get("state") == "forced_closed" for _, labels in samples)
    rate = "resilience4j_circuitbreaker_failure_rate"
    assert value(samples, rate, name="mixed") == pytest.approx(100 / 3)  # percent
    assert value(samples, rate, name="disabled") == -1  # not computable yet
    assert value(samples, "resilience4j_circuitbreaker_slow_call_rate", name="mixed") == 0
    assert value(samples, "resilience4j_circuitbreaker_slow_call_rate", name="tripped") == -1
    assert (
        value(samples, "resilience4j_circuitbreaker_buffered_calls", name="mixed", kind="failed")
        == 1
    )
    assert not any(n.startswith("redbreaker") for n in types)


# -- the fleet policies (issue 14) ----------------------------------------------------------


def _spend_the_budget(driver: Driver, store: Any) -> Any:
    """Three guarded calls of 3 attempts against a budget of 3 retries per window (the
    floor alone: 0.05/s over 60 s): 3 retries granted, 2 refused."""
    breaker = driver.breaker(
        "budget", store=store, retry_budget=0.0, retry_budget_floor=0.05, failure_threshold=100
    )
    guard = breaker.guard(retry_on=BoomError, max_attempts=3, backoff_base=0.001)
    for _ in range(3):
        with pytest.raises(BoomError):
            guard.call(boom)
    return breaker


def _trip_own(driver: Driver, store: Any) -> Any:
    """A quorum of 2 with this process alone failing: its own breaker trips and rejects
    this process's calls; the fleet's never moves."""
    breaker = driver.breaker(
        "quorum", store=store, min_reporters=2, failure_threshold=2, recovery_timeout=5
    )
    for _ in range(2):
        with pytest.raises(BoomError):
            breaker.call(boom)
    with pytest.raises(redbreaker.CircuitOpenError) as rejected:
        breaker.call(ok)
    assert rejected.value.scope == "process"
    return breaker


@pytest.mark.parametrize("naming", ["redbreaker", "resilience4j"])
def test_the_fleet_policies_per_process(
    driver: Driver, clock: redbreaker.ManualClock, naming: str
) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, naming=naming)
    store = driver.connect("memory://", observers=[metrics], clock=clock)
    _spend_the_budget(driver, store)
    breaker = _trip_own(driver, store)
    prefix = "redbreaker" if naming == "redbreaker" else "resilience4j_circuitbreaker"
    types, samples = scrape(registry)
    assert types[f"{prefix}_retry_budget_exhausted"] == "counter"
    assert types[f"{prefix}_process_transitions"] == "counter"
    assert types[f"{prefix}_process_open"] == "gauge"
    assert value(samples, f"{prefix}_retry_budget_exhausted_total", name="budget") == 2
    moves = f"{prefix}_process_transitions_total"
    assert value(samples, moves, name="quorum", from_state="closed", to_state="open") == 1
    assert value(samples, f"{prefix}_process_open", name="quorum") == 1
    # The fleet's breaker stayed closed: nothing in the fleet counter, for either breaker.
    assert not [k for k in samples if k[0] == f"{prefix}_transitions_total"]

    clock.advance(6)
    assert breaker.call(ok) == "ok"  # a probe of the own breaker: open -> half_open -> closed
    _, samples = scrape(registry)
    assert value(samples, moves, name="quorum", from_state="open", to_state="half_open") == 1
    assert value(samples, moves, name="quorum", from_state="half_open", to_state="closed") == 1
    assert value(samples, f"{prefix}_process_open", name="quorum") == 0
    assert not [k for k in samples if k[0] == f"{prefix}_transitions_total"]


def test_process_transitions_never_reach_the_fleet_counter() -> None:
    """Fed directly: scope decides the counter, whatever the states."""
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    closed, open_ = redbreaker.State.CLOSED, redbreaker.State.OPEN
    for scope in ("process", "process", "fleet"):
        metrics.on_transition(
            redbreaker.Transition("pay", closed, open_, "consecutive_failures", 2, 0, scope)
        )
    metrics.on_policy_event("pay", "some_future_event")  # unknown events are not counted
    _, samples = scrape(registry)
    labels = {"name": "pay", "from_state": "closed", "to_state": "open"}
    assert value(samples, "redbreaker_transitions_total", **labels) == 1
    assert value(samples, "redbreaker_process_transitions_total", **labels) == 2
    assert not [k for k in samples if k[0] == "redbreaker_retry_budget_exhausted_total"]


_QUORUM_WORKER = """
import json, sys
import redbreaker
from prometheus_client import CollectorRegistry
from redbreaker.contrib.prometheus import PrometheusMetrics

url, prefix = sys.argv[1], sys.argv[2]
store = redbreaker.connect(url, prefix=prefix,
                           observers=[PrometheusMetrics(CollectorRegistry())])
breaker = redbreaker.Breaker("pay", store=store, min_reporters=2, failure_threshold=2)
seen = []
for _ in range(2):
    try:
        breaker.call(lambda: 1 / 0)
    except ZeroDivisionError:
        seen.append("failed")
    except redbreaker.CircuitOpenError as exc:
        seen.append("rejected:" + exc.scope)
store.close()
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_a_quorum_fleet_sums_its_transitions_exactly(tmp_path: Any, redis_url: str) -> None:
    """Two processes under prometheus_client's multiprocess mode and a quorum of 2: the
    first trips only its own breaker; the second's first failure makes the quorum and
    trips the fleet's. Summed over both, the fleet counter holds that one transition (as
    Redis counts it), the own breaker's is in the process counter alone."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    prefix = f"quorum-{os.getpid()}"
    seen = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_QUORUM_WORKER), redis_url, prefix],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        seen.append(json.loads(done.stdout))
    assert seen == [["failed", "failed"], ["failed", "rejected:fleet"]]

    from prometheus_client.multiprocess import MultiProcessCollector

    exported = CollectorRegistry()
    MultiProcessCollector(exported, path=str(tmp_path))
    _, samples = scrape(exported)
    opened = {"name": "pay", "from_state": "closed", "to_state": "open"}
    store = redbreaker.connect(redis_url, prefix=prefix)
    snapshot = redbreaker.Breaker("pay", store=store).snapshot()
    store.close()
    assert snapshot.open_count == 1
    assert [k for k in samples if k[0] == "redbreaker_transitions_total"] == [
        ("redbreaker_transitions_total", tuple(sorted(opened.items())))
    ]
    assert value(samples, "redbreaker_transitions_total", **opened) == snapshot.open_count
    assert value(samples, "redbreaker_process_transitions_total", **opened) == 1
    assert value(samples, "redbreaker_process_open", name="pay") == 1  # livesum: the first


def test_fleet_policy_gauges(redis_url: str) -> None:
    """window_retries, reporters and the refused retries, from real snapshots."""
    store = redbreaker.connect(redis_url, prefix=f"gauges-{os.getpid()}")
    budget = redbreaker.Breaker(
        "budget", store=store, retry_budget=0.0, retry_budget_floor=0.05, failure_threshold=100
    )
    guard = budget.guard(retry_on=BoomError, max_attempts=3, backoff_base=0.001)
    for _ in range(3):
        with pytest.raises(BoomError):
            guard.call(boom)
    quorum = redbreaker.Breaker("quorum", store=store, min_reporters=3, failure_threshold=1)
    with pytest.raises(BoomError):
        quorum.call(boom)
    breakers = [budget, quorum]
    registry = CollectorRegistry()
    registry.register(fleet_collector(lambda: [b.snapshot() for b in breakers]))
    r4j = CollectorRegistry()
    r4j.register(fleet_collector(lambda: [b.snapshot() for b in breakers], naming="resilience4j"))
    types, samples = scrape(registry)
    r4j_types, _ = scrape(r4j)
    store.close()

    for name in ("window_retries", "reporters", "fleet_retry_budget_exhausted"):
        assert types[f"redbreaker_{name}"] == "gauge"
    assert value(samples, "redbreaker_window_retries", name="budget") == 3
    assert value(samples, "redbreaker_fleet_retry_budget_exhausted", name="budget") == 2
    assert value(samples, "redbreaker_reporters", name="quorum") == 1
    assert value(samples, "redbreaker_reporters", name="budget") == 0
    assert value(samples, "redbreaker_window_retries", name="quorum") == 0
    # resilience4j has nothing like them: that naming leaves them out, as the slow calls.
    assert not any("retr" in n or "reporters" in n for n in r4j_types)


def test_both_exporters_share_one_registry() -> None:
    """The per-process counter and the fleet gauge of refused retries have distinct
    names: a process may register both in one registry."""
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    registry.register(fleet_collector(list))
    types, _ = scrape(registry)
    assert types["redbreaker_retry_budget_exhausted"] == "counter"
    assert types["redbreaker_fleet_retry_budget_exhausted"] == "gauge"
