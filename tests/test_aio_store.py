"""redbreaker.aio's store: the same scripts, replies, errors and URLs as the sync store,
awaited; its transition feed task; transitions(); breaker_names(); connect().

No pytest-asyncio: each test runs its coroutine with ``asyncio.run`` (a new loop per test),
and closes every store and client it opened (ResourceWarnings are errors here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

import redbreaker
from redbreaker import ConfigError, ManualClock, StoreError, StoreEvent, StoreUnavailableError
from redbreaker._core import BreakerCore
from redbreaker._shards import SlotChannels
from redbreaker.aio._connect import connect
from redis_servers import RedisServer, RedisServerError, find_free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from redbreaker.aio._store import Store

PREFIX = "redbreaker"
CHANNEL = f"{PREFIX}:events"
KINDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis_server),
    pytest.param("redis-decoded", marks=pytest.mark.redis_server),
]


def _event(name: str, to_state: str = "open", **extra: Any) -> str:
    return json.dumps(
        {
            "name": name,
            "from_state": "closed",
            "to_state": to_state,
            "reason": "test",
            "generation": 2,
            "at_ms": 1,
            **extra,
        }
    )


def _core(store: Any, clock: ManualClock, name: str = "dep", **settings: Any) -> BreakerCore:
    return BreakerCore(
        name,
        prefix=store.prefix,
        clock=clock,
        view=store.view,
        config=None,
        on_transition=(),
        settings=settings,
        batch_lock=contextlib.nullcontext,
    )


def _text(reply: Any) -> Any:
    if isinstance(reply, list):
        return [_text(item) for item in reply]
    return reply.decode() if isinstance(reply, bytes) else reply


async def _until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def _aio_store(kind: str, request: pytest.FixtureRequest, clock: ManualClock, **kw: Any) -> Store:
    if kind == "memory":
        return connect("memory://", clock=clock, **kw)
    url = request.getfixturevalue("redis_url")
    client = redis.asyncio.Redis.from_url(url, decode_responses=kind == "redis-decoded")
    return connect(client, clock=clock, **kw)


async def _publish(store: Store, payload: str | bytes, channel: str = CHANNEL) -> None:
    await store.client.publish(channel, payload)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param != "memory":
        request.getfixturevalue("redis_url")  # skips without a redis-server, like `store`
    return str(request.param)


@pytest.fixture
def fresh_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of this test's own (the session one must stay up for the others)."""
    with RedisServer() as server:
        yield server


# -- run(): the sync store's replies, awaited -----------------------------------------


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
@pytest.mark.parametrize("where", ["memory", pytest.param("redis", marks=pytest.mark.redis_server)])
def test_run_replies_like_the_sync_store(
    where: str, decode: bool, request: pytest.FixtureRequest
) -> None:
    """Acquire, failures up to a trip, a rejection and inspect give the same replies from
    both stores for the same arguments (each store on its own empty Redis)."""
    clock = ManualClock()
    if where == "memory":
        import fakeredis

        sync = redbreaker.connect("memory://", clock=clock)
        target: Any = fakeredis.FakeAsyncRedis(decode_responses=decode)
    else:
        url = request.getfixturevalue("redis_url")
        sync = redbreaker.connect(url, clock=clock)
        target = redis.asyncio.Redis.from_url(url[:-1] + "1", decode_responses=decode)
    store = connect(target, clock=clock)
    core = _core(sync, clock, failure_threshold=3)

    async def body() -> list[Any]:
        try:
            return await steps()
        finally:
            await store.aclose()

    async def steps() -> list[Any]:
        seen = []
        for step in range(5):
            args = core.acquire_args()
            expected = sync.run("acquire", core.keys, args)
            got = await store.run("acquire", core.keys, args)
            assert _text(got) == _text(expected), step
            seen.append(_text(got))
            if _text(got)[0] == "admit":
                permit = core.on_acquire_reply(expected, 0, core.now())
                args = core.record_args(permit, "failure") or []
                expected = sync.run("record", core.keys, args)
                assert _text(await store.run("record", core.keys, args)) == _text(expected)
            clock.advance(0.01)
        args = core.inspect_args()
        expected = sync.run("inspect", core.keys, args)
        got = await store.run("inspect", core.keys, args)
        assert _text(got) == _text(expected)
        assert core.on_inspect_reply(got).state is redbreaker.State.OPEN
        return seen

    try:
        seen = asyncio.run(body())
    finally:
        sync.close()
    assert [reply[:2] for reply in seen] == [["admit", "closed"]] * 3 + [["reject", "open"]] * 2
    assert store._route.functions


