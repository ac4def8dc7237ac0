"""The arq adapter (redbreaker.contrib.arq), against arq 0.25 and real redis-servers.

The small tests run a real arq ``Worker`` in the test's event loop (burst mode); the proof
runs two real ``arq`` worker processes over 500 jobs across a 2 s outage of the
dependency, and writes its figures to /tmp/redbreaker-proofs/arq.json.

arq 0.25's ``Worker.close()`` calls redis-py's deprecated ``close()``, which this suite's
warnings-as-errors would fail on: the in-loop workers close their connection themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix
from arq.jobs import Job, JobResult
from arq.worker import Retry, Worker, func

import redbreaker
import redbreaker.aio
from dependency import Dependency, wait_for_proof, write_proof
from redbreaker.contrib.arq import check_arq_broker, defer, guarded_job
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

TESTS = Path(__file__).resolve().parent


# -- helpers -----------------------------------------------------------------------------


def _breaker(store: redbreaker.aio.Store, name: str, **settings: Any) -> redbreaker.aio.Breaker:
    return redbreaker.aio.Breaker(name, store=store, **settings)


async def _run_worker(url: str, functions: list[Any], **settings: Any) -> Worker:
    """Run a real arq worker in burst mode until its queue is empty (30 s at most); each
    function (or ``(function, max_tries)``) is enqueued by its ``__name__``."""
    worker = Worker(
        [
            func(f[0], name=f[0].__name__, max_tries=f[1])
            if isinstance(f, tuple)
            else func(f, name=f.__name__)
            for f in functions
        ],
        redis_settings=RedisSettings.from_dsn(url),
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        **settings,
    )
    try:
        await asyncio.wait_for(worker.main(), 30)
    finally:
        if worker._pool is not None:
            await worker.pool.aclose()
    return worker


async def _results(url: str) -> dict[str, JobResult]:
    """Every job's stored result, by job id. One at a time: arq's all_job_results()
    gathers one GET per job at once, past redis-py 8's pool limit for 500 jobs."""
    pool = await create_pool(RedisSettings.from_dsn(url))
    results = {}
    try:
        async for key in pool.scan_iter(match=result_key_prefix + "*", count=1000):
            job_id = key.decode()[len(result_key_prefix) :]
            result = await Job(job_id, pool).result_info()
            assert result is not None
            results[job_id] = result
    finally:
        await pool.aclose()
    return results


async def _enqueue(url: str, function: str, *ids: str, **options: Any) -> None:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        for job_id in ids:
            assert await pool.enqueue_job(function, job_id, _job_id=job_id, **options)
    finally:
        await pool.aclose()


# -- construction ------------------------------------------------------------------------


def test_bad_input_is_refused_at_construction() -> None:
    sync_breaker = redbreaker.Breaker("sync", store=redbreaker.connect("memory://"))
    with pytest.raises(redbreaker.ConfigError, match=r"redbreaker\.aio\.Breaker"):
        guarded_job(sync_breaker)  # type: ignore[arg-type]

    async def build() -> None:
        store = redbreaker.aio.connect("memory://")
        breaker = _breaker(store, "cfg")
        with pytest.raises(redbreaker.ConfigError, match="max_wait"):
            guarded_job(breaker, max_wait=None)  # type: ignore[arg-type]
        with pytest.raises(redbreaker.ConfigError, match="max_wait"):
            guarded_job(breaker, max_wait=-1)

        def not_async(ctx: dict[str, Any]) -> None: ...

        with pytest.raises(redbreaker.ConfigError, match="coroutine"):
            guarded_job(breaker)(not_async)  # type: ignore[arg-type]
        await store.aclose()

    asyncio.run(build())


def test_a_missing_arq_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['arq'] = None\n"
        "try:\n"
        "    import redbreaker.contrib.arq\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install redbreaker[arq]" in out


def test_defer_outside_a_worker_only_builds_the_retry() -> None:
    retry = asyncio.run(defer({}, 1.5))
    assert isinstance(retry, Retry)
    assert retry.defer_score == 1500


