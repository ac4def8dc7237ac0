"""A half-open probe holds its slot for as long as its work runs, however its caller left.

The README promises "the dependency never sees more than ``half_open_max_calls`` probes at
once". A guard's attempt runs in a thread of its own, and Python cannot stop that thread:
when the caller gives up on it (``AttemptTimeoutError``, a ``KeyboardInterrupt``), the
attempt goes on inside the dependency. Its probe lease (the sorted set
``redbreaker:{<name>}:probes``) must stay until that abandoned attempt ends (or the lease
expires), and be freed as soon as it ends, not at lease expiry. The caller still gets its
error at once, and a timed-out probe still counts as a failure (the breaker re-opens,
reason ``probe_failed``). The dependency here counts the calls inside it at once, so "two
probes in the dependency" is seen where it happens, not inferred from Redis.

An interrupt can also land anywhere else in a probe call: after the script granted the
lease but before anything owns it, between the permit and the guard's try, while the
outcome is being recorded. A lease left behind holds its slot until ``probe_lease``
passes. Two tests look for that: one interrupts a probe call at every line redbreaker runs
in it (deterministic), one with a real signal at random moments (what a user's Ctrl-C
does). The one window no client can close (the script ran, its reply was never read) is
counted apart.

Real clock throughout; the embedded store and a real redis-server. Interrupts of a waiting
caller are sent with ``signal.pthread_kill(main, SIGINT)``, not ``_thread.interrupt_main()``,
which only sets a flag that a main thread blocked in a lock wait sees when the wait ends.
"""

from __future__ import annotations

import linecache
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from redbreaker import AttemptTimeoutError, Breaker, CircuitOpenError, State

if TYPE_CHECKING:
    import types
    from collections.abc import Callable, Iterator

HANG = 0.8  # how long the abandoned probe's attempt stays in the dependency (s)
PROBE_CALL = 0.03  # how long a later probe stays in the dependency (s)
FREED_WITHIN = 0.5  # a new probe must get in this soon after the abandoned attempt ends (s)
TAIL = 0.6  # how long the fleet keeps knocking after the abandoned attempt ended (s)
KNOCK_EVERY = 0.01  # the fleet's pause after a rejection (s)
KNOCKERS = 3  # threads standing in for the rest of the fleet


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis_server),
    ]
)
def real_store(request: pytest.FixtureRequest) -> Iterator[redbreaker.Store]:
    """A store on the real clock: the embedded one, or the session's redis-server."""
    if request.param == "memory":
        store = redbreaker.connect("memory://")
    else:
        store = redbreaker.connect(request.getfixturevalue("redis_url"))
    yield store
    store.close()


@pytest.fixture
def interrupt_main() -> Iterator[Callable[[], None]]:
    """A callable that raises KeyboardInterrupt in the main thread, wherever it is, even
    blocked in a lock wait (a real SIGINT sent to the main thread, default handler)."""
    if not hasattr(signal, "pthread_kill") or (
        threading.current_thread() is not threading.main_thread()
    ):
        pytest.skip("needs SIGINT delivered to the main thread")
    main = threading.main_thread().ident
    assert main is not None
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt() -> None:
        signal.pthread_kill(main, signal.SIGINT)

    yield interrupt
    signal.signal(signal.SIGINT, previous)


# -- helpers ---------------------------------------------------------------------------


@dataclass
class Visit:
    """One call inside the dependency."""

    label: str
    entered: float
    left: float | None = None


