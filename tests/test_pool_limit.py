"""The limit a client's pool puts on a store's calls in flight (the core decision), and the
sync gate that hands freed slots over first in, first out."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from redbreaker._gate import CallGate
from redbreaker._pool_limit import DEFAULT_WAIT, CallLimit, call_limit


def test_no_pool_or_an_unbounded_one_sets_no_limit() -> None:
    assert call_limit(redis.ConnectionPool(max_connections=2**31)) is None
    assert call_limit(None) is None
    assert call_limit(object()) is None


def test_max_connections_with_the_socket_timeout_as_the_wait() -> None:
    pool = redis.ConnectionPool(max_connections=8, socket_timeout=0.5)
    assert call_limit(pool) == CallLimit(8, 0.5)
    assert call_limit(redis.ConnectionPool(max_connections=3)) == CallLimit(3, DEFAULT_WAIT)


def test_a_blocking_pool_waits_no_longer_than_its_own_timeout() -> None:
    pool = redis.BlockingConnectionPool(max_connections=4, timeout=2, socket_timeout=5)
    assert call_limit(pool) == CallLimit(4, 2.0)
    shorter = redis.BlockingConnectionPool(max_connections=4, timeout=20, socket_timeout=0.5)
    assert call_limit(shorter) == CallLimit(4, 0.5)


def test_the_message_says_what_to_change() -> None:
    assert "max_connections" in CallLimit(8, 0.5).exhausted()


def test_the_gate_admits_its_slots_then_waits_and_gives_up() -> None:
    gate = CallGate(2)
    assert gate.acquire(0.0)
    assert gate.acquire(0.0)
    assert not gate.acquire(0.01)
    gate.release()
    assert gate.acquire(0.0)


def test_a_freed_slot_goes_to_the_first_waiter() -> None:
    gate = CallGate(1)
    assert gate.acquire(0.0)
    order: list[int] = []

    def wait_in_line(n: int, ready: threading.Event) -> None:
        ready.set()
        assert gate.acquire(5.0)
        order.append(n)
        gate.release()

    threads = []
    for n in range(5):
        ready = threading.Event()
        thread = threading.Thread(target=wait_in_line, args=(n, ready))
        thread.start()
        ready.wait()
        # In line once its turn lock is queued.
        deadline = time.monotonic() + 5
        while len(gate._waiters) < n + 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        threads.append(thread)
    gate.release()  # handed to waiter 0, which hands it on in turn
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("slots", [1, 3])
def test_a_slot_handed_over_as_the_wait_ends_is_not_lost(slots: int) -> None:
    gate = CallGate(slots)
    for _ in range(slots):
        assert gate.acquire(0.0)
    for _ in range(200):
        result: list[bool] = []

        def wait(result: list[bool] = result) -> None:
            result.append(gate.acquire(0.001))

        waiter = threading.Thread(target=wait)
        waiter.start()
        gate.release()
        waiter.join()
        if not result[0]:
            assert gate.acquire(0.0)  # the slot went back to the gate, not into the void
    # Every slot is accounted for: exactly `slots` are taken now.
    assert not gate.acquire(0.0)
