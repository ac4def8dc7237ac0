"""redbreaker.contrib.celery against real celery workers and real brokers.

Every worker is a real ``celery -A celery_workers worker`` process (prefork, so the four
pool children share the breaker through Redis), configured through the environment (see
tests/celery_workers.py). The Redis broker is a redis-server of the tests' own; the
RabbitMQ variant runs when 127.0.0.1:5672 answers (guest/guest) and is skipped loudly
otherwise, on a queue of its own that is deleted afterwards.

The proof (issue 11): 2,000 tasks (300 on RabbitMQ) across a 2 s outage of the
dependency: none lost, none failed, max_retries (2) untouched by the many deferrals,
dependency calls during the outage within failure_threshold + pool slots + probes, and
the first success after the dependency returns within recovery_timeout + one probe +
slack. The figures are printed and written to /tmp/redbreaker-proofs/celery.json and
celery-rabbitmq.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
import redbreaker.aio
from dependency import Dependency, write_proof
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TESTS = Path(__file__).resolve().parent
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
CONCURRENCY = 4
PROOF = {"failure_threshold": 5, "recovery_timeout": 0.5, "half_open_max_calls": 1}
OUTAGE = 2.0
# The first success after the dependency returns: the rest of the open period
# (recovery_timeout), the jittered wake-up (<= 50 ms here), one probe; the slack covers a
# prefork worker's hand-offs on a loaded 2-core machine.
RESUME_SLACK = 2.0
SETTLE_TIMEOUT = 60.0


# ------------------------------------------------------------------------------ helpers


class Worker:
    """One ``celery worker`` process of tests/celery_workers.py, in a session of its own
    (so that it and its pool children can be stopped together)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *, pool: str = "prefork") -> None:
        self.log = tmp_path / f"worker-{uuid.uuid4().hex[:8]}.log"
        self.queue = env["RB_CELERY_QUEUE"]
        command = [
            sys.executable, "-m", "celery", "-A", "celery_workers", "worker",
            "-l", "INFO", "-f", str(self.log), "-P", pool, "-c", str(CONCURRENCY),
            "-Q", self.queue, "-n", f"rb-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
        self.output = (tmp_path / "worker.out").open("ab")
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env, "PYTHONPATH": path},
            cwd=TESTS,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, text: str, *, count: int = 1, within: float = 30.0) -> None:
        """Until the worker's log holds ``text`` ``count`` times (a log file, read)."""
        deadline = time.monotonic() + within
        while self.text().count(text) < count:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited ({self.process.returncode}):\n"
                                     f"{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} not in the worker's log after "
                                     f"{within}s:\n{self.text()[-4000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # any pool child left behind
        self.output.close()


@contextlib.contextmanager
def running(tmp_path: Path, env: dict[str, str]) -> Iterator[Worker]:
    worker = Worker(tmp_path, env)
    try:
        worker.wait_for(" ready.")
        yield worker
    finally:
        worker.stop()


def scenario(broker: str, redis_url: str, queue: str, *, pause: bool) -> dict[str, str]:
    return {
        "RB_CELERY_BROKER": broker,
        "RB_CELERY_BACKEND": redis_url,
        "RB_CELERY_STORE": redis_url,
        "RB_CELERY_DEPENDENCY": redis_url,
        "RB_CELERY_QUEUE": queue,
        "RB_CELERY_BREAKER": f"celery-{uuid.uuid4().hex[:8]}",
        "RB_CELERY_PAUSE": "1" if pause else "0",
    }


def sender(broker: str) -> Any:
    from celery import Celery

    return Celery("rb-test-sender", broker=broker, set_as_current=False)


def send(broker: str, queue: str, task: str, ids: list[str]) -> None:
    app = sender(broker)
    with app.producer_or_acquire() as producer:
        for message_id in ids:
            app.send_task(task, args=[message_id], task_id=message_id, queue=queue,
                          producer=producer)
    app.close()


def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.05)


def counts(client: redis.Redis) -> dict[str, int]:
    raw = client.hgetall("celery:counts")
    got = {k.decode(): int(v) for k, v in raw.items()}
    for field in ("deferrals", "retries", "failed", "succeeded", "retries_at_success"):
        got.setdefault(field, 0)
    return got


def deferral_states(client: redis.Redis) -> dict[str, int]:
    """The rejections the task_retry signal saw, by ``<state>:<deadline|no deadline>``."""
    return {k.decode(): int(v) for k, v in client.hgetall("celery:deferral_states").items()}


