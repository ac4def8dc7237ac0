"""Workers for ``test_clock_skew.py``: each runs in its own process (``spawn``) whose wall
clock is off by a fixed offset, hours in either direction.

The skew is installed before ``redbreaker`` is imported in the child: ``time.time``,
``time.time_ns`` and ``datetime.datetime.now/utcnow/today`` all read real time + offset, as
they would on a host whose clock is set wrong. ``time.monotonic`` is left alone: a wrong
wall clock does not change it, and the library uses it only locally (to age a cached
rejection and to time a call).

A worker builds its own store (real Redis ``TIME``, no test clock) and breaker, then runs
the commands the parent sends it one by one, so workers with different clocks take turns
on one breaker. :func:`handle` is also run in the parent for the unskewed baseline.
"""

from __future__ import annotations

import datetime
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    import redbreaker

COMMAND_TIMEOUT = 60.0
POLL_PAUSE = 0.005
Event = tuple[str | None, str, str, int, int]
"""A transition as a worker reports it: (previous, current, reason, generation, at_ms)."""


def install_skew(offset: float) -> None:
    """Make this process's wall clock read ``offset`` seconds off (monotonic unchanged)."""
    real_time, real_time_ns = time.time, time.time_ns
    shift = datetime.timedelta(seconds=offset)
    real_datetime = datetime.datetime

    def skewed_time() -> float:
        return real_time() + offset

    def skewed_time_ns() -> int:
        return real_time_ns() + round(offset * 1e9)

    class SkewedDateTime(real_datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Any:
            return real_datetime.now(tz) + shift

        @classmethod
        def utcnow(cls) -> Any:
            return real_datetime.now(datetime.timezone.utc).replace(tzinfo=None) + shift

        @classmethod
        def today(cls) -> Any:
            return real_datetime.now() + shift

    time.time = skewed_time
    time.time_ns = skewed_time_ns
    datetime.datetime = SkewedDateTime  # type: ignore[misc]


def entry(
    index: int,
    offset: float,
    url: str,
    name: str,
    settings: dict[str, Any],
    *,
    commands: Queue[tuple[Any, ...]],
    results: Queue[tuple[int, str, Any]],
) -> None:
    """Process target: skew the clock, build the breaker, answer commands until "stop"."""
    install_skew(offset)
    import redbreaker  # only once the clock is skewed

    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    try:
        store = redbreaker.connect(url)
        seen: list[Event] = []
        breaker = redbreaker.Breaker(
            name, store=store, on_transition=[lambda t: seen.append(event(t))], **settings
        )
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
        return
    try:
        while True:
            command = commands.get(timeout=COMMAND_TIMEOUT)
            if command[0] == "stop":
                break
            try:
                out = handle(breaker, store, seen, command)
            except BaseException:
                results.put((index, "error", traceback.format_exc()))
            else:
                results.put((index, "done", out))
    finally:
        store.close()


def event(t: redbreaker.Transition) -> Event:
    return (
        t.previous.value if t.previous else None,
        t.current.value,
        t.reason,
        t.generation,
        t.at_ms,
    )


def server_ms(store: redbreaker.Store) -> int:
    seconds, micros = store.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def handle(
    breaker: redbreaker.Breaker,
    store: redbreaker.Store,
    seen: list[Event],
    command: tuple[Any, ...],
) -> dict[str, Any]:
    """Run one command; every reply carries the transitions this worker's calls made.

    ("clock",)      the wall and monotonic clocks of this process
    ("fail",)       one call that fails
    ("try",)        one acquire: rejected, or admitted and released; with the server's
                    time just before it
    ("poll", secs)  acquire until admitted (a probe or not), then succeed; every rejection
                    on the way as (state, retry_after)
    """
    from redbreaker import CircuitOpenError  # after the skew, see entry()

    kind = command[0]
    out: dict[str, Any] = {}
    if kind == "clock":
        out = {"time": time.time(), "monotonic": time.monotonic()}
    elif kind == "fail":
        permit = breaker.acquire()
        permit.failure()
        out = {"generation": permit.generation}
    elif kind == "try":
        before = server_ms(store)
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            out = {"before_ms": before, "rejected": (exc.state, exc.retry_after)}
        else:
            permit.release()
            out = {"before_ms": before, "admitted": (permit.generation, permit.is_probe)}
    elif kind == "poll":
        deadline = time.monotonic() + command[1]
        rejections: list[tuple[str, float | None]] = []
        while True:
            try:
                permit = breaker.acquire()
            except CircuitOpenError as exc:
                rejections.append((exc.state, exc.retry_after))
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_PAUSE)
                continue
            permit.success()
            out = {"admitted": (permit.generation, permit.is_probe), "rejections": rejections}
            break
    else:
        raise ValueError(f"unknown command {command!r}")
    out["events"] = list(seen)
    seen.clear()
    return out
