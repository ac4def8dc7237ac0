"""Guarding consumers (section ``consumers``): what the Redis Streams consumer and the queue
adapters cost beside what they replace, each a ratio to a variant of the same run.

- *Streams*: ``redbreaker.StreamConsumer`` (and ``redbreaker.aio.StreamConsumer``) with a
  strict and a cached breaker and a handler that does nothing, beside a hand-written loop
  (``XREADGROUP COUNT=batch BLOCK``, then ``XACK`` each) on the same client, working off
  the same backlog of a fresh stream; every variant in every round, the order rotated.
  Round trips (the client's writes) and commands (INFO commandstats) per message come
  from the same runs.
- *Idle while open*: Redis commands, round trips and CPU per consumer per second of four
  guarded consumers waiting for admission, beside four naive loops (``acquire()``, sleep
  10 ms on a rejection) and four guarded consumers idle on an empty stream (closed: they
  read first and take a permit only for a message, so their blocking XREADGROUPs are all
  they send).
- *Adapters*: one job of each adapter around a no-op, in process, beside one
  ``acquire()`` + ``success()`` of a strict breaker on the same store.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import _aio
import _counts
import _latency
import _variants

import redbreaker

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterator

    import redis

GROUP = "bench"
BLOCK_MS = 1000  # XREADGROUP BLOCK of the plain loops; max_block of the guarded ones
DRIVERS = ("sync", "aio")
KINDS = ("plain", "strict", "cached")
BATCHES = (1, 10)
IDLE_CONSUMERS = 4
NAIVE_SLEEP = 0.01
LABELS = {
    "plain": "hand-written loop (XREADGROUP, XACK each)",
    "strict": "StreamConsumer, strict breaker",
    "cached": "StreamConsumer, cached breaker",
}


def key(driver: str, kind: str, batch: int) -> str:
    return f"{driver}-{kind}-{batch}"


class _NoSharedBrokerWarning(logging.Filter):
    """Every variant runs on the benchmark's one server, so each consumer built would
    warn that its stream shares the breakers' Redis: true, and known."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) != "shared_broker"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    logger, flt = logging.getLogger("redbreaker"), _NoSharedBrokerWarning()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


# --------------------------------------------------------------------------- streams


@dataclass
class StreamResult:
    messages: int
    rounds: int
    us: dict[str, list[float]] = field(default_factory=dict)  # µs per message, per round
    round_trips: dict[str, list[float]] = field(default_factory=dict)  # per message
    commands: dict[str, list[float]] = field(default_factory=dict)  # per message
    detail: dict[str, dict[str, float]] = field(default_factory=dict)  # last round's


def _plain_sync(client: redis.Redis, batch: int) -> Callable[[str, int], float]:
    def run(stream: str, n: int) -> float:
        done = 0
        start = time.perf_counter()
        while done < n:
            reply = client.xreadgroup(GROUP, "plain", {stream: ">"}, count=batch, block=BLOCK_MS)
            for _, entries in reply:
                for msg_id, _fields in entries:
                    _variants.noop()  # the handler: (msg_id, fields) in hand
                    client.xack(stream, GROUP, msg_id)
                    done += 1
        return time.perf_counter() - start

    return run


def _guarded_sync(client: redis.Redis, breaker: redbreaker.Breaker,
                  batch: int) -> Callable[[str, int], float]:
    def run(stream: str, n: int) -> float:
        count = 0

        def handler(message: redbreaker.StreamMessage) -> None:
            nonlocal count
            count += 1
            if count == n:
                consumer.stop()  # run() returns once this message is acked

        consumer = redbreaker.StreamConsumer(
            breaker, client, handler=handler, stream=stream, group=GROUP, consumer="guarded",
            batch_size=batch, max_block=BLOCK_MS / 1000, min_idle=60,
        )
        start = time.perf_counter()
        consumer.run()
        return time.perf_counter() - start

    return run


def _plain_aio(client: Any, batch: int) -> Callable[[str, int], Any]:
    async def run(stream: str, n: int) -> float:
        done = 0
        start = time.perf_counter()
        while done < n:
            reply = await client.xreadgroup(GROUP, "plain", {stream: ">"}, count=batch,
                                            block=BLOCK_MS)
            for _, entries in reply:
                for msg_id, _fields in entries:
                    await _aio.anoop()
                    await client.xack(stream, GROUP, msg_id)
                    done += 1
        return time.perf_counter() - start

    return run


