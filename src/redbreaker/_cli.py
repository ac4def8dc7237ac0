"""The ``redbreaker`` command: the demo, and an operator's view of the breakers in a Redis.

::

    redbreaker demo [--url URL] [--workers N] [--duration S] [--probes N]
    redbreaker list --url URL [--prefix P]
    redbreaker show NAME --url URL [--prefix P] [--json]
    redbreaker force-open|force-close|metrics-only NAME --url URL [--prefix P] [--duration S]
    redbreaker reset NAME --url URL [--prefix P]
    redbreaker watch --url URL [--prefix P]

``--url`` defaults to ``$REDBREAKER_URL``. Exit codes: 0 done, 1 the thing asked about is
not there (``show`` of an unknown breaker, a demo whose claims failed), 2 a usage error, a
bad URL or an unreachable Redis (one line on stderr, never a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import redis

from ._breaker import Breaker
from ._demo import DemoError, DemoOptions, redact_url, run_demo
from ._exceptions import RedbreakerError, StoreUnavailableError
from ._store import connect

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._state import Snapshot, State, Transition
    from ._store import Store

__all__ = ["main"]

URL_ENV_VAR = "REDBREAKER_URL"
_ORDERS = {
    "force-open": ("force_open", "reject every call, fleet-wide"),
    "force-close": ("force_close", "admit every call and count nothing, fleet-wide"),
    "metrics-only": ("metrics_only", "admit every call, count, report would-trips"),
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redbreaker",
        description="One shared circuit breaker per dependency for a fleet of processes, "
        "kept in Redis.",
        epilog=f"--url defaults to ${URL_ENV_VAR}. Try: redbreaker demo",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def store_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--url",
            default=os.environ.get(URL_ENV_VAR) or None,
            help="the Redis that holds the breakers, e.g. redis://localhost:6379/0 "
            f"(default: ${URL_ENV_VAR})",
        )
        sub.add_argument(
            "--prefix",
            default="redbreaker",
            help="key prefix of the breakers (default: %(default)s)",
        )

    demo = commands.add_parser(
        "demo",
        help="several worker processes share one breaker (no Redis needed)",
        description="Worker processes call a dependency that goes down and comes back, "
        "through one shared breaker; prints the timeline of its transitions.",
    )
    demo.add_argument(
        "--url", help="use this Redis instead of the embedded one, e.g. redis://localhost:6379/0"
    )
    demo.add_argument(
        "--workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="worker processes (default: 4)",
    )
    demo.add_argument(
        "--duration",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds of traffic (default: 5)",
    )
    demo.add_argument(
        "--probes",
        metavar="N",
        type=_positive_int,
        default=1,
        help="half_open_max_calls: probes in flight at once, fleet-wide (default: 1)",
    )
    demo.set_defaults(handler=_demo)

    listing = commands.add_parser("list", help="names of the breakers under a prefix")
    store_options(listing)
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="one breaker's state and counts")
    show.add_argument("name", help="the breaker's name")
    store_options(show)
    show.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    show.set_defaults(handler=_show)

    for command, (order, summary) in _ORDERS.items():
        sub = commands.add_parser(command, help=summary)
        sub.add_argument("name", help="the breaker's name")
        store_options(sub)
        sub.add_argument(
            "--duration",
            type=_positive_float,
            metavar="S",
            help="seconds until the breaker returns to closed (default: until another order)",
        )
        sub.set_defaults(handler=_order, order=order)

    reset = commands.add_parser("reset", help="back to closed with empty counts, fleet-wide")
    reset.add_argument("name", help="the breaker's name")
    store_options(reset)
    reset.set_defaults(handler=_order, order="reset", duration=None)

    watch = commands.add_parser("watch", help="print every transition as it happens (Ctrl-C)")
    store_options(watch)
    watch.set_defaults(handler=_watch)
    return parser


# -- commands ----------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Store:
    if args.url is None:
        raise _UsageError(f"--url is required (or set ${URL_ENV_VAR})")
    return connect(args.url, prefix=args.prefix)


def _demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        url=args.url, workers=args.workers, duration=args.duration, probes=args.probes
    )
    return run_demo(options, sys.stdout)


def _list(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        names = store.breaker_names()
    finally:
        store.close()
    for name in names:
        print(name)
    if not names:
        print(f"no breakers under prefix {args.prefix!r}", file=sys.stderr)
    return 0


def _when(at_ms: int, now_ms: int) -> str:
    stamp = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    delta = (at_ms - now_ms) / 1000
    relative = f"in {delta:.1f} s" if delta >= 0 else f"{-delta:.1f} s ago"
    return f"{at_ms} ({stamp}, {relative})"


def _show_text(snapshot: Snapshot) -> list[str]:
    lines = []
    for item in dataclasses.fields(snapshot):
        value: object = getattr(snapshot, item.name)
        if value is None:
            text = "-"
        elif item.name.endswith("_ms") and item.name != "now_ms" and isinstance(value, int):
            text = _when(value, snapshot.now_ms)
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = str(value)
        lines.append(f"{item.name:<21} {text}")
    return lines


def _jsonable(snapshot: Snapshot) -> dict[str, Any]:
    data = dataclasses.asdict(snapshot)
    data["state"] = snapshot.state.value
    return data


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        snapshot = Breaker(args.name, store=store).snapshot()
    finally:
        store.close()
    if not snapshot.exists:
        print(
            f"redbreaker: no breaker {args.name!r} under prefix {args.prefix!r} "
            "(`redbreaker list` shows the names)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(_jsonable(snapshot), indent=2))
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


def _describe(transition: Transition) -> str:
    previous = transition.previous.value if transition.previous is not None else "?"
    return (
        f"{transition.name}: {previous} -> {transition.current.value} "
        f"({transition.reason}, generation {transition.generation})"
    )


def _order(args: argparse.Namespace) -> int:
    _quiet_library_log()  # this command prints the transitions it made itself
    store = _open(args)
    made: list[Transition] = []
    try:
        # An order goes through a Breaker. Built with the default config, it refreshes the
        # keys' TTL with the default key_ttl and writes the default settings text into the
        # hash when it makes a transition; the breaker's own processes rewrite both.
        breaker = Breaker(args.name, store=store, on_transition=[made.append])
        existed = breaker.snapshot().exists
        if args.order == "reset":
            state = breaker.reset()
        else:
            orders: dict[str, Callable[[float | None], State]] = {
                "force_open": breaker.force_open,
                "force_close": breaker.force_close,
                "metrics_only": breaker.metrics_only,
            }
            state = orders[args.order](args.duration)
    finally:
        store.close()
    if not existed:
        print(
            f"note: there was no breaker {args.name!r} under prefix {args.prefix!r}; it now exists",
            file=sys.stderr,
        )
    for transition in made:
        print(_describe(transition))
    if not made:
        print(f"{args.name}: already {state}")
    if args.duration is not None:
        print(f"{args.name}: {state} for {args.duration:g} s, then closed")
    return 0


def _watch(args: argparse.Namespace) -> int:
    store = _open(args)
    print(f"watching transitions under prefix {args.prefix!r} (Ctrl-C to stop)", flush=True)
    try:
        for transition in store.transitions():
            stamp = datetime.fromtimestamp(transition.at_ms / 1000, tz=timezone.utc)
            when = stamp.isoformat(timespec="milliseconds")
            print(f"{when}  {_describe(transition)}", flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()
    return 0


# -- entry point -------------------------------------------------------------------------


class _UsageError(Exception):
    """A missing option argparse cannot see (``--url`` may come from the environment)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``redbreaker`` command with ``argv`` (default: ``sys.argv[1:]``); return the
    exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("redbreaker: interrupted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"redbreaker {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:
        where = f" at {redact_url(args.url)}" if getattr(args, "url", None) else ""
        cause = exc.__cause__
        detail = exc.detail if cause is None else f"{type(cause).__name__}: {cause}"
        detail = " ".join(detail.split())
        print(f"redbreaker: cannot use the Redis{where}: {detail}", file=sys.stderr)
        return 2
    except (RedbreakerError, DemoError) as exc:
        print(f"redbreaker: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (redis.RedisError, OSError) as exc:
        where = f" at {redact_url(args.url)}" if getattr(args, "url", None) else ""
        print(
            f"redbreaker: cannot use the Redis{where}: {type(exc).__name__}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 2
