"""celery: tasks that run only while their breaker admits them, and workers that stop
fetching from a queue while its breaker is open (``pip install redbreaker[celery]``).

Guard a task with ``base=GuardedTask`` and a ``breaker``::

    import redbreaker
    from celery import Celery
    from redbreaker.contrib.celery import GuardedTask, pause_queues

    app = Celery("shop", broker="redis://broker:6379/0")
    store = redbreaker.connect("redis://breakers:6379/0")
    payments = redbreaker.Breaker("payments-api", store=store, failure_threshold=5)

    @app.task(base=GuardedTask, breaker=payments, acks_late=True,
              autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=5)
    def charge(order_id): ...

    pause_queues(app, {"payments": payments})    # optional: the worker bootstep

What it guarantees:

- Each execution holds one permit of the breaker: the task's return is a success, its
  exception is classified by the breaker's config (``record_on``, ``ignore_on``); a
  ``self.retry(exc=e)`` counts as ``e``, and celery's ``Ignore``/``Reject`` count nothing.
- A rejected task is *deferred*, not failed: it is sent again with
  ``countdown=breaker.defer_delay(rejection)`` (the breaker's deadline plus a jitter) and
  the **same** ``retries`` count, so deferrals never spend ``max_retries``. The worker
  marks it ``RETRY`` (``on_retry`` and the ``task_retry`` signal see the rejection), never
  ``FAILURE``. The copy is stored in the broker before the original is acknowledged, so
  with ``acks_late=True`` nothing is lost even if the worker dies in between; if the
  broker refuses the copy, an ``acks_late`` task is rejected back onto its queue
  (``Reject(requeue=True)``). Without ``acks_late`` celery acknowledged the message when
  the task started, as it always does: at-most-once until the copy is stored.
- Called directly or eagerly (``apply()``, ``task_always_eager``) there is no queue to
  defer to: the rejection is raised (:class:`redbreaker.CircuitOpenError`).
- :func:`pause_queues` adds a consumer bootstep: while a queue's breaker would reject a
  call (open, forced open, half-open with every probe slot taken), the worker cancels its
  consumer of that queue (messages stay in the broker; those already prefetched are
  deferred as above) and consumes again when it would admit one: at its deadline plus a
  jitter (so a fleet does not resume in one millisecond) or as soon as the transition
  feed says it changed. It is driven by ``store.transitions()`` in a thread and one
  snapshot per transition or deadline, never by polling. A queue the worker was not
  consuming at start-up is never added.
- At start-up the worker warns loudly (WARNING on the ``redbreaker`` logger) for every
  guarded task or paused queue whose broker is the breaker's own Redis.

Costs: one breaker round trip per execution (two after a failure), one publish per
deferral, and, with :func:`pause_queues`, one pub/sub connection and two threads in the
worker's main process.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

try:
    from celery import Celery, Task, bootsteps, signals  # type: ignore[import-untyped]
    from celery.exceptions import Ignore, Reject, Retry  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover (the extra is missing)
    raise ImportError(
        "redbreaker.contrib.celery needs celery: pip install 'redbreaker[celery]'"
    ) from exc

from .._breaker import Breaker
from .._brokers import check_broker
from .._exceptions import CircuitOpenError, ConfigError
from .._state import State
from .._waiting import AdmissionWait, wake_spread

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._store import Store

__all__ = ["GuardedTask", "PauseWhileOpen", "pause_queues"]

logger = logging.getLogger(__name__)


class GuardedTask(Task):  # type: ignore[misc]  # celery is untyped
    """A celery task base class: every execution runs under a permit of ``breaker``, and
    a rejected task is deferred without spending ``max_retries`` (see the module's
    docstring). Set ``breaker`` with ``@app.task(base=GuardedTask, breaker=...)`` or as a
    class attribute of a subclass.

    Raises:
        ConfigError: a task (a class that defines ``run``) has no ``breaker``, or one
            that is not a sync :class:`redbreaker.Breaker`.
    """

    breaker: Breaker | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:  # noqa: ANN401 (celery's kwargs)
        super().__init_subclass__(**kwargs)
        if "run" not in cls.__dict__:
            return  # an intermediate base class: its tasks say which breaker
        breaker = cls.breaker
        if not isinstance(breaker, Breaker):
            what = "no breaker" if breaker is None else f"{breaker!r}"
            aio = type(breaker).__module__.startswith("redbreaker.aio")
            hint = " (celery runs tasks synchronously: use redbreaker.Breaker)" if aio else ""
            raise ConfigError("breaker", f"task {cls.__name__!r} has {what}; GuardedTask "
                              "needs a redbreaker.Breaker: @app.task(base=GuardedTask, "
                              f"breaker=...){hint}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        breaker = self.breaker
        assert breaker is not None  # __init_subclass__ saw to it
        request = self.request
        # A worker's tracer has pushed the request already and calls __call__ for run
        # (celery's documented pattern); a direct call needs Task.__call__ to push one.
        body = super().__call__ if request.called_directly else self.run
        try:
            permit = breaker.acquire()
        except CircuitOpenError as rejection:
            if request.called_directly or request.is_eager:
                raise  # no queue to put the task back on
            raise self._deferral(breaker, rejection) from None
        try:
            result = body(*args, **kwargs)
        except BaseException as exc:
            ended_by = _outcome_exception(exc)
            if ended_by is None:
                permit.release()
            else:
                permit._ended_by(ended_by, finishing=False)
            raise
        permit._finish(result=result, origin=self.run)
        return result

    def _deferral(self, breaker: Breaker, rejection: CircuitOpenError) -> Retry:
        """Send the task again after the breaker's deadline with the same ``retries``;
        the Retry to raise once the copy is stored in the broker."""
        request = self.request
        countdown = round(breaker.defer_delay(rejection), 3)
        retries = request.retries
        copy = self.signature_from_request(request, countdown=countdown, retries=retries)
        try:
            copy.apply_async()
        except Exception as exc:
            if self.acks_late:
                # Not acknowledged yet: the broker keeps the original instead.
                raise Reject(exc, requeue=True) from exc
            raise
        why = f"circuit {breaker.name!r} is {rejection.state}; retries stay at {retries}"
        return Retry(f"deferred {countdown}s: {why}", exc=rejection, when=countdown, sig=copy)


def _outcome_exception(exc: BaseException) -> BaseException | None:
    """The exception a task's end is classified by; None when it counts nothing."""
    if isinstance(exc, Retry):
        return exc.exc if isinstance(exc.exc, BaseException) else None
    if isinstance(exc, (Ignore, Reject)):
        return None  # the task chose what happens to its message: not the dependency's doing
    return exc


