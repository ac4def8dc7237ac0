"""``redbreaker.aio``: the asyncio twin of the sync driver, tested on the embedded store and
on a real redis-server.

There is no pytest-asyncio: each test drives its coroutine with ``asyncio.run()`` (the
``run`` helper), closes every store it opens (``async with connect(...)``) and leaves no
task pending. Behaviour tests run on every backend of the ``target`` fixture (an embedded
``memory://<unique name>``, so a second store on that name is "another process" on the
same data; the session redis-server with ``decode_responses`` off and on) with the
``clock`` fixture's ManualClock; the timeout, cancellation latency, feed and event-loop
tests use real time.

What is covered: API parity with the sync ``Breaker`` (call, decorator, permits, orders,
snapshots, config errors); the same semantics (trip, rejection and its local cache,
half-open probes, classification, hooks, one breaker for both drivers); cached
consistency (no round trip for a healthy call, trips heard on the feed, exact batches);
``on_store_error`` with a killed redis-server; the guard (timeouts by cancellation,
retries, deadline, fallback); cancellation of a probe anywhere in its life; no blocking
of the event loop; and fleets of spawned processes (``aio_workers.py``), marked slow.
The behaviour, guard, fault, hostile-input and cached-mode suites (``test_breaker.py``,
``test_guard.py``, ``test_faults.py``, ``test_hostile.py``, ``test_cached.py``) run on this
driver too, from the same source as the sync runs (the ``driver`` fixture, ``drivers.py``).

Measured figures are printed as ``[aio] ...`` lines (see them with ``-s``). A test that
fails here names a bug of ``redbreaker.aio``: none is marked xfail.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import multiprocessing
import queue
import random
import resource
import threading
import time
import uuid
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import redis
import redis.asyncio

import aio_workers
import redbreaker
from redbreaker import (
    AttemptInfo,
    AttemptTimeoutError,
    CircuitOpenError,
    ConfigError,
    Failure,
    ManualClock,
    Outcome,
    PermitError,
    State,
    StoreUnavailableError,
    Transition,
    aio,
    fallback_value,
)
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
NAME = "aio-dep"
ROUND_TRIPS = ("fcall", "function|load", "evalsha", "script|load")


# ------------------------------------------------------------------------------ helpers


class DownError(ConnectionError):
    """The dependency failed."""


def run(main: Callable[[], Coroutine[Any, Any, T]], *, debug: bool = False) -> T:
    """Run one test's coroutine on a fresh event loop (closed afterwards)."""
    return asyncio.run(main(), debug=debug)


def figure(**measured: object) -> None:
    print("\n[aio] " + " ".join(f"{k}={v}" for k, v in measured.items()))


async def ok(value: object = "ok") -> object:
    await asyncio.sleep(0)
    return value


async def fail() -> None:
    await asyncio.sleep(0)
    raise DownError("down")


async def fail_times(breaker: aio.Breaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(DownError):
            await breaker.call(fail)


async def rejected(breaker: aio.Breaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        await breaker.acquire()
    return info.value


def moves(seen: list[Transition]) -> list[tuple[State | None, State, str]]:
    return [(t.previous, t.current, t.reason) for t in seen]


def make(
    store: aio.Store, name: str = NAME, *, seen: list[Transition] | None = None, **kw: Any
) -> aio.Breaker:
    return aio.Breaker(name, store=store, on_transition=[] if seen is None else [seen.append], **kw)


class Trips:
    """Every script call (one FCALL or EVALSHA) an aio store makes from now on."""

    def __init__(self, store: aio.Store) -> None:
        self.log: list[tuple[str, str | None]] = []
        call = store._call

        async def counted(script: str, keys: Any, argv: Any) -> Any:
            self.log.append((script, str(argv[5]) if script == "record" else None))
            return await call(script, keys, argv)

        store._call = counted  # type: ignore[method-assign]

    def take(self) -> list[tuple[str, str | None]]:
        taken, self.log = self.log, []
        return taken


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit:
            raise AssertionError(f"not within {limit}s: {what}")
        await asyncio.sleep(0.001)
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def _testing_mode_off() -> Iterator[None]:
    """Every test starts with set_testing off (guards retry and sleep for real)."""
    with redbreaker.set_testing(False):
        yield


DECODED = "decoded+"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis_server),
        pytest.param("redis-decoded", marks=pytest.mark.redis_server),
    ]
)
def target(request: pytest.FixtureRequest) -> str:
    """Where the test's stores live (open them with ``connect``): an embedded Redis of a
    name of its own (every store of that name shares its data, sync stores included), or
    the emptied session redis-server through a client with ``decode_responses`` off or on
    (the latter marked ``decoded+<url>``)."""
    if request.param == "memory":
        return f"memory://aio-{uuid.uuid4().hex}"
    url: str = request.getfixturevalue("redis_url")
    return url if request.param == "redis" else DECODED + url


def connect(target: str, **kw: Any) -> aio.Store:
    """An aio store on ``target`` (see the ``target`` fixture)."""
    if target.startswith(DECODED):
        url = target.removeprefix(DECODED)
        return aio.connect(redis.asyncio.Redis.from_url(url, decode_responses=True), **kw)
    return aio.connect(target, **kw)


def connect_sync(target: str, **kw: Any) -> redbreaker.Store:
    """A sync store on the same data as ``connect(target)``."""
    if target.startswith(DECODED):
        url = target.removeprefix(DECODED)
        return redbreaker.connect(redis.Redis.from_url(url, decode_responses=True), **kw)
    return redbreaker.connect(target, **kw)


# ============================================================================ 1. API parity


def test_call_awaits_coroutine_functions_and_returns_plain_results(
    target: str, clock: ManualClock
) -> None:
    """call() awaits an async function, returns a plain function's result as it is, and
    awaits an awaitable a plain function returns; arguments pass through."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store)

            async def add(a: int, *, b: int = 0) -> int:
                await asyncio.sleep(0)
                return a + b

            assert await breaker.call(add, 1, b=2) == 3
            assert await breaker.call(lambda x: x * 2, 21) == 42
            assert await breaker.call(lambda: add(40, b=2)) == 42
            assert await breaker.call(dict, a=1) == {"a": 1}
            snap = await breaker.snapshot()
            assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 4, 0)

    run(main)


def test_decorator_on_coroutine_functions_only(target: str, clock: ManualClock) -> None:
    """@breaker keeps the coroutine function's name, doc and coroutine-ness and passes
    arguments; a plain function is refused with TypeError."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=1)

            @breaker
            async def charge(order: int, *, amount: float = 0.0) -> tuple[int, float]:
                """Charge an order."""
                await asyncio.sleep(0)
                return order, amount

            assert charge.__name__ == "charge"
            assert charge.__doc__ == "Charge an order."
            assert inspect.iscoroutinefunction(charge)
            assert await charge(7, amount=2.5) == (7, 2.5)
            assert await charge(8) == (8, 0.0)
            assert (await breaker.snapshot()).window_calls == 2

            def plain() -> None: ...

            with pytest.raises(TypeError, match="coroutine"):
                breaker(plain)  # type: ignore[arg-type]

    run(main)


def test_two_step_permit_and_settling_twice(target: str, clock: ManualClock) -> None:
    """permit = await acquire(), then success/failure(exc)/release; a second settle
    raises PermitError; failure(exc) is classified, failure() always counts."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=10, record_on=ConnectionError)
            permit = await breaker.acquire()
            assert isinstance(permit, aio.Permit)
            assert (permit.is_probe, permit.generation) == (False, 1)
            await permit.success()
            for settle in (permit.success, permit.failure, permit.release):
                with pytest.raises(PermitError):
                    await settle()
            await (await breaker.acquire()).failure(ValueError("not ours"))
            await (await breaker.acquire()).failure(asyncio.CancelledError())
            await (await breaker.acquire()).release()
            snap = await breaker.snapshot()
            assert (snap.consecutive_failures, snap.window_failures) == (0, 0)
            await (await breaker.acquire()).failure(DownError("down"))
            await (await breaker.acquire()).failure()
            snap = await breaker.snapshot()
            assert (snap.consecutive_failures, snap.window_failures) == (2, 2)
            # 1 success + ValueError ignored (no call) + released/cancelled (calls) + 2 failures
            assert snap.window_calls == 5

    run(main)


def test_async_with_permit(target: str, clock: ManualClock) -> None:
    """Leaving ``async with acquire()`` normally is a success; an exception is classified,
    counted and re-raised unchanged; an ignored one counts nothing; a permit settled by
    its block cannot be settled again."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=3, ignore_on=KeyError)
            async with breaker.acquire() as permit:
                assert (permit.is_probe, permit.generation) == (False, 1)
            with pytest.raises(PermitError):
                await permit.failure()
            error = DownError("down")
            with pytest.raises(DownError) as raised:
                async with breaker.acquire():
                    raise error
            assert raised.value is error
            assert (await breaker.snapshot()).consecutive_failures == 1
            with pytest.raises(KeyError):
                async with breaker.acquire():
                    raise KeyError("ignored")
            snap = await breaker.snapshot()
            assert (snap.consecutive_failures, snap.window_failures) == (1, 1)
            async with breaker.acquire() as early:
                await early.release()  # settled inside the block: the exit adds nothing
            async with breaker.acquire():
                pass
            snap = await breaker.snapshot()
            assert (snap.consecutive_failures, snap.window_failures) == (0, 1)

    run(main)