def test_a_try_that_cannot_be_given_back_still_defers(caplog: pytest.LogCaptureFixture) -> None:
    class Down:
        def register_script(self, source: str) -> Callable[..., Awaitable[Any]]:
            raise ConnectionError("broker unreachable")

    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        retry = asyncio.run(defer({"job_id": "j1", "job_try": 2, "redis": Down()}, 0.2))
    assert retry.defer_score == 200  # the job is deferred all the same: never lost
    [record] = caplog.records
    assert record.event == "defer_try_spent"  # type: ignore[attr-defined]


# -- with a real worker -----------------------------------------------------------------


@pytest.mark.redis_server
def test_a_job_returning_is_a_success_and_one_raising_a_failure(redis_url: str) -> None:
    async def main() -> None:
        store = redbreaker.aio.connect(redis_url)
        breaker = _breaker(store, "arq-outcomes", failure_threshold=3)

        @guarded_job(breaker)
        async def work(ctx: dict[str, Any], job_id: str) -> str:
            if job_id == "bad":
                raise ValueError("bad input")
            return job_id.upper()

        await _enqueue(redis_url, "work", "good")
        await _run_worker(redis_url, [work])
        assert (await breaker.snapshot()).consecutive_failures == 0
        await _enqueue(redis_url, "work", "bad")
        worker = await _run_worker(redis_url, [work])
        snapshot = await breaker.snapshot()
        results = await _results(redis_url)
        await store.aclose()

        assert results["good"].success
        assert results["good"].result == "GOOD"
        # A failure is arq's as ever (the job fails) and the breaker's (counted once).
        assert not results["bad"].success
        assert isinstance(results["bad"].result, ValueError)
        assert worker.jobs_failed == 1
        assert snapshot.consecutive_failures == 1

    asyncio.run(main())


@pytest.mark.redis_server
def test_deferrals_spend_no_tries_a_max_tries_3_job_gets_3_real_tries(redis_url: str) -> None:
    """The job is rejected over and over (a probe held by the test, then the breaker
    re-opened by its own failures) and still runs exactly three times, as tries 1, 2
    and 3, and succeeds on the third."""

    async def main() -> None:
        store = redbreaker.aio.connect(redis_url)
        breaker = _breaker(
            store, "arq-tries", failure_threshold=1, recovery_timeout=0.2, half_open_max_calls=1
        )
        tries: list[int] = []

        @guarded_job(breaker)
        async def flaky(ctx: dict[str, Any], job_id: str) -> int:
            tries.append(ctx["job_try"])
            if ctx["job_try"] < 3:
                raise Retry(defer=0.01)  # a real failed try: arq and the breaker count it
            return int(ctx["job_try"])

        # Open, then half-open with the only probe slot held here: every run is rejected.
        permit = await breaker.acquire()
        await permit.failure(ConnectionError("down"))
        await asyncio.sleep(0.25)
        probe = await breaker.acquire()
        runs = 0

        async def count_run(ctx: dict[str, Any]) -> None:
            nonlocal runs
            runs += 1

        await _enqueue(redis_url, "flaky", "job")
        worker_task = asyncio.ensure_future(
            _run_worker(redis_url, [(flaky, 3)], after_job_end=count_run)
        )
        deadline = time.monotonic() + 20
        while runs < 5:
            assert not worker_task.done(), f"the job ended after {runs} deferrals: {tries}"
            assert time.monotonic() < deadline, f"the job was deferred {runs} times, not 5"
            await asyncio.sleep(0.02)
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        tries_counted = await pool.get("arq:retry:job")
        await pool.aclose()
        assert tries == []  # rejected every time: the job has not run
        assert tries_counted == b"0"  # and every try arq counted was given back
        await probe.success()
        worker = await worker_task
        results = await _results(redis_url)
        await store.aclose()

        assert tries == [1, 2, 3]
        assert results["job"].success
        assert results["job"].result == 3
        assert results["job"].job_try == 3
        deferrals = runs - len(tries)
        assert worker.jobs_retried == deferrals + 2  # arq counts the two real retries too
        print(f"\n[arq] max_tries=3: tries {tries}, {deferrals} deferrals in {runs} runs")
        assert deferrals >= 5  # while the probe was held (and one per re-open, mostly)

    asyncio.run(main())