def test_function_flush_then_run_reloads(redis_url: str, redis_server: RedisServer) -> None:
    """The library is loaded on first use and again after FUNCTION FLUSH; SCRIPT FLUSH
    does not disturb FCALL."""
    clock = ManualClock()
    store = connect(redis_url, clock=clock)
    core = _core(store, clock)

    async def body() -> None:
        assert (await store.run("acquire", core.keys, core.acquire_args()))[0] == b"admit"
        redis_server.function_flush()
        redis_server.script_flush()
        assert (await store.run("acquire", core.keys, core.acquire_args()))[0] == b"admit"
        await store.aclose()

    redis_server.reset_stats()
    asyncio.run(body())
    stats = redis_server.commandstats()
    assert stats["function|load"] == 2
    assert stats.get("evalsha", 0) == 0
    assert store._route.functions


# docs/security.md's ACL of releases before Functions: EVALSHA and SCRIPT LOAD, no FCALL.
_ACL_RULES = [
    *("reset", "on", ">p4ss", "resetchannels", "~redbreaker:*", "&redbreaker:events", "-@all"),
    *("+evalsha", "+script|load", "+hmget", "+hget", "+hset", "+hdel", "+hgetall", "+del"),
    *("+type", "+pexpire", "+persist", "+zadd", "+zcard", "+zrange", "+zrem"),
    *("+zremrangebyscore", "+zcount", "+publish", "+time", "+scan", "+subscribe"),
]


def test_an_acl_without_fcall_falls_back_to_evalsha(redis_server: RedisServer) -> None:
    """A user refused FCALL (and FUNCTION LOAD) runs the same scripts by EVALSHA, loading
    them after NOSCRIPT, and keeps to EVALSHA from then on."""
    with RedisServer(
        extra_args=["--requirepass", "adm1n"], client_kwargs={"password": "adm1n"}
    ) as server:
        with server.client(decode_responses=True) as admin:
            admin.execute_command("ACL", "SETUSER", "rb", *_ACL_RULES)
        clock = ManualClock()
        store = connect(f"redis://rb:p4ss@127.0.0.1:{server.port}/0", clock=clock)
        core = _core(store, clock)

        async def body() -> list[Any]:
            replies = [await store.run("acquire", core.keys, core.acquire_args())]
            server.script_flush()
            replies.append(await store.run("acquire", core.keys, core.acquire_args()))
            replies.append(await store.run("inspect", core.keys, core.inspect_args()))
            await store.aclose()
            return replies

        server.reset_stats()
        replies = asyncio.run(body())
        assert [r[0] for r in replies[:2]] == [b"admit", b"admit"]
        assert core.on_inspect_reply(replies[2]).exists
        assert store._route.functions is False
        # acquire, acquire again after SCRIPT FLUSH, inspect's first use
        assert server.commandstats()["script|load"] == 3
        with server.client(decode_responses=True) as admin:
            denied = {
                (entry["object"], entry["count"])
                for entry in admin.execute_command("ACL", "LOG")
                if entry["reason"] == "command" and entry["object"] != "client|setinfo"
            }
        assert denied == {("fcall", 1)}  # refused once, never asked again


def test_a_refusal_is_a_store_error_and_not_an_outage() -> None:
    """A key of the wrong type: StoreError; a reply that is not a list: StoreError; the
    store stays healthy."""
    clock = ManualClock()
    store = connect("memory://", clock=clock)
    core = _core(store, clock)

    async def body() -> None:
        await store.client.set(core.keys.state, "not a hash")
        with pytest.raises(StoreError, match=r"WRONGTYPE|wrong kind|type"):
            await store.run("acquire", core.keys, core.acquire_args())
        assert not store.health.degraded

        async def not_a_list(*_: Any) -> Any:
            return b"OK"

        store._call = not_a_list  # type: ignore[method-assign,assignment]
        with pytest.raises(StoreError, match="not a list"):
            await store.run("inspect", core.keys, core.inspect_args())
        await store.aclose()

    asyncio.run(body())


