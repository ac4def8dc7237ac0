"""Quorum opening across real processes (issue 14): a forked child is a new reporter, three
spawned processes on a real redis-server trip the fleet's breaker where one or two do not,
a process's own transitions never reach the store's channel, and the process-scoped
rejection crosses process boundaries intact (pickling)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from drivers import unwrap
from redbreaker import CircuitOpenError, ManualClock, State, _policies

if TYPE_CHECKING:
    from drivers import AnyBreaker, Driver
    from redis_servers import RedisServer

PREFIX = "qp"
QUORUM: dict[str, Any] = {"min_reporters": 3, "failure_threshold": 2, "recovery_timeout": 30}


def fail(breaker: AnyBreaker) -> None:
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(down)


# -- a forked child ----------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
def test_a_forked_child_is_a_new_reporter(driver: Driver, clock: ManualClock) -> None:
    store = driver.connect("memory://", clock=clock)
    breaker = driver.breaker("dep", store=store, **QUORUM)
    fail(breaker)  # the parent's own breaker exists
    raw = unwrap(breaker)
    assert raw._own is not None
    parent = _policies.process_identity()
    assert parent == _policies.process_identity()  # stable within a process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            os.close(read_end)
            seen = {
                "identity": _policies.process_identity(),
                "again": _policies.process_identity(),
                "own_forgotten": raw._own is None,
                "pid": os.getpid(),
            }
            os.write(write_end, json.dumps(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        seen = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seen["identity"] != parent
    assert seen["identity"] == seen["again"]
    host, child_pid, _ = seen["identity"].split(":")
    assert (host, int(child_pid)) == (parent.split(":")[0], seen["pid"])
    assert seen["own_forgotten"]  # the child keeps a breaker of its own, made afresh
    assert _policies.process_identity() == parent  # the parent is unchanged
    assert raw._own is not None


# -- three spawned processes on a real redis-server --------------------------------------


def fail_until_rejected(url: str) -> dict[str, Any]:
    """In a spawned process: fail until rejected; report who rejected and what it saw."""
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    store = redbreaker.connect(url, prefix=PREFIX)
    try:
        breaker = redbreaker.Breaker("dep", store=store, **QUORUM)
        failures = 0
        scope = None
        for _ in range(10):
            try:
                breaker.call(_down)
            except ConnectionError:
                failures += 1
            except CircuitOpenError as exc:
                scope = exc.scope
                break
        snap = breaker.snapshot()
        return {
            "identity": _policies.process_identity(),
            "failures": failures,
            "scope": scope,
            "state": snap.state.value,
            "process_state": None if snap.process_state is None else snap.process_state.value,
        }
    finally:
        store.close()


def _down() -> None:
    raise ConnectionError("down")


@pytest.mark.slow
def test_three_processes_trip_the_fleet_where_two_do_not(redis_url: str) -> None:
    """One process after another (each a new spawn): the first two are stopped by their
    own breakers while the fleet's stays closed; the third's failure meets the quorum."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        runs = [pool.apply(fail_until_rejected, (redis_url,)) for _ in range(3)]
    assert len({run["identity"] for run in runs}) == 3
    assert [(r["failures"], r["scope"], r["state"], r["process_state"]) for r in runs[:2]] == [
        (2, "process", "closed", "open")
    ] * 2
    # The fleet's streak is 4 when the third process fails: its first failure trips it.
    assert (runs[2]["failures"], runs[2]["scope"], runs[2]["state"]) == (1, "fleet", "open")
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.hget(f"{PREFIX}:{{dep}}", "state") == b"open"
        assert raw.exists(f"{PREFIX}:{{dep}}:reporters") == 0


# -- the channel ------------------------------------------------------------------------


def _messages(pubsub: redis.client.PubSub, until: str) -> list[dict[str, Any]]:
    """The transitions published on the channel, up to and including one to ``until``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is None or message["type"] != "message":
            continue
        seen.append(json.loads(message["data"]))
        if seen[-1]["to_state"] == until:
            return seen
    pytest.fail(f"no transition to {until} published within 10 s: {seen}")


def test_own_transitions_are_not_published(
    driver: Driver, redis_server: RedisServer, redis_url: str, clock: ManualClock
) -> None:
    store = driver.connect(redis_url, clock=clock, prefix=PREFIX)
    breaker = driver.breaker("dep", store=store, **QUORUM)
    breaker.call(lambda: "created")
    with redis_server.client() as raw, raw.pubsub() as pubsub:
        pubsub.subscribe(f"{PREFIX}:events")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        fail(breaker)
        fail(breaker)  # the own breaker opens
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(lambda: None)
        assert info.value.scope == "process"
        assert breaker.snapshot().process_state is State.OPEN
        breaker.force_open()  # a fleet transition: the marker that ends the reading
        published = _messages(pubsub, until="forced_open")
    assert [(m["from_state"], m["to_state"]) for m in published] == [("closed", "forced_open")]


# -- the exception across processes --------------------------------------------------------


def test_a_process_rejection_pickles_with_its_scope() -> None:
    exc = CircuitOpenError("payments", "open", 1.25, "process")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is CircuitOpenError
    assert (
        vars(back)
        == vars(exc)
        == {
            "name": "payments",
            "state": "open",
            "retry_after": 1.25,
            "scope": "process",
        }
    )
    assert str(back) == str(exc)
    assert "in this process" in str(back)
    assert "in this process" not in str(CircuitOpenError("payments", "open", 1.25))
    assert CircuitOpenError("payments", "open", 1.25).scope == "fleet"


def test_a_process_rejection_is_rebuilt_from_its_args() -> None:
    # What celery's JSON result backend does with a stored exception: cls(*args).
    exc = CircuitOpenError("payments", "open", 1.25, "process")
    back = type(exc)(*exc.args)
    assert vars(back) == vars(exc)
    assert str(back) == str(exc)