def test_snapshot(target: str, clock: ManualClock) -> None:
    """A never-used breaker reads as fresh; after 3 successes and 2 failures the window
    and the streak say so; snapshot() changes nothing."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=5)
            fresh = await breaker.snapshot()
            assert fresh.exists is False
            assert (fresh.state, fresh.generation, fresh.window_calls) == (CLOSED, 1, 0)
            assert fresh.now_ms == clock.server_ms()
            for _ in range(3):
                await breaker.call(ok)
            await fail_times(breaker, 2)
            snap = await breaker.snapshot()
            assert snap.exists is True
            assert (snap.window_calls, snap.window_failures, snap.failure_rate) == (5, 2, 0.4)
            assert (snap.consecutive_failures, snap.state, snap.generation) == (2, CLOSED, 1)
            assert await breaker.snapshot() == snap

    run(main)


async def _orders_scenario(
    act: Callable[..., Coroutine[Any, Any, Any]], clock: ManualClock
) -> list[tuple[object, ...]]:
    """Operator orders and calls, each noted as what it returned or raised. ``act(name,
    *args)`` runs a breaker method (of either driver); time moves only here."""
    log: list[tuple[object, ...]] = []

    def runs() -> str:
        return "ran"

    def fails() -> None:
        raise DownError("down")

    async def step(name: str, *args: object) -> None:
        try:
            result = await act(name, *args)
        except CircuitOpenError as exc:
            log.append((name, "rejected", exc.state, exc.retry_after))
        except DownError:
            log.append((name, "failed"))
        else:
            if name == "snapshot":
                result = (result.state, result.consecutive_failures, result.would_trip_count)
            log.append((name, *args, result) if name != "call" else (name, result))

    await step("force_open")
    await step("call", runs)
    clock.advance(86_400)
    await step("call", runs)
    await step("force_open", 30)
    await step("call", runs)
    clock.advance(29.999)
    await step("call", runs)
    clock.advance(0.001)
    await step("call", runs)
    await step("force_close")
    for _ in range(5):
        await step("call", fails)
    await step("snapshot")
    await step("reset")
    for _ in range(3):
        await step("call", fails)
    await step("force_close", 60)
    await step("call", runs)
    clock.advance(60)
    await step("call", runs)
    await step("metrics_only")
    for _ in range(3):
        await step("call", fails)
    await step("snapshot")
    await step("metrics_only", 5)
    clock.advance(5)
    await step("call", runs)
    await step("snapshot")
    await step("reset")
    await step("snapshot")
    return log


def test_operator_orders(target: str, clock: ManualClock) -> None:
    """force_open / force_close / metrics_only / reset, with and without a duration: the
    aio breaker answers, rejects, times out orders and hooks transitions exactly as a
    sync breaker does in the same scenario (run on an embedded store of its own)."""
    settings = {"failure_threshold": 2, "recovery_timeout": 10}
    sync_clock = ManualClock()
    sync_seen: list[Transition] = []
    sync_store = redbreaker.connect("memory://", clock=sync_clock)
    try:
        synchronous = redbreaker.Breaker(
            NAME, store=sync_store, on_transition=sync_seen.append, **settings
        )

        async def sync_act(name: str, *args: object) -> object:
            return getattr(synchronous, name)(*args)

        expected = run(lambda: _orders_scenario(sync_act, sync_clock))
    finally:
        sync_store.close()

    async def main() -> tuple[list[tuple[object, ...]], list[Transition]]:
        async with connect(target, clock=clock) as store:
            seen: list[Transition] = []
            breaker = make(store, seen=seen, **settings)

            async def act(name: str, *args: object) -> object:
                return await getattr(breaker, name)(*args)

            log = await _orders_scenario(act, clock)
            with pytest.raises(ConfigError):
                await breaker.force_open(0)
            return log, seen

    log, seen = run(main)
    assert log == expected
    assert moves(seen) == moves(sync_seen)
    assert log[:2] == [
        ("force_open", State.FORCED_OPEN),
        ("call", "rejected", "forced_open", None),
    ]
    assert ("call", "rejected", "forced_open", 30.0) in log
    assert ("metrics_only", State.METRICS_ONLY) in log
    assert "would_trip:consecutive_failures" in {t.reason for t in seen}
    assert log[-1][0] == "snapshot"
    assert log[-1][1][:2] == (CLOSED, 0)  # type: ignore[index]


def test_config_errors_at_construction(clock: ManualClock) -> None:
    """A sync Store (or a sync client) given to the aio driver, an aio store given to the
    sync driver, unknown or bad settings, a bad name, a bad URL: ConfigError at once."""
    sync_store = redbreaker.connect("memory://", clock=clock)
    try:
        with pytest.raises(ConfigError) as bad_store:
            aio.Breaker(NAME, store=sync_store)  # type: ignore[arg-type]
        assert bad_store.value.field == "store"
        client = redis.Redis()
        with pytest.raises(ConfigError) as sync_client:
            aio.connect(client)  # type: ignore[arg-type]
        assert sync_client.value.field == "target"
        client.close()
    finally:
        sync_store.close()

    async def main() -> None:
        async with aio.connect("memory://", clock=clock) as store:
            with pytest.raises(ConfigError) as unknown:
                aio.Breaker(NAME, store=store, failure_treshold=3)  # type: ignore[call-arg]
            assert unknown.value.field == "failure_treshold"
            with pytest.raises(ConfigError) as bad_value:
                aio.Breaker(NAME, store=store, half_open_max_calls=0)
            assert bad_value.value.field == "half_open_max_calls"
            with pytest.raises(ConfigError):
                aio.Breaker("bad{name}", store=store)
            with pytest.raises(ConfigError):
                aio.Breaker(NAME, store=store, on_transition=[42])  # type: ignore[list-item]
            with pytest.raises(ConfigError):
                redbreaker.Breaker(NAME, store=store)  # type: ignore[arg-type]
            breaker = aio.Breaker(NAME, store=store)
            with pytest.raises(ConfigError) as bad_guard:
                breaker.guard(max_atempts=3)  # type: ignore[call-arg]
            assert bad_guard.value.field == "max_atempts"
            assert isinstance(bad_guard.value, ValueError)
        with pytest.raises(ConfigError):
            aio.connect("bogus://x")
        with pytest.raises(ConfigError):
            aio.connect("memory://", prefix=":bad")

    run(main)


def test_transitions_stream_and_breaker_names(target: str, clock: ManualClock) -> None:
    """store.transitions() yields the transitions published after it subscribed;
    breaker_names() lists the breakers under the prefix."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=1)
            async with store.transitions() as events:
                await fail_times(breaker, 1)
                await breaker.reset()
                got = [await asyncio.wait_for(events.__anext__(), 5) for _ in range(2)]
            assert [(t.name, t.previous, t.current) for t in got] == [
                (NAME, CLOSED, OPEN),
                (NAME, OPEN, CLOSED),
            ]
            await make(store, "other").call(ok)
            assert await store.breaker_names() == sorted([NAME, "other"])

    run(main)


# ============================================================================ 2. semantics


def test_trips_at_threshold_and_rejects_with_retry_after(target: str, clock: ManualClock) -> None:
    """failure_threshold=3: closed after 2 failures, open on the 3rd (one hook); while
    open the function never runs and retry_after counts down to the deadline."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            seen: list[Transition] = []
            breaker = make(store, "payments", seen=seen, failure_threshold=3, recovery_timeout=10)
            await fail_times(breaker, 2)
            snap = await breaker.snapshot()
            assert (snap.state, snap.consecutive_failures, seen) == (CLOSED, 2, [])
            await fail_times(breaker, 1)
            assert moves(seen) == [(CLOSED, OPEN, "consecutive_failures")]
            ran: list[int] = []
            for waited, left in ((0, 10.0), (4, 6.0), (5.5, 0.5)):
                clock.advance(waited)
                with pytest.raises(CircuitOpenError) as info:
                    await breaker.call(ran.append, 1)
                assert (info.value.name, info.value.state) == ("payments", "open")
                assert info.value.retry_after == pytest.approx(left)
            assert ran == []

    run(main)


def test_round_trips_and_the_local_rejection_cache(
    redis_server: RedisServer, redis_url: str, clock: ManualClock
) -> None:
    """On a real server (INFO commandstats): a healthy strict call is 1 FCALL, a failure
    2, the first rejection 1 and the next 100 rejections 0; after max_staleness a
    rejecting process asks Redis once again."""

    async def main() -> dict[str, int]:
        async with aio.connect(redis_url, clock=clock) as store:
            breaker = make(store, failure_threshold=1, recovery_timeout=30, max_staleness=1)
            await make(store, "warm-up").snapshot()  # the library is loaded
            costs: dict[str, int] = {}

            async def cost(label: str, action: Callable[[], Coroutine[Any, Any, Any]]) -> None:
                redis_server.reset_stats()
                with contextlib.suppress(DownError, CircuitOpenError):
                    await action()
                stats = redis_server.commandstats()
                costs[label] = sum(stats.get(c, 0) for c in ROUND_TRIPS)

            async def hundred_rejections() -> None:
                for _ in range(100):
                    with pytest.raises(CircuitOpenError):
                        await breaker.call(ok)

            await cost("success", lambda: breaker.call(ok))
            await cost("failure", lambda: breaker.call(fail))
            await cost("first_rejection", lambda: breaker.call(ok))
            await cost("next_100_rejections", hundred_rejections)
            clock.advance(1)
            await cost("after_max_staleness", lambda: breaker.call(ok))
            return costs

    costs = run(main)
    figure(test="round_trips", **costs)
    assert costs == {
        "success": 1,
        "failure": 2,
        "first_rejection": 1,
        "next_100_rejections": 0,
        "after_max_staleness": 1,
    }


def test_half_open_admits_exactly_max_calls_probes(target: str, clock: ManualClock) -> None:
    """half_open_max_calls=2 admits two probes; the third is rejected as half_open with
    retry_after 50 ms; a released probe frees its slot."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(
                store, failure_threshold=1, recovery_timeout=10, half_open_max_calls=2,
                probe_lease=5,
            )  # fmt: skip
            await fail_times(breaker, 1)
            clock.advance(10)
            first, second = await breaker.acquire(), await breaker.acquire()
            assert (first.is_probe, second.is_probe) == (True, True)
            err = await rejected(breaker)
            assert (err.state, err.retry_after) == ("half_open", 0.05)
            assert (await breaker.snapshot()).probes_in_flight == 2
            await first.release()
            third = await breaker.acquire()
            assert third.is_probe
            await second.release()
            await third.release()

    run(main)


