"""``await Store.doctor()``: the asyncio driver of :mod:`redbreaker._doctor_core`, which
decides what to ask and what the replies mean."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from .. import _doctor_core as core
from .._doctor import classify, is_embedded, scratch_config, script_command
from .._exceptions import RedbreakerError, StoreError
from ._breaker import Breaker

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["diagnose"]


def _failed(exc: BaseException, started: float) -> core.Answer:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    kind = classify(exc)
    command = script_command(text) if kind == "noperm" else None
    return core.Answer(
        error=text, kind=kind, seconds=time.perf_counter() - started, command=command
    )


async def _ask(store: Store, request: core.Ask) -> core.Answer:
    started = time.perf_counter()
    try:
        client = store.client
        if request.node is None:
            value = await client.execute_command(*request.argv)
        else:
            assert isinstance(client, RedisCluster)
            node = client.get_node(node_name=request.node)
            if node is None:  # gone since the list was read (a failover)
                raise redis.ConnectionError(f"{request.node} is no longer a cluster node")
            value = await node.execute_command(*request.argv)
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        return _failed(exc, started)
    return core.Answer(value=value, seconds=time.perf_counter() - started)


async def _library(store: Store, request: core.LibraryStep) -> core.Answer:
    started = time.perf_counter()
    try:
        if request.step == "names":
            await store.breaker_names()
        elif request.step == "subscribe":
            async with store.transitions():
                pass  # subscribed (and confirmed) on entry: that is the check
        else:
            breaker = Breaker(core.SCRATCH_NAME, store=store, config=scratch_config())
            if request.step == "inspect":
                await breaker.snapshot()
            elif request.step == "call":
                async with breaker.acquire():
                    pass  # one admission and one recorded success
            else:
                await breaker.reset()
    except (StoreError, redis.RedisError, OSError) as exc:
        return _failed(exc, started)
    except RedbreakerError as exc:  # unavailable mid-check: a store call was refused
        return _failed(exc, started)
    return core.Answer(value=store._route.functions)


async def diagnose(store: Store) -> core.DoctorReport:
    """Run every check on ``store`` (see :meth:`redbreaker.aio.Store.doctor`)."""
    client = store.client
    primaries: tuple[str, ...] = ()
    if isinstance(client, RedisCluster):
        # The asyncio client learns its nodes lazily; if it cannot, the first PING says why.
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
            await client.initialize()
        primaries = tuple(node.name for node in client.get_primaries())
    steps = core.examine(store.prefix, embedded=is_embedded(client), primaries=primaries)
    try:
        request = next(steps)
        while True:
            if isinstance(request, core.Ask):
                answer = await _ask(store, request)
            else:
                answer = await _library(store, request)
            request = steps.send(answer)
    except StopIteration as done:
        report: core.DoctorReport = done.value
        return report