def _guarded_aio(client: Any, breaker: Any, batch: int) -> Callable[[str, int], Any]:
    assert _aio.rb_aio is not None

    async def run(stream: str, n: int) -> float:
        count = 0

        async def handler(message: redbreaker.StreamMessage) -> None:
            nonlocal count
            count += 1
            if count == n:
                consumer.stop()

        consumer = _aio.rb_aio.StreamConsumer(
            breaker, client, handler=handler, stream=stream, group=GROUP, consumer="guarded",
            batch_size=batch, max_block=BLOCK_MS / 1000, min_idle=60,
        )
        start = time.perf_counter()
        await consumer.run()
        return time.perf_counter() - start

    return run


def _fill(admin: redis.Redis, stream: str, n: int) -> None:
    pipe = admin.pipeline(transaction=False)
    pipe.delete(stream, f"{stream}:{GROUP}:failures")
    pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(n):
        pipe.xadd(stream, {"order": i})
    pipe.execute()


def measure_streams(admin: redis.Redis, url: str, prefix: str, loop: asyncio.AbstractEventLoop,
                    *, messages: int, rounds: int) -> StreamResult:
    """Every variant once per round on a fresh backlog of ``messages``, order rotated."""
    run_async = loop.run_until_complete
    client = _variants.raw_client(url, connection_class=_counts.CountingConnection)
    store = redbreaker.connect(
        _variants.raw_client(url, connection_class=_counts.CountingConnection), prefix=prefix)
    runners: dict[str, Callable[[str, int], float]] = {}
    closers: list[Callable[[], object]] = [client.close, store.close]
    for batch in BATCHES:
        runners[key("sync", "plain", batch)] = _plain_sync(client, batch)
        for mode in ("strict", "cached"):
            b = _variants.make_breaker(store, f"stream-{mode}", mode)
            runners[key("sync", mode, batch)] = _guarded_sync(client, b, batch)
    if _aio.rb_aio is not None:
        aclient = _aio.async_client(url, connection_class=_aio.CountingConnection)
        astore = _aio.rb_aio.connect(
            _aio.async_client(url, connection_class=_aio.CountingConnection), prefix=prefix)
        closers += [lambda: run_async(aclient.aclose()), lambda: run_async(astore.aclose())]
        for batch in BATCHES:
            plain = _plain_aio(aclient, batch)
            runners[key("aio", "plain", batch)] = lambda s, n, f=plain: run_async(f(s, n))
            for mode in ("strict", "cached"):
                b = _aio.make_breaker(astore, f"stream-aio-{mode}", mode)
                guarded = _guarded_aio(aclient, b, batch)
                runners[key("aio", mode, batch)] = lambda s, n, f=guarded: run_async(f(s, n))
    result = StreamResult(messages, rounds)
    keys = list(runners)
    for k in keys:
        result.us[k], result.round_trips[k], result.commands[k] = [], [], []
    serial = 0

    def once(k: str, n: int) -> tuple[float, _counts.Cost]:
        nonlocal serial
        serial += 1
        stream = f"{prefix}:stream:{serial}"
        _fill(admin, stream, n)
        gc.collect()
        meter = _counts._Meter(admin)
        seconds = [0.0]

        def action() -> None:
            seconds[0] = runners[k](stream, n)

        cost = meter.measure(action)
        admin.delete(stream, f"{stream}:{GROUP}:failures")
        return seconds[0], cost

    try:
        with quiet():
            for k in keys:  # scripts loaded, feeds subscribed, pools connected
                once(k, min(20, messages))
            for r in range(rounds):
                shift = r % len(keys)
                for k in keys[shift:] + keys[:shift]:
                    seconds, cost = once(k, messages)
                    result.us[k].append(seconds / messages * 1e6)
                    result.round_trips[k].append(cost.round_trips / messages)
                    result.commands[k].append(cost.commands / messages)
                    result.detail[k] = {c: v / messages for c, v in cost.detail.items()}
    finally:
        for close in reversed(closers):
            close()
    return result


# --------------------------------------------------------------------------- idle while open

