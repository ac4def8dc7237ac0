"""The asyncio store's direct path (``redbreaker.aio._direct``): script calls written on
connections kept out of a plain client's pool, below ``execute_command``.

What it must keep of redis-py's own path: each call reads its own reply (concurrent
calls, a timeout, a cancellation), a wrapped client is left to its wrapper, keys are the
bytes the client's encoding makes, and a store outlives the event loop it was first used
on. Real redis-server only: the embedded Redis has no sockets to write on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio

from redbreaker import ManualClock, StoreUnavailableError
from redbreaker._core import BreakerCore
from redbreaker.aio import Breaker
from redbreaker.aio._connect import connect

if TYPE_CHECKING:
    from redbreaker.aio._store import Store
    from redis_servers import RedisServer

pytestmark = pytest.mark.redis_server


def _core(store: Store, name: str = "dep", **settings: Any) -> BreakerCore:
    return BreakerCore(
        name,
        prefix=store.prefix,
        clock=store.clock,
        view=store.view,
        config=None,
        on_transition=(),
        settings=settings,
        batch_lock=contextlib.nullcontext,
    )


class TracedRedis(redis.asyncio.Redis):
    """A client whose commands someone traces: its execute_command must see every call."""

    commands: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return await super().execute_command(*args, **options)


def test_a_plain_client_is_driven_directly_and_a_traced_one_through_its_wrapper(
    redis_url: str,
) -> None:
    plain = connect(redis.asyncio.Redis.from_url(url=redis_url))
    traced_client = TracedRedis.from_url(redis_url)
    traced_client.commands = []
    traced = connect(traced_client)

    async def body() -> None:
        for store in (plain, traced):
            core = _core(store)
            for _ in range(3):
                reply = await store.run("acquire", core.keys, core.acquire_args())
                assert reply[0] in (b"admit", "admit")
        # The plain client's pool lent one connection, kept between the three calls.
        pool: Any = plain.client.connection_pool
        assert len(pool._in_use_connections) == 1
        assert traced_client.commands.count("FCALL") == 3
        await plain.aclose()
        await traced.aclose()

    asyncio.run(body())


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_concurrent_calls_each_read_their_own_reply(redis_url: str, decode: bool) -> None:
    """100 tasks (the pool's size) interleave inspects (a list that starts with the
    server's time) and acquires (one that starts with a verdict) on as many connections
    as were in flight."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=decode, max_connections=100)
    store = connect(client)
    cores = [_core(store, f"dep-{i % 7}") for i in range(100)]

    async def one(i: int) -> None:
        core = cores[i]
        if i % 2:
            reply = await store.run("inspect", core.keys, core.inspect_args())
            assert isinstance(reply[0], int)
            core.on_inspect_reply(reply)
        else:
            reply = await store.run("acquire", core.keys, core.acquire_args())
            assert reply[0] in (b"admit", "admit")

    async def body() -> None:
        await asyncio.gather(*(one(i) for i in range(100)))
        pool: Any = store.client.connection_pool
        # Half the pool at most stays with the store: the client's other users find room.
        assert 1 <= len(pool._in_use_connections) <= 50
        assert await store.client.ping()
        await asyncio.gather(*(one(i) for i in range(100)))  # the same connections again
        await store.aclose()

    asyncio.run(body())


def test_a_timed_out_call_leaves_no_reply_for_the_next(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A call that outlives store_timeout (the server paused) is an outage; the reply that
    arrives later is not read by the next call, which gets its own."""
    store = connect(redis_url, store_timeout=0.1, clock=ManualClock())
    core = _core(store)

    async def body() -> None:
        await store.run("inspect", core.keys, core.inspect_args())
        redis_server.pause(0.4)
        with pytest.raises(StoreUnavailableError):
            await store.run("acquire", core.keys, core.acquire_args())
        await asyncio.sleep(0.5)
        store.health.succeeded()  # skip the backoff the outage started
        reply = await store.run("inspect", core.keys, core.inspect_args())
        assert isinstance(reply[0], int)
        await store.aclose()

    asyncio.run(body())


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_store_serves_a_second_event_loop(redis_url: str) -> None:
    """``asyncio.run`` twice on one store (a CLI, a test suite with a loop per test): the
    connections of the closed loop are forgotten, not used (their sockets went with the
    loop; the garbage collector frees them, with the ResourceWarning asyncio gives any
    transport its loop did not close)."""
    store = connect(redis_url)
    breaker = Breaker("two-loops", store=store)

    async def noop() -> str:
        return "ok"

    assert asyncio.run(breaker.call(noop)) == "ok"
    assert asyncio.run(breaker.call(noop)) == "ok"
    snapshot = asyncio.run(breaker.snapshot())
    assert snapshot.state.value == "closed"
    asyncio.run(store.aclose())
    gc.collect()  # the closed loops' sockets warn here, not in a later test


def test_keys_are_the_bytes_of_the_clients_encoding(redis_url: str) -> None:
    """A latin-1 client: the direct path writes "café"'s key as latin-1, as redis-py
    would, so other clients of that encoding find it."""
    client = redis.asyncio.Redis.from_url(redis_url, encoding="latin-1")
    store = connect(client, prefix="enc")
    breaker = Breaker("café", store=store)

    async def body() -> None:
        await breaker.force_open(60)
        await store.aclose()

    asyncio.run(body())
    sync = redis.Redis.from_url(redis_url)
    try:
        assert sync.exists("enc:{café}".encode("latin-1"))
        assert not sync.exists("enc:{café}".encode())
    finally:
        sync.delete("enc:{café}".encode("latin-1"))
        sync.close()
