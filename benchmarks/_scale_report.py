"""The scale section's figures (from the raw runs) and markdown: steady load, trips,
commands per call, and its correctness checks."""

from __future__ import annotations

import array
import math
import statistics
from typing import TYPE_CHECKING, Any

from _scale import (
    BINS_PER_S,
    GRACE,
    OWN_COMMANDS,
    REFERENCE,
    REJECTED_PAUSE,
    SCRIPT_COMMANDS,
    STORE_TIMEOUT,
    THRESHOLD,
    breaker_name,
    breaker_of,
)
from _stats import Spread, num, percentile, spread_text, table

if TYPE_CHECKING:
    from _scale import Schedule, Size


def write(report: Any, size: Size, figures: dict[str, dict[str, Any]],
          fanout: dict[str, float]) -> None:
    """Print the section's tables from :func:`_scale.summarise`'s figures; record its
    correctness errors in ``report`` (run.py's)."""
    callers = size.processes * size.tasks
    report.out(f"## Scale: {callers:,} callers on {size.breakers} breakers, one Redis\n")
    report.out(
        f"{size.processes} processes x {size.tasks} asyncio tasks (one event loop each, "
        f"`redbreaker.aio`, default connection pool, store_timeout {STORE_TIMEOUT:g} s), each "
        f"task calling one of {size.breakers} breakers (failure_threshold {THRESHOLD}) in a "
        "loop around a dependency that yields once; every breaker has the same share of "
        f"the tasks. Steady load: after {size.warmup:g} s of warm-up, a {size.window:g} s "
        "window between two `INFO cpu stats commandstats` reads of the server; calls are "
        "the calls that ended in it, fleet-wide. Redis CPU is used_cpu_sys + used_cpu_user. "
        "Admission: from entering `breaker.call` to the dependency starting, every call of "
        "the window. Script calls: FCALL/EVALSHA/EVAL in commandstats, i.e. the breakers' "
        "round trips (the parent's INFO and CLIENT LIST are left out). Connections and "
        "subscribed clients: CLIENT LIST at the window's end, less the parent's; memory "
        "per connection: INFO mem_clients_normal, the same way. Client CPU: the workers' "
        "CPU seconds per second in the window. The workers are "
        "CPU-bound and share the cores with Redis: client-side times include CPU "
        "starvation; Redis CPU per 1,000 calls and per script call are the figures that "
        f"carry over. The rows {REFERENCE!r} are the same load from one process alone (its "
        "tasks on all the breakers, no trips): a cached breaker's round trips depend on how "
        "often each process calls it, which starvation lowers; two with the longer "
        "flush_interval and max_staleness a large fleet would set, one with all the tasks on "
        "one breaker.\n"
    )
    rows, client_rows = [], []
    for mode, f in figures.items():
        adm = f["admission_ms"]
        rows.append([
            mode, num(f["calls_per_s"]), num(f["calls_per_pair_s"]),
            num(f["redis_cpu_ms_per_1k"]), num(f["redis_cores"]), num(f["commands_per_s"]),
            f"{num(f['script_calls_per_s'])} ({num(f['script_calls_per_1k'])})",
            num(f["script_calls_per_pair_s"]), num(f["redis_cpu_us_per_script_call"]),
        ])
        client_rows.append([
            mode, f"{num(adm[50])} / {num(adm[99])} / {num(adm[99.9])}",
            str(f["connections"]), str(f["subscribers"]), num(f["bytes_per_connection"]),
            num(f["client_cores"]),
            num(f["load_1min"]),
        ])
    report.out(table(
        ["mode", "calls/s", "calls/s per process per breaker", "Redis CPU ms per 1,000 calls",
         "Redis CPU, cores", "commands/s", "script calls/s (per 1,000 calls)",
         "script calls/s per process per breaker", "Redis CPU µs per script call"],
        rows,
    ))
    report.out()
    report.out(table(
        ["mode", "admission p50 / p99 / p99.9 ms", "connections", "subscribed",
         "Redis memory per connection, bytes", "client CPU, cores", "load average (1 min)"],
        client_rows,
    ))
    report.out()
    _trips(report, size, figures)
    _commands(report, figures)
    _fanout(report, fanout)
    report.data["scale"] = {"size": size.__dict__, **figures, "fanout": fanout}


