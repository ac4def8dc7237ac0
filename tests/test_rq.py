"""The rq adapter (redbreaker.contrib.rq), against rq 3.0 and real redis-servers.

The queue lives on a redis-server of its own (``queue_server``); the breaker and the
dependency's counters on the session's (``redis_url``). The small tests run rq's
SimpleWorker in this process (burst mode); the proof runs three real ``rq worker
--with-scheduler`` processes over 500 jobs across a 2 s outage of the dependency and
writes its figures to /tmp/redbreaker-proofs/rq.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from rq import Queue, Retry, SimpleWorker
from rq.job import Job, JobStatus

import redbreaker
import rq_workers
from dependency import Dependency, write_proof
from redbreaker.contrib.rq import DEFERRALS, GuardedSimpleWorker, GuardedWorker, guard
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator

TESTS = Path(__file__).resolve().parent
QUEUE = "guarded"


@pytest.fixture(scope="module")
def queue_server() -> Iterator[RedisServer]:
    """A redis-server for the queue alone: the breaker's store is another one."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def queue_conn(queue_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A connection to the emptied queue server (``redis_url`` starts the session's)."""
    queue_server.ensure_running()
    queue_server.flushall(scripts=True)
    client = queue_server.client()
    yield client
    client.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[redbreaker.Store]:
    made = redbreaker.connect(redis_url)
    yield made
    made.close()


def _breaker(store: redbreaker.Store, name: str = "rq-dependency") -> redbreaker.Breaker:
    return redbreaker.Breaker(
        name, store=store, failure_threshold=5, recovery_timeout=0.5, half_open_max_calls=1
    )


def _worker(conn: redis.Redis, breaker: redbreaker.Breaker, **kwargs: Any) -> GuardedSimpleWorker:
    return GuardedSimpleWorker(
        [Queue(QUEUE, connection=conn)], connection=conn, breaker=breaker, **kwargs
    )


def _wait_until_due(conn: redis.Redis, job_id: str, limit: float = 10.0) -> None:
    """Sleep until rq's scheduler would move ``job_id`` back to its queue."""
    score = conn.zscore(f"rq:scheduled:{QUEUE}", job_id)
    assert score is not None, f"{job_id} is not scheduled"
    now = float(conn.time()[0])
    assert score - now <= limit
    time.sleep(max(0.0, score - now) + 0.1)


# -- construction ------------------------------------------------------------------------


def test_a_worker_needs_a_breaker() -> None:
    conn = redis.Redis(port=1)  # never used: the check comes before rq's set-up
    with pytest.raises(redbreaker.ConfigError, match="breaker"):
        GuardedWorker([Queue(QUEUE, connection=conn)], connection=conn)
    with pytest.raises(redbreaker.ConfigError, match="breaker"):
        GuardedWorker([Queue(QUEUE, connection=conn)], connection=conn, breaker="payments")  # type: ignore[arg-type]
    with pytest.raises(redbreaker.ConfigError, match="breaker"):
        guard("payments")  # type: ignore[arg-type]


# -- admitted jobs ----------------------------------------------------------------------


def test_each_job_settles_its_permit_by_how_it_ended(
    queue_conn: redis.Redis, store: redbreaker.Store
) -> None:
    breaker = _breaker(store)
    queue = Queue(QUEUE, connection=queue_conn)
    ok = queue.enqueue(rq_workers.succeed, "fine", job_id="ok")
    bad = queue.enqueue(rq_workers.fail, "down", job_id="bad")
    later = queue.enqueue(rq_workers.come_back_later, job_id="later")
    _worker(queue_conn, breaker).work(burst=True)

    assert ok.get_status() == JobStatus.FINISHED
    assert bad.get_status() == JobStatus.FAILED  # a real failure is the job's own
    assert later.get_status() == JobStatus.SCHEDULED  # it returned rq.Retry itself
    snapshot = breaker.snapshot()
    # success, then a failure (streak 1), then a release that counts nothing
    assert snapshot.consecutive_failures == 1
    assert snapshot.state == redbreaker.State.CLOSED
    assert snapshot.probes_in_flight == 0


# -- rejected jobs ----------------------------------------------------------------------


