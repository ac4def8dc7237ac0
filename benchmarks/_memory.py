"""Redis memory per breaker: MEMORY USAGE of one breaker's keys in each state, and the
growth of ``used_memory`` over many breakers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import _variants

import redbreaker

if TYPE_CHECKING:
    import redis


@dataclass
class KeyUsage:
    label: str
    bytes: int  # MEMORY USAGE (all samples) of every key of the breaker
    keys: int
    encoding: str  # OBJECT ENCODING of the main key


@dataclass
class MemoryResult:
    states: list[KeyUsage]
    per_breaker: float  # used_memory growth / n, redbreaker with a full window
    pybreaker_states: list[KeyUsage]
    pybreaker_per_breaker: float
    n: int


def _usage(admin: redis.Redis, label: str, keys: list[str]) -> KeyUsage:
    total, present = 0, 0
    for key in keys:
        size = admin.memory_usage(key, samples=0)
        if size:
            total += int(size)
            present += 1
    encoding = admin.object("encoding", keys[0]) if present else b"-"
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    return KeyUsage(label, total, present, str(encoding))


def _used_memory(admin: redis.Redis) -> int:
    return int(admin.info("memory")["used_memory"])


def _redbreaker_keys(prefix: str, name: str) -> list[str]:
    # The documented data model: the hash <prefix>:{<name>} and the ZSET of probe leases.
    return [f"{prefix}:{{{name}}}", f"{prefix}:{{{name}}}:probes"]


def measure(admin: redis.Redis, url: str, prefix: str, n: int) -> MemoryResult:
    clock = redbreaker.ManualClock()  # moves time across the window without sleeping
    store = _variants.open_store(url, prefix, clock=clock)
    fail = _variants.fail
    boom = _variants.DependencyError
    settings = {"failure_threshold": 5, "recovery_timeout": 30.0, "window": 60.0}
    states = []
    try:
        def breaker(name: str) -> redbreaker.Breaker:
            return redbreaker.Breaker(name, store=store, **settings)

        def fail_once(b: redbreaker.Breaker) -> None:
            with contextlib.suppress(boom, redbreaker.CircuitOpenError):
                b.call(fail)

        def fill_window(bs: list[redbreaker.Breaker]) -> None:
            for _ in range(10):  # one call in each of the 10 buckets, then a failure streak
                clock.advance(6.0)
                for b in bs:
                    b.call(_variants.noop)
            for b in bs:
                fail_once(b)
                fail_once(b)

        one = breaker("one-call")
        one.call(_variants.noop)
        states.append(_usage(admin, "closed, after one call", _redbreaker_keys(prefix, "one-call")))
        full = breaker("full-window")
        fill_window([full])
        states.append(
            _usage(admin, "closed, 10 live buckets, 2 failures",
                   _redbreaker_keys(prefix, "full-window"))
        )
        opened = breaker("open")
        for _ in range(5):
            fail_once(opened)
        states.append(_usage(admin, "open (tripped)", _redbreaker_keys(prefix, "open")))
        clock.advance(31.0)
        permit = opened.acquire()
        states.append(
            _usage(admin, "half-open, one probe lease", _redbreaker_keys(prefix, "open"))
        )
        permit.release()

        before = _used_memory(admin)
        many = [breaker(f"many-{i}") for i in range(n)]
        fill_window(many)
        per_breaker = (_used_memory(admin) - before) / n
    finally:
        store.close()

    pyb_states: list[KeyUsage] = []
    pyb_per = float("nan")
    pybreaker = _variants.pybreaker
    if pybreaker is not None:
        client = _variants.raw_client(url, decode_responses=False)
        try:
            def pyb(namespace: str) -> object:
                return pybreaker.CircuitBreaker(
                    fail_max=5,
                    reset_timeout=30,
                    state_storage=_variants.pybreaker_storage(client, namespace),
                )

            def pyb_keys(namespace: str) -> list[str]:
                found = client.keys(f"{namespace}:pybreaker:*")
                return sorted(k.decode() for k in found)

            b = pyb(f"{prefix}-pyb-closed")
            b.call(_variants.noop)
            with contextlib.suppress(boom):
                b.call(fail)
            pyb_states.append(
                _usage(admin, "closed, after a success and a failure",
                       pyb_keys(f"{prefix}-pyb-closed"))
            )
            b = pyb(f"{prefix}-pyb-open")
            for _ in range(5):
                with contextlib.suppress(boom, pybreaker.CircuitBreakerError):
                    b.call(fail)
            pyb_states.append(_usage(admin, "open (tripped)", pyb_keys(f"{prefix}-pyb-open")))

            before = _used_memory(admin)
            for i in range(n):
                b = pyb(f"{prefix}-pyb-many-{i}")
                b.call(_variants.noop)
                with contextlib.suppress(boom):
                    b.call(fail)
            pyb_per = (_used_memory(admin) - before) / n
        finally:
            client.close()
    return MemoryResult(states, per_breaker, pyb_states, pyb_per, n)