def _fanout(report: Any, fanout: dict[str, float]) -> None:
    report.out(
        f"Pub/sub fan-out: {fanout['subscribers']:,} connections subscribed to one channel "
        f"(plain sockets that never read: the messages fit in their buffers), "
        f"{fanout['messages']:,} PUBLISHes of {fanout['payload']} bytes (a transition "
        "event's size), Redis CPU (INFO cpu) less that of as many PUBLISHes to nobody, per "
        "delivered message. On loopback the kernel's delivery to the reader is charged to "
        "Redis's write.\n"
    )
    report.out(table(
        ["Redis CPU µs per delivered message", "per PUBLISH to no subscriber",
         "a transition to 10,000 subscribers, ms"],
        [[num(fanout["us_per_delivery"]), num(fanout["us_per_publish_alone"]),
          num(fanout["us_per_delivery"] * 10_000 / 1000)]],
    ))
    report.out()


def _trips(report: Any, size: Size, figures: dict[str, dict[str, Any]]) -> None:
    report.out(
        f"Trips: {size.trips} per mode, {size.trip_gap:g} s apart, each on its own breaker "
        "while the load goes on; from a shared instant its dependency fails in every "
        "process. The trip instant is the transition's server time (whole ms) from the "
        "transition feed. Leak: the dependency's calls fleet-wide from that instant "
        "(so calls of the trip's own ms count as leak). Strict bound: one per task on that "
        "breaker, the calls admitted before the trip (checked from the end of its ms). "
        "All rejecting: until the last process's first rejection of that breaker (a "
        f"rejected task waits {REJECTED_PAUSE * 1000:g} ms before its next call; the tasks "
        "of a failing breaker go on past the run's end until their process has seen it "
        f"open, for up to {GRACE:g} s); p99 is interpolated over the trials (close to the max "
        "below 100).\n"
    )
    rows = []
    for mode, f in figures.items():
        if not f["trips"]:
            continue
        seen = [t for t in f["trips"] if t["trip_at"] is not None]
        worst = [max(t["lags"]) * 1000 for t in seen if t["lags"]]
        lags = [lag * 1000 for t in seen for lag in t["lags"]]
        leak = [t["leak"] for t in seen]
        rows.append([
            mode, f"{len(seen)} of {len(f['trips'])}",
            spread_text(Spread.of(t["decided_after"] * 1000 for t in seen)),
            spread_text(Spread.of(t["before"] for t in seen)),
            spread_text(Spread.of(leak)),
            str(max((t["callers"] for t in f["trips"]), default=0)),
            (f"{num(statistics.median(worst))} / {num(percentile(worst, 99))} / "
             f"{num(max(worst))}") if worst else "n/a",
            num(statistics.median(lags)) if lags else "n/a",
            str(sum(t["missed"] for t in f["trips"])),
        ])
        _check(report, mode, f)
    report.out(table(
        ["mode", "trips seen", "trip decided after the failures began, ms",
         "failing calls before the trip", "leak per trip, median (min-max)", "callers per breaker",
         "all rejecting after, median / p99 / max ms", "per-process lag, median ms",
         "processes never rejecting"],
        rows,
    ))
    report.out()


def _check(report: Any, mode: str, f: dict[str, Any]) -> None:
    disturbed = bool(f["events"]) or f["errors"] > 0
    if disturbed:
        report.notes.append(f"scale ({mode}): store events {f['events']} and {f['errors']} "
                            "store errors in the workers: trips not checked")
    for t in f["trips"]:
        where = f"scale ({mode}) {t['breaker']}"
        if t["trip_at"] is None:
            report.errors.append(f"{where}: no trip seen on the transition feed")
            continue
        if disturbed:
            continue
        if t["missed"]:
            report.errors.append(f"{where}: {t['missed']} process(es) never rejected")
        if any(lag < 0 for lag in t["lags"]):
            report.errors.append(f"{where}: a process rejected before the trip")
        if mode == "strict" and t["leak_after_ms"] > t["callers"]:
            report.errors.append(f"{where}: {t['leak_after_ms']} calls after the trip's ms, "
                                 f"above {t['callers']}, the calls admitted before it")


