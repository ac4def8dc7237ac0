"""``redbreaker dashboard``: a live page of every breaker under a prefix, with its JSON,
its event stream, the fleet's Prometheus gauges and (with an admin token) operator orders.

Needs the ``dashboard`` extra (Starlette, uvicorn, prometheus-client), imported only when
the dashboard runs. The server holds one transition feed and one refresh loop, whatever
the number of viewers (:mod:`redbreaker._dashboard_fleet`); what it shows is decided by
the board (:mod:`redbreaker._board`); the HTTP side is :mod:`redbreaker._dashboard_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._demo_report import redact_url
from ._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Generator
    from types import FrameType
    from typing import TextIO

__all__ = ["ADMIN_TOKEN_ENV_VAR", "NAMINGS", "run_dashboard"]

ADMIN_TOKEN_ENV_VAR = "REDBREAKER_ADMIN_TOKEN"
"""Where the CLI reads the admin token that enables operator actions."""

NAMINGS = ("redbreaker", "resilience4j")
_EXTRA = ("starlette", "uvicorn", "prometheus_client")
# Shorter tokens are accepted but called out: a guessable token is an open door.
_SHORT_TOKEN = 16
# Seconds uvicorn waits for open requests once asked to stop (streams end at once).
_STOP_GRACE_SECONDS = 2


def _require_extra() -> None:
    missing = []
    for module in _EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise ConfigError(
            "dashboard",
            f"needs {', '.join(missing)}: pip install 'redbreaker[dashboard]'",
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def _bind(host: str, port: int) -> socket.socket:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    return socket.create_server((bare, port), family=family, backlog=128)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _warnings(host: str, admin_token: str | None) -> list[str]:
    found = []
    if admin_token is not None and len(admin_token) < _SHORT_TOKEN:
        found.append(
            f"the admin token is {len(admin_token)} characters long: use a long random one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not is_loopback(host):
        found.append(
            f"serving on {host}, not on 127.0.0.1: anyone who reaches this port sees every "
            "breaker's name and state. Put it behind TLS and access control."
        )
        if admin_token is not None:
            found.append(
                "operator actions are ON over plain HTTP on a non-loopback address: the admin "
                "token crosses the network in clear text. Prefer --host 127.0.0.1 with an "
                "SSH tunnel, or a TLS-terminating proxy."
            )
    return found


def _server_class() -> type[Any]:
    import uvicorn  # noqa: PLC0415 (the dashboard extra, imported on first use)

    class DashboardServer(uvicorn.Server):
        """uvicorn's server, stopping on SIGINT/SIGTERM without re-raising the signal
        afterwards (uvicorn does, which would end the process before run_dashboard could
        return its exit code), and ending every event stream at once."""

        on_stop: Any = None

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            loop = asyncio.get_running_loop()

            def stop(signum: int, frame: FrameType | None) -> None:
                self.should_exit = True
                if self.on_stop is not None:
                    loop.call_soon_threadsafe(self.on_stop)

            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, stop) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DashboardServer


def run_dashboard(
    url: str,
    *,
    prefix: str,
    host: str,
    port: int,
    admin_token: str | None,
    naming: str = "redbreaker",
    out: TextIO,
) -> int:
    """Serve the dashboard until SIGINT or SIGTERM; print the address to ``out``.

    Args:
        url: the store URL, as :func:`redbreaker.aio.connect` takes it.
        prefix: the key prefix whose breakers are shown.
        host, port: where to listen (port 0: any free port, printed).
        admin_token: enables operator actions, which must then carry it
            (``Authorization: Bearer <token>``); None (or empty): read-only.
        naming: the Prometheus names of ``/metrics``, ``"redbreaker"`` or
            ``"resilience4j"``.
        out: where the address goes (warnings go to stderr).

    Returns:
        0 after a stop by signal, 2 when the address cannot be bound.

    Raises:
        ConfigError: a bad URL, prefix or naming, or the ``dashboard`` extra missing.
    """
    if naming not in NAMINGS:
        raise ConfigError("naming", f"must be one of {', '.join(NAMINGS)}, got {naming!r}")
    _require_extra()
    import uvicorn  # noqa: PLC0415

    from ._dashboard_app import build_app  # noqa: PLC0415 (imports Starlette)
    from ._dashboard_fleet import FleetWatcher  # noqa: PLC0415

    token = admin_token or None
    watcher = FleetWatcher(url, prefix=prefix, admin_actions=token is not None)
    app = build_app(watcher, admin_token=token, naming=naming)
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"redbreaker dashboard: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    with sock:
        address = _address(sock)
        print(
            f"redbreaker dashboard: serving {address} "
            f"(breakers under {watcher.store.prefix!r} in {redact_url(url)})",
            file=out,
        )
        if token is not None:
            print(
                f"operator actions on: open {address}#token=<your {ADMIN_TOKEN_ENV_VAR}> "
                "to unlock them in this browser tab",
                file=out,
            )
        else:
            print(f"read-only: set {ADMIN_TOKEN_ENV_VAR} to enable operator actions", file=out)
        out.flush()
        for warning in _warnings(host, token):
            print(f"redbreaker dashboard: !!! WARNING: {warning}", file=sys.stderr)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=_STOP_GRACE_SECONDS,
        )
        server = _server_class()(config)
        server.on_stop = watcher.end_streams
        server.run(sockets=[sock])
    return 0
