"""Guarding dramatiq actors with a breaker: a middleware that puts a rejected message away
with a delay, never spending its retries (``pip install redbreaker[dramatiq]``; tested
with dramatiq 2.2 on its Redis and RabbitMQ brokers).

::

    import dramatiq, redbreaker
    from redbreaker.contrib.dramatiq import BreakerMiddleware

    payments = redbreaker.Breaker("payments-api", store=redbreaker.connect(STORE_URL))
    broker.add_middleware(BreakerMiddleware(payments))      # every actor, or per actor:

    @dramatiq.actor(circuit_breaker=payments)                # this one's own breaker
    def charge(order_id): ...

    @dramatiq.actor(circuit_breaker=False)                   # not guarded
    def audit(event): ...

Add the middleware before declaring actors that name ``circuit_breaker``. For each message of
a guarded actor, just before the actor runs:

- **admitted**: the actor runs under one permit, settled by how it ends (returned: a
  success; raised: a failure, classified by the breaker's config). ``max_wait`` seconds
  (default 0) let a worker thread wait for admission first: while every thread waits, the
  worker stops fetching once its prefetch is full, and the messages it holds stay unacked.
- **rejected**: a copy of the message, same ``message_id`` and options (``retries``
  untouched; ``options["redbreaker_deferrals"]`` counts), is enqueued with a delay of
  ``breaker.defer_delay(rejection)``, then the original is skipped (dramatiq's
  ``SkipMessage``) and so acked: only after the copy is stored. The Retries middleware never
  sees it, nothing is dead-lettered, and dramatiq logs "Message ... was skipped". While the
  broker cannot be reached the worker thread keeps trying (as dramatiq does with acks),
  and the original stays unacked; a broker that refuses the copy fails this delivery
  (:class:`DeferError`), so the Retries middleware may bring it back. On RabbitMQ, use
  ``RabbitmqBroker(confirm_delivery=True)`` so that "stored" means confirmed.

At worker start-up the middleware warns when the broker is the breaker's own Redis.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

try:
    from dramatiq.errors import BrokerConnectionError
    from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage
except ImportError as exc:  # pragma: no cover (the extra is missing)
    raise ImportError(
        "redbreaker.contrib.dramatiq needs dramatiq: pip install 'redbreaker[dramatiq]'"
    ) from exc
import redis

from .._breaker import Breaker
from .._brokers import check_broker
from .._exceptions import CircuitOpenError, ConfigError
from .._hooks import logger

if TYPE_CHECKING:
    from dramatiq.actor import Actor
    from dramatiq.broker import Broker, MessageProxy
    from dramatiq.worker import Worker

    from .._permit import Permit

__all__ = ["ACTOR_OPTION", "DEFERRALS", "ActorConfigError", "BreakerMiddleware", "DeferError"]

ACTOR_OPTION = "circuit_breaker"
"""The actor option naming an actor's breaker (False: not guarded)."""
DEFERRALS = "redbreaker_deferrals"
"""The message option counting how many times a breaker put the message away."""

_ENQUEUE_BACKOFF_MIN = 0.1
_ENQUEUE_BACKOFF_MAX = 5.0
_BROKER_DOWN = (BrokerConnectionError, redis.ConnectionError, redis.TimeoutError)


class ActorConfigError(ConfigError, MiddlewareError):
    """An actor's ``circuit_breaker`` is not a breaker. Also a dramatiq MiddlewareError:
    dramatiq logs and drops any other exception a middleware raises while an actor is
    declared, and the actor would run unguarded."""


class DeferError(MiddlewareError):
    """The broker refused a deferred copy (not a connection error): raised as a
    MiddlewareError so dramatiq handles this delivery as failed (Retries may bring it
    back) instead of dropping the error and running the actor the breaker rejected."""


def _check_breaker(value: object, where: str) -> Breaker | None:
    if value is None or value is False:
        return None
    if not isinstance(value, Breaker):
        raise ActorConfigError(where, f"expected a redbreaker.Breaker (or False), got {value!r}")
    return value