def test_outage_backoff_skips_io_and_reports_each_edge_once() -> None:
    """While degraded, calls fail without I/O until the backoff passed; one edge each way."""
    clock = ManualClock()
    events: list[StoreEvent] = []
    store = connect("memory://", clock=clock, on_store_event=events.append)
    core = _core(store, clock)
    real, tries, down = store._call, [0], [True]

    async def call(*args: Any) -> Any:
        tries[0] += 1
        if down[0]:
            raise redis.ConnectionError("refused (simulated)")
        return await real(*args)

    store._call = call  # type: ignore[method-assign,assignment]

    async def body() -> None:
        for _ in range(20):
            with pytest.raises(StoreUnavailableError) as caught:
                await store.run("acquire", core.keys, core.acquire_args())
            assert caught.value.retry_after is not None
        assert tries[0] == 1
        down[0] = False
        clock.advance(6)
        await store.run("acquire", core.keys, core.acquire_args())
        await store.aclose()

    asyncio.run(body())
    assert [e.kind for e in events] == ["store_degraded", "store_recovered"]


def test_a_killed_server_is_an_outage_then_recovers(fresh_server: RedisServer) -> None:
    """kill -9: StoreUnavailableError (chained to redis-py's error), then none while the
    backoff runs; back up: the next try answers. One degraded and one recovered edge."""
    clock = ManualClock()
    events: list[StoreEvent] = []
    store = connect(fresh_server.url, clock=clock, on_store_event=events.append)
    core = _core(store, clock)

    async def body() -> None:
        await store.run("acquire", core.keys, core.acquire_args())
        fresh_server.kill()
        with pytest.raises(StoreUnavailableError) as caught:
            await store.run("acquire", core.keys, core.acquire_args())
        assert isinstance(caught.value.__cause__, redis.ConnectionError)
        for _ in range(3):  # the backoff runs: no I/O, nothing to chain
            with pytest.raises(StoreUnavailableError) as caught:
                await store.run("acquire", core.keys, core.acquire_args())
            assert caught.value.__cause__ is None
        fresh_server.start()
        clock.advance(6)
        assert (await store.run("acquire", core.keys, core.acquire_args()))[0] == b"admit"
        await store.aclose()

    asyncio.run(body())
    assert [e.kind for e in events] == ["store_degraded", "store_recovered"]