class Dependency:
    """A stand-in dependency that notes every call inside it, and how many at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.visits: list[Visit] = []
        self.entered = threading.Event()  # a call labelled "abandoned" is inside
        self.finished = threading.Event()  # ... and has left

    def __call__(self, seconds: float, label: str) -> str:
        visit = Visit(label, time.monotonic())
        with self._lock:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
            self.visits.append(visit)
        if label == "abandoned":
            self.entered.set()
        try:
            time.sleep(seconds)
        finally:
            with self._lock:
                self.inside -= 1
                visit.left = time.monotonic()
            if label == "abandoned":
                self.finished.set()
        return label

    def visit(self, label: str) -> Visit:
        with self._lock:
            (found,) = [v for v in self.visits if v.label == label]
            return found

    def probes_after(self, moment: float) -> list[Visit]:
        with self._lock:
            return [v for v in self.visits if v.label == "probe" and v.entered >= moment]

    def overlapping(self, visit: Visit) -> list[Visit]:
        """Other visits that were inside the dependency while ``visit`` was."""
        end = visit.left if visit.left is not None else float("inf")
        with self._lock:
            return [
                v
                for v in self.visits
                if v is not visit and v.entered < end and (v.left is None or v.left > visit.entered)
            ]


def probes_key(breaker: Breaker) -> str:
    # Spelled out as the README documents it, not taken from the library.
    return f"{breaker.store.prefix}:{{{breaker.name}}}:probes"


def leases(breaker: Breaker) -> int:
    """Probe leases held in the store now (expired ones included: none expire here)."""
    return int(breaker.store.client.zcard(probes_key(breaker)))


def half_open_breaker(
    store: redbreaker.Store, name: str, *, probe_lease: float, half_open_max_calls: int = 1
) -> Breaker:
    """A breaker tripped by one failure whose open deadline has passed: its next call is a
    probe. It never closes again (probe successes do not add up to success_threshold), so
    every call the dependency sees from here on is a probe."""
    breaker = Breaker(
        name,
        store=store,
        failure_threshold=1,
        recovery_timeout=0.05,
        half_open_max_calls=half_open_max_calls,
        probe_lease=probe_lease,
        success_threshold=1_000_000,
    )

    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(down)
    assert breaker.snapshot().state is State.OPEN
    time.sleep(0.1)
    return breaker


@dataclass
class Knocking:
    """What the rest of the fleet saw while it kept calling."""

    errors: list[BaseException]
    lease_samples: list[int]  # leases held, sampled while the abandoned attempt ran


def knock_until(breaker: Breaker, dep: Dependency, *, tail: float) -> Knocking:
    """Call through ``breaker`` from KNOCKERS threads every KNOCK_EVERY until ``tail``
    seconds after the abandoned attempt has left the dependency; meanwhile sample the
    probe leases held while that attempt is inside."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def knock() -> None:
        while not stop.is_set():
            try:
                breaker.call(dep, PROBE_CALL, "probe")
            except CircuitOpenError:
                time.sleep(KNOCK_EVERY)
            except BaseException as exc:  # handed to the test, not to the thread hook
                errors.append(exc)
                return

    threads = [threading.Thread(target=knock, daemon=True) for _ in range(KNOCKERS)]
    for thread in threads:
        thread.start()
    samples: list[int] = []
    try:
        give_up = time.monotonic() + HANG + 5
        while not dep.finished.is_set() and time.monotonic() < give_up:
            held = leases(breaker)
            # Count a sample only when the attempt was inside both before and after it.
            if not dep.finished.is_set():
                samples.append(held)
            time.sleep(KNOCK_EVERY)
        assert dep.finished.wait(5), "the abandoned attempt never ended"
        time.sleep(tail)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    return Knocking(errors, samples)


def assert_slot_held_then_freed(dep: Dependency, knocking: Knocking) -> None:
    """The abandoned attempt held the only slot while it ran, and gave it back when done."""
    assert knocking.errors == []
    abandoned = dep.visit("abandoned")
    assert abandoned.left is not None
    overlapping = [
        (v.label, round(v.entered - abandoned.entered, 3)) for v in dep.overlapping(abandoned)
    ]
    assert overlapping == [], (
        f"{len(overlapping)} probes admitted while the abandoned probe was still inside the "
        f"dependency, the first (label, seconds after it entered): {overlapping[:3]}"
    )
    assert dep.max_inside == 1, f"{dep.max_inside} probes in the dependency at once"
    assert knocking.lease_samples, "no lease sample taken while the attempt ran"
    assert min(knocking.lease_samples) == 1, (
        f"the lease was not held all along while the abandoned attempt ran: "
        f"samples {knocking.lease_samples}"
    )
    later = dep.probes_after(abandoned.left)
    assert later, "no probe admitted after the abandoned attempt ended"
    delay = later[0].entered - abandoned.left
    assert delay < FREED_WITHIN, (
        f"the next probe got in {delay:.3f}s after the abandoned attempt ended: its slot "
        f"was freed at lease expiry, not when the attempt ended"
    )


# -- an attempt timeout ----------------------------------------------------------------


