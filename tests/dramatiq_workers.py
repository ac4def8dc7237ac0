"""The broker module of the dramatiq proof (``tests/test_dramatiq.py``), run as

    dramatiq dramatiq_workers --processes 2 --threads 2 --path tests

It builds everything from the environment:

    RB_BROKER_URL       redis://... (RedisBroker) or amqp://... (RabbitmqBroker)
    RB_QUEUE            the actor's queue
    RB_STORE_URL        the breaker's store (the test's own redis-server)
    RB_DEPENDENCY_URL   where tests/dependency.py counts the calls, and where each handled
                        message records the retries and deferrals it had (hash
                        ``dramatiq:spent``: message id -> "retries deferrals")
    RB_BREAKER          the breaker's name
    RB_MAX_WAIT         BreakerMiddleware's max_wait (seconds, default 0)
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

import redbreaker
from dependency import Dependency
from redbreaker.contrib.dramatiq import DEFERRALS, BreakerMiddleware

FAILURE_THRESHOLD = 5
RECOVERY_TIMEOUT = 0.5
MAX_RETRIES = 10  # dramatiq's budget for real failures; deferrals must not touch it
WORK_SECONDS = 0.01  # each message's own work, besides the dependency call
SPENT = "dramatiq:spent"


def _broker(url: str) -> dramatiq.Broker:
    if url.startswith("amqp"):
        # confirm_delivery: a deferred copy counts as stored once RabbitMQ confirmed it.
        return RabbitmqBroker(url=url, confirm_delivery=True)
    return RedisBroker(url=url)


if "RB_BROKER_URL" in os.environ:  # run by dramatiq; the test imports the constants
    breaker = redbreaker.Breaker(
        os.environ.get("RB_BREAKER", "proof-dependency"),
        store=redbreaker.connect(os.environ["RB_STORE_URL"]),
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=RECOVERY_TIMEOUT,
        half_open_max_calls=1,
    )
    broker = _broker(os.environ["RB_BROKER_URL"])
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(
        BreakerMiddleware(breaker, max_wait=float(os.environ.get("RB_MAX_WAIT", "0")))
    )
    dramatiq.set_broker(broker)

    _dependency = Dependency(os.environ["RB_DEPENDENCY_URL"])
    _figures = redis.Redis.from_url(os.environ["RB_DEPENDENCY_URL"])

    @dramatiq.actor(
        queue_name=os.environ.get("RB_QUEUE", "proof"),
        max_retries=MAX_RETRIES,
        min_backoff=500,
        max_backoff=1000,
    )
    def handle(message_id: str) -> None:
        """The proof's actor: some work, then one call of the dependency."""
        time.sleep(WORK_SECONDS)
        _dependency.call(message_id)
        message = CurrentMessage.get_current_message()
        assert message is not None
        retries = int(message.options.get("retries", 0))
        deferrals = int(message.options.get(DEFERRALS, 0))
        _figures.hset(SPENT, message_id, f"{retries} {deferrals}")