# -- the worker bootstep ------------------------------------------------------------------

_PAUSED: weakref.WeakKeyDictionary[Any, dict[str, Breaker]] = weakref.WeakKeyDictionary()
"""The queues each app's workers pause, and their breakers (:func:`pause_queues`)."""


def pause_queues(app: Celery, queues: Mapping[str, Breaker]) -> None:
    """Make ``app``'s workers stop consuming each queue of ``queues`` while its breaker
    would reject a call, and consume again when it would admit one. Call it where the
    app is built (the worker imports it); calling it again adds queues.

    Raises:
        ConfigError: ``queues`` is empty, a name is not a non-empty string, or a breaker
            is not a sync :class:`redbreaker.Breaker`.
    """
    if not isinstance(app, Celery):
        raise ConfigError("app", f"must be a celery.Celery, got {app!r}")
    if not queues:
        raise ConfigError("queues", "name at least one queue and its breaker")
    for name, breaker in queues.items():
        if not isinstance(name, str) or not name:
            raise ConfigError("queues", f"a queue name must be a non-empty str, got {name!r}")
        if not isinstance(breaker, Breaker):
            raise ConfigError("queues", f"queue {name!r}: expected a redbreaker.Breaker, "
                              f"got {breaker!r}")
    if app not in _PAUSED:
        _PAUSED[app] = {}
        app.steps["consumer"].add(PauseWhileOpen)
    _PAUSED[app].update(queues)