def states(client: redis.Redis, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` the result backend holds in each state."""
    tally: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        keys = [f"celery-task-meta-{i}" for i in ids[start : start + 500]]
        for raw in client.mget(keys):
            state = "MISSING" if raw is None else json.loads(raw)["status"]
            tally[state] = tally.get(state, 0) + 1
    return tally


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1.0):
            return True
    except OSError:
        return False


def queued(broker: str, queue: str) -> int:
    """Messages waiting in ``queue`` (not fetched by any worker)."""
    if broker.startswith("redis"):
        with redis.Redis.from_url(broker) as client:
            return int(client.llen(queue))
    import kombu

    with kombu.Connection(broker) as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True).message_count)


@pytest.fixture(scope="module")
def broker_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server used only as the broker (the recommended set-up: not the breakers'
    server). ``redis_server`` is asked for only for its skip-or-fail check."""
    with RedisServer() as server:
        yield server


# ------------------------------------------------------------------------------ in-process


def test_a_guarded_task_needs_a_sync_breaker() -> None:
    """Checked when celery builds the task: at once with lazy=False, else when the app is
    finalized (a worker's start-up)."""
    from celery import Celery

    from redbreaker.contrib.celery import GuardedTask, pause_queues

    def nothing() -> None:
        pass

    app = Celery("rb-config", set_as_current=False)
    app.task(base=GuardedTask, shared=False)(nothing)
    with pytest.raises(redbreaker.ConfigError, match=r"needs a redbreaker\.Breaker"):
        app.finalize(auto=True)
    eager = Celery("rb-config-eager", set_as_current=False)
    store = redbreaker.aio.connect("memory://")
    aio_breaker = redbreaker.aio.Breaker("aio", store=store)
    with pytest.raises(redbreaker.ConfigError, match="synchronously"):
        eager.task(base=GuardedTask, breaker=aio_breaker, shared=False, lazy=False)(nothing)
    with pytest.raises(redbreaker.ConfigError, match="at least one queue"):
        pause_queues(eager, {})
    with pytest.raises(redbreaker.ConfigError, match=r"expected a redbreaker\.Breaker"):
        pause_queues(eager, {"q": aio_breaker})


def test_called_directly_or_eagerly_a_rejection_is_raised() -> None:
    from celery import Celery

    from redbreaker.contrib.celery import GuardedTask

    app = Celery("rb-direct", set_as_current=False)
    breaker = redbreaker.Breaker("direct", store=redbreaker.connect("memory://"),
                                 failure_threshold=1)

    @app.task(base=GuardedTask, breaker=breaker, shared=False)
    def double(x: int) -> int:
        if x < 0:
            raise ConnectionError("down")
        return 2 * x

    assert double(2) == 4
    assert double.apply(args=[3]).get() == 6
    with pytest.raises(ConnectionError):
        double(-1)  # one failure trips it (failure_threshold=1)
    assert breaker.state == redbreaker.State.OPEN
    with pytest.raises(redbreaker.CircuitOpenError) as direct:
        double(2)
    assert direct.value.state == "open"
    assert (direct.value.retry_after or 0) > 0
    # Eagerly, celery keeps the exception if it pickles (else a stand-in of another
    # class): the rejection itself comes back, state and deadline included.
    app.conf.task_always_eager = True
    for eager in (double.apply(args=[2]), double.delay(2)):
        assert eager.state == "FAILURE"
        rejection = eager.result
        assert type(rejection) is redbreaker.CircuitOpenError
        assert (rejection.name, rejection.state) == ("direct", "open")
        assert (rejection.retry_after or 0) > 0
        with pytest.raises(redbreaker.CircuitOpenError):
            eager.get()


# ------------------------------------------------------------------------------ real workers


@pytest.mark.slow
@pytest.mark.redis_server
def test_deferrals_never_spend_max_retries(tmp_path: Path, redis_url: str) -> None:
    """A task with max_retries=3 that always fails, deferred (by a breaker forced open
    after each attempt) several times before each retry: it still gets exactly its 4
    attempts (request.retries 0, 1, 2, 3), every deferral carries the retries of the
    attempt it postpones, and the only FAILURE is the real one at the end."""
    client = redis.Redis.from_url(redis_url)
    queue = f"rb-retries-{uuid.uuid4().hex[:8]}"
    env = scenario(redis_url, redis_url, queue, pause=False)
    with running(tmp_path, env):
        send(redis_url, queue, "celery_workers.always_fails", ["r-1"])
        wait_until(lambda: counts(client)["failed"] >= 1, 30, "the task's final failure")
        time.sleep(0.3)  # anything that would come after it
        attempts = [int(x) for x in client.lrange("celery:attempts:r-1", 0, -1)]
        deferred_at = [int(x) for x in client.lrange("celery:deferred_at:r-1", 0, -1)]
        on_retry = [x.decode() for x in client.lrange("celery:on_retry:r-1", 0, -1)]
        got = counts(client)
        seen = deferral_states(client)
        meta = json.loads(client.get("celery-task-meta-r-1") or b"{}")
    print(f"\n[celery retries] attempts={attempts} deferrals={len(deferred_at)} "
          f"deferred_at={deferred_at} counts={got} signal_saw={seen}")
    assert attempts == [0, 1, 2, 3]
    assert got["retries"] == 3
    assert got["failed"] == 1
    assert len(deferred_at) > 3, "deferrals outnumber max_retries"
    # on_retry and the task_retry signal are handed the rejection itself (it pickles by
    # its arguments), so a deferral is told from a real retry by its class.
    assert seen == {"forced_open:deadline": len(deferred_at)}
    rejected = f"CircuitOpenError:forced_open:{env['RB_CELERY_BREAKER']}-retries"
    assert sorted(on_retry) == sorted([rejected] * len(deferred_at) + ["ValueError"] * 3)
    assert deferred_at == sorted(deferred_at)
    assert set(deferred_at) <= {1, 2, 3}, "a deferral kept its attempt's retries"
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ValueError"


@pytest.mark.slow
@pytest.mark.redis_server
def test_a_worker_stops_fetching_while_open(tmp_path: Path, redis_url: str) -> None:
    """The bootstep: forced open, the worker cancels its consumer of the queue and the
    tasks sent meanwhile stay in the broker, untouched; force_close resumes it at once,
    and a forced_open with a deadline ends by itself. The broker here is the breakers'
    own Redis server: the worker warns about it at start-up."""
    client = redis.Redis.from_url(redis_url)
    queue = f"rb-pause-{uuid.uuid4().hex[:8]}"
    env = scenario(redis_url, redis_url, queue, pause=True)
    dependency = Dependency(redis_url)
    breaker = redbreaker.Breaker(env["RB_CELERY_BREAKER"], store=redbreaker.connect(redis_url),
                                 **PROOF)
    with running(tmp_path, env) as worker:
        log = worker.text()
        assert "broker is the Redis server that holds circuit" in log
        assert env["RB_CELERY_BREAKER"] in log

        breaker.force_open()
        worker.wait_for(f"celery queue '{queue}' paused", within=10)
        first = [f"p-{i}" for i in range(20)]
        send(redis_url, queue, "celery_workers.handle", first)
        time.sleep(1.5)
        assert queued(redis_url, queue) == 20, "a paused worker fetched"
        assert dependency.counts()["calls"] == 0
        assert counts(client)["deferrals"] == 0

        breaker.force_close()
        worker.wait_for(f"celery queue '{queue}' resumed", within=10)
        wait_until(lambda: dependency.counts()["handled"] == 20, 20, "the 20 after resuming")

        breaker.force_open(duration=3.0)
        ordered = time.monotonic()
        worker.wait_for(f"celery queue '{queue}' paused", count=2, within=10)
        second = [f"q-{i}" for i in range(20)]
        send(redis_url, queue, "celery_workers.handle", second)
        time.sleep(0.5)
        if time.monotonic() - ordered < 2.5:  # a machine this slow proves nothing here
            assert queued(redis_url, queue) == 20, "a paused worker fetched"
        wait_until(lambda: dependency.counts()["handled"] == 40, 20, "the deadline's resume")
        worker.wait_for(f"celery queue '{queue}' resumed", count=2, within=10)
        # task_success fires after the task body returns, so the last few lag the dependency
        wait_until(lambda: counts(client)["succeeded"] + counts(client)["failed"] >= 40, 10,
                   f"every task ended ({counts(client)})")
        got = counts(client)
    assert got["failed"] == 0
    assert got["succeeded"] == 40
    assert dependency.counts()["calls"] == 40


# ------------------------------------------------------------------------------ the proof


def proof(
    tmp_path: Path,
    *,
    broker: str,
    redis_url: str,
    queue: str,
    messages: int,
    label: str,
    pause: bool = True,
) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    env = scenario(broker, redis_url, queue, pause=pause)
    dependency = Dependency(redis_url)
    breaker = redbreaker.Breaker(env["RB_CELERY_BREAKER"], store=redbreaker.connect(redis_url),
                                 **PROOF)
    ids = [f"m-{i:05d}" for i in range(messages)]
    with running(tmp_path, env) as worker:
        started = time.monotonic()
        send(broker, queue, "celery_workers.handle", ids)
        wait_until(lambda: dependency.counts()["handled"] >= messages // 4, SETTLE_TIMEOUT,
                   "a quarter handled before the outage")
        dependency.take_down()
        time.sleep(OUTAGE)
        dependency.bring_up()
        wait_until(lambda: counts(client)["succeeded"] >= messages, SETTLE_TIMEOUT,
                   f"every task succeeded ({counts(client)}, {dependency.counts()})")
        wall = time.monotonic() - started
        time.sleep(0.3)  # a late duplicate or failure would show now
        log = worker.text()
    assert "broker is the Redis server" not in log, "a broker of its own: no warning"
    got = counts(client)
    dep = dependency.counts()
    snapshot = breaker.snapshot()
    tally = states(client, ids)
    handled = dependency.handled()
    per_task = [int(v) for v in client.hvals("celery:deferred")]
    probes = max(0, snapshot.open_count - 1)  # each re-open followed one failed probe
    bound = PROOF["failure_threshold"] + CONCURRENCY + probes
    resume = dependency.resume_seconds()
    figures = {
        "queue": label,
        "messages": messages,
        "handled": len(handled & set(ids)),
        "duplicates": dep["successes"] - dep["handled"],
        "lost": len(set(ids) - handled),
        "failed": got["failed"] + tally.get("FAILURE", 0),
        "calls_down": dep["calls_down"],
        "bound": bound,
        "probes": probes,
        "resume_seconds": resume,
        "wall_seconds": round(wall, 2),
        "deferrals": got["deferrals"],
        "deferral_states": deferral_states(client),
        "max_deferrals_one_task": max(per_task, default=0),
        "real_retries": got["retries"],
        "retries_at_success": got["retries_at_success"],
        "max_retries": 2,
        "states": tally,
        "pauses": log.count(f"celery queue '{queue}' paused"),
        "paused_by_bootstep": pause,
        "concurrency": CONCURRENCY,
        "pool": "prefork",
    }
    print(f"\n[{label}] " + json.dumps(figures))
    write_proof(label, figures)

    assert figures["lost"] == 0
    assert figures["handled"] == messages
    assert figures["failed"] == 0
    assert tally == {"SUCCESS": messages}
    assert snapshot.open_count >= 1, "the outage tripped the breaker"
    assert figures["calls_down"] <= bound
    # Every retry a successful task carried was a real one: deferrals added none.
    assert figures["retries_at_success"] == figures["real_retries"]
    # Each deferral's task_retry signal saw the CircuitOpenError itself: open with the
    # server's deadline, or half-open with its probe slot taken (until the probe ends).
    assert sum(figures["deferral_states"].values()) == figures["deferrals"]
    assert set(figures["deferral_states"]) <= {"open:deadline", "half_open:deadline"}
    assert resume is not None
    assert resume <= PROOF["recovery_timeout"] + 0.05 + RESUME_SLACK
    if pause:
        assert figures["pauses"] >= 1, "the worker paused its queue"
    else:
        # Deferred tasks go to the back of the backlog, so each is deferred about once
        # here; test_deferrals_never_spend_max_retries defers one task many times.
        assert figures["deferrals"] > 0, "GuardedTask deferred the rejected tasks"
    return figures


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("pause", [True, False], ids=["paused", "deferring"])
def test_proof_redis_broker(
    tmp_path: Path, redis_url: str, broker_server: RedisServer, pause: bool
) -> None:
    """The proof on a Redis broker of its own: with the bootstep (the worker stops
    fetching while open: celery.json), and without it, every fetched task deferred again
    and again by GuardedTask alone (celery-deferring.json)."""
    broker_server.ensure_running()
    broker_server.flushall()
    queue = f"rb-proof-{uuid.uuid4().hex[:8]}"
    proof(tmp_path, broker=broker_server.url, redis_url=redis_url, queue=queue,
          messages=2000, label="celery" if pause else "celery-deferring", pause=pause)


@pytest.mark.slow
@pytest.mark.redis_server
def test_proof_rabbitmq_broker(tmp_path: Path, redis_url: str) -> None:
    if not rabbitmq_answers():
        pytest.skip("!!! RabbitMQ does not answer on 127.0.0.1:5672: the celery RabbitMQ "
                    "proof is SKIPPED (start one: guest/guest) !!!")
    import kombu

    queue = f"rb-proof-{uuid.uuid4().hex[:8]}"
    try:
        proof(tmp_path, broker=RABBITMQ, redis_url=redis_url, queue=queue, messages=300,
              label="celery-rabbitmq")
    finally:
        with kombu.Connection(RABBITMQ) as connection:
            channel = connection.default_channel
            with contextlib.suppress(Exception):
                channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                channel.exchange_delete(queue)
