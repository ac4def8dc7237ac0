"""Worker functions for the multi-process tests of ``test_deadlines.py``: each runs in its
own process (``spawn``) with its own store on a real redis-server (Redis ``TIME``, no test
clock).

A worker builds ``Breaker("dep", ...)`` in the consistency mode it is given, calls until the
(already open) breaker has rejected it and the rejection is cached in its process, says
``ready``, then keeps calling (5 ms apart) until a call is admitted after the operator's
order. It reports when that first admission came, as a ``time.monotonic()`` reading:
CLOCK_MONOTONIC is system-wide on Linux, so the parent can compare it with its own reading
taken when it gave the order.

Messages on ``results``: ``(index, "ready", info)``, ``(index, "done", result)`` or
``(index, "error", traceback)``. The parent imports this module by name: ``tests/`` is on
``sys.path`` and ``spawn`` hands the parent's ``sys.path`` to the child.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

import redbreaker

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import Synchronized

NAME = "dep"
PAUSE = 0.005
"""Seconds between two calls of a worker."""
READY_LIMIT = 30.0
"""Seconds a worker may take to be rejected once it starts calling."""
FEED_LIMIT = 10.0
"""Seconds a cached worker waits for its transition feed to be subscribed."""


def _ok() -> str:
    return "ok"


def entry(
    index: int,
    url: str,
    params: dict[str, Any],
    order_at: Synchronized[float],
    results: Queue[tuple[int, str, Any]],
) -> None:
    """Process target: run :func:`wait_for_the_order`, report its result or traceback."""
    logging.getLogger("redbreaker").addHandler(logging.NullHandler())
    try:
        result = wait_for_the_order(index, url, params, order_at, results)
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
    else:
        results.put((index, "done", result))


def wait_for_the_order(
    index: int,
    url: str,
    params: dict[str, Any],
    order_at: Synchronized[float],
    results: Queue[tuple[int, str, Any]],
) -> dict[str, Any]:
    """Be rejected, say ready, then call until admitted after the order (or give up
    ``params["limit"]`` seconds after it)."""
    store = redbreaker.connect(url)
    try:
        if not params.get("feed", True):
            # A cached breaker that never hears the pushes: as if every one were lost.
            store.start_feed = lambda: None  # type: ignore[method-assign]
        breaker = redbreaker.Breaker(NAME, store=store, **params["config"])
        key = f"{store.prefix}:{{{NAME}}}"

        # 1. Called until rejected: the breaker is open, with a long deadline.
        give_up = time.monotonic() + READY_LIMIT
        rejection: redbreaker.CircuitOpenError | None = None
        while rejection is None:
            try:
                breaker.call(_ok)
            except redbreaker.CircuitOpenError as exc:
                rejection = exc
            else:
                raise AssertionError(f"worker {index}: admitted while the breaker is open")
            if time.monotonic() > give_up:
                raise AssertionError(f"worker {index}: never rejected")
        if params["config"].get("consistency") == "cached" and params.get("feed", True):
            # The pushes are meant to reach this process: wait until it can hear them.
            give_up = time.monotonic() + FEED_LIMIT
            while not store.feed_live:
                if time.monotonic() > give_up:
                    raise AssertionError(f"worker {index}: the feed never subscribed")
                time.sleep(0.01)
        results.put(
            (
                index,
                "ready",
                {
                    "state": rejection.state,
                    "retry_after": rejection.retry_after,
                    # For the figures only: is the rejection held locally?
                    "cached": store.view.cached_rejection(key, 60.0) is not None,
                },
            )
        )

        # 2. Keep calling; the parent writes the time of its order into order_at.
        calls_before = calls_after = 0
        while True:
            now = time.monotonic()
            given = order_at.value
            if given and now > given + params["limit"]:
                return {"admitted_at": None, "calls_after": calls_after, "order_at": given}
            try:
                breaker.call(_ok)
            except redbreaker.CircuitOpenError:
                if given:
                    calls_after += 1
                else:
                    calls_before += 1
            else:
                admitted_at = time.monotonic()
                given = order_at.value
                if not given:
                    raise AssertionError(
                        f"worker {index}: admitted before any order, after {calls_before} "
                        "rejected calls"
                    )
                return {
                    "admitted_at": admitted_at,
                    "calls_after": calls_after + 1,
                    "order_at": given,
                }
            time.sleep(PAUSE)
    finally:
        store.close()
