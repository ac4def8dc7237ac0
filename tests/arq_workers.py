"""arq worker settings for the arq proof in ``test_arq.py``: run as real worker processes,
``python -m arq arq_workers.WorkerSettings`` from the ``tests/`` directory.

Read from the environment (set by the test, which holds the proof's parameters):
    ARQ_PROOF_STORE_URL    the redis-server holding the breaker and the Dependency's counts
    ARQ_PROOF_BROKER_URL   arq's own redis-server (a different one: see check_arq_broker)
    ARQ_PROOF_BREAKER      the breaker's name
    ARQ_PROOF_FAILURE_THRESHOLD, ARQ_PROOF_RECOVERY_TIMEOUT   the breaker's settings
    ARQ_PROOF_MAX_JOBS     arq's max_jobs per worker
    ARQ_PROOF_WORK_SECONDS each job's own work before it calls the dependency
    ARQ_PROOF_MAX_WAIT     guarded_job's max_wait (0: defer a rejected job at once)

Every job calls the proof's :class:`Dependency` with its id. While the dependency is down
the job raises ``Retry``: a real failed attempt, counted by the breaker and by arq, and
noted per job in ``arqproof:failed_tries`` so the test can tell real tries from
deferrals. ``arqproof:runs`` counts every run arq made, deferrals included.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import redis
from arq.connections import RedisSettings
from arq.worker import Retry, func

import redbreaker.aio
from dependency import Dependency, DependencyDown
from redbreaker.contrib.arq import check_arq_broker, guarded_job

STORE_URL = os.environ["ARQ_PROOF_STORE_URL"]
BROKER_URL = os.environ["ARQ_PROOF_BROKER_URL"]
MAX_JOBS = int(os.environ["ARQ_PROOF_MAX_JOBS"])
MAX_WAIT = float(os.environ["ARQ_PROOF_MAX_WAIT"])
WORK_SECONDS = float(os.environ["ARQ_PROOF_WORK_SECONDS"])
MAX_TRIES = 20  # room for bad luck: a job spends a try only when the dependency fails it
FAILED_TRIES = "arqproof:failed_tries"
RUNS = "arqproof:runs"

store = redbreaker.aio.connect(STORE_URL)
breaker = redbreaker.aio.Breaker(
    os.environ["ARQ_PROOF_BREAKER"],
    store=store,
    failure_threshold=int(os.environ["ARQ_PROOF_FAILURE_THRESHOLD"]),
    recovery_timeout=float(os.environ["ARQ_PROOF_RECOVERY_TIMEOUT"]),
    half_open_max_calls=1,
)
dependency = Dependency(STORE_URL)
counters = redis.Redis.from_url(STORE_URL)


@guarded_job(breaker, max_wait=MAX_WAIT)
async def handle(ctx: dict[str, Any], message_id: str) -> str:
    await asyncio.sleep(WORK_SECONDS)
    try:
        dependency.call(message_id)
    except DependencyDown as exc:
        counters.hincrby(FAILED_TRIES, message_id, 1)
        raise Retry(defer=0.05) from exc
    return message_id


async def on_startup(ctx: dict[str, Any]) -> None:
    check_arq_broker(ctx["redis"], breaker)


async def after_job_end(ctx: dict[str, Any]) -> None:
    counters.incr(RUNS)


async def on_shutdown(ctx: dict[str, Any]) -> None:
    await store.aclose()


class WorkerSettings:
    functions: ClassVar = [func(handle, max_tries=MAX_TRIES)]
    redis_settings = RedisSettings.from_dsn(BROKER_URL)
    max_jobs = MAX_JOBS
    poll_delay = 0.05
    job_timeout = 30
    keep_result = 3600
    on_startup = on_startup
    after_job_end = after_job_end
    on_shutdown = on_shutdown
