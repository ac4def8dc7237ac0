"""``redbreaker demo --forever``: the outage cycle repeats until SIGINT or SIGTERM.

The workers run the same cycle again and again (healthy, down, back) until the parent sets
their stop event. The parent prints each transition as it arrives (a live timeline, for a
terminal or ``docker compose logs``), folds every message into a :class:`Tally` of bounded
size, and on a signal stops the workers, collects their counts and prints the summary.
This module reads no wall clock: the parent's markers are timed with ``time.monotonic``.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._demo_report import (
    TIMELINE_HEADER,
    Hooked,
    Message,
    Probed,
    Report,
    print_counts,
    print_feed,
    print_snapshot,
    timeline_line,
)
from ._state import State

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue
    from types import FrameType
    from typing import TextIO

    from ._demo_redis import Watcher
    from ._demo_report import DemoOptions, Plan
    from ._state import Snapshot

__all__ = ["Tally", "follow", "print_forever_report", "stop_signals"]

_KEPT_CYCLES = 8
"""Recent cycles (and half-open windows) whose counts are kept; older ones are folded into
the worst figures, so memory stays bounded however long the demo runs."""


@contextlib.contextmanager
def stop_signals(stopping: threading.Event) -> Iterator[list[str]]:
    """The first SIGINT or SIGTERM sets ``stopping`` (and names itself in the list yielded)
    instead of ending the process, for as long as the block runs; a second one acts as it
    would have (an impatient Ctrl-C interrupts the summary). Only the main thread may
    install signal handlers; elsewhere the caller stops the demo by setting ``stopping``."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stopping.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    previous.update({sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)})
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class Tally:
    """What the parent saw so far, in bounded memory: trips per outage cycle, probes per
    half-open window, hooks per worker."""

    zero_ms: int
    cycle_ms: int
    trips: int = 0
    windows: int = 0
    hooked: int = 0
    worst_trips_in_a_cycle: int = 0
    worst_probes_in_a_window: int = 0
    hooks: Counter[int] = field(default_factory=Counter)
    _trips_by_cycle: Counter[int] = field(default_factory=Counter)
    _probes_by_window: Counter[int] = field(default_factory=Counter)

    def add(self, message: Message, out: TextIO) -> None:
        """Fold one worker message in; a transition is printed as a timeline row."""
        if isinstance(message, Probed):
            self._probes_by_window[message.generation] += 1
            self.worst_probes_in_a_window = max(
                self.worst_probes_in_a_window, self._probes_by_window[message.generation]
            )
            _forget_old(self._probes_by_window)
        elif isinstance(message, Hooked):
            transition = message.transition
            self.hooked += 1
            self.hooks[message.worker] += 1
            if transition.current is State.HALF_OPEN:
                self.windows += 1
            if transition.previous is State.CLOSED and transition.current is State.OPEN:
                self.trips += 1
                cycle = (transition.at_ms - self.zero_ms) // self.cycle_ms
                self._trips_by_cycle[cycle] += 1
                self.worst_trips_in_a_cycle = max(
                    self.worst_trips_in_a_cycle, self._trips_by_cycle[cycle]
                )
                _forget_old(self._trips_by_cycle)
            print(timeline_line(message.worker, transition, self.zero_ms), file=out, flush=True)


def _forget_old(counts: Counter[int]) -> None:
    if len(counts) > _KEPT_CYCLES:
        del counts[min(counts)]


def follow(
    processes: list[SpawnProcess],
    messages: Queue[Message],
    tally: Tally,
    *,
    plan: Plan,
    started: float,
    stopping: threading.Event,
    out: TextIO,
) -> tuple[list[Report], str | None]:
    """Print the live timeline until ``stopping`` is set: each transition as it arrives,
    and the dependency's outage markers as their time (``started``, monotonic, plus the
    cycle's offsets) passes. Returns the reports of workers that ended, and an error text
    when a worker failed or exited."""
    print(file=out)
    print(TIMELINE_HEADER, file=out, flush=True)
    reports: list[Report] = []
    marker = 0  # even: the k-th outage begins; odd: it ends
    while not stopping.is_set():
        marker, next_in = _print_markers(marker, plan, started, out)
        try:
            # Woken at the next marker's time, so it prints before the trip it causes.
            message = messages.get(timeout=min(0.1, max(0.001, next_in)))
        except queue.Empty:
            for worker, process in enumerate(processes):
                if process.exitcode is not None:
                    return reports, f"worker w{worker} exited with code {process.exitcode}"
            continue
        if isinstance(message, Report):
            reports.append(message)
            return reports, f"worker w{message.worker} failed: {message.error or 'it stopped'}"
        tally.add(message, out)
    return reports, None


def _print_markers(marker: int, plan: Plan, started: float, out: TextIO) -> tuple[int, float]:
    """Print every outage marker whose time has come; the index of the next one, and the
    seconds until it is due."""
    while True:
        cycle, edge = divmod(marker, 2)
        offset = cycle * plan.duration + (plan.down_until if edge else plan.down_from)
        next_in = started + offset - time.monotonic()
        if next_in > 0:
            return marker, next_in
        what = "is back" if edge else f"goes DOWN (outage {cycle + 1})"
        print(f"  {round(offset * 1000):+6d} ms  --      {plan.name} {what}", file=out, flush=True)
        marker += 1


def outages_begun(plan: Plan, seconds: float) -> int:
    """Outages of the dependency that had begun ``seconds`` into the run."""
    if seconds < plan.down_from:
        return 0
    return int((seconds - plan.down_from) // plan.duration) + 1


def print_forever_report(
    *,
    options: DemoOptions,
    plan: Plan,
    out: TextIO,
    reports: list[Report],
    tally: Tally,
    watcher: Watcher,
    ran: float,
    why: str,
    snapshot: Snapshot,
) -> int:
    """The summary after a stop; 0 when no outage tripped the breaker more than once and
    no half-open window admitted more than ``half_open_max_calls`` probes."""

    def say(line: str = "") -> None:
        print(line, file=out)

    outages = outages_begun(plan, ran)
    say()
    say(f"stopped by {why} after {ran:.1f} s: {outages} outage{'' if outages == 1 else 's'} began")
    say()
    print_counts(sorted(reports, key=lambda r: r.worker), tally.hooks, out)
    once = tally.worst_trips_in_a_cycle <= 1
    verdict = "one trip per outage" if once else "MORE THAN ONE TRIP IN AN OUTAGE"
    say(
        f"{verdict}: {tally.trips} closed->open transition{'' if tally.trips == 1 else 's'} "
        f"in {outages} outage{'' if outages == 1 else 's'} (at most "
        f"{tally.worst_trips_in_a_cycle} in one), across {options.workers} workers"
    )
    worst = tally.worst_probes_in_a_window
    say(
        f"probes admitted per half-open window: at most {worst} in {tally.windows} windows "
        f"(limit {options.probes})" + ("" if worst <= options.probes else "  EXCEEDS THE LIMIT")
    )
    print_feed(watcher, tally.hooked, options.workers, out)
    print_snapshot(snapshot, out)
    return 0 if once and worst <= options.probes else 1
