"""How a store uses its client's connections, on the session redis-server.

A plain ``redis.Redis`` is driven a level below ``execute_command``: each thread keeps one
connection of the client's pool. These tests hold that to account: one checkout per thread,
the connection back in the pool when its thread ends, a child process after ``fork`` on a
connection of its own, a reply that came too late never read as the next call's, and a
client whose ``execute_command`` someone wrapped (tracing) still seeing every command.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from redbreaker import Breaker, ManualClock, State

if TYPE_CHECKING:
    from redis_servers import RedisServer

pytestmark = pytest.mark.redis_server


class PoolCounter:
    """Counts checkouts from and returns to a redis-py pool (wrapping its methods)."""

    def __init__(self, pool: Any) -> None:
        self.taken = 0
        self.returned = 0
        self._lock = threading.Lock()
        get, release = pool.get_connection, pool.release

        def counted_get(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.taken += 1
            return get(*args, **kwargs)

        def counted_release(connection: Any) -> None:
            with self._lock:
                self.returned += 1
            release(connection)

        pool.get_connection = counted_get
        pool.release = counted_release


def _ok() -> str:
    return "ok"


def _local_port(store: redbreaker.Store) -> int:
    """The local TCP port of the connection this thread's calls go out on."""
    assert store._direct is not None
    sock = store._direct.held()._sock
    return int(sock.getsockname()[1])


