"""Is the store reachable? One answer per store and process, with edges reported once.

After a store call fails for lack of Redis, its node is degraded (the server; on a
cluster, the primary of the breaker's slot): calls to it skip Redis (and follow their
breaker's ``on_store_error``) until a backoff with jitter has passed, then one call tries
it again. The store is degraded from the first node's failure until a call answers with
no node degraded (:mod:`redbreaker._reach` decides). Each edge is logged and sent to the
store's hooks exactly once, never once per call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis
from redis.backoff import AbstractBackoff, EqualJitterBackoff
from redis.exceptions import (
    ChildDeadlockedError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from ._exceptions import StoreError, StoreOutageWarning, StoreUnavailableError
from ._reach import Reachability

# What a script call may raise that the library maps (RedisClusterException is not a
# RedisError: a cluster client raises it for a cluster it cannot use).
SCRIPT_CALL_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    ChildDeadlockedError,
    RedisClusterException,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator

    from ._clock import Clock

__all__ = [
    "FEED_BACKOFF",
    "REFUSED",
    "SCRIPT_CALL_ERRORS",
    "STORE_BACKOFF",
    "UNAVAILABLE",
    "ScriptRoute",
    "StoreEvent",
    "StoreHealth",
    "cannot_fcall",
    "library_errors",
    "no_such_function",
    "wait_after",
]

logger = logging.getLogger("redbreaker")

REFUSED: tuple[type[BaseException], ...] = (
    redis.AuthenticationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
)
"""redis-py errors that mean the credentials are wrong: a configuration error, not an
outage (checked before :data:`UNAVAILABLE`, which would otherwise match them)."""

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # refused, reset, auth refused, loading
    redis.TimeoutError,  # a store call outlived the socket timeout (CLIENT PAUSE, a stall)
    ReadOnlyError,  # talking to a replica after a failover
    # maxmemory reached under noeviction (or nothing left to evict): no write is taken
    # until memory frees up, so nothing can be decided. Not a refusal of the script.
    redis.exceptions.OutOfMemoryError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    # Not a RedisError: a forked child's pool found its fork lock held (redbreaker releases
    # it at the fork; a client's other pools may still hit it).
    ChildDeadlockedError,
)
"""redis-py errors that mean "Redis cannot answer now", as opposed to "Redis said no"."""

# Waits after failures in a row double from the base to the cap, each drawn from the upper
# half of its ceiling (equal jitter): processes that lost Redis together do not come back
# together, and none waits less than half as long as the doubling says.
STORE_BACKOFF: AbstractBackoff = EqualJitterBackoff(cap=5.0, base=0.1)
"""Between tries of a degraded store."""
FEED_BACKOFF: AbstractBackoff = EqualJitterBackoff(cap=2.0, base=0.05)
"""Between subscriptions of a transition feed (both drivers)."""


def wait_after(backoff: AbstractBackoff, failures: int) -> float:
    """Seconds to wait after ``failures`` (>= 1) failures in a row: the base after one."""
    # Past 2**16 every cap is long reached, and past 2**1023 redis-py's float overflows.
    return backoff.compute(min(max(failures - 1, 0), 16))


@dataclass(frozen=True)
class StoreEvent:
    """A change of a store's reachability, as its ``on_store_event`` hooks see it.

    Attributes:
        kind: ``"store_degraded"`` (Redis stopped answering) or ``"store_recovered"``.
        prefix: the store's key prefix.
        error: what failed, for ``store_degraded``; None for ``store_recovered``.
        outage_seconds: for ``store_recovered``, how long the outage lasted.
    """

    kind: Literal["store_degraded", "store_recovered"]
    prefix: str
    error: str | None
    outage_seconds: float | None


class StoreHealth:
    """The reachability of one store in this process, node by node. Thread-safe.

    Each method takes the ``node`` a call went to: ``""`` for a standalone (or Sentinel's)
    server, a primary's ``host:port`` on a cluster (see :mod:`redbreaker._reach`, which
    decides; this class holds the lock, reads the clock, logs and runs the hooks).
    """

    def __init__(
        self, prefix: str, clock: Clock, hooks: tuple[Callable[[StoreEvent], None], ...]
    ) -> None:
        self._prefix = prefix
        self._clock = clock
        self._hooks = hooks
        self._lock = threading.Lock()
        self._backoff = STORE_BACKOFF
        self._reach = Reachability(lambda failures: wait_after(self._backoff, failures))
        self._outage_error = ""
        self._warned = False  # a StoreOutageWarning went out for this outage

    def after_fork(self) -> None:
        """In a forked child: a lock another thread of the parent held stays held here."""
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        """True from a store call that failed for lack of Redis (on any primary of a
        cluster) until one answers with no node degraded."""
        return self._reach.degraded

    def wait_left(self, node: str = "") -> float:
        """Seconds until ``node`` may be tried again; 0 when it may be tried now.

        The caller that gets 0 while it is degraded is the one that tries: the next try
        is moved on at once, so a thousand callers do not all try a dead Redis together.
        """
        if not self._reach.down(node):
            return 0.0
        with self._lock:
            return self._reach.claim_try(node, self._clock.monotonic())

    def wait_left_peek(self, node: str = "") -> float:
        """Seconds until ``node`` may be tried again, without claiming the try."""
        if not self._reach.down(node):
            return 0.0
        return self._reach.wait_left(node, self._clock.monotonic())

    def failed(self, exc: BaseException, node: str = "") -> None:
        """A store call on ``node`` failed for lack of Redis."""
        with self._lock:
            if not self._reach.failed(node, self._clock.monotonic()):
                return  # the store was degraded already: its edge was reported
            detail = f"{type(exc).__name__}: {exc}"
            self._outage_error = detail
        logger.warning(
            "store %r degraded: %s; breakers follow their on_store_error policy",
            self._prefix,
            detail,
            extra={"event": "store_degraded", "prefix": self._prefix, "error": detail},
        )
        self._emit(StoreEvent("store_degraded", self._prefix, detail, None))

    def before_call(self, name: str, node: str = "") -> None:
        """Let a store call on ``node`` through, or refuse it without I/O while the
        backoff after its failure has not passed.

        Raises:
            StoreUnavailableError: Redis failed recently and is not to be tried yet.
        """
        wait = self.wait_left(node)
        if wait > 0:
            raise StoreUnavailableError(name, wait, "not retried yet after an error")

    def answered(self, script: str, reply: object, node: str = "") -> list[Any]:
        """Take in a script's reply: ``node`` is reachable, and the reply is a list.

        Raises:
            StoreError: the reply is not a list (not one of our scripts answered).
        """
        self.succeeded(node)
        if not isinstance(reply, list):
            raise StoreError(f"the {script} script replied {reply!r}, not a list")
        return reply

    def succeeded(self, node: str = "") -> None:
        """A store call on ``node`` answered."""
        if not self._reach.degraded:
            return
        with self._lock:
            outage = self._reach.succeeded(node, self._clock.monotonic())
            if outage is None:
                return  # no outage, or another node is still degraded
            self._warned = False
        logger.warning(
            "store %r recovered after %.3fs; shared breaker state is used again",
            self._prefix,
            outage,
            extra={"event": "store_recovered", "prefix": self._prefix, "outage": outage},
        )
        self._emit(StoreEvent("store_recovered", self._prefix, None, outage))

    def serving(self, owners: Collection[str]) -> None:
        """The slot table now names ``owners`` as the cluster's primaries: forget the
        degraded nodes it does not (a dead primary a failover replaced)."""
        if not self._reach.degraded:
            return
        with self._lock:
            gone = self._reach.forget_all_but(owners)
        if gone:
            logger.info(
                "store %r: %s no longer serve slots; forgotten",
                self._prefix,
                ", ".join(gone),
                extra={"event": "store_nodes_forgotten", "prefix": self._prefix},
            )

    def unguarded(self, name: str, policy: str) -> None:
        """A call of breaker ``name`` runs without the shared breaker (its
        ``on_store_error`` is ``policy``): the first time in an outage, warn.

        A warning, not only a log record: a library's log is silent until the application
        configures logging, and a mistyped URL must not quietly leave every call unguarded.
        """
        with self._lock:
            if self._warned:
                return
            self._warned = True
            error = self._outage_error or "not reachable"
        how = (
            "run UNGUARDED (on_store_error='allow')"
            if policy == "allow"
            else "are guarded by this process's own breaker only (on_store_error='local')"
        )
        message = (
            f"redbreaker: the Redis of store {self._prefix!r} cannot be reached ({error}); "
            f"calls of breaker {name!r} and of every other breaker on this store {how} "
            "until it answers. `redbreaker doctor --url URL` checks a connection."
        )
        _warn_at_caller(message)

    def script_error(self, exc: BaseException, script: str, name: str, node: str = "") -> Exception:
        """The library's exception for a script call that raised ``exc`` (one of
        :data:`SCRIPT_CALL_ERRORS`), after taking in what it says of reachability. Both
        drivers raise it ``from exc``."""
        reason = exc
        if isinstance(exc, RedisClusterException) and isinstance(exc.__cause__, Exception):
            reason = exc.__cause__  # no node could be reached: an outage, not a refusal
        if isinstance(reason, REFUSED):
            # Wrong credentials are a configuration error, not an outage: no policy may
            # quietly run every call unguarded because of them.
            self.succeeded(node)
            return StoreError(f"Redis refused the credentials: {type(reason).__name__}: {reason}")
        if isinstance(reason, UNAVAILABLE):
            self.failed(reason, node)
            return StoreUnavailableError(
                name, self.wait_left_peek(node), f"{type(exc).__name__}: {exc}"
            )
        self.succeeded(node)  # it answered: reachable, but it said no
        return StoreError(f"Redis refused the {script} script: {exc}")

    def _emit(self, event: StoreEvent) -> None:
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("redbreaker store hook %r failed", hook)


def _warn_at_caller(message: str) -> None:
    """Warn as from the first frame outside redbreaker: the application's call site.

    ``warn_explicit`` with a registry of its own: Python's default filter shows a warning
    once per text and place, and the next outage, with the same text, must be shown too.
    """
    frame = sys._getframe(1)
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).startswith(
        "redbreaker"
    ):
        frame = frame.f_back
    warnings.warn_explicit(
        message,
        StoreOutageWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=str(frame.f_globals.get("__name__", "")),
        registry={},
    )


@contextlib.contextmanager
def library_errors(doing: str, prefix: str) -> Iterator[None]:
    """redis-py errors of a call that is not a script (a SCAN, a SUBSCRIBE), as the
    library's own, for both drivers: no raw redis-py exception reaches a caller."""
    try:
        yield
    except RedisClusterException as exc:
        # Not a RedisError: raised from a connection error when no node could be reached
        # (an outage), else a cluster the client cannot use.
        detail = f"{doing}: {type(exc).__name__}: {exc}"
        cause = exc.__cause__
        if isinstance(cause, UNAVAILABLE) and not isinstance(cause, REFUSED):
            raise StoreUnavailableError(prefix, None, detail) from exc
        raise StoreError(detail) from exc
    except REFUSED as exc:
        raise StoreError(f"{doing}: Redis refused the credentials: {exc}") from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(prefix, None, f"{doing}: {type(exc).__name__}: {exc}") from exc
    except redis.RedisError as exc:
        raise StoreError(f"{doing}: {type(exc).__name__}: {exc}") from exc


