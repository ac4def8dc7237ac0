"""Guarding rq workers with a breaker: pause fetching while it is open, put a rejected job
away under its own id, never fail it (``pip install redbreaker[rq]``; tested with rq 3.0).

::

    import redbreaker
    from redbreaker.contrib.rq import GuardedWorker

    payments = redbreaker.Breaker("payments-api", store=redbreaker.connect(STORE_URL))

    class PaymentsWorker(GuardedWorker):
        breaker = payments

    # rq worker --with-scheduler -w myapp.workers.PaymentsWorker payments

A :class:`GuardedWorker` (or :class:`GuardedSimpleWorker`, or
:class:`GuardedWorkerMixin` over any rq worker class):

- **pauses fetching** while its breaker would reject a call: before each fetch it waits in
  :meth:`~redbreaker.Breaker.wait_admitting` (woken by the transition feed or the deadline,
  jittered, never polling Redis), heartbeating as rq does. Jobs stay in their queue.
- runs **each job under one permit**, taken just before the job starts (in the work horse)
  and settled by how it ended: raised -> a failure (classified by the breaker's config),
  finished -> a success, came back for a retry without raising (it returned ``rq.Retry``) ->
  released, counting nothing.
- **defers** a job the breaker rejects at that moment (another worker's failures tripped it
  after this one fetched, or a half-open breaker's probe slot is taken): the job is
  rescheduled under its own id for ``breaker.defer_delay(rejection)`` seconds, rounded up to
  rq's whole-second schedule, in one MULTI/EXEC with its removal from the intermediate queue
  and the started registry, so it is never both fetched and unscheduled. It ends ``scheduled``,
  never ``failed``: no failed-registry entry, no Result, no failure callback or exception
  handler, ``retries_left`` untouched; ``job.meta["redbreaker_deferrals"]`` counts the times.

Deferred jobs come back through rq's scheduler: at least one worker of each queue must run
with ``--with-scheduler`` (a GuardedWorker without it says so at start-up).

For a job function run by a plain rq worker, or one that calls another dependency than its
worker's breaker guards, :func:`guard` does the same inside the job: on a rejection it returns
``rq.Retry`` for the same job, which rq reschedules under its own id without touching
``retries_left`` (rq does count it in the worker's failed-jobs *statistic*).
"""

from __future__ import annotations

import contextvars
import functools
import math
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

try:
    from rq import Retry, get_current_job
    from rq.job import JobStatus
    from rq.worker import BaseWorker, SimpleWorker, Worker
except ImportError as exc:  # pragma: no cover (the extra is missing)
    raise ImportError("redbreaker.contrib.rq needs rq: pip install 'redbreaker[rq]'") from exc

from .._breaker import Breaker
from .._brokers import check_broker
from .._exceptions import CircuitOpenError, ConfigError
from .._hooks import logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue

    from .._permit import Permit

