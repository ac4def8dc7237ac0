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
    "PAUSE_SECONDS",
    "DemoError",
    "DemoOptions",
    "Hooked",
    "Message",
    "Plan",
    "Ready",
    "Report",
    "print_header",
    "print_report",
    "redact_url",
]

BREAKER_NAME = "payments-api"
CALL_SECONDS = 0.003
"""How long one call of the simulated dependency takes, healthy or not."""
PAUSE_SECONDS = 0.007
"""How long a worker sleeps between two calls."""
DOWN_FROM, DOWN_UNTIL = 0.2, 0.6
"""The outage, as fractions of the run: 1.0 s to 3.0 s of a 5 s run."""


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
class Plan:
    """What every worker needs to know; pickled to the spawned processes."""

    url: str
    prefix: str
    name: str
    settings: dict[str, Any]
    duration: float
    down_from: float
    down_until: float


@dataclass(frozen=True)
class Ready:
    worker: int


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
    """Probe permits this worker got, per breaker generation (one half-open window each)."""
    error: str | None = None


Message = Union[Ready, Hooked, Report]  # noqa: UP007 (a runtime alias on 3.10)


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
    say(f"  dependency  healthy 0-{down} ms, DOWN {down}-{up} ms, healthy again until {end} ms")
    say(
        f"              each worker: call it ({_ms(CALL_SECONDS)} ms), "
        f"sleep {_ms(PAUSE_SECONDS)} ms, repeat"
    )
    out.flush()


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
) -> int:
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