@pytest.mark.slow
def test_a_timed_out_probe_keeps_its_slot_until_its_abandoned_attempt_ends(
    real_store: redbreaker.Store,
) -> None:
    """half_open_max_calls=1: a guarded probe outliving attempt_timeout fails at once and
    re-opens the breaker, but its lease stays while its attempt runs on, so no second probe
    enters the dependency; once the attempt ends the slot is free again at once."""
    breaker = half_open_breaker(real_store, "probe-slots-timeout", probe_lease=5)
    dep = Dependency()
    guard = breaker.guard(attempt_timeout=0.1)

    started = time.monotonic()
    with pytest.raises(AttemptTimeoutError):
        guard.call(dep, HANG, "abandoned")
    elapsed = time.monotonic() - started
    held_at_timeout = leases(breaker)
    snap = breaker.snapshot()
    try:
        assert elapsed < 0.5, f"the caller got its AttemptTimeoutError after {elapsed:.3f}s"
        assert dep.entered.is_set()
        # The timeout still counts: the probe failed, the breaker re-opened.
        assert (snap.state, snap.last_reason, snap.open_count) == (
            State.OPEN,
            "probe_failed",
            2,
        )
        knocking = knock_until(breaker, dep, tail=TAIL)
        assert_slot_held_then_freed(dep, knocking)
        assert held_at_timeout == 1, "the abandoned probe's lease was removed at the timeout"
    finally:
        assert dep.finished.wait(5)
    assert breaker.abandoned_attempts == 0


# -- a KeyboardInterrupt while the attempt runs -----------------------------------------


@pytest.mark.slow
def test_a_probe_left_by_keyboard_interrupt_keeps_its_slot_until_its_attempt_ends(
    real_store: redbreaker.Store, interrupt_main: Callable[[], None]
) -> None:
    """The caller of a probe is interrupted while its attempt runs in the guard's thread:
    the KeyboardInterrupt reaches the caller at once and counts nothing, but the attempt
    runs on and keeps its slot until it ends; then the slot is free again at once."""
    breaker = half_open_breaker(real_store, "probe-slots-interrupt", probe_lease=5)
    dep = Dependency()
    guard = breaker.guard(attempt_timeout=5)

    def interrupt_once_inside() -> None:
        if dep.entered.wait(5):
            time.sleep(0.05)
            interrupt_main()

    interrupter = threading.Thread(target=interrupt_once_inside, daemon=True)
    interrupter.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            guard.call(dep, 0.5, "abandoned")
        elapsed = time.monotonic() - started
    finally:
        interrupter.join(5)
    held_at_interrupt = leases(breaker)
    snap = breaker.snapshot()
    try:
        assert elapsed < 0.4, f"the KeyboardInterrupt reached the caller after {elapsed:.3f}s"
        assert not dep.finished.is_set()
        # A KeyboardInterrupt is no failure: the breaker stays half-open.
        assert (snap.state, snap.last_reason) == (State.HALF_OPEN, "recovery_timeout_elapsed")
        knocking = knock_until(breaker, dep, tail=TAIL)
        assert_slot_held_then_freed(dep, knocking)
        assert held_at_interrupt == 1, "the interrupted probe's lease was removed at once"
    finally:
        assert dep.finished.wait(5)
    assert breaker.abandoned_attempts == 0


# -- interrupts landing anywhere in a probe call --------------------------------------
#
# A probe call goes: acquire() (the script grants a lease; its reply brings the token) ->
# the guard's try -> the attempt -> the record of its outcome (which frees the lease). An
# interrupt anywhere in it must leave no lease behind once nothing runs any more; a lease
# left behind holds its slot until probe_lease passes. One window no client can close: the
# script ran but its reply (the token) was never read. Leaks there are counted apart.
#
# These breakers allow many probes at once, so a lease left behind does not block the next
# round: each round's new leases are noted, and what is still held at the end, once every
# attempt has finished, is what leaked (one settling wait per test, not one per round).

SETTLE = 1.0  # how long a lease may take to go once every attempt has finished (s)
PACKAGE_DIR = os.path.dirname(redbreaker.__file__) + os.sep
# Where a round trip's reply comes back into redbreaker's hands.
REPLY_CODES = frozenset(
    getattr(function, "__code__", None)
    for function in (getattr(redbreaker.Store, "_send", None), redbreaker.Store.run)
) - {None}

# Phases of a probe call (see phase()).
ACQUIRE_READ = "acquire: reply unread"  # the one window the client cannot close
ACQUIRE_AFTER = "acquire: reply read"
GUARD_GAP = "guard: permit held outside its try"
ATTEMPT = "attempt"
OUTCOME = "outcome: being recorded"
OUTSIDE = "guard: no permit yet"
COMPLETED = "completed"  # the call returned before its interrupt came
UNATTRIBUTED = "no round"  # a lease first seen in no noted round (a warm-up call's)


