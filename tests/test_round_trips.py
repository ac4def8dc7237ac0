"""Exactly how many commands each path sends to a real redis-server.

Two independent counts per path: the commands the redis-py client sent (a client subclass
records each ``execute_command``), and the server's ``INFO commandstats`` after
``CONFIG RESETSTAT``. The server also counts the commands a script runs inside itself
(``hmget``, ``hset``, ``pexpire``, ...): those are not round trips. A round trip is an
``fcall`` (or a ``function|load`` after "Function not found"; ``evalsha`` and
``script|load`` where Functions are not used), and the two counts must agree.

Run with ``-rP`` (or ``-s``) to see the per-path table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.crc import key_slot

import redbreaker
from redbreaker import Breaker, CircuitOpenError, ManualClock, State

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from redis_servers import RedisServer

LUA = Path(__file__).resolve().parents[1] / "lua"
# Every command the scripts can run inside Redis, read from the scripts themselves.
SCRIPT_COMMANDS = frozenset(
    m.lower()
    for path in LUA.glob("*.lua")
    for m in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", path.read_text(encoding="utf-8"))
)
ROUND_TRIP_COMMANDS = ("fcall", "function|load", "evalsha", "script|load")


class CountingRedis(redis.Redis):
    """A redis-py client that remembers the name of every command it sends."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.__dict__.setdefault("sent", []).append(str(args[0]).upper())
        return super().execute_command(*args, **options)


@dataclass
class Measured:
    """What one path cost."""

    client: list[str]  # commands the client sent, in order
    server: dict[str, int]  # INFO commandstats (helper commands left out)

    @property
    def round_trips(self) -> int:
        return sum(self.server.get(c, 0) for c in ROUND_TRIP_COMMANDS)

    @property
    def inner(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.server.items()) if k not in ROUND_TRIP_COMMANDS}


class Harness:
    """A store on the session redis-server through a CountingRedis, with a test clock."""

    def __init__(self, server: RedisServer, url: str) -> None:
        self.server = server
        self.clock = ManualClock()
        self.client = CountingRedis.from_url(url)
        self.client.sent = []
        self.store = redbreaker.connect(self.client, prefix="rt", clock=self.clock)

    def warm_up(self) -> None:
        """Load all four scripts (acquire, record, inspect, control) into the server."""
        warm = Breaker("warm-up", store=self.store)
        warm.call(lambda: None)
        with pytest.raises(ZeroDivisionError):
            warm.call(lambda: 1 / 0)
        warm.snapshot()
        warm.reset()

    def measure(self, action: Callable[[], object]) -> Measured:
        self.server.reset_stats()
        self.client.sent = []
        action()
        sent = list(self.client.sent)
        return Measured(sent, self.server.commandstats())

    def check(self, measured: Measured, round_trips: int) -> None:
        """The client's and the server's counts agree, and nothing unexpected ran."""
        assert measured.round_trips == round_trips, measured
        assert len(measured.client) == round_trips, measured
        assert measured.client.count("FCALL") == measured.server.get("fcall", 0)
        assert measured.client.count("FUNCTION LOAD") == measured.server.get("function|load", 0)
        assert measured.client.count("EVALSHA") == measured.server.get("evalsha", 0)
        assert measured.client.count("SCRIPT LOAD") == measured.server.get("script|load", 0)
        unexpected = set(measured.inner) - SCRIPT_COMMANDS
        assert not unexpected, f"commands no script runs: {unexpected} in {measured}"


@pytest.fixture
def harness(redis_server: RedisServer, redis_url: str) -> Iterator[Harness]:
    """A warmed-up counting store on an empty session redis-server."""
    h = Harness(redis_server, redis_url)
    h.warm_up()
    yield h
    h.store.close()


class Cancelled(BaseException):
    """Stands in for KeyboardInterrupt / asyncio.CancelledError."""


def _ok() -> str:
    return "ok"


def _fail() -> None:
    raise ZeroDivisionError


def _call_expect(breaker: Breaker, fn: Callable[[], object], exc: type[BaseException]) -> None:
    with pytest.raises(exc):
        breaker.call(fn)


def _cancel() -> None:
    raise Cancelled


@dataclass
class Scenario:
    """One path: how to get there (not counted), what to do (counted), and its cost."""

    name: str
    settings: dict[str, Any]
    prepare: Callable[[Breaker, ManualClock], None]
    act: Callable[[Breaker, ManualClock], None]
    round_trips: int


def _nothing(breaker: Breaker, clock: ManualClock) -> None:
    breaker.call(_ok)  # the breaker exists (creation writes more fields) and is warm


def _fail_once(breaker: Breaker, clock: ManualClock) -> None:
    breaker.call(_ok)
    _call_expect(breaker, _fail, ZeroDivisionError)


