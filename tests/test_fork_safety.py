"""Forking a process that is using breakers (gunicorn ``preload_app``, a ``fork``
multiprocessing pool, a worker that forks helpers) must leave the child a working
breaker, whatever the parent's other threads were doing at the instant of the fork.

1. ``test_child_forked_mid_call_is_not_broken``: the parent hammers one store from several
   threads (long-lived ones calling ``breaker.call`` and a guard with an attempt timeout,
   and short-lived ones, a new thread every few calls, so redis-py's pool lock is taken
   all the time: a thread takes a connection on its first call and gives it back when it
   ends) while the main thread forks children round after round. Each child at once makes
   calls through the breakers and the store it inherited. A child must finish (no lock
   inherited locked, held by a thread that does not exist in the child) and no exception
   but a ``RedbreakerError`` may reach it (no raw ``redis.exceptions.ChildDeadlockedError``).

2. ``test_child_does_not_resend_parents_batched_successes``: a cached breaker's successes
   counted in the parent and not yet sent belong to the parent alone; a forked child that
   flushes must send only its own, else the window counts the parent's calls once per child.

Run with ``-s`` to see the measured figures (``[fork] ...`` lines). A hung child is asked
for its threads' stacks (SIGUSR1, faulthandler) before it is killed; the failure shows them.

Before the fix (40 rounds x 6 children, 3 runs): 9-17 strict and 4-12 cached children of
240 hung, some after a raw ``ChildDeadlockedError``; the batch test counted 337 calls for
55. One cause was subtle: inside ``os.fork()`` the child drops the parent's other threads,
and their held connections' finalizers ran before any at-fork hook, so ``_give_back`` must
compare process ids, not the fork count.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, NoReturn

import pytest

import redbreaker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.slow,
    # CPython >= 3.12 warns about fork() in a process with threads: that is the scenario.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)"),
]

CONSISTENCY = pytest.mark.parametrize("consistency", ["strict", "cached"])

ROUNDS = 40
CHILDREN_PER_ROUND = 6
CHILD_CALLS = 20
CHILD_DEADLINE = 15.0
"""Seconds a child may take from its fork to its exit; one still alive then is hung
(killed and counted). A healthy child needs well under a second; the old redis-py
deadlock is forever (strict) or 5 s then ChildDeadlockedError (cached)."""
CHILD_ALARM = 120
"""A child's own last resort (SIGALRM, default action: die) if the test process is gone
(set once its code runs: a child hung inside ``os.fork()`` has none; the test kills it)."""
ROUND_GAP = 0.03
"""Seconds the hammering threads run alone between two rounds of forks."""
SWITCH_INTERVAL = 1e-4
"""The parent switches threads this often (default 5 ms) while it forks, so that a fork
lands more often where a hammering thread was preempted (inside a pool's lock)."""

_RUNNER_FRAME = re.compile(r"[/\\](_pytest|pluggy|pytest)[/\\]|<frozen runpy>")
"""Frames of the test runner, left out of a hung child's stacks."""

EXIT_OK = 0
EXIT_RAW = 3
EXIT_BROKEN = 4


def _work() -> str:
    return "ok"


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return f"{kind.__module__}.{kind.__qualname__}"


# ------------------------------------------------------------------------------ the parent


@dataclass
class Hammer:
    """Threads calling through ``breakers`` on one store until ``stop()``: one long-lived
    thread per breaker calling ``breaker.call``, one calling a guard with an attempt
    timeout, and ``churners`` threads that each start a new short-lived thread for every
    few calls (call and guard alternately), so connections are taken from and given back
    to the pool all the time."""

    breakers: list[redbreaker.Breaker]
    churners: int = 2
    calls_per_thread: int = 3
    calls: int = 0
    threads_started: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _one(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except redbreaker.RedbreakerError as exc:
            self.errors[type(exc).__name__] += 1
        except Exception as exc:
            self.errors[_type_name(exc)] += 1
        self.calls += 1  # not exact across threads; a figure, not an assertion

    def _loop_call(self, breaker: redbreaker.Breaker) -> None:
        while not self._stop.is_set():
            self._one(lambda: breaker.call(_work))

    def _loop_guard(self, breaker: redbreaker.Breaker) -> None:
        guarded = breaker.guard(attempt_timeout=1)(_work)
        while not self._stop.is_set():
            self._one(guarded)

    def _short_lived(self, index: int) -> None:
        for i in range(self.calls_per_thread):
            breaker = self.breakers[(index + i) % len(self.breakers)]
            if (index + i) % 2:
                self._one(functools.partial(breaker.call, _work))
            else:
                self._one(breaker.guard(attempt_timeout=1)(_work))

    def _churn(self, offset: int) -> None:
        index = offset
        while not self._stop.is_set():
            thread = threading.Thread(target=self._short_lived, args=(index,), daemon=True)
            thread.start()
            self.threads_started += 1
            thread.join()
            index += 1

    def start(self) -> None:
        targets: list[tuple[Callable[..., None], tuple[object, ...]]] = [
            (self._loop_call, (b,)) for b in self.breakers
        ]
        targets.append((self._loop_guard, (self.breakers[0],)))
        targets += [(self._churn, (i,)) for i in range(self.churners)]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"the parent's hammering threads did not stop: {stuck}"


@contextlib.contextmanager
def _stacks_on_sigusr1(path: Path) -> Iterator[IO[str]]:
    """SIGUSR1 makes a process (and the children it forks meanwhile: the handler is C
    code, inherited by fork) write every thread's stack to ``path``: a hung child shows
    where it hangs, even inside ``os.fork()`` before any of its Python code ran."""
    with open(path, "a+") as stacks:
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
        try:
            yield stacks
        finally:
            faulthandler.unregister(signal.SIGUSR1)


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# ------------------------------------------------------------------------------ the children


def _child(breakers: list[redbreaker.Breaker], report: Path, calls: int) -> NoReturn:
    """In a forked child: ``calls`` calls through the inherited breakers (call and guard
    alternately), then exit: 0 if only redbreaker exceptions (if any) reached it, 3 if any
    other did, 4 if the child itself broke. The type of each exception that is not a
    redbreaker one is written to ``report`` at once (a line each), so that the parent
    counts them even if the child hangs afterwards."""
    code = EXIT_BROKEN
    try:
        signal.alarm(CHILD_ALARM)
        with open(report, "a", buffering=1) as out:
            raw = 0
            for i in range(calls):
                breaker = breakers[i % len(breakers)]
                try:
                    if i % 2:
                        breaker.guard(attempt_timeout=1)(_work)()
                    else:
                        breaker.call(_work)
                except redbreaker.RedbreakerError:
                    pass  # a store outage seen as such is acceptable; the child goes on
                except BaseException as exc:
                    raw += 1
                    out.write(_type_name(exc) + "\n")
        code = EXIT_RAW if raw else EXIT_OK
    except BaseException as exc:
        with contextlib.suppress(BaseException), open(report, "a") as out:
            out.write(f"child broke: {_type_name(exc)}: {exc}\n")
    finally:
        os._exit(code)


@dataclass
class Children:
    """Forked children, reaped as they exit; at the end each gets until its deadline."""

    deadline: float
    stacks_file: IO[str] | None = None
    alive: dict[int, tuple[float, Path]] = field(default_factory=dict)
    exits: Counter[str] = field(default_factory=Counter)
    raw: Counter[str] = field(default_factory=Counter)
    hung: int = 0
    stacks: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    def fork(self, body: Callable[[Path], NoReturn], report: Path) -> None:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            body(report)
        self.alive[pid] = (started, report)

    def reap(self, *, final: bool = False) -> None:
        """Collect the children that exited; with ``final``, wait for all of them until
        their deadlines and kill those still alive (hung)."""
        while self.alive:
            for pid, (started, report) in list(self.alive.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    if time.monotonic() - started > self.deadline:
                        self._keep_stacks(pid)
                        self._kill(pid)
                        self.hung += 1
                        del self.alive[pid]
                        self._count_raw(report)
                    continue
                del self.alive[pid]
                self.durations.append(time.monotonic() - started)
                self._record(status, report)
            if not final:
                return
            if self.alive:
                time.sleep(0.02)

    def _record(self, status: int, report: Path) -> None:
        code = os.waitstatus_to_exitcode(status)
        self.exits[str(code)] += 1
        if code != EXIT_OK and not self._count_raw(report):
            self.raw[f"exit status {code}, no report"] += 1

    def _count_raw(self, report: Path) -> bool:
        lines = report.read_text().splitlines() if report.exists() else []
        self.raw.update(lines)
        return bool(lines)

    def _keep_stacks(self, pid: int) -> None:
        """Ask a hung child for its threads' stacks (see :func:`_stacks_on_sigusr1`)."""
        if self.stacks_file is None or len(self.stacks) >= 2:
            return
        self.stacks_file.flush()
        start = self.stacks_file.tell()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)
        self.stacks_file.seek(start)
        lines = self.stacks_file.read().strip().splitlines()
        text = "\n".join(x for x in lines if not _RUNNER_FRAME.search(x)) or "(no stacks)"
        self.stacks_file.seek(0, os.SEEK_END)
        self.stacks.append(f"child {pid}:\n{text}")

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def kill_all(self) -> None:
        for pid in list(self.alive):
            self._kill(pid)
        self.alive.clear()


# ------------------------------------------------------------------------------ 1. mid-call


@CONSISTENCY
def test_child_forked_mid_call_is_not_broken(
    redis_url: str, consistency: str, tmp_path: Path
) -> None:
    """Children forked while the parent's threads are inside the store (redis-py's pool)
    all finish, and only redbreaker exceptions, if any, reach them."""
    store = redbreaker.connect(redis_url)
    # Cached breakers admit from a local copy; a short flush interval keeps their store
    # (and its pool) busy with the batched successes.
    breakers = [
        redbreaker.Breaker(
            name, store=store, consistency=consistency, flush_interval=0.001, max_staleness=0.05
        )
        for name in ("fork-a", "fork-b")
    ]
    for breaker in breakers:  # the library is loaded and the copies exist before forking
        breaker.call(_work)
    hammer = Hammer(breakers)
    children = Children(deadline=CHILD_DEADLINE)
    forked = rounds = 0
    started = time.monotonic()
    try:
        with _stacks_on_sigusr1(tmp_path / "hung-stacks.txt") as stacks:
            children.stacks_file = stacks
            with _switch_interval(SWITCH_INTERVAL):
                hammer.start()
                try:
                    time.sleep(0.2)  # every hammering thread is in full swing
                    for round_ in range(ROUNDS):
                        for i in range(CHILDREN_PER_ROUND):
                            report = tmp_path / f"child-{round_}-{i}.txt"
                            children.fork(lambda r: _child(breakers, r, CHILD_CALLS), report)
                            forked += 1
                        rounds += 1
                        children.reap()
                        time.sleep(ROUND_GAP)
                finally:
                    hammer.stop()
            children.reap(final=True)
    finally:
        children.kill_all()
        store.close()
    elapsed = time.monotonic() - started
    slowest = max(children.durations, default=0.0)
    print(
        f"\n[fork] {consistency}: rounds={rounds} children={forked} hung={children.hung} "
        f"exits={dict(children.exits)} raw={dict(children.raw)} "
        f"slowest_child={slowest:.2f}s elapsed={elapsed:.1f}s "
        f"parent_calls~{hammer.calls} parent_threads={hammer.threads_started} "
        f"parent_errors={dict(hammer.errors)}"
    )
    assert (children.hung, dict(children.raw)) == (0, {}), (
        f"{children.hung} of {forked} children hung (killed after {CHILD_DEADLINE}s); "
        f"exceptions that reached children: {dict(children.raw)}; the stacks of the first "
        f"hung child:\n{children.stacks[0] if children.stacks else '-'}"
    )
    assert children.exits == Counter({str(EXIT_OK): forked})
    raw_in_parent = {k: v for k, v in hammer.errors.items() if "." in k}
    assert raw_in_parent == {}, f"raw exceptions reached the parent's threads: {raw_in_parent}"


# ------------------------------------------------------------------------------ 2. batched


def _flushing_child(breaker: redbreaker.Breaker, calls: int) -> NoReturn:
    code = EXIT_BROKEN
    try:
        signal.alarm(CHILD_ALARM)
        for _ in range(calls):
            breaker.call(_work)
        breaker.flush()
        code = EXIT_OK
    finally:
        os._exit(code)


PARENT_CALLS = 49
FORKS = 6
CHILD_SUCCESSES = 1


def test_child_does_not_resend_parents_batched_successes(redis_url: str, tmp_path: Path) -> None:
    """The parent's 49 batched successes are counted once, not once per forked child."""
    store = redbreaker.connect(redis_url)
    breaker = redbreaker.Breaker("dep", store=store, consistency="cached", flush_interval=60)
    children = Children(deadline=CHILD_DEADLINE)
    try:
        for _ in range(PARENT_CALLS):
            breaker.call(_work)
        for i in range(FORKS):
            children.fork(
                lambda _r: _flushing_child(breaker, CHILD_SUCCESSES), tmp_path / f"c{i}.txt"
            )
        children.reap(final=True)
    finally:
        children.kill_all()
    try:
        breaker.flush()
        snap = breaker.snapshot()
    finally:
        store.close()
    expected = PARENT_CALLS + FORKS * CHILD_SUCCESSES
    print(
        f"\n[fork] batched: parent={PARENT_CALLS} children={FORKS}x{CHILD_SUCCESSES} "
        f"window_calls={snap.window_calls} expected={expected} hung={children.hung} "
        f"exits={dict(children.exits)}"
    )
    assert (children.hung, children.exits) == (0, Counter({str(EXIT_OK): FORKS}))
    assert snap.window_calls == expected, (
        f"the window counts {snap.window_calls} calls, {expected} were made: forked children "
        f"sent the parent's batched successes again"
    )