def test_a_rejected_job_is_deferred_under_its_own_id_and_never_fails(
    queue_conn: redis.Redis, store: redbreaker.Store, redis_url: str
) -> None:
    breaker = _breaker(store)
    dependency = Dependency(redis_url)
    queue = Queue(QUEUE, connection=queue_conn)
    job = queue.enqueue(rq_workers.handle, "m-1", redis_url, job_id="m-1", retry=Retry(max=3))
    breaker.force_open(duration=1.0)
    # pause_while_open=False: the worker fetches, so the job meets the rejection
    worker = _worker(queue_conn, breaker, pause_while_open=False)
    worker.work(burst=True)

    job = Job.fetch("m-1", connection=queue_conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.meta[DEFERRALS] == 1
    assert job.retries_left == 3  # untouched
    assert job.number_of_retries is None
    assert queue.failed_job_registry.count == 0
    assert queue.started_job_registry.count == 0
    assert queue.scheduled_job_registry.get_job_ids() == ["m-1"]
    assert queue_conn.llen(queue.intermediate_queue_key) == 0
    assert list(job.results()) == []  # no Result: it did not run
    assert dependency.counts()["calls"] == 0
    assert worker.failed_job_count == 0

    # It comes back under the same id once due, through rq's scheduler, and runs.
    _wait_until_due(queue_conn, "m-1")
    _worker(queue_conn, breaker).work(burst=True, with_scheduler=True)
    job = Job.fetch("m-1", connection=queue_conn)
    assert job.get_status() == JobStatus.FINISHED
    assert job.retries_left == 3
    assert dependency.handled() == {"m-1"}


def test_guard_defers_a_job_of_a_plain_rq_worker_under_its_own_id(
    queue_conn: redis.Redis, store: redbreaker.Store, redis_url: str
) -> None:
    breaker = _breaker(store, "rq-guarded-function")
    queue = Queue(QUEUE, connection=queue_conn)
    queue.enqueue(
        rq_workers.guarded_succeed,
        "hello",
        redis_url,
        "rq-guarded-function",
        job_id="g-1",
        retry=Retry(max=2),
    )
    breaker.force_open(duration=1.0)
    # Called directly, outside any rq job, a rejection is raised to the caller.
    with pytest.raises(redbreaker.CircuitOpenError):
        guard(breaker)(rq_workers.succeed)("direct")
    SimpleWorker([queue], connection=queue_conn).work(burst=True)

    job = Job.fetch("g-1", connection=queue_conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.meta[DEFERRALS] == 1
    assert job.retries_left == 2  # the budget for real failures is untouched
    assert queue.failed_job_registry.count == 0
    assert queue.scheduled_job_registry.get_job_ids() == ["g-1"]

    _wait_until_due(queue_conn, "g-1")
    SimpleWorker([queue], connection=queue_conn).work(burst=True, with_scheduler=True)
    job = Job.fetch("g-1", connection=queue_conn)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == "hello"


def test_guard_under_a_guarded_worker_of_the_same_breaker_takes_no_second_permit(
    queue_conn: redis.Redis, store: redbreaker.Store, redis_url: str
) -> None:
    breaker = _breaker(store, "rq-guarded-function")
    # Half-open with one probe slot: a second permit would be refused.
    breaker.force_open(duration=0.05)
    time.sleep(0.1)
    queue = Queue(QUEUE, connection=queue_conn)
    queue.enqueue(
        rq_workers.guarded_succeed, "probe", redis_url, "rq-guarded-function", job_id="p-1"
    )
    _worker(queue_conn, breaker).work(burst=True)
    assert Job.fetch("p-1", connection=queue_conn).get_status() == JobStatus.FINISHED


# -- pausing ----------------------------------------------------------------------------


def test_a_worker_fetches_nothing_while_its_breaker_is_open(
    queue_conn: redis.Redis, store: redbreaker.Store, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = _breaker(store)
    queue = Queue(QUEUE, connection=queue_conn)
    job = queue.enqueue(rq_workers.succeed, "after", job_id="w-1")
    breaker.force_open()  # no deadline: only the operator's order ends it
    seen: dict[str, Any] = {}

    def operator() -> None:
        time.sleep(1.0)
        seen["queued"] = queue.count
        seen["status"] = Job.fetch("w-1", connection=queue_conn).get_status()
        breaker.force_close()  # pushed on the feed: the paused worker wakes

    caplog.set_level(logging.INFO, logger="redbreaker")
    thread = threading.Thread(target=operator)
    thread.start()
    started = time.monotonic()
    _worker(queue_conn, breaker).work(burst=True, with_scheduler=True)
    thread.join()

    assert seen == {"queued": 1, "status": JobStatus.QUEUED}
    assert job.get_status() == JobStatus.FINISHED
    assert time.monotonic() - started >= 1.0
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "consumer_paused" in events
    assert "consumer_resumed" in events
    assert "deferred" not in events  # it waited instead of fetching


# -- start-up checks --------------------------------------------------------------------


def test_a_worker_warns_when_its_queue_is_on_the_breakers_redis(
    redis_url: str,
    redis_server: RedisServer,
    store: redbreaker.Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = redis_server.client()
    try:
        caplog.set_level(logging.WARNING, logger="redbreaker")
        _worker(conn, _breaker(store)).work(burst=True, with_scheduler=True)
    finally:
        conn.close()
    shared = [r for r in caplog.records if getattr(r, "event", None) == "shared_broker"]
    assert len(shared) == 1
    assert "on_store_error='local'" in shared[0].getMessage()
    assert shared[0].queue == "rq"  # type: ignore[attr-defined]


def test_no_warning_for_a_queue_of_its_own_but_one_without_a_scheduler(
    queue_conn: redis.Redis, store: redbreaker.Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redbreaker")
    _worker(queue_conn, _breaker(store)).work(burst=True, with_scheduler=True)
    assert [getattr(r, "event", None) for r in caplog.records] == []
    _worker(queue_conn, _breaker(store)).work(burst=True)
    assert [getattr(r, "event", None) for r in caplog.records] == ["rq_no_scheduler"]


# -- the proof --------------------------------------------------------------------------

MESSAGES = 500
WORKERS = 3  # rq workers, each running one job at a time (a forked work horse)
OUTAGE = 2.0
DOWN_AFTER = 150  # jobs handled before the dependency goes down: the outage is mid-run
MAX_RETRIES = 10  # rq's budget for real failures; deferrals must not touch it
PROOF_BREAKER = "rq-proof-dependency"
# Resume: the breaker's deadline (recovery_timeout, jittered by up to 50 ms), then the first
# job a woken worker forks a horse for. Slack: a fork, a Python horse's first round trips,
# and 2 shared vCPUs with other suites running alongside.
PROBE_SECONDS = 0.25
RESUME_SLACK = 2.0
RUN_LIMIT = 45.0


class RqWorkers:
    """``rq worker --with-scheduler`` processes on ``queue_url``, their output in files."""

    def __init__(self, queue_url: str, store_url: str, logs: Path) -> None:
        rq_cli = Path(sys.executable).with_name("rq")
        assert rq_cli.exists(), f"rq's command line is not installed beside {sys.executable}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "RB_STORE_URL": store_url,
            "RB_DEPENDENCY_URL": store_url,
            "RB_BREAKER": PROOF_BREAKER,
            "RB_LOG": "1",
        }
        self.logs = [logs / f"rq-worker-{i}.log" for i in range(WORKERS)]
        self.procs = []
        for i, log in enumerate(self.logs):
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [
                            str(rq_cli),
                            "worker",
                            "--with-scheduler",
                            "--quiet",
                            "-w",
                            "rq_workers.ProofWorker",
                            "--url",
                            queue_url,
                            "--path",
                            str(TESTS),
                            "--name",
                            f"proof-{i}",
                            QUEUE,
                        ],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def stop(self, limit: float = 15.0) -> list[int | None]:
        """SIGTERM (rq's warm shutdown) each; the exit codes (None: still running)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + limit
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
        return [proc.poll() for proc in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self.logs)

    def count(self, event: str) -> int:
        return sum(log.read_text(errors="replace").count(f" {event} ") for log in self.logs)


@pytest.mark.slow
@pytest.mark.redis_server
def test_proof_500_jobs_across_an_outage_none_lost_none_failed(
    queue_conn: redis.Redis, queue_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    dependency = Dependency(redis_url)
    store = redbreaker.connect(redis_url)
    breaker = _breaker(store, PROOF_BREAKER)
    queue = Queue(QUEUE, connection=queue_conn)
    ids = [f"job-{i:04d}" for i in range(MESSAGES)]
    queue.enqueue_many(
        [
            Queue.prepare_data(
                "rq_workers.handle",
                args=(mid,),
                job_id=mid,
                retry=Retry(max=MAX_RETRIES, interval=1),
            )
            for mid in ids
        ]
    )
    workers = RqWorkers(queue_server.url, redis_url, tmp_path)
    started = time.monotonic()
    try:
        down_at = up_at = None
        while True:
            now = time.monotonic()
            assert now - started < RUN_LIMIT, (dependency.counts(), workers.output()[-4000:])
            counts = dependency.counts()
            if down_at is None and counts["handled"] >= DOWN_AFTER:
                dependency.take_down()
                down_at = now
            elif down_at is not None and up_at is None and now - down_at >= OUTAGE:
                dependency.bring_up()
                up_at = now
            if up_at is not None and counts["handled"] == MESSAGES:
                registries = (
                    queue.count,
                    queue.scheduled_job_registry.count,
                    queue.started_job_registry.count,
                )
                if registries == (0, 0, 0):
                    break
            time.sleep(0.02)
        wall = time.monotonic() - started
        counts = dependency.counts()
        snapshot = breaker.snapshot()

        # A worker pauses on an open breaker and still stops on SIGTERM: open it for good,
        # give one worker a job to meet the rejection (it defers it and pauses), stop all.
        pauses = workers.count("consumer_paused")
        breaker.force_open()
        queue.enqueue(rq_workers.succeed, "sentinel", job_id="sentinel")
        deadline = time.monotonic() + 10
        while workers.count("consumer_paused") == pauses and time.monotonic() < deadline:
            time.sleep(0.05)
        paused_at_stop = workers.count("consumer_paused") - pauses
        exits = workers.stop()
    finally:
        workers.kill()
        store.close()

    jobs = Job.fetch_many(ids, connection=queue_conn)
    statuses = [job.get_status(refresh=False) if job else None for job in jobs]
    deferrals = sum(int(job.meta.get(DEFERRALS, 0)) for job in jobs if job)
    retries_spent = sum(MAX_RETRIES - (job.retries_left or 0) for job in jobs if job)
    failed = queue.failed_job_registry.count
    probes = snapshot.open_count - 1  # every re-open followed one failed probe
    bound = rq_workers.FAILURE_THRESHOLD + WORKERS + probes
    resume = dependency.resume_seconds()
    resume_bound = rq_workers.RECOVERY_TIMEOUT + 0.05 + PROBE_SECONDS + RESUME_SLACK
    figures = {
        "queue": "rq",
        "messages": MESSAGES,
        "handled": counts["handled"],
        "duplicates": counts["successes"] - counts["handled"],
        "lost": MESSAGES - counts["handled"],
        "failed": failed,
        "calls_down": counts["calls_down"],
        "bound": bound,
        "slots": WORKERS,
        "probes": probes,
        "opens": snapshot.open_count,
        "retries_spent": retries_spent,
        "retries_spent_by_deferrals": retries_spent - counts["calls_down"],
        "deferrals": deferrals,
        "pauses": pauses,
        "resume_seconds": resume,
        "resume_bound": round(resume_bound, 2),
        "final_state": snapshot.state.value,
        "wall_seconds": round(wall, 2),
        "workers": WORKERS,
        "worker_exits": exits,
    }
    print(f"\n[rq proof] {json.dumps(figures)}")
    write_proof("rq", figures)

    assert counts["handled"] == MESSAGES, figures
    assert failed == 0, figures
    assert statuses == [JobStatus.FINISHED] * MESSAGES, figures
    assert snapshot.state == redbreaker.State.CLOSED, figures
    assert snapshot.open_count >= 1, figures
    assert counts["calls_down"] <= bound, figures
    # Every real failure spent exactly one of rq's retries; deferrals spent none.
    assert retries_spent == counts["calls_down"], figures
    assert resume is not None, figures
    assert resume <= resume_bound, figures
    assert paused_at_stop >= 1, workers.output()[-4000:]  # the one that met the sentinel
    assert exits == [0] * WORKERS, (figures, workers.output()[-4000:])
