"""``python -m redbreaker demo``: several worker processes share one breaker.

The parent starts an embedded Redis (fakeredis's ``TcpFakeServer``, in a thread of this
process) unless given ``--url``, then spawns the workers. Each worker builds the same
``Breaker`` and calls a simulated dependency in a loop; the dependency is healthy, goes
down, and comes back, on a wall-clock timeline shared by every worker. Workers send the
transitions their own ``on_transition`` hooks saw, and their counts, back over a
``multiprocessing`` queue; the parent prints one timeline, the counts, and checks the two
claims the demo makes: the fleet tripped once, and no half-open window admitted more probes
than ``half_open_max_calls``.

The plan, the messages and the printed report are :mod:`redbreaker._demo_report`'s; the
embedded Redis and the parent's pub/sub watcher :mod:`redbreaker._demo_redis`'s.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import secrets
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ._breaker import Breaker
from ._demo_redis import EmbeddedRedis, Watcher
from ._demo_report import (
    BREAKER_NAME,
    CALL_SECONDS,
    DOWN_FROM,
    DOWN_UNTIL,
    PAUSE_SECONDS,
    DemoError,
    DemoOptions,
    Hooked,
    Message,
    Plan,
    Ready,
    Report,
    print_header,
    print_report,
    redact_url,
)
from ._exceptions import CircuitOpenError
from ._store import connect

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue
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


def _worker(worker: int, plan: Plan, starts: Queue[float], messages: Queue[Message]) -> None:
    """One worker process: build the shared breaker, call the dependency until the end."""
    # Ctrl-C is the parent's to handle: it stops the workers and the embedded Redis.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The hooks below report transitions; the library's log lines would repeat them.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    report = Report(worker, os.getpid())
    probes: Counter[int] = Counter()
    store: Store | None = None
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
        while (now := time.time()) < end:
            healthy = not plan.down_from <= now - start < plan.down_until
            report.calls += 1
            try:
                with breaker.acquire() as permit:
                    if permit.is_probe:
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


def run_demo(options: DemoOptions, out: TextIO) -> int:
    """Run the demo, print its report to ``out``; 0 when the demo's claims held.

    Raises:
        DemoError: the demo could not run.
        ConfigError, redis.RedisError: a bad ``--url``, or its Redis cannot be reached.
    """
    _check_options(options)
    embedded = EmbeddedRedis() if options.url is None else None
    try:
        if embedded is not None:
            return _run(options, embedded.url, True, out)
        assert options.url is not None
        return _run(options, options.url, False, out)
    finally:
        if embedded is not None:
            embedded.close()


def _run(options: DemoOptions, url: str, embedded: bool, out: TextIO) -> int:
    prefix = f"demo-{secrets.token_hex(3)}"
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
    )
    store = connect(url, prefix=prefix)
    try:
        store.client.ping()
        return _run_fleet(options, plan, store, embedded, out)
    finally:
        store.close()


def _run_fleet(options: DemoOptions, plan: Plan, store: Store, embedded: bool, out: TextIO) -> int:
    # spawn, not fork: the parent runs threads (the embedded Redis), and fork copies none.
    context = multiprocessing.get_context("spawn")
    starts: Queue[float] = context.Queue()
    messages: Queue[Message] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(worker, plan, starts, messages),
            name=f"redbreaker-demo-w{worker}",
            daemon=True,
        )
        for worker in range(options.workers)
    ]
    watcher = Watcher(store, plan.name)
    print_header(options, plan, embedded, out)
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
        zero_ms = _server_ms(store) + round(_LEAD_SECONDS * 1000)
        for _ in processes:
            starts.put(start)
        more, error = _collect(
            processes,
            messages,
            time.monotonic() + _LEAD_SECONDS + plan.duration + 30,
            until_ready=False,
        )
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
    return print_report(
        options=options,
        plan=plan,
        embedded=embedded,
        out=out,
        got=got,
        watcher=watcher,
        zero_ms=zero_ms,
        snapshot=snapshot,
    )
