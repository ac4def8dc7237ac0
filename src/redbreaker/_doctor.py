"""``Store.doctor()``: sends what :mod:`redbreaker._doctor_core` asks and hands back the
replies. The checks and what they mean are all in the core."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError, RedisClusterException

from . import _doctor_core as core
from ._breaker import Breaker
from ._config import BreakerConfig
from ._exceptions import RedbreakerError, StoreError
from ._feed import _close_quietly, _subscribe, subscriber_client
from ._health import REFUSED, UNAVAILABLE
from ._scripts import library_source, script_source

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["classify", "diagnose", "is_embedded", "scratch_config", "script_command"]


def scratch_config() -> BreakerConfig:
    """The scratch breaker's settings: every duration short, so its keys expire within
    seconds of the check (``key_ttl`` must be at least twice the longest)."""
    return BreakerConfig(
        window=1.0, recovery_timeout=1.0, max_recovery_timeout=1.0, probe_lease=1.0, key_ttl=5.0
    )


def classify(exc: BaseException) -> core.ErrorKind:
    """What a redis-py (or redbreaker) error means to the doctor."""
    cause: BaseException | None = exc
    if isinstance(exc, RedbreakerError) and exc.__cause__ is not None:
        cause = exc.__cause__
    text = str(exc).lower()
    if isinstance(cause, REFUSED) or "refused the credentials" in text:
        return "credentials"
    if isinstance(cause, NoPermissionError) or "no permissions" in text or "can't run" in text:
        return "noperm"
    if isinstance(cause, UNAVAILABLE):
        return "unavailable"
    if "unknown command" in text or "unknown subcommand" in text:
        return "unknown_command"
    return "error"


def script_command(error: str) -> str | None:
    """The command on the line a script was refused at, from Redis's error text."""
    where = core.failing_line(error)
    if where is None:
        return None
    kind, line = where
    if kind == "function":
        return core.command_on_line(library_source(), line)
    for name in ("acquire", "control", "inspect", "record"):
        if f" {name} script" in error:
            return core.command_on_line(script_source(name), line)
    return None


def is_embedded(client: object) -> bool:
    """True for the in-process store (``memory://``: a fakeredis client)."""
    return type(client).__module__.split(".")[0] == "fakeredis"


def _failed(exc: BaseException, started: float) -> core.Answer:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    kind = classify(exc)
    command = script_command(text) if kind == "noperm" else None
    return core.Answer(
        error=text, kind=kind, seconds=time.perf_counter() - started, command=command
    )


def _ask(store: Store, request: core.Ask) -> core.Answer:
    started = time.perf_counter()
    try:
        client = store.client
        if request.node is not None:
            assert isinstance(client, RedisCluster)
            node = client.get_node(node_name=request.node)  # type: ignore[no-untyped-call]
            if node is None or node.redis_connection is None:  # gone since the list was read
                raise redis.ConnectionError(f"{request.node} is no longer a cluster node")
            client = node.redis_connection
        value = client.execute_command(*request.argv)  # type: ignore[no-untyped-call]
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        return _failed(exc, started)
    return core.Answer(value=value, seconds=time.perf_counter() - started)


def _library(store: Store, request: core.LibraryStep) -> core.Answer:
    started = time.perf_counter()
    try:
        if request.step == "names":
            store.breaker_names()
        elif request.step == "subscribe":
            _subscribe_once(store)
        else:
            breaker = Breaker(core.SCRATCH_NAME, store=store, config=scratch_config())
            if request.step == "inspect":
                breaker.snapshot()
            elif request.step == "call":
                breaker.call(lambda: None)
            else:
                breaker.reset()
    except (StoreError, redis.RedisError, OSError) as exc:
        return _failed(exc, started)
    except RedbreakerError as exc:  # unavailable mid-check: a store call was refused
        return _failed(exc, started)
    return core.Answer(value=store._route.functions)


def _subscribe_once(store: Store) -> None:
    client = pubsub = None
    try:
        client = subscriber_client(store.client)
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        _subscribe(pubsub, f"{store.prefix}:events")
    finally:
        _close_quietly(pubsub, client)


def diagnose(store: Store) -> core.DoctorReport:
    """Run every check on ``store`` (see :meth:`redbreaker.Store.doctor`)."""
    client = store.client
    primaries = (
        tuple(node.name for node in client.get_primaries())  # type: ignore[no-untyped-call]
        if isinstance(client, RedisCluster)
        else ()
    )
    steps = core.examine(store.prefix, embedded=is_embedded(client), primaries=primaries)
    try:
        request = next(steps)
        while True:
            if isinstance(request, core.Ask):
                answer = _ask(store, request)
            else:
                answer = _library(store, request)
            request = steps.send(answer)
    except StopIteration as done:
        report: core.DoctorReport = done.value
        return report
