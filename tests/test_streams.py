"""The Redis Streams consumer (``redbreaker.StreamConsumer`` and its asyncio twin).

Every behaviour test runs on both drivers (``sync``, ``aio``) and on both stream backends:
a real redis-server and the embedded one (fakeredis has streams, XAUTOCLAIM and Lua). The
breaker lives on an embedded store of its own, so no test meets the shared-server warning
by accident. The clean stop on a signal runs consumer processes; the 10,000-message proof
is in ``test_streams_proof.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fakeredis
import pytest
import redis
import redis.asyncio

import redbreaker
import redbreaker.aio
from redbreaker import CircuitOpenError, ConfigError, StreamMessage, StreamStats
from redbreaker._memory import memory_server
from redbreaker._streams_core import (
    FAIL_SCRIPT,
    FailureVerdict,
    Read,
    StreamConfig,
    StreamCore,
    decode_entries,
)
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TESTS = Path(__file__).resolve().parent
KINDS = ("sync", "aio")
BACKENDS = ("redis", "memory")
STREAM = "orders"
GROUP = "billing"


class Boom(Exception):  # noqa: N818 (the handler's own error)
    """The handler failed."""


class Rig:
    """A stream backend, a breaker store and a way to run one consumer of either driver
    until a condition holds (the handlers the tests write are plain functions; the aio
    consumer gets an ``async def`` calling them)."""

    def __init__(
        self, kind: str, backend: str, request: pytest.FixtureRequest, url: str = ""
    ) -> None:
        self.kind = kind
        self.store_url = f"memory://breakers-{uuid.uuid4().hex}"
        if backend == "redis":
            self.stream_url: str = url or request.getfixturevalue("redis_url")
            self.r: Any = redis.Redis.from_url(self.stream_url)
        else:
            name = f"streams-{uuid.uuid4().hex}"
            self.stream_url = f"memory://{name}"
            self.r = fakeredis.FakeRedis(server=memory_server(name))
        self.consumer: Any = None
        self.acquires = 0

    def add(self, count: int, stream: str = STREAM) -> list[str]:
        return [self.r.xadd(stream, {"n": str(i)}).decode() for i in range(count)]

    def group(self, stream: str = STREAM) -> None:
        self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)

    def pending(self, stream: str = STREAM) -> int:
        return int(self.r.xpending(stream, GROUP)["pending"])

    def breaker(self) -> redbreaker.Breaker:
        """A sync view of the consumers' breaker (same name, same embedded Redis)."""
        return redbreaker.Breaker("dep", store=redbreaker.connect(self.store_url))

    def run(
        self,
        handler: Callable[[StreamMessage], object],
        until: Callable[[], bool],
        *,
        limit: float = 10.0,
        breaker: dict[str, Any] | None = None,
        client: Callable[[], Any] | None = None,
        **settings: Any,
    ) -> StreamStats:
        """Run a consumer until ``until()`` (or it returns by itself); ``client`` makes
        the stream client it gets instead of the URL (called where it is used)."""
        settings = {"stream": STREAM, "group": GROUP, "max_block": 0.1, **settings}
        breaker_settings = {"failure_threshold": 1000, **(breaker or {})}
        if self.kind == "sync":
            return self._run_sync(
                handler, until, limit, breaker_settings, settings, client=client
            )
        return asyncio.run(
            self._run_aio(handler, until, limit, breaker_settings, settings, client=client)
        )

    def _count_acquires(self, breaker: Any) -> None:
        acquire = breaker.acquire

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.acquires += 1
            return acquire(*args, **kwargs)

        breaker.acquire = counted

    def _run_sync(
        self, handler, until, limit, breaker_settings, settings, *, client
    ) -> StreamStats:
        store = redbreaker.connect(self.store_url)
        breaker = redbreaker.Breaker("dep", store=store, **breaker_settings)
        self._count_acquires(breaker)
        target = self.stream_url if client is None else client()
        consumer = self.consumer = redbreaker.StreamConsumer(
            breaker, target, handler=handler, **settings
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                consumer.run()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + limit
        try:
            while not until() and thread.is_alive():
                assert time.monotonic() < deadline, f"not within {limit}s: {consumer.stats}"
                time.sleep(0.005)
        finally:
            consumer.stop()
            thread.join(10)
            consumer.close()
            store.close()
            if client is not None:
                target.close()
        assert not thread.is_alive(), "run() did not return after stop()"
        if errors:
            raise errors[0]
        return consumer.stats

    async def _run_aio(
        self, handler, until, limit, breaker_settings, settings, *, client
    ) -> StreamStats:
        store = redbreaker.aio.connect(self.store_url)
        breaker = redbreaker.aio.Breaker("dep", store=store, **breaker_settings)
        self._count_acquires(breaker)

        async def handle(message: StreamMessage) -> object:
            return handler(message)

        target = self.stream_url if client is None else client()
        consumer = self.consumer = redbreaker.aio.StreamConsumer(
            breaker, target, handler=handle, **settings
        )
        task = asyncio.create_task(consumer.run())
        deadline = time.monotonic() + limit
        try:
            while not until() and not task.done():
                assert time.monotonic() < deadline, f"not within {limit}s: {consumer.stats}"
                await asyncio.sleep(0.005)
        finally:
            consumer.stop()
            stats = await asyncio.wait_for(task, 10)
            await consumer.aclose()
            await store.aclose()
            if client is not None:
                await target.aclose()
        return stats


@pytest.fixture(
    params=[
        pytest.param(
            (k, b), id=f"{k}-{b}", marks=[pytest.mark.redis_server] if b == "redis" else []
        )
        for k in KINDS
        for b in BACKENDS
    ]
)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    kind, backend = request.param
    made = Rig(kind, backend, request)
    yield made
    made.r.close()


def _n(message: StreamMessage) -> str:
    value = message.fields["n"]
    return value.decode() if isinstance(value, bytes) else value


# -- acking, failing, deferring ---------------------------------------------------------------


def test_ack_only_after_success_every_message_under_its_own_permit(rig: Rig) -> None:
    rig.add(25)
    handled: list[str] = []
    stats = rig.run(lambda m: handled.append(_n(m)), lambda: len(handled) == 25, batch_size=10)
    assert sorted(handled, key=int) == [str(i) for i in range(25)]
    assert stats.handled == 25
    assert stats.failed == stats.deferred == stats.dead_lettered == 0
    assert rig.pending() == 0
    assert rig.acquires >= 25  # batches of 10, a permit for each message


def test_failure_leaves_the_message_pending_and_retries_it_first(rig: Rig) -> None:
    ids = rig.add(3)
    runs: list[str] = []
    seen_pending: list[int] = []

    def handler(message: StreamMessage) -> None:
        runs.append(_n(message))
        if _n(message) == "0" and runs.count("0") <= 2:
            seen_pending.append(rig.pending())
            raise Boom("not yet")

    stats = rig.run(
        handler, lambda: rig.consumer.stats.handled == 3, max_deliveries=5, batch_size=1
    )
    assert runs[:3] == ["0", "0", "0"]  # own pending is retried before anything new
    assert seen_pending
    assert all(p >= 1 for p in seen_pending)
    assert (stats.handled, stats.failed, stats.dead_lettered) == (3, 2, 0)
    assert rig.pending() == 0
    assert rig.r.hlen(f"{STREAM}:{GROUP}:failures") == 0  # the count goes with the ack
    assert ids


def test_a_failed_message_stays_pending_with_its_failures_counted(rig: Rig) -> None:
    [message_id] = rig.add(1)

    def handler(message: StreamMessage) -> None:
        raise Boom("always")

    stats = rig.run(handler, lambda: rig.consumer.stats.failed >= 3, max_deliveries=None)
    assert stats.handled == 0
    assert stats.dead_lettered == 0
    assert rig.pending() == 1
    assert int(rig.r.hget(f"{STREAM}:{GROUP}:failures", message_id)) == stats.failed
    assert rig.r.xlen(f"{STREAM}:dead") == 0


def test_a_rejection_stays_pending_and_is_never_counted_as_a_delivery(rig: Rig) -> None:
    """The handler raising CircuitOpenError (another breaker refused) defers the message
    however often, with max_deliveries=1: it is handled in the end, never dead-lettered."""
    rig.add(1)
    tries: list[int] = []

    def handler(message: StreamMessage) -> None:
        tries.append(rig.pending())
        if len(tries) <= 4:
            raise CircuitOpenError("downstream", "open", 0.01)

    stats = rig.run(
        handler, lambda: rig.consumer.stats.handled == 1, max_deliveries=1,
        breaker={"recovery_timeout": 0.5},
    )
    assert len(tries) == 5
    assert all(p == 1 for p in tries)
    assert (stats.handled, stats.deferred, stats.failed, stats.dead_lettered) == (1, 4, 0, 0)
    assert rig.r.xlen(f"{STREAM}:dead") == 0
    assert rig.pending() == 0


def test_messages_the_breaker_refuses_stay_pending_and_come_back(rig: Rig) -> None:
    """One failure trips the breaker (failure_threshold=1): the rest of the batch is refused
    a permit, stays pending, and is handled once the breaker admits again; with
    max_deliveries=1 only the one that failed is dead-lettered."""
    rig.add(6)
    handled: list[str] = []

    def handler(message: StreamMessage) -> None:
        if _n(message) == "0":
            raise Boom("down")
        handled.append(_n(message))

    stats = rig.run(
        handler, lambda: len(handled) == 5, max_deliveries=1, batch_size=10,
        breaker={"failure_threshold": 1, "recovery_timeout": 0.2},
    )
    assert sorted(handled) == ["1", "2", "3", "4", "5"]
    assert stats.deferred == 5
    assert stats.failed == 1
    assert stats.dead_lettered == 1
    [(_, entry)] = rig.r.xrange(f"{STREAM}:dead")
    assert entry[b"n"] == b"0"
    assert rig.pending() == 0


def test_dead_letter_after_max_failures_exactly_once_then_acked(rig: Rig) -> None:
    ids = rig.add(4)
    poison_runs: list[str] = []
    handled: list[str] = []

    def handler(message: StreamMessage) -> None:
        if _n(message) == "2":
            poison_runs.append(message.id)
            raise Boom("poison")
        handled.append(_n(message))

    stats = rig.run(
        handler, lambda: len(handled) == 3 and rig.r.xlen("orders:poison") == 1,
        max_deliveries=3, dead_letter="orders:poison",
    )
    assert rig.r.xlen(f"{STREAM}:dead") == 0
    entries = rig.r.xrange("orders:poison")
    assert len(entries) == 1
    assert len(poison_runs) == 3
    entry = entries[0][1]
    assert entry[b"redbreaker:id"].decode() == ids[2]
    assert entry[b"redbreaker:failures"] == b"3"
    assert entry[b"redbreaker:error"] == b"test_streams.Boom"
    assert entry[b"redbreaker:error_text"] == b"poison"
    assert entry[b"redbreaker:group"] == GROUP.encode()
    assert entry[b"n"] == b"2"  # the message's own fields
    assert (stats.handled, stats.failed, stats.dead_lettered) == (3, 3, 1)
    assert rig.pending() == 0
    assert rig.r.hlen(f"{STREAM}:{GROUP}:failures") == 0


def test_the_failure_script_dead_letters_once_under_a_race(rig: Rig) -> None:
    """Two consumers failing the same message at its limit: one dead-letters it, the
    other finds it no longer pending and counts nothing."""
    rig.group()
    [message_id] = rig.add(1)
    rig.r.xreadgroup(GROUP, "a", {STREAM: ">"})
    core = StreamCore(StreamConfig(STREAM, GROUP, "a", max_deliveries=1))
    [message] = decode_entries(rig.r.xrange(STREAM), STREAM)
    script = rig.r.register_script(FAIL_SCRIPT)
    first = core.on_fail_reply(script(keys=core.fail_keys(), args=core.fail_args(message, Boom())))
    second = core.on_fail_reply(script(keys=core.fail_keys(), args=core.fail_args(message, Boom())))
    assert first == (1, True)
    assert second == (0, False)
    assert rig.r.xlen(f"{STREAM}:dead") == 1
    assert rig.pending() == 0
    assert message.id == message_id


# -- reclaiming, own pending, stopping --------------------------------------------------------


def test_a_dead_consumers_message_is_reclaimed_after_min_idle(rig: Rig) -> None:
    rig.group()
    rig.add(2)
    rig.r.xreadgroup(GROUP, "dead-consumer", {STREAM: ">"}, count=1)  # read, never acked
    handled: list[str] = []
    stats = rig.run(
        lambda m: handled.append(_n(m)), lambda: len(handled) == 2, min_idle=0.2,
        consumer="alive",
    )
    assert sorted(handled) == ["0", "1"]
    assert stats.reclaimed == 1
    assert rig.pending() == 0


def test_own_pending_messages_come_before_new_ones(rig: Rig) -> None:
    """A consumer restarted under its name handles what it had read first."""
    rig.group()
    rig.add(3)
    rig.r.xreadgroup(GROUP, "worker-1", {STREAM: ">"}, count=1)  # "0", before a restart
    order: list[str] = []
    rig.run(lambda m: order.append(_n(m)), lambda: len(order) == 3, consumer="worker-1")
    assert order == ["0", "1", "2"]


def test_stop_finishes_the_message_in_hand_and_hands_the_batch_back(rig: Rig) -> None:
    rig.add(5)
    handled: list[str] = []

    def handler(message: StreamMessage) -> None:
        rig.consumer.stop()  # as a signal would, mid-message
        time.sleep(0.02)
        handled.append(_n(message))

    stats = rig.run(handler, lambda: False, batch_size=5, min_idle=30, consumer="c1")
    assert handled == ["0"]
    assert stats.handled == 1
    pending = rig.r.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert len(pending) == 4  # read, not handled: handed back to the next sweep
    assert all(p["time_since_delivered"] >= 30_000 for p in pending)
    assert all(p["times_delivered"] == 1 for p in pending)
    # ... which any other consumer takes at once.
    taken = rig.r.xautoclaim(STREAM, GROUP, "c2", 30_000, "0-0", count=10)
    assert len(taken[1]) == 4


def test_a_deleted_pending_entry_is_acked_without_a_handler_run(rig: Rig) -> None:
    rig.group()
    ids = rig.add(2)
    rig.r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
    rig.r.xdel(STREAM, ids[0])
    handled: list[str] = []
    rig.run(lambda m: handled.append(_n(m)), lambda: rig.pending() == 0 and handled,
            consumer="c1")
    assert handled == ["1"]


def test_nothing_is_read_while_the_breaker_is_open(rig: Rig) -> None:
    rig.add(3)
    rig.breaker().force_open(duration=0.5)
    started = time.monotonic()
    handled: list[float] = []
    pending_while_open: list[int] = []

    def until() -> bool:
        if time.monotonic() - started < 0.25:  # surely still open (for 0.5 s)
            groups = rig.r.xinfo_groups(STREAM) if rig.r.exists(STREAM) else []
            pending_while_open.append(sum(int(g["pending"]) for g in groups))
        return len(handled) == 3

    stats = rig.run(lambda m: handled.append(time.monotonic() - started), until)
    assert pending_while_open
    assert set(pending_while_open) == {0}
    assert min(handled) >= 0.35
    assert stats.handled == 3
    assert stats.deferred == 0


def test_stop_cuts_a_deferral_pause_short(rig: Rig) -> None:
    rig.add(3)
    handled: list[str] = []
    refused = threading.Event()

    def handler(message: StreamMessage) -> None:
        if _n(message) == "1" and not refused.is_set():
            refused.set()
            raise CircuitOpenError("downstream", "open", None)  # no deadline: 5 s + jitter
        handled.append(_n(message))

    started = time.monotonic()
    stats = rig.run(handler, lambda: refused.is_set() and len(handled) == 1, limit=5)
    assert time.monotonic() - started < 4.5  # stop() ended the 5 s pause
    assert handled == ["0"]
    assert stats.deferred == 2


# -- the stream's own Redis --------------------------------------------------------------------


@pytest.mark.parametrize(
    "rig", [pytest.param(("sync", "redis"), id="sync"), pytest.param(("aio", "redis"), id="aio")],
    indirect=True,
)
def test_resp3_and_decoding_clients_read_the_same(rig: Rig) -> None:
    rig.add(3)
    handled: list[Any] = []
    api: Any = redis if rig.kind == "sync" else redis.asyncio
    rig.run(
        lambda m: handled.append(m.fields["n"]), lambda: len(handled) == 3,
        client=lambda: api.Redis.from_url(rig.stream_url, protocol=3, decode_responses=True),
    )
    assert handled == ["0", "1", "2"]  # str values from a decoding client
    assert rig.pending() == 0


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("kind", KINDS)
def test_the_streams_redis_going_away_and_back_is_waited_out(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's server dies and comes back empty: the consumer logs the outage once,
    waits it out, recreates its group and handles what is added afterwards."""
    with RedisServer() as server:
        rig = Rig(kind, "redis", request, url=server.url)
        rig.add(2)
        handled: list[str] = []
        phase = {"at": 0, "killed": 0.0}

        def until() -> bool:
            # Killed once both are acked (an ack the kill beat would leave 3 counted).
            if phase["at"] == 0 and rig.consumer.stats.handled == 2:
                server.kill()
                phase.update(at=1, killed=time.monotonic())
            elif phase["at"] == 1 and time.monotonic() - phase["killed"] > 0.5:
                server.start()  # same port, no data: the group is gone too
                rig.add(2)
                phase["at"] = 2
            return len(handled) == 4

        with caplog.at_level(logging.WARNING, logger="redbreaker"):
            stats = rig.run(lambda m: handled.append(_n(m)), until, limit=20)
        rig.r.close()
    assert handled == ["0", "1", "0", "1"]
    assert stats.handled == 4
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("stream_unavailable") == 1
    assert events.count("stream_recovered") == 1


def test_the_breakers_own_server_as_the_stream_is_reported(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = redbreaker.connect(redis_url)
    breaker = redbreaker.Breaker("dep", store=store)
    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        redbreaker.StreamConsumer(breaker, redis_url, handler=print, stream="s", group="g")
        client = redis.Redis.from_url(redis_url)
        redbreaker.StreamConsumer(breaker, client, handler=print, stream="s", group="g")
    shared = [r for r in caplog.records if getattr(r, "event", "") == "shared_broker"]
    assert len(shared) == 2
    assert "stream 's'" in shared[0].getMessage()
    client.close()
    store.close()


# -- settings -----------------------------------------------------------------------------------


def _noop(message: StreamMessage) -> None: ...


async def _anoop(message: StreamMessage) -> None: ...


BAD = [
    ({"stream": ""}, "stream"),
    ({"stream": 5}, "stream"),
    ({"group": ""}, "group"),
    ({"consumer": ""}, "consumer"),
    ({"dead_letter": "s"}, "dead_letter"),
    ({"max_deliveries": 0}, "max_deliveries"),
    ({"max_deliveries": 2.5}, "max_deliveries"),
    ({"min_idle": 0}, "min_idle"),
    ({"min_idle": -1}, "min_idle"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 100_000}, "batch_size"),
    ({"max_block": 0}, "max_block"),
    ({"max_block": "1"}, "max_block"),
    ({"min_idl": 3}, "min_idl"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("settings", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_settings_are_refused_at_construction(
    kind: str, settings: dict[str, Any], field: str
) -> None:
    api: Any = redbreaker if kind == "sync" else redbreaker.aio
    breaker = api.Breaker("dep", store=api.connect("memory://"))
    handler = _noop if kind == "sync" else _anoop
    given = {"stream": "s", "group": "g", "handler": handler, **settings}
    with pytest.raises(ConfigError) as caught:
        api.StreamConsumer(breaker, "memory://x", **given)
    assert caught.value.field == field


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_breakers_handlers_and_clients_are_refused(kind: str) -> None:
    api: Any = redbreaker if kind == "sync" else redbreaker.aio
    other: Any = redbreaker.aio if kind == "sync" else redbreaker
    breaker = api.Breaker("dep", store=api.connect("memory://"))
    good = _noop if kind == "sync" else _anoop
    wrong = _anoop if kind == "sync" else _noop
    cases: list[tuple[dict[str, Any], str]] = [
        ({"breaker": other.Breaker("dep", store=other.connect("memory://"))}, "breaker"),
        ({"handler": wrong}, "handler"),
        ({"handler": "not callable"}, "handler"),
        ({"client": "amqp://localhost"}, "client"),
        ({"client": "redis+sentinel://h:26379/svc"}, "client"),
        ({"client": "nonsense"}, "client"),
        ({"client": 42}, "client"),
        (
            {
                "client": (
                    redis.asyncio.Redis(socket_timeout=5) if kind == "sync" else redis.Redis()
                )
            },
            "client",
        ),
        (
            {
                "client": (
                    redis.Redis(socket_timeout=0.5)
                    if kind == "sync"
                    else redis.asyncio.Redis(socket_timeout=0.5)
                )
            },
            "max_block",
        ),
    ]
    for override, field in cases:
        given: dict[str, Any] = {
            "breaker": breaker, "client": "memory://x", "handler": good, "stream": "s",
            "group": "g", **override,
        }
        with pytest.raises(ConfigError) as caught:
            api.StreamConsumer(given.pop("breaker"), given.pop("client"), **given)
        assert caught.value.field == field, override


def test_settings_are_frozen_and_defaulted() -> None:
    breaker = redbreaker.Breaker("dep", store=redbreaker.connect("memory://"))
    consumer = redbreaker.StreamConsumer(
        breaker, "memory://x", handler=_noop, stream="s", group="g"
    )
    config = consumer.config
    assert config.dead_letter == "s:dead"
    assert config.max_deliveries == 5
    assert config.batch_size == 10
    assert config.consumer.count("-") >= 2  # <host>-<pid>-<random>
    with pytest.raises(AttributeError):
        config.stream = "t"  # type: ignore[misc]
    assert consumer.stats == StreamStats()


# -- the read plan (no Redis) -------------------------------------------------------------------


def test_read_plan_own_pending_then_claim_then_new() -> None:
    core = StreamCore(StreamConfig("s", "g", "c", min_idle=10, batch_size=2, max_block=0.5))
    read = core.next_read(0.0)
    assert read == Read("pending", "0", 2, None)
    m1, m2 = decode_entries([(b"1-0", {b"n": b"1"}), (b"2-0", [b"n", b"2"])], "s")
    assert core.on_read(read, [[b"s", [(b"1-0", {b"n": b"1"}), (b"2-0", {b"n": b"2"})]]], 0.0)
    core.on_success(read, m1)
    core.on_failure(read, m2, FailureVerdict(1, False))
    assert core.next_read(0.0) == Read("pending", "2-0", 2, None)
    core.on_read(core.next_read(0.0), [], 0.0)  # end of the pass, with a failure in it
    assert core.next_read(0.0).start == "0"  # so once more from the start
    core.on_read(core.next_read(0.0), {}, 0.0)  # RESP3's empty reply: pending done
    claim = core.next_read(0.0)
    assert claim == Read("claim", "0-0", 2, None)
    core.on_read(claim, [b"0-0", [], []], 0.0)
    assert core.next_read(1.0) == Read("new", ">", 2, 500)
    assert core.next_read(1.0, block=False) == Read("new", ">", 2, None)  # a probe's read
    assert core.next_read(5.0).kind == "claim"  # the next sweep: min_idle / 2 later
    assert core.stats.handled == 1
    assert core.stats.failed == 1


def test_resp3_entries_and_deleted_entries_decode() -> None:
    [m] = decode_entries([[(b"1-0", {b"a": b"x"})]], "s")
    assert (m.id, m.fields, m.deleted) == ("1-0", {"a": b"x"}, False)
    [gone] = decode_entries([("2-0", {})], "s")
    assert gone.deleted
    assert gone.id == "2-0"


# -- a clean stop on a signal, in a process of its own --------------------------------------------


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_cleanly_after_the_message_in_hand(
    kind: str, sig: signal.Signals, redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(5):
        r.xadd(STREAM, {"n": str(i)})
    params = {
        "kind": kind, "role": "hold", "hold": 0.5, "dep_url": redis_url,
        "store_url": "memory://", "stream_url": redis_url, "stream": STREAM, "group": GROUP,
        "consumer": "c1", "breaker": {}, "settings": {"batch_size": 5, "min_idle": 30},
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(TESTS / "stream_workers.py"), json.dumps(params)],
            stdout=subprocess.PIPE, stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while not r.exists("inside"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        proc.send_signal(sig)  # mid-message: the handler sleeps 0.5 s
        out_text, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    stats = json.loads(out_text)
    assert stats["handled"] == 1
    assert r.smembers("done") == {b"0"}  # the message in hand was finished ...
    pending = r.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [e[0] for e in r.xrange(STREAM)][1:]  # ... acked
    assert all(p["time_since_delivered"] >= 30_000 for p in pending)  # the rest handed back
    r.close()