def phase(functions: list[str], reply_read: bool) -> str:
    """Which part of a probe call an interrupt landed in, from the redbreaker functions it
    went through (outermost first) and whether the acquire script's reply had been read."""
    if "acquire" in functions:
        return ACQUIRE_AFTER if reply_read else ACQUIRE_READ
    if {"_finish", "_settle", "_record", "release"} & set(functions):
        return OUTCOME
    if {"_with_retries", "_attempt"} & set(functions):
        return ATTEMPT
    if "_through_breaker" in functions:
        return GUARD_GAP
    return OUTSIDE


def fast() -> str:
    return "ok"


def many_probes_breaker(store: redbreaker.Store, name: str) -> Breaker:
    """Half-open, room for 1000 probes at once, leases of 30 s (longer than any test)."""
    return half_open_breaker(store, name, probe_lease=30, half_open_max_calls=1000)


class Ledger:
    """Notes the round each probe lease was first seen in; says which are left behind."""

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self.granted: dict[str, str] = {}
        self.rounds = 0

    def note(self, where: str) -> None:
        self.rounds += 1
        for raw in self.breaker.store.client.zrange(probes_key(self.breaker), 0, -1):
            token = raw.decode() if isinstance(raw, bytes) else str(raw)
            self.granted.setdefault(token, where)

    def held(self) -> set[str]:
        raw = self.breaker.store.client.zrange(probes_key(self.breaker), 0, -1)
        return {r.decode() if isinstance(r, bytes) else str(r) for r in raw}

    def left_behind(self) -> dict[str, list[str]]:
        """Per phase, where the rounds whose lease is still held were interrupted, once
        every attempt has ended and SETTLE has passed."""
        end = time.monotonic() + 5
        while self.breaker.abandoned_attempts and time.monotonic() < end:
            time.sleep(0.005)
        assert self.breaker.abandoned_attempts == 0, "an attempt never ended"
        end = time.monotonic() + SETTLE
        while self.held() and time.monotonic() < end:
            time.sleep(0.01)
        leaks: dict[str, list[str]] = {}
        for token in sorted(self.held()):
            where = self.granted.get(token, f"{UNATTRIBUTED} @ -")
            window, _, site = where.partition(" @ ")
            leaks.setdefault(window, []).append(site)
        return leaks


def closable(leaks: dict[str, list[str]], windows: tuple[str, ...]) -> dict[str, list[str]]:
    return {window: sites for window, sites in leaks.items() if window in windows}


def brief(leaks: dict[str, list[str]]) -> str:
    """Per window: how many leases were left behind, and where (function:first-last line)."""
    parts = []
    for window, sites in leaks.items():
        lines: dict[str, list[int]] = {}
        for site in sites:
            function, _, line = site.split(" ")[0].partition(":")
            lines.setdefault(function, []).append(int(line) if line.isdigit() else 0)
        where = ", ".join(
            f"{function}:{min(found)}" + (f"-{max(found)}" if max(found) != min(found) else "")
            for function, found in lines.items()
        )
        parts.append(f"{window}: {len(sites)} ({where})")
    return "; ".join(parts) or "none"


# -- ... at every line of redbreaker a probe call runs (deterministic) ---