# Start-up, counted apart from the window: a StreamConsumer gives its store's feed up to
# max_block to subscribe before its first ask, but a feed that took longer starts a new
# epoch, and the consumer asks once more after a jitter of up to a tenth of
# recovery_timeout (1 s at the default 30 s).
WAITING_SETTLE = 1.5


@dataclass
class IdleFigures:
    label: str
    settle: float  # seconds of start-up, counted apart
    startup: dict[str, float]  # commands by name per consumer, during the settle
    commands: float  # per consumer per second, over the window
    round_trips: float
    cpu_ms: float  # CPU ms per consumer per second (the consumer's own thread)
    wakeups: float  # loop iterations per consumer per second (naive only; nan otherwise)
    detail: dict[str, float] = field(default_factory=dict)


def _thread_cpu(threads: list[threading.Thread]) -> float:
    try:
        return sum(time.clock_gettime(time.pthread_getcpuclockid(t.ident or 0))
                   for t in threads)
    except (AttributeError, OSError):  # not Linux: no CPU column
        return float("nan")


def _idle_run(admin: redis.Redis, label: str, threads: list[threading.Thread],
              counts: list[int], stop: Callable[[], object], *, settle: float,
              window: float) -> IdleFigures:
    """Start ``threads``; count the commands of the first ``settle`` seconds, then the
    commands, round trips, CPU and loop iterations of ``window`` seconds; stop them."""
    meter = _counts._Meter(admin)
    try:
        startup = meter.measure(lambda: ([t.start() for t in threads], time.sleep(settle)))
        cpu, ticks = _thread_cpu(threads), sum(counts)
        cost = meter.measure(lambda: time.sleep(window))
        cpu, ticks = _thread_cpu(threads) - cpu, sum(counts) - ticks
    finally:
        stop()
        for t in threads:
            t.join(timeout=10)
    per = 1 / (IDLE_CONSUMERS * window)
    return IdleFigures(label, settle,
                       {k: v / IDLE_CONSUMERS for k, v in startup.detail.items()},
                       cost.commands * per, cost.round_trips * per, cpu * 1000 * per,
                       ticks * per if counts else float("nan"),
                       {k: v * per for k, v in cost.detail.items()})


def measure_idle(admin: redis.Redis, url: str, prefix: str, *, window: float,
                 settle: float) -> list[IdleFigures]:
    """Four guarded consumers waiting while the breaker is forced open, four naive loops
    while it is, and four guarded consumers idle on an empty stream while it is closed
    (strict, then cached). Each consumer has its own store and stream client, as a
    process of its own would."""
    block = min(1.0, window / 2)
    name, stream = "idle", f"{prefix}:idle-stream"
    closers: list[Callable[[], object]] = []

    def store() -> redbreaker.Store:
        s = redbreaker.connect(_variants.raw_client(
            url, connection_class=_counts.CountingConnection), prefix=prefix)
        closers.append(s.close)
        return s

    def guarded(label: str, mode: str, settle_s: float) -> IdleFigures:
        consumers = []
        for i in range(IDLE_CONSUMERS):
            client = _variants.raw_client(url, connection_class=_counts.CountingConnection)
            closers.append(client.close)
            consumers.append(redbreaker.StreamConsumer(
                _variants.make_breaker(store(), name, mode), client, handler=_variants.noop,
                stream=stream, group=GROUP, consumer=f"idle-{i}", max_block=block))
        threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
        return _idle_run(admin, label, threads, [], lambda: [c.stop() for c in consumers],
                         settle=settle_s, window=window)

    def naive() -> IdleFigures:
        done = threading.Event()
        counts = [0] * IDLE_CONSUMERS

        def loop(i: int, breaker: redbreaker.Breaker) -> None:
            while not done.is_set():
                counts[i] += 1
                try:
                    breaker.acquire().release()  # admitted: never, while forced open
                except redbreaker.CircuitOpenError:
                    time.sleep(NAIVE_SLEEP)

        threads = [threading.Thread(target=loop, args=(i, redbreaker.Breaker(name, store=store())),
                                    daemon=True) for i in range(IDLE_CONSUMERS)]
        return _idle_run(admin, f"naive loop: acquire(), on CircuitOpenError sleep "
                         f"{NAIVE_SLEEP * 1000:g} ms (strict)", threads, counts, done.set,
                         settle=settle, window=window)

    control_store = _variants.open_store(url, prefix)
    closers.append(control_store.close)
    control = redbreaker.Breaker(name, store=control_store)
    open_for = WAITING_SETTLE + window + block + 2.0  # all stop before the deadline
    figures = []
    try:
        with quiet():
            admin.delete(stream)
            admin.xgroup_create(stream, GROUP, id="0", mkstream=True)
            control.force_open(duration=open_for)
            figures.append(guarded(f"StreamConsumer waiting for admission (max_block "
                                   f"{block:g} s)", "strict", WAITING_SETTLE))
            control.force_open(duration=open_for)
            figures.append(naive())
            control.reset()
            for mode in ("strict", "cached"):
                figures.append(guarded(f"StreamConsumer idle on an empty stream, "
                                       f"breaker closed, {mode} (XREADGROUP BLOCK {block:g} s)",
                                       mode, settle))
    finally:
        with contextlib.suppress(Exception):
            control.reset()
        for close in reversed(closers):
            close()
        admin.delete(stream)
    return figures


