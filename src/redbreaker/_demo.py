"""``python -m redbreaker demo``: several worker processes share one breaker.

The parent starts an embedded Redis (fakeredis's ``TcpFakeServer``, in a thread of this
process) unless given ``--url``, then spawns the workers. Each worker builds the same
``Breaker`` and calls a simulated dependency in a loop; the dependency is healthy, goes
down, and comes back, on a wall-clock timeline shared by every worker. Workers send the
transitions their own ``on_transition`` hooks saw, and their counts, back over a
``multiprocessing`` queue; the parent prints one timeline, the counts, and checks the two
claims the demo makes: the fleet tripped once, and no half-open window admitted more probes
than ``half_open_max_calls``.
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
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ._breaker import Breaker
from ._exceptions import CircuitOpenError
from ._state import State, Transition
from ._store import connect

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue
    from typing import TextIO

    from ._state import Snapshot
    from ._store import Store

__all__ = ["DemoError", "DemoOptions", "redact_url", "run_demo"]

BREAKER_NAME = "payments-api"
CALL_SECONDS = 0.003
"""How long one call of the simulated dependency takes, healthy or not."""
PAUSE_SECONDS = 0.007
"""How long a worker sleeps between two calls."""
DOWN_FROM, DOWN_UNTIL = 0.2, 0.6
"""The outage, as fractions of the run: 1.0 s to 3.0 s of a 5 s run."""
_LEAD_SECONDS = 0.25
_READY_TIMEOUT = 60.0
_CONTROL_NAME = "-demo-control-"
"""Name carried by the parent's own messages on the events channel (never a breaker)."""


class DemoError(RuntimeError):
    """The demo cannot run (no embedded Redis available, a worker failed to start)."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``redbreaker demo`` was asked for."""

    url: str | None = None
    workers: int = 4
    duration: float = 5.0
    probes: int = 1


@dataclass(frozen=True)
class _Plan:
    """What every worker needs to know; pickled to the spawned processes."""

    url: str
    prefix: str
    name: str
    settings: dict[str, Any]
    duration: float
    down_from: float
    down_until: float


@dataclass(frozen=True)
class _Ready:
    worker: int


@dataclass(frozen=True)
class _Hooked:
    """A transition one worker's ``on_transition`` hook saw."""

    worker: int
    transition: Transition


@dataclass
class _Report:
    """One worker's counts, sent once at the end."""

    worker: int
    pid: int
    calls: int = 0
    successes: int = 0
    failures: int = 0
    rejected: int = 0
    probes: dict[int, int] = field(default_factory=dict)
    """Probe permits this worker got, per breaker generation (one half-open window each)."""
    error: str | None = None


_Message = Union[_Ready, _Hooked, _Report]  # noqa: UP007 (a runtime alias on 3.10)


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


def _worker(worker: int, plan: _Plan, starts: Queue[float], messages: Queue[_Message]) -> None:
    """One worker process: build the shared breaker, call the dependency until the end."""
    # Ctrl-C is the parent's to handle: it stops the workers and the embedded Redis.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The hooks below report transitions; the library's log lines would repeat them.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    report = _Report(worker, os.getpid())
    probes: Counter[int] = Counter()
    store: Store | None = None
    try:
        store = connect(plan.url, prefix=plan.prefix)

        def hook(transition: Transition) -> None:
            messages.put(_Hooked(worker, transition))

        breaker = Breaker(plan.name, store=store, on_transition=[hook], **plan.settings)
        store.client.ping()
        messages.put(_Ready(worker))
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


# -- the embedded Redis ------------------------------------------------------------------


class _EmbeddedRedis:
    """fakeredis's TCP server on a free port of 127.0.0.1, served by a thread."""

    def __init__(self) -> None:
        try:
            import fakeredis  # noqa: PLC0415 (an optional dependency)
            import lupa  # noqa: F401, PLC0415 (fakeredis runs the Lua scripts with it)
        except ImportError as exc:
            raise DemoError(
                f"the embedded demo needs fakeredis with Lua ({exc}): "
                "pip install 'redbreaker[embedded]', or pass --url redis://HOST:PORT/0"
            ) from exc
        server_class = getattr(fakeredis, "TcpFakeServer", None)
        if server_class is None:
            raise DemoError(
                f"fakeredis {getattr(fakeredis, '__version__', '?')} has no TcpFakeServer: "
                "pip install -U 'fakeredis[lua]', or pass --url redis://HOST:PORT/0"
            )
        self._server = server_class(("127.0.0.1", 0))
        host, port = self._server.server_address[:2]
        self.url = f"redis://{host}:{port}/0"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="redbreaker-demo-redis",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, end every connection's handler thread, free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- a pub/sub watcher in the parent -----------------------------------------------------


