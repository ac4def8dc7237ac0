"""An idle Streams consumer costs the breakers' Redis nothing, and still reads only while
its breaker admits (``redbreaker.StreamConsumer`` and its asyncio twin).

The breakers live on a redis-server of this module's own, so its INFO commandstats count
the consumer's breaker calls alone (FCALL, EVALSHA); the stream is on the session server.
Each consumer runs in a thread of its own (the asyncio one on a loop of its own there), as
the process it would be, with its own store, so it has its own feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
import redbreaker.aio
from redbreaker import StreamMessage
from redbreaker._streams_base import Admission
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.redis_server

KINDS = ("sync", "aio")
STREAM = "orders"
GROUP = "billing"
MAX_BLOCK = 0.2  # so the old permit-first loop would have sent ~10 FCALLs in 2 s of idling
IDLE = 2.0
BREAKER = {"failure_threshold": 5, "recovery_timeout": 0.5, "half_open_max_calls": 1}
SCRIPT_CALLS = ("fcall", "fcall_ro", "evalsha", "evalsha_ro", "eval", "eval_ro")


@pytest.fixture(scope="module")
def breakers_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _scripts(server: RedisServer) -> int:
    stats = server.commandstats()
    return sum(stats.get(name, 0) for name in SCRIPT_CALLS)


def _reads(r: redis.Redis) -> int:
    raw: Any = r.info("commandstats")
    return int(raw.get("cmdstat_xreadgroup", {}).get("calls", 0))


class Running:
    """One consumer running in a thread, with what its store and breaker know."""

    consumer: Any
    breaker: Any
    handled: list[str]
    error: BaseException | None = None

    def feed_live(self) -> bool:
        return bool(self.breaker.store.feed_live)


@contextlib.contextmanager
def running(kind: str, store_url: str, stream_url: str, prefix: str) -> Iterator[Running]:
    """A consumer of ``kind`` (strict breaker "dep" under ``prefix``) handling ``STREAM``
    in a thread until the block ends."""
    made = Running()
    made.handled = []
    ready = threading.Event()

    def note(message: StreamMessage) -> None:
        made.handled.append(message.id)

    def run_sync() -> None:
        store = redbreaker.connect(store_url, prefix=prefix)
        made.breaker = redbreaker.Breaker("dep", store=store, **BREAKER)
        made.consumer = redbreaker.StreamConsumer(
            made.breaker, stream_url, handler=note, stream=STREAM, group=GROUP,
            max_block=MAX_BLOCK,
        )
        ready.set()
        try:
            made.consumer.run()
        finally:
            made.consumer.close()
            store.close()

    async def run_aio() -> None:
        store = redbreaker.aio.connect(store_url, prefix=prefix)
        made.breaker = redbreaker.aio.Breaker("dep", store=store, **BREAKER)

        async def handle(message: StreamMessage) -> None:
            note(message)

        made.consumer = redbreaker.aio.StreamConsumer(
            made.breaker, stream_url, handler=handle, stream=STREAM, group=GROUP,
            max_block=MAX_BLOCK,
        )
        ready.set()
        try:
            await made.consumer.run()
        finally:
            await made.consumer.aclose()
            await store.aclose()

    def target() -> None:
        try:
            if kind == "sync":
                run_sync()
            else:
                asyncio.run(run_aio())
        except BaseException as exc:
            made.error = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield made
    finally:
        if made.error is None:
            made.consumer.stop()
        thread.join(10)
    assert not thread.is_alive(), "run() did not return after stop()"
    if made.error is not None:
        raise made.error


def _wait(until: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not until():
        assert time.monotonic() < deadline, f"not within {limit}s: {what}"
        time.sleep(0.01)


def _settle(run: Running) -> None:
    """Past the consumer's start-up: its feed is live, and the permit-first step that
    learned the breaker's state (a permit, then a blocking read) has surely ended."""
    _wait(run.feed_live, 10, "the consumer's feed did not go live")
    time.sleep(3 * MAX_BLOCK + 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_an_idle_consumer_sends_the_breakers_redis_nothing(
    kind: str, breakers_server: RedisServer, redis_url: str
) -> None:
    """Closed strict breaker, empty stream: ~2 s of blocking reads and not one breaker
    script call; a message added afterwards is still handled under a permit."""
    prefix = f"idle-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_url)
    with running(kind, breakers_server.url, redis_url, prefix) as run:
        _settle(run)
        scripts, reads = _scripts(breakers_server), _reads(r)
        time.sleep(IDLE)
        idle_scripts = _scripts(breakers_server) - scripts
        idle_reads = _reads(r) - reads
        [message_id] = [r.xadd(STREAM, {"n": "1"}).decode()]
        _wait(lambda: run.handled == [message_id], 10, "the message was not handled")
        handled_scripts = _scripts(breakers_server) - scripts - idle_scripts
        _wait(lambda: int(r.xpending(STREAM, GROUP)["pending"]) == 0, 5, "not acked")
    print(
        f"\n[{kind}] idle {IDLE:g}s: breaker script calls {idle_scripts}, XREADGROUP "
        f"{idle_reads}; one message afterwards: breaker script calls {handled_scripts}"
    )
    r.close()
    assert idle_scripts == 0
    assert idle_reads >= 3  # it was reading all along (~IDLE / MAX_BLOCK blocking reads)
    assert handled_scripts >= 1  # the message's permit (acquire; success)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_breaker_known_open_is_not_read_through_until_it_admits(
    kind: str, breakers_server: RedisServer, redis_url: str
) -> None:
    """The breaker is forced open elsewhere while the consumer idles; the feed tells it.
    A message added then is not delivered (no XREADGROUP at all, pending 0, entries-read
    and last-delivered-id unchanged) until the deadline passes; then it is handled."""
    prefix = f"open-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_url)
    control_store = redbreaker.connect(breakers_server.url, prefix=prefix)
    control = redbreaker.Breaker("dep", store=control_store, **BREAKER)
    open_for = 2.5
    with running(kind, breakers_server.url, redis_url, prefix) as run:
        _settle(run)
        control.force_open(duration=open_for)
        opened = time.monotonic()
        _wait(
            lambda: run.breaker._held_rejection(True) is not None, 2, "the feed did not tell"
        )
        time.sleep(MAX_BLOCK + 0.2)  # a blocking read made before the news has ended
        before = r.xinfo_groups(STREAM)[0]
        reads = _reads(r)
        [message_id] = [r.xadd(STREAM, {"n": "1"}).decode()]
        seen: list[dict[str, Any]] = []
        while time.monotonic() - opened < open_for - 0.5:  # surely still open
            seen.append(r.xinfo_groups(STREAM)[0])
            time.sleep(0.05)
        reads_while_open = _reads(r) - reads
        _wait(lambda: run.handled == [message_id], 10, "not handled once admitted")
        handled_after = time.monotonic() - opened
    control_store.close()
    r.close()
    print(
        f"\n[{kind}] open {open_for:g}s: XREADGROUP while known open {reads_while_open}, "
        f"group checks {len(seen)}; handled {handled_after:.2f}s after the trip"
    )
    assert seen
    assert reads_while_open == 0
    for group in seen:
        assert int(group["pending"]) == 0
        assert group["last-delivered-id"] == before["last-delivered-id"]
        if "entries-read" in group:  # Redis >= 7
            assert group["entries-read"] == before["entries-read"]
            assert group["lag"] == 1
    assert handled_after >= open_for - 0.5