# --------------------------------------------------------------------------- adapters


@dataclass
class AdapterSpec:
    key: str
    label: str
    timed: str  # what one job is, as timed
    bare: str  # the variant it is compared with
    reference: str  # the breaker call it is a ratio to


ADAPTERS = (
    AdapterSpec("celery", "celery GuardedTask",
                "task() with a worker's request pushed (GuardedTask.__call__: permit, "
                "then run) vs a plain task's run(), which is what celery's tracer calls",
                "bare", "ref"),
    AdapterSpec("dramatiq", "dramatiq BreakerMiddleware",
                "before_process_message + the actor's fn + after_process_message (a "
                "StubBroker's actor, one MessageProxy) vs the fn alone", "bare", "ref"),
    AdapterSpec("rq", "rq guard()", "the guard(breaker)-wrapped function, called outside "
                "a job, vs the bare function", "bare", "ref"),
    AdapterSpec("arq", "arq guarded_job()", "await the guarded_job(breaker)-wrapped "
                "coroutine with ctx={} vs await the bare coroutine",
                "abare", "aref"),
)


@dataclass
class AdapterResult:
    latency: _latency.LatencyResult | None = None  # sync: bare, ref and the adapters
    aio: _latency.LatencyResult | None = None  # abare, aref, arq
    missing: dict[str, str] = field(default_factory=dict)


def _sync_adapters(store: redbreaker.Store, built: dict[str, Callable[[], object]],
                   missing: dict[str, str], closers: list[Callable[[], object]]) -> None:
    breaker = redbreaker.Breaker("adapter", store=store)
    built["bare"] = _variants.noop
    built["ref"] = lambda: breaker.acquire().success()
    try:
        from celery import Celery  # type: ignore[import-untyped]

        from redbreaker.contrib.celery import GuardedTask
    except ImportError as exc:
        missing["celery"] = f"n/a ({exc})"
    else:
        app = Celery("bench", broker="memory://", set_as_current=False)
        task = app.task(base=GuardedTask, breaker=breaker, name="bench.guarded")(_variants.noop)
        app.finalize()
        task = app.tasks[task.name]
        task.push_request(called_directly=False, id="bench", retries=0)
        closers.append(task.pop_request)
        built["celery"] = task
    try:
        from dramatiq import actor
        from dramatiq.broker import MessageProxy
        from dramatiq.brokers.stub import StubBroker

        from redbreaker.contrib.dramatiq import BreakerMiddleware
    except ImportError as exc:
        missing["dramatiq"] = f"n/a ({exc})"
    else:
        broker = StubBroker()
        middleware = BreakerMiddleware(breaker)
        broker.add_middleware(middleware)
        closers.append(broker.close)
        noop_actor = actor(_variants.noop, broker=broker, actor_name="bench_noop")
        proxy = MessageProxy(noop_actor.message())

        def dramatiq_job() -> None:
            middleware.before_process_message(broker, proxy)
            result = noop_actor.fn()
            middleware.after_process_message(broker, proxy, result=result)

        built["dramatiq"] = dramatiq_job
    try:
        from redbreaker.contrib.rq import guard
    except ImportError as exc:
        missing["rq"] = f"n/a ({exc})"
    else:
        built["rq"] = guard(breaker)(_variants.noop)


