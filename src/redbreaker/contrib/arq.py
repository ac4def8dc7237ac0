"""Guard arq job functions with a :class:`redbreaker.aio.Breaker`
(``pip install redbreaker[arq]``).

Usage::

    import redbreaker.aio
    from redbreaker.contrib.arq import guarded_job

    store = redbreaker.aio.connect("redis://breakers:6379/0")
    payments = redbreaker.aio.Breaker("payments-api", store=store)

    @guarded_job(payments)
    async def charge(ctx, order_id):
        await api.charge(order_id)       # returning = success, an exception = failure

    class WorkerSettings:
        functions = [charge]

A job runs under a permit of the breaker, settled by how it ends: returning is a
success, an exception is classified by the breaker's config and propagates as arq would
have it (a plain exception fails the job, a ``Retry`` you raise retries it: both spend
one of the job's ``max_tries``, as real attempts should, and both count as failures
unless the breaker's ``ignore_on`` says otherwise). A job the breaker *rejects* does not
run: it is put back in arq's queue with ``Retry(defer=breaker.defer_delay(...))`` and the
try arq counted for that run is given back first, so a job with ``max_tries=3`` still
gets three real attempts however many times the breaker deferred it.

With ``guarded_job(breaker, max_wait=5)`` a rejected job first waits in its worker slot
for admission; once every slot of a worker waits, arq fetches nothing more, so during
an outage a worker holds at most ``max_jobs`` jobs instead of cycling the whole queue
through deferrals. A job stopped while it waits (the worker shutting down) gets its try
back as well.

Why the try is given back rather than the job copied: arq increments ``arq:retry:<id>``
before every run, and only ``Retry`` keeps a job in its queue without finishing it. The
job never leaves the queue's sorted set, keeps its id (``Job.result()`` still works) and
no second copy can exist, so a deferral can neither lose nor duplicate it. The counter is
decremented by one Lua script, only while it still holds the try this run counted.

What is not covered: arq's job timeout cancels a job, and a cancellation is never a
failure (it frees a probe slot and counts nothing): give the call its own timeout, e.g.
``breaker.guard(attempt_timeout=...)``. The worker must keep ``retry_jobs=True`` (arq's
default): with it off, arq fails a job that raises ``Retry``. A job's ``_expires`` still
holds: deferrals do not extend it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

try:
    from arq.connections import RedisSettings
    from arq.constants import retry_key_prefix
    from arq.worker import Retry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError("redbreaker.contrib.arq needs arq: pip install redbreaker[arq]") from exc

from .. import aio
from .._brokers import Endpoint, check_broker, redis_endpoint, store_endpoint
from .._exceptions import CircuitOpenError, ConfigError
from .._hooks import logger
from .._waiting import max_wait_setting

if TYPE_CHECKING:
    from .._config import Seconds

__all__ = ["check_arq_broker", "defer", "guarded_job"]

P = ParamSpec("P")
R = TypeVar("R")
JobFunction = Callable[Concatenate[dict[str, Any], P], Awaitable[R]]

# Gives back the try arq counted for this run, only while the counter still holds it (a
# second run of the same job, after its in-progress key expired, would have moved it on).
_GIVE_BACK = """
local tries = tonumber(redis.call('GET', KEYS[1]) or '')
if tries ~= nil and tries > 0 and tries == tonumber(ARGV[1]) then
    redis.call('DECR', KEYS[1])
    return 1
