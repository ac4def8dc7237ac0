"""Jobs and worker classes of the rq tests (``tests/test_rq.py``).

The proof's ``rq worker`` subprocesses load :class:`ProofWorker` with ``-w
rq_workers.ProofWorker``; it builds its breaker from the environment:

    RB_STORE_URL        the breaker's store (the test's own redis-server)
    RB_DEPENDENCY_URL   where tests/dependency.py counts the calls
    RB_BREAKER          the breaker's name

The small tests run the same job functions in-process (rq's SimpleWorker).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

from rq import Retry

import redbreaker
from dependency import Dependency
from redbreaker.contrib.rq import GuardedWorker, guard

FAILURE_THRESHOLD = 5
RECOVERY_TIMEOUT = 0.5

if os.environ.get("RB_LOG"):
    # The proof's workers: redbreaker's events (paused, resumed, deferred) on stderr,
    # one line each, for the test to count.
    def _with_event(record: logging.LogRecord) -> bool:
        record.event = getattr(record, "event", "-")
        return True

    _handler = logging.StreamHandler(sys.stderr)
    _handler.addFilter(_with_event)
    _handler.setFormatter(logging.Formatter("redbreaker %(levelname)s %(event)s %(message)s"))
    logging.getLogger("redbreaker").addHandler(_handler)
    logging.getLogger("redbreaker").setLevel(logging.INFO)


@functools.cache
def proof_breaker() -> redbreaker.Breaker:
    """The proof's breaker, one per process (a work horse inherits its worker's)."""
    store = redbreaker.connect(os.environ["RB_STORE_URL"])
    return redbreaker.Breaker(
        os.environ.get("RB_BREAKER", "proof-dependency"),
        store=store,
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=RECOVERY_TIMEOUT,
        half_open_max_calls=1,
    )


@functools.cache
def _dependency(url: str) -> Dependency:
    return Dependency(url)


def handle(message_id: str, url: str | None = None) -> str:
    """The proof's job: one call of the dependency (raises DependencyDown while down)."""
    _dependency(url or os.environ["RB_DEPENDENCY_URL"]).call(message_id)
    return message_id


def succeed(value: str) -> str:
    return value


def fail(message: str) -> None:
    raise ConnectionError(message)


def come_back_later() -> Retry:
    return Retry(max=3, interval=60)


class ProofWorker(GuardedWorker):
    """``rq worker -w rq_workers.ProofWorker``: every job under the proof's breaker."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, breaker=proof_breaker(), **kwargs)  # type: ignore[arg-type]


@functools.cache
def _breaker(store_url: str, name: str) -> redbreaker.Breaker:
    return redbreaker.Breaker(
        name,
        store=redbreaker.connect(store_url),
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=RECOVERY_TIMEOUT,
        half_open_max_calls=1,
    )


def guarded_succeed(value: str, store_url: str, name: str) -> str | Retry:
    """``succeed`` under guard(): the breaker is built where the job runs."""
    return guard(_breaker(store_url, name))(succeed)(value)
