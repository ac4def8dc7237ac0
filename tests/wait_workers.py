"""Worker processes of tests/test_waiting.py: each waits for one breaker to admit it and
reports the Redis server's time when it was admitted (spawned: fresh interpreters)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

import redbreaker
from redbreaker import aio


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_then_report(url: str, name: str, settings: dict[str, Any], kind: str, out: Any) -> None:
    """Wait (up to 20 s) for a permit of breaker ``name``; put (server ms, is_probe) or the
    rejection's text on ``out``."""
    client = redis.Redis.from_url(url)
    out.put(("ready", 0))
    try:
        if kind == "aio":
            admitted = asyncio.run(_aio_wait(url, name, settings))
        else:
            store = redbreaker.connect(url)
            breaker = redbreaker.Breaker(name, store=store, **settings)
            permit = breaker.acquire(max_wait=20)
            admitted = _server_ms(client)
            permit.success()
            store.close()
        out.put(("admitted", admitted))
    except Exception as exc:  # reported to the test
        out.put(("error", repr(exc)))


async def _aio_wait(url: str, name: str, settings: dict[str, Any]) -> int:
    client = redis.Redis.from_url(url)
    async with aio.connect(url) as store:
        breaker = aio.Breaker(name, store=store, **settings)
        async with breaker.acquire(max_wait=20):
            return _server_ms(client)
