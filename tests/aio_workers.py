"""Worker functions for the fleet tests of ``test_aio.py``: each runs in its own process
(``spawn``).

Every worker builds its own store on the real redis-server (Redis ``TIME``, no test clock)
and its own breaker of one name: an asyncio one (:mod:`redbreaker.aio`) or, in the mixed
fleet, a sync one. The parent imports this module by name: ``tests/`` is on ``sys.path``
and ``spawn`` hands the parent's ``sys.path`` to the child. Results are plain picklable
data put on a queue as ``(index, "done", result)`` or ``(index, "error", traceback)``.

``shared`` carries the multiprocessing objects the parent made for the fleet: the
dependency's switches and its counter of probes in flight (``Value``\\ s and a ``Lock``),
and the barrier the members of the mixed fleet meet at between its steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import Counter
from typing import TYPE_CHECKING, Any

import redbreaker
from redbreaker import aio

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

NAME = "aio-fleet"
BARRIER_TIMEOUT = 60.0
"""Seconds a worker waits for the rest of the fleet (spawning interpreters on a busy
2-core machine takes a while)."""
RUN_LIMIT = 25.0
"""No worker loop runs longer than this, whatever happens to the breaker."""
STEP_LIMIT = 3.0
"""Seconds a member of the mixed fleet waits to see the breaker open (or closed again)."""

Event = tuple[str | None, str, str, int]
"""A transition as a worker reports it: (previous, current, reason, generation)."""


class Boom(Exception):  # noqa: N818 (the dependency's own error, not a redbreaker one)
    """The guarded dependency failed."""


def entry(
    work: str,
    index: int,
    url: str,
    params: dict[str, Any],
    *,
    barrier: Barrier,
    results: Queue[tuple[int, str, Any]],
    shared: dict[str, Any],
) -> None:
    """Process target: run ``work`` and put its result (or its traceback) on ``results``."""
    # Transitions are logged at WARNING; without a handler they would reach stderr.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    try:
        worker: Callable[..., Any] = globals()[work]
        result = worker(index, url, params, barrier, shared)
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
    else:
        results.put((index, "done", result))


def _event(t: redbreaker.Transition) -> Event:
    return (t.previous.value if t.previous else None, t.current.value, t.reason, t.generation)


# ------------------------------------------------------------------ outage and recovery


def probe_storm(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, shared: dict[str, Any]
) -> dict[str, Any]:
    """``params["tasks"]`` concurrent tasks call the dependency through one aio breaker
    until the parent sets ``shared["stop"]``; the parent switches ``shared["down"]``."""
    return asyncio.run(_probe_storm(url, params, barrier, shared))


async def _probe_storm(
    url: str, params: dict[str, Any], barrier: Barrier, shared: dict[str, Any]
) -> dict[str, Any]:
    seen: list[Event] = []
    counts: Counter[str] = Counter()
    down, stop, lock = shared["down"], shared["stop"], shared["lock"]
    in_flight, most, probes = shared["in_flight"], shared["max_in_flight"], shared["probes"]
    store = aio.connect(url)
    breaker = aio.Breaker(
        NAME, store=store, on_transition=[lambda t: seen.append(_event(t))], **params["config"]
    )

    async def dependency(is_probe: bool) -> str:
        """The dependency: counts the probes it serves at once, fleet-wide."""
        if is_probe:
            with lock:
                in_flight.value += 1
                probes.value += 1
                most.value = max(most.value, in_flight.value)
        try:
            await asyncio.sleep(params["hold"])
            if down.value:
                raise Boom("down")
            return "ok"
        finally:
            if is_probe:
                with lock:
                    in_flight.value -= 1

    async def task() -> None:
        deadline = time.monotonic() + RUN_LIMIT
        while not stop.value and time.monotonic() < deadline:
            try:
                async with breaker.acquire() as permit:
                    await dependency(permit.is_probe)
            except Boom:
                counts["failed"] += 1
                await asyncio.sleep(params["pause"])
            except aio.CircuitOpenError as exc:
                counts[f"rejected_{exc.state}"] += 1
                await asyncio.sleep(params["reject_pause"])
            else:
                counts["ok"] += 1
                await asyncio.sleep(params["pause"])

    try:
        await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT)
        await asyncio.gather(*(task() for _ in range(params["tasks"])))
        return {"transitions": seen, "counts": dict(counts)}
    finally:
        await store.aclose()


# ------------------------------------------------------------------ the mixed fleet


def mixed_member(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, shared: dict[str, Any]
) -> dict[str, Any]:
    """One member of a fleet of sync and async processes sharing one breaker.

    Round ``r``: everyone sees the breaker admit; the member ``params["trippers"][r]``
    trips it; everyone else calls until rejected (noting how many calls were admitted
    meanwhile and the rejection's state and retry_after); the tripper resets it.
    """
    if params["driver"] == "sync":
        return _mixed_sync(index, url, params, barrier, shared)
    return asyncio.run(_mixed_async(index, url, params, barrier, shared))


def _mixed_sync(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, shared: dict[str, Any]
) -> dict[str, Any]:
    seen: list[Event] = []
    store = redbreaker.connect(url)
    breaker = redbreaker.Breaker(
        NAME, store=store, on_transition=[lambda t: seen.append(_event(t))], **params["config"]
    )
    step = shared["rounds"]
    rounds: list[dict[str, Any]] = []
    ran = Counter[str]()

    def ok() -> str:
        ran["ok"] += 1
        return "ok"

    def fail() -> None:
        raise Boom("down")

    def until(admitted: bool) -> tuple[float, int, tuple[str, float | None] | None]:
        started = time.monotonic()
        calls = 0
        while time.monotonic() - started < STEP_LIMIT:
            try:
                breaker.call(ok)
            except redbreaker.CircuitOpenError as exc:
                if not admitted:
                    return time.monotonic() - started, calls, (exc.state, exc.retry_after)
            else:
                calls += 1
                if admitted:
                    return time.monotonic() - started, calls, None
            time.sleep(0.002)
        raise AssertionError(f"member {index}: not {'admitted' if admitted else 'rejected'}")

    try:
        barrier.wait(BARRIER_TIMEOUT)
        for tripper in params["trippers"]:
            step.wait(BARRIER_TIMEOUT)
            until(admitted=True)
            step.wait(BARRIER_TIMEOUT)
            record: dict[str, Any] = {"tripper": tripper == index}
            if tripper == index:
                for _ in range(params["config"]["failure_threshold"]):
                    with contextlib.suppress(Boom):
                        breaker.call(fail)
            step.wait(BARRIER_TIMEOUT)
            before = ran["ok"]
            took, admitted, rejected = until(admitted=False)
            record.update(took=took, admitted=admitted, ran=ran["ok"] - before, rejected=rejected)
            step.wait(BARRIER_TIMEOUT)
            if tripper == index:
                breaker.reset()
            rounds.append(record)
        breaker.flush()
        return {"driver": "sync", "rounds": rounds, "transitions": seen}
    finally:
        store.close()


async def _mixed_async(
    index: int, url: str, params: dict[str, Any], barrier: Barrier, shared: dict[str, Any]
) -> dict[str, Any]:
    seen: list[Event] = []
    store = aio.connect(url)
    breaker = aio.Breaker(
        NAME, store=store, on_transition=[lambda t: seen.append(_event(t))], **params["config"]
    )
    step = shared["rounds"]
    rounds: list[dict[str, Any]] = []
    ran = Counter[str]()

    async def ok() -> str:
        ran["ok"] += 1
        return "ok"

    async def fail() -> None:
        raise Boom("down")

    async def wait(on: Barrier) -> None:
        # In a thread: the loop keeps running (a cached breaker's feed task reads on).
        await asyncio.to_thread(on.wait, BARRIER_TIMEOUT)

    async def until(admitted: bool) -> tuple[float, int, tuple[str, float | None] | None]:
        started = time.monotonic()
        calls = 0
        while time.monotonic() - started < STEP_LIMIT:
            try:
                await breaker.call(ok)
            except aio.CircuitOpenError as exc:
                if not admitted:
                    return time.monotonic() - started, calls, (exc.state, exc.retry_after)
            else:
                calls += 1
                if admitted:
                    return time.monotonic() - started, calls, None
            await asyncio.sleep(0.002)
        raise AssertionError(f"member {index}: not {'admitted' if admitted else 'rejected'}")

    try:
        await wait(barrier)
        for tripper in params["trippers"]:
            await wait(step)
            await until(admitted=True)
            await wait(step)
            record: dict[str, Any] = {"tripper": tripper == index}
            if tripper == index:
                for _ in range(params["config"]["failure_threshold"]):
                    with contextlib.suppress(Boom):
                        await breaker.call(fail)
            await wait(step)
            before = ran["ok"]
            took, admitted, rejected = await until(admitted=False)
            record.update(took=took, admitted=admitted, ran=ran["ok"] - before, rejected=rejected)
            await wait(step)
            if tripper == index:
                await breaker.reset()
            rounds.append(record)
        await breaker.flush()
        return {"driver": "async", "rounds": rounds, "transitions": seen}
    finally:
        await store.aclose()