@pytest.mark.redis_server
def test_a_job_may_wait_in_its_slot_for_admission_instead_of_being_deferred(
    redis_url: str,
) -> None:
    """With ``max_wait``, a job that finds the breaker open waits (woken at the deadline)
    and runs: no deferral, no try spent."""

    async def main() -> None:
        store = redbreaker.aio.connect(redis_url)
        breaker = _breaker(store, "arq-wait", failure_threshold=1, recovery_timeout=0.3)
        ran: list[int] = []

        @guarded_job(breaker, max_wait=5)
        async def patient(ctx: dict[str, Any], job_id: str) -> None:
            ran.append(ctx["job_try"])

        permit = await breaker.acquire()
        await permit.failure(ConnectionError("down"))
        await _enqueue(redis_url, "patient", "job")
        worker = await _run_worker(redis_url, [patient])
        results = await _results(redis_url)
        await store.aclose()

        assert ran == [1]
        assert results["job"].success
        assert results["job"].job_try == 1
        assert worker.jobs_retried == 0

    asyncio.run(main())


@pytest.mark.redis_server
def test_a_job_stopped_while_it_waits_for_admission_keeps_its_try(redis_url: str) -> None:
    """A worker shutting down cancels the jobs waiting in its slots: arq puts each back
    in the queue, and since it never ran, its try goes back too."""

    async def main() -> None:
        store = redbreaker.aio.connect(redis_url)
        breaker = _breaker(store, "arq-stopped")
        ran: list[int] = []

        @guarded_job(breaker, max_wait=20)
        async def patient(ctx: dict[str, Any], job_id: str) -> None:
            ran.append(ctx["job_try"])

        await breaker.force_open(duration=30)
        await _enqueue(redis_url, "patient", "job")
        worker = Worker(
            [func(patient, name="patient")],
            redis_settings=RedisSettings.from_dsn(redis_url),
            poll_delay=0.01,
            handle_signals=False,
        )
        worker.main_task = main_task = asyncio.ensure_future(worker.main())  # as async_run()
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        deadline = time.monotonic() + 10
        while await pool.get("arq:retry:job") != b"1":  # claimed: waiting in its slot
            assert time.monotonic() < deadline, "the job was never claimed"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        # As arq's graceful shutdown does, fetching stops first: the worker's main task
        # can miss the cancellation handle_sig() sends it (seen now and then in this
        # loop) and would otherwise pick the job up again at once.
        worker.allow_pick_jobs = False
        worker.handle_sig(signal.SIGTERM)
        await asyncio.gather(*worker.tasks.values())
        while not main_task.done():
            main_task.cancel()
            await asyncio.wait([main_task], timeout=0.5)
        await worker.pool.aclose()
        tries_counted = await pool.get("arq:retry:job")
        queued = await pool.zscore("arq:queue", "job")
        in_progress = await pool.exists("arq:in-progress:job")
        await pool.aclose()

        assert ran == []
        assert tries_counted == b"0"  # given back
        assert queued is not None
        assert not in_progress

        await breaker.reset()
        await _run_worker(redis_url, [patient])
        await store.aclose()
        assert ran == [1]  # its first try, still

    asyncio.run(main())


# -- the shared-broker warning ------------------------------------------------------------


