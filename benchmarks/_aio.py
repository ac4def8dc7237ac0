"""The asyncio figures: redbreaker.aio beside redis.asyncio and purgatory, in one event loop.

Everything runs on one event loop of the benchmark process, driven by run.py with
``loop.run_until_complete``:

- per-call cost, every variant in every round in a rotating order (as :mod:`_latency`,
  whose result type and timer figure are reused), each a ratio to one ``redis.asyncio``
  EVALSHA of :data:`_variants.REFERENCE_LUA` measured in the same round;
- calls/s from many tasks of one process, variants rotated per rep;
- round trips and commands per path (the walk and meter of :mod:`_counts`, through sync
  wrappers of the awaited calls; round trips are counted by an asyncio connection that
  adds to the same counter as the sync one).

purgatory (3.x) is the asyncio peer: ``AsyncCircuitBreakerFactory`` with
``AsyncRedisUnitOfWork``, one ``async with await factory.get_breaker(name)`` per call, the
way its own decorator does it. Its Redis repository reads the breaker (two GETs) for every
call and writes each event (INCR, SET) afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import _counts
import _latency
import _variants
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

try:
    import redbreaker.aio as rb_aio
except ImportError:  # a redbreaker without the asyncio driver: the section says so
    rb_aio = None

try:
    import purgatory
    from purgatory.domain.model import OpenedState as PurgatoryOpen
except ImportError:  # the bench extra is not installed: those rows say so
    purgatory = None
    PurgatoryOpen = None

TASKS = 100  # concurrent tasks of the throughput cells
AIO_NA = "n/a (redbreaker.aio is not importable)"
PURGATORY_NA = "n/a (purgatory not installed: pip install -e '.[bench]')"
TIMEOUT_NA = "n/a (asyncio.timeout needs Python 3.11+)"
CACHED_NA = _variants.CACHED_NA
# The cached-mode cost of the sync driver, as the roundtrips section measures it (used when
# that section did not run): local successes and rejections, one record per failure.
CACHED_EXPECTED = {
    "success": 0, "success_after_failure": 1, "failure": 1, "trip": 1,
    "rejected_first": 0, "rejected_later": 0, "probe_success": 2, "probe_failure": 2,
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    needs: str = ""  # "", "cached", "purgatory" or "timeout"
    throughput: bool = False  # also measured with TASKS concurrent tasks


SPECS = (
    Spec("bare", "await a no-op coroutine"),
    Spec("timeout", "asyncio.timeout(1) around the no-op coroutine", needs="timeout"),
    Spec("sync_evalsha", "redis-py sync EVALSHA, same script (for scale)"),
    Spec("evalsha", "redis.asyncio EVALSHA (the async reference)", throughput=True),
    Spec("strict", "redbreaker.aio strict, success", throughput=True),
    Spec("strict_fail", "redbreaker.aio strict, failure"),
    Spec("cached", "redbreaker.aio cached, success", needs="cached", throughput=True),
    Spec("cached_fail", "redbreaker.aio cached, failure", needs="cached"),
    Spec("guard", "async guard: cached breaker, attempt_timeout=1", needs="cached"),
    Spec("guard_strict", "async guard: strict breaker, attempt_timeout=1"),
    Spec("timeout_suspends", "asyncio.timeout(1) around a coroutine that suspends once",
         needs="timeout"),
    Spec("guard_suspends", "async guard (cached) around that coroutine", needs="cached"),
    Spec("purgatory", "purgatory + AsyncRedisUnitOfWork, success", needs="purgatory",
         throughput=True),
    Spec("purgatory_fail", "purgatory + AsyncRedisUnitOfWork, failure", needs="purgatory"),
    Spec("purgatory_mem", "purgatory in memory, success", needs="purgatory"),
)


async def anoop() -> None:
    return None


async def asuspend() -> None:
    """A coroutine that suspends once (``asyncio.sleep(0)``), as any real I/O does: the
    guard's timer is set for it, not skipped."""
    await asyncio.sleep(0)


async def afail() -> None:
    raise _variants.DependencyError


