"""``python -m redbreaker demo``: several worker processes share one breaker.

The parent starts an embedded Redis (fakeredis's ``TcpFakeServer``, in a thread of this
process) unless given ``--url``, then spawns the workers. Each worker builds the same
``Breaker`` and calls a simulated dependency in a loop; the dependency is healthy, goes
down, and comes back, on a wall-clock timeline shared by every worker. Workers send the
transitions their own ``on_transition`` hooks saw, and their counts, back over a
``multiprocessing`` queue; the parent prints one timeline, the counts, and checks the two
claims the demo makes: the fleet tripped once, and no half-open window admitted more probes
than ``half_open_max_calls``. With ``forever`` the cycle repeats until SIGINT or SIGTERM
(:mod:`redbreaker._demo_forever` prints it live and sums it up).

The plan, the messages and the printed report are :mod:`redbreaker._demo_report`'s; the
embedded Redis and the parent's pub/sub watcher :mod:`redbreaker._demo_redis`'s.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import secrets
import signal
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ._breaker import Breaker
from ._connect import connect
from ._demo_forever import Tally, follow, print_forever_report, stop_signals
from ._demo_redis import EmbeddedRedis, Watcher
from ._demo_report import (
    BREAKER_NAME,
    CALL_SECONDS,
    DOWN_FROM,
    DOWN_UNTIL,
    FOREVER_PREFIX,
    PAUSE_SECONDS,
    DemoError,
    DemoOptions,
    Hooked,
    Message,
    Plan,
    Probed,
    Ready,
    Report,
    print_header,
    print_report,
    redact_url,
)
from ._exceptions import CircuitOpenError

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event
    from typing import TextIO

    from ._state import Transition
    from ._store import Store

__all__ = ["DemoError", "DemoOptions", "redact_url", "run_demo"]

_LEAD_SECONDS = 0.25
_READY_TIMEOUT = 60.0


class DependencyDownError(ConnectionError):
    """What the simulated dependency raises while it is down."""


def _call_dependency(healthy: bool) -> str:
    time.sleep(CALL_SECONDS)
    if not healthy:
        raise DependencyDownError("503 from payments-api")
    return "ok"


def _sleep_until(deadline: float) -> None:
    left = deadline - time.time()
    if left > 0:
        time.sleep(left)


def _keep_calling(plan: Plan, end: float, stop: Event, parent: int) -> bool:
    if not plan.forever:
        return time.time() < end
    # A worker whose parent was killed is re-parented: it stops, never runs on unwatched.
    return not stop.is_set() and os.getppid() == parent


def _worker(
    worker: int, plan: Plan, starts: Queue[float], messages: Queue[Message], stop: Event
) -> None:
    """One worker process: build the shared breaker, call the dependency until the end
    (``forever``: until the parent sets ``stop``)."""
    # Ctrl-C is the parent's to handle: it stops the workers and the embedded Redis.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The hooks below report transitions; the library's log lines would repeat them.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    report = Report(worker, os.getpid())
    probes: Counter[int] = Counter()
    store: Store | None = None
    parent = os.getppid()
    try:
        store = connect(plan.url, prefix=plan.prefix)

        def hook(transition: Transition) -> None:
            messages.put(Hooked(worker, transition))

        breaker = Breaker(plan.name, store=store, on_transition=[hook], **plan.settings)
        store.client.ping()
        messages.put(Ready(worker))
        start = starts.get(timeout=_READY_TIMEOUT)
        _sleep_until(start)
        end = start + plan.duration
        while _keep_calling(plan, end, stop, parent):
            into_cycle = (
                (time.time() - start) % plan.duration if plan.forever else time.time() - start
            )
            healthy = not plan.down_from <= into_cycle < plan.down_until
            report.calls += 1
            try:
                with breaker.acquire() as permit:
                    if permit.is_probe:
                        report.probe_count += 1
                        if plan.forever:
                            messages.put(Probed(worker, permit.generation))
                        else:
                            probes[permit.generation] += 1
                    _call_dependency(healthy)
            except CircuitOpenError:
                report.rejected += 1
            except DependencyDownError:
                report.failures += 1
            else:
                report.successes += 1
            time.sleep(PAUSE_SECONDS)
    except Exception as exc:  # reported to the parent, which prints it and exits non-zero
        report.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    finally:
        report.probes = dict(probes)
        messages.put(report)
        if store is not None:
            store.close()


# -- the parent --------------------------------------------------------------------------


def _server_ms(store: Store) -> int:
    seconds, micros = store.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _collect(
    processes: list[SpawnProcess],
    messages: Queue[Message],
    deadline: float,
    *,
    until_ready: bool,
) -> tuple[list[Message], str | None]:
    """Read messages until every worker is ready (or has reported); an error text if not."""
    got: list[Message] = []
    pending = set(range(len(processes)))
    while pending:
        try:
            message = messages.get(timeout=0.1)
        except queue.Empty:
            message = None
        if message is not None:
            got.append(message)
            if isinstance(message, Report) and message.error is not None:
                return got, f"worker w{message.worker} failed: {message.error}"
            if isinstance(message, Report) or (until_ready and isinstance(message, Ready)):
                pending.discard(message.worker)
            continue
        for worker in sorted(pending):
            code = processes[worker].exitcode
            if code is not None:
                return got, f"worker w{worker} exited with code {code} without reporting"
        if time.monotonic() > deadline:
            missing = ", ".join(f"w{w}" for w in sorted(pending))
            return got, f"timed out waiting for {missing}"
    return got, None


def _check_options(options: DemoOptions) -> None:
    if not 1 <= options.workers <= 64:
        raise DemoError(f"--workers must be between 1 and 64, got {options.workers}")
    if not 2.0 <= options.duration <= 600:
        raise DemoError(f"--duration must be between 2 and 600 seconds, got {options.duration}")
    if not 1 <= options.probes <= 100:
        raise DemoError(f"--probes must be between 1 and 100, got {options.probes}")


def run_demo(
    options: DemoOptions,
    out: TextIO,
    *,
    stop: threading.Event | None = None,
    summary: dict[str, Any] | None = None,
) -> int:
    """Run the demo, print its report to ``out``; 0 when the demo's claims held.

    With ``options.forever`` it runs until SIGINT or SIGTERM (handled, when called from
    the main thread) or until ``stop`` is set, then prints what it saw and returns.
    ``summary``, if given, is filled with the report's figures (``demo --json``).

    Raises:
        DemoError: the demo could not run.
        ConfigError, redis.RedisError: a bad ``--url``, or its Redis cannot be reached.
    """
    _check_options(options)
    stopping = stop if stop is not None else threading.Event()
    no_signals = contextlib.nullcontext(list[str]())
    with stop_signals(stopping) if options.forever else no_signals as signals:
        embedded = EmbeddedRedis() if options.url is None else None
        try:
            url = embedded.url if embedded is not None else options.url
            assert url is not None
            stop_ = _Stop(stopping, signals)
            return _run(options, url, embedded is not None, out, stop_, summary=summary)
        finally:
            if embedded is not None:
                embedded.close()


class _Stop:
    """How a forever run ends: the event a signal (or the caller) sets, and which signal."""

    def __init__(self, event: threading.Event, signals: list[str]) -> None:
        self.event = event
        self.signals = signals

    def why(self) -> str:
        return self.signals[0] if self.signals else "request"


def _run(
    options: DemoOptions,
    url: str,
    embedded: bool,
    out: TextIO,
    stop: _Stop,
    *,
    summary: dict[str, Any] | None,
) -> int:
    prefix = FOREVER_PREFIX if options.forever else f"demo-{secrets.token_hex(3)}"
    settings: dict[str, Any] = {
        "failure_threshold": 5,
        "recovery_timeout": 0.5,
        "half_open_max_calls": options.probes,
        "success_threshold": 1,
        "window": 10.0,
        "max_recovery_timeout": 5.0,
        "key_ttl": 60.0,  # a demo on a real Redis leaves nothing behind for long
    }
    plan = Plan(
        url=url,
        prefix=prefix,
        name=BREAKER_NAME,
        settings=settings,
        duration=options.duration,
        down_from=DOWN_FROM * options.duration,
        down_until=DOWN_UNTIL * options.duration,
        forever=options.forever,
    )
    store = connect(url, prefix=prefix)
    try:
        store.client.ping()
        return _run_fleet(options, plan, store, embedded, out, stop=stop, summary=summary)
    finally:
        store.close()


def _run_fleet(
    options: DemoOptions,
    plan: Plan,
    store: Store,
    embedded: bool,
    out: TextIO,
    *,
    stop: _Stop,
    summary: dict[str, Any] | None = None,
) -> int:
    # spawn, not fork: the parent runs threads (the embedded Redis), and fork copies none.
    context = multiprocessing.get_context("spawn")
    starts: Queue[float] = context.Queue()
    messages: Queue[Message] = context.Queue()
    stop_workers = context.Event()
    processes = [
        context.Process(
            target=_worker,
            args=(worker, plan, starts, messages, stop_workers),
            name=f"redbreaker-demo-w{worker}",
            daemon=True,
        )
        for worker in range(options.workers)
    ]
    watcher = Watcher(plan.url, plan.prefix, plan.name)
    print_header(options, plan, embedded, out)
    tally = Tally(zero_ms=0, cycle_ms=round(plan.duration * 1000))
    ran, reports = 0.0, list[Report]()
    try:
        for process in processes:
            process.start()
        got, error = _collect(
            processes, messages, time.monotonic() + _READY_TIMEOUT, until_ready=True
        )
        if error is not None:
            raise DemoError(error)
        watcher.start()
        start = time.time() + _LEAD_SECONDS
        started = time.monotonic() + _LEAD_SECONDS
        zero_ms = tally.zero_ms = _server_ms(store) + round(_LEAD_SECONDS * 1000)
        for _ in processes:
            starts.put(start)
        if plan.forever:
            reports, error = follow(
                processes, messages, tally, plan=plan, started=started, stopping=stop.event, out=out
            )
            ran = max(0.0, time.monotonic() - started)
            if error is not None:
                raise DemoError(error)
            stop_workers.set()
        more, error = _collect(
            processes,
            messages,
            time.monotonic() + _LEAD_SECONDS + (30 if plan.forever else plan.duration + 30),
            until_ready=False,
        )
        if plan.forever:
            for message in more:
                if isinstance(message, Report):
                    reports.append(message)
                else:
                    tally.add(message, out)
        got += more
        if error is not None:
            raise DemoError(error)
        for process in processes:
            process.join(timeout=10)
    finally:
        watcher.stop()
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        starts.close()
        messages.close()
    snapshot = Breaker(plan.name, store=store, **plan.settings).snapshot()
    if plan.forever:
        return print_forever_report(
            options=options,
            plan=plan,
            out=out,
            reports=reports,
            tally=tally,
            watcher=watcher,
            ran=ran,
            why=stop.why(),
            snapshot=snapshot,
        )
    return print_report(
        options=options,
        plan=plan,
        embedded=embedded,
        out=out,
        got=got,
        watcher=watcher,
        zero_ms=zero_ms,
        snapshot=snapshot,
        summary=summary,
    )
