"""Generator functions through a breaker: the permit spans the iteration. Nothing is
counted when the generator is made; the first ``next()`` takes the permit (or raises the
rejection, the body not run); exhausted is a success, an exception a classified failure,
closed early nothing but a freed probe slot. A guard refuses generator functions.
Sync and asyncio, on the embedded store and on a real redis-server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
import redbreaker.aio
from redbreaker import CircuitOpenError, ManualClock, State

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator

SETTINGS: dict[str, Any] = {
    "failure_threshold": 1,
    "recovery_timeout": 5,
    "half_open_max_calls": 1,
    "ignore_on": KeyError,
}


@pytest.fixture(params=["memory", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def breaker(url: str) -> Generator[redbreaker.Breaker, None, None]:
    store = redbreaker.connect(url, clock=ManualClock(), prefix="gen")
    name = f"gen-{id(store)}"
    yield redbreaker.Breaker(name, store=store, **SETTINGS)
    store.close()


class Rows:
    """A generator function that records what ran, fails on request, and takes sends."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, n: int, fail: BaseException | None = None) -> Generator[int, Any, str]:
        self.ran.append("start")
        for i in range(n):
            sent = yield i
            if sent is not None:
                self.ran.append(f"sent {sent}")
        if fail is not None:
            raise fail
        return "done"


def test_nothing_is_counted_until_the_iteration_ends(breaker: redbreaker.Breaker) -> None:
    rows = Rows()
    rows_through = breaker(rows)
    made = rows_through(3)
    assert (rows.ran, breaker.snapshot().window_calls) == ([], 0)
    assert next(made) == 0
    assert rows.ran == ["start"]
    assert [next(made), next(made)] == [1, 2]
    with pytest.raises(StopIteration) as ended:
        next(made)
    assert ended.value.value == "done"  # the generator's return value comes through
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.state) == (1, 0, State.CLOSED)


def test_a_failure_while_iterating_counts_and_passes_through(breaker: redbreaker.Breaker) -> None:
    rows = Rows()
    got: list[int] = []
    with pytest.raises(ConnectionError, match="cursor lost"):
        got.extend(breaker.call(rows, 2, ConnectionError("cursor lost")))
    assert got == [0, 1]
    snap = breaker.snapshot()
    assert (snap.state, snap.open_count) == (State.OPEN, 1)
    # open: the next iteration is rejected at its first next(), its body not run
    again = Rows()
    made = breaker.call(again, 2)
    with pytest.raises(CircuitOpenError):
        next(made)
    assert again.ran == []


def test_an_ignored_exception_counts_nothing(breaker: redbreaker.Breaker) -> None:
    with pytest.raises(KeyError):
        list(breaker.call(Rows(), 1, KeyError("x")))
    snap = breaker.snapshot()
    assert (snap.window_failures, snap.consecutive_failures, snap.state) == (0, 0, State.CLOSED)


def test_closed_early_frees_the_probe_slot(breaker: redbreaker.Breaker) -> None:
    with pytest.raises(ConnectionError):
        list(breaker.call(Rows(), 0, ConnectionError("down")))
    breaker.store.clock.advance(5)  # type: ignore[attr-defined]
    made = breaker.call(Rows(), 5)
    assert next(made) == 0  # the one probe of half_open_max_calls=1
    assert breaker.snapshot().probes_in_flight == 1
    made.close()  # the consumer stopped early: no outcome, the slot is free at once
    snap = breaker.snapshot()
    assert (snap.state, snap.probes_in_flight, snap.open_count) == (State.HALF_OPEN, 0, 1)
    assert list(breaker.call(Rows(), 2)) == [0, 1]  # the next probe, admitted and closing
    assert breaker.snapshot().state is State.CLOSED


def test_sends_and_throws_reach_the_inner_generator(breaker: redbreaker.Breaker) -> None:
    rows = Rows()
    made = breaker.call(rows, 3)
    assert next(made) == 0
    assert made.send("a") == 1
    with pytest.raises(ValueError, match="from outside"):
        made.throw(ValueError("from outside"))
    assert rows.ran == ["start", "sent a"]
    assert breaker.snapshot().state is State.OPEN  # thrown in, raised out: a failure