async def _aio_adapters(store: Any, missing: dict[str, str]) -> dict[str, Any]:
    assert _aio.rb_aio is not None
    breaker = _aio.rb_aio.Breaker("adapter-aio", store=store)

    async def ref() -> None:
        permit = await breaker.acquire()
        await permit.success()

    async def bare(ctx: dict[str, Any]) -> None:
        return None

    built: dict[str, Any] = {"abare": lambda: bare({}), "aref": ref}
    try:
        from redbreaker.contrib.arq import guarded_job
    except ImportError as exc:
        missing["arq"] = f"n/a ({exc})"
    else:
        job = guarded_job(breaker)(bare)
        built["arq"] = lambda: job({})
    return built


def measure_adapters(url: str, prefix: str, loop: asyncio.AbstractEventLoop, *, calls: int,
                     rounds: int, warmup: int) -> AdapterResult:
    result = AdapterResult()
    closers: list[Callable[[], object]] = []
    store = _variants.open_store(url, prefix)
    closers.append(store.close)
    try:
        with quiet():
            fns: dict[str, Callable[[], object]] = {}
            _sync_adapters(store, fns, result.missing, closers)
            result.latency = _latency.measure(fns, calls=calls, rounds=rounds, warmup=warmup)
            if _aio.rb_aio is None:
                result.missing["arq"] = _aio.AIO_NA
                return result
            astore = _aio.rb_aio.connect(_aio.async_client(url), prefix=prefix)
            closers.append(lambda: loop.run_until_complete(astore.aclose()))
            afns = loop.run_until_complete(_aio_adapters(astore, result.missing))
            result.aio = loop.run_until_complete(
                _aio.measure(afns, calls=calls, rounds=rounds, warmup=warmup))
    finally:
        for close in reversed(closers):
            close()
    return result


def overhead(us: dict[str, list[float]], adapter: str, bare: str, ref: str) -> list[float]:
    """Per round: (the adapter's job - the bare job) ÷ one acquire + success."""
    return [(a - b) / r for a, b, r in zip(us[adapter], us[bare], us[ref], strict=True) if r]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- the section

# Targets: (name, goal, test). Time targets allow 1.5x over the ratio of the documented
# round trips per message at batch 10 (plain: XACK + 1/10 XREADGROUP = 1.1; strict: one
# acquire more = 2.1, i.e. 1.9x plain; cached: as plain): cached 1.5x, strict 2.9x.
STREAM_TIME_TARGETS = (("cached", 1.5), ("strict", 2.9))
RT_SLACK = 0.05  # start-up reads and cached flushes, per message
IDLE_COMMANDS_MAX = 0.1
ADAPTER_MAX = 1.2