def test_cancelled_run_leaves_no_reply_behind(redis_url: str, redis_server: RedisServer) -> None:
    """A run() cancelled while Redis holds its reply (CLIENT PAUSE) drops its connection:
    the next run() on the pool reads its own reply, not the cancelled one's."""
    clock = ManualClock()
    store = connect(redis_url, clock=clock)
    core = _core(store, clock)

    async def body() -> None:
        await store.run("inspect", core.keys, core.inspect_args())  # loaded, connected
        redis_server.pause(0.3)
        task = asyncio.ensure_future(store.run("acquire", core.keys, core.acquire_args()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        client: Any = store.client
        assert not any(c.is_connected for c in client.connection_pool._available_connections)
        await asyncio.sleep(0.3)
        # Each reply is its own: inspect's starts with the server's time, acquire's with
        # its verdict (the cancelled acquire's reply, had it been left, would come first).
        reply = await store.run("inspect", core.keys, core.inspect_args())
        assert isinstance(reply[0], int)
        core.on_inspect_reply(reply)
        assert (await store.run("acquire", core.keys, core.acquire_args()))[0] == b"admit"
        await store.aclose()

    asyncio.run(body())


# -- the feed -----------------------------------------------------------------------------


def test_feed_hears_a_published_transition(kind: str, request: pytest.FixtureRequest) -> None:
    """Subscribed: a new epoch; a PUBLISHed transition is heard through poll_feed() and,
    when nobody polls, by the feed task within a few idle periods."""
    clock = ManualClock()
    store = _aio_store(kind, request, clock)

    async def body() -> None:
        assert not store.feed_live
        store.start_feed()
        store.start_feed()  # once
        await _until(lambda: store.feed_live, "the feed to subscribe")
        assert store.view.heard("dep") == 1  # the subscription's epoch
        await _publish(store, _event("dep", retry_after_ms=5000))

        async def polled() -> bool:
            await store.poll_feed()
            return store.view.heard("dep") == 2

        deadline = time.monotonic() + 5
        while not await polled():
            assert time.monotonic() < deadline
            await asyncio.sleep(0)
        assert store.view.cached_rejection(f"{PREFIX}:{{dep}}", 1.0) is not None
        await _publish(store, _event("other", to_state="closed"))
        await _until(lambda: store.view.heard("other") == 2, "the idle feed task to read")
        await store.aclose()
        assert not store.feed_live

    asyncio.run(body())


def test_poll_feed_fast_path_does_not_await() -> None:
    """A feed read less than a ms ago: poll_feed() finishes without suspending once."""
    store = connect("memory://")

    async def body() -> None:
        store.start_feed()
        await _until(lambda: store.feed_live, "the feed to subscribe")
        store._feed._read_at = time.monotonic() + 60  # "just read"
        coroutine = store.poll_feed()
        with pytest.raises(StopIteration):
            coroutine.send(None)
        await store.aclose()

    asyncio.run(body())


def test_feed_resubscribes_after_losing_its_connection(redis_url: str) -> None:
    """CLIENT KILL of the subscription: the task subscribes again (a new epoch) and hears
    what is published afterwards."""
    store = connect(redis_url)

    async def body() -> None:
        store.start_feed()
        await _until(lambda: store.feed_live, "the feed to subscribe")
        epoch = store.view.heard("dep")
        await store.client.client_kill_filter(_type="pubsub")
        await _until(lambda: store.view.heard("dep") > epoch and store.feed_live, "resubscribe")
        heard = store.view.heard("dep")
        await _publish(store, _event("dep"))
        await _until(lambda: store.view.heard("dep") == heard + 1, "an event after it")
        await store.aclose()

    asyncio.run(body())


def test_aclose_ends_the_feed_task_and_start_feed_is_then_a_no_op() -> None:
    store = connect("memory://")

    async def body() -> None:
        store.start_feed()
        task = store._feed._task
        assert task is not None
        await _until(lambda: store.feed_live, "the feed to subscribe")
        await store.aclose()
        assert task.done()
        assert not store.feed_live
        store.start_feed()
        assert store._feed._task is None
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    asyncio.run(body())


# -- transitions() --------------------------------------------------------------------------


def test_transitions_yields_script_events_and_skips_garbage(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Live once entered: a trip made right after is seen; garbage (bad UTF-8, not JSON,
    wrong shapes) on the channel is skipped."""
    clock = ManualClock()
    store = _aio_store(kind, request, clock)
    core = _core(store, clock, failure_threshold=1)

    async def body() -> list[Any]:
        async with store.transitions() as events:
            for garbage in (b"\xff\xfe", b"not json", b"[1]", _event("x", to_state="nope")):
                await _publish(store, garbage)
            permit = core.on_acquire_reply(
                await store.run("acquire", core.keys, core.acquire_args()), 0, core.now()
            )
            await store.run("record", core.keys, core.record_args(permit, "failure") or [])
            await _publish(store, _event("manual", to_state="forced_open"))
            seen = [await asyncio.wait_for(events.__anext__(), 5) for _ in range(2)]
        await store.aclose()
        return seen

    first, second = asyncio.run(body())
    assert (first.name, first.previous, first.current, first.reason) == (
        "dep", redbreaker.State.CLOSED, redbreaker.State.OPEN, "consecutive_failures",
    )  # fmt: skip
    assert (second.name, second.current) == ("manual", redbreaker.State.FORCED_OPEN)


def test_transitions_end_quietly_when_the_store_is_closed() -> None:
    store = connect("memory://")

    async def body() -> list[Any]:
        seen: list[str] = []
        subscribed = asyncio.Event()

        async def watch() -> None:
            async with store.transitions() as events:
                subscribed.set()
                async for transition in events:
                    seen.append(transition.name)

        task = asyncio.ensure_future(watch())
        await asyncio.wait_for(subscribed.wait(), 5)
        await _publish(store, _event("one"))
        await _until(lambda: seen == ["one"], "the event")
        await store.aclose()
        await asyncio.wait_for(task, 2)
        return seen

    assert asyncio.run(body()) == ["one"]


def test_a_cancelled_wait_leaves_the_stream_usable() -> None:
    store = connect("memory://")

    async def body() -> str:
        events = await store.transitions().start()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(events.__anext__(), 0.05)
        await _publish(store, _event("after"))
        name = (await asyncio.wait_for(events.__anext__(), 5)).name
        await events.aclose()
        await store.aclose()
        return name

    assert asyncio.run(body()) == "after"


def test_transitions_on_an_unreachable_redis_raise_store_unavailable() -> None:
    store = connect(f"redis://127.0.0.1:{find_free_port()}/0", store_timeout=0.2)

    async def body() -> None:
        with pytest.raises(StoreUnavailableError):
            async with store.transitions():
                pass
        await store.aclose()

    asyncio.run(body())


# -- names, URLs, clients ------------------------------------------------------------------


def test_breaker_names(kind: str, request: pytest.FixtureRequest) -> None:
    clock = ManualClock()
    store = _aio_store(kind, request, clock)

    async def body() -> list[str]:
        for name in ("b:c", "a", "zahlungs-dienst-ü"):
            core = _core(store, clock, name)
            await store.run("acquire", core.keys, core.acquire_args())
        for key in ("other:{x}", f"{PREFIX}:loose", f"{PREFIX}:{{a}}:probes"):
            await store.client.set(key, "1")
        names = await store.breaker_names()
        await store.aclose()
        return names

    assert asyncio.run(body()) == ["a", "b:c", "zahlungs-dienst-ü"]


def test_named_memory_is_shared_with_the_sync_store() -> None:
    """memory://<name> is one Redis for the sync and the async store of that name."""
    name = f"aio-shared-{os.getpid()}"
    clock = ManualClock()
    sync = redbreaker.connect(f"memory://{name}", clock=clock)
    store = connect(f"memory://{name}", clock=clock)
    private = connect("memory://", clock=clock)
    core = _core(sync, clock, "shared")
    sync.run("acquire", core.keys, core.acquire_args())

    async def body() -> tuple[list[str], list[str]]:
        names = await store.breaker_names(), await private.breaker_names()
        await store.aclose()
        await private.aclose()
        return names

    try:
        assert asyncio.run(body()) == (["shared"], [])
    finally:
        sync.close()


@pytest.mark.parametrize(
    "target",
    [
        "http://x",
        "foo://",
        "localhost:6379",
        "",
        "redis://h:notaport",
        "redis://h:99999",
        "redis://",
        "redis+cluster://",
        "unix://",
        "redis+sentinel://h:1",
        "redis+sentinel://h:x/svc",
        "redis+sentinel://h:1/svc/notadb",
    ],
)
def test_bad_target_is_a_config_error(target: str) -> None:
    with pytest.raises(ConfigError) as caught:
        connect(target)
    assert caught.value.field == "target"


@pytest.mark.parametrize("target", [42, None, b"redis://127.0.0.1:6379", object()])
def test_non_client_target_is_a_config_error(target: object) -> None:
    with pytest.raises(ConfigError) as caught:
        connect(target)  # type: ignore[arg-type]
    assert caught.value.field == "target"


def test_bad_settings_are_config_errors_before_any_client() -> None:
    with pytest.raises(ConfigError):
        connect("memory://", prefix=":bad")
    with pytest.raises(ConfigError):
        connect("memory://", on_store_event=[42])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        connect("memory://", store_timeout=0)


def test_a_sync_client_is_refused() -> None:
    import fakeredis

    for client in (redis.Redis(host="127.0.0.1", port=1), fakeredis.FakeRedis()):
        try:
            with pytest.raises(ConfigError, match=r"redbreaker\.connect") as caught:
                connect(client)  # type: ignore[arg-type]
            assert caught.value.field == "target"
        finally:
            client.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        "unix:///nonexistent/redbreaker.sock",
        "redis+sentinel://127.0.0.1:{port}/svc",
        "redis+cluster://127.0.0.1:{port}",
    ],
)
def test_connect_is_lazy_and_an_unreachable_store_is_an_outage(url: str) -> None:
    """No I/O in connect(); the first run() finds nobody: StoreUnavailableError, fast."""
    clock = ManualClock()
    store = connect(url.format(port=find_free_port()), clock=clock, store_timeout=0.2)
    core = _core(store, clock)

    async def body() -> None:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.run("acquire", core.keys, core.acquire_args())
        assert time.monotonic() - started < 2
        assert store.health.degraded
        await store.aclose()

    asyncio.run(body())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads
def test_a_forked_child_starts_its_own_feed() -> None:
    clock = ManualClock()
    store = connect("memory://", clock=clock)
    core = _core(store, clock)

    async def use(store: Store) -> bool:
        store.start_feed()
        await _until(lambda: store.feed_live, "the feed to subscribe")
        reply = await store.run("acquire", core.keys, core.acquire_args())
        return bool(reply[0] == b"admit")

    assert asyncio.run(use(store))  # the parent's feed task ended with its loop
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            assert store._feed._task is None
            assert not store.feed_live
            code = 0 if asyncio.run(use(store)) else 1
            asyncio.run(store.aclose())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    asyncio.run(store.aclose())


# -- other topologies -------------------------------------------------------------------


def _cluster_node() -> RedisServer:
    """One cluster-enabled redis-server serving every slot (its bus port is +10000)."""
    for _ in range(20):
        port = find_free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        server = RedisServer(
            port=port,
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "{dir}/nodes.conf"],
        )
        try:
            server.start()
        except RedisServerError:
            server.close(graceful=False)
            continue
        with server.client(decode_responses=True) as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while "cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "the one-node cluster never became ok"
                time.sleep(0.05)
        return server
    raise AssertionError("no free port pair for a cluster node")


