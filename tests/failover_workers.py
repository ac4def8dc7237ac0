"""Worker processes for tests/test_failover.py: each calls a healthy dependency through a
shared breaker on a Sentinel-managed Redis until told to stop, and reports what its
callers saw (outcomes by type) and when its store lost and regained Redis (wall time: the
parent compares it with when it killed the primary).

tests/test_cluster_failover.py runs :func:`run` with several ``names`` (breakers on every
shard of a Redis Cluster): whether each call went through Redis is told per name, by
``through_redis``, from what an observer hears of it (a call admitted without Redis is
reported in the state "unknown"; under "reject" it raises StoreUnavailableError).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import redbreaker

Policy = Literal["allow", "reject", "local"]

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redbreaker import CallRecord, Transition


class LastCall:
    """An observer that keeps whether the last call was admitted without Redis."""

    def __init__(self) -> None:
        self.offline = False

    def on_call(self, record: CallRecord) -> None:
        self.offline = record.state == "unknown"

    def on_transition(self, transition: Transition) -> None:
        pass


def run(
    index: int,
    url: str,
    policy: Policy,
    *,
    ready: Any,
    stop: Any,
    results: Any,
    names: Sequence[str] = ("payments",),
) -> None:
    """Call every breaker of ``names`` in turn until ``stop``. ``through_redis`` in the
    report holds, per name, the (wall time, went through Redis) edges of its calls: the
    store call was made and answered, or it was skipped or failed (the policy decided)."""
    events: list[tuple[str, float]] = []
    last_call = LastCall()
    store = redbreaker.connect(
        url,
        store_timeout=0.5,
        on_store_event=lambda e: events.append((e.kind, time.time())),
        observers=[last_call],
    )
    breakers = [redbreaker.Breaker(name, store=store, on_store_error=policy) for name in names]
    outcomes: Counter[str] = Counter()
    last_ok_through_redis = 0.0
    through_redis: dict[str, list[tuple[float, bool]]] = {name: [] for name in names}
    try:
        if index == 0:
            ready.set()
        while not stop.is_set():
            for breaker in breakers:
                via_redis = False
                try:
                    assert breaker.call(lambda: "ok") == "ok"
                    outcomes["ok"] += 1
                    # One thread: the last call the observer heard of is this one.
                    via_redis = not last_call.offline
                    if not store.health.degraded:
                        last_ok_through_redis = time.time()
                except Exception as exc:  # what a caller would see, by type
                    outcomes[type(exc).__name__] += 1
                edges = through_redis[breaker.name]
                if not edges or edges[-1][1] != via_redis:
                    edges.append((time.time(), via_redis))
                time.sleep(0.002)
        results.put(
            {
                "index": index,
                "outcomes": dict(outcomes),
                "events": events,
                "last_ok_through_redis": last_ok_through_redis,
                "through_redis": through_redis,
                "degraded_at_end": store.health.degraded,
            }
        )
    except BaseException as exc:
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        store.close()


def run_aio(index: int, url: str, policy: Policy, *, ready: Any, stop: Any, results: Any) -> None:
    """:func:`run` through ``redbreaker.aio``: one event loop, the same counts."""
    import asyncio

    import redbreaker.aio

    async def main() -> dict[str, Any]:
        events: list[tuple[str, float]] = []
        store = redbreaker.aio.connect(
            url, store_timeout=0.5, on_store_event=lambda e: events.append((e.kind, time.time()))
        )
        breaker = redbreaker.aio.Breaker("payments", store=store, on_store_error=policy)
        outcomes: Counter[str] = Counter()
        last_ok_through_redis = 0.0

        async def ok() -> str:
            return "ok"

        try:
            if index == 0:
                ready.set()
            while not stop.is_set():
                try:
                    assert await breaker.call(ok) == "ok"
                    outcomes["ok"] += 1
                    if not store.health.degraded:
                        last_ok_through_redis = time.time()
                except Exception as exc:
                    outcomes[type(exc).__name__] += 1
                await asyncio.sleep(0.002)
        finally:
            await store.aclose()
        return {
            "index": index,
            "outcomes": dict(outcomes),
            "events": events,
            "last_ok_through_redis": last_ok_through_redis,
        }

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})
