"""The demo's plan, what its workers tell the parent, and the report the parent prints.

The workers send :class:`Ready`, :class:`Hooked` (a transition their ``on_transition``
hook saw) and :class:`Report` (their counts) over a ``multiprocessing`` queue; the parent
prints one timeline, the counts, and the two claims the demo checks.
"""

from __future__ import annotations

import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ._state import State, Transition

if TYPE_CHECKING:
    from typing import TextIO

    from ._demo_redis import Watcher
    from ._state import Snapshot

__all__ = [
    "BREAKER_NAME",
    "CALL_SECONDS",
    "DOWN_FROM",
    "DOWN_UNTIL",
    "FOREVER_PREFIX",
    "PAUSE_SECONDS",
    "TIMELINE_HEADER",
    "DemoError",
    "DemoOptions",
    "Hooked",
    "Message",
    "Plan",
    "Probed",
    "Ready",
    "Report",
    "print_counts",
    "print_feed",
    "print_header",
    "print_report",
    "print_snapshot",
    "redact_url",
    "timeline_line",
]

BREAKER_NAME = "payments-api"
CALL_SECONDS = 0.003
"""How long one call of the simulated dependency takes, healthy or not."""
PAUSE_SECONDS = 0.007
"""How long a worker sleeps between two calls."""
DOWN_FROM, DOWN_UNTIL = 0.2, 0.6
"""The outage, as fractions of the run: 1.0 s to 3.0 s of a 5 s run."""
FOREVER_PREFIX = "redbreaker-demo"
"""The key prefix of ``demo --forever``: fixed, so a dashboard or ``watch`` finds the demo's
breaker, and never the default ``redbreaker`` prefix of an application's real breakers."""


class DemoError(RuntimeError):
    """The demo cannot run (no embedded Redis available, a worker failed to start)."""


@dataclass(frozen=True)
class DemoOptions:
    """What ``redbreaker demo`` was asked for."""

    url: str | None = None
    workers: int = 4
    duration: float = 5.0
    probes: int = 1
    forever: bool = False
    """Repeat the outage cycle (``duration`` seconds each) until SIGINT or SIGTERM."""


@dataclass(frozen=True)
class Plan:
    """What every worker needs to know; pickled to the spawned processes."""

    url: str
    prefix: str
    name: str
    settings: dict[str, Any]
    duration: float
    down_from: float
    down_until: float
    forever: bool = False


@dataclass(frozen=True)
class Ready:
    worker: int


@dataclass(frozen=True)
class Probed:
    """A probe permit one worker got (sent as it happens by ``--forever`` workers, whose
    per-window counts would otherwise grow without end)."""

    worker: int
    generation: int


@dataclass(frozen=True)
class Hooked:
    """A transition one worker's ``on_transition`` hook saw."""

    worker: int
    transition: Transition


@dataclass
class Report:
    """One worker's counts, sent once at the end."""

    worker: int
    pid: int
    calls: int = 0
    successes: int = 0
    failures: int = 0
    rejected: int = 0
    probes: dict[int, int] = field(default_factory=dict)
    """Probe permits this worker got, per breaker generation (one half-open window each);
    empty with ``--forever``, whose workers send :class:`Probed` messages instead."""
    probe_count: int = 0
    error: str | None = None


Message = Union[Ready, Hooked, Probed, Report]  # noqa: UP007 (a runtime alias on 3.10)


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


def print_header(options: DemoOptions, plan: Plan, embedded: bool, out: TextIO) -> None:
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
    if plan.forever:
        say(
            f"  dependency  every {end} ms: healthy 0-{down} ms, DOWN {down}-{up} ms, "
            f"healthy again until {end} ms"
        )
        say("              repeated until Ctrl-C or SIGTERM")
    else:
        say(f"  dependency  healthy 0-{down} ms, DOWN {down}-{up} ms, healthy again until {end} ms")
    say(
        f"              each worker: call it ({_ms(CALL_SECONDS)} ms), "
        f"sleep {_ms(PAUSE_SECONDS)} ms, repeat"
    )
    if plan.forever:
        say(
            f"  watch it    redbreaker dashboard --url {redact_url(plan.url)} "
            f"--prefix {plan.prefix}"
        )
    out.flush()


def timeline_line(worker: int, transition: Transition, zero_ms: int) -> str:
    """One row of the timeline: a transition, from the hook of the worker that made it."""
    previous = transition.previous.value if transition.previous is not None else "?"
    return (
        f"  {transition.at_ms - zero_ms:+6d} ms  w{worker:<5}  {previous:>9} -> "
        f"{transition.current.value:<9}  {transition.reason:<24}  gen {transition.generation}"
    )


TIMELINE_HEADER = (
    "       time  worker  transition, from the on_transition hook of the worker that made it"
)


