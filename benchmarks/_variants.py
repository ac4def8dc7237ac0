"""What is measured: every variant is a zero-argument callable making one call.

Each process (the parent for latency, every worker for throughput) builds its own set with
:func:`build`. Variants built with the same ``prefix`` share their breakers in Redis, the
way a fleet shares one breaker per dependency.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redbreaker

if TYPE_CHECKING:
    from collections.abc import Callable

try:
    import pybreaker
except ImportError:  # the bench extra is not installed: those rows say so
    pybreaker = None

# The reference script for "one EVALSHA round trip": read a field, bump a counter. It is as
# small as a script that decides anything can be, so it prices the round trip itself.
REFERENCE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
return redis.call('HINCRBY', KEYS[1], 'calls', 1)
"""

# Clients built the way redbreaker.connect() builds its own: same timeouts, no retries.
STORE_TIMEOUT = 5.0  # generous: a busy 2-core box must not look like a Redis outage
CACHED_NA = "n/a (cached mode not available)"
PYBREAKER_NA = "n/a (pybreaker not installed: pip install -e '.[bench]')"
PROMETHEUS_NA = "n/a (prometheus-client not installed: pip install -e '.[prometheus]')"


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    needs: str = ""  # "", "cached" or "pybreaker"
    throughput: bool = True  # also measured from 1..8 processes


SPECS = (
    Spec("bare", "bare call (no-op)"),
    Spec("ping", "redis-py PING"),
    Spec("evalsha", "redis-py EVALSHA (the reference)"),
    Spec("evalsha_held", "EVALSHA on a held connection (send + read, no pool)"),
    Spec("strict", "redbreaker strict, success"),
    Spec("strict_fail", "redbreaker strict, failure", throughput=False),
    Spec("cached", "redbreaker cached, success", needs="cached"),
    Spec("cached_fail", "redbreaker cached, failure", needs="cached", throughput=False),
    Spec("strict_prom", "redbreaker strict, success, PrometheusMetrics observing",
         needs="prometheus", throughput=False),
    Spec("cached_prom", "redbreaker cached, success, PrometheusMetrics observing",
         needs="cached", throughput=False),
    Spec("strict_quorum", "redbreaker strict, success, min_reporters=3", throughput=False),
    Spec("cached_quorum", "redbreaker cached, success, min_reporters=3", needs="cached",
         throughput=False),
    Spec("guard", "guard: cached breaker + retry + thread timeout", needs="cached"),
    Spec("guard_strict", "guard: strict breaker + retry + thread timeout"),
    Spec("guard_budget", "guard: strict breaker + retry_budget=0.2 + retry + thread timeout",
         throughput=False),
    Spec("tpe", "ThreadPoolExecutor submit + result"),
    Spec("pyb_redis", "pybreaker + CircuitRedisStorage", needs="pybreaker"),
    Spec("pyb_mem", "pybreaker in memory", needs="pybreaker"),
)
LABELS = {s.key: s.label for s in SPECS}


class DependencyError(Exception):
    """What a failing dependency raises."""


def noop() -> None:
    return None


def fail() -> None:
    raise DependencyError


