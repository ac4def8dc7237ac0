"""The dramatiq adapter (redbreaker.contrib.dramatiq), against dramatiq 2.2 and real brokers.

The queue lives on a redis-server of its own (``queue_server``), or on RabbitMQ at
127.0.0.1:5672 when it answers (skipped loudly otherwise); the breaker and the dependency's
counters on the session's redis-server (``redis_url``). The small tests run a dramatiq
Worker in this process; the proof runs ``dramatiq dramatiq_workers --processes 2 --threads
2`` over 500 messages (200 on RabbitMQ) across a 2 s outage of the dependency and writes its
figures to /tmp/redbreaker-proofs/dramatiq.json (dramatiq-rabbitmq.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pika
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

import dramatiq_workers
import redbreaker
from dependency import Dependency, write_proof
from redbreaker.contrib.dramatiq import DEFERRALS, BreakerMiddleware
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TESTS = Path(__file__).resolve().parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BROKERS = ["redis", "rabbitmq"]


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1.0):
            return True
    except OSError:
        return False


def _need_rabbitmq() -> None:
    if not _rabbitmq_answers():
        pytest.skip(
            "!!! RabbitMQ does not answer at 127.0.0.1:5672: the dramatiq tests on the AMQP "
            "broker are SKIPPED; start RabbitMQ (guest/guest) to run them !!!"
        )


@pytest.fixture(scope="module")
def queue_server() -> Iterator[RedisServer]:
    """A redis-server for the queue alone: the breaker's store is another one."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def store(redis_url: str) -> Iterator[redbreaker.Store]:
    made = redbreaker.connect(redis_url)
    yield made
    made.close()


def _delete_amqp_queues(*names: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for name in names:
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_delete(queue)
    finally:
        connection.close()


class Queue:
    """One test's broker and queue, emptied and closed after: Redis or RabbitMQ."""

    def __init__(self, kind: str, queue_server: RedisServer) -> None:
        self.kind = kind
        self.name = f"rb-{uuid.uuid4().hex[:10]}"
        if kind == "redis":
            queue_server.ensure_running()
            queue_server.flushall(scripts=True)
            self.url = queue_server.url
            self.broker: dramatiq.Broker = RedisBroker(url=self.url)
        else:
            _need_rabbitmq()
            self.url = AMQP_URL
            self.broker = RabbitmqBroker(url=self.url, confirm_delivery=True)
        self.broker.add_middleware(CurrentMessage())

    def dead_lettered(self) -> int:
        if isinstance(self.broker, RabbitmqBroker):
            return self.broker.get_queue_message_counts(self.name)[2]
        assert isinstance(self.broker, RedisBroker)
        return int(self.broker.client.zcard(f"dramatiq:{self.name}.XQ"))

    def leftover(self) -> int:
        """Messages still in the queue or its delay queue, delivered or not."""
        if isinstance(self.broker, RabbitmqBroker):
            ready, delayed, _ = self.broker.get_queue_message_counts(self.name)
            return ready + delayed
        assert isinstance(self.broker, RedisBroker)
        client = self.broker.client
        return int(
            client.hlen(f"dramatiq:{self.name}.msgs") + client.hlen(f"dramatiq:{self.name}.DQ.msgs")
        )

    def close(self) -> None:
        self.broker.close()
        if self.kind == "rabbitmq":
            _delete_amqp_queues(self.name)


@pytest.fixture(params=BROKERS)
def queue(
    request: pytest.FixtureRequest, queue_server: RedisServer, redis_url: str
) -> Iterator[Queue]:
    made = Queue(request.param, queue_server)
    yield made
    made.close()


@pytest.fixture
def redis_queue(queue_server: RedisServer, redis_url: str) -> Iterator[Queue]:
    made = Queue("redis", queue_server)
    yield made
    made.close()


def _breaker(store: redbreaker.Store, name: str = "dramatiq-dependency") -> redbreaker.Breaker:
    return redbreaker.Breaker(
        name, store=store, failure_threshold=5, recovery_timeout=0.5, half_open_max_calls=1
    )


@contextlib.contextmanager
def _worker(broker: dramatiq.Broker, threads: int = 1) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=10_000)


