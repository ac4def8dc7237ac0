"""Web apps for tests/test_worker_pools.py: one guarded handler, served by real servers.

``make_wsgi_app()`` is a plain WSGI app for gunicorn (sync ``redbreaker.Breaker``) and
``make_asgi_app()`` a plain ASGI app for uvicorn (``redbreaker.aio.Breaker``); no web
framework. Both build their store and breaker from environment variables (below), so a
server started as a subprocess needs nothing else:

    POOL_STORE_URL          the breaker's Redis
    POOL_DEPENDENCY_URL     the Redis holding the dependency's counters (tests/dependency.py)
    POOL_BREAKER            the breaker's name (default "pool-dependency")
    POOL_FAILURE_THRESHOLD, POOL_RECOVERY_TIMEOUT, POOL_HALF_OPEN_MAX_CALLS,
    POOL_CONSISTENCY        "strict" (default) or "cached"

Under gunicorn with ``preload_app = True`` the factory runs in the master, which talks to
Redis once before it forks the workers: every worker inherits a breaker and a store whose
connections were made in another process, which is what fork safety has to handle.

Every request to ``/?id=<id>`` calls the dependency under one permit and answers:
    200 {"result": "ok"}                  the dependency answered
    200 {"result": "fallback"}            the dependency failed: a degraded answer
    503 {"result": "rejected"}            the breaker is open; ``Retry-After`` is
                                          ``CircuitOpenError.retry_after`` rounded up to
                                          whole seconds, at least 1
Bodies also carry ``pid`` (the worker that answered), ``built_in`` (the process that built
the breaker) and ``probe``. ``/health`` answers 200 without touching the breaker.

The permit form (``with breaker.acquire() as permit``, which is what ``breaker.call`` does
inside) is used rather than ``breaker.call`` because the proof counts probes *at the
dependency*: ``permit.is_probe`` tells the handler that its call is a half-open probe, and
:class:`DependencyPath` counts how many such calls are inside the dependency at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import redis

import redbreaker
import redbreaker.aio
from dependency import Dependency, DependencyDown

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

__all__ = ["PATH_COUNTS", "DependencyPath", "Settings", "make_asgi_app", "make_wsgi_app"]

PATH_COUNTS = "pool:path"
"""Hash on the dependency's server: calls and probes inside the dependency, now and at most."""

# One script on entry and one on exit, so the in-flight figures are exact across workers.
_ENTER = """
local n = redis.call('HINCRBY', KEYS[1], 'in_flight', 1)
if n > tonumber(redis.call('HGET', KEYS[1], 'max_in_flight') or '0') then
    redis.call('HSET', KEYS[1], 'max_in_flight', n)
end
if ARGV[1] == '1' then
    redis.call('HINCRBY', KEYS[1], 'probes', 1)
    local p = redis.call('HINCRBY', KEYS[1], 'probes_in_flight', 1)
    if p > tonumber(redis.call('HGET', KEYS[1], 'max_probes_in_flight') or '0') then
        redis.call('HSET', KEYS[1], 'max_probes_in_flight', p)
    end
end
return n
"""

_LEAVE = """
redis.call('HINCRBY', KEYS[1], 'in_flight', -1)
if ARGV[1] == '1' then
    redis.call('HINCRBY', KEYS[1], 'probes_in_flight', -1)
    if ARGV[2] == 'down' then
        redis.call('HINCRBY', KEYS[1], 'probes_failed', 1)
    end
end
return 1
"""


@dataclass(frozen=True)
class Settings:
    """What the app is built from (see the module's docstring for the variables)."""

    store_url: str
    dependency_url: str
    breaker: str
    failure_threshold: int
    recovery_timeout: float
    half_open_max_calls: int
    consistency: str

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            store_url=env["POOL_STORE_URL"],
            dependency_url=env["POOL_DEPENDENCY_URL"],
            breaker=env.get("POOL_BREAKER", "pool-dependency"),
            failure_threshold=int(env.get("POOL_FAILURE_THRESHOLD", "5")),
            recovery_timeout=float(env.get("POOL_RECOVERY_TIMEOUT", "0.5")),
            half_open_max_calls=int(env.get("POOL_HALF_OPEN_MAX_CALLS", "1")),
            consistency=env.get("POOL_CONSISTENCY", "strict"),
        )

    def breaker_settings(self) -> dict[str, Any]:
        return {
            "failure_threshold": self.failure_threshold,
            "recovery_timeout": self.recovery_timeout,
            "half_open_max_calls": self.half_open_max_calls,
            "consistency": self.consistency,
        }