class ScriptRoute:
    """How a store calls its scripts: FCALL of the library while the server allows it,
    then EVALSHA for good (Redis < 7, an ACL without FCALL or FUNCTION LOAD).

    The drivers send what this says and hand it the errors they get."""

    __slots__ = ("functions",)

    def __init__(self, *, functions: bool) -> None:
        self.functions = functions

    def after_fcall_error(self, exc: redis.ResponseError) -> Literal["load", "evalsha"]:
        """An FCALL failed: load the library and call again, or use EVALSHA from now on.

        Raises:
            redis.ResponseError: ``exc``, an error of the script itself.
        """
        if no_such_function(exc):
            return "load"  # never loaded, or lost (FUNCTION FLUSH, a restart, a new node)
        if cannot_fcall(exc):
            self.functions = False
            return "evalsha"
        raise exc

    def after_load_error(self, exc: redis.ResponseError) -> None:
        """FUNCTION LOAD failed: scripts will do, if it was refused.

        Raises:
            redis.ResponseError: ``exc``, another error.
        """
        if not cannot_fcall(exc):
            raise exc
        self.functions = False


def no_such_function(exc: redis.ResponseError) -> bool:
    """The server lacks the library (never loaded, FUNCTION FLUSH, a restart)."""
    return "function not found" in str(exc).lower()


def cannot_fcall(exc: redis.ResponseError) -> bool:
    """The server has no Functions, or this user may not call or load them."""
    text = str(exc).lower()
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "'fcall'" in text or "'function|load'" in text
    return "unknown command" in text and ("'fcall'" in text or "'function'" in text)