def _open(breaker: Breaker, clock: ManualClock) -> None:
    breaker.call(_ok)
    _call_expect(breaker, _fail, ZeroDivisionError)  # failure_threshold=1: now open
    assert breaker.state is State.OPEN


def _open_and_rejected_once(breaker: Breaker, clock: ManualClock) -> None:
    _open(breaker, clock)
    _call_expect(breaker, _ok, CircuitOpenError)


def _open_and_due(breaker: Breaker, clock: ManualClock) -> None:
    _open(breaker, clock)
    clock.advance(5)


def _slow_ok(clock: ManualClock) -> Callable[[], str]:
    def run() -> str:
        clock.advance(2)
        return "ok"

    return run


def _fifty_rejections(breaker: Breaker, clock: ManualClock) -> None:
    for _ in range(50):
        _call_expect(breaker, _ok, CircuitOpenError)
        clock.advance(0.01)  # 0.5 s pass: within max_staleness (1 s), still cached


TRIP = {"failure_threshold": 1, "recovery_timeout": 5}
PATHS = [
    Scenario("closed success, streak 0", {}, _nothing, lambda b, c: b.call(_ok) and None, 1),
    Scenario(
        "closed failure", {}, _nothing,
        lambda b, c: _call_expect(b, _fail, ZeroDivisionError), 2,
    ),
    Scenario(
        "closed success after a failure", {}, _fail_once, lambda b, c: b.call(_ok) and None, 2
    ),
    Scenario(
        "closed slow success", {"slow_call_duration": 1}, _nothing,
        lambda b, c: b.call(_slow_ok(c)) and None, 2,
    ),
    Scenario(
        "closed ignored exception", {"ignore_on": ZeroDivisionError}, _nothing,
        lambda b, c: _call_expect(b, _fail, ZeroDivisionError), 2,
    ),
    Scenario(
        "closed BaseException", {}, _nothing, lambda b, c: _call_expect(b, _cancel, Cancelled), 1
    ),
    Scenario(
        "open, first rejection", TRIP, _open,
        lambda b, c: _call_expect(b, _ok, CircuitOpenError), 1,
    ),
    Scenario("open, next 50 rejections", TRIP, _open_and_rejected_once, _fifty_rejections, 0),
    Scenario("half-open probe success", TRIP, _open_and_due, lambda b, c: b.call(_ok) and None, 2),
    Scenario(
        "half-open probe failure", TRIP, _open_and_due,
        lambda b, c: _call_expect(b, _fail, ZeroDivisionError), 2,
    ),
    Scenario(
        "half-open probe BaseException", TRIP, _open_and_due,
        lambda b, c: _call_expect(b, _cancel, Cancelled), 2,
    ),
    Scenario("snapshot()", {}, _nothing, lambda b, c: b.snapshot() and None, 1),
    Scenario(".state", {}, _nothing, lambda b, c: b.state and None, 1),
    Scenario("force_open()", {}, _nothing, lambda b, c: b.force_open() and None, 1),
    Scenario("reset()", TRIP, _open, lambda b, c: b.reset() and None, 1),
]  # fmt: skip


def _run_path(harness: Harness, path: Scenario) -> Measured:
    breaker = Breaker("svc", store=harness.store, **path.settings)
    path.prepare(breaker, harness.clock)
    measured = harness.measure(lambda: path.act(breaker, harness.clock))
    harness.check(measured, path.round_trips)
    return measured


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_round_trips_per_path(harness: Harness, path: Scenario) -> None:
    """Each path costs exactly its documented number of client round trips."""
    measured = _run_path(harness, path)
    assert measured.client == ["FCALL"] * path.round_trips
    assert "function|load" not in measured.server  # the library was loaded


def test_closed_success_sends_nothing_but_one_fcall(harness: Harness) -> None:
    """A closed success with no streak: one FCALL, and inside it no PUBLISH, no DEL."""
    breaker = Breaker("svc", store=harness.store)
    breaker.call(_ok)
    measured = harness.measure(lambda: breaker.call(_ok))
    assert measured.client == ["FCALL"]
    assert measured.server["fcall"] == 1
    assert {"publish", "del", "hdel", "time"}.isdisjoint(measured.inner)
    assert measured.inner["hmget"] == 1  # load_state: one read of the state fields


def test_rejections_are_cached_until_the_deadline(harness: Harness) -> None:
    """After the cached deadline passes, the next call goes to Redis again (one probe)."""
    breaker = Breaker("svc", store=harness.store, **TRIP)
    _open_and_rejected_once(breaker, harness.clock)
    assert harness.measure(lambda: _fifty_rejections(breaker, harness.clock)).client == []
    harness.clock.advance(4.6)  # past the 5 s deadline (float margin)
    measured = harness.measure(lambda: breaker.call(_ok))
    harness.check(measured, 2)
    assert breaker.state is State.CLOSED


