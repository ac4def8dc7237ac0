"""The celery app that test_celery.py's worker processes load (``celery -A celery_workers
worker``, with ``tests/`` on PYTHONPATH). Everything comes from the environment the test
sets, so one module serves every scenario:

    RB_CELERY_BROKER     the broker URL (redis:// or amqp://)
    RB_CELERY_BACKEND    the result backend URL
    RB_CELERY_STORE      the breakers' Redis
    RB_CELERY_DEPENDENCY the Redis that counts the dependency's calls (tests/dependency.py)
    RB_CELERY_QUEUE      the queue the tasks go to (and the worker consumes)
    RB_CELERY_BREAKER    the proof's breaker name
    RB_CELERY_PAUSE      "1": pause the queue while its breaker is open (the bootstep)

Tasks:
    handle(message_id)   the proof's task: calls the dependency under the breaker;
                         DependencyDown is retried (max_retries=2, 1 s apart); adds its
                         request.retries to ``retries_at_success`` when it succeeds
    always_fails(id)     records its attempt and request.retries, forces the breaker open
                         for 0.5 s, and raises ValueError (max_retries=3, 0.1 s apart): its
                         retries are deferred over and over by a breaker that defers 0.1 s

Signals count, in the ``celery:counts`` hash of the dependency's Redis: ``failed``,
``succeeded``, ``deferrals`` and ``retries`` (real ones); ``celery:deferred`` holds the
deferrals per task id, ``celery:deferred_at`` the ``retries`` each deferral carried, and
``celery:deferral_states`` how many deferrals the task_retry signal saw per rejection
(``<state>:<deadline|no deadline>``): a deferral is one whose reason is the
CircuitOpenError itself, which crossed no process boundary as a stand-in.
``celery:on_retry:<id>`` lists what always_fails' ``on_retry`` was handed
(``CircuitOpenError:<state>:<breaker>`` or the exception's type).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, signals

import redbreaker
from dependency import Dependency, DependencyDown
from redbreaker.contrib.celery import GuardedTask, pause_queues

BROKER = os.environ["RB_CELERY_BROKER"]
QUEUE = os.environ["RB_CELERY_QUEUE"]
COUNTS = "celery:counts"

app = Celery("celery_workers", broker=BROKER, backend=os.environ["RB_CELERY_BACKEND"])
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    worker_enable_remote_control=False,  # no pidbox queues left on a shared RabbitMQ
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
)

store = redbreaker.connect(os.environ["RB_CELERY_STORE"])
dependency = Dependency(os.environ["RB_CELERY_DEPENDENCY"])
counters = redis.Redis.from_url(os.environ["RB_CELERY_DEPENDENCY"])

# The proof's breaker: the common proof parameters.
breaker = redbreaker.Breaker(
    os.environ["RB_CELERY_BREAKER"],
    store=store,
    failure_threshold=5,
    recovery_timeout=0.5,
    half_open_max_calls=1,
)


class QuickDeferral(redbreaker.Breaker):
    """Defers 0.1 s whatever the deadline: many deferrals in a short test."""

    def defer_delay(self, rejection: redbreaker.CircuitOpenError) -> float:
        super().defer_delay(rejection)  # the argument checks still apply
        return 0.1


retry_breaker = QuickDeferral(
    f"{os.environ['RB_CELERY_BREAKER']}-retries", store=store, failure_threshold=100
)

if os.environ.get("RB_CELERY_PAUSE") == "1":
    pause_queues(app, {QUEUE: breaker})


@app.task(
    base=GuardedTask,
    breaker=breaker,
    name="celery_workers.handle",
    autoretry_for=(DependencyDown,),
    max_retries=2,
    default_retry_delay=1,
    retry_jitter=False,
    bind=True,
)
def handle(self: Any, message_id: str) -> str:
    dependency.call(message_id)
    # Summed over every success, this equals the real retries only if no deferral
    # raised a task's retries.
    counters.hincrby(COUNTS, "retries_at_success", self.request.retries)
    return message_id


class RecordsRetries(GuardedTask):
    """Records what ``on_retry`` is handed (an intermediate base: no ``run``)."""

    def on_retry(self, exc: BaseException, task_id: str, *_: Any) -> None:
        seen = type(exc).__name__
        if isinstance(exc, redbreaker.CircuitOpenError):
            seen = f"{seen}:{exc.state}:{exc.name}"
        counters.rpush(f"celery:on_retry:{task_id}", seen)


@app.task(
    base=RecordsRetries,
    breaker=retry_breaker,
    bind=True,
    name="celery_workers.always_fails",
    autoretry_for=(ValueError,),
    max_retries=3,
    default_retry_delay=0.1,
    retry_jitter=False,
)
def always_fails(self: Any, message_id: str) -> None:
    counters.rpush(f"celery:attempts:{message_id}", self.request.retries)
    retry_breaker.force_open(duration=0.5)  # the next attempt meets a rejection or more
    raise ValueError(f"{message_id} fails every time")


@signals.task_retry.connect
def _count_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    rejection = getattr(reason, "exc", None)
    if isinstance(rejection, redbreaker.CircuitOpenError):
        deadline = "no deadline" if rejection.retry_after is None else "deadline"
        pipe = counters.pipeline(transaction=False)
        pipe.hincrby("celery:deferral_states", f"{rejection.state}:{deadline}", 1)
        pipe.hincrby(COUNTS, "deferrals", 1)
        pipe.hincrby("celery:deferred", request.id, 1)
        pipe.rpush(f"celery:deferred_at:{request.id}", request.retries)
        pipe.execute()
    else:
        counters.hincrby(COUNTS, "retries", 1)


@signals.task_failure.connect
def _count_failure(**_: Any) -> None:
    counters.hincrby(COUNTS, "failed", 1)


@signals.task_success.connect
def _count_success(**_: Any) -> None:
    counters.hincrby(COUNTS, "succeeded", 1)
