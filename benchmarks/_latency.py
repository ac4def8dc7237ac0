"""Per-call cost from one process: every variant in every round, in a rotating order."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LatencyResult:
    calls: int
    rounds: int
    timer_ns: float  # median cost of one timer reading pair, included in every sample
    # per variant: one median (µs) per round, in round order
    medians: dict[str, list[float]] = field(default_factory=dict)
    p99: dict[str, list[float]] = field(default_factory=dict)
    # per variant whose script calls the server counts: its usec_per_call (INFO
    # commandstats) over each round's block, in round order
    server_us: dict[str, list[float]] = field(default_factory=dict)


def _timer_cost(n: int = 20_000) -> float:
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        t1 = clock()
        samples[i] = t1 - t0
    return statistics.median(samples)


def _block(fn: Callable[[], object], calls: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        t0 = clock()
        fn()
        samples[i] = clock() - t0
    return samples


CommandStats = Callable[[], dict[str, tuple[int, int]]]
"""Reads INFO commandstats as {command: (calls, usec)}."""


def measure(
    fns: dict[str, Callable[[], object]], *, calls: int, rounds: int, warmup: int,
    commandstats: CommandStats | None = None, server_commands: dict[str, str] | None = None,
) -> LatencyResult:
    """``rounds`` rounds; in each, ``calls`` timed calls of every variant back to back.

    The order rotates by one variant per round, so no variant always runs first or right
    after the same neighbour. Samples include one timer reading (``timer_ns``). For each
    variant named in ``server_commands`` (variant -> the command its calls send), the
    server's time per call of that command over the block is kept too, read outside the
    timed calls.
    """
    server_commands = server_commands or {}
    keys = list(fns)
    for key in keys:
        for _ in range(warmup):
            fns[key]()
    result = LatencyResult(calls, rounds, _timer_cost())
    for key in keys:
        result.medians[key] = [0.0] * rounds
        result.p99[key] = [0.0] * rounds
        if commandstats is not None and key in server_commands:
            result.server_us[key] = [0.0] * rounds
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            gc.collect()
            watched = key in result.server_us and commandstats is not None
            before = commandstats() if watched and commandstats else {}
            samples = _block(fns[key], calls)
            if watched and commandstats:
                command = server_commands[key]
                after = commandstats()
                n = after.get(command, (0, 0))[0] - before.get(command, (0, 0))[0]
                usec = after.get(command, (0, 0))[1] - before.get(command, (0, 0))[1]
                result.server_us[key][r] = usec / n if n else float("nan")
            samples.sort()
            result.medians[key][r] = statistics.median(samples) / 1000
            result.p99[key][r] = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000
    return result