def test_probe_success_closes_and_probe_failure_reopens(target: str, clock: ManualClock) -> None:
    """A failed probe re-opens (probe_failed, backoff grows), a later successful one
    closes; hooks see every step once."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            seen: list[Transition] = []
            breaker = make(
                store, seen=seen, failure_threshold=1, recovery_timeout=10, recovery_backoff=2
            )
            await fail_times(breaker, 1)
            clock.advance(10)
            await fail_times(breaker, 1)  # the probe fails
            err = await rejected(breaker)
            assert (err.state, err.retry_after) == ("open", 20.0)
            clock.advance(20)
            assert await breaker.call(ok) == "ok"
            snap = await breaker.snapshot()
            assert (snap.state, snap.consecutive_opens, snap.probes_in_flight) == (CLOSED, 0, 0)
            assert moves(seen) == [
                (CLOSED, OPEN, "consecutive_failures"),
                (OPEN, HALF_OPEN, "recovery_timeout_elapsed"),
                (HALF_OPEN, OPEN, "probe_failed"),
                (OPEN, HALF_OPEN, "recovery_timeout_elapsed"),
                (HALF_OPEN, CLOSED, "probes_succeeded"),
            ]

    run(main)


def test_classification(target: str, clock: ManualClock) -> None:
    """record_on, ignore_on (wins) and failure_result decide as in the sync driver; the
    function's own exceptions pass through unchanged."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(
                store, failure_threshold=2, record_on=ConnectionError,
                ignore_on=(ConnectionResetError,), failure_result=lambda r: r == 503,
            )  # fmt: skip
            error = ValueError("bad input")

            async def raises(exc: BaseException) -> None:
                raise exc

            with pytest.raises(ValueError, match="bad input") as info:
                await breaker.call(raises, error)
            assert info.value is error
            with pytest.raises(ConnectionResetError):
                await breaker.call(raises, ConnectionResetError("reset"))
            snap = await breaker.snapshot()
            # Neither is recorded: an ignored call counts as no call at all.
            assert (snap.consecutive_failures, snap.window_calls, snap.window_failures) == (
                0, 0, 0,
            )  # fmt: skip
            assert await breaker.call(ok, 200) == 200
            assert await breaker.call(ok, 503) == 503
            assert (await breaker.snapshot()).consecutive_failures == 1
            assert await breaker.call(ok, 503) == 503
            assert (await breaker.snapshot()).state is OPEN

    run(main)


def test_cancelled_closed_call_counts_nothing(target: str, clock: ManualClock) -> None:
    """A cancelled task, a function raising CancelledError itself and a permit failed
    with a CancelledError count no failure and keep the streak."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=3)
            await fail_times(breaker, 2)
            started = asyncio.Event()

            async def hangs() -> None:
                started.set()
                await asyncio.sleep(60)

            task = asyncio.create_task(breaker.call(hangs))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            async def cancels_itself() -> None:
                raise asyncio.CancelledError

            with pytest.raises(asyncio.CancelledError):
                await breaker.call(cancels_itself)
            await (await breaker.acquire()).failure(asyncio.CancelledError())
            snap = await breaker.snapshot()
            assert (snap.state, snap.consecutive_failures, snap.window_failures) == (
                CLOSED, 2, 2,
            )  # fmt: skip

    run(main)


def test_hooks_fire_only_in_the_process_that_made_the_transition(
    target: str, clock: ManualClock
) -> None:
    """Three "processes" (two aio stores and a sync store on the same data) each hold the
    breaker with a hook: every transition is hooked exactly once, by the one that made it."""

    async def main() -> None:
        async with (
            connect(target, clock=clock) as here_store,
            connect(target, clock=clock) as there_store,
        ):
            sync_store = connect_sync(target, clock=clock)
            try:
                hooked: dict[str, list[Transition]] = {"here": [], "there": [], "sync": []}
                settings = {"failure_threshold": 2, "recovery_timeout": 10}
                here = make(here_store, seen=hooked["here"], **settings)
                there = make(there_store, seen=hooked["there"], **settings)
                sync = redbreaker.Breaker(
                    NAME, store=sync_store, on_transition=hooked["sync"].append, **settings
                )
                await fail_times(here, 1)
                await fail_times(there, 1)  # there trips it
                assert (await rejected(here)).state == "open"
                with pytest.raises(CircuitOpenError):
                    sync.call(lambda: None)
                clock.advance(10)
                assert sync.call(lambda: "probe") == "probe"  # sync closes it
                await here.force_open()
                await there.reset()
            finally:
                sync_store.close()
            assert moves(hooked["here"]) == [(CLOSED, State.FORCED_OPEN, "operator:force_open")]
            assert moves(hooked["there"]) == [
                (CLOSED, OPEN, "consecutive_failures"),
                (State.FORCED_OPEN, CLOSED, "reset"),
            ]
            assert moves(hooked["sync"]) == [
                (OPEN, HALF_OPEN, "recovery_timeout_elapsed"),
                (HALF_OPEN, CLOSED, "probes_succeeded"),
            ]
            generations = sorted(t.generation for seen in hooked.values() for t in seen)
            assert generations == [2, 3, 4, 5, 6]

    run(main)


def test_sync_and_aio_breakers_of_one_name_are_one_breaker(target: str, clock: ManualClock) -> None:
    """A sync Breaker and an aio Breaker of one name on one Redis share counts, trips,
    rejections, probes and snapshots, whichever of them acts."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            sync_store = connect_sync(target, clock=clock)
            try:
                settings = {"failure_threshold": 3, "recovery_timeout": 10}
                asynchronous = make(store, **settings)
                synchronous = redbreaker.Breaker(NAME, store=sync_store, **settings)
                await fail_times(asynchronous, 2)
                with pytest.raises(DownError):
                    synchronous.call(lambda: (_ for _ in ()).throw(DownError("down")))
                assert await asynchronous.snapshot() == synchronous.snapshot()
                err = await rejected(asynchronous)  # tripped by the sync driver
                assert (err.state, err.retry_after) == ("open", 10.0)
                clock.advance(10)
                probe = await asynchronous.acquire()
                assert probe.is_probe
                with pytest.raises(CircuitOpenError) as busy:
                    synchronous.acquire()
                assert busy.value.state == "half_open"
                await probe.success()
                assert synchronous.state is CLOSED
                assert synchronous.call(lambda: "admitted") == "admitted"
                await fail_times(asynchronous, 3)  # tripped by the aio driver
                with pytest.raises(CircuitOpenError) as sync_rejected:
                    synchronous.call(lambda: "never")
                assert (sync_rejected.value.state, sync_rejected.value.retry_after) == (
                    "open", 10.0,
                )  # fmt: skip
                assert await asynchronous.snapshot() == synchronous.snapshot()
            finally:
                sync_store.close()

    run(main)


# ============================================================================ 3. cached


def test_cached_healthy_calls_make_no_round_trips(
    request: pytest.FixtureRequest, target: str, clock: ManualClock
) -> None:
    """A warm cached breaker admits 1,000 healthy calls without a round trip (the server
    counts no FCALL either); one flush sends them and the window holds exactly 1,002."""
    server: RedisServer | None = (
        request.getfixturevalue("redis_server") if "redis" in target else None
    )

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, consistency="cached")
            await breaker.call(ok)  # the feed starts
            await wait_until(lambda: store.feed_live, "the feed subscribed")
            await breaker.call(ok)  # a copy taken after the subscription
            trips = Trips(store)
            if server is not None:
                server.reset_stats()
            for _ in range(1000):
                assert await breaker.call(ok) == "ok"
            assert trips.take() == []
            if server is not None:
                stats = server.commandstats()
                assert sum(stats.get(c, 0) for c in ROUND_TRIPS) == 0, stats
            await breaker.flush()
            assert trips.take() == [("record", "flush")]
            await breaker.flush()  # nothing left: no round trip
            assert trips.take() == []
            snap = await make(store).snapshot()  # strict reader, nothing batched
            assert (snap.window_calls, snap.window_failures, snap.generation) == (1002, 0, 1)

    run(main)


