"""The dashboard's HTTP side: a Starlette app serving the page, the board's JSON, the live
event stream, the fleet's Prometheus gauges and (with an admin token) operator orders.

Imported only by :mod:`redbreaker._dashboard`, after it checked that the ``dashboard``
extra is installed: ``import redbreaker`` never imports Starlette.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
from importlib import resources
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._board import sse_message
from ._dashboard_fleet import ORDERS
from ._exceptions import CircuitOpenError, ConfigError, StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.requests import Request

    from ._dashboard_fleet import FleetWatcher

__all__ = ["PAGE_ASSET", "build_app", "content_security_policy"]

PAGE_ASSET = "dashboard.html"
"""The page, packaged beside this module (inline CSS and JS; no network needed)."""

# A comment line this often keeps proxies from closing an idle stream, and notices a
# viewer that went away (the write fails).
_HEARTBEAT_SECONDS = 10.0
_MAX_BODY_BYTES = 4096
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _digest(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def content_security_policy(page: str) -> str:
    """A policy that runs only the page's own inline script and style (by hash), talks
    only to this server, and cannot be framed: even a name that slipped past the page's
    text-only rendering could not run script."""
    scripts = " ".join(
        f"'sha256-{_digest(s)}'" for s in re.findall(r"<script>(.*?)</script>", page, re.S)
    )
    styles = " ".join(
        f"'sha256-{_digest(s)}'" for s in re.findall(r"<style>(.*?)</style>", page, re.S)
    )
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**_NO_STORE, **headers})


def _refusal(admin_token: str | None, request: Request) -> JSONResponse | None:
    """Why an action request is refused, or None when it carries the admin token."""
    if admin_token is None:
        # As if the endpoint did not exist: a read-only dashboard has no actions.
        return _error(404, "operator actions are off: start the dashboard with "
                      "REDBREAKER_ADMIN_TOKEN set to enable them")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(401, "send the admin token: Authorization: Bearer <token>",
                      **{"WWW-Authenticate": 'Bearer realm="redbreaker"'})
    if not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
        return _error(403, "wrong admin token")
    return None


def _order_request(body: bytes) -> tuple[str, float | None]:
    """The breaker name and optional duration (seconds) of an action's JSON body.

    Raises:
        ValueError: a body that is not ``{"name": str, "duration": number | null}``.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("the body must be JSON: {\"name\": ..., \"duration\": seconds}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError('the body must be a JSON object with a "name" string')
    duration = data.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not math.isfinite(duration)
        or duration <= 0
    ):
        raise ValueError('"duration" must be a positive number of seconds, or null')
    return data["name"], None if duration is None else float(duration)


def _metrics_renderer(watcher: FleetWatcher, naming: str) -> Callable[[], bytes] | str:
    """What renders ``/metrics``, or why it cannot (the reason is served with a 503)."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

        from .contrib.prometheus import fleet_collector  # noqa: PLC0415
    except ImportError as exc:
        return f"/metrics is unavailable: {exc} (pip install 'redbreaker[dashboard]')"
    registry = CollectorRegistry()
    # The board's snapshots as last read: scraping costs Redis nothing.
    registry.register(fleet_collector(watcher.board.snapshots, naming=naming))
    return lambda: generate_latest(registry)


def build_app(watcher: FleetWatcher, *, admin_token: str | None, naming: str) -> Starlette:
    """The dashboard's ASGI app. Its lifespan starts the watcher and closes it."""
    page = resources.files("redbreaker").joinpath(PAGE_ASSET).read_text(encoding="utf-8")
    page_headers = {
        "Content-Security-Policy": content_security_policy(page),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    metrics = _metrics_renderer(watcher, naming)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=page_headers)

    async def breakers(request: Request) -> Response:
        board = watcher.board.board_json()
        del board["type"]
        return JSONResponse(board, headers=_NO_STORE)

    async def healthz(request: Request) -> Response:
        redis_state = watcher.board.redis_json()
        return JSONResponse(
            {"ok": True, "redis_reachable": redis_state["reachable"], "viewers": watcher.viewers},
            headers=_NO_STORE,
        )

    async def prometheus(request: Request) -> Response:
        if isinstance(metrics, str):
            return Response(metrics + "\n", status_code=503, media_type="text/plain")
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def events(request: Request) -> Response:
        board, queue = watcher.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                # A reconnecting EventSource waits this long (ms) before trying again.
                yield "retry: 1000\n\n"
                yield sse_message(board, watcher.next_event_id())
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), _HEARTBEAT_SECONDS)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:
                        return
                    yield sse_message(event, watcher.next_event_id())
            finally:
                watcher.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def action(request: Request) -> Response:
        refused = _refusal(admin_token, request)
        if refused is not None:
            return refused
        verb = request.path_params["action"]
        if verb not in ORDERS:
            return _error(404, f"unknown action {verb!r}: one of {', '.join(ORDERS)}")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send the body as application/json")
        body = await request.body()
        if len(body) > _MAX_BODY_BYTES:
            return _error(413, "body too large")
        try:
            name, duration = _order_request(body)
            if verb == "reset" and duration is not None:
                raise ValueError("reset takes no duration")
            result = await watcher.order(name, verb, duration)
        except (ValueError, ConfigError) as exc:  # ConfigError is a ValueError too
            return _error(400, str(exc))
        except (CircuitOpenError, StoreError) as exc:  # Redis unreachable or refusing
            return _error(503, f"Redis did not take the order: {exc}")
        if result is None:
            return _error(404, f"no breaker named {name!r} under prefix "
                          f"{watcher.board.prefix!r}; actions never create one")
        return JSONResponse({"action": verb, "breaker": result}, headers=_NO_STORE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher.start()
        try:
            yield
        finally:
            await watcher.aclose()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/breakers", breakers, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/actions/{action}", action, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