def print_report(
    *,
    options: DemoOptions,
    plan: Plan,
    embedded: bool,
    out: TextIO,
    got: list[Message],
    watcher: Watcher,
    zero_ms: int,
    snapshot: Snapshot,
    summary: dict[str, Any] | None = None,
) -> int:
    """Print the report; 0 when the claims held. ``summary`` gets the same figures."""

    def say(line: str = "") -> None:
        print(line, file=out)

    hooked = sorted(
        (m for m in got if isinstance(m, Hooked)),
        key=lambda m: (m.transition.generation, m.transition.at_ms),
    )
    reports = sorted((m for m in got if isinstance(m, Report)), key=lambda r: r.worker)
    workers = options.workers

    down, up = _ms(plan.down_from), _ms(plan.down_until)
    say()
    say(TIMELINE_HEADER)
    rows: list[tuple[float, str]] = [
        (down, f"  {down:+6d} ms  --      {plan.name} goes DOWN"),
        (up, f"  {up:+6d} ms  --      {plan.name} is back"),
    ]
    for m in hooked:
        # A transition at a marker's time prints after it.
        rows.append(
            (m.transition.at_ms - zero_ms + 0.5, timeline_line(m.worker, m.transition, zero_ms))
        )
    for _, line in sorted(rows, key=lambda r: r[0]):
        say(line)
    say()
    print_counts(reports, Counter(m.worker for m in hooked), out)

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
    print_feed(watcher, len(hooked), workers, out)
    print_snapshot(snapshot, out)
    if not embedded:
        say(
            f"inspect it: redbreaker show {plan.name} --url {redact_url(plan.url)} "
            f"--prefix {plan.prefix}"
        )
    code = 0 if trips == 1 and worst <= options.probes else 1
    if summary is not None:
        summary.update(
            ok=code == 0,
            url=None if embedded else redact_url(plan.url),
            prefix=plan.prefix,
            name=plan.name,
            workers=workers,
            duration=options.duration,
            probes_limit=options.probes,
            trips=trips,
            probes_per_window=per_window,
            timeline=[
                {
                    "offset_ms": m.transition.at_ms - zero_ms,
                    "worker": m.worker,
                    "previous": m.transition.previous.value if m.transition.previous else None,
                    "current": m.transition.current.value,
                    "reason": m.transition.reason,
                    "generation": m.transition.generation,
                }
                for m in hooked
            ],
            worker_counts=[
                {
                    "worker": r.worker,
                    "pid": r.pid,
                    "calls": r.calls,
                    "successes": r.successes,
                    "failures": r.failures,
                    "rejected": r.rejected,
                    "probes": r.probe_count,
                    "hooks": sum(1 for m in hooked if m.worker == r.worker),
                }
                for r in reports
            ],
            final={
                "state": snapshot.state.value,
                "generation": snapshot.generation,
                "open_count": snapshot.open_count,
                "consecutive_failures": snapshot.consecutive_failures,
            },
        )
    return code


def print_counts(reports: list[Report], hooks: Counter[int], out: TextIO) -> None:
    """The per-worker table: calls, outcomes, probes and hooks fired, and the totals."""

    def say(line: str = "") -> None:
        print(line, file=out)

    say("  worker      pid   calls      ok  failed  rejected  probes  hooks fired")
    totals = [0] * 6
    for r in reports:
        values = [r.calls, r.successes, r.failures, r.rejected, r.probe_count, hooks[r.worker]]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        say(f"  w{r.worker:<5} {r.pid:>8}  " + _columns(values))
    say(f"  {'all':<15}  " + _columns(totals))
    say("  (rejected: CircuitOpenError, raised at once; the dependency was not called)")
    say()


def print_feed(watcher: Watcher, hooked: int, workers: int, out: TextIO) -> None:
    """What the parent's pub/sub watcher saw, against what the workers' hooks reported."""
    if watcher.listening and watcher.error is None:
        same = "the same" if watcher.count == hooked else "DIFFERENT from the hooks:"
        print(
            f"pub/sub (Store.transitions() in the parent) saw {same} {watcher.count} transitions;",
            file=out,
        )
        print(
            f"  each fired an on_transition hook in exactly one of the {workers} processes",
            file=out,
        )
    else:
        print(f"pub/sub watcher unavailable: {watcher.error or 'no subscription'}", file=out)


def print_snapshot(snapshot: Snapshot, out: TextIO) -> None:
    print(
        f"final snapshot: {snapshot.state.value}, generation {snapshot.generation}, "
        f"open_count {snapshot.open_count}, consecutive_failures "
        f"{snapshot.consecutive_failures}, probes in flight {snapshot.probes_in_flight},",
        file=out,
    )
    print(
        f"  window {snapshot.window_calls} calls / {snapshot.window_failures} failures, "
        f"last reason {snapshot.last_reason}",
        file=out,
    )


def _columns(values: list[int]) -> str:
    calls, ok, failed, rejected, probes, hooks = values
    return f"{calls:>6}  {ok:>6}  {failed:>6}  {rejected:>8}  {probes:>6}  {hooks:>11}"