end
return 0
"""

# The broker servers each breaker was checked against in this process, and whether they
# were its own: one warning per pair, whether from on_startup or a guarded job's first run.
_checked: weakref.WeakKeyDictionary[aio.Breaker, dict[Endpoint, bool]] = weakref.WeakKeyDictionary()


async def _give_back_try(ctx: dict[str, Any]) -> None:
    job_id, job_try, redis = ctx.get("job_id"), ctx.get("job_try"), ctx.get("redis")
    if job_id is None or not isinstance(job_try, int) or redis is None:
        return
    try:
        script = redis.register_script(_GIVE_BACK)
        await script(keys=[retry_key_prefix + str(job_id)], args=[job_try])
    except Exception as exc:  # any Redis error: the job goes back all the same
        logger.warning(
            "arq job %s: could not give back the try of a run that did not call the "
            "dependency (%r); it spends one of its max_tries",
            job_id,
            exc,
            extra={"event": "defer_try_spent", "job_id": str(job_id)},
        )


async def defer(ctx: dict[str, Any], seconds: float) -> Retry:
    """Give back the try arq counted for this run of a job and return the ``Retry`` that
    puts the job back in its queue for ``seconds``; raise it.

    For jobs written by hand (:func:`guarded_job` does this for a rejection)::

        except CircuitOpenError as rejection:
            raise await defer(ctx, breaker.defer_delay(rejection)) from rejection

    A job that runs outside an arq worker (no ``job_id`` in ``ctx``) has no try to give
    back. If Redis cannot be told, the job is still deferred (it then spends the try,
    and a WARNING says so): losing a try is better than losing the job.
    """
    await _give_back_try(ctx)
    return Retry(defer=seconds)


def _endpoint_url(endpoint: tuple[str, str]) -> str:
    host, where = endpoint
    return f"unix://{where}" if host == "unix" else f"redis://{host}:{where}"


def _settings_url(settings: RedisSettings) -> str | None:
    if settings.sentinel or not isinstance(settings.host, str):
        return None  # a Sentinel moves between servers: it cannot be told
    if settings.unix_socket_path:
        return f"unix://{settings.unix_socket_path}"
    return f"redis://{settings.host}:{settings.port}"


def check_arq_broker(broker: RedisSettings | str | Any, breaker: aio.Breaker) -> bool:  # noqa: ANN401
    """Warn (a WARNING on the ``redbreaker`` logger) when arq's broker is the Redis server
    that holds ``breaker``; True when it is.

    ``broker`` is the worker's ``RedisSettings``, a ``redis://`` URL, or the worker's
    connection (``ctx["redis"]`` in ``on_startup``). :func:`guarded_job` does this once
    per process on its first job; call it from ``on_startup`` to hear it before any job.
    """
    if isinstance(broker, RedisSettings):
        url = _settings_url(broker)
    elif isinstance(broker, str):
        url = broker
    else:
        endpoint = store_endpoint(broker)
        url = None if endpoint is None else _endpoint_url(endpoint)
    endpoint = None if url is None else redis_endpoint(url)
    if url is None or endpoint is None:
        return False
    checked = _checked.setdefault(breaker, {})
    if endpoint not in checked:
        checked[endpoint] = check_broker(
            url,
            breaker.store.client,
            breaker=breaker.name,
            on_store_error=breaker.config.on_store_error,
            queue="arq",
        )
    return checked[endpoint]


def guarded_job(
    breaker: aio.Breaker, *, max_wait: Seconds = 0
) -> Callable[[JobFunction[P, R]], JobFunction[P, R]]:
    """Run an arq job function (``async def job(ctx, ...)``) under ``breaker``; a job the
    breaker rejects is deferred without spending a try (see the module's docstring).

    Args:
        breaker: the :class:`redbreaker.aio.Breaker` of the dependency the job calls.
        max_wait: seconds a job that finds the breaker open waits in its worker slot for
            admission (woken by the breaker's transition feed, never by polling) before
            it is deferred; 0 (default) defers at once. While every slot of a worker
            waits, arq fetches nothing more, so a worker claims at most ``max_jobs`` jobs
            during an outage. The wait runs inside arq's job timeout: keep it well below.

    Raises:
        ConfigError: ``breaker`` is not a ``redbreaker.aio.Breaker``, ``max_wait`` is not
            0 or a number of seconds, or the decorated function is not a coroutine
            function.
    """
    if not isinstance(breaker, aio.Breaker):
        raise ConfigError(
            "breaker",
            f"arq jobs run on an event loop: pass a redbreaker.aio.Breaker, not {breaker!r}",
        )
    wait = max_wait_setting(max_wait)
    if wait is None:
        raise ConfigError(
            "max_wait",
            "None would wait past arq's job timeout, which fails the job; give seconds "
            "below the job's timeout, or 0 to defer at once",
        )

    def decorate(fn: JobFunction[P, R]) -> JobFunction[P, R]:
        if not asyncio.iscoroutinefunction(fn):
            raise ConfigError("fn", f"arq runs coroutine functions; {fn!r} is not one")

        checked_pool = 0  # id() of the worker connection last checked: once per worker

        @functools.wraps(fn)
        async def job(ctx: dict[str, Any], /, *args: P.args, **kwargs: P.kwargs) -> R:
            nonlocal checked_pool
            redis = ctx.get("redis")
            if redis is not None and id(redis) != checked_pool:
                checked_pool = id(redis)
                check_arq_broker(redis, breaker)
            try:
                permit = await breaker.acquire(max_wait=wait)
            except asyncio.CancelledError:
                # Stopped before it ran (a worker shutting down while the job waited for
                # admission): arq puts it back, and the try goes back with it.
                await _give_back_try(ctx)
                raise
            except CircuitOpenError as rejection:
                seconds = breaker.defer_delay(rejection)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "arq job %s rejected by circuit %r (%s): deferred %.3f s",
                        ctx.get("job_id"),
                        breaker.name,
                        rejection.state,
                        seconds,
                        extra={"event": "deferred", "breaker": breaker.name},
                    )
                raise await defer(ctx, seconds) from rejection
            async with permit:
                return await fn(ctx, *args, **kwargs)

        return job

    return decorate
