"""Redis round trips and commands per guarded call, on each path.

Round trips are counted in the client: every ``send_packed_command`` of its connections
(one write, i.e. one request/reply exchange; a pipeline counts once). Commands come from
``INFO commandstats`` deltas on the server, which also counts the commands a Lua script
runs inside Redis (those cost server CPU, not round trips).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import _variants
import redis

import redbreaker

if TYPE_CHECKING:
    from collections.abc import Callable

# The admin connection's own INFO, and redis-py's connection handshake.
_HELPER_COMMANDS = frozenset({"info", "hello", "client|setinfo", "auth", "select"})

PATHS = (
    ("success", "success, closed (no failure streak)"),
    ("success_after_failure", "success ending a failure streak"),
    ("failure", "failure, below the threshold"),
    ("trip", "failure that trips (the 5th)"),
    ("rejected_first", "rejected while open: first call (2 ms after the trip)"),
    ("rejected_later", "rejected while open: later calls"),
    ("probe_success", "half-open probe that succeeds (closes)"),
    ("probe_failure", "half-open probe that fails (re-opens)"),
)
# The documented strict-mode cost (src/redbreaker/_breaker.py), shown beside the measure.
STRICT_EXPECTED = {
    "success": 1, "success_after_failure": 2, "failure": 2, "trip": 2,
    "rejected_first": 1, "rejected_later": 0, "probe_success": 2, "probe_failure": 2,
}  # fmt: skip


class CountingConnection(redis.Connection):
    """A connection that counts its writes (class-wide: one benchmark process)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@dataclass
class Cost:
    round_trips: float
    commands: float
    detail: dict[str, float] = field(default_factory=dict)
    state_after: str = ""


def _commandstats(admin: redis.Redis) -> dict[str, int]:
    raw = admin.info("commandstats")
    stats = {}
    for key, value in raw.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            stats[key[len("cmdstat_") :].lower()] = int(value["calls"])
    return stats


class _Meter:
    def __init__(self, admin: redis.Redis) -> None:
        self.admin = admin

    def measure(self, action: Callable[[], object], times: int = 1) -> Cost:
        before = _commandstats(self.admin)
        sent = CountingConnection.sent
        for _ in range(times):
            action()
        sent = CountingConnection.sent - sent
        after = _commandstats(self.admin)
        diff = {
            k: (v - before.get(k, 0)) / times
            for k, v in sorted(after.items())
            if k not in _HELPER_COMMANDS and v != before.get(k, 0)
        }
        return Cost(sent / times, sum(diff.values()), diff)


def _catch(fn: Callable[[], object], *types: type[BaseException]) -> Callable[[], None]:
    def call() -> None:
        with contextlib.suppress(*types):
            fn()

    return call


def _walk_paths(  # noqa: PLR0917 (the same walk for two libraries)
    meter: _Meter,
    state_of: Callable[[], str],
    ok: Callable[[], object],
    bad: Callable[[], object],
    rejected: Callable[[], object],
    pause: float,
    sleep: Callable[[float], object] = time.sleep,
) -> dict[str, Cost]:
    """Every path, in one order, through one breaker that fails after 5 failures and
    admits a probe ``pause`` seconds after it opened (waited by ``sleep``: the asyncio
    walks keep their event loop running meanwhile)."""
    costs: dict[str, Cost] = {}

    def path(name: str, action: Callable[[], object], times: int = 1) -> None:
        cost = meter.measure(action, times)
        cost.state_after = state_of()
        costs[name] = cost

    ok()
    path("success", ok, 200)
    path("failure", bad, 1)
    path("success_after_failure", ok)
    for _ in range(3):
        bad()
    path("failure", bad, 1)  # the 4th in a row: still below the threshold
    path("trip", bad)
    # A cached breaker reads the feed at most once per ms: a call within that ms of the
    # trip asks Redis, one after it rejects from the trip's event. 2 ms makes the path the
    # same on every run (and for either driver).
    sleep(0.002)
    path("rejected_first", rejected)
    path("rejected_later", rejected, 50)
    sleep(pause)
    path("probe_success", ok)
    for _ in range(5):
        bad()
    sleep(pause)
    path("probe_failure", bad)
    return costs


def redbreaker_paths(
    admin: redis.Redis, url: str, prefix: str, mode: str, *, recovery: float
) -> dict[str, Cost]:
    """Every path of a breaker in ``mode`` through a counting client."""
    client = _variants.raw_client(url, connection_class=CountingConnection)
    store = redbreaker.connect(client, prefix=prefix)
    try:
        # Load the code first: a first call answered "Function not found" (or NOSCRIPT) is not
        # the steady state.
        warm = _variants.make_breaker(store, f"warm-{mode}", mode)
        warm.call(_variants.noop)
        _catch(lambda: warm.call(_variants.fail), _variants.DependencyError)()
        warm.snapshot()
        warm.reset()
        _variants.close_breaker(warm)

        b = _variants.make_breaker(
            store, f"paths-{mode}", mode, failure_threshold=5, recovery_timeout=recovery
        )
        ok = lambda: b.call(_variants.noop)  # noqa: E731
        bad = _catch(lambda: b.call(_variants.fail), _variants.DependencyError)
        rejected = _catch(ok, redbreaker.CircuitOpenError)
        costs = _walk_paths(
            _Meter(admin), lambda: b.snapshot().state.value, ok, bad, rejected, recovery + 0.05
        )
        _variants.close_breaker(b)
        return costs
    finally:
        store.close()


def pybreaker_paths(admin: redis.Redis, url: str, namespace: str) -> dict[str, Cost]:
    """The same paths through pybreaker with CircuitRedisStorage."""
    pybreaker = _variants.pybreaker
    assert pybreaker is not None
    client = _variants.raw_client(url, connection_class=CountingConnection, decode_responses=False)
    try:
        # pybreaker keeps opened_at in whole seconds, so an open lasts between
        # reset_timeout - 1 and reset_timeout seconds.
        reset_timeout = 2.0
        b = pybreaker.CircuitBreaker(
            fail_max=5,
            reset_timeout=reset_timeout,
            state_storage=_variants.pybreaker_storage(client, namespace),
        )
        broken = pybreaker.CircuitBreakerError
        ok = lambda: b.call(_variants.noop)  # noqa: E731
        bad = _catch(lambda: b.call(_variants.fail), _variants.DependencyError, broken)
        rejected = _catch(ok, broken)
        return _walk_paths(
            _Meter(admin), lambda: str(b.current_state), ok, bad, rejected, reset_timeout + 0.1
        )
    finally:
        client.close()