def _commands(report: Any, figures: dict[str, dict[str, Any]]) -> None:
    names = sorted({k for f in figures.values() for k in f["commands_per_1k"]})
    report.out("Server commands per 1,000 calls in the steady window (INFO commandstats, "
               "the commands scripts run included):\n")
    rows = [[name] + [num(f["commands_per_1k"].get(name, math.nan)) for f in figures.values()]
            for name in names]
    report.out(table(["command", *figures], rows))
    report.out()


def summarise(size: Size, run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one mode's run (plain numbers, kept in the JSON)."""
    plan: Schedule = run["plan"]
    snap0, snap1 = run["snaps"]
    results = run["results"]
    span = snap1.at - snap0.at
    first = math.ceil((snap0.at - plan.start_at) * BINS_PER_S)
    last = math.floor((snap1.at - plan.start_at) * BINS_PER_S)
    calls = sum(sum(r["bins"][first:last]) for r in results)
    counted = (last - first) / BINS_PER_S
    commands = {k: v - snap0.stats.get(k, 0) for k, v in snap1.stats.items()
                if k not in OWN_COMMANDS and v > snap0.stats.get(k, 0)}
    latency: list[float] = []
    for r in results:
        samples: array.array[float] = array.array("d")
        samples.frombytes(r["latency"])
        latency.extend(samples)
    rate = calls / counted if counted > 0 else math.nan
    per_k = 1000 / calls if calls else math.nan
    cpu = snap1.cpu - snap0.cpu
    trips = []
    for b, fail_at in sorted(plan.fail_at.items()):
        trip_at = run["opened"].get(breaker_name(b))
        hits = [t for r in results for t in r["hits"].get(b, [])]
        seen = [r["first_rejected"][b] for r in results if b in r["first_rejected"]]
        lags = [t - trip_at for t in seen] if trip_at is not None else []
        tasks = sum(breaker_of(size, w, j) == b
                    for w in range(size.processes) for j in range(size.tasks))
        trips.append({
            "breaker": breaker_name(b), "fail_at": fail_at, "trip_at": trip_at,
            "decided_after": None if trip_at is None else trip_at - fail_at,
            "before": sum(t < trip_at for t in hits) if trip_at is not None else len(hits),
            "leak": sum(t >= trip_at for t in hits) if trip_at is not None else None,
            # From the end of the trip's ms: never overstated, for the strict bound check.
            "leak_after_ms": (sum(t >= trip_at + 0.001 for t in hits)
                              if trip_at is not None else None),
            "lags": lags, "missed": size.processes - len(seen), "callers": tasks,
        })
    scripts = sum(commands.get(k, 0) for k in SCRIPT_COMMANDS)
    return {
        "window_s": span, "calls": calls, "calls_per_s": rate,
        "redis_cpu_ms_per_1k": cpu * 1000 * per_k, "redis_cores": cpu / span,
        "commands_per_s": (snap1.commands - snap0.commands) / span,
        "script_calls_per_s": scripts / span, "script_calls_per_1k": scripts * per_k,
        "script_calls_per_pair_s": scripts / span / (size.processes * size.breakers),
        "calls_per_pair_s": rate / (size.processes * size.breakers),
        "redis_cpu_us_per_script_call": cpu * 1e6 / scripts if scripts else math.nan,
        "commands_per_1k": {k: v * per_k for k, v in sorted(commands.items())},
        "admission_ms": {q: percentile(latency, q) * 1000 for q in (50, 99, 99.9)}
        | {"max": max(latency, default=math.nan) * 1000, "n": len(latency)},
        "client_cores": sum(r["cpu"] / r["cpu_wall"] for r in results if r["cpu_wall"]),
        "connections": run["clients"][0] - run["base"][0],
        "bytes_per_connection": ((run["clients"][2] - run["base"][2])
                                 / max(1, run["clients"][0] - run["base"][0])),
        "subscribers": run["clients"][1] - run["base"][1],
        "load_1min": run["load"],
        "errors": sum(r["errors"] for r in results),
        "events": [e for r in results for e in r["events"]],
        "trips": trips,
    }
