"""The ``redbreaker`` commands that read or change breakers: list, show, the operator
orders, and doctor. Each returns its exit code (see :mod:`redbreaker._cli`)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ._breaker import Breaker
from ._cli_json import emit, report_json, snapshot_json, transition_json
from ._demo_report import redact_url

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ._state import Snapshot, State, Transition
    from ._store import Store

__all__ = ["describe", "doctor", "listing", "order", "show"]


def _when(at_ms: int, now_ms: int) -> str:
    stamp = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    delta = (at_ms - now_ms) / 1000
    relative = f"in {delta:.1f} s" if delta >= 0 else f"{-delta:.1f} s ago"
    return f"{at_ms} ({stamp}, {relative})"


# The fleet policies' counts are listed with the window's, where a reader looks for them,
# not at the end where the Snapshot fields were appended.
_AFTER_WINDOW = (
    "window_retries",
    "retry_budget_exhausted_count",
    "reporters",
    "reporter_ids",
    "process_state",
)


def _show_order(snapshot: Snapshot) -> list[str]:
    names = [f.name for f in dataclasses.fields(snapshot) if f.name not in _AFTER_WINDOW]
    at = names.index("window_slow_calls") + 1
    return [*names[:at], *_AFTER_WINDOW, *names[at:]]


def _show_text(snapshot: Snapshot) -> list[str]:
    lines = []
    names = _show_order(snapshot)
    width = max(len(name) for name in names)
    for name in names:
        value: object = getattr(snapshot, name)
        if value is None or value == ():
            text = "-"
        elif isinstance(value, tuple):
            text = " ".join(str(v) for v in value)
        elif name.endswith("_ms") and name != "now_ms" and isinstance(value, int):
            text = _when(value, snapshot.now_ms)
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = str(value)
        lines.append(f"{name:<{width}} {text}")
    return lines


def describe(transition: Transition) -> str:
    """One transition, for people: ``svc: closed -> open (reason, generation 2)``."""
    previous = transition.previous.value if transition.previous is not None else "?"
    return (
        f"{transition.name}: {previous} -> {transition.current.value} "
        f"({transition.reason}, generation {transition.generation})"
    )


def _absent(name: str, prefix: str) -> str:
    return f"redbreaker: no breaker {name!r} under prefix {prefix!r}"


def listing(args: argparse.Namespace, store: Store) -> int:
    names = store.breaker_names()
    if args.json:
        emit({"prefix": args.prefix, "breakers": names})
    else:
        for name in names:
            print(name)
    if not names:
        print(f"no breakers under prefix {args.prefix!r}", file=sys.stderr)
    return 0


def show(args: argparse.Namespace, store: Store) -> int:
    snapshot = Breaker(args.name, store=store).snapshot()
    if not snapshot.exists:
        print(
            f"{_absent(args.name, args.prefix)} (`redbreaker list` shows the names)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        emit(snapshot_json(snapshot))
    else:
        for line in _show_text(snapshot):
            print(line)
    return 0


def _quiet_library_log() -> None:
    """Keep the library's transition log lines (WARNING for opens) off this command's
    stderr when nothing configured logging: the command prints the transitions itself."""
    logger = logging.getLogger("redbreaker")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def order(args: argparse.Namespace, store: Store) -> int:
    _quiet_library_log()  # this command prints the transitions it made itself
    made: list[Transition] = []
    # An order goes through a Breaker. Built with the default config, it refreshes the
    # keys' TTL with the default key_ttl and writes the default settings text into the
    # hash when it makes a transition; the breaker's own processes rewrite both.
    breaker = Breaker(args.name, store=store, on_transition=[made.append])
    existed = breaker.snapshot().exists
    if not existed and not args.create:
        # Another process may create the breaker between this check and the order; the
        # refusal is then merely out of date, and nothing was written by this command.
        print(
            f"{_absent(args.name, args.prefix)}; check the name with `redbreaker list`, "
            "or pass --create to create it with this order",
            file=sys.stderr,
        )
        return 1
    if args.order == "reset":
        state = breaker.reset()
    else:
        orders: dict[str, Callable[[float | None], State]] = {
            "force_open": breaker.force_open,
            "force_close": breaker.force_close,
            "metrics_only": breaker.metrics_only,
        }
        state = orders[args.order](args.duration)
    if not existed:
        print(f"note: created breaker {args.name!r} under prefix {args.prefix!r}", file=sys.stderr)
    if args.json:
        emit(
            {
                "name": args.name,
                "prefix": args.prefix,
                "order": args.order,
                "state": state.value,
                "created": not existed,
                "duration": args.duration,
                "transitions": [transition_json(t) for t in made],
            }
        )
        return 0
    for transition in made:
        print(describe(transition))
    if not made:
        print(f"{args.name}: already {state}")
    if args.duration is not None:
        print(f"{args.name}: {state} for {args.duration:g} s, then closed")
    return 0


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def doctor(args: argparse.Namespace, store: Store) -> int:
    report = store.doctor()
    target = redact_url(args.url)
    reachable = report.finding("reachable")
    if reachable is not None and reachable.status == "fail":
        # Nothing else could be checked: the same one line and exit code as every command.
        detail = reachable.summary.removeprefix("cannot reach Redis: ")
        print(f"redbreaker: cannot use the Redis at {target}: {detail}", file=sys.stderr)
        return 2
    code = 0 if report.ok else 1
    if args.json:
        emit(report_json(report, target))
        return code
    print(f"redbreaker doctor: {target}, prefix {args.prefix!r}")
    width = max(len(f.check) for f in report.findings)
    for finding in report.findings:
        print(f"{_MARK[finding.status]}  {finding.check:<{width}}  {finding.summary}")
        if finding.advice and finding.status != "ok":
            print(f"      {'':<{width}}  -> {finding.advice}")
    fails = sum(f.status == "fail" for f in report.findings)
    warns = sum(f.status == "warn" for f in report.findings)
    verdict = "problems found" if fails else "usable"
    print(f"{verdict}: {fails} failed, {warns} warnings")
    return code
