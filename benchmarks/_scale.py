"""The scale section: many callers on many breakers against one Redis, in each mode.

``processes`` worker processes (``spawn``), each running one event loop with ``tasks``
asyncio tasks; task ``j`` of worker ``w`` calls breaker ``(j + 50 w) mod breakers`` through
``redbreaker.aio`` in a loop, around a dependency that yields once (``asyncio.sleep(0)``).
Each worker gets one schedule of wall-clock instants (one machine, one CLOCK_REALTIME):

- a steady window: the parent reads ``INFO cpu stats commandstats`` at both ends; the
  workers count the calls that ended in it (10 ms bins) and time every admission;
- then trips, one breaker at a time: from ``fail_at`` its dependency fails in every worker.
  The parent learns the instant Redis decided the trip from the transition feed
  (``store.transitions()``, the server's time in whole ms: never after the truth, so a lag
  or a leak is never understated). Leak: the dependency's calls fleet-wide from that
  instant; propagation: until the last worker's first rejection.

Only the public API and INFO are read: nothing here knows what the scripts run.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import multiprocessing
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import _fanout
import _fleet
from _server import HOST

import redbreaker
import redbreaker.aio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from multiprocessing.connection import Connection

    import redis

REFERENCE = "cached, 1 process"
# Seconds of the one-process reference windows: at least max_staleness (10 s in one of them),
# or the window would hold too few of its refreshes to count.
ALONE_WINDOW = 10.0
THRESHOLD = 5  # failure_threshold of every breaker
RECOVERY = 120.0  # recovery_timeout: no breaker half-opens during a run
# Raised from the default 0.5 s: on 2 cores a starved worker's reply can be late, and a
# store call that times out would count as an outage (calls unguarded under "allow").
STORE_TIMEOUT = 5.0
REJECTED_PAUSE = 0.01  # a task whose call was rejected waits this long before the next
GRACE = 10.0  # seconds past the end a task on a failing breaker waits to see it open
BINS_PER_S = 100
SCRIPT_COMMANDS = ("fcall", "fcall_ro", "evalsha", "evalsha_ro", "eval", "eval_ro")
# The parent's own commands: left out of the per-call breakdown.
OWN_COMMANDS = ("info", "client|list")


@dataclass(frozen=True)
class Size:
    processes: int
    tasks: int  # per process
    breakers: int
    warmup: float  # seconds of load before the steady window
    window: float  # seconds of the steady window
    trips: int  # per mode, one breaker each
    trip_gap: float  # seconds between two trips
    tail: float  # seconds of load after the last trip
    fanout_subscribers: int  # pub/sub fan-out: subscribed connections
    fanout_messages: int  # and messages published to them


FULL = Size(processes=8, tasks=250, breakers=100, warmup=2.0, window=10.0, trips=10,
            trip_gap=1.0, tail=1.5, fanout_subscribers=1000, fanout_messages=200)
SMOKE = Size(processes=2, tasks=20, breakers=10, warmup=0.3, window=0.6, trips=2,
             trip_gap=0.4, tail=0.3, fanout_subscribers=50, fanout_messages=20)


def breaker_of(size: Size, worker: int, task: int) -> int:
    """The breaker a task calls: every breaker gets the same share of the fleet's tasks."""
    return (task + 50 * worker) % size.breakers