def test_a_guard_refuses_a_generator_function(breaker: redbreaker.Breaker) -> None:
    guard = breaker.guard(max_attempts=2, retry_on=ConnectionError)
    with pytest.raises(TypeError, match=r"generator function .*@breaker"):
        guard(Rows())
    with pytest.raises(TypeError, match=r"generator function .*@breaker"):
        guard.call(Rows(), 1)
    assert breaker.snapshot().window_calls == 0


# -- asyncio ------------------------------------------------------------------------------


class AsyncRows:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def __call__(self, n: int, fail: BaseException | None = None) -> AsyncGenerator[int, Any]:
        self.ran.append("start")
        try:
            for i in range(n):
                await asyncio.sleep(0)
                sent = yield i
                if sent is not None:
                    self.ran.append(f"sent {sent}")
        finally:
            self.ran.append("closed")
        if fail is not None:
            raise fail


def run_aio(url: str, body: Any) -> None:
    async def main() -> None:
        async with redbreaker.aio.connect(url, clock=ManualClock(), prefix="agen") as store:
            breaker = redbreaker.aio.Breaker(f"agen-{id(store)}", store=store, **SETTINGS)
            await body(breaker)

    asyncio.run(main())


def test_aio_an_async_generator_function_is_guarded_per_iteration(url: str) -> None:
    async def body(breaker: redbreaker.aio.Breaker) -> None:
        rows = AsyncRows()
        through = breaker(rows)
        made = through(3)
        assert (rows.ran, (await breaker.snapshot()).window_calls) == ([], 0)
        assert [i async for i in made] == [0, 1, 2]
        snap = await breaker.snapshot()
        assert (snap.window_calls, snap.window_failures) == (1, 0)
        failing = through(2, ConnectionError("lost"))
        assert [await failing.__anext__(), await failing.__anext__()] == [0, 1]
        with pytest.raises(ConnectionError):
            await failing.__anext__()
        assert (await breaker.snapshot()).state is State.OPEN
        rejected = AsyncRows()
        with pytest.raises(CircuitOpenError):
            await through(1).__anext__()
        with pytest.raises(CircuitOpenError):
            await (await breaker.call(rejected, 1)).__anext__()
        assert rejected.ran == []

    run_aio(url, body)


def test_aio_closed_early_frees_the_probe_slot_and_sends_go_through(url: str) -> None:
    async def body(breaker: redbreaker.aio.Breaker) -> None:
        with pytest.raises(ConnectionError):
            async for _ in await breaker.call(AsyncRows(), 0, ConnectionError("down")):
                pass
        breaker.store.clock.advance(5)  # type: ignore[attr-defined]
        rows = AsyncRows()
        made = await breaker.call(rows, 5)
        assert await made.__anext__() == 0
        assert await made.asend("a") == 1
        assert (await breaker.snapshot()).probes_in_flight == 1
        await made.aclose()
        assert rows.ran == ["start", "sent a", "closed"]  # the inner one was closed too
        snap = await breaker.snapshot()
        assert (snap.state, snap.probes_in_flight) == (State.HALF_OPEN, 0)
        thrown = await breaker.call(AsyncRows(), 3)
        assert await thrown.__anext__() == 0
        with pytest.raises(ValueError, match="outside"):
            await thrown.athrow(ValueError("outside"))
        assert (await breaker.snapshot()).state is State.OPEN  # the probe failed

    run_aio(url, body)


def test_aio_a_generator_function_that_raises_at_once_settles_its_permit(url: str) -> None:
    """Wrong arguments raise when the inner generator is made, after the permit was taken:
    classified like any call's error, the permit is not left behind."""

    async def body(breaker: redbreaker.aio.Breaker) -> None:
        made = await breaker.call(AsyncRows())  # n missing: TypeError at the first anext
        with pytest.raises(TypeError):
            await made.__anext__()
        snap = await breaker.snapshot()
        assert (snap.state, snap.open_count) == (State.OPEN, 1)  # counted, as a call's

    run_aio(url, body)


def test_aio_refusals(url: str) -> None:
    async def body(breaker: redbreaker.aio.Breaker) -> None:
        guard = breaker.guard(max_attempts=2, retry_on=ConnectionError)
        with pytest.raises(TypeError, match=r"generator function .*@breaker"):
            guard(AsyncRows())
        with pytest.raises(TypeError, match=r"generator function .*@breaker"):
            await guard.call(AsyncRows(), 1)
        with pytest.raises(TypeError, match="async generator function"):
            await breaker.call(Rows(), 1)
        assert (await breaker.snapshot()).window_calls == 0

    run_aio(url, body)