class BreakerMiddleware(Middleware):
    """Admit each message of a guarded actor through its breaker; defer the rejected ones.

    Args:
        breaker: the breaker of every actor that names none (``circuit_breaker=...``);
            None guards only the actors that do.
        max_wait: seconds a worker thread may wait for admission before the message is
            deferred (0: defer at once). Waiting threads hold their messages unacked and
            delay the worker's shutdown by up to this long.

    Raises:
        ConfigError: ``breaker`` (or an actor's ``circuit_breaker``) is not a sync
            :class:`redbreaker.Breaker`, or ``max_wait`` is not a number of seconds >= 0.
    """

    def __init__(self, breaker: Breaker | None = None, *, max_wait: float = 0.0) -> None:
        self.breaker = _check_breaker(breaker, "breaker")
        if (
            isinstance(max_wait, bool)
            or not isinstance(max_wait, (int, float))
            or not math.isfinite(max_wait)
            or max_wait < 0
        ):
            raise ConfigError("max_wait", f"must be a number of seconds >= 0, got {max_wait!r}")
        self.max_wait = float(max_wait)
        # Permits by message id, per worker thread: dramatiq runs a message's before and
        # after hooks and the actor itself in one worker thread.
        self._held = threading.local()

    @property
    def actor_options(self) -> set[str]:
        return {ACTOR_OPTION}

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        _check_breaker(actor.options.get(ACTOR_OPTION), f"{actor.actor_name}.{ACTOR_OPTION}")

    def breaker_for(self, broker: Broker, actor_name: str) -> Breaker | None:
        """The breaker guarding ``actor_name``'s messages (None: not guarded)."""
        options = broker.get_actor(actor_name).options
        if ACTOR_OPTION in options:
            return _check_breaker(options[ACTOR_OPTION], ACTOR_OPTION)
        return self.breaker

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        client = getattr(broker, "client", None)
        if not isinstance(client, redis.Redis):
            return  # not a Redis broker (RabbitMQ...)
        breakers = {id(b): b for b in (self.breaker,) if b is not None}
        for name in broker.get_declared_actors():
            found = self.breaker_for(broker, name)
            if found is not None:
                breakers[id(found)] = found
        for breaker in breakers.values():
            check_broker(
                client,
                breaker.store.client,
                breaker=breaker.name,
                on_store_error=breaker.config.on_store_error,
                queue="dramatiq",
            )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if message.failed:
            return  # another middleware failed it: the actor will not run
        breaker = self.breaker_for(broker, message.actor_name)
        if breaker is None:
            return
        try:
            permit = breaker.acquire(max_wait=self.max_wait)
        except CircuitOpenError as rejection:
            self.defer(broker, message, breaker, breaker.defer_delay(rejection))
            raise SkipMessage(f"circuit {breaker.name!r} rejects calls: deferred") from None
        self._permits()[message.message_id] = permit

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,  # noqa: ANN401 (dramatiq's signature)
        exception: BaseException | None = None,
    ) -> None:
        permit = self._permits().pop(message.message_id, None)
        if permit is None:
            return
        if exception is None:
            permit.success()
        else:
            permit.failure(exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        # Skipped by a middleware after this one: the call never ran, so count nothing.
        permit = self._permits().pop(message.message_id, None)
        if permit is not None:
            permit.release()

    def _permits(self) -> dict[str, Permit]:
        held: dict[str, Permit] | None = getattr(self._held, "permits", None)
        if held is None:
            held = self._held.permits = {}
        return held

    def defer(self, broker: Broker, message: MessageProxy, breaker: Breaker, delay: float) -> None:
        """Enqueue a copy of ``message`` (same id and options, ``retries`` untouched) to
        run in ``delay`` seconds; return only once the broker took it. While the broker is
        unreachable, try again with a backoff (0.1 s doubling to 5 s), as dramatiq does
        with acks: the original stays unacked meanwhile."""
        deferrals = int(message.options.get(DEFERRALS, 0)) + 1
        copy = message.copy(options={DEFERRALS: deferrals})
        delay_ms = max(1, math.ceil(delay * 1000))
        backoff = _ENQUEUE_BACKOFF_MIN
        while True:
            try:
                broker.enqueue(copy, delay=delay_ms)
                break
            except _BROKER_DOWN as exc:
                logger.warning(
                    "dramatiq message %s: could not enqueue its deferred copy (%s); trying "
                    "again in %.1f s",
                    message.message_id,
                    exc,
                    backoff,
                    extra={"event": "defer_failed", "breaker": breaker.name},
                )
                time.sleep(backoff)
                backoff = min(_ENQUEUE_BACKOFF_MAX, backoff * 2)
            except Exception as exc:
                raise DeferError(
                    f"message {message.message_id}: the broker refused its deferred copy: {exc}"
                ) from exc
        logger.info(
            "dramatiq message %s deferred for %d ms: circuit %r rejects calls",
            message.message_id,
            delay_ms,
            breaker.name,
            extra={"event": "deferred", "breaker": breaker.name, "message_id": message.message_id},
        )