def with_or_try_line(frame: types.FrameType) -> bool:
    """A ``with`` or ``try:`` line. A ``with`` line's event comes again when the block
    ends, right before ``__exit__`` is called and outside the block's protection: raising
    there would leave a lock held, which no signal can do (CPython handles signals after
    calls and backward jumps; it enters a ``with`` block in one instruction). A ``try:``
    line is a no-op, where no signal is handled either."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip()
    return line.startswith(("with ", "try:"))


Line = tuple[str, str, int, int]  # file, function, line number, nth time in the call


class LineTracer:
    """A trace function over the lines redbreaker's code runs in this thread. Notes them
    all, or raises KeyboardInterrupt at ``target`` (which ends tracing: one per call)."""

    def __init__(self, target: Line | None = None) -> None:
        self.target = target
        self.times: Counter[tuple[str, str, int]] = Counter()
        self.lines: list[Line] = []
        self.reply_read = False  # the acquire script's reply is back in redbreaker's hands
        self.site: str | None = None

    def calls(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return self.lines_of
        return None

    def lines_of(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "line" and not with_or_try_line(frame):
            key = (frame.f_code.co_filename, frame.f_code.co_name, frame.f_lineno)
            self.times[key] += 1
            line = (*key, self.times[key])
            self.lines.append(line)
            if line == self.target:
                functions = []
                outer: types.FrameType | None = frame
                while outer is not None:
                    if outer.f_code.co_filename.startswith(PACKAGE_DIR):
                        functions.append(outer.f_code.co_name)
                    outer = outer.f_back
                functions.reverse()
                self.site = (
                    f"{phase(functions, self.reply_read)} @ {frame.f_code.co_name}:{frame.f_lineno}"
                )
                raise KeyboardInterrupt
        elif event == "return" and frame.f_code in REPLY_CODES and arg is not None:
            self.reply_read = True
        return self.lines_of


def traced_call(guard: redbreaker.Guard, tracer: LineTracer) -> None:
    previous = sys.gettrace()
    sys.settrace(tracer.calls)
    try:
        assert guard.call(fast) == "ok"
    except KeyboardInterrupt:
        assert tracer.site is not None
    finally:
        sys.settrace(previous)


def every_line_interrupted(breaker: Breaker) -> Ledger:
    """The lines redbreaker runs in one probe call, noted; then, for each, a probe call
    interrupted there (by function, line number and how many times it ran before, so a
    path that varies a little between calls does not shift the rest)."""
    guard = breaker.guard(attempt_timeout=1)
    for _ in range(3):
        guard.call(fast)  # warm: the library loaded, an attempt thread started
    noted = LineTracer()
    traced_call(guard, noted)
    assert noted.site is None
    ledger = Ledger(breaker)
    for line in noted.lines:
        breaker.snapshot()  # an interrupted round trip drops its connection: connect first
        tracer = LineTracer(line)
        traced_call(guard, tracer)
        if tracer.site is not None:  # else the line did not run this time
            ledger.note(tracer.site)
    return ledger


_sweeps: dict[str, tuple[int, dict[str, list[str]]]] = {}


@pytest.fixture
def line_sweep(
    request: pytest.FixtureRequest, real_store: redbreaker.Store
) -> tuple[int, dict[str, list[str]]]:
    """(calls interrupted, leases left behind by window) of every_line_interrupted() on
    this kind of store: swept once, asserted on by window."""
    kind = request.node.callspec.params["real_store"]
    if kind not in _sweeps:
        ledger = every_line_interrupted(many_probes_breaker(real_store, "probe-slots-lines"))
        _sweeps[kind] = (ledger.rounds, ledger.left_behind())
        print(f"\n[probe-slots lines, {kind}] {ledger.rounds} calls: {brief(_sweeps[kind][1])}")
    return _sweeps[kind]


@pytest.mark.slow
@pytest.mark.parametrize(
    "windows",
    [
        pytest.param((ACQUIRE_AFTER,), id="acquire"),
        pytest.param((GUARD_GAP, ATTEMPT, OUTSIDE, UNATTRIBUTED), id="guard"),
        pytest.param((OUTCOME,), id="outcome"),
    ],
)
def test_an_interrupt_at_any_line_of_a_probe_call_leaks_no_slot(
    line_sweep: tuple[int, dict[str, list[str]]], windows: tuple[str, ...]
) -> None:
    """Deterministic: for every line redbreaker runs in a guarded probe call, one call
    gets a KeyboardInterrupt at that line (a trace function raises it). None may leave its
    lease behind once nothing runs, except in the one window no client can close (the
    script ran, its reply was never read).

    ``acquire``: in acquire() once the script's reply is read (decoding it, building the
    permit). ``guard``: while the guard holds the permit outside its try, and in the
    attempt. ``outcome``: while the probe's outcome is being recorded, before the record
    reaches the store."""
    calls, leaks = line_sweep
    assert calls > 50
    assert closable(leaks, windows) == {}, (
        f"{calls} calls, each interrupted at its next line; leases left behind: "
        + brief(closable(leaks, windows))
    )


# -- ... by a signal at a random moment ---

ROUNDS = 40


def pure_python_client(url: str) -> redis.Redis:
    """A client without hiredis. With hiredis 3.5 (redis-py 8.1), random interrupts of
    plain ``send_command``/``read_response`` pairs crash the interpreter now and then
    (SIGSEGV in ``hiredis.pack_command`` while reconnecting), redbreaker or not."""
    from redis._parsers import _RESP3Parser
    from redis.connection import PythonRespSerializer

    client = redis.Redis.from_url(url, parser_class=_RESP3Parser)
    client.connection_pool.connection_kwargs["command_packer"] = PythonRespSerializer(
        6000, client.get_encoder().encode
    )
    return client


class Alarm:
    """Raises KeyboardInterrupt in the main thread after a delay, by SIGALRM.

    An interval timer fires on time, to the microsecond, without a thread that would first
    have to win the GIL; its handler runs in the main thread at the next check for signals.
    """

    def __init__(self) -> None:
        self.fired = False

    def _handler(self, signum: int, frame: object) -> None:
        self.fired = True
        raise KeyboardInterrupt

    def arm(self, seconds: float) -> None:
        self.fired = False
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))

    def wait_fired(self, timeout: float = 1.0) -> None:
        """Wait (here, where the interrupt is caught) until it has gone off."""
        end = time.monotonic() + timeout
        while not self.fired and time.monotonic() < end:
            time.sleep(0.0002)


@pytest.fixture
def alarm() -> Iterator[Alarm]:
    if not hasattr(signal, "setitimer") or (
        threading.current_thread() is not threading.main_thread()
    ):
        pytest.skip("needs SIGALRM delivered to the main thread")
    alarm = Alarm()
    previous = signal.signal(signal.SIGALRM, alarm._handler)
    yield alarm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def landing(exc: BaseException) -> str:
    """The phase and innermost redbreaker line an interrupt went through."""
    ours = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith(PACKAGE_DIR):
            ours.append((code.co_name, tb.tb_lineno))
        tb = tb.tb_next
    functions = [name for name, _ in ours]
    # Inside _send the reply was not read yet (or not handed back); past it, it was.
    reply_read = "_send" not in functions
    where = f"{ours[-1][0]}:{ours[-1][1]}" if ours else "-"
    return f"{phase(functions, reply_read)} @ {where}"


def call_span(guard: redbreaker.Guard) -> float:
    """Seconds a whole uninterrupted probe call takes here (median of 21, after warm-up)."""
    spans = []
    for i in range(26):
        started = time.perf_counter()
        guard.call(fast)
        if i >= 5:
            spans.append(time.perf_counter() - started)
    return sorted(spans)[len(spans) // 2]


@pytest.mark.slow
@pytest.mark.redis_server
def test_random_interrupts_of_probe_calls_leak_no_slot(redis_url: str, alarm: Alarm) -> None:
    """40 probe calls, each hit by SIGALRM -> KeyboardInterrupt at a random moment of its
    span (uniform over the median uninterrupted call). Afterwards no lease may stay behind,
    except where the interrupt kept the acquire script's reply from being read (about half
    of all interrupts land there: the round trip is most of a call). A measurement as much
    as a test: which windows it hits varies from run to run; the line sweep above is the
    deterministic check. Real Redis only: the embedded store runs the scripts in this
    thread, so an interrupt can stop one halfway (fakeredis is not atomic under signals;
    once it even answered WRONGTYPE afterwards)."""
    store = redbreaker.connect(pure_python_client(redis_url))
    try:
        breaker = many_probes_breaker(store, "probe-slots-signals")
        guard = breaker.guard(attempt_timeout=1)
        span = call_span(guard)
        rng = random.Random(20240611)
        ledger = Ledger(breaker)
        phases: Counter[str] = Counter()
        for _ in range(ROUNDS):
            breaker.snapshot()  # an interrupted round trip drops its connection: connect first
            where = f"{COMPLETED} @ -"
            try:
                try:
                    alarm.arm(rng.uniform(0, span))
                    guard.call(fast)
                finally:
                    # The interrupt must land inside this try, whenever it comes.
                    alarm.wait_fired()
            except KeyboardInterrupt as exc:
                if not returned_in(exc):
                    where = landing(exc)
            assert alarm.fired
            phases[where.partition(" @ ")[0]] += 1
            ledger.note(where)
        leaks = ledger.left_behind()
    finally:
        store.close()
    report = (
        f"{ROUNDS} calls of {span * 1000:.3f} ms, interrupts landed in {dict(phases)}; "
        f"leases left behind: {brief(leaks)}"
    )
    print(f"\n[probe-slots signals] {report}")
    assert phases[COMPLETED] <= ROUNDS // 2, f"too few interrupts landed in a call: {report}"
    freeable = {window: sites for window, sites in leaks.items() if window != ACQUIRE_READ}
    assert freeable == {}, f"leases left behind where a client can free them: {report}"


def returned_in(exc: BaseException) -> bool:
    """Whether an interrupt landed after the guarded call had returned (in the wait)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is Alarm.wait_fired.__code__:
            return True
        tb = tb.tb_next
    return False
