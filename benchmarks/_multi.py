"""The multi-process figures, driven from the parent: throughput, propagation, leak."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redbreaker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from _fleet import Fleet

# Time between sending "go" and the instant every worker starts: enough for 8 pipes.
_START_MARGIN = 0.03


def throughput(
    fleet: Fleet, keys: Sequence[str], counts: Sequence[int], *, duration: float, reps: int
) -> dict[str, dict[int, list[float]]]:
    """Aggregate calls/s per (variant, processes), one figure per rep.

    Each rep measures every cell once; within a rep, cells with the same process count run
    back to back with the variant order rotated by one per rep (and the process counts
    alternately ascending and descending), so the ratios compare neighbours in time.
    """
    rates: dict[str, dict[int, list[float]]] = {k: {n: [] for n in counts} for k in keys}
    keys = list(keys)
    for rep in range(reps):
        shift = rep % len(keys)
        rotated = keys[shift:] + keys[:shift]
        for n in counts if rep % 2 == 0 else list(reversed(counts)):
            for key in rotated:
                start_at = time.time() + _START_MARGIN
                done = fleet.ask(n, "throughput", key, start_at, duration, timeout=duration + 60)
                rates[key][n].append(sum(calls / elapsed for calls, elapsed in done))
    return rates


@dataclass
class PropagationTrial:
    lags: list[float]  # seconds from the open to each worker's first rejection
    missed: int  # workers that never saw a rejection (a correctness failure)
    early: int  # workers rejected before the breaker was opened (a correctness failure)
    events: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.lags) if self.lags else float("nan")


def propagation(
    fleet: Fleet,
    store: redbreaker.Store,
    mode: str,
    *,
    trials: int,
    workers: int,
    settle: float,
    timeout: float,
) -> list[PropagationTrial]:
    """Open a breaker in Redis while ``workers`` processes call through it; time how long
    until each of them rejects.

    The instant of the open is the later of: the wall clock just before ``force_open`` was
    sent, and the server's time of the transition (whole ms, so never later than the
    truth). Both are lower bounds: the lags can only be overstated, by under 1 ms.
    """
    out = []
    for trial in range(trials):
        name = f"propagation-{mode}-{trial}"
        seen: list[redbreaker.Transition] = []
        opener = redbreaker.Breaker(name, store=store, on_transition=seen.append)
        fleet.send(workers, "propagation", mode, store.prefix, name, timeout)
        early: dict[int, dict[str, Any]] = {}
        for i in range(workers):
            kind, payload = fleet.receive(i, timeout + 30)
            if kind == "ok":
                early[i] = payload
        time.sleep(settle)
        before = time.time()
        opener.force_open()
        server = [t.at_ms / 1000 for t in seen if t.current.value == "forced_open"]
        opened_at = max([before, *server])
        results = [early.get(i) or fleet.expect(i, "ok", timeout + 30) for i in range(workers)]
        lags = [r["rejected_at"] - opened_at for r in results if r["rejected_at"] is not None]
        out.append(
            PropagationTrial(
                lags=[lag for lag in lags if lag >= 0],
                missed=sum(r["rejected_at"] is None for r in results),
                early=sum(lag < 0 for lag in lags),
                events=[e for r in results for e in r["events"]],
            )
        )
    return out


@dataclass
class LeakTrial:
    leaked: int  # dependency calls fleet-wide after it started failing
    bound: int  # failure_threshold + calls that can be in flight (one per other worker)
    all_rejected_after: float  # seconds from the failure start to the last first-rejection
    missed: int  # workers that never saw a rejection
    late: int  # workers not yet calling when the dependency started failing
    events: list[str] = field(default_factory=list)


def leak(
    fleet: Fleet,
    store: redbreaker.Store,
    mode: str,
    *,
    trials: int,
    workers: int,
    threshold: int,
    lead: float,
    timeout: float,
) -> list[LeakTrial]:
    """``workers`` processes call a dependency that starts failing at one shared instant;
    count the calls that reach it from then until every worker has been rejected."""
    out = []
    for trial in range(trials):
        name = f"leak-{mode}-{trial}"
        fail_at = time.time() + lead
        fleet.send(workers, "leak", mode, store.prefix, name, fail_at, threshold, timeout)
        results, late = [], 0
        for i in range(workers):
            kind, payload = fleet.receive(i, timeout + 30)
            if kind == "ready":
                late += payload >= fail_at
                payload = fleet.expect(i, "ok", timeout + 30)
            else:
                late += 1
            results.append(payload)
        rejected = [r["rejected_at"] for r in results if r["rejected_at"] is not None]
        out.append(
            LeakTrial(
                leaked=sum(r["leaked"] for r in results),
                bound=threshold + workers - 1,
                all_rejected_after=max(rejected) - fail_at if rejected else float("nan"),
                missed=workers - len(rejected),
                late=late,
                events=[e for r in results for e in r["events"]],
            )
        )
    return out
