"""Worker processes for tests/test_failover.py: each calls a healthy dependency through a
shared breaker on a Sentinel-managed Redis until told to stop, and reports what its
callers saw (outcomes by type) and when its store lost and regained Redis (wall time: the
parent compares it with when it killed the primary)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redbreaker


def run(index: int, url: str, policy: str, *, ready: Any, stop: Any, results: Any) -> None:
    events: list[tuple[str, float]] = []
    store = redbreaker.connect(
        url, store_timeout=0.5, on_store_event=lambda e: events.append((e.kind, time.time()))
    )
    breaker = redbreaker.Breaker("payments", store=store, on_store_error=policy)
    outcomes: Counter[str] = Counter()
    last_ok_through_redis = 0.0
    try:
        if index == 0:
            ready.set()
        while not stop.is_set():
            try:
                assert breaker.call(lambda: "ok") == "ok"
                outcomes["ok"] += 1
                if not store.health.degraded:
                    last_ok_through_redis = time.time()
            except Exception as exc:  # what a caller would see, by type
                outcomes[type(exc).__name__] += 1
            time.sleep(0.002)
        results.put(
            {
                "index": index,
                "outcomes": dict(outcomes),
                "events": events,
                "last_ok_through_redis": last_ok_through_redis,
                "degraded_at_end": store.health.degraded,
            }
        )
    except BaseException as exc:
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        store.close()


def run_aio(index: int, url: str, policy: str, *, ready: Any, stop: Any, results: Any) -> None:
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