@pytest.mark.redis_server
def test_a_broker_on_the_breakers_own_server_is_warned_about_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        store = redbreaker.aio.connect(redis_url)
        breaker = _breaker(store, "arq-shared")
        settings = RedisSettings.from_dsn(redis_url)
        assert check_arq_broker(settings, breaker)
        assert check_arq_broker(redis_url.replace("127.0.0.1", "localhost"), breaker)
        assert not check_arq_broker("redis://127.0.0.1:1/0", breaker)
        assert not check_arq_broker(RedisSettings(host=[("h", 26379)], sentinel=True), breaker)
        await store.aclose()

        embedded = redbreaker.aio.connect("memory://")
        assert not check_arq_broker(settings, _breaker(embedded, "arq-embedded"))
        await embedded.aclose()

    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "shared_broker"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "arq's broker is the Redis server that holds circuit 'arq-shared'" in (
        warnings[0].getMessage()
    )
    assert warnings[0].queue == "arq"  # type: ignore[attr-defined]


@pytest.mark.redis_server
def test_a_worker_hears_of_a_shared_broker_at_its_first_job_only(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        store = redbreaker.aio.connect(redis_url)
        breaker = _breaker(store, "arq-first-job")

        @guarded_job(breaker)
        async def noop(ctx: dict[str, Any], job_id: str) -> None: ...

        await _enqueue(redis_url, "noop", "a", "b", "c")
        worker = await _run_worker(redis_url, [noop])
        assert worker.jobs_complete == 3
        await store.aclose()

    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "shared_broker"]
    assert len(warnings) == 1


# -- the proof: 500 jobs, two arq worker processes, the dependency down 2 s --------------

MESSAGES = 500
WORKERS = 2
MAX_JOBS = 4
DOWN_AFTER = 150  # handled jobs before the dependency goes down
DOWN_SECONDS = 2.0
RESUME_SLACK = 1.5  # seconds, generous: 2 shared vCPUs, other suites running alongside
BREAKER = "arq-proof"
FAILURE_THRESHOLD = 5
RECOVERY_TIMEOUT = 0.5
WORK_SECONDS = 0.02
POLL_DELAY = 0.05  # arq_workers.WorkerSettings.poll_delay
FAILED_TRIES = "arqproof:failed_tries"  # arq_workers' counters
RUNS = "arqproof:runs"


def _start_workers(
    store_url: str, broker_url: str, logs: Path, *, max_wait: float = 0
) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "ARQ_PROOF_STORE_URL": store_url,
        "ARQ_PROOF_BROKER_URL": broker_url,
        "ARQ_PROOF_BREAKER": BREAKER,
        "ARQ_PROOF_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
        "ARQ_PROOF_RECOVERY_TIMEOUT": str(RECOVERY_TIMEOUT),
        "ARQ_PROOF_MAX_JOBS": str(MAX_JOBS),
        "ARQ_PROOF_WORK_SECONDS": str(WORK_SECONDS),
        "ARQ_PROOF_MAX_WAIT": str(max_wait),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    workers = []
    for n in range(WORKERS):
        with (logs / f"worker{n}.log").open("wb") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "arq", "arq_workers.WorkerSettings"],
                    cwd=TESTS,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return workers


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



def _wait_for(what: str, done: Callable[[], bool], seconds: float, logs: Path) -> None:
    wait_for_proof("arq", what, done, seconds, logs)