def trip_breakers(size: Size) -> list[int]:
    return [k * size.breakers // size.trips for k in range(size.trips)]


def breaker_name(b: int) -> str:
    return f"dep-{b:03d}"


@dataclass(frozen=True)
class Schedule:
    start_at: float
    window: tuple[float, float]
    fail_at: dict[int, float]  # breaker -> when its dependency starts failing
    end_at: float


@dataclass(frozen=True)
class Job:
    """One run: its breakers' mode and cached-mode settings, on fresh keys."""

    mode: Literal["strict", "cached"]
    prefix: str
    size: Size
    flush_interval: float = 0.1  # the defaults
    max_staleness: float = 1.0


class DependencyError(Exception):
    """The dependency is failing."""


# --------------------------------------------------------------------------- the worker


@dataclass
class _Record:
    bins: list[int]
    latency: array.array[float] = field(default_factory=lambda: array.array("d"))
    hits: dict[int, list[float]] = field(default_factory=dict)  # failing calls' times
    first_rejected: dict[int, float] = field(default_factory=dict)
    errors: int = 0
    events: list[str] = field(default_factory=list)
    cpu: float = 0.0  # this process's CPU seconds in the window
    cpu_wall: float = 0.0


async def _noop() -> int:
    return 0


async def _caller(breaker: redbreaker.aio.Breaker, b: int, plan: Schedule, rec: _Record) -> None:
    fail_at = plan.fail_at.get(b, math.inf)
    hits = rec.hits.setdefault(b, []) if b in plan.fail_at else []
    w0, w1 = plan.window
    wall, clock = time.time, time.perf_counter
    last_bin = len(rec.bins) - 1
    entered = 0.0

    async def dependency() -> int:
        nonlocal entered
        entered = clock()
        now = wall()
        if now >= fail_at:
            hits.append(now)
            raise DependencyError
        await asyncio.sleep(0)  # the dependency's I/O: other tasks run
        return 0

    # mypy infers no result type from Breaker.call's signature (a union of an awaitable's
    # and a plain function's): typed here.
    call = cast("Callable[[Callable[[], Awaitable[int]]], Awaitable[int]]", breaker.call)
    await asyncio.sleep(max(0.0, plan.start_at - wall()))
    while True:
        now = wall()
        # A task on a failing breaker goes on past the end until its process has seen the
        # open (for at most GRACE): a slow trip is then a late rejection, not a missed one.
        if now >= plan.end_at and (fail_at == math.inf or b in rec.first_rejected
                                   or now >= plan.end_at + GRACE):
            return
        started = clock()
        try:
            await call(dependency)
        except DependencyError:
            pass
        except redbreaker.aio.CircuitOpenError:
            rec.first_rejected.setdefault(b, wall())
            await asyncio.sleep(REJECTED_PAUSE)
            continue
        except redbreaker.aio.RedbreakerError:
            rec.errors += 1
            await asyncio.sleep(REJECTED_PAUSE)
            continue
        if w0 <= now < w1:
            rec.latency.append(entered - started)
        rec.bins[min(last_bin, int((wall() - plan.start_at) * BINS_PER_S))] += 1


async def _cpu_sampler(plan: Schedule, rec: _Record) -> None:
    w0, w1 = plan.window
    await asyncio.sleep(max(0.0, w0 - time.time()))
    cpu0, wall0 = time.process_time(), time.time()
    await asyncio.sleep(max(0.0, w1 - time.time()))
    rec.cpu, rec.cpu_wall = time.process_time() - cpu0, time.time() - wall0


async def _run(conn: Connection, url: str, index: int, job: Job) -> dict[str, Any]:
    size = job.size
    events: list[str] = []
    store = redbreaker.aio.connect(url, prefix=job.prefix, store_timeout=STORE_TIMEOUT,
                                   on_store_event=lambda e: events.append(e.kind))
    try:
        breakers = [
            redbreaker.aio.Breaker(breaker_name(b), store=store, consistency=job.mode,
                                   failure_threshold=THRESHOLD, recovery_timeout=RECOVERY,
                                   flush_interval=job.flush_interval,
                                   max_staleness=job.max_staleness)
            for b in range(size.breakers)
        ]
        mine = [breaker_of(size, index, j) for j in range(size.tasks)]
        # One call per task at once: the pool opens the connections the run will use.
        await asyncio.gather(*(cast("Awaitable[int]", breakers[b].call(_noop)) for b in mine))
        conn.send(("ready", index))
        order = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        plan: Schedule = order[0]
        rec = _Record(bins=[0] * int((plan.end_at - plan.start_at + 10) * BINS_PER_S))
        await asyncio.gather(_cpu_sampler(plan, rec),
                             *(_caller(breakers[b], b, plan, rec) for b in mine))
        rec.events = events
        return {**asdict(rec), "latency": rec.latency.tobytes()}
    finally:
        await store.aclose()


def worker_main(conn: Connection, url: str, index: int) -> None:
    conn.send(("ok", index))
    _fleet.serve_orders(conn, lambda order: asyncio.run(_run(conn, url, index, order[1])))


# --------------------------------------------------------------------------- the parent


class _Workers:
    def __init__(self, url: str, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, url, i),
                               name=f"bench-scale-{i}", daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.expect(n, "ok", 120)

    def send(self, n: int, *order: object) -> None:
        for conn in self.conns[:n]:
            conn.send(order)

    def expect(self, n: int, kind: str, within: float) -> list[Any]:
        deadline = time.monotonic() + within
        out = []
        for i, conn in enumerate(self.conns[:n]):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"scale worker {i} sent nothing in {within:g} s")
            try:
                got, payload = conn.recv()
            except EOFError as exc:
                code = self.procs[i].exitcode
                raise RuntimeError(f"scale worker {i} died (exit code {code})") from exc
            if got != kind:
                raise RuntimeError(f"scale worker {i} sent {got!r}: {payload}")
            out.append(payload)
        return out

    def close(self) -> None:
        _fleet.stop_workers(self.conns, self.procs)


