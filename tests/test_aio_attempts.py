"""The async guard's attempts run eagerly up to their first suspension, and only then go
under ``asyncio.timeout`` with what is left of the budget (``redbreaker.aio._guard``).

What must hold is what ``await`` under ``asyncio.timeout`` gives: values, exceptions and
cancellations reach the attempt and come back from it unchanged, wherever it suspends;
the budget counts from the attempt's start; an attempt that never suspends sets no timer.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import pytest

from redbreaker import AttemptTimeoutError, aio
from redbreaker.aio import _guard

pytestmark = pytest.mark.skipif(_guard._TIMEOUT is None, reason="asyncio.timeout: 3.11+")

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def _guard_of(**settings: Any) -> tuple[aio.Store, aio.Guard]:
    store = aio.connect("memory://")
    breaker = aio.Breaker("attempts", store=store, consistency="cached")
    return store, breaker.guard(**settings)


def test_an_attempt_that_never_suspends_sets_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    timers: list[float | None] = []
    real = asyncio.timeout

    def counted(delay: float | None) -> asyncio.Timeout:
        timers.append(delay)
        return real(delay)

    monkeypatch.setattr(_guard, "_TIMEOUT", counted)

    async def cached_answer() -> str:
        return "hit"

    async def suspends() -> str:
        await asyncio.sleep(0)
        return "fetched"

    async def body() -> None:
        store, guard = _guard_of(attempt_timeout=1)
        assert await guard.call(cached_answer) == "hit"
        assert timers == []
        assert await guard.call(suspends) == "fetched"
        assert len(timers) == 1
        assert timers[0] is not None
        assert 0 < timers[0] <= 1
        await store.aclose()

    asyncio.run(body())


def test_values_errors_and_context_cross_every_suspension() -> None:
    """Futures resolved with values and with exceptions, sleeps, a context variable set
    before the first suspension and read after the last: as a plain await sees them."""

    async def attempt() -> tuple[str, int, str, str]:
        VAR.set("set in the first step")
        loop = asyncio.get_running_loop()
        valued: asyncio.Future[int] = loop.create_future()
        loop.call_soon(valued.set_result, 41)
        got = await valued
        failing: asyncio.Future[int] = loop.create_future()
        loop.call_soon(failing.set_exception, KeyError("inner"))
        try:
            await failing
        except KeyError as exc:
            caught = str(exc)
        else:  # pragma: no cover
            caught = "nothing"
        await asyncio.sleep(0.01)
        return VAR.get(), got + 1, caught, "done"

    async def body() -> None:
        store, guard = _guard_of(attempt_timeout=2)
        assert await guard.call(attempt) == ("set in the first step", 42, "'inner'", "done")
        await store.aclose()

    asyncio.run(body())


def test_the_budget_counts_from_the_attempts_start() -> None:
    """0.3 s of blocking work before the first suspension, a 0.2 s budget: the attempt
    times out at that suspension, not 0.2 s after it."""
    state = {"finally": False}

    async def slow_start() -> None:
        time.sleep(0.3)  # blocks the loop: no timeout can interrupt this part
        try:
            await asyncio.sleep(5)
        finally:
            state["finally"] = True

    async def body() -> float:
        store, guard = _guard_of(attempt_timeout=0.2)
        started = time.perf_counter()
        with pytest.raises(AttemptTimeoutError) as raised:
            await guard.call(slow_start)
        elapsed = time.perf_counter() - started
        assert raised.value.cancelled
        await store.aclose()
        return elapsed

    elapsed = asyncio.run(body())
    assert state["finally"]
    assert 0.3 <= elapsed < 2.0, elapsed  # the 5 s sleep was cancelled at once


def test_the_dependencys_own_errors_and_timeouts_pass_through() -> None:
    async def raises_at_once() -> None:
        raise TimeoutError("the dependency's own")

    async def raises_later() -> None:
        await asyncio.sleep(0)
        raise TimeoutError("the dependency's own, later")

    async def body() -> None:
        store, guard = _guard_of(attempt_timeout=1)
        for fn in (raises_at_once, raises_later):
            with pytest.raises(TimeoutError) as raised:
                await guard.call(fn)
            assert not isinstance(raised.value, AttemptTimeoutError)
            assert "the dependency's own" in str(raised.value)
        await store.aclose()

    asyncio.run(body())


def test_an_outside_cancellation_reaches_the_attempt() -> None:
    """Cancelling the calling task while the attempt waits: the attempt sees the
    CancelledError (its finally runs), the caller gets it, nothing is an AttemptTimeout."""
    seen: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def body() -> None:
        store, guard = _guard_of(attempt_timeout=10)
        task = asyncio.ensure_future(guard.call(waits))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.aclose()

    asyncio.run(body())
    assert seen == ["cancelled"]