@pytest.fixture
def broker_server() -> Iterator[RedisServer]:
    """arq's own redis-server: the breaker lives on another (``redis_url``)."""
    with RedisServer() as server:
        yield server


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("max_wait", [0, 1.0], ids=["defer", "wait"])
def test_proof_500_jobs_across_an_outage_none_lost_none_failed_no_try_spent(
    redis_url: str, broker_server: RedisServer, tmp_path: Path, max_wait: float
) -> None:
    """``defer``: a rejected job goes back to arq's queue at once; ``wait``: it first
    waits up to 1 s in its worker slot (max_wait), so a worker stops fetching while its
    slots wait, and far fewer jobs are deferred."""
    broker_url = broker_server.url
    dependency = Dependency(redis_url)
    ids = [f"m{i:04d}" for i in range(MESSAGES)]
    asyncio.run(_enqueue(broker_url, "handle", *ids))
    broker = broker_server.client()
    started = time.monotonic()
    workers = _start_workers(redis_url, broker_url, tmp_path, max_wait=max_wait)
    try:
        _wait_for(
            "the first jobs", lambda: dependency.counts()["handled"] >= DOWN_AFTER, 30, tmp_path
        )
        dependency.take_down()
        time.sleep(DOWN_SECONDS)
        dependency.bring_up()
        _wait_for(
            "every job finishing",
            lambda: broker.zcard("arq:queue") == 0 and dependency.counts()["handled"] >= MESSAGES,
            40,
            tmp_path,
        )
        wall = time.monotonic() - started
    finally:
        _stop_workers(workers)

    async def read() -> tuple[dict[str, JobResult], redbreaker.Snapshot]:
        results = await _results(broker_url)
        store = redbreaker.aio.connect(redis_url)
        snapshot = await _breaker(store, BREAKER).snapshot()
        await store.aclose()
        return results, snapshot

    results, snapshot = asyncio.run(read())
    with redis.Redis.from_url(redis_url) as counters:
        failed_tries = {k.decode(): int(v) for k, v in counters.hgetall(FAILED_TRIES).items()}
        runs = int(counters.get(RUNS) or 0)
    counts = dependency.counts()
    resume = dependency.resume_seconds()
    dependency.close()
    broker.close()

    failed = [r for r in results.values() if not r.success]
    # A try is spent only by a real failure: each job's last try = 1 + its failures.
    spent_by_deferrals = {
        job_id: r.job_try - 1 - failed_tries.get(job_id, 0)
        for job_id, r in results.items()
        if r.job_try != 1 + failed_tries.get(job_id, 0)
    }
    probes = snapshot.open_count - 1  # every re-open followed one failed probe
    slots = WORKERS * MAX_JOBS
    bound = FAILURE_THRESHOLD + slots + probes
    # A deferred job comes back at the deadline plus a jitter under 50 ms, is picked up
    # at the next poll, then works: one probe's time, plus the slack.
    resume_bound = RECOVERY_TIMEOUT + 0.05 + POLL_DELAY + WORK_SECONDS + RESUME_SLACK
    figures: dict[str, Any] = {
        "queue": "arq" if not max_wait else "arq-wait",
        "max_wait": max_wait,
        "messages": MESSAGES,
        "handled": counts["handled"],
        "duplicates": counts["successes"] - counts["handled"],
        "lost": MESSAGES - counts["handled"],
        "failed": len(failed),
        "results": len(results),
        "calls_down": counts["calls_down"],
        "bound": bound,
        "slots": slots,
        "probes": probes,
        "opens": snapshot.open_count,
        "real_failed_tries": sum(failed_tries.values()),
        "max_job_try": max((r.job_try for r in results.values()), default=0),
        "tries_spent_by_deferrals": sum(spent_by_deferrals.values()),
        "deferrals": runs - counts["calls"],
        "runs": runs,
        "resume_seconds": resume,
        "resume_bound": round(resume_bound, 2),
        "final_state": str(snapshot.state),
        "wall_seconds": round(wall, 2),
        "workers": WORKERS,
        "max_jobs": MAX_JOBS,
    }
    print("\n[arq] " + json.dumps(figures))
    write_proof(str(figures["queue"]), figures)

    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert "holds circuit" not in logs  # arq's broker is a server of its own here
    assert "Traceback" not in logs
    assert counts["handled"] == MESSAGES, "a job was lost"
    assert len(results) == MESSAGES
    assert not failed, failed[:3]
    assert not spent_by_deferrals, list(spent_by_deferrals.items())[:5]
    assert figures["deferrals"] > 0  # the outage was met by deferring, not failing
    assert snapshot.open_count >= 1
    assert counts["calls_down"] <= bound, figures
    assert resume is not None, figures
    assert resume <= resume_bound, figures
