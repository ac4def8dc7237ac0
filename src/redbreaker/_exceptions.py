"""Every exception redbreaker raises, under one base class.

::

    RedbreakerError
    ├── ConfigError            (also a ValueError) a setting, name, prefix or URL is invalid
    ├── CircuitOpenError       a call was rejected: the breaker is open, forced open, or
    │   │                      half-open with every probe slot taken
    │   └── StoreUnavailableError  Redis could not be reached and the breaker's
    │                          on_store_error is "reject"; chained to the redis-py error
    ├── AttemptTimeoutError    (also a TimeoutError) an attempt outlived its attempt_timeout
    │                          or the deadline; the work itself may still be running
    ├── AttemptRejectedError   too many timed-out attempts of this breaker are still
    │                          running: a new attempt fails fast instead of adding a thread
    ├── PermitError            (also a RuntimeError) a permit was settled twice
    ├── AsyncCallError         (also a TypeError) the sync API was given a coroutine
    │                          function or an awaitable result: use redbreaker.aio
    └── StoreError             Redis answered something the breaker cannot use (a key of
                               the wrong type, a script error); chained to the redis-py error

Exceptions raised by the guarded function itself always pass through unchanged.

One warning category, shown by Python's default filters with no logging configured::

    UserWarning
    └── StoreOutageWarning     this process runs calls without the shared breaker because
                               its Redis cannot be reached (once per outage, per store)
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "AsyncCallError",
    "AttemptRejectedError",
    "AttemptTimeoutError",
    "CircuitOpenError",
    "ConfigError",
    "PermitError",
    "RedbreakerError",
    "StoreError",
    "StoreOutageWarning",
    "StoreUnavailableError",
]


class RedbreakerError(Exception):
    """Base class of every exception redbreaker raises."""


class ConfigError(RedbreakerError, ValueError):
    """A setting, breaker name, prefix or store URL is invalid.

    Raised at construction, never later. ``field`` names the offending setting.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    # Pickled by arguments, not by message: celery, rq and multiprocessing carry
    # exceptions between processes, and the receiver must get the same exception back.
    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.problem))


class CircuitOpenError(RedbreakerError):
    """The breaker rejected the call; the guarded function did not run.

    Attributes:
        name: the breaker's name.
        state: the state that rejected the call (``"open"``, ``"forced_open"`` or
            ``"half_open"`` when every probe slot is taken), as stored in Redis.
        retry_after: seconds until a call may be admitted again, measured on the Redis
            server's clock, or ``None`` when no deadline is known (forced open without one).
        scope: ``"fleet"`` when the shared breaker rejected the call; ``"process"`` when
            this process's own breaker did (``min_reporters`` > 1: this process failed on
            its own while the fleet's breaker stays closed).
    """

    def __init__(
        self,
        name: str,
        state: str,
        retry_after: float | None,
        scope: Literal["fleet", "process"] = "fleet",
    ) -> None:
        # The arguments, not the message, in args: whatever rebuilds an exception as
        # cls(*args) (celery's JSON results) gets the rejection back, state, deadline and
        # a process's scope (a fleet rejection keeps its three).
        if scope == "fleet":
            super().__init__(name, state, retry_after)
        else:
            super().__init__(name, state, retry_after, scope)
        self.name = name
        self.state = state
        self.retry_after = retry_after
        self.scope = scope

    def __str__(self) -> str:
        retry_after = self.retry_after
        when = "no deadline" if retry_after is None else f"retry after {retry_after:.3f}s"
        where = "" if self.scope == "fleet" else " in this process (its own breaker)"
        return f"circuit {self.name!r} is {self.state}{where}; {when}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.state, self.retry_after, self.scope))


class AttemptTimeoutError(RedbreakerError, TimeoutError):
    """An attempt did not finish within its time budget; the caller got control back.

    Sync guards: the work is **not** stopped: a thread cannot be killed safely, so an
    attempt that had started keeps running in its (daemon) thread and its result is
    dropped. Side effects may still happen after this error. An attempt that was still
    queued is cancelled and never runs. Async guards cancel the attempt's coroutine: it
    stops at its next await (``cancelled`` is True).

    Attributes:
        name: the breaker's name.
        budget: the seconds the attempt was given (``attempt_timeout`` or what was left of
            the ``deadline``, whichever was smaller).
        started: False when the attempt was still queued and has been cancelled.
        cancelled: True when the attempt was stopped (an async guard's), not abandoned.
    """

    def __init__(
        self, name: str, budget: float, *, started: bool, cancelled: bool = False
    ) -> None:
        if cancelled:
            what = "cancelled"
        else:
            what = "still running, abandoned" if started else "never started, cancelled"
        super().__init__(f"circuit {name!r}: attempt exceeded {budget:.3f}s ({what})")
        self.name = name
        self.budget = budget
        self.started = started
        self.cancelled = cancelled

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attempt_timeout, (self.name, self.budget, self.started, self.cancelled))


class AttemptRejectedError(RedbreakerError):
    """The breaker's timed-out attempts still running reached ``max_abandoned_attempts``.

    New attempts fail at once rather than pile up threads behind a hung dependency.

    Attributes:
        name: the breaker's name.
        abandoned: timed-out attempts still running.
    """

    def __init__(self, name: str, abandoned: int) -> None:
        super().__init__(
            f"circuit {name!r}: {abandoned} timed-out attempts are still running; "
            "refusing new attempts until some finish"
        )
        self.name = name
        self.abandoned = abandoned

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.abandoned))


class PermitError(RedbreakerError, RuntimeError):
    """A permit was settled (success, failure or release) more than once."""


class AsyncCallError(RedbreakerError, TypeError):
    """The sync API was handed async work it cannot run: a coroutine function, or a call
    that returned an awaitable. Raised before anything is counted; ``redbreaker.aio`` is
    the API for coroutines."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what}: the sync API cannot run it (it would never be awaited, and count as "
            "a success); use redbreaker.aio"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what,))


class StoreError(RedbreakerError):
    """Redis replied something the breaker cannot use; the cause is chained."""


class StoreUnavailableError(CircuitOpenError):
    """Redis could not be reached (connection refused or lost, a store call timed out,
    a read-only replica after a failover...), so nothing could be decided fleet-wide.

    Raised to callers only by breakers whose ``on_store_error`` is ``"reject"``: it is a
    :class:`CircuitOpenError` (state ``"store_unavailable"``), so code that handles
    rejections handles this too. ``retry_after`` is the time until this process tries
    Redis again. The redis-py error is chained as ``__cause__``.
    """

    def __init__(self, name: str, retry_after: float | None, detail: str) -> None:
        super().__init__(name, "store_unavailable", retry_after)
        self.args = (name, retry_after, detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"circuit {self.name!r}: the store is unavailable ({self.detail})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after, self.detail))


def _attempt_timeout(
    name: str, budget: float, started: bool, cancelled: bool
) -> AttemptTimeoutError:
    """An unpickled AttemptTimeoutError (its flags are keyword-only)."""
    return AttemptTimeoutError(name, budget, started=started, cancelled=cancelled)


class StoreOutageWarning(UserWarning):
    """This process is running calls without the shared breaker: its store's Redis cannot
    be reached and the breaker's ``on_store_error`` is ``"allow"`` (calls run unguarded)
    or ``"local"`` (guarded by this process's own breaker only).

    Issued once per store per outage, at the first call that runs this way, so that a
    mistyped URL is visible even where no logging was configured. Silence it with
    ``warnings.filterwarnings("ignore", category=redbreaker.StoreOutageWarning)``.
    """
