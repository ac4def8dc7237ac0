"""Memory pressure: breakers on a Redis at ``maxmemory`` that a cache fills, under
``volatile-lru`` and ``allkeys-lru``, with breakers open while it fills.

What is measured (and printed as a figure): how many open breakers the fill evicted, with
the default ``key_ttl`` and with ``key_ttl=None``. What is held: under a ``volatile-*``
policy a breaker without a TTL is never evicted; an evicted open breaker comes back closed,
and the fleet re-trips it after ``failure_threshold`` failures, the usual bound.
"""

from __future__ import annotations

import pytest
import redis

import redbreaker
from redbreaker import Breaker, State
from redis_servers import RedisServer

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

BREAKERS = 40
THRESHOLD = 3


class DependencyDownError(Exception):
    pass


def _down() -> None:
    raise DependencyDownError


def _trip(store: redbreaker.Store, name: str, **settings: object) -> Breaker:
    breaker = Breaker(
        name, store=store, failure_threshold=THRESHOLD, recovery_timeout=600, **settings
    )
    for _ in range(THRESHOLD):
        with pytest.raises(DependencyDownError):
            breaker.call(_down)
    assert breaker.state is State.OPEN
    return breaker


def _fill(server: RedisServer, *, megabytes: int) -> int:
    """Write ``megabytes`` of cache entries, each with a TTL as a cache sets them; return
    how many keys Redis evicted meanwhile."""
    with server.client() as cache:
        before = int(cache.info("stats")["evicted_keys"])
        value = b"x" * 1024
        pipe = cache.pipeline(transaction=False)
        for i in range(megabytes * 1024):
            pipe.set(f"cache:{i}", value, ex=3600)
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
        return int(cache.info("stats")["evicted_keys"]) - before


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
def test_open_breakers_under_a_cache_filling_redis(policy: str) -> None:
    with RedisServer(extra_args=["--maxmemory", "3mb", "--maxmemory-policy", policy]) as server:
        store = redbreaker.connect(server.url)
        try:
            with_ttl = [_trip(store, f"ttl-{i}") for i in range(BREAKERS)]
            without_ttl = [_trip(store, f"kept-{i}", key_ttl=None) for i in range(BREAKERS)]
            with server.client() as admin:
                assert admin.ttl(with_ttl[0]._keys.state) > 0
                assert admin.ttl(without_ttl[0]._keys.state) == -1  # no TTL at all
            evicted = _fill(server, megabytes=12)
            assert evicted > 0  # the fill did press on memory

            lost_ttl = [b for b in with_ttl if not b.snapshot().exists]
            lost_kept = [b for b in without_ttl if not b.snapshot().exists]
            print(
                f"\n[eviction] policy={policy} cache_evictions={evicted} "
                f"open_breakers_evicted: default_key_ttl={len(lost_ttl)}/{BREAKERS} "
                f"key_ttl_none={len(lost_kept)}/{BREAKERS}"
            )
            if policy.startswith("volatile-"):
                # A volatile policy only picks keys with a TTL: these are out of its reach.
                assert lost_kept == []
                assert all(b.state is State.OPEN for b in without_ttl)

            # What the fleet does next with an evicted open breaker: it is closed again, and
            # the dependency, still down, trips it after THRESHOLD failures: the usual bound.
            for breaker in (lost_ttl + lost_kept)[:5]:
                reached = 0
                while breaker.state is not State.OPEN:
                    with pytest.raises(DependencyDownError):
                        breaker.call(_down)
                    reached += 1
                assert reached == THRESHOLD
        finally:
            store.close()


def test_a_full_redis_under_noeviction_is_an_outage_for_the_policy() -> None:
    """maxmemory reached under noeviction: Redis takes no write, so no breaker can decide.
    Callers get their on_store_error policy ("allow" runs, "reject" raises
    StoreUnavailableError), never a StoreError from the script."""
    full = ["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]
    with RedisServer(extra_args=full) as server:
        with server.client() as cache:
            value, refused = b"x" * 1024, None
            for i in range(10 * 1024):
                try:
                    cache.set(f"cache:{i}", value)
                except redis.exceptions.OutOfMemoryError as exc:
                    refused = exc
                    break
            assert refused is not None  # the Redis is full
        allow_store = redbreaker.connect(server.url)
        reject_store = redbreaker.connect(server.url, prefix="strict")
        try:
            allowed = Breaker("payments", store=allow_store, failure_threshold=THRESHOLD)
            assert allowed.call(lambda: "ran") == "ran"
            rejected = Breaker(
                "payments", store=reject_store, failure_threshold=THRESHOLD,
                on_store_error="reject",
            )  # fmt: skip
            with pytest.raises(redbreaker.StoreUnavailableError, match=r"OOM|OutOfMemory"):
                rejected.call(lambda: "ran")
            assert allow_store.health.degraded
        finally:
            allow_store.close()
            reject_store.close()