def _wait_for(condition: Callable[[], object], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _seen_actor(
    queue: Queue, seen: list[dict[str, Any]], **options: Any
) -> dramatiq.Actor[Any, Any]:
    """An actor recording the id and options of each message it runs."""

    def record(value: str) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        seen.append({"value": value, "id": message.message_id, **message.options})

    return dramatiq.actor(record, broker=queue.broker, queue_name=queue.name, **options)


# -- construction ------------------------------------------------------------------------


def test_bad_settings_are_refused_at_construction(
    redis_queue: Queue, store: redbreaker.Store
) -> None:
    with pytest.raises(redbreaker.ConfigError, match="breaker"):
        BreakerMiddleware("payments")  # type: ignore[arg-type]
    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(redbreaker.ConfigError, match="max_wait"):
            BreakerMiddleware(_breaker(store), max_wait=bad)  # type: ignore[arg-type]
    redis_queue.broker.add_middleware(BreakerMiddleware(_breaker(store)))
    with pytest.raises(redbreaker.ConfigError, match="circuit_breaker"):
        dramatiq.actor(
            lambda: None, actor_name="bad", broker=redis_queue.broker, circuit_breaker="payments"
        )


# -- admitted messages ------------------------------------------------------------------


def test_each_message_settles_its_permit_by_how_it_ended(
    redis_queue: Queue, store: redbreaker.Store
) -> None:
    breaker = _breaker(store)
    redis_queue.broker.add_middleware(BreakerMiddleware(breaker))
    seen: list[dict[str, Any]] = []
    ok = _seen_actor(redis_queue, seen)

    def down() -> None:
        raise ConnectionError("down")

    bad = dramatiq.actor(
        down, broker=redis_queue.broker, queue_name=redis_queue.name, max_retries=0
    )
    with _worker(redis_queue.broker):
        ok.send("fine")
        _wait_for(lambda: len(seen) == 1)
        bad.send()
        _wait_for(lambda: redis_queue.dead_lettered() == 1)  # a real failure is its own
    snapshot = breaker.snapshot()
    assert snapshot.consecutive_failures == 1  # a success, then one failure
    assert snapshot.probes_in_flight == 0


# -- rejected messages ------------------------------------------------------------------


def test_a_rejected_message_is_deferred_with_its_id_and_retries_untouched(
    queue: Queue, store: redbreaker.Store, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = _breaker(store)
    queue.broker.add_middleware(BreakerMiddleware(breaker))
    seen: list[dict[str, Any]] = []
    actor = _seen_actor(queue, seen, max_retries=3)
    caplog.set_level(logging.INFO, logger="redbreaker")
    breaker.force_open(duration=1.0)
    with _worker(queue.broker):
        sent = actor.send("later")
        _wait_for(lambda: seen)
    assert len(seen) == 1
    assert seen[0]["id"] == sent.message_id
    assert seen[0].get("retries", 0) == 0  # the Retries middleware never saw it
    assert seen[0][DEFERRALS] >= 1
    deferred = [r for r in caplog.records if getattr(r, "event", None) == "deferred"]
    assert len(deferred) == seen[0][DEFERRALS]
    assert queue.dead_lettered() == 0
    assert queue.leftover() == 0  # the original was acked, the copy ran and was acked


def test_an_unreachable_broker_holds_the_original_until_its_copy_is_stored(
    redis_queue: Queue,
    store: redbreaker.Store,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    breaker = _breaker(store)
    redis_queue.broker.add_middleware(BreakerMiddleware(breaker))
    seen: list[dict[str, Any]] = []
    actor = _seen_actor(redis_queue, seen)
    enqueue = redis_queue.broker.enqueue
    refusals = []

    def flaky(message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        if DEFERRALS in message.options and len(refusals) < 2:
            refusals.append(message.message_id)
            raise redis.ConnectionError("the broker is unreachable")
        return enqueue(message, delay=delay)

    monkeypatch.setattr(redis_queue.broker, "enqueue", flaky)
    caplog.set_level(logging.INFO, logger="redbreaker")
    breaker.force_open(duration=0.5)
    with _worker(redis_queue.broker):
        actor.send("later")
        _wait_for(lambda: seen)
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("defer_failed") == 2
    assert events.count("deferred") == seen[0][DEFERRALS] >= 1
    assert seen[0].get("retries", 0) == 0
    assert redis_queue.leftover() == 0
    assert redis_queue.dead_lettered() == 0


def test_a_broker_refusing_the_copy_fails_the_delivery_not_the_breaker(
    redis_queue: Queue, store: redbreaker.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = _breaker(store)
    redis_queue.broker.add_middleware(BreakerMiddleware(breaker))
    seen: list[dict[str, Any]] = []
    actor = _seen_actor(redis_queue, seen, max_retries=20, min_backoff=100, max_backoff=100)
    enqueue = redis_queue.broker.enqueue

    def refusing(message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        if DEFERRALS in message.options:
            raise ValueError("message too large")
        return enqueue(message, delay=delay)

    monkeypatch.setattr(redis_queue.broker, "enqueue", refusing)
    breaker.force_open(duration=0.3)
    with _worker(redis_queue.broker):
        actor.send("refused")
        _wait_for(lambda: seen)
    # The rejected delivery failed (the actor did not run then); Retries brought it back.
    assert seen[0].get("retries", 0) >= 1
    assert DEFERRALS not in seen[0]
    assert redis_queue.dead_lettered() == 0


def test_max_wait_holds_a_message_until_the_breaker_admits_it(
    redis_queue: Queue, store: redbreaker.Store
) -> None:
    breaker = _breaker(store)
    redis_queue.broker.add_middleware(BreakerMiddleware(breaker, max_wait=10))
    seen: list[dict[str, Any]] = []
    actor = _seen_actor(redis_queue, seen)
    breaker.force_open(duration=0.5)
    with _worker(redis_queue.broker):
        actor.send("held")
        _wait_for(lambda: seen)
    assert DEFERRALS not in seen[0]  # it waited in its worker thread instead


def test_an_actor_may_name_its_own_breaker_or_none(
    redis_queue: Queue, store: redbreaker.Store
) -> None:
    shared = _breaker(store, "dramatiq-shared")
    own = _breaker(store, "dramatiq-own")
    redis_queue.broker.add_middleware(BreakerMiddleware(shared))
    shared.force_open()  # no deadline: messages of the default breaker wait
    seen: list[dict[str, Any]] = []
    free = _seen_actor(redis_queue, seen, actor_name="free", circuit_breaker=False)
    guarded = _seen_actor(redis_queue, seen, actor_name="guarded", circuit_breaker=own)
    with _worker(redis_queue.broker):
        free.send("free")
        guarded.send("guarded")
        _wait_for(lambda: len(seen) == 2)
    assert sorted(m["value"] for m in seen) == ["free", "guarded"]


# -- start-up checks --------------------------------------------------------------------


def test_a_worker_warns_when_its_broker_is_the_breakers_redis(
    redis_url: str, store: redbreaker.Store, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(url=redis_url)
    try:
        broker.add_middleware(BreakerMiddleware(_breaker(store)))
        caplog.set_level(logging.WARNING, logger="redbreaker")
        with _worker(broker):
            pass
    finally:
        broker.close()
    shared = [r for r in caplog.records if getattr(r, "event", None) == "shared_broker"]
    assert len(shared) == 1
    assert shared[0].queue == "dramatiq"  # type: ignore[attr-defined]
    assert "on_store_error='local'" in shared[0].getMessage()


def test_no_warning_for_a_broker_of_its_own(
    queue: Queue, store: redbreaker.Store, caplog: pytest.LogCaptureFixture
) -> None:
    queue.broker.add_middleware(BreakerMiddleware(_breaker(store)))
    caplog.set_level(logging.WARNING, logger="redbreaker")
    with _worker(queue.broker):
        pass
    assert [getattr(r, "event", None) for r in caplog.records] == []


# -- the proof --------------------------------------------------------------------------

PROCESSES = 2
THREADS = 2
SLOTS = PROCESSES * THREADS  # messages one fleet can run at once
MESSAGES = {"redis": 500, "rabbitmq": 200}
OUTAGE = 2.0
DOWN_AFTER = 0.3  # of the messages handled before the dependency goes down: mid-run
PROOF_BREAKER = "dramatiq-proof-dependency"
# Resume: the breaker's deadline (recovery_timeout, jittered by up to 50 ms), then the
# first deferred copy due (defer_delay's jitter is up to 50 ms more) and its work. Slack:
# the delay queue's consumer moves due messages on its own wake-ups (worker_timeout), and
# 2 shared vCPUs with other suites running alongside.
RESUME_SLACK = 2.0
RUN_LIMIT = 45.0


class DramatiqFleet:
    """``dramatiq dramatiq_workers --processes 2 --threads 2``, its output in a file."""

    def __init__(
        self, broker_url: str, queue: str, store_url: str, log: Path, max_wait: float
    ) -> None:
        cli = Path(sys.executable).with_name("dramatiq")
        assert cli.exists(), f"dramatiq's command line is not installed beside {sys.executable}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "RB_BROKER_URL": broker_url,
            "RB_QUEUE": queue,
            "RB_STORE_URL": store_url,
            "RB_DEPENDENCY_URL": store_url,
            "RB_BREAKER": PROOF_BREAKER,
            "RB_MAX_WAIT": str(max_wait),
        }
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(cli), "dramatiq_workers", "--processes", str(PROCESSES),
                    "--threads", str(THREADS), "--path", str(TESTS), "--queues", queue,
                ],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self, limit: float = 20.0) -> int | None:
        """SIGTERM: dramatiq's graceful stop (workers finish, in-memory messages go back)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=limit)
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.output().count(text)


@pytest.mark.slow
@pytest.mark.redis_server
def test_proof_messages_across_an_outage_none_lost_none_dead_lettered(
    queue: Queue, redis_url: str, tmp_path: Path
) -> None:
    _proof(queue, redis_url, tmp_path, max_wait=0.0)


@pytest.mark.slow
@pytest.mark.redis_server
def test_proof_with_max_wait_threads_hold_their_messages_instead(
    redis_queue: Queue, redis_url: str, tmp_path: Path
) -> None:
    figures = _proof(redis_queue, redis_url, tmp_path, max_wait=1.0)
    # Waiting threads stop the fetching; a message is deferred only when its wait ran out.
    assert figures["deferrals_logged"] < figures["messages"], figures


def _proof(queue: Queue, redis_url: str, tmp_path: Path, *, max_wait: float) -> dict[str, Any]:
    messages = MESSAGES[queue.kind]
    dependency = Dependency(redis_url)
    store = redbreaker.connect(redis_url)
    breaker = _breaker(store, PROOF_BREAKER)
    figures_client = redis.Redis.from_url(redis_url)
    # The proof's actor, declared here only to send its messages (the fleet runs it).
    handle = dramatiq.actor(
        lambda message_id: None, actor_name="handle", broker=queue.broker, queue_name=queue.name
    )
    ids = [f"msg-{i:04d}" for i in range(messages)]
    fleet = DramatiqFleet(queue.url, queue.name, redis_url, tmp_path / "dramatiq.log", max_wait)
    started = time.monotonic()
    try:
        for mid in ids:
            handle.send(mid)
        down_at = up_at = None
        while True:
            now = time.monotonic()
            assert now - started < RUN_LIMIT, (dependency.counts(), fleet.output()[-4000:])
            counts = dependency.counts()
            if down_at is None and counts["handled"] >= messages * DOWN_AFTER:
                dependency.take_down()
                down_at = now
            elif down_at is not None and up_at is None and now - down_at >= OUTAGE:
                dependency.bring_up()
                up_at = now
            if up_at is not None and counts["handled"] == messages and queue.leftover() == 0:
                break
            time.sleep(0.02)
        wall = time.monotonic() - started
        exit_code = fleet.stop()
    finally:
        fleet.kill()
    counts = dependency.counts()
    snapshot = breaker.snapshot()
    store.close()
    spent = {
        k.decode(): tuple(int(x) for x in v.split())
        for k, v in figures_client.hgetall(dramatiq_workers.SPENT).items()
    }
    figures_client.close()
    retries_spent = sum(retries for retries, _ in spent.values())
    deferrals_seen = sum(deferrals for _, deferrals in spent.values())
    probes = snapshot.open_count - 1  # every re-open followed one failed probe
    bound = dramatiq_workers.FAILURE_THRESHOLD + SLOTS + probes
    resume = dependency.resume_seconds()
    resume_bound = (
        dramatiq_workers.RECOVERY_TIMEOUT + 0.1 + dramatiq_workers.WORK_SECONDS + RESUME_SLACK
    )
    name = "dramatiq" if queue.kind == "redis" else "dramatiq-rabbitmq"
    figures = {
        "queue": name if not max_wait else f"{name}-max-wait",
        "broker": queue.kind,
        "max_wait": max_wait,
        "messages": messages,
        "handled": counts["handled"],
        "duplicates": counts["successes"] - counts["handled"],
        "lost": messages - counts["handled"],
        "failed": queue.dead_lettered(),
        "dead_lettered": queue.dead_lettered(),
        "leftover": queue.leftover(),
        "calls_down": counts["calls_down"],
        "bound": bound,
        "slots": SLOTS,
        "probes": probes,
        "opens": snapshot.open_count,
        "retries_spent": retries_spent,
        "retries_spent_by_deferrals": retries_spent - counts["calls_down"],
        "deferrals_of_handled_messages": deferrals_seen,
        "deferrals_logged": fleet.count(" deferred for "),
        "resume_seconds": resume,
        "resume_bound": round(resume_bound, 2),
        "final_state": snapshot.state.value,
        "wall_seconds": round(wall, 2),
        "processes": PROCESSES,
        "threads": THREADS,
        "exit_code": exit_code,
    }
    print(f"\n[dramatiq proof] {json.dumps(figures)}")
    write_proof(str(figures["queue"]), figures)

    assert counts["handled"] == messages, figures
    assert figures["dead_lettered"] == 0, figures
    assert figures["leftover"] == 0, figures
    assert snapshot.state == redbreaker.State.CLOSED, figures
    assert snapshot.open_count >= 1, figures
    assert counts["calls_down"] <= bound, figures
    # Every real failure spent one of the Retries middleware's retries; deferrals none.
    # (A message handled twice records the retries of its last run: duplicates excepted.)
    if figures["duplicates"] == 0:
        assert retries_spent == counts["calls_down"], figures
    assert resume is not None, figures
    assert resume <= resume_bound, figures
    assert exit_code == 0, fleet.output()[-4000:]
    return figures
