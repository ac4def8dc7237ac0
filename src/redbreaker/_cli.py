"""The ``redbreaker`` command: the demo, the dashboard, doctor, and an operator's view of
the breakers in a Redis.

::

    redbreaker demo [--url URL] [--workers N] [--duration S] [--probes N] [--forever] [--json]
    redbreaker list --url URL [--prefix P] [--json]
    redbreaker show NAME --url URL [--prefix P] [--json]
    redbreaker force-open|force-close|metrics-only NAME --url URL [--prefix P] [--duration S]
        [--create] [--json]
    redbreaker reset NAME --url URL [--prefix P] [--create] [--json]
    redbreaker watch --url URL [--prefix P] [--json]
    redbreaker doctor --url URL [--prefix P] [--json]
    redbreaker dashboard --url URL [--prefix P] [--host H] [--port N] [--naming N]

``--url`` defaults to ``$REDBREAKER_URL``. ``--json`` prints JSON on stdout (``watch``: one
object per line); errors stay one line on stderr, with stdout empty. Shapes: docs/cli.md.

Exit codes: 0 done (``doctor``: no check failed, warnings allowed); 1 the thing asked about
is not there (``show`` or an order on an unknown breaker without ``--create``), a
``doctor`` check failed, or the demo's claims failed; 2 a usage or configuration error (a
bad option or URL, refused credentials, a missing extra) or an unreachable Redis (one line
on stderr, never a traceback); 130 interrupted (Ctrl-C; ``watch`` and ``dashboard`` exit 0
on Ctrl-C or SIGTERM, their normal way to stop); 141 stdout closed by its reader (``| head``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import redis

from ._connect import connect
from ._demo import DemoError, redact_url
from ._exceptions import RedbreakerError, StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._store import Store

__all__ = ["EXIT_CODES", "main"]

URL_ENV_VAR = "REDBREAKER_URL"
EXIT_CODES = {
    0: "done; doctor: no check failed (warnings allowed)",
    1: "the breaker asked about is not there (show; an order without --create), "
    "a doctor check failed, or the demo's claims failed",
    2: "a usage or configuration error (bad option or URL, refused credentials, missing "
    "extra), or Redis unreachable",
    130: "interrupted (Ctrl-C); watch and dashboard exit 0 on Ctrl-C or SIGTERM",
    141: "stdout was closed by its reader (a pipe such as `| head -1`)",
}
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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {text!r}")
    return value


def _epilog() -> str:
    codes = "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    return f"--url defaults to ${URL_ENV_VAR}. Exit codes: {codes}. Try: redbreaker demo"


def _store_options(sub: argparse.ArgumentParser, *, json: bool = True) -> None:
    sub.add_argument(
        "--url",
        default=os.environ.get(URL_ENV_VAR) or None,
        help="the Redis that holds the breakers, e.g. redis://localhost:6379/0 "
        f"(default: ${URL_ENV_VAR})",
    )
    sub.add_argument(
        "--prefix", default="redbreaker", help="key prefix of the breakers (default: %(default)s)"
    )
    if json:
        sub.add_argument(
            "--json", action="store_true", help="print JSON on stdout (shapes: docs/cli.md)"
        )


def _demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    demo.add_argument(
        "--forever",
        action="store_true",
        help="repeat the outage cycle until Ctrl-C or SIGTERM (not with --json)",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary of the run on stdout; the report goes to stderr",
    )
    demo.set_defaults(handler=_demo, store=False)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redbreaker",
        description="One shared circuit breaker per dependency for a fleet of processes, "
        "kept in Redis.",
        epilog=_epilog(),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _demo_parser(commands)

    listing = commands.add_parser("list", help="names of the breakers under a prefix")
    _store_options(listing)
    listing.set_defaults(handler=_listing)

    show = commands.add_parser("show", help="one breaker's state and counts")
    show.add_argument("name", help="the breaker's name")
    _store_options(show)
    show.set_defaults(handler=_show)

    create_help = "create the breaker if Redis holds none of that name (else: refused, exit 1)"
    for command, (order, summary) in _ORDERS.items():
        sub = commands.add_parser(command, help=summary)
        sub.add_argument("name", help="the breaker's name")
        _store_options(sub)
        sub.add_argument(
            "--duration",
            type=_positive_float,
            metavar="S",
            help="seconds until the breaker returns to closed (default: until another order)",
        )
        sub.add_argument("--create", action="store_true", help=create_help)
        sub.set_defaults(handler=_order, order=order)

    reset = commands.add_parser("reset", help="back to closed with empty counts, fleet-wide")
    reset.add_argument("name", help="the breaker's name")
    _store_options(reset)
    reset.add_argument("--create", action="store_true", help=create_help)
    reset.set_defaults(handler=_order, order="reset", duration=None)

    watch = commands.add_parser(
        "watch",
        help="print every transition as it happens; survives Redis restarts (Ctrl-C)",
        description="Print every transition under the prefix. When Redis goes away, say so, "
        "reconnect with backoff, and report the breakers that changed meanwhile. Ends on "
        "Ctrl-C or SIGTERM (exit 0) or a configuration error (exit 2).",
    )
    _store_options(watch)
    watch.set_defaults(handler=_watch)

    doctor = commands.add_parser(
        "doctor",
        help="check a Redis for the library and explain what is wrong",
        description="One line per check (ok, WARN, FAIL) with advice: reachable, credentials, "
        "version, round trip, ACL permissions, Functions or scripts, persistence, eviction, "
        "keys under the prefix. Exit 1 when a check fails; warnings alone exit 0.",
    )
    _store_options(doctor)
    doctor.set_defaults(handler=_doctor)

    board = commands.add_parser(
        "dashboard",
        help="serve a live page of every breaker, /metrics and /api/breakers",
        description="Serve the dashboard until Ctrl-C or SIGTERM. Operator buttons only with "
        "$REDBREAKER_ADMIN_TOKEN set. No --json: it serves JSON at /api/breakers instead. "
        "Needs: pip install 'redbreaker[dashboard]'.",
    )
    _store_options(board, json=False)
    board.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    board.add_argument("--port", type=_port, default=8077, help="port (default: %(default)s)")
    board.add_argument(
        "--naming",
        choices=("redbreaker", "resilience4j"),
        default="redbreaker",
        help="metric names on /metrics (default: %(default)s)",
    )
    board.set_defaults(handler=_dashboard, store=False, json=False)
    return parser


# -- commands (their bodies live in _cli_ops, _cli_watch and _cli_demo) ------------------


def _url(args: argparse.Namespace) -> str:
    if args.url is None:
        raise _UsageError(f"--url is required (or set ${URL_ENV_VAR})")
    url: str = args.url
    return url


def _with_store(args: argparse.Namespace, run: Callable[[Store], int]) -> int:
    store = connect(_url(args), prefix=args.prefix)
    try:
        return run(store)
    finally:
        store.close()


def _demo(args: argparse.Namespace) -> int:
    from ._cli_demo import demo  # noqa: PLC0415 (only this command needs it)

    if args.forever and args.json:
        raise _UsageError("--json summarises a run that ends: not with --forever")
    return demo(args)


def _listing(args: argparse.Namespace) -> int:
    from ._cli_ops import listing  # noqa: PLC0415

    return _with_store(args, lambda store: listing(args, store))


def _show(args: argparse.Namespace) -> int:
    from ._cli_ops import show  # noqa: PLC0415

    return _with_store(args, lambda store: show(args, store))


def _order(args: argparse.Namespace) -> int:
    from ._cli_ops import order  # noqa: PLC0415

    return _with_store(args, lambda store: order(args, store))


def _doctor(args: argparse.Namespace) -> int:
    from ._cli_ops import doctor  # noqa: PLC0415

    return _with_store(args, lambda store: doctor(args, store))


def _watch(args: argparse.Namespace) -> int:
    from ._cli_watch import watch  # noqa: PLC0415

    return _with_store(args, lambda store: watch(args, store, redact_url(args.url)))


def _dashboard(args: argparse.Namespace) -> int:
    from ._cli_demo import dashboard  # noqa: PLC0415

    _url(args)
    return dashboard(args)


# -- entry point -------------------------------------------------------------------------


class _UsageError(Exception):
    """A missing option argparse cannot see (``--url`` may come from the environment)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``redbreaker`` command with ``argv`` (default: ``sys.argv[1:]``); return the
    exit code (see the module docstring)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    where = f" at {redact_url(args.url)}" if getattr(args, "url", None) else ""
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("redbreaker: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout left (`redbreaker watch --json | head -1`): not a Redis
        # problem. Exit quietly as a shell tool killed by SIGPIPE would, and point stdout
        # at /dev/null so the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"redbreaker {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:
        cause = exc.__cause__
        detail = exc.detail if cause is None else f"{type(cause).__name__}: {cause}"
        detail = " ".join(detail.split())
        print(f"redbreaker: cannot use the Redis{where}: {detail}", file=sys.stderr)
        return 2
    except (RedbreakerError, DemoError) as exc:
        print(f"redbreaker: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (redis.RedisError, OSError) as exc:
        print(
            f"redbreaker: cannot use the Redis{where}: {type(exc).__name__}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 2