def async_client(url: str, **kwargs: Any) -> redis.asyncio.Redis:
    """A redis.asyncio client configured like the one redbreaker.aio.connect(url) builds,
    with room for :data:`TASKS` concurrent calls."""
    options: dict[str, Any] = {
        "socket_timeout": _variants.STORE_TIMEOUT,
        "socket_connect_timeout": _variants.STORE_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": TASKS + 20,
    }
    options.update(kwargs)
    return redis.asyncio.Redis.from_url(url, **options)


def make_breaker(store: Any, name: str, mode: str, **settings: Any) -> Any:
    """A ``redbreaker.aio.Breaker`` in ``mode`` ("strict" or "cached").

    Raises:
        redbreaker.ConfigError: cached mode is not available in this redbreaker.
    """
    assert rb_aio is not None
    if mode == "cached":
        settings["consistency"] = "cached"
    return rb_aio.Breaker(name, store=store, **settings)


def cached_mode_available(store: Any) -> bool:
    try:
        make_breaker(store, "bench-probe-cached-mode", "cached")
    except rb_aio.ConfigError:  # type: ignore[union-attr]
        return False
    return True


def _swallow(
    fn: Callable[[], Awaitable[object]], *types: type[BaseException]
) -> Callable[[], Awaitable[object]]:
    async def call() -> object:
        try:
            return await fn()
        except types:
            return None

    return call