def test_cached_trip_elsewhere_is_heard_on_the_feed_and_rejected_locally(target: str) -> None:
    """Real time: another store trips the breaker; this cached breaker's next calls are
    rejected (within 1 s) from the pushed event, without a round trip, and its hooks do
    not fire for a transition it did not make."""

    async def main() -> dict[str, Any]:
        async with connect(target) as here_store, connect(target) as there_store:
            mine: list[Transition] = []
            here = make(
                here_store, seen=mine, consistency="cached", failure_threshold=1,
                recovery_timeout=30, max_staleness=30,
            )  # fmt: skip
            there = make(there_store, failure_threshold=1, recovery_timeout=30)
            await here.call(ok)
            await wait_until(lambda: here_store.feed_live, "the feed subscribed")
            await here.call(ok)
            trips = Trips(here_store)
            assert await here.call(ok) == "ok"
            assert trips.take() == []

            tripped_at = time.monotonic()
            await fail_times(there, 1)
            admitted = 0
            while True:
                try:
                    await here.call(ok)
                except CircuitOpenError as exc:
                    rejection = exc
                    break
                admitted += 1
                assert time.monotonic() - tripped_at < 1.0, "the trip was never heard"
                await asyncio.sleep(0.0005)
            took = time.monotonic() - tripped_at
            heard_by = "redis" if any(s == "acquire" for s, _ in trips.take()) else "feed"
            assert rejection.state == "open"
            assert rejection.retry_after is not None
            assert 29.0 <= rejection.retry_after <= 30.0
            for _ in range(100):
                with pytest.raises(CircuitOpenError):
                    await here.call(ok)
            assert trips.take() == []  # rejected locally
            assert mine == []
            await here.flush()
            return {"ms": round(took * 1000, 2), "admitted": admitted, "by": heard_by}

    measured = run(main)
    figure(test="cached_trip_heard", backend=target.partition(":")[0], **measured)
    assert measured["admitted"] <= 1


def test_cached_successes_are_batched_and_exact_after_flush(
    target: str, clock: ManualClock
) -> None:
    """500 successes from cached breakers on two stores (flushes due by time on the way)
    plus 3 failures: after flush() the window holds exactly 503 calls and 3 failures,
    in far fewer round trips than calls."""

    async def main() -> None:
        async with connect(target, clock=clock) as one, connect(target, clock=clock) as two:
            first = make(one, consistency="cached", failure_threshold=100)
            second = make(two, consistency="cached", failure_threshold=100)
            trips_one, trips_two = Trips(one), Trips(two)
            made: Counter[str] = Counter()
            for i in range(500):
                breaker = first if i % 5 < 3 else second
                await breaker.call(ok)
                made["first" if breaker is first else "second"] += 1
                if i % 100 == 99:
                    clock.advance(0.15)  # past flush_interval, not past max_staleness
                if i in (150, 300, 450):
                    await fail_times(breaker, 1)
            await first.flush()
            await second.flush()
            snap = await make(one, failure_threshold=100).snapshot()
            assert made == {"first": 300, "second": 200}
            assert (snap.window_calls, snap.window_failures, snap.generation) == (503, 3, 1)
            assert snap.consecutive_failures == 0
            sent = len(trips_one.take()) + len(trips_two.take())
            assert sent <= 40, sent

    run(main)


# ============================================================================ 4. Redis down