def test_function_flush_recovery(harness: Harness) -> None:
    """After FUNCTION FLUSH the next call still works: a refused FCALL, FUNCTION LOAD, FCALL."""
    breaker = Breaker("svc", store=harness.store)
    breaker.call(_ok)
    harness.server.function_flush()
    measured = harness.measure(lambda: breaker.call(_ok))
    assert measured.client == ["FCALL", "FUNCTION LOAD", "FCALL"]
    assert measured.server["fcall"] == 2  # the "Function not found" reply counts as a call
    assert measured.server["function|load"] == 1
    harness.check(measured, 3)
    # Loaded again: back to one round trip.
    again = harness.measure(lambda: breaker.call(_ok))
    assert again.client == ["FCALL"]
    assert breaker.snapshot().window_calls == 3  # the reloaded call was counted once


def test_scripts_without_functions(harness: Harness) -> None:
    """A store that cannot use Functions (Redis < 7, an ACL without FCALL) runs the same
    scripts by EVALSHA: one per round trip, and after SCRIPT FLUSH a NOSCRIPT EVALSHA,
    SCRIPT LOAD, EVALSHA."""
    harness.store._route.functions = False
    breaker = Breaker("svc", store=harness.store)
    breaker.call(_ok)  # the acquire script gets loaded
    measured = harness.measure(lambda: breaker.call(_ok))
    assert measured.client == ["EVALSHA"]
    harness.check(measured, 1)
    harness.server.script_flush()
    measured = harness.measure(lambda: breaker.call(_ok))
    assert measured.client == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    assert measured.server["evalsha"] == 2  # the NOSCRIPT reply counts as a call
    assert measured.server["script|load"] == 1
    harness.check(measured, 3)
    assert breaker.snapshot().window_calls == 3


def test_unicode_name_key_and_hash_slot(harness: Harness) -> None:
    """A unicode name with colons maps to <prefix>:{<name>}; its probes key shares the slot."""
    name = "zahlungs:dienst-ü/eu-west:1"
    breaker = Breaker(name, store=harness.store, **TRIP)
    _open_and_due(breaker, harness.clock)
    permit = breaker.acquire()  # a probe: the probes ZSET now holds its lease
    assert permit.is_probe
    state_key = f"rt:{{{name}}}".encode()
    probes_key = state_key + b":probes"
    with harness.server.client() as raw:
        assert raw.type(state_key) == b"hash"
        assert raw.type(probes_key) == b"zset"
        assert raw.hget(state_key, "state") == b"half_open"
        assert raw.zcard(probes_key) == 1
    assert key_slot(state_key) == key_slot(probes_key) == key_slot(name.encode())
    assert harness.store.breaker_names() == sorted([name, "warm-up"])
    permit.success()
    assert breaker.state is State.CLOSED


def _table(rows: list[tuple[str, Measured]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{'path':<{width}}  trips  fcall  load  inside the scripts (server-side)"]
    for name, m in rows:
        inner = " ".join(f"{k}:{v}" for k, v in m.inner.items()) or "-"
        lines.append(
            f"{name:<{width}}  {m.round_trips:>5}  {m.server.get('fcall', 0):>5}  "
            f"{m.server.get('function|load', 0):>4}  {inner}"
        )
    return "\n".join(lines)


def measure_each(
    redis_server: RedisServer, redis_url: str, paths: list[Scenario]
) -> list[tuple[str, Measured]]:
    """Each of ``paths`` on a fresh store of its own (a warmed-up library, no leftovers)."""
    rows = []
    for path in paths:
        redis_server.flushall(scripts=True)
        harness = Harness(redis_server, redis_url)
        try:
            harness.warm_up()
            rows.append((path.name, _run_path(harness, path)))
        finally:
            harness.store.close()
    return rows


def test_print_round_trip_table(redis_server: RedisServer, redis_url: str) -> None:
    """Every path again on one fresh store each, printed as a table (see -rP)."""
    rows = measure_each(redis_server, redis_url, PATHS)
    redis_server.flushall(scripts=True)
    harness = Harness(redis_server, redis_url)
    try:
        harness.warm_up()
        breaker = Breaker("svc", store=harness.store)
        breaker.call(_ok)
        redis_server.function_flush()
        reloaded = harness.measure(lambda: breaker.call(_ok))
        harness.check(reloaded, 3)
        rows.append(("closed success after FUNCTION FLUSH", reloaded))
    finally:
        harness.store.close()
    print("\n" + _table(rows))
    assert [m.round_trips for _, m in rows] == [p.round_trips for p in PATHS] + [3]