def test_one_checkout_per_thread_and_back_when_the_thread_ends(redis_url: str) -> None:
    """101 calls from the main thread and 5 others: 6 checkouts; the 5 threads' connections
    return to the pool when the threads end; every call was counted."""
    store = redbreaker.connect(redis_url, prefix="held")
    try:
        counter = PoolCounter(store.client.connection_pool)
        breaker = Breaker("svc", store=store)
        assert breaker.call(_ok) == "ok"

        def work() -> None:
            for _ in range(20):
                assert breaker.call(_ok) == "ok"

        threads = [threading.Thread(target=work) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        del threads
        gc.collect()
        assert counter.taken == 6
        assert counter.returned == 5  # the main thread still holds its own
        assert breaker.snapshot().window_calls == 101
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads
def test_a_forked_child_uses_a_connection_of_its_own(redis_url: str) -> None:
    """A child forked after the parent's calls makes its own 30 calls on a new connection,
    leaves the parent's alone, and the parent goes on: 10 + 30 + 10 calls counted."""
    store = redbreaker.connect(redis_url, prefix="held")
    try:
        breaker = Breaker("svc", store=store)
        for _ in range(10):
            breaker.call(_ok)
        parent_port = _local_port(store)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                for _ in range(30):
                    breaker.call(_ok)
                os.write(write, str(_local_port(store)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        child_port = int(os.read(read, 16))
        os.close(read)
        assert child_port != parent_port  # the child never wrote on the parent's socket
        assert _local_port(store) == parent_port
        for _ in range(10):
            breaker.call(_ok)
        assert breaker.snapshot().window_calls == 50
    finally:
        store.close()


def test_a_late_reply_is_never_read_as_the_next_one(
    redis_server: RedisServer, redis_url: str
) -> None:
    """A call times out while Redis is paused; its reply arrives later on the connection it
    was sent on. The next call must not take that reply for its own: it runs on a new
    connection and sees the breaker as it is."""
    clock = ManualClock()
    store = redbreaker.connect(redis_url, prefix="held", store_timeout=0.2, clock=clock)
    try:
        breaker = Breaker("svc", store=store, failure_threshold=1, on_store_error="reject")
        assert breaker.call(_ok) == "ok"
        redis_server.pause(0.6)
        with pytest.raises(redbreaker.StoreUnavailableError):
            breaker.acquire()
        redis_server.unpause()
        clock.advance(10)  # past the store's backoff before it tries Redis again
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        snapshot = breaker.snapshot()
        assert (snapshot.state, snapshot.open_count) == (State.OPEN, 1)
        with pytest.raises(redbreaker.CircuitOpenError):
            breaker.acquire()
    finally:
        store.close()


class TracedRedis(redis.Redis):
    """A client whose execute_command someone overrode, as tracing integrations do."""

    traced: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.__dict__.setdefault("traced", []).append(str(args[0]).upper())
        return super().execute_command(*args, **options)


def test_a_wrapped_client_sees_every_command(redis_url: str) -> None:
    """With execute_command overridden, every round trip goes through it (none bypasses
    the wrapper), and the breaker behaves the same."""
    client = TracedRedis.from_url(redis_url)
    store = redbreaker.connect(client, prefix="traced")
    try:
        breaker = Breaker("svc", store=store, failure_threshold=1)
        breaker.call(_ok)
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
        assert breaker.state is State.OPEN
        assert client.traced == ["FCALL", "FUNCTION LOAD", "FCALL", "FCALL", "FCALL", "FCALL"]
    finally:
        store.close()


def _wait_until(predicate: Any, what: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit}s: {what}")
        time.sleep(0.002)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads
def test_a_forked_child_hears_transitions_on_a_feed_of_its_own(redis_url: str) -> None:
    """A cached breaker's store forked while its feed runs (gunicorn's preload_app): the
    child subscribes on its own and hears an open within 2 s (max_staleness is 30 s, so only
    the feed can tell it); the parent's feed still hears the reset that follows."""
    store = redbreaker.connect(redis_url, prefix="forkfeed")
    admin = redbreaker.connect(redis_url, prefix="forkfeed")
    try:
        breaker = Breaker("svc", store=store, consistency="cached", max_staleness=30)
        assert breaker.call(_ok) == "ok"
        _wait_until(lambda: store.feed_live, "the parent's feed subscribed")
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                assert breaker.call(_ok) == "ok"  # starts the child's own feed
                _wait_until(lambda: store.feed_live, "the child's feed subscribed")
                # Its own subscription: the channel has two subscribers, not one shared.
                with redis.Redis.from_url(redis_url) as probe:
                    _wait_until(
                        lambda: probe.pubsub_numsub("forkfeed:events")[0][1] == 2,
                        "a second subscriber on the channel",
                    )
                os.write(to_parent_w, b"r")
                assert os.read(to_child_r, 1) == b"o"  # the parent opened the breaker
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    try:
                        breaker.call(_ok)
                    except redbreaker.CircuitOpenError:
                        code = 0
                        break
                    time.sleep(0.001)
            finally:
                os._exit(code)
        os.close(to_parent_w)  # a child that dies ends the parent's reads at once
        os.close(to_child_r)
        assert os.read(to_parent_r, 1) == b"r", "the child did not get a feed of its own"
        Breaker("svc", store=admin).force_open()
        os.write(to_child_w, b"o")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child never heard the open"
        with pytest.raises(redbreaker.CircuitOpenError):
            breaker.call(_ok)
        Breaker("svc", store=admin).reset()

        def admitted() -> bool:
            try:
                breaker.call(_ok)
            except redbreaker.CircuitOpenError:
                return False
            return True

        _wait_until(admitted, "the parent heard the reset on its feed", limit=2.0)
        os.close(to_child_w)
        os.close(to_parent_r)
    finally:
        store.close()
        admin.close()


# -- a pool that limits its connections -------------------------------------------------


def _named_connections(server: RedisServer, name: str) -> list[dict[str, Any]]:
    with server.client() as admin:
        return [c for c in admin.client_list() if c.get("name") == name]


def _hammer(breakers: list[Breaker], threads: int, calls: int) -> list[BaseException]:
    """``threads`` threads, released together, each making ``calls`` calls through one of
    ``breakers`` in turn; what any of them raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(index: int) -> None:
        breaker = breakers[index % len(breakers)]
        start.wait()
        for _ in range(calls):
            try:
                assert breaker.call(_ok) == "ok"
            except BaseException as exc:
                errors.append(exc)

    running = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return errors


@pytest.mark.parametrize("consistency", ["strict", "cached"])
def test_64_threads_on_a_pool_of_8_no_error_and_no_ninth_connection(
    redis_server: RedisServer, redis_url: str, consistency: str
) -> None:
    """Threads beyond the pool's limit wait their turn; redis-py's "Too many connections"
    would read as an outage (and, under "allow", run calls unguarded)."""
    name = f"limit-{consistency}"
    store = redbreaker.connect(f"{redis_url}?max_connections=8&client_name={name}")
    events: list[Any] = []
    store.health._hooks = (events.append,)
    breakers = [
        Breaker(f"dep-{i}", store=store, on_store_error="reject", consistency=consistency)
        for i in range(4)
    ]
    errors = _hammer(breakers, 64, 100)
    try:
        assert errors == []
        assert events == []  # never degraded
        connections = _named_connections(redis_server, name)
        calls = [c for c in connections if "P" not in c["flags"]]
        feeds = [c for c in connections if "P" in c["flags"]]
        # The pool never opens more than its limit (idle ones stay open: this is the peak).
        assert 1 <= len(calls) <= 8, connections
        assert len(feeds) == (1 if consistency == "cached" else 0), connections
    finally:
        store.close()


def test_a_blocking_pool_passed_in_is_shared_the_same_way(
    redis_server: RedisServer, redis_url: str
) -> None:
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=4, timeout=2, client_name="blocking-limit"
    )
    client = redis.Redis(connection_pool=pool)
    store = redbreaker.connect(client)
    errors = _hammer([Breaker("dep", store=store, on_store_error="reject")], 32, 100)
    try:
        assert errors == []
        assert 1 <= len(_named_connections(redis_server, "blocking-limit")) <= 4
    finally:
        store.close()


def test_a_call_that_finds_every_connection_busy_past_the_wait_is_an_outage(
    redis_url: str,
) -> None:
    """The wait is bounded by the connections' socket timeout (store_timeout): a pool held
    elsewhere is Redis not answering in time, under the breaker's on_store_error."""
    store = redbreaker.connect(f"{redis_url}?max_connections=1", store_timeout=0.2)
    breaker = Breaker("dep", store=store, on_store_error="reject")
    assert store._gate is not None
    assert store._gate.acquire(1.0)  # another call holds the one slot
    try:
        with pytest.raises(redbreaker.StoreUnavailableError, match="connections of the"):
            breaker.call(_ok)
    finally:
        store._gate.release()
        store.close()


def test_more_threads_than_redis_pys_default_pool_of_100(
    redis_server: RedisServer, redis_url: str
) -> None:
    """redis-py 8's default pool holds 100 connections; 150 threads (a gthread or celery
    threads pool) call through it without an error, half the pool kept by threads."""
    # A generous store_timeout (the longest a call waits for a busy pool's connection):
    # on a loaded 2-core box 100 threads sharing 50 connections can wait past 0.5 s.
    store = redbreaker.connect(f"{redis_url}?client_name=default-pool", store_timeout=5.0)
    errors = _hammer([Breaker("dep", store=store, on_store_error="reject")], 150, 20)
    try:
        assert errors == []
        assert store._direct is not None
        assert store._direct.keep == 50
        assert 1 <= len(_named_connections(redis_server, "default-pool")) <= 100
    finally:
        store.close()


def test_250_tasks_on_an_asyncio_pool_of_8(redis_server: RedisServer, redis_url: str) -> None:
    import asyncio

    import redbreaker.aio

    async def main() -> tuple[list[BaseException], int]:
        store = redbreaker.aio.connect(f"{redis_url}?max_connections=8&client_name=aio-limit")
        breaker = redbreaker.aio.Breaker("dep", store=store, on_store_error="reject")
        errors: list[BaseException] = []

        async def ok() -> str:
            return "ok"

        async def work() -> None:
            for _ in range(20):
                try:
                    await breaker.call(ok)
                except BaseException as exc:
                    errors.append(exc)

        try:
            await asyncio.gather(*(work() for _ in range(250)))
            # Still open: the pool keeps what it opened, so this is the peak.
            opened = len(_named_connections(redis_server, "aio-limit"))
        finally:
            await store.aclose()
        return errors, opened

    errors, opened = asyncio.run(main())
    assert errors == []
    assert 1 <= opened <= 8