def section(report: Any, plan: Any, server: Any) -> None:
    """Measure and print the section; ``report``, ``plan`` and ``server`` are run.py's."""
    from _stats import Spread, num, ratios, spread_text, table

    report.out("## Guarding consumers: what it costs\n")
    loop = _aio.new_loop()
    try:
        with server.client() as admin:
            streams = measure_streams(admin, server.url, "bench-consumers", loop,
                                      messages=plan.stream_messages, rounds=plan.stream_rounds)
            idle = measure_idle(admin, server.url, "bench-idle", window=plan.idle_window,
                                settle=min(0.5, plan.idle_window / 2))
        adapters = measure_adapters(server.url, "bench-adapters", loop, calls=plan.calls,
                                    rounds=plan.adapter_rounds, warmup=plan.warmup)
    finally:
        _aio.close_loop(loop)

    report.out("### Redis Streams: per message\n")
    report.out(
        f"{streams.rounds} rounds; in each, every consumer works off a fresh backlog of "
        f"{streams.messages} messages (one stream, one group, read from its start), the "
        "consumer order rotated per round. The guarded consumers run a handler that does "
        "nothing under a breaker of their own (default settings); the hand-written loop "
        f"reads with XREADGROUP COUNT=batch BLOCK {BLOCK_MS} ms and XACKs each message, on "
        "the same client. messages/s: median (min-max over rounds); x plain: per-round "
        "ratio of the time per message to the same round's hand-written loop of the same "
        "driver and batch. Round trips: the clients' writes; commands: INFO commandstats "
        "(with those Lua runs), both per message, over the whole run (start-up reads "
        "included). The stream and the breakers share the benchmark's one server.\n"
    )
    rows, detail_rows = [], []
    for driver in DRIVERS:
        for batch in BATCHES:
            plain = streams.us.get(key(driver, "plain", batch))
            for kind in KINDS:
                k = key(driver, kind, batch)
                label = f"{'sync' if driver == 'sync' else 'asyncio'}: {LABELS[kind]}"
                if k not in streams.us:
                    rows.append([label, str(batch), _aio.AIO_NA, "", "", ""])
                    continue
                rate = Spread.of([1e6 / us for us in streams.us[k]])
                ratio = ("1" if kind == "plain" or plain is None
                         else spread_text(Spread.of(ratios(streams.us[k], plain)), 3, "x"))
                rows.append([label, str(batch), spread_text(rate), ratio,
                             num(median(streams.round_trips[k])),
                             num(median(streams.commands[k]))])
                parts = ", ".join(f"{c} {num(v)}" for c, v in streams.detail[k].items())
                detail_rows.append([label, str(batch), parts])
    report.out(table(["consumer", "batch", "messages/s", "x plain (time per message)",
                      "round trips / message", "commands / message"], rows))
    report.out("\nServer commands per message (the last round):\n")
    report.out(table(["consumer", "batch", "commands"], detail_rows, align="lrl"))
    report.out()

    for driver in DRIVERS:
        plain_k = key(driver, "plain", 10)
        for kind, goal in STREAM_TIME_TARGETS:
            k = key(driver, kind, 10)
            spread = (Spread.of(ratios(streams.us[k], streams.us[plain_k]))
                      if k in streams.us else None)
            report.target(f"Streams ({driver}), batch 10: {kind} ÷ hand-written loop, time "
                          "per message", spread, f"≤ {goal}x", lambda v, g=goal: v <= g,
                          missing=_aio.AIO_NA)
    extra = []
    for driver in DRIVERS:
        plain_rt = streams.round_trips.get(key(driver, "plain", 10))
        for kind, want in (("strict", 1.0), ("cached", 0.0)):
            k = key(driver, kind, 10)
            if plain_rt is not None and k in streams.round_trips:
                extra.append((f"{driver} {kind}", median(streams.round_trips[k])
                              - median(plain_rt), want))
    off = [name for name, got, want in extra if abs(got - want) > RT_SLACK]
    report.target(
        "Streams, batch 10: round trips per message beyond the loop's (strict 1, cached 0)",
        Spread(len(off), 0, len(off), len(extra)) if extra else None,
        f"each within ±{RT_SLACK:g}", lambda v: v == 0,
        text="; ".join(f"{name} +{num(got)}" for name, got, _ in extra))

    report.out(f"### Idle consumers: {IDLE_CONSUMERS} waiting while the breaker is open, "
               f"{IDLE_CONSUMERS} on an empty stream while it is closed\n")
    report.out(
        f"{IDLE_CONSUMERS} consumers run in threads of the benchmark process, each with its "
        "own store and stream client, as a process of its own would. The breaker (default "
        "settings) is forced open with a deadline past the measurement before they start. "
        "Commands (INFO commandstats) are counted from their start over a settle time "
        "(start-up: creating the group, the feed's subscription, which a consumer awaits "
        "for up to max_block before its first ask, that first ask), then commands, round "
        "trips (the clients' writes) and CPU over "
        f"{plan.idle_window:g} s, per consumer per second. CPU: the consumer threads' own "
        "(not the stores' feed threads). The naive "
        f"loop calls a strict breaker's acquire(), sleeping {NAIVE_SLEEP * 1000:g} ms on "
        "each CircuitOpenError; a strict breaker answers rejections locally for "
        "max_staleness (1 s) after asking Redis. The last rows are the same "
        "consumers idle on an empty stream with the breaker closed: with their feed live "
        "and nothing heard against the breaker they read first and take a permit per "
        "message read, so all they send is one blocking XREADGROUP per max_block (their "
        "start-up ask is the one breaker call).\n"
    )
    rows = [[f.label, f"{num(sum(f.startup.values()))} in {f.settle:g} s: "
             + ", ".join(f"{c} {num(v)}" for c, v in f.startup.items()), num(f.commands),
             num(f.round_trips), num(f.cpu_ms), num(f.wakeups),
             ", ".join(f"{c} {num(v)}" for c, v in f.detail.items()) or "none"]
            for f in idle]
    report.out(table(["consumers", "start-up commands / consumer", "commands / consumer / s",
                      "round trips / consumer / s", "CPU ms / consumer / s",
                      "loop wake-ups / consumer / s", "commands by name / consumer / s"], rows,
                     align="llrrrrl"))
    report.out()
    waiting, naive = idle[0], idle[1]
    report.target("idle while open: StreamConsumer commands per consumer per second (no "
                  "polling)", Spread(waiting.commands, waiting.commands, waiting.commands, 1),
                  f"≤ {IDLE_COMMANDS_MAX:g}", lambda v: v <= IDLE_COMMANDS_MAX,
                  text=f"{num(waiting.commands)} (naive loop: {num(naive.commands)})")
    closed = idle[2:]  # strict, then cached
    # Everything but the stream's own commands (X...) is the breaker's: FCALL and the
    # commands its scripts run, which commandstats counts too.
    breaker_calls = [sum(v for c, v in f.detail.items() if not c.startswith("x"))
                     for f in closed]
    if closed:
        top = max(breaker_calls)
        report.target("idle on an empty stream, breaker closed: breaker commands per "
                      "consumer per second (strict and cached)",
                      Spread(top, min(breaker_calls), top, len(closed)),
                      f"≤ {IDLE_COMMANDS_MAX:g}", lambda v: v <= IDLE_COMMANDS_MAX,
                      text=", ".join(f"{mode} {num(v)}" for mode, v in
                                     zip(("strict", "cached"), breaker_calls, strict=False)))

    report.out("### Queue adapters: per job, in process\n")
    report.out(
        f"{plan.adapter_rounds} rounds x {plan.calls} timed jobs per variant, order rotated "
        "per round (as the per-call table). Each adapter wraps a no-op under a strict "
        "breaker of one store; the reference is one acquire() + success() of a strict "
        "breaker on the same store (redbreaker.aio for arq). µs per job: median of the "
        "per-round medians (min-max); x reference: per-round ratio; overhead: per round, "
        "(job - the bare no-op) ÷ the reference: 1 means the adapter costs its breaker call "
        "and nothing more. Not measured: rq's GuardedWorker.perform_job and celery's "
        "pause_queues bootstep (they need a worker and a broker; the pause costs nothing per "
        "job), arq's and celery's deferral paths (a broker write each).\n"
    )
    rows, worst = [], []
    for spec in ADAPTERS:
        res = adapters.aio if spec.key == "arq" else adapters.latency
        if spec.key in adapters.missing or res is None or spec.key not in res.medians:
            rows.append([spec.label, spec.timed, adapters.missing.get(spec.key, "n/a"),
                         "", ""])
            continue
        med = res.medians
        over = Spread.of(overhead(med, spec.key, spec.bare, spec.reference))
        if over is not None:
            worst.append((over.median, spec.label, over))
        rows.append([spec.label, spec.timed, spread_text(Spread.of(med[spec.key])),
                     spread_text(Spread.of(ratios(med[spec.key], med[spec.reference])), 3, "x"),
                     spread_text(over, 3, "x")])
    for res, label in ((adapters.latency, "strict acquire() + success() (reference)"),
                       (adapters.aio, "redbreaker.aio strict acquire() + success() "
                                      "(reference for arq)")):
        if res is not None:
            ref = "aref" if res is adapters.aio else "ref"
            rows.append([label, "", spread_text(Spread.of(res.medians[ref])), "1", ""])
    report.out(table(["adapter", "one job, as timed", "µs per job", "x reference",
                      "overhead ÷ reference"], rows, align="llrrr"))
    report.out()
    top = max(worst, default=None)
    report.target("adapters: worst (job - bare) ÷ one acquire + success", None if top is None
                  else top[2], f"≤ {ADAPTER_MAX:g}x", lambda v: v <= ADAPTER_MAX,
                  text="" if top is None else f"{spread_text(top[2], 3, 'x')} ({top[1]})")
    report.data["consumers"] = {
        "streams": streams.__dict__,
        "idle": [f.__dict__ for f in idle],
        "adapters": {"sync": None if adapters.latency is None else adapters.latency.__dict__,
                     "aio": None if adapters.aio is None else adapters.aio.__dict__,
                     "missing": adapters.missing},
    }
