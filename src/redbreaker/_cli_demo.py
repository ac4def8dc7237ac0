"""``redbreaker demo`` and ``redbreaker dashboard``: the two commands that run something
(worker processes, a web server) rather than ask Redis one thing."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from ._cli_json import emit
from ._demo import DemoOptions, run_demo

if TYPE_CHECKING:
    import argparse

__all__ = ["ADMIN_TOKEN_ENV_VAR", "dashboard", "demo"]

ADMIN_TOKEN_ENV_VAR = "REDBREAKER_ADMIN_TOKEN"


def demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        url=args.url,
        workers=args.workers,
        duration=args.duration,
        probes=args.probes,
        forever=args.forever,
    )
    if not args.json:
        return run_demo(options, sys.stdout)
    summary: dict[str, Any] = {}
    code = run_demo(options, sys.stderr, summary=summary)  # stdout: the JSON alone
    emit(summary)
    return code


def dashboard(args: argparse.Namespace) -> int:
    from ._dashboard import run_dashboard  # noqa: PLC0415 (the web stack is an extra)

    return run_dashboard(
        args.url,
        prefix=args.prefix,
        host=args.host,
        port=args.port,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV_VAR) or None,
        naming=args.naming,
        out=sys.stdout,
    )
