"""Stream consumer processes for ``test_streams.py`` and ``test_streams_proof.py``.

Run as ``python tests/stream_workers.py '<json>'``: a fresh interpreter that builds its own
store, breaker and :class:`redbreaker.StreamConsumer` (``"kind": "aio"``: the
``redbreaker.aio`` twins in an event loop), runs it with signal handlers installed until
SIGTERM or SIGINT, then stores its counts as JSON in the hash ``stream-stats`` (field: the
consumer's name) on the dependency's Redis and exits 0.

Roles (``"role"``), i.e. what the handler does with a message whose field ``n`` says which:

- ``work``: calls :class:`Dependency` with ``n`` (raises while it is down).
- ``victim``: the same, but once the key ``victim:arm`` exists (looked at every 20
  messages) it calls the dependency, sets ``victim:inside`` to ``n`` and hangs there, inside
  the handler, until the test SIGKILLs it.
- ``hold``: sets ``inside`` to ``n``, sleeps ``hold`` seconds, adds ``n`` to the set
  ``done`` and returns (the clean-stop test signals it while it sleeps).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

import redis

import redbreaker
import redbreaker.aio
from dependency import Dependency

STATS = "stream-stats"
ARM = "victim:arm"
INSIDE_VICTIM = "victim:inside"
ARM_CHECK_EVERY = 20
# A breaker call that outlives the store timeout is admitted unguarded (on_store_error
# "allow"): on a loaded 2-core machine 0.5 s is within reach, so the proof allows 2 s.
STORE_TIMEOUT = 2.0


class Handler:
    """The role's behaviour, shared by both drivers: ``before`` and ``after`` run around
    the dependency call; the async driver only awaits the hang instead of sleeping."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.role = params["role"]
        self.hold = float(params.get("hold", 0))
        self.dependency = Dependency(params["dep_url"])
        self.counters = redis.Redis.from_url(params["dep_url"])
        self.seen = 0
        self.armed = False

    def call(self, message: redbreaker.StreamMessage) -> float:
        """Handle ``message``; the seconds to hang afterwards (0: return)."""
        n = _text(message.fields["n"])
        if self.role == "hold":
            self.counters.set("inside", n)
            return self.hold
        self.dependency.call(n)
        if self.role != "victim":
            return 0.0
        self.seen += 1
        if not self.armed and self.seen % ARM_CHECK_EVERY == 0:
            self.armed = bool(self.counters.exists(ARM))
        if self.armed:
            self.counters.set(INSIDE_VICTIM, n)
            return 3600.0  # until SIGKILL
        return 0.0

    def done(self, message: redbreaker.StreamMessage) -> None:
        if self.role == "hold":
            self.counters.sadd("done", _text(message.fields["n"]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _consumer_settings(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": params["stream"],
        "group": params["group"],
        "consumer": params["consumer"],
        **params.get("settings", {}),
    }


def run_sync(params: dict[str, Any]) -> redbreaker.StreamStats:
    store = redbreaker.connect(params["store_url"], store_timeout=STORE_TIMEOUT)
    breaker = redbreaker.Breaker("dep", store=store, **params["breaker"])
    handler = Handler(params)

    def handle(message: redbreaker.StreamMessage) -> None:
        hang = handler.call(message)
        if hang:
            time.sleep(hang)
        handler.done(message)

    consumer = redbreaker.StreamConsumer(
        breaker, params["stream_url"], handler=handle, **_consumer_settings(params)
    )
    with consumer:
        return consumer.run(install_signal_handlers=True)


async def run_aio(params: dict[str, Any]) -> redbreaker.StreamStats:
    store = redbreaker.aio.connect(params["store_url"], store_timeout=STORE_TIMEOUT)
    breaker = redbreaker.aio.Breaker("dep", store=store, **params["breaker"])
    handler = Handler(params)

    async def handle(message: redbreaker.StreamMessage) -> None:
        hang = handler.call(message)
        if hang:
            await asyncio.sleep(hang)
        handler.done(message)

    consumer = redbreaker.aio.StreamConsumer(
        breaker, params["stream_url"], handler=handle, **_consumer_settings(params)
    )
    async with consumer:
        stats = await consumer.run(install_signal_handlers=True)
    await store.aclose()
    return stats


def main() -> None:
    params = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    stats = asyncio.run(run_aio(params)) if params["kind"] == "aio" else run_sync(params)
    report = {
        "handled": stats.handled,
        "failed": stats.failed,
        "deferred": stats.deferred,
        "dead_lettered": stats.dead_lettered,
        "reclaimed": stats.reclaimed,
    }
    with redis.Redis.from_url(params["dep_url"]) as counters:
        counters.hset(STATS, params["consumer"], json.dumps(report))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
