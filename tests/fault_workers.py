"""Worker for ``test_faults.py``: one load-generating process (``spawn``).

Each worker runs the test's driver (``params["driver"]``: "sync" unless given, or "aio",
through :class:`drivers.Driver`, whose event loop runs the aio calls). It builds its own
store with the driver's ``connect`` (a short ``store_timeout``, real Redis ``TIME``) and
its own breaker "dep" with the test's ``on_store_error`` and ``consistency`` ("strict"
unless given, or "cached"), waits on the shared barrier, then calls
``breaker.call(dependency)`` in a loop (one call per ``pace`` seconds) until the parent
sets ``stop``, while the parent breaks Redis. Then it flushes its breaker (a cached
breaker's batched successes reach Redis before the worker reports).

It counts, per process: calls, dependency runs, the exceptions that reached the caller (by
type name; a non-redbreaker exception is named with its module, so a raw redis-py error
shows up as ``redis.exceptions.ConnectionError``), the state of each ``CircuitOpenError``
and the type of each ``StoreUnavailableError``'s cause, the store events its
``on_store_event`` hook saw, the transitions its ``on_transition`` hook saw, the wall time
of every call, and the tasks its driver found still running once the store was closed
(``tasks_left_pending``, aio). Store edges are also counted in a shared array
(``edges[2*i]`` degraded, ``edges[2*i+1]`` recovered) so the parent can wait for recovery.

The dependency succeeds unless the parent sets ``failing``; then it raises :class:`Boom`.

Times are ``time.monotonic()`` readings: CLOCK_MONOTONIC is system-wide on Linux, so the
readings of the workers and the parent can be compared.
"""

from __future__ import annotations

import logging
import time
import traceback
from array import array
from collections import Counter
from typing import TYPE_CHECKING, Any

import redbreaker
from drivers import Driver, TasksLeftPendingError

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import SynchronizedArray
    from multiprocessing.synchronize import Barrier
    from multiprocessing.synchronize import Event as EventType

NAME = "dep"
PREFIX = "redbreaker"
BARRIER_TIMEOUT = 60.0
"""Seconds a worker waits for the others (spawning interpreters on a busy 2-core machine
takes a while); a worker that never arrives breaks the barrier."""
RUN_LIMIT = 30.0
"""No worker loop runs longer than this, whatever happens."""


class Boom(Exception):  # noqa: N818 (the dependency's own error, not a redbreaker one)
    """The guarded dependency failed."""


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__.startswith("redbreaker") or kind is Boom:
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def entry(
    index: int,
    url: str,
    params: dict[str, Any],
    *,
    barrier: Barrier,
    stop: EventType,
    failing: EventType,
    edges: SynchronizedArray[int],
    results: Queue[tuple[int, str, Any]],
) -> None:
    """Process target: run the load and put ``(index, "done", result)`` or
    ``(index, "error", traceback)`` on ``results``."""
    # Store edges and transitions are logged at WARNING; with no handler configured they
    # would reach stderr through logging's last resort, from every process.
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    try:
        result = load(index, url, params, barrier=barrier, stop=stop, failing=failing, edges=edges)
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
    else:
        results.put((index, "done", result))


def load(
    index: int,
    url: str,
    params: dict[str, Any],
    *,
    barrier: Barrier,
    stop: EventType,
    failing: EventType,
    edges: SynchronizedArray[int],
) -> dict[str, Any]:
    """Call the breaker until ``stop``; return what the caller saw."""
    store_events: list[tuple[str, float, str, str | None, float | None]] = []

    def on_store_event(event: redbreaker.StoreEvent) -> None:
        store_events.append(
            (event.kind, time.monotonic(), event.prefix, event.error, event.outage_seconds)
        )
        slot = 2 * index + (0 if event.kind == "store_degraded" else 1)
        with edges.get_lock():
            edges[slot] += 1

    transitions: list[tuple[str | None, str, str, int]] = []

    def on_transition(t: redbreaker.Transition) -> None:
        previous = t.previous.value if t.previous else None
        transitions.append((previous, t.current.value, t.reason, t.generation))

    runs = 0

    def dependency() -> str:
        nonlocal runs
        runs += 1
        if failing.is_set():
            raise Boom
        return "ok"

    driver = Driver(params.get("driver", "sync"))
    store = driver.connect(
        url, prefix=PREFIX, store_timeout=params["store_timeout"], on_store_event=on_store_event
    )
    breaker = driver.breaker(
        NAME,
        store=store,
        on_store_error=params["policy"],
        consistency=params.get("consistency", "strict"),
        on_transition=on_transition,
        **params["config"],
    )
    pace = params["pace"]
    calls = 0
    exceptions: Counter[str] = Counter()
    last_exception_at: dict[str, float] = {}
    rejected_states: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    starts = array("d")
    durations = array("d")
    try:
        barrier.wait(BARRIER_TIMEOUT)
        deadline = time.monotonic() + RUN_LIMIT
        while not stop.is_set():
            started = time.monotonic()
            if started > deadline:
                raise AssertionError(f"worker {index}: never told to stop")
            try:
                breaker.call(dependency)
            except Exception as exc:  # everything a caller sees is counted
                ended = time.monotonic()
                name = _type_name(exc)
                exceptions[name] += 1
                last_exception_at[name] = ended
                if isinstance(exc, redbreaker.CircuitOpenError):
                    rejected_states[exc.state] += 1
                if isinstance(exc, redbreaker.StoreUnavailableError):
                    cause = exc.__cause__
                    causes["none" if cause is None else _type_name(cause)] += 1
            else:
                ended = time.monotonic()
            calls += 1
            starts.append(started)
            durations.append(ended - started)
            driver.sleep(pace)  # aio: the loop (its feed task) runs meanwhile
        breaker.flush()
        result = {
            "calls": calls,
            "runs": runs,
            "exceptions": dict(exceptions),
            "last_exception_at": last_exception_at,
            "rejected_states": dict(rejected_states),
            "causes": dict(causes),
            "store_events": store_events,
            "transitions": transitions,
            "starts": starts.tolist(),
            "durations": durations.tolist(),
        }
    finally:
        left_pending: list[str] = []
        try:
            driver.close()
        except TasksLeftPendingError as exc:
            left_pending = exc.names  # the parent checks it last (see test_faults.py)
    result["tasks_left_pending"] = left_pending
    return result
