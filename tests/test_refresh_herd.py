"""A cached breaker's local copy expires for every caller at once: one caller renews it
while the others wait for its answer (``LocalKnowledge.refresh_role``), instead of all of
them asking Redis. Threads for the sync driver, tasks for the asyncio one; the acquire
script is slowed down so that every caller arrives while the first one waits for Redis."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

import redbreaker
import redbreaker.aio
from redbreaker import ManualClock

if TYPE_CHECKING:
    from collections.abc import Sequence

CALLERS = 16
SLOW_ACQUIRE = 0.05  # seconds the acquire script is held up: far below max_staleness


class Acquires:
    """Counts the acquire scripts a store runs and holds each one up for SLOW_ACQUIRE;
    with ``fail_first`` the first one fails as an unreachable Redis would."""

    def __init__(self, store: Any, *, fail_first: bool = False) -> None:
        self.count = 0
        self._fail = fail_first
        call = store._call

        def slowed(script: str, keys: Any, argv: Sequence[str]) -> Any:
            if script == "acquire":
                self.count += 1
                time.sleep(SLOW_ACQUIRE)
                self._maybe_fail()
            return call(script, keys, argv)

        async def slowed_async(script: str, keys: Any, argv: Sequence[str]) -> Any:
            if script == "acquire":
                self.count += 1
                await asyncio.sleep(SLOW_ACQUIRE)
                self._maybe_fail()
            return await call(script, keys, argv)

        store._call = slowed_async if asyncio.iscoroutinefunction(call) else slowed

    def _maybe_fail(self) -> None:
        if self._fail:
            self._fail = False
            raise redis.ConnectionError("held up by the test")


def _warm(_: object, clock: ManualClock) -> None:
    """After a first call: let the feed subscribe (a subscription counts as news, so a
    copy taken before it is not renewable), then let that copy expire."""
    time.sleep(0.3)
    clock.advance(1.5)


def _sync_round(fail_first: bool) -> tuple[int, list[object]]:
    clock = ManualClock()
    with contextlib.closing(redbreaker.connect("memory://", clock=clock)) as store:
        breaker = redbreaker.Breaker("herd", store=store, consistency="cached",
                                     max_staleness=1.0)
        _warm(breaker.call(lambda: None), clock)
        breaker.call(lambda: None)  # the copy every caller shares
        clock.advance(1.5)  # ... now too old for all of them
        acquires = Acquires(store, fail_first=fail_first)
        start = threading.Barrier(CALLERS)
        results: list[object] = []

        def caller() -> None:
            start.wait()
            results.append(breaker.call(lambda: "ok"))

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return acquires.count, results


def test_threads_renew_an_expired_copy_with_one_acquire() -> None:
    count, results = _sync_round(fail_first=False)
    assert results == ["ok"] * CALLERS
    assert count == 1


def test_threads_ask_themselves_when_the_renewal_failed() -> None:
    count, results = _sync_round(fail_first=True)
    # The followers found no copy and went on by themselves: under on_store_error="allow"
    # the store, down since the leader's error, lets them all run (without asking Redis).
    assert results == ["ok"] * CALLERS
    assert count >= 1


async def _aio_round() -> tuple[int, list[object]]:
    clock = ManualClock()
    store = redbreaker.aio.connect("memory://", clock=clock)
    try:
        breaker = redbreaker.aio.Breaker("herd", store=store, consistency="cached",
                                         max_staleness=1.0)

        async def ok() -> str:
            return "ok"

        _warm(await breaker.call(ok), clock)
        await asyncio.sleep(0.3)  # the feed is a task of this loop
        await breaker.call(ok)
        clock.advance(1.5)
        acquires = Acquires(store)
        results = await asyncio.gather(*(breaker.call(ok) for _ in range(CALLERS * 4)))
        return acquires.count, list(results)
    finally:
        await store.aclose()


def test_tasks_renew_an_expired_copy_with_one_acquire() -> None:
    count, results = asyncio.run(_aio_round())
    assert results == ["ok"] * CALLERS * 4
    assert count == 1


def test_a_transition_heard_is_not_shared() -> None:
    """After a transition the copy is not renewable: nobody waits for anybody."""
    clock = ManualClock()
    with contextlib.closing(redbreaker.connect("memory://", clock=clock)) as store:
        breaker = redbreaker.Breaker("herd", store=store, consistency="cached")
        breaker.call(lambda: None)
        core = breaker._core
        store.view.heard  # noqa: B018 (the view's counter is what fresh_copy compares)
        core._local.copy.heard -= 1  # as if a transition had been heard since
        assert core.admit_without_redis() is None
        lane = breaker._lane
        assert lane is not None
        assert (lane.refresh_role(), lane.refresh_role()) == ("alone", "alone")