@pytest.fixture
def doomed(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to be killed (``redis_server`` only for its
    check that a redis-server binary is there, and its skip or CI failure if not)."""
    with RedisServer() as server:
        yield server


def _library_error(exc: BaseException) -> None:
    """What reaches a caller during an outage is redbreaker's, never redis-py's."""
    assert not isinstance(exc, redis.RedisError), repr(exc)
    assert isinstance(exc, redbreaker.RedbreakerError), repr(exc)


@pytest.mark.redis_server
def test_store_down_allow_runs_the_call_unrecorded(doomed: RedisServer) -> None:
    """on_store_error="allow": with the server killed, calls run (results and the
    function's own errors pass through), permits are given, nothing is recorded or
    hooked."""

    async def main() -> None:
        events: list[redbreaker.StoreEvent] = []
        async with aio.connect(doomed.url, on_store_event=events.append) as store:
            seen: list[Transition] = []
            breaker = make(store, seen=seen, failure_threshold=1)
            assert await breaker.call(ok) == "ok"
            doomed.kill()
            for _ in range(5):
                assert await breaker.call(ok, "ran") == "ran"
                with pytest.raises(DownError):
                    await breaker.call(fail)
            async with breaker.acquire() as permit:
                assert not permit.is_probe
            await breaker.flush()
            with pytest.raises(StoreUnavailableError) as snap_error:
                await breaker.snapshot()
            _library_error(snap_error.value)
            assert seen == []
            assert [e.kind for e in events] == ["store_degraded"]

    run(main)


@pytest.mark.redis_server
def test_store_down_reject_raises_store_unavailable(doomed: RedisServer) -> None:
    """on_store_error="reject": StoreUnavailableError (a CircuitOpenError, state
    store_unavailable, the first one chained to redis-py's error); the function never
    runs; a guard's fallback hears reason store_unavailable after 0 attempts."""

    async def main() -> None:
        async with aio.connect(doomed.url) as store:
            breaker = make(store, on_store_error="reject")
            await breaker.call(ok)
            doomed.kill()
            ran: list[int] = []
            with pytest.raises(StoreUnavailableError) as first:
                await breaker.call(ran.append, 1)
            assert isinstance(first.value, CircuitOpenError)
            assert first.value.state == "store_unavailable"
            assert isinstance(first.value.__cause__, redis.ConnectionError)
            assert first.value.retry_after is not None
            assert 0 < first.value.retry_after <= 0.1
            with pytest.raises(CircuitOpenError) as second:
                await breaker.call(ran.append, 2)
            assert isinstance(second.value, StoreUnavailableError)
            outcome = await breaker.guard(fallback=lambda f: f).outcome(ok)
            failure = outcome.value
            assert isinstance(failure, Failure)
            assert (failure.reason, failure.attempts, outcome.degraded) == (
                "store_unavailable", 0, True,
            )  # fmt: skip
            assert ran == []

    run(main)


@pytest.mark.redis_server
def test_store_down_local_guards_with_a_process_breaker(doomed: RedisServer) -> None:
    """on_store_error="local": during the outage the process's own breaker (same
    config, embedded Redis) trips and rejects, its hook fires; once the server is back
    the shared breaker, which never saw those failures, decides again."""

    async def main() -> None:
        async with aio.connect(doomed.url) as store:
            seen: list[Transition] = []
            breaker = make(
                store, seen=seen, on_store_error="local", failure_threshold=2,
                recovery_timeout=30,
            )  # fmt: skip
            await breaker.call(ok)
            doomed.kill()
            await fail_times(breaker, 2)
            ran: list[int] = []
            with pytest.raises(CircuitOpenError) as local:
                await breaker.call(ran.append, 1)
            assert not isinstance(local.value, StoreUnavailableError)
            assert local.value.state == "open"
            assert ran == []
            assert moves(seen) == [(CLOSED, OPEN, "consecutive_failures")]
            doomed.start()  # empty: the shared breaker is gone, and comes back closed
            started = time.monotonic()
            while True:
                try:
                    assert await breaker.call(ok, "shared") == "shared"
                    break
                except CircuitOpenError:
                    assert time.monotonic() - started < 8, "the shared breaker never answered"
                    await asyncio.sleep(0.05)
            snap = await breaker.snapshot()
            assert (snap.state, snap.consecutive_failures) == (CLOSED, 0)

    run(main)


@pytest.mark.redis_server
@pytest.mark.parametrize("policy", ["allow", "reject", "local"])
def test_no_raw_redis_error_reaches_the_caller(doomed: RedisServer, policy: str) -> None:
    """Every entry point, under every policy, with the server killed: whatever a caller
    gets is a redbreaker error (or the function's own), never a redis-py exception."""

    async def main() -> list[str]:
        async with aio.connect(doomed.url) as store:
            breaker = make(store, on_store_error=policy)
            cached = make(store, "cached", consistency="cached", on_store_error=policy)
            await breaker.call(ok)
            await cached.call(ok)
            doomed.kill()
            raised: list[str] = []

            async def attempt(action: Callable[[], Coroutine[Any, Any, Any]]) -> None:
                try:
                    await action()
                except DownError:
                    raised.append("DownError")
                except Exception as exc:
                    _library_error(exc)
                    raised.append(type(exc).__name__)

            async def with_block() -> None:
                async with breaker.acquire():
                    pass

            async def stream() -> None:
                async with store.transitions():
                    pass

            for _ in range(3):
                for b in (breaker, cached):
                    await attempt(lambda b=b: b.call(ok))
                    await attempt(lambda b=b: b.call(fail))
                    await attempt(
                        lambda b=b: b.guard(retry_on=DownError, backoff_base=0.001).call(fail)
                    )
                    await attempt(lambda b=b: b.guard(fallback=lambda f: f).call(fail))
                await attempt(with_block)
                await attempt(breaker.snapshot)
                await attempt(breaker.force_open)
                await attempt(breaker.reset)
                await attempt(cached.flush)
                await attempt(store.breaker_names)
                await attempt(stream)
            return raised

    raised = run(main)
    figure(test="store_down_errors", policy=policy, **Counter(raised))
    assert "StoreUnavailableError" in raised


# ============================================================================ 5. the guard


def test_attempt_timeout_cancels_the_attempt_within_budget() -> None:
    """attempt_timeout=0.1 on a call that would take 5 s: AttemptTimeoutError (a
    TimeoutError) within budget + margin, the coroutine was cancelled (its finally ran
    before the caller got control back), and the breaker counted one failure."""

    async def main() -> dict[str, float]:
        async with aio.connect("memory://") as store:
            breaker = make(store, failure_threshold=10)
            await breaker.call(ok)  # the embedded Redis is warm
            state = {"finally": False, "cancelled": False}

            async def slow() -> str:
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    state["cancelled"] = True
                    raise
                finally:
                    state["finally"] = True
                return "late"

            guard = breaker.guard(attempt_timeout=0.1)
            started = time.monotonic()
            with pytest.raises(AttemptTimeoutError) as info:
                await guard.call(slow)
            took = time.monotonic() - started
            assert state == {"finally": True, "cancelled": True}
            assert isinstance(info.value, TimeoutError)
            assert info.value.budget == pytest.approx(0.1)
            snap = await breaker.snapshot()
            assert (snap.window_failures, snap.consecutive_failures) == (1, 1)
            return {"took_ms": round(took * 1000, 1)}

    measured = run(main)
    figure(test="attempt_timeout", budget_ms=100, **measured)
    assert 0.1 <= measured["took_ms"] / 1000 < 0.1 + 0.15


def test_a_timed_out_attempt_counts_as_a_slow_failure() -> None:
    """As in the sync guard (and README: "A timeout counts as a failure and a slow call
    for the breaker"): a timed-out attempt is recorded as a failure *and* a slow call,
    whatever record_on and slow_call_duration say, with reason "timeout"."""

    async def main() -> None:
        async with aio.connect("memory://") as store:
            breaker = make(store, record_on=ValueError, slow_call_duration=10)
            guard = breaker.guard(attempt_timeout=0.05, fallback=fallback_value("stale"))
            outcome = await guard.outcome(asyncio.sleep, 5)
            assert outcome.value == "stale"
            assert outcome.failure is not None
            assert (outcome.failure.reason, outcome.failure.attempts) == ("timeout", 1)
            assert isinstance(outcome.failure.exception, AttemptTimeoutError)
            snap = await breaker.snapshot()
            assert (snap.window_calls, snap.window_failures, snap.window_slow_calls) == (1, 1, 1)

    run(main)


def test_a_timed_out_probe_fails_and_frees_its_slot_at_once(clock: ManualClock) -> None:
    """Unlike the sync guard's abandoned attempts, a timed-out aio probe is cancelled: it
    re-opens the breaker (probe_failed) and its slot is free at once (no lease kept)."""

    async def main() -> None:
        async with aio.connect("memory://", clock=clock) as store:
            breaker = make(store, failure_threshold=1, recovery_timeout=5, probe_lease=30)
            await fail_times(breaker, 1)
            clock.advance(5)
            ended: list[bool] = []

            async def hangs() -> None:
                try:
                    await asyncio.sleep(10)
                finally:
                    ended.append(True)

            with pytest.raises(AttemptTimeoutError):
                await breaker.guard(attempt_timeout=0.05).call(hangs)
            assert ended == [True]
            snap = await breaker.snapshot()
            assert (snap.state, snap.probes_in_flight, snap.last_reason) == (
                OPEN, 0, "probe_failed",
            )  # fmt: skip

    run(main)


def test_a_timed_out_attempt_says_it_was_cancelled_not_abandoned() -> None:
    """The aio guard cancels a timed-out attempt (its finally has run when the caller
    gets the error); the error must not tell the operator that it is "still running,
    abandoned", which is the sync guard's thread story."""

    async def main() -> AttemptTimeoutError:
        async with aio.connect("memory://") as store:
            with pytest.raises(AttemptTimeoutError) as info:
                await make(store).guard(attempt_timeout=0.02).call(asyncio.sleep, 5)
            return info.value

    error = run(main)
    assert "still running" not in str(error), str(error)
    assert "abandoned" not in str(error), str(error)


def test_retry_on_with_max_attempts(target: str, clock: ManualClock) -> None:
    """Only what retry_on names is retried, up to max_attempts; the very last exception
    is raised; the breaker sees one outcome per logical call; every retry is logged."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=10)
            infos: list[AttemptInfo] = []
            guard = breaker.guard(retry_on=ConnectionError, max_attempts=4, on_attempt=infos.append)
            calls: list[BaseException | str] = []

            def script(*steps: BaseException | str) -> Callable[[], Coroutine[Any, Any, str]]:
                async def dependency() -> str:
                    step = steps[min(len(calls), len(steps) - 1)]
                    calls.append(step)
                    if isinstance(step, BaseException):
                        raise step
                    return step

                return dependency

            assert await guard.call(script(DownError("1"), DownError("2"), "ok")) == "ok"
            assert len(calls) == 3
            snap = await breaker.snapshot()
            assert (snap.window_calls, snap.window_failures) == (1, 0)

            calls.clear()
            with pytest.raises(DownError) as exhausted:
                await guard.call(script(*(DownError(str(i)) for i in range(9))))
            assert len(calls) == 4
            assert exhausted.value is calls[-1]
            snap = await breaker.snapshot()
            assert (snap.window_calls, snap.window_failures) == (2, 1)

            calls.clear()
            with pytest.raises(ValueError, match="not retried"):
                await guard.call(script(ValueError("not retried"), "ok"))
            assert len(calls) == 1
            assert [(i.attempt, i.max_attempts) for i in infos][-1] == (1, 4)

    run(main)


class RecordingClock(ManualClock):
    """A ManualClock that notes when (server ms) each of its sleeps ended."""

    def __init__(self) -> None:
        super().__init__()
        self.sleep_ends_ms: list[int] = []

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.sleep_ends_ms.append(self.server_ms())


async def _one_retry_schedule(rng: random.Random) -> None:
    """One random retry schedule on a manual clock whose sleeps are noted."""
    clock = RecordingClock()
    async with aio.connect("memory://", clock=clock) as store:
        deadline_ms = rng.randint(50, 3000)
        durations = [rng.randint(0, 800) for _ in range(12)]
        max_attempts = rng.randint(1, 10)
        starts: list[int] = []

        async def dependency() -> None:
            starts.append(clock.server_ms())
            clock.advance(durations[len(starts) - 1] / 1000)
            raise DownError(f"attempt {len(starts)}")

        base = rng.randint(1, 500) / 1000
        guard = make(store, failure_threshold=1000).guard(
            retry_on=DownError, max_attempts=max_attempts, deadline=deadline_ms / 1000,
            backoff_base=base, backoff_max=base * rng.randint(1, 8),
            fallback=lambda failure: failure,
        )  # fmt: skip
        begun = clock.server_ms()
        outcome = await guard.outcome(dependency)
        end_ms = begun + deadline_ms
        assert all(t <= end_ms for t in clock.sleep_ends_ms), (clock.sleep_ends_ms, end_ms)
        assert all(t < end_ms for t in starts), (starts, end_ms)
        assert 1 <= len(starts) <= max_attempts
        assert outcome.degraded
        assert outcome.failure is not None
        assert str(outcome.failure.exception) == f"attempt {len(starts)}"


def test_deadline_is_never_overshot_on_a_manual_clock() -> None:
    """100 random retry schedules: no backoff sleep ends past the deadline, no attempt
    starts at or after it, at most max_attempts run, and the last error is raised."""
    rng = random.Random(20260601)

    async def main() -> None:
        for _ in range(100):
            await _one_retry_schedule(rng)

    run(main)


def test_deadline_is_never_overshot_in_real_time() -> None:
    """Real time: deadline=0.3 s, attempts of 80 ms that fail, retried with backoff: the
    call ends within the deadline (+ margin) and no attempt starts after it; a last
    attempt that would run past it is cut at the deadline."""

    async def main() -> dict[str, Any]:
        async with aio.connect("memory://") as store:
            breaker = make(store, failure_threshold=100)
            await breaker.call(ok)
            starts: list[float] = []

            async def dependency() -> None:
                starts.append(time.monotonic())
                await asyncio.sleep(0.08)
                raise DownError("down")

            guard = breaker.guard(
                retry_on=(DownError, AttemptTimeoutError), max_attempts=50, deadline=0.3,
                backoff_base=0.01, backoff_max=0.04, fallback=lambda f: f,
            )  # fmt: skip
            begun = time.monotonic()
            outcome = await guard.outcome(dependency)
            took = time.monotonic() - begun
            assert outcome.degraded
            assert outcome.failure is not None
            assert outcome.failure.reason == "retries_exhausted"
            assert all(s - begun < 0.3 for s in starts)
            return {"took_ms": round(took * 1000, 1), "attempts": len(starts)}

    measured = run(main)
    figure(test="deadline_real_time", deadline_ms=300, **measured)
    assert measured["took_ms"] <= 300 + 100  # scheduling jitter of a busy machine
    assert measured["attempts"] >= 2


def test_fallback_plain_and_coroutine(target: str, clock: ManualClock) -> None:
    """A plain or a coroutine fallback answers with Outcome.degraded and a Failure whose
    reason says why: error, retries_exhausted, circuit_open; counts by reason."""

    async def main() -> None:
        async with connect(target, clock=clock) as store:
            breaker = make(store, failure_threshold=2, recovery_timeout=10)

            async def coroutine_fallback(failure: Failure) -> str:
                await asyncio.sleep(0)
                return f"async:{failure.reason}"

            plain = breaker.guard(fallback=lambda f: f"plain:{f.reason}")
            coro = breaker.guard(fallback=coroutine_fallback, retry_on=DownError, max_attempts=2)
            out = await plain.outcome(fail)
            assert (out.value, out.degraded, out.attempts) == ("plain:error", True, 1)
            assert out.failure is not None
            assert isinstance(out.failure.exception, DownError)
            assert (out.failure.breaker, out.failure.attempts) == (NAME, 1)
            out = await coro.outcome(fail)  # the second failure trips the breaker
            assert (out.value, out.degraded, out.attempts) == ("async:retries_exhausted", True, 2)
            assert await coro.call(ok) == "async:circuit_open"
            out = await plain.outcome(ok)
            assert out.failure is not None
            assert (out.value, out.failure.reason, out.failure.attempts) == (
                "plain:circuit_open", "circuit_open", 0,
            )  # fmt: skip
            assert isinstance(out.failure.exception, CircuitOpenError)
            assert plain.degraded_counts == {"error": 1, "circuit_open": 1}
            assert coro.degraded_counts == {"retries_exhausted": 1, "circuit_open": 1}
            clock.advance(10)
            assert await plain.outcome(ok) == Outcome("ok", False, None, 1)

    run(main)


def test_coroutine_fallback_exception_is_chained_to_the_original() -> None:
    """An exception raised by the fallback propagates chained to the original failure
    (README), for a coroutine fallback as for a plain one."""

    async def main() -> None:
        async with aio.connect("memory://") as store:
            breaker = make(store)
            original = DownError("original")

            async def dependency() -> None:
                raise original

            def plain(failure: Failure) -> None:
                raise RuntimeError("plain fallback failed")

            async def coroutine(failure: Failure) -> None:
                raise RuntimeError("coroutine fallback failed")

            with pytest.raises(RuntimeError) as from_plain:
                await breaker.guard(fallback=plain).call(dependency)
            assert from_plain.value.__cause__ is original
            with pytest.raises(RuntimeError) as from_coroutine:
                await breaker.guard(fallback=coroutine).call(dependency)
            assert from_coroutine.value.__cause__ is original

    run(main)


def test_guard_decorator_keeps_the_signature_and_has_outcome(clock: ManualClock) -> None:
    """@guard on an async def keeps name, doc and signature, passes arguments, has
    .outcome(), and binds as a method."""

    async def main() -> None:
        async with aio.connect("memory://", clock=clock) as store:
            guard = make(store).guard(fallback=fallback_value("fallback"))

            @guard
            async def fetch(key: str, *, suffix: str = "") -> str:
                """Fetch a key."""
                await asyncio.sleep(0)
                return key + suffix

            def reference(key: str, *, suffix: str = "") -> str: ...

            assert fetch.__name__ == "fetch"
            assert fetch.__doc__ == "Fetch a key."
            assert inspect.signature(fetch) == inspect.signature(reference)
            assert await fetch("k", suffix="!") == "k!"
            assert await fetch.outcome("x") == Outcome("x", False, None, 1)

            class Client:
                def __init__(self, name: str) -> None:
                    self.name = name

                @guard
                async def get(self, key: str) -> str:
                    return f"{self.name}:{key}"

            assert await Client("a").get("k") == "a:k"
            assert await Client("b").get.outcome("k") == Outcome("b:k", False, None, 1)

            def plain() -> None: ...

            with pytest.raises(TypeError):
                guard(plain)  # type: ignore[arg-type]

    run(main)


def test_guarded_coroutine_function_can_be_decorated_again(clock: ManualClock) -> None:
    """A function decorated by an aio guard is still a coroutine function: another
    breaker or guard of the same library can decorate it (on every supported Python,
    not only on 3.12+ where inspect.markcoroutinefunction exists)."""

    async def main() -> None:
        async with aio.connect("memory://", clock=clock) as store:
            inner, outer = make(store, "inner"), make(store, "outer")

            @inner.guard()
            async def fetch(key: str) -> str:
                return key

            assert inspect.iscoroutinefunction(fetch) or asyncio.iscoroutinefunction(fetch)
            assert await outer(fetch)("a") == "a"
            assert await outer.guard()(fetch)("b") == "b"

    run(main)


def test_a_plain_function_given_to_the_guard_is_never_counted_as_a_failure(
    clock: ManualClock,
) -> None:
    """breaker.call(plain_fn) returns its result; the guard must either do the same or
    refuse it loudly (a TypeError before anything is counted, as the sync guard refuses
    coroutine functions). It must never count the programming error as the dependency's
    failure (tripping the breaker) nor let the fallback hide it."""

    async def main() -> None:
        async with aio.connect("memory://", clock=clock) as store:
            breaker = make(store, failure_threshold=1)
            guard = breaker.guard(fallback=fallback_value("fallback"))
            try:
                value = await guard.call(lambda: 42)  # type: ignore[arg-type,return-value]
            except TypeError:
                pass  # refused loudly: fine
            else:
                assert value == 42, "the fallback hid a programming error"
            snap = await breaker.snapshot()
            assert (snap.state, snap.window_failures) == (CLOSED, 0)

    run(main)


@pytest.mark.parametrize(
    "setting", ["on_transition", "failure_result", "record_on", "retry_result"]
)
def test_coroutine_functions_as_hooks_or_predicates_are_never_silently_misread(
    clock: ManualClock, setting: str
) -> None:
    """In an asyncio program a hook or predicate is naturally an ``async def``. The aio
    driver must either await it or refuse it at construction (ConfigError/TypeError);
    never call it and drop the coroutine (a hook that never runs), nor read the coroutine
    object as a truthy answer (every result a failure, every exception recorded, every
    result retried)."""
    ran: list[object] = []

    async def answer(value: object) -> bool:
        ran.append(value)
        return False

    async def main() -> None:
        async with aio.connect("memory://", clock=clock) as store:
            calls = 0

            async def dependency() -> int:
                nonlocal calls
                calls += 1
                if setting == "record_on":
                    raise DownError("not recorded: the predicate says no")
                return 1

            try:
                if setting == "retry_result":
                    breaker = make(store, failure_threshold=1)
                    guard = breaker.guard(retry_result=answer, max_attempts=3)
                else:
                    settings: dict[str, Any] = {"failure_threshold": 1, setting: answer}
                    breaker = aio.Breaker(NAME, store=store, **settings)
            except (ConfigError, TypeError):
                return  # refused loudly: fine
            if setting == "on_transition":
                await fail_times(breaker, 1)
                for _ in range(10):
                    await asyncio.sleep(0)  # a hook may run as a task of its own
                assert [t.current for t in ran] == [OPEN]  # type: ignore[attr-defined]
                return
            if setting == "retry_result":
                assert await guard.call(dependency) == 1
                assert calls == 1, "retried on a coroutine object's truthiness"
            elif setting == "record_on":
                with pytest.raises(DownError):
                    await breaker.call(dependency)
            else:
                assert await breaker.call(dependency) == 1
            snap = await breaker.snapshot()
            assert (snap.state, snap.window_failures) == (CLOSED, 0), snap
            assert ran, "the predicate was never awaited"

    with warnings.catch_warnings():
        # The failure to report is the assertion's, not the un-awaited coroutine's.
        warnings.simplefilter("ignore", RuntimeWarning)
        run(main)


def test_the_dependencys_own_timeout_error_is_not_an_attempt_timeout() -> None:
    """A TimeoutError the dependency raises itself passes through unchanged (not an
    AttemptTimeoutError), is not retried as one, and is classified like any exception."""

    async def main() -> None:
        async with aio.connect("memory://") as store:
            breaker = make(store, failure_threshold=10)
            own = TimeoutError("the dependency's own")
            calls = 0

            async def dependency() -> None:
                nonlocal calls
                calls += 1
                raise own

            guard = breaker.guard(attempt_timeout=5, retry_on=AttemptTimeoutError)
            started = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                await guard.call(dependency)
            assert time.monotonic() - started < 1
            assert info.value is own
            assert not isinstance(info.value, AttemptTimeoutError)
            assert calls == 1
            assert (await breaker.snapshot()).window_failures == 1
            outcome = await breaker.guard(attempt_timeout=5, fallback=lambda f: f).outcome(
                dependency
            )
            assert outcome.failure is not None
            assert outcome.failure.reason == "error"

    run(main)


# ============================================================================ 6. cancellation


CANCEL_POINTS = [
    "call",  # while the probe's function runs
    "async_with",  # inside `async with breaker.acquire()`
    "guard",  # inside a guard with an attempt timeout and a fallback
    "outer_timeout",  # asyncio.timeout around breaker.call
    "acquire_reply_unread",  # the script granted the probe, the reply was not read yet
    "recording",  # while the probe's success is being sent
]


async def _probe_in(where: str, breaker: aio.Breaker, store: aio.Store) -> asyncio.Task[Any]:
    """A task holding the breaker's one probe slot at ``where``, once it holds it."""
    holding = asyncio.Event()

    async def hangs() -> str:
        holding.set()
        await asyncio.sleep(60)
        return "never"

    if where in ("acquire_reply_unread", "recording"):
        real = store._call

        async def stalls(script: str, keys: Any, argv: Any) -> Any:
            if where == "recording" and script == "record" and not holding.is_set():
                holding.set()
                await asyncio.sleep(60)
            reply = await real(script, keys, argv)
            if where == "acquire_reply_unread" and script == "acquire" and not holding.is_set():
                holding.set()
                await asyncio.sleep(60)
            return reply

        store._call = stalls  # type: ignore[method-assign]
        task = asyncio.create_task(breaker.call(ok))
    elif where == "call":
        task = asyncio.create_task(breaker.call(hangs))
    elif where == "async_with":

        async def block() -> None:
            async with breaker.acquire() as permit:
                assert permit.is_probe
                await hangs()

        task = asyncio.create_task(block())
    elif where == "guard":
        guard = breaker.guard(attempt_timeout=30, fallback=fallback_value("hidden"))
        task = asyncio.create_task(guard.call(hangs))
    else:

        async def within_timeout() -> None:
            async with asyncio.timeout(0.05):
                await breaker.call(hangs)

        task = asyncio.create_task(within_timeout())
    await asyncio.wait_for(holding.wait(), 5)
    return task


async def _next_probe(breaker: aio.Breaker, limit: float = 5.0) -> tuple[aio.Permit, int]:
    """Ask until a probe is admitted; return it and the rejections meanwhile."""
    started = time.monotonic()
    refused = 0
    while True:
        try:
            return await breaker.acquire(), refused
        except CircuitOpenError as exc:
            states = {exc.state}
        assert states == {"half_open"}
        refused += 1
        assert time.monotonic() - started < limit, "the cancelled probe kept its slot"
        await asyncio.sleep(0.0005)


@pytest.mark.parametrize("where", CANCEL_POINTS)
def test_a_cancelled_probe_frees_its_slot_at_once(
    target: str, clock: ManualClock, where: str
) -> None:
    """half_open_max_calls=1, probe_lease=30 s and time standing still (so only a release
    can free the slot): a probe cancelled anywhere frees its slot at once, the next probe
    is admitted, the CancelledError reaches the caller (no fallback hides it) and is not
    counted as a failure (no re-open)."""

    async def main() -> float:
        async with connect(target, clock=clock) as store:
            seen: list[Transition] = []
            breaker = make(
                store, seen=seen, failure_threshold=1, recovery_timeout=5,
                half_open_max_calls=1, probe_lease=30,
            )  # fmt: skip
            await fail_times(breaker, 1)
            clock.advance(5)
            task = await _probe_in(where, breaker, store)
            assert (await rejected(breaker)).state == "half_open"
            cancelled_at = time.perf_counter()
            if where == "outer_timeout":
                with pytest.raises(TimeoutError):
                    await task
                cancelled_at = time.perf_counter()  # the timeout cancelled it just now
            else:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            probe, _ = await _next_probe(breaker)
            latency = time.perf_counter() - cancelled_at
            assert probe.is_probe
            snap = await breaker.snapshot()
            assert (snap.state, snap.consecutive_opens, snap.probes_in_flight) == (HALF_OPEN, 1, 1)
            assert "probe_failed" not in {t.reason for t in seen}, moves(seen)
            await probe.success()
            assert (await breaker.snapshot()).state is CLOSED
            return latency

    latency = run(main)
    backend = target.partition(":")[0]
    figure(test="cancel_to_next_probe", backend=backend, where=where, ms=round(latency * 1000, 2))
    assert latency < 1.0


@pytest.mark.redis_server
def test_a_cancelled_probe_frees_its_slot_in_real_time(redis_url: str) -> None:
    """Real clock and server: a probe with a 30 s lease, cancelled mid-flight; the next
    probe is admitted milliseconds later, not after the lease; the breaker closes."""

    async def main() -> dict[str, Any]:
        async with aio.connect(redis_url) as store:
            seen: list[Transition] = []
            breaker = make(
                store, seen=seen, failure_threshold=1, recovery_timeout=0.05,
                half_open_max_calls=1, probe_lease=30,
            )  # fmt: skip
            await fail_times(breaker, 1)
            await asyncio.sleep(0.06)
            task = await _probe_in("call", breaker, store)
            cancelled_at = time.perf_counter()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            probe, refused = await _next_probe(breaker)
            latency = time.perf_counter() - cancelled_at
            assert probe.is_probe
            await probe.success()
            assert (await breaker.snapshot()).state is CLOSED
            assert [t.reason for t in seen] == [
                "consecutive_failures", "recovery_timeout_elapsed", "probes_succeeded",
            ]  # fmt: skip
            return {"ms": round(latency * 1000, 2), "refused_meanwhile": refused}

    measured = run(main)
    figure(test="cancel_to_next_probe_real_time", lease_s=30, **measured)
    assert measured["ms"] < 1000


# ============================================================================ 7. the loop


_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


class StepMeter:
    """Wraps every step the loop runs (``Handle._run``) and keeps, for the step that just
    ran, the CPU time it used and the voluntary context switches it made (the thread
    waited in a blocking call: a sleep, a blocking read, a lock). A step that did neither
    for long took wall time the process did not spend: the OS or the hypervisor ran
    something else (measured on a 2-vCPU VM with 3 busy processes: hundreds of 5-11 ms
    steps using 0.04-0.6 ms of CPU, with no context switch at all)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.last: tuple[float, int] = (0.0, 0)
        run_step = asyncio.events.Handle._run
        meter = self

        def measured(handle: asyncio.Handle) -> None:
            cpu, waits = time.thread_time(), resource.getrusage(_RUSAGE).ru_nvcsw
            try:
                run_step(handle)  # type: ignore[arg-type]
            finally:
                meter.last = (
                    time.thread_time() - cpu,
                    resource.getrusage(_RUSAGE).ru_nvcsw - waits,
                )

        monkeypatch.setattr(asyncio.events.Handle, "_run", measured)


class SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's "Executing <...> took N seconds" warnings (emitted
    right after the slow step), each with what the meter saw of that step."""

    def __init__(self, meter: StepMeter) -> None:
        super().__init__(logging.WARNING)
        self.meter = meter
        self.found: list[tuple[str, float, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and " took " in message:
            self.found.append((message, *self.meter.last))

    def blocking(self, threshold: float) -> list[tuple[str, float, int]]:
        """The slow steps the process itself made slow: busy on the CPU for at least
        ``threshold``, or waiting in a blocking call."""
        return [f for f in self.found if f[1] >= threshold or f[2] > 0]


@pytest.mark.redis_server
def test_no_event_loop_blocking_through_an_outage(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debug mode, slow_callback_duration = 5 ms, real redis-server, strict mode: 10,000
    calls (20 tasks, one call per step of the loop) through an outage of the dependency
    (trip, local rejections, half-open probes failing, re-opens, each with its round
    trips), then 300 calls (10 tasks) while open, asking Redis again every 10 ms: asyncio
    reports no step of 5 ms or more. On a machine so busy that the process is descheduled
    mid-step, a reported step is excused only if it used < 5 ms of CPU and made no
    blocking call (see StepMeter); on a quiet machine none is reported at all. The tasks
    are created (and the connections opened) before the loop is watched; a callback that
    burns 20 ms of CPU and one that sleeps 20 ms are caught: the instrument works."""
    workers, per_worker, threshold = 20, 500, 0.005
    handler = SlowCallbacks(StepMeter(monkeypatch))
    logger = logging.getLogger("asyncio")

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with aio.connect(redis_url) as store:
            through = make(
                store, "outage", failure_threshold=5, recovery_timeout=0.05,
                half_open_max_calls=2, max_staleness=0.05,
            )  # fmt: skip
            stays_open = make(
                store, "open", failure_threshold=1, recovery_timeout=60, max_staleness=0.01
            )
            # Not watched: the function library is loaded, one connection per worker is
            # opened, the second breaker is tripped.
            await asyncio.gather(*(through.call(ok) for _ in range(workers)))
            await fail_times(stays_open, 1)
            outcomes: Counter[str] = Counter()
            first, second = asyncio.Event(), asyncio.Event()

            async def dependency() -> None:
                await asyncio.sleep(0)
                raise DownError("down")

            async def worker(
                gate: asyncio.Event, breaker: aio.Breaker, calls: int, pause: float
            ) -> None:
                await gate.wait()
                for _ in range(calls):
                    try:
                        await breaker.call(dependency)
                    except DownError:
                        outcomes["failed"] += 1
                    except CircuitOpenError as exc:
                        outcomes[f"rejected_{exc.state}"] += 1
                    await asyncio.sleep(pause)  # one call per step of the loop

            def burn(seconds: float) -> None:
                until = time.thread_time() + seconds
                while time.thread_time() < until:
                    pass

            outage = [
                asyncio.create_task(worker(first, through, per_worker, 0)) for _ in range(workers)
            ]
            while_open = [
                asyncio.create_task(worker(second, stays_open, 30, 0.002)) for _ in range(10)
            ]
            await asyncio.sleep(0.01)  # every task waits at its gate
            loop.slow_callback_duration = threshold
            logger.addHandler(handler)
            started = time.perf_counter()
            first.set()
            await asyncio.gather(*outage)
            second.set()
            await asyncio.gather(*while_open)
            took = time.perf_counter() - started
            found, blocking = list(handler.found), handler.blocking(threshold)
            # The instrument: a callback that burns 20 ms of CPU and one that sleeps 20 ms
            # are both reported, and counted as blocking.
            loop.call_soon(burn, 0.02)
            loop.call_soon(time.sleep, 0.02)
            await asyncio.sleep(0.05)
            control = len(handler.blocking(threshold)) - len(blocking)
            logger.removeHandler(handler)
            return {"outcomes": dict(outcomes), "found": found, "blocking": blocking,
                    "control": control, "seconds": round(took, 2)}  # fmt: skip

    # A step the library makes slow is slow in every run of this deterministic outage. On
    # a VM a stolen vCPU can be charged to the running thread as CPU time (one 20 ms step
    # in one CI run of many): a run that reports blocking is measured again, up to three
    # runs, and the test passes on the first run that reports none.
    for attempt in range(1, 4):
        handler.found = []
        # Each run starts from fresh breakers: the last one left "outage" mid-outage.
        with redis.Redis.from_url(redis_url) as admin:
            admin.flushall()
        gc.collect()
        gc.disable()  # a collection pause is not the library blocking the loop
        try:
            measured = run(main, debug=True)
        finally:
            gc.enable()
            logger.removeHandler(handler)
        outcomes = measured["outcomes"]
        figure(
            test="event_loop", attempt=attempt, calls=sum(outcomes.values()),
            slow_callbacks=len(measured["found"]), blocking=len(measured["blocking"]),
            seconds=measured["seconds"], **outcomes,
        )  # fmt: skip
        if not measured["blocking"]:
            break
    assert measured["control"] == 2
    assert sum(outcomes.values()) == workers * per_worker + 300
    assert outcomes["failed"] >= 5
    assert outcomes["rejected_open"] >= 300
    assert measured["blocking"] == []


# ============================================================================ 8. fleets


RESULT_TIMEOUT = 90.0


class Fleet:
    """Processes running one worker of ``aio_workers``, released together by a barrier
    the parent also waits on (parties = workers + 1)."""

    def __init__(
        self, work: str, url: str, params: list[dict[str, Any]], shared: dict[str, Any]
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.barrier = ctx.Barrier(len(params) + 1)
        self.size = len(params)
        self.procs = [
            ctx.Process(
                target=aio_workers.entry,
                args=(work, i, url, p),
                kwargs={"barrier": self.barrier, "results": self.results, "shared": shared},
                daemon=True,
                name=f"aio-fleet-{work}-{i}",
            )
            for i, p in enumerate(params)
        ]

    def __enter__(self) -> Fleet:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            proc.close()
        self.results.close()
        self.results.join_thread()

    def go(self) -> None:
        try:
            self.barrier.wait(aio_workers.BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            raise AssertionError(f"the fleet never assembled: {self._errors()}") from None

    def collect(self) -> list[Any]:
        done: dict[int, Any] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(done) < self.size:
            try:
                index, kind, payload = self.results.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                missing = sorted(set(range(self.size)) - set(done))
                raise AssertionError(f"workers {missing} gave no result in time") from None
            if kind == "error":
                raise AssertionError(f"worker {index} failed:\n{payload}")
            done[index] = payload
        for proc in self.procs:
            proc.join(10)
        return [done[i] for i in range(self.size)]

    def _errors(self) -> list[str]:
        errors = []
        with contextlib.suppress(queue.Empty):
            while True:
                index, kind, payload = self.results.get(timeout=1.0)
                if kind == "error":
                    errors.append(f"worker {index}:\n{payload}")
        return errors


def _transitions(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Every transition any worker's hooks saw, ordered by generation."""
    return sorted((tuple(t) for r in results for t in r["transitions"]), key=lambda t: t[3])


@pytest.mark.slow
def test_fleet_of_aio_processes_through_an_outage_and_recovery(redis_url: str) -> None:
    """4 spawned processes x 50 concurrent tasks of aio breaker calls, real redis-server:
    healthy, then the dependency goes down, then comes back. Fleet-wide, the dependency
    never serves more probes at once than half_open_max_calls (a shared counter of
    probes in flight says so), the breaker trips exactly once (closed -> open, hooked by
    one process), every transition is hooked exactly once, and it ends closed."""
    limit = 2
    ctx = multiprocessing.get_context("spawn")
    shared = {
        "down": ctx.Value("b", 0, lock=False),
        "stop": ctx.Value("b", 0, lock=False),
        "in_flight": ctx.Value("i", 0, lock=False),
        "max_in_flight": ctx.Value("i", 0, lock=False),
        "probes": ctx.Value("i", 0, lock=False),
        "lock": ctx.Lock(),
    }
    params = {
        "config": {
            "failure_threshold": 5,
            "recovery_timeout": 0.1,
            "half_open_max_calls": limit,
            "probe_lease": 30,
        },
        "tasks": 50,
        "hold": 0.01,
        "pause": 0.002,
        "reject_pause": 0.01,
    }
    with Fleet("probe_storm", redis_url, [params] * 4, shared) as fleet:
        fleet.go()
        time.sleep(0.5)  # healthy
        shared["down"].value = 1
        time.sleep(2.0)  # the outage: trip, then half-open windows whose probes fail
        shared["down"].value = 0
        time.sleep(1.5)  # recovery: a probe succeeds, the breaker closes
        shared["stop"].value = 1
        results = fleet.collect()

    hooked = _transitions(results)
    trips = [t for t in hooked if (t[0], t[1]) == ("closed", "open")]
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r["counts"])
    reporters = [i for i, r in enumerate(results) for t in r["transitions"] if t[1] == "open"
                 and t[0] == "closed"]  # fmt: skip
    figure(
        test="fleet_outage", processes=4, tasks_each=50, probe_limit=limit,
        max_probes_in_flight=shared["max_in_flight"].value, probes=shared["probes"].value,
        trips=len(trips), transitions=len(hooked), **counts,
    )  # fmt: skip
    assert shared["max_in_flight"].value <= limit
    assert shared["max_in_flight"].value == limit  # the fleet did contend for the slots
    assert shared["probes"].value >= 3
    assert len(trips) == 1, hooked
    assert len(reporters) == 1
    assert [t[3] for t in hooked] == list(range(2, len(hooked) + 2)), hooked
    assert hooked[-1][:3] == ("half_open", "closed", "probes_succeeded")
    assert all(r["counts"].get("ok", 0) > 0 for r in results)
    assert counts["failed"] >= 5
    assert counts["rejected_open"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("consistency", ["strict", "cached"])
def test_mixed_fleet_of_sync_and_aio_processes_shares_one_breaker(
    redis_url: str, consistency: str
) -> None:
    """2 sync and 2 aio processes hold one breaker. Four rounds, each tripped by another
    member (sync, aio, sync, aio): every member is then rejected as open with the same
    deadline (strict: at its very next call; cached: within 1 s), only the tripper hooks
    the trip, and the tripper's reset lets everyone in again."""
    ctx = multiprocessing.get_context("spawn")
    shared = {"rounds": ctx.Barrier(4)}
    config = {
        "failure_threshold": 3,
        "recovery_timeout": 30,
        "max_staleness": 0.2,
        "consistency": consistency,
    }
    trippers = [0, 2, 1, 3]
    params = [
        {"driver": driver, "config": config, "trippers": trippers}
        for driver in ("sync", "sync", "async", "async")
    ]
    with Fleet("mixed_member", redis_url, params, shared) as fleet:
        fleet.go()
        results = fleet.collect()

    assert [r["driver"] for r in results] == ["sync", "sync", "async", "async"]
    slowest = 0.0
    for round_no, tripper in enumerate(trippers):
        for index, result in enumerate(results):
            record = result["rounds"][round_no]
            assert record["tripper"] == (index == tripper)
            state, retry_after = record["rejected"]
            assert state == "open", (round_no, index, record)
            assert 28.0 <= retry_after <= 30.0, (round_no, index, record)
            slowest = max(slowest, record["took"])
            if consistency == "strict" or index == tripper:
                assert (record["admitted"], record["ran"]) == (0, 0), (round_no, index, record)
            else:
                assert record["admitted"] == record["ran"] <= 2, (round_no, index, record)
                assert record["took"] < 1.0
    hooked_trips = {
        index: sum(1 for t in r["transitions"] if (t[0], t[1]) == ("closed", "open"))
        for index, r in enumerate(results)
    }
    assert hooked_trips == {0: 1, 1: 1, 2: 1, 3: 1}
    generations = [t[3] for t in _transitions(results)]
    assert generations == list(range(2, 2 + 2 * len(trippers)))  # trip + reset, each once
    figure(test="mixed_fleet", consistency=consistency, slowest_rejection_ms=round(
        slowest * 1000, 2))  # fmt: skip