def raw_client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client configured like the one redbreaker.connect(url) builds."""
    options: dict[str, Any] = {
        "socket_timeout": STORE_TIMEOUT,
        "socket_connect_timeout": STORE_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


def open_store(url: str, prefix: str, **kwargs: Any) -> redbreaker.Store:
    return redbreaker.connect(url, prefix=prefix, store_timeout=STORE_TIMEOUT, **kwargs)


def make_breaker(
    store: redbreaker.Store, name: str, mode: str, **settings: Any
) -> redbreaker.Breaker:
    """A breaker in ``mode`` ("strict" or "cached").

    Raises:
        redbreaker.ConfigError: cached mode is not available in this redbreaker.
    """
    if mode == "cached":
        settings["consistency"] = "cached"
    return redbreaker.Breaker(name, store=store, **settings)


def cached_mode_available(store: redbreaker.Store) -> bool:
    """Does this redbreaker accept ``consistency="cached"``? (No I/O: construction only.)"""
    try:
        breaker = make_breaker(store, "bench-probe-cached-mode", "cached")
    except redbreaker.ConfigError:
        return False
    close_breaker(breaker)
    return True


def close_breaker(breaker: object) -> None:
    close = getattr(breaker, "close", None)
    if callable(close):
        close()


def pybreaker_storage(client: redis.Redis, namespace: str) -> Any:
    assert pybreaker is not None
    return pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=namespace)


@dataclass
class Built:
    """The callables of one process, and what must be closed after."""

    fns: dict[str, Callable[[], object]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    closers: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def _swallow(fn: Callable[[], object], exc_type: type[BaseException]) -> Callable[[], object]:
    def call() -> object:
        try:
            return fn()
        except exc_type:
            return None

    return call


def _observed(built: Built, url: str, prefix: str) -> None:
    """The strict and cached successes again, on a store with PrometheusMetrics observing
    (a registry of its own): what the observer costs per call."""
    try:
        from prometheus_client import CollectorRegistry

        from redbreaker.contrib.prometheus import PrometheusMetrics
    except ImportError:
        built.missing["strict_prom"] = built.missing["cached_prom"] = PROMETHEUS_NA
        return
    store = open_store(url, prefix, observers=[PrometheusMetrics(CollectorRegistry())])
    built.closers.append(store.close)
    strict = make_breaker(store, "strict-prom", "strict")
    built.fns["strict_prom"] = lambda: strict.call(noop)
    if not cached_mode_available(store):
        built.missing["cached_prom"] = CACHED_NA
        return
    cached = make_breaker(store, "cached-prom", "cached")
    built.closers.append(lambda: close_breaker(cached))
    built.fns["cached_prom"] = lambda: cached.call(noop)


def build(url: str, prefix: str) -> Built:
    """Every variant of :data:`SPECS` that this install can run."""
    built = Built()
    client = raw_client(url)
    built.closers.append(client.close)
    script = client.register_script(REFERENCE_LUA)
    ref_key = f"{prefix}:reference"
    built.fns["bare"] = noop
    built.fns["ping"] = client.ping
    built.fns["evalsha"] = lambda: script(keys=[ref_key])
    # The same script with none of redis-py's per-call machinery: one connection kept out of
    # the pool, one write and one read, as redbreaker's direct path sends its FCALL.
    client.script_load(REFERENCE_LUA)
    held = client.connection_pool.get_connection()
    built.closers.append(lambda: client.connection_pool.release(held))

    def evalsha_held() -> object:
        held.send_command("EVALSHA", script.sha, 1, ref_key)
        return held.read_response()

    built.fns["evalsha_held"] = evalsha_held

    store = open_store(url, prefix)
    built.closers.append(store.close)
    strict = make_breaker(store, "strict", "strict")
    # A failure path that never trips: the threshold is out of reach, no rate rule.
    strict_fail = make_breaker(store, "strict-fail", "strict", failure_threshold=10**12)
    built.fns["strict"] = lambda: strict.call(noop)
    built.fns["strict_fail"] = _swallow(lambda: strict_fail.call(fail), DependencyError)

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    built.closers.append(executor.shutdown)
    built.fns["tpe"] = lambda: executor.submit(noop).result()
    guard_strict = strict.guard(attempt_timeout=1.0, retry_on=(ConnectionError,))
    built.fns["guard_strict"] = lambda: guard_strict.call(noop)
    # The fleet policies' success paths: no round trip more, only local work.
    quorum = make_breaker(store, "strict-quorum", "strict", min_reporters=3)
    built.fns["strict_quorum"] = lambda: quorum.call(noop)
    budgeted = make_breaker(store, "strict-budget", "strict", retry_budget=0.2)
    guard_budget = budgeted.guard(attempt_timeout=1.0, retry_on=(ConnectionError,))
    built.fns["guard_budget"] = lambda: guard_budget.call(noop)

    if cached_mode_available(store):
        cached = make_breaker(store, "cached", "cached")
        cached_fail = make_breaker(store, "cached-fail", "cached", failure_threshold=10**12)
        built.closers += [lambda: close_breaker(cached), lambda: close_breaker(cached_fail)]
        guard = cached.guard(attempt_timeout=1.0, retry_on=(ConnectionError,))
        built.fns["cached"] = lambda: cached.call(noop)
        built.fns["cached_fail"] = _swallow(lambda: cached_fail.call(fail), DependencyError)
        built.fns["guard"] = lambda: guard.call(noop)
        cached_quorum = make_breaker(store, "cached-quorum", "cached", min_reporters=3)
        built.closers.append(lambda: close_breaker(cached_quorum))
        built.fns["cached_quorum"] = lambda: cached_quorum.call(noop)
    else:
        for key in ("cached", "cached_fail", "guard", "cached_quorum"):
            built.missing[key] = CACHED_NA

    _observed(built, url, prefix)

    if pybreaker is not None:
        # pybreaker's Redis storage decodes bytes itself: it needs decode_responses off.
        pyb_client = raw_client(url, decode_responses=False)
        built.closers.append(pyb_client.close)
        pyb_redis = pybreaker.CircuitBreaker(
            fail_max=5,
            reset_timeout=30,
            state_storage=pybreaker_storage(pyb_client, f"{prefix}-pybreaker"),
        )
        pyb_mem = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
        built.fns["pyb_redis"] = lambda: pyb_redis.call(noop)
        built.fns["pyb_mem"] = lambda: pyb_mem.call(noop)
    else:
        for key in ("pyb_redis", "pyb_mem"):
            built.missing[key] = PYBREAKER_NA

    built.fns = {s.key: built.fns[s.key] for s in SPECS if s.key in built.fns}
    return built