class DependencyPath:
    """The handler's way into the dependency, counting calls and probes inside it."""

    def __init__(self, url: str) -> None:
        self.dependency = Dependency(url)
        client = redis.Redis.from_url(url)
        self._enter = client.register_script(_ENTER)
        self._leave = client.register_script(_LEAVE)

    def call(self, request_id: str, *, probe: bool) -> None:
        """Call the dependency for ``request_id``; raises DependencyDown while it is down."""
        flag = "1" if probe else "0"
        self._enter(keys=[PATH_COUNTS], args=[flag])
        outcome = "down"
        try:
            self.dependency.call(request_id)
            outcome = "up"
        finally:
            self._leave(keys=[PATH_COUNTS], args=[flag, outcome])


def retry_after_header(rejection: redbreaker.CircuitOpenError) -> str:
    """``Retry-After`` for a rejection: whole seconds, rounded up, at least 1. Without a
    deadline (forced open with no duration) the breaker's own deferral is used."""
    seconds = rejection.retry_after
    if seconds is None:
        seconds = 5.0
    return str(max(1, math.ceil(seconds)))


def _request_id(query: str) -> str:
    ids = parse_qs(query).get("id")
    return ids[0] if ids else uuid.uuid4().hex


def _body(result: str, built_in: int, *, probe: bool = False) -> bytes:
    return json.dumps(
        {"result": result, "pid": os.getpid(), "built_in": built_in, "probe": probe}
    ).encode()


_JSON = ("Content-Type", "application/json")


# ----------------------------------------------------------------------------- WSGI


def make_wsgi_app() -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """The WSGI app (gunicorn: ``'pool_apps:make_wsgi_app()'``)."""
    settings = Settings.from_env()
    store = redbreaker.connect(settings.store_url)
    breaker = redbreaker.Breaker(settings.breaker, store=store, **settings.breaker_settings())
    path = DependencyPath(settings.dependency_url)
    # The master (preload_app) uses the breaker before it forks, so the workers inherit a
    # connection pool holding a socket of the master's and, when cached, a running feed.
    with breaker.acquire():
        pass
    built_in = os.getpid()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            start_response("200 OK", [_JSON])
            return [_body("health", built_in)]
        request_id = _request_id(environ.get("QUERY_STRING", ""))
        probe = False
        try:
            with breaker.acquire() as permit:
                probe = permit.is_probe
                path.call(request_id, probe=probe)
        except redbreaker.CircuitOpenError as exc:
            start_response(
                "503 Service Unavailable", [_JSON, ("Retry-After", retry_after_header(exc))]
            )
            return [_body("rejected", built_in)]
        except DependencyDown:
            start_response("200 OK", [_JSON])
            return [_body("fallback", built_in, probe=probe)]
        start_response("200 OK", [_JSON])
        return [_body("ok", built_in, probe=probe)]

    return app


# ----------------------------------------------------------------------------- ASGI

Scope = dict[str, Any]


def make_asgi_app() -> Callable[[Scope, Any, Any], Awaitable[None]]:
    """The ASGI app (uvicorn: ``--factory pool_apps:make_asgi_app``). Each worker builds
    its own (uvicorn spawns its workers); no I/O happens until the first request."""
    settings = Settings.from_env()
    store = redbreaker.aio.connect(settings.store_url)
    breaker = redbreaker.aio.Breaker(settings.breaker, store=store, **settings.breaker_settings())
    path = DependencyPath(settings.dependency_url)
    built_in = os.getpid()

    async def respond(
        send: Callable[[dict[str, Any]], Awaitable[None]],
        status: int,
        body: bytes,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def lifespan(
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await store.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await respond(send, 200, _body("health", built_in))
            return
        request_id = _request_id(scope.get("query_string", b"").decode())
        probe = False
        try:
            async with breaker.acquire() as permit:
                probe = permit.is_probe
                # The dependency's client is sync: its calls go to a thread, off the loop.
                await asyncio.to_thread(path.call, request_id, probe=probe)
        except redbreaker.CircuitOpenError as exc:
            retry_after = retry_after_header(exc).encode()
            await respond(send, 503, _body("rejected", built_in), ((b"retry-after", retry_after),))
            return
        except DependencyDown:
            await respond(send, 200, _body("fallback", built_in, probe=probe))
            return
        await respond(send, 200, _body("ok", built_in, probe=probe))

    return app