def _control_payload(reason: str) -> str:
    return (
        f'{{"name": "{_CONTROL_NAME}", "from_state": "closed", "to_state": "closed", '
        f'"reason": "{reason}", "generation": 0, "at_ms": 0}}'
    )


class _Watcher:
    """Reads every transition from ``Store.transitions()`` (what ``redbreaker watch`` does),
    to compare with what the hooks reported."""

    def __init__(self, store: Store, name: str) -> None:
        self.seen: list[Transition] = []
        self.error: str | None = None
        self.listening = False
        self._store = store
        self._name = name
        self._channel = f"{store.prefix}:events"
        self._thread = threading.Thread(target=self._run, name="redbreaker-demo-watch", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Start, and wait until the subscription is live so no event is missed."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        hello = _control_payload("hello")
        while time.monotonic() < deadline and self._thread.is_alive():
            if int(self._store.client.publish(self._channel, hello)) > 0:
                self.listening = True
                return
            time.sleep(0.01)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._store.client.publish(self._channel, _control_payload("stop"))
            self._thread.join(timeout=5)

    def _run(self) -> None:
        stream: Iterator[Transition] = self._store.transitions()
        try:
            for transition in stream:
                if transition.name == _CONTROL_NAME:
                    if transition.reason == "stop":
                        break
                elif transition.name == self._name:
                    self.seen.append(transition)
        except Exception as exc:  # the Redis went away: report, never raise in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[attr-defined]


# -- the parent --------------------------------------------------------------------------


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds."""
    return round(seconds * 1000)


def redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def _server_ms(store: Store) -> int:
    seconds, micros = store.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _collect(
    processes: list[SpawnProcess],
    messages: Queue[_Message],
    deadline: float,
    *,
    until_ready: bool,
) -> tuple[list[_Message], str | None]:
    """Read messages until every worker is ready (or has reported); an error text if not."""
    got: list[_Message] = []
    pending = set(range(len(processes)))
    while pending:
        try:
            message = messages.get(timeout=0.1)
        except queue.Empty:
            message = None
        if message is not None:
            got.append(message)
            if isinstance(message, _Report) and message.error is not None:
                return got, f"worker w{message.worker} failed: {message.error}"
            if isinstance(message, _Report) or (until_ready and isinstance(message, _Ready)):
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
    embedded = _EmbeddedRedis() if options.url is None else None
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
    plan = _Plan(
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


def _run_fleet(options: DemoOptions, plan: _Plan, store: Store, embedded: bool, out: TextIO) -> int:
    # spawn, not fork: the parent runs threads (the embedded Redis), and fork copies none.
    context = multiprocessing.get_context("spawn")
    starts: Queue[float] = context.Queue()
    messages: Queue[_Message] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(worker, plan, starts, messages),
            name=f"redbreaker-demo-w{worker}",
            daemon=True,
        )
        for worker in range(options.workers)
    ]
    watcher = _Watcher(store, plan.name)
    _print_header(options, plan, embedded, out)
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
    return _print_report(
        options=options,
        plan=plan,
        embedded=embedded,
        out=out,
        got=got,
        watcher=watcher,
        zero_ms=zero_ms,
        snapshot=snapshot,
    )


def _print_header(options: DemoOptions, plan: _Plan, embedded: bool, out: TextIO) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    workers = options.workers
    say(f"redbreaker demo: {workers} worker processes share one breaker, {plan.name!r}")
    if embedded:
        say("  store       embedded Redis (fakeredis TcpFakeServer, a thread of this process)")
    else:
        say("  store       Redis")
    say(f"              {redact_url(plan.url)}, key prefix {plan.prefix}")
    say(
        "  breaker     failure_threshold=5 recovery_timeout=0.5s "
        f"half_open_max_calls={options.probes} success_threshold=1"
    )
    down, up, end = _ms(plan.down_from), _ms(plan.down_until), _ms(plan.duration)
    say(f"  dependency  healthy 0-{down} ms, DOWN {down}-{up} ms, healthy again until {end} ms")
    say(
        f"              each worker: call it ({_ms(CALL_SECONDS)} ms), "
        f"sleep {_ms(PAUSE_SECONDS)} ms, repeat"
    )
    out.flush()


def _print_report(
    *,
    options: DemoOptions,
    plan: _Plan,
    embedded: bool,
    out: TextIO,
    got: list[_Message],
    watcher: _Watcher,
    zero_ms: int,
    snapshot: Snapshot,
) -> int:
    def say(line: str = "") -> None:
        print(line, file=out)

    hooked = sorted(
        (m for m in got if isinstance(m, _Hooked)),
        key=lambda m: (m.transition.generation, m.transition.at_ms),
    )
    reports = sorted((m for m in got if isinstance(m, _Report)), key=lambda r: r.worker)
    workers = options.workers

    down, up = _ms(plan.down_from), _ms(plan.down_until)
    say()
    say("       time  worker  transition, from the on_transition hook of the worker that made it")
    rows: list[tuple[float, str]] = [
        (down, f"  {down:+6d} ms  --      {plan.name} goes DOWN"),
        (up, f"  {up:+6d} ms  --      {plan.name} is back"),
    ]
    for m in hooked:
        t = m.transition
        previous = t.previous.value if t.previous is not None else "?"
        rows.append(
            (
                t.at_ms - zero_ms + 0.5,  # a transition at a marker's time prints after it
                f"  {t.at_ms - zero_ms:+6d} ms  w{m.worker:<5}  {previous:>9} -> "
                f"{t.current.value:<9}  {t.reason:<24}  gen {t.generation}",
            )
        )
    for _, line in sorted(rows, key=lambda r: r[0]):
        say(line)
    say()

    say("  worker      pid   calls      ok  failed  rejected  probes  hooks fired")
    hooks = Counter(m.worker for m in hooked)
    totals = [0] * 6
    for r in reports:
        values = [
            r.calls,
            r.successes,
            r.failures,
            r.rejected,
            sum(r.probes.values()),
            hooks[r.worker],
        ]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        say(f"  w{r.worker:<5} {r.pid:>8}  " + _columns(values))
    say(f"  {'all':<15}  " + _columns(totals))
    say("  (rejected: CircuitOpenError, raised at once; the dependency was not called)")
    say()

    trips = sum(
        1
        for m in hooked
        if m.transition.previous is State.CLOSED and m.transition.current is State.OPEN
    )
    verdict = "one fleet-wide trip" if trips == 1 else f"EXPECTED ONE FLEET-WIDE TRIP, GOT {trips}"
    say(
        f"{verdict}: {trips} closed->open transition{'' if trips == 1 else 's'} "
        f"reported across {workers} workers"
    )
    probes_by_generation: Counter[int] = Counter()
    for r in reports:
        probes_by_generation.update(r.probes)
    windows = [m.transition.generation for m in hooked if m.transition.current is State.HALF_OPEN]
    per_window = [probes_by_generation[g] for g in windows]
    worst = max(per_window, default=0)
    listing = ", ".join(str(n) for n in per_window[:16]) + (", ..." if len(windows) > 16 else "")
    say(
        f"probes admitted per half-open window: {listing or 'none'} (limit {options.probes})"
        + ("" if worst <= options.probes else "  EXCEEDS THE LIMIT")
    )
    if watcher.listening and watcher.error is None:
        same = "the same" if len(watcher.seen) == len(hooked) else "DIFFERENT from the hooks:"
        say(
            f"pub/sub (Store.transitions() in the parent) saw {same} {len(watcher.seen)} "
            "transitions;"
        )
        say(f"  each fired an on_transition hook in exactly one of the {workers} processes")
    else:
        say(f"pub/sub watcher unavailable: {watcher.error or 'no subscription'}")
    say(
        f"final snapshot: {snapshot.state.value}, generation {snapshot.generation}, "
        f"open_count {snapshot.open_count}, consecutive_failures "
        f"{snapshot.consecutive_failures}, probes in flight {snapshot.probes_in_flight},"
    )
    say(
        f"  window {snapshot.window_calls} calls / {snapshot.window_failures} failures, "
        f"last reason {snapshot.last_reason}"
    )
    if not embedded:
        say(
            f"inspect it: redbreaker show {plan.name} --url {redact_url(plan.url)} "
            f"--prefix {plan.prefix}"
        )
    return 0 if trips == 1 and worst <= options.probes else 1


def _columns(values: list[int]) -> str:
    calls, ok, failed, rejected, probes, hooks = values
    return f"{calls:>6}  {ok:>6}  {failed:>6}  {rejected:>8}  {probes:>6}  {hooks:>11}"