# -- the decision, with no I/O -------------------------------------------------------------


def test_reads_first_only_on_a_live_feed_and_fresh_word_that_it_admits() -> None:
    gate = Admission()
    ask: dict[str, Any] = {"feed_live": True, "held": False, "heard": 1, "last_event": None}
    assert not gate.reads_first(**ask)  # nothing learned since the feed subscribed
    gate.admitted(1)
    assert gate.reads_first(**ask)
    assert not gate.reads_first(**{**ask, "feed_live": False})
    assert not gate.reads_first(**{**ask, "held": True})
    # News since the ask: the transition heard decides.
    assert not gate.reads_first(**{**ask, "heard": 2})  # a new epoch, nothing heard
    for state, reads in [
        ("open", False), ("forced_open", False), ("closed", True), ("half_open", True),
        ("forced_closed", True), ("metrics_only", True),
    ]:
        assert gate.reads_first(**{**ask, "heard": 2, "last_event": (2, state, 0)}) is reads
    assert not gate.reads_first(**{**ask, "heard": 3, "last_event": (2, "closed", 0)})
    # A refusal after the latest news outweighs it (a half-open breaker's slots taken).
    gate.refused(2)
    assert not gate.reads_first(**{**ask, "heard": 2, "last_event": (2, "half_open", 0)})
    assert gate.reads_first(**{**ask, "heard": 3, "last_event": (3, "closed", 0)})