@dataclasses.dataclass(eq=False)
class _Gate:
    """One paused-or-not queue; ``paused`` is written by the gatekeeper's thread and read
    by the worker's loop. ``wait`` is unbounded: as long as the breaker rejects."""

    queue: str
    breaker: Breaker
    wait: AdmissionWait
    paused: bool = False
    state: str = "unknown"
    wake_at: float | None = None


_STOP = object()
_ALL = None


class _Gatekeeper:
    """Pauses, in a thread of its own, the queues whose breaker would reject a call:
    re-reads a breaker when the feed announces one of its transitions or the wait the
    core set for it ends, and hands each change to the worker's event loop
    (``consumer.call_soon``). What rejects and how long to wait are the core's decisions
    (``_snapshot_rejection``, :class:`AdmissionWait`)."""

    def __init__(self, consumer: Any, gates: list[_Gate]) -> None:  # noqa: ANN401
        self._consumer = consumer
        self._gates = gates
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._live: set[int] = set()  # the stores whose feed is subscribed

    def start(self) -> None:
        stores: dict[int, Store] = {id(g.breaker.store): g.breaker.store for g in self._gates}
        for key, store in stores.items():
            threading.Thread(target=self._watch, args=(key, store), daemon=True).start()
        threading.Thread(target=self._run, name="redbreaker-celery-gates", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self._events.put(_STOP)

    def _watch(self, key: int, store: Store) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                events = store.transitions()
                self._live.add(key)
                self._events.put((key, _ALL))  # subscribed: re-read every gate once
                failures = 0
                for transition in events:
                    if self._stopped.is_set():
                        return
                    self._events.put((key, transition.name))
                return  # the store was closed
            except Exception as exc:  # retried: the gates need the feed
                self._live.discard(key)
                failures += 1
                logger.warning("celery queue pause: transition feed lost (%r)", exc)
                if self._stopped.wait(min(5.0, 0.25 * 2**failures)):
                    return

    def _run(self) -> None:
        while True:
            due = [g.wake_at for g in self._gates if g.wake_at is not None]
            wait = None if not due else max(0.0, min(due) - time.monotonic())
            try:
                items = [self._events.get(timeout=wait)]
            except queue.Empty:
                items = []
            while not self._events.empty():  # a burst of transitions: one read each
                items.append(self._events.get_nowait())
            if _STOP in items:
                return
            now = time.monotonic()
            for gate in self._gates:
                key = id(gate.breaker.store)
                heard = (key, _ALL) in items or (key, gate.breaker.name) in items
                if heard or (gate.wake_at is not None and gate.wake_at <= now):
                    self._check(gate)

    def _check(self, gate: _Gate) -> None:
        breaker = gate.breaker
        try:
            snapshot = breaker.snapshot()
        except Exception as exc:  # this thread must outlive any error
            # Cannot tell: consume, and let each task's breaker apply its on_store_error.
            logger.warning("celery queue %r: circuit %r unreadable (%r)", gate.queue,
                           breaker.name, exc)
            rejection, gate.state = None, "unreadable"
        else:
            rejection = breaker._snapshot_rejection(snapshot)
            gate.state = snapshot.state.value
            if rejection is None and snapshot.state in (State.OPEN, State.FORCED_OPEN):
                gate.state += ", deadline passed"
        now = time.monotonic()
        live = id(breaker.store) in self._live
        nap = None if rejection is None else gate.wait.nap(rejection, now, feed_live=live)
        gate.wake_at = None if nap is None else now + nap
        if (rejection is not None) != gate.paused:
            gate.paused = rejection is not None
            # Callbacks may run out of order: each applies the gate's state at that time.
            self._consumer.call_soon(self.apply, gate)

    def apply(self, gate: _Gate) -> None:
        """Make the worker's consumer match ``gate`` (in the worker's loop thread)."""
        consumer = self._consumer
        tasks = consumer.task_consumer
        if tasks is None or self._stopped.is_set():
            return
        consuming = tasks.consuming_from(gate.queue)
        extra = {"breaker": gate.breaker.name, "queue": gate.queue}
        if gate.paused and consuming:
            consumer.cancel_task_queue(gate.queue)
            logger.warning("celery queue %r paused: circuit %r is %s", gate.queue,
                           gate.breaker.name, gate.state, extra={**extra, "event": "paused"})
        elif not gate.paused and not consuming:
            consumer.add_task_queue(gate.queue)
            logger.info("celery queue %r resumed: circuit %r admits calls (%s)", gate.queue,
                        gate.breaker.name, gate.state, extra={**extra, "event": "resumed"})


class PauseWhileOpen(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """The consumer bootstep :func:`pause_queues` adds: stops consuming a queue while its
    breaker would reject a call."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(parent, **kwargs)
        self._keeper: _Gatekeeper | None = None

    def start(self, parent: Any) -> None:  # noqa: ANN401
        if self._keeper is not None:
            # The consumer restarted (a lost connection): its new task consumer reads the
            # app's queue selection, which paused queues left; say it again anyway.
            for gate in self._keeper._gates:
                self._keeper.apply(gate)
            return
        consumed = set(parent.app.amqp.queues.consume_from or ())
        mapping = _PAUSED.get(parent.app, {})
        now = time.monotonic()
        gates = [_Gate(name, b, AdmissionWait(None, now, wake_spread(b.config)))
                 for name, b in mapping.items() if name in consumed]
        if not gates:
            return
        self._keeper = _Gatekeeper(parent, gates)
        self._keeper.start()
        names = ", ".join(f"queue {g.queue!r} (circuit {g.breaker.name!r})" for g in gates)
        logger.info("celery: pausing %s while their circuits reject calls", names)

    def stop(self, parent: Any) -> None:  # noqa: ANN401
        pass  # a restart: the gatekeeper lives on and start() re-applies its decisions

    def shutdown(self, parent: Any) -> None:  # noqa: ANN401
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None


# -- the start-up check -------------------------------------------------------------------


def _check_brokers(app: Celery) -> None:
    """Warn for each breaker of ``app``'s tasks and paused queues that lives on the
    broker's Redis server (once per breaker and store)."""
    urls = app.conf.broker_read_url or app.conf.broker_url or []
    urls = urls.split(";") if isinstance(urls, str) else urls  # failover URLs
    guarded = [(f"celery task {t.name}", t.breaker) for t in list(app.tasks.values())
               if isinstance(t, GuardedTask) and t.breaker is not None]
    guarded += [(f"celery queue {q!r}", b) for q, b in _PAUSED.get(app, {}).items()]
    seen: set[tuple[int, str]] = set()
    for label, breaker in guarded:
        key = (id(breaker.store), breaker.name)
        if key in seen:
            continue
        seen.add(key)
        for url in (u.strip() for u in urls if isinstance(u, str)):
            policy = breaker.config.on_store_error
            if check_broker(url, breaker.store.client, breaker=breaker.name,
                            on_store_error=policy, queue=label):
                break


def _on_worker_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:  # noqa: ANN401
    app = getattr(instance, "app", None)
    if isinstance(app, Celery):
        _check_brokers(app)


# Sent in the worker's main process once the app is finalized and logging is set up,
# before the pool starts: the warning lands in the worker's log once, not per child.
signals.celeryd_after_setup.connect(_on_worker_setup, weak=False)
