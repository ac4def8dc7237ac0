"""Child process of test_timeout.py: time out hung calls, then return from main.

Usage: ``python timeout_child.py [guard|executor] [hang_seconds]``.

``guard`` (the default) times out 5 calls through a guard with ``attempt_timeout=0.05``;
the process must exit at once although the 5 calls still hang in daemon threads.
``executor`` does the same with ``concurrent.futures.ThreadPoolExecutor`` and
``future.result(timeout)``, for comparison only: it holds the process until the calls end.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time

import redbreaker

CALLS = 5
TIMEOUT = 0.05


def _with_guard(hang: float) -> int:
    store = redbreaker.connect("memory://")
    try:
        breaker = redbreaker.Breaker("child", store=store, failure_threshold=100)
        guard = breaker.guard(attempt_timeout=TIMEOUT)
        timeouts = 0
        for _ in range(CALLS):
            try:
                guard.call(time.sleep, hang)
            except redbreaker.AttemptTimeoutError:
                timeouts += 1
        print(f"timeouts={timeouts} abandoned={breaker.abandoned_attempts}", flush=True)
    finally:
        store.close()
    return timeouts


def _with_executor(hang: float) -> int:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=CALLS)
    timeouts = 0
    for _ in range(CALLS):
        future = pool.submit(time.sleep, hang)
        try:
            future.result(TIMEOUT)
        except concurrent.futures.TimeoutError:
            timeouts += 1
    pool.shutdown(wait=False)
    print(f"timeouts={timeouts}", flush=True)
    return timeouts


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "guard"
    hang = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    timeouts = _with_guard(hang) if mode == "guard" else _with_executor(hang)
    return 0 if timeouts == CALLS else 1


if __name__ == "__main__":
    sys.exit(main())