@pytest.mark.slow
def test_cluster_runs_scripts_lists_and_hears(redis_server: RedisServer) -> None:
    """A cluster client: FCALL routed by slot (never EVALSHA), SCAN, the feed,
    transitions() (on the slot's sharded channel where the scripts SPUBLISH)."""
    server = _cluster_node()
    clock = ManualClock()
    url = f"redis+cluster://127.0.0.1:{server.port}"
    stores = [
        connect(url, clock=clock),
        connect(RedisCluster(host="127.0.0.1", port=server.port, decode_responses=True)),
    ]

    async def body(store: Store) -> None:
        core = _core(store, clock)
        assert _text(await store.run("acquire", core.keys, core.acquire_args()))[0] == "admit"
        assert await store.breaker_names() == ["dep"]
        store.start_feed()
        await _until(lambda: store.feed_live, "the feed to subscribe")
        async with store.transitions() as events:
            if await store._cluster.sharded():  # type: ignore[union-attr]
                channel = SlotChannels(PREFIX).of_breaker("dep")[1]
                await store.client.spublish(channel, _event("dep"))
            else:
                await store.client.publish(CHANNEL, _event("dep"))
            assert (await asyncio.wait_for(events.__anext__(), 5)).name == "dep"
        await _until(lambda: store.view.heard("dep") == 2, "the feed to hear it")
        await store.aclose()

    try:
        server.reset_stats()
        for store in stores:
            asyncio.run(body(store))
            assert store._route.functions is True
            server.flushall(scripts=True)
        assert "evalsha" not in server.commandstats()
        assert server.commandstats()["fcall"] >= 2
    finally:
        server.close()


class _Sentinel(RedisServer):
    def __init__(self, master_port: int) -> None:
        super().__init__()
        self.master_port = master_port

    def _command_line(self, binary: str, workdir: Any) -> list[str]:
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nsentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
        )
        options = super()._command_line(binary, workdir)[1:]
        for name in ("--save", "--appendonly"):
            at = options.index(name)
            del options[at : at + 2]
        return [binary, str(conf), "--sentinel", *options]


@pytest.mark.slow
def test_sentinel_master_runs_and_feeds(fresh_server: RedisServer) -> None:
    with _Sentinel(fresh_server.port) as sentinel:
        clock = ManualClock()
        store = connect(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/2", clock=clock)
        core = _core(store, clock)

        async def body() -> None:
            assert (await store.run("acquire", core.keys, core.acquire_args()))[0] == b"admit"
            store.start_feed()
            await _until(lambda: store.feed_live, "the feed to subscribe")
            await _publish(store, _event("dep"))
            await _until(lambda: store.view.heard("dep") == 2, "the feed to hear it")
            await store.aclose()

        asyncio.run(body())
        with fresh_server.client(db=2) as master:
            assert master.exists(f"{PREFIX}:{{dep}}")