__all__ = [
    "DEFERRALS",
    "GuardedSimpleWorker",
    "GuardedWorker",
    "GuardedWorkerMixin",
    "guard",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFERRALS = "redbreaker_deferrals"
"""The ``job.meta`` key counting how many times a breaker put the job away."""

# The breaker whose permit the running job holds, set by a GuardedWorker around the job:
# guard() with the same breaker must not ask for a second permit (in half-open, strict,
# it would be refused: the job holds the only probe slot).
_admitted: contextvars.ContextVar[Breaker | None] = contextvars.ContextVar(
    "redbreaker_rq_admitted", default=None
)


def _schedule_time(delay: float) -> datetime:
    """Now plus ``delay``, rounded up to a whole second: rq scores scheduled jobs in whole
    seconds, and rounding down would bring a job back before the breaker's deadline."""
    when = datetime.now(timezone.utc) + timedelta(seconds=max(0.0, delay))
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return when


class GuardedWorkerMixin(BaseWorker):
    """The guard, over any rq worker class: ``class W(GuardedWorkerMixin, rq.SpawnWorker)``.

    Attributes (set them on a subclass, as ``rq worker -w`` builds the worker itself, or
    pass them as keyword arguments):
        breaker: the :class:`redbreaker.Breaker` every job of this worker runs under.
        pause_while_open: wait before fetching while the breaker would reject (default
            True); False fetches and defers instead.

    Raises:
        ConfigError: ``breaker`` is not a (sync) :class:`redbreaker.Breaker`.
    """

    breaker: Breaker | None = None
    pause_while_open: bool = True

    def __init__(
        self,
        *args: Any,  # noqa: ANN401 (rq's own arguments, passed through)
        breaker: Breaker | None = None,
        pause_while_open: bool | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        if breaker is not None:
            self.breaker = breaker
        if pause_while_open is not None:
            self.pause_while_open = pause_while_open
        if not isinstance(self.breaker, Breaker):
            raise ConfigError(
                "breaker",
                f"{type(self).__name__} needs a redbreaker.Breaker (a class attribute "
                f"`breaker = ...` or breaker=...), got {self.breaker!r}",
            )
        super().__init__(*args, **kwargs)
        self._job_exception: BaseException | None = None

    @property
    def _breaker(self) -> Breaker:
        assert self.breaker is not None  # checked in __init__
        return self.breaker

    def work(self, *args: Any, **kwargs: Any) -> bool:  # noqa: ANN401
        """rq's work loop, after the start-up checks: the broker is not the breaker's own
        Redis, and some worker brings deferred jobs back (``with_scheduler``)."""
        breaker = self._breaker
        check_broker(
            self.connection,
            breaker.store.client,
            breaker=breaker.name,
            on_store_error=breaker.config.on_store_error,
            queue="rq",
        )
        with_scheduler = kwargs.get("with_scheduler", args[6] if len(args) > 6 else False)
        if not with_scheduler:
            logger.warning(
                "rq worker %s guards its jobs with circuit %r but runs no scheduler: jobs the "
                "breaker defers come back only while a worker of queues %s runs with "
                "--with-scheduler",
                self.name,
                breaker.name,
                ", ".join(self.queue_names()),
                extra={"event": "rq_no_scheduler", "breaker": breaker.name},
            )
        return bool(super().work(*args, **kwargs))

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if self.pause_while_open:
            self._wait_until_admitting()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _wait_until_admitting(self) -> None:
        """Fetch nothing while the breaker would reject; heartbeat at rq's own cadence
        (every dequeue_timeout) so the worker is not taken for dead."""
        breaker = self._breaker
        if breaker.wait_admitting(max_wait=0):  # asks once (no I/O while a rejection holds)
            return
        logger.warning(
            "rq worker %s: circuit %r is open, not fetching until it admits calls",
            self.name,
            breaker.name,
            extra={"event": "consumer_paused", "breaker": breaker.name},
        )
        self.procline(f"Paused: circuit {breaker.name} is open")  # type: ignore[no-untyped-call]
        while not breaker.wait_admitting(max_wait=self.dequeue_timeout):
            self.heartbeat()
        logger.info(
            "rq worker %s: circuit %r admits calls, fetching again",
            self.name,
            breaker.name,
            extra={"event": "consumer_resumed", "breaker": breaker.name},
        )

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run ``job`` under one permit of the breaker, or defer it when rejected."""
        breaker = self._breaker
        try:
            permit = breaker.acquire()
        except CircuitOpenError as rejection:
            self.defer_job(job, queue, execution, breaker.defer_delay(rejection))
            return True
        self._job_exception = None
        token = _admitted.set(breaker)
        try:
            with permit:  # an error escaping rq's own handling settles it as that error
                done = super().perform_job(job, queue, execution)
                self._settle(permit, job)
        finally:
            _admitted.reset(token)
        return done

    def _settle(self, permit: Permit, job: Job) -> None:
        if self._job_exception is not None:
            permit.failure(self._job_exception)
        elif job.get_status(refresh=False) == JobStatus.FINISHED:
            permit.success()
        else:
            permit.release()  # it asked to be retried without raising: no outcome
        self._job_exception = None

    def handle_exception(self, job: Job, *exc_info: Any) -> None:  # noqa: ANN401
        # rq hands every job exception here before it fails or retries the job: the one
        # place the exception itself (for the breaker's classification) is seen.
        if len(exc_info) > 1 and isinstance(exc_info[1], BaseException):
            self._job_exception = exc_info[1]
        super().handle_exception(job, *exc_info)

    def defer_job(self, job: Job, queue: Queue, execution: Execution, delay: float) -> None:
        """Put ``job`` back under its own id, to run in ``delay`` seconds (rounded up to
        a whole second), without running it or counting an attempt.

        One MULTI/EXEC schedules it and drops it from the intermediate queue and the
        started registry: it is never both fetched and unscheduled.
        """
        when = _schedule_time(delay)
        job.meta[DEFERRALS] = int(job.meta.get(DEFERRALS, 0)) + 1
        with self.connection.pipeline() as pipe:
            queue.schedule_job(job, when, pipeline=pipe)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.execute()
        if getattr(job, "has_rate_limit", False):
            self._release_slot_safely(job)  # a rate limit's slot is not held while away
        logger.info(
            "rq job %s deferred to %s: circuit %r rejects calls",
            job.id,
            when.isoformat(),
            self._breaker.name,
            extra={"event": "deferred", "breaker": self._breaker.name, "job_id": job.id},
        )


class GuardedWorker(GuardedWorkerMixin, Worker):
    """rq's forking :class:`rq.Worker`, guarded (see :class:`GuardedWorkerMixin`)."""


class GuardedSimpleWorker(GuardedWorkerMixin, SimpleWorker):
    """rq's in-process :class:`rq.SimpleWorker`, guarded (see :class:`GuardedWorkerMixin`)."""


def guard(breaker: Breaker) -> Callable[[Callable[P, R]], Callable[P, R | Retry]]:
    """Run a job function under ``breaker``, whichever worker runs it.

    Admitted: the function runs under one permit, settled by how it ends. Rejected inside
    an rq job: it returns ``rq.Retry`` for the same job, to run again in
    ``breaker.defer_delay(rejection)`` seconds (rounded up), so rq reschedules it under its
    own id and ``retries_left`` is untouched; ``job.meta["redbreaker_deferrals"]`` counts it.
    Rejected outside a job (a direct call): :class:`~redbreaker.CircuitOpenError` is raised.
    Under a :class:`GuardedWorker` of the same breaker the worker's permit covers the call.

    Raises:
        ConfigError: ``breaker`` is not a (sync) :class:`redbreaker.Breaker`.
    """
    if not isinstance(breaker, Breaker):
        raise ConfigError("breaker", f"expected a redbreaker.Breaker, got {breaker!r}")

    def decorate(fn: Callable[P, R]) -> Callable[P, R | Retry]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R | Retry:
            if _admitted.get() is breaker:
                return fn(*args, **kwargs)
            try:
                permit = breaker.acquire()
            except CircuitOpenError as rejection:
                job = get_current_job()
                if job is None:
                    raise
                return _retry_later(job, breaker, breaker.defer_delay(rejection))
            with permit:
                return fn(*args, **kwargs)

        return run

    return decorate


def _retry_later(job: Job, breaker: Breaker, delay: float) -> Retry:
    """An ``rq.Retry`` that brings ``job`` back in ``delay`` seconds and can never be the
    one that exhausts it: ``max`` is one more than the retries it has had."""
    job.meta[DEFERRALS] = int(job.meta.get(DEFERRALS, 0)) + 1
    logger.info(
        "rq job %s deferred for %d s: circuit %r rejects calls",
        job.id,
        math.ceil(delay),
        breaker.name,
        extra={"event": "deferred", "breaker": breaker.name, "job_id": job.id},
    )
    return Retry(max=(job.number_of_retries or 0) + 1, interval=max(1, math.ceil(delay)))
