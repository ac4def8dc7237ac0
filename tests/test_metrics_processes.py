"""Per-process transition counters add up to the fleet's transitions exactly: each
transition is made by one process's script, so summing redbreaker_transitions_total over
the processes counts it once. Three spawned processes, each with its own PrometheusMetrics,
drive one shared breaker on a real redis-server through a failing spell (trips, failed
probes, re-opens) and a recovery; the parent watches the transition feed meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import redbreaker
from redbreaker.contrib.prometheus import PrometheusMetrics

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

PREFIX = "metrics-fleet"
NAME = "shared"
WORKERS = 3
FAILING_FOR = 0.8  # seconds the dependency fails, from the fleet's start
RUN_FOR = 1.6


class DependencyError(Exception):
    """The dependency's failure."""


def worker(index: int, url: str, barrier: Barrier, results: Queue[Any]) -> None:
    """One process: its own store, metrics and breaker; the text its registry exports."""
    try:
        registry = CollectorRegistry()
        store = redbreaker.connect(url, prefix=PREFIX, observers=[PrometheusMetrics(registry)])
        breaker = redbreaker.Breaker(NAME, store=store, failure_threshold=3, recovery_timeout=0.05)
        barrier.wait(60)
        started = time.monotonic()

        def dependency() -> None:
            if time.monotonic() - started < FAILING_FOR:
                raise DependencyError

        while time.monotonic() - started < RUN_FOR:
            with contextlib.suppress(DependencyError, redbreaker.CircuitOpenError):
                breaker.call(dependency)
            time.sleep(0.002)
        results.put((index, "ok", generate_latest(registry).decode()))
        store.close()
    except BaseException:  # reported to the parent, which fails the test
        results.put((index, "error", traceback.format_exc()))


def _transitions(text: str) -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "redbreaker_transitions_total":
                labels = sample.labels
                assert labels["name"] == NAME
                counts[(labels["from_state"], labels["to_state"])] += int(sample.value)
    return counts


@pytest.mark.slow
def test_transitions_summed_over_processes_equal_the_feed(redis_url: str) -> None:
    watcher = redbreaker.connect(redis_url, prefix=PREFIX)
    events = watcher.transitions()  # subscribed when this returns: nothing is missed
    heard: list[redbreaker.Transition] = []
    listening = threading.Thread(target=lambda: heard.extend(events), daemon=True)
    listening.start()

    ctx = multiprocessing.get_context("spawn")
    results: Queue[Any] = ctx.Queue()
    barrier = ctx.Barrier(WORKERS)
    procs = [
        ctx.Process(target=worker, args=(i, redis_url, barrier, results), daemon=True)
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    try:
        texts = {}
        while len(texts) < WORKERS:
            try:
                index, kind, payload = results.get(timeout=120)
            except queue.Empty:
                raise AssertionError("a worker gave no result in time") from None
            assert kind == "ok", f"worker {index} failed:\n{payload}"
            texts[index] = payload
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    last = redbreaker.Breaker(NAME, store=watcher).snapshot().generation
    deadline = time.monotonic() + 10
    while not any(t.generation == last for t in list(heard)):
        assert time.monotonic() < deadline, "the feed never carried the last transition"
        time.sleep(0.01)
    watcher.close()
    listening.join(5)

    per_process = [_transitions(texts[i]) for i in range(WORKERS)]
    summed = sum(per_process, collections.Counter())
    on_the_feed = collections.Counter(
        (t.previous.value if t.previous else "unreadable", t.current.value)
        for t in heard
        if t.name == NAME
    )
    assert summed == on_the_feed
    # The spell really tripped, probed and recovered, more than once between processes.
    assert on_the_feed[("closed", "open")] >= 1
    assert on_the_feed[("open", "half_open")] >= 2
    assert on_the_feed[("half_open", "closed")] == 1
    assert sum(1 for counts in per_process if counts) >= 2, per_process