@dataclass
class Built:
    """The awaitable variants of the section, and what must be closed after."""

    fns: dict[str, Callable[[], Awaitable[object]]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    closers: list[Callable[[], object]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            result = close()
            if inspect.isawaitable(result):
                await result
        self.closers.clear()


async def build(url: str, prefix: str) -> Built:
    """Every variant of :data:`SPECS` this install can run (on the running loop)."""
    assert rb_aio is not None
    built = Built()
    ref_key = f"{prefix}:reference"
    client = async_client(url)
    built.closers.append(client.aclose)
    script = client.register_script(_variants.REFERENCE_LUA)
    sync_client = _variants.raw_client(url)
    built.closers.append(sync_client.close)
    sync_script = sync_client.register_script(_variants.REFERENCE_LUA)

    async def sync_evalsha() -> object:
        return sync_script(keys=[ref_key])  # blocks the loop for one round trip

    built.fns["bare"] = anoop
    built.fns["sync_evalsha"] = sync_evalsha
    built.fns["evalsha"] = lambda: script(keys=[ref_key])
    timeout = getattr(asyncio, "timeout", None)
    if timeout is not None:

        async def in_timeout() -> object:
            async with timeout(1):
                return await anoop()

        built.fns["timeout"] = in_timeout

        async def suspends_in_timeout() -> object:
            async with timeout(1):
                return await asuspend()

        built.fns["timeout_suspends"] = suspends_in_timeout
    else:
        built.missing["timeout"] = built.missing["timeout_suspends"] = TIMEOUT_NA

    store = rb_aio.connect(async_client(url), prefix=prefix)
    built.closers.append(store.aclose)
    strict = make_breaker(store, "strict", "strict")
    # A failure path that never trips: the threshold is out of reach, no rate rule.
    strict_fail = make_breaker(store, "strict-fail", "strict", failure_threshold=10**12)
    built.fns["strict"] = lambda: strict.call(anoop)
    built.fns["strict_fail"] = _swallow(lambda: strict_fail.call(afail),
                                        _variants.DependencyError)
    guard_strict = strict.guard(attempt_timeout=1)
    built.fns["guard_strict"] = lambda: guard_strict.call(anoop)
    if cached_mode_available(store):
        cached = make_breaker(store, "cached", "cached")
        cached_fail = make_breaker(store, "cached-fail", "cached", failure_threshold=10**12)
        guard = cached.guard(attempt_timeout=1)
        built.fns["cached"] = lambda: cached.call(anoop)
        built.fns["cached_fail"] = _swallow(lambda: cached_fail.call(afail),
                                            _variants.DependencyError)
        built.fns["guard"] = lambda: guard.call(anoop)
        built.fns["guard_suspends"] = lambda: guard.call(asuspend)
    else:
        for key in ("cached", "cached_fail", "guard", "guard_suspends"):
            built.missing[key] = CACHED_NA

    if purgatory is not None:
        factory = purgatory.AsyncCircuitBreakerFactory(
            default_threshold=5, default_ttl=30, uow=purgatory.AsyncRedisUnitOfWork(url)
        )
        await factory.initialize()
        built.closers.append(factory.uow.contexts.redis.aclose)
        memory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
        name, fail_name = f"{prefix}-purgatory", f"{prefix}-purgatory-fail"

        async def purgatory_ok() -> object:
            async with await factory.get_breaker(name):
                return await anoop()

        async def purgatory_fail() -> object:
            # The threshold is kept with the breaker in Redis when it is created: never met.
            async with await factory.get_breaker(fail_name, threshold=10**12):
                return await afail()

        async def purgatory_mem() -> object:
            async with await memory.get_breaker(name):
                return await anoop()

        built.fns["purgatory"] = purgatory_ok
        built.fns["purgatory_fail"] = _swallow(purgatory_fail, _variants.DependencyError)
        built.fns["purgatory_mem"] = purgatory_mem
    else:
        for key in ("purgatory", "purgatory_fail", "purgatory_mem"):
            built.missing[key] = PURGATORY_NA

    built.fns = {s.key: built.fns[s.key] for s in SPECS if s.key in built.fns}
    return built


# --------------------------------------------------------------------------- per-call cost


async def _block(fn: Callable[[], Awaitable[object]], calls: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        t0 = clock()
        await fn()
        samples[i] = clock() - t0
    return samples


async def measure(
    fns: dict[str, Callable[[], Awaitable[object]]], *, calls: int, rounds: int, warmup: int
) -> _latency.LatencyResult:
    """:func:`_latency.measure` for awaitables: ``rounds`` rounds of ``calls`` timed awaits
    of every variant back to back, the order rotated by one variant per round."""
    keys = list(fns)
    for key in keys:
        for _ in range(warmup):
            await fns[key]()
    result = _latency.LatencyResult(calls, rounds, _latency._timer_cost())
    for key in keys:
        result.medians[key] = [0.0] * rounds
        result.p99[key] = [0.0] * rounds
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            gc.collect()
            samples = await _block(fns[key], calls)
            samples.sort()
            result.medians[key][r] = statistics.median(samples) / 1000
            result.p99[key][r] = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000
    return result


# --------------------------------------------------------------------------- throughput


async def _cell(fn: Callable[[], Awaitable[object]], tasks: int, duration: float) -> float:
    """Calls/s of ``tasks`` tasks awaiting ``fn`` in a loop for ``duration`` seconds, all
    released at one instant."""
    go = asyncio.Event()
    stop = [0.0]
    counts = [0] * tasks

    async def worker(i: int) -> None:
        await go.wait()
        clock, until, n = time.perf_counter, stop[0], 0
        while clock() < until:
            await fn()
            n += 1
        counts[i] = n

    running = [asyncio.ensure_future(worker(i)) for i in range(tasks)]
    await asyncio.sleep(0)  # every task is waiting for go
    start = time.perf_counter()
    stop[0] = start + duration
    go.set()
    await asyncio.gather(*running)
    return sum(counts) / (time.perf_counter() - start)


async def _warm(fn: Callable[[], Awaitable[object]], tasks: int, calls: int = 5) -> None:
    async def worker() -> None:
        for _ in range(calls):
            await fn()

    await asyncio.gather(*(worker() for _ in range(tasks)))


async def throughput(
    fns: dict[str, Callable[[], Awaitable[object]]], keys: list[str], *, tasks: int,
    duration: float, reps: int,
) -> dict[str, list[float]]:
    """Calls/s per variant, one figure per rep; the variant order rotates by one per rep.
    First, unmeasured, every task makes a few calls of every variant at once: each pool
    opens its ``tasks`` connections (a redis.asyncio pool connects them one at a time,
    under its lock) before anything is timed."""
    for key in keys:
        await _warm(fns[key], tasks)
    rates: dict[str, list[float]] = {k: [] for k in keys}
    for rep in range(reps):
        shift = rep % len(keys)
        for key in keys[shift:] + keys[:shift]:
            gc.collect()
            rates[key].append(await _cell(fns[key], tasks, duration))
    return rates


# --------------------------------------------------------------------------- round trips


class CountingConnection(redis.asyncio.Connection):
    """An asyncio connection counting its writes in :class:`_counts.CountingConnection`'s
    counter, which :class:`_counts._Meter` reads."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _counts.CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


def _sleeper(loop: asyncio.AbstractEventLoop) -> Callable[[float], object]:
    """A pause that keeps the loop running, as an application's would: the transition
    feed reads the events of the pause as they come, not all at once after it."""
    return lambda seconds: loop.run_until_complete(asyncio.sleep(seconds))


def redbreaker_paths(
    loop: asyncio.AbstractEventLoop, admin: redis.Redis, url: str, prefix: str, mode: str,
    *, recovery: float,
) -> dict[str, _counts.Cost]:
    """Every path of :data:`_counts.PATHS` through a redbreaker.aio breaker in ``mode``."""
    assert rb_aio is not None
    run = loop.run_until_complete
    # The transition feed's client copies this connection class: its SUBSCRIBE counts too
    # (once, in the warm-up).
    store = rb_aio.connect(async_client(url, connection_class=CountingConnection),
                           prefix=prefix)
    try:
        # Load the code and start the feed first: not the steady state.
        warm = make_breaker(store, f"warm-{mode}", mode)
        run(warm.call(anoop))
        with contextlib.suppress(_variants.DependencyError):
            run(warm.call(afail))
        run(warm.snapshot())
        run(warm.reset())
        run(asyncio.sleep(0.05))  # the feed subscribes

        b = make_breaker(store, f"paths-{mode}", mode, failure_threshold=5,
                         recovery_timeout=recovery)
        ok = lambda: run(b.call(anoop))  # noqa: E731
        bad = _counts._catch(lambda: run(b.call(afail)), _variants.DependencyError)
        rejected = _counts._catch(ok, rb_aio.CircuitOpenError)
        return _counts._walk_paths(_counts._Meter(admin), lambda: run(b.snapshot()).state.value,
                                   ok, bad, rejected, recovery + 0.05, sleep=_sleeper(loop))
    finally:
        run(store.aclose())


def purgatory_paths(
    loop: asyncio.AbstractEventLoop, admin: redis.Redis, url: str, name: str, *, ttl: float
) -> dict[str, _counts.Cost]:
    """The same paths through purgatory with its Redis storage (threshold 5, ``ttl``)."""
    assert purgatory is not None
    run = loop.run_until_complete
    uow = purgatory.AsyncRedisUnitOfWork(url)
    # Its repository's own client (no connection opened yet), swapped for a counting one.
    run(uow.contexts.redis.aclose())
    uow.contexts.redis = redis.asyncio.Redis.from_url(url, connection_class=CountingConnection)
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=ttl, uow=uow)
    key = f"{uow.contexts.prefix}{name}"
    try:
        run(factory.initialize())

        async def call(fn: Callable[[], Awaitable[object]]) -> object:
            async with await factory.get_breaker(name):
                return await fn()

        def state_of() -> str:
            raw = admin.get(key)
            return str(json.loads(raw)["state"]) if raw else "absent"

        ok = lambda: run(call(anoop))  # noqa: E731
        bad = _counts._catch(lambda: run(call(afail)), _variants.DependencyError, PurgatoryOpen)
        rejected = _counts._catch(ok, PurgatoryOpen)
        return _counts._walk_paths(_counts._Meter(admin), state_of, ok, bad, rejected, ttl + 0.05,
                                   sleep=_sleeper(loop))
    finally:
        run(uow.contexts.redis.aclose())


def new_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left (a feed task of a store that was not closed), then close."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