class _Trips:
    """The instants Redis opened breakers, from the transition feed, in a thread."""

    def __init__(self, url: str, prefix: str) -> None:
        self.opened: dict[str, float] = {}
        self.store = redbreaker.connect(url, prefix=prefix)
        events = self.store.transitions()  # subscribed when this returns
        self.thread = threading.Thread(target=self._watch, args=(events,), daemon=True)
        self.thread.start()

    def _watch(self, events: Any) -> None:
        with contextlib.suppress(redbreaker.StoreError):
            for event in events:
                if event.current is redbreaker.State.OPEN:
                    self.opened.setdefault(event.name, event.at_ms / 1000)

    def close(self) -> None:
        self.store.close()
        self.thread.join(timeout=5)


@dataclass(frozen=True)
class Snap:
    at: float
    cpu: float
    commands: int
    stats: dict[str, int]


def _snap(admin: redis.Redis) -> Snap:
    before = time.time()
    info = admin.info("cpu", "stats", "commandstats")
    at = (before + time.time()) / 2
    stats = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
             if k.startswith("cmdstat_")}
    return Snap(at, float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                int(info["total_commands_processed"]), stats)


def _clients(admin: redis.Redis) -> tuple[int, int, int]:
    """Connections, those subscribed to something (CLIENT LIST's sub/psub), and the
    memory Redis holds for normal clients (INFO memory)."""
    listed = admin.client_list()
    subscribed = sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0 for c in listed)
    return len(listed), subscribed, int(admin.info("memory")["mem_clients_normal"])


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.time()))


def run_job(workers: _Workers, server: Any, job: Job) -> dict[str, Any]:
    """One run on fresh breakers: the steady window, then the trips; the raw figures."""
    size = job.size
    trips = _Trips(server.url, job.prefix)
    try:
        with server.client() as admin:
            base = _clients(admin)
            workers.send(size.processes, "run", job)
            workers.expect(size.processes, "ready", 120)
            start = time.time() + 0.3
            w0 = start + size.warmup
            w1 = w0 + size.window
            fail_at = {b: w1 + size.trip_gap * (k + 0.5)
                       for k, b in enumerate(trip_breakers(size))}
            end = max([w1, *fail_at.values()]) + size.tail
            plan = Schedule(start, (w0, w1), fail_at, end)
            workers.send(size.processes, plan)
            _sleep_until(w0)
            snap0 = _snap(admin)
            _sleep_until(w1)
            snap1 = _snap(admin)
            clients = _clients(admin)
            load = os.getloadavg()[0]
            results = workers.expect(size.processes, "ok", end + GRACE - time.time() + 60)
    finally:
        trips.close()
    return {"plan": plan, "snaps": (snap0, snap1), "clients": clients, "base": base,
            "load": load, "opened": dict(trips.opened), "results": results}


def section(report: Any, size: Size, server: Any) -> None:
    """Measure and print the section; ``report`` and ``server`` are run.py's."""
    from _scale_report import summarise, write

    # Cached mode's round trips depend on how often each process calls each breaker, which
    # CPU starvation lowers: one process alone, with the CPU to call them often, shows them
    # when nothing starves it.
    # Longer intervals are what a large fleet would set: their rows show what they save. The
    # last row puts every task on one breaker: what its refreshes cost grows with them.
    alone = replace(size, processes=1, trips=0, window=min(size.window, ALONE_WINDOW),
                    tail=min(size.tail, 0.3))
    jobs = {
        "strict": Job("strict", "bench-scale-0", size),
        "cached": Job("cached", "bench-scale-1", size),
        REFERENCE: Job("cached", "bench-scale-2", alone),
        f"{REFERENCE}, flush_interval=1, max_staleness=5": Job(
            "cached", "bench-scale-3", alone, flush_interval=1.0, max_staleness=5.0
        ),
        f"{REFERENCE}, flush_interval=5, max_staleness=10": Job(
            "cached", "bench-scale-4", alone, flush_interval=5.0, max_staleness=10.0
        ),
        f"{REFERENCE}, all {size.tasks} tasks on 1 breaker": Job(
            "cached", "bench-scale-5", replace(alone, breakers=1)
        ),
    }
    workers = _Workers(server.url, size.processes)
    try:
        runs = {label: run_job(workers, server, job) for label, job in jobs.items()}
    finally:
        workers.close()
    with server.client() as admin:
        fanout = _fanout.measure(admin, HOST, server.port,
                                 subscribers=size.fanout_subscribers,
                                 messages=size.fanout_messages)
    write(report, size, {label: summarise(jobs[label].size, run) for label, run in runs.items()},
          fanout)
