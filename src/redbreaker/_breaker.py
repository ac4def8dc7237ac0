"""The breaker, sync driver: admission, outcome reporting and operator orders for one
dependency, over the sans-I/O :class:`~redbreaker._core.BreakerCore`.

Data flows one way: :class:`BreakerConfig` -> the core builds a Lua function's arguments ->
one FCALL (or EVALSHA) sent here -> the core decodes the reply, fires local hooks for the
transitions this call made, and hands back a permit or a rejection. Everything in this
module is I/O or the objects that carry it (permits, the attempt threads).

Round trips per call:
    closed, success, no failure streak      1 (acquire)
    closed, success after failures / slow   2 (acquire + record)
    closed, failure                         2 (acquire + record)
    rejected while open                     1 for the first rejection, then 0 until the
                                            deadline Redis gave has passed or
                                            max_staleness has (cached locally)
    half-open probe                         2 (acquire + record)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import threading
import weakref
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from . import _breaker_orders, _breaker_policies, _breaker_waiting, _fork
from ._bases import BreakerBase
from ._callables import ASYNC_CODE, ITERATING_CODE, is_generator_function, require_sync
from ._core import Outcome, PermitState, TransitionHook
from ._exceptions import (
    AsyncCallError,
    StoreError,
    StoreUnavailableError,
)
from ._guard import BreakerLink, Guard, GuardConfig, build_guard
from ._iteration import iterate
from ._permit import LeaseHold, Permit
from ._store import Store
from ._timeout import AttemptRunner

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Unpack

    from ._config import Seconds
    from ._guard_config import GuardSettings
    from ._state import RecordReply, State

__all__ = ["Breaker", "LeaseHold", "Permit", "TransitionHook"]

P = ParamSpec("P")
R = TypeVar("R")
# What call() looks at more closely: a coroutine function (refused), a generator function
# (its permit spans the iteration).
_SLOW_CODE = ASYNC_CODE | ITERATING_CODE


class Breaker(BreakerBase[Store]):
    """One circuit breaker shared by every process that builds it with the same name.

    Args:
        name: the dependency this breaker guards, e.g. ``"payments-api"`` (see
            :func:`redbreaker.check_name` for what a name may contain).
        store: where the breaker lives (:func:`redbreaker.connect`).
        config: a :class:`BreakerConfig`; keyword ``settings`` override its fields.
        on_transition: callables run with each :class:`Transition` this process's calls
            make (never for transitions other processes make; watch those with
            :meth:`Store.transitions`).
        **settings: any :class:`BreakerConfig` field, e.g. ``failure_threshold=3``.

    Raises:
        ConfigError: an invalid name or setting, naming it (a ``ValueError``).

    Usage::

        store = redbreaker.connect("redis://localhost:6379/0")
        payments = redbreaker.Breaker("payments-api", store=store, failure_threshold=5)

        payments.call(requests.get, url)       # one call

        @payments                              # or every call of a function
        def charge(order): ...

        with payments.acquire() as permit:     # or work that spans callbacks
            ...
    """

    _store_type = Store
    _store_hint = "a Store (see connect())"

    _batch_lock = threading.Lock

    # Waiting for admission and the fleet policies' sending live in modules of their own.
    _acquire_waiting = _breaker_waiting.acquire_waiting
    _waiting = _breaker_waiting.waiting
    wait_admitting = _breaker_waiting.wait_admitting
    _would_admit = _breaker_waiting.would_admit
    _acquire_with_own = _breaker_policies.acquire_with_own
    _settle_own = _breaker_policies.settle_own
    _ask_retry = _breaker_policies.ask_retry
    # Reading and operator orders, fleet-wide.
    snapshot = _breaker_orders.snapshot
    _order = _breaker_orders.order
    force_open = _breaker_orders.force_open
    force_close = _breaker_orders.force_close
    metrics_only = _breaker_orders.metrics_only
    reset = _breaker_orders.reset

    def _built(self) -> None:
        self._refreshed = threading.Condition()
        self._runner: AttemptRunner | None = None
        self._runner_lock = threading.Lock()
        _fork.after_fork_in_child(self)
        if self._cached:
            _flush_at_exit.add(self)

    def _after_fork_in_child(self) -> None:
        self._core._forget_local_knowledge()
        self._own = None  # a forked child is a new reporter with a breaker of its own
        self._runner_lock = threading.Lock()
        self._refreshed = threading.Condition()

    def acquire(self, *, max_wait: Seconds | None = 0) -> Permit:
        """Ask for leave to make one call.

        Args:
            max_wait: how long to wait for the breaker to admit the call: 0 asks once,
                None waits as long as it takes. A waiting caller sleeps until the
                breaker's deadline or a transition heard on the feed, plus a jitter
                (see :meth:`wait_admitting`); while half-open only callers granted a
                probe slot go on.

        Raises:
            CircuitOpenError: the breaker rejects the call (still, after ``max_wait``);
                ``retry_after`` says when to try again.
            ConfigError: ``max_wait`` is not 0, None or a duration.
        """
        if max_wait != 0:
            return self._acquire_waiting(max_wait)
        if self._quorum and not self._core.fleet_admits_all:
            return self._acquire_with_own()
        return self._acquire_now()

    def _acquire_now(self) -> Permit:
        core = self._core
        if self._cached:
            self.store.poll_feed()  # a transition published meanwhile counts from now on
        local = core.admit_without_redis()
        if local is not None:
            return Permit(self, local)
        lane = self._lane
        if lane is None:
            return self._ask_redis()
        self.store.start_feed()
        with self._refreshed:
            role = lane.refresh_role()
            if role == "follow":
                self._refreshed.wait_for(lambda: not lane.refresh_in_flight, lane.follow_wait)
        if role == "follow":
            local = core.admit_without_redis()
            if local is not None:
                return Permit(self, local)
        if role != "lead":
            return self._ask_redis()
        try:
            return self._ask_redis()
        finally:
            with self._refreshed:
                lane.refresh_ended()
                self._refreshed.notify_all()

    def _ask_redis(self) -> Permit:
        """The acquire script's permit (or the store-error policy's, Redis unreachable)."""
        core = self._core
        heard = core.heard()
        started = core.now()
        args = core.acquire_args()
        # Interrupted (KeyboardInterrupt, a cancellation) before the caller holds its
        # permit: the slot the script may have granted under the token chosen here is
        # freed at once. No line runs after the permit is made, so none can lose it.
        try:
            raw = self.store.run("acquire", self._keys, args)
            self._local = None  # Redis answers: the shared breaker decides again
            return Permit(self, core.on_acquire_reply(raw, heard, started))
        except StoreUnavailableError as exc:
            return self._acquire_without_store(exc, started)
        except Exception:
            raise  # Redis said no, or rejected the call: nothing was granted
        except BaseException:
            self._free_slot(core.interrupted_acquire_args(args))
            raise

    def _free_slot(self, args: list[str]) -> None:
        """Send a release for a probe slot an interrupted caller may hold (best effort)."""
        with contextlib.suppress(Exception):
            self.store.run("record", self._keys, args)

    def _acquire_without_store(self, exc: StoreUnavailableError, started: float) -> Permit:
        state = self._core.without_store(exc, started)
        if state is not None:
            return Permit(self, state)
        return self._local_breaker().acquire()

    def _record(
        self,
        permit: PermitState,
        outcome: Outcome,
        *,
        slow: bool | None = None,
    ) -> RecordReply | None:
        if permit.own is not None:
            self._settle_own(permit, outcome=outcome)
        return self._send_record(permit, outcome, self._core.record_args(permit, outcome, slow))

    def _send_record(
        self,
        permit: PermitState,
        outcome: Outcome,
        args: list[str] | None,
        *,
        keep_lease: bool = False,
    ) -> RecordReply | None:
        if args is None:
            return None
        core = self._core
        try:
            raw = self.store.run("record", self._keys, args)
        except StoreUnavailableError:
            core.on_record_unavailable()
            return None  # the store's outage was logged once, when it began
        except StoreError as exc:
            core.on_record_refused(outcome, exc)
            return None
        except BaseException as exc:
            # Interrupted before the outcome reached Redis (or while its reply was read):
            # a probe's slot must not wait for its lease to expire.
            if not isinstance(exc, Exception) and permit.probe_token and not keep_lease:
                self._free_slot(core.release_args(permit))
            raise
        return core.on_record_reply(raw)

    def flush(self) -> None:
        """Send the successes a cached breaker has counted but not sent yet (one round
        trip when there are any). Snapshots do it first; exiting processes do it too."""
        args = self._core.flush_args()
        if args is not None:
            with contextlib.suppress(StoreUnavailableError, StoreError):
                self.store.run("record", self._keys, args)

    def _attempt_runner(self) -> AttemptRunner:
        runner = self._runner
        if runner is None:
            with self._runner_lock:
                runner = self._runner
                if runner is None:
                    runner = self._runner = AttemptRunner(
                        self.name,
                        max_threads=self.config.attempt_threads,
                        max_abandoned=self.config.max_abandoned_attempts,
                    )
        return runner

    @property
    def abandoned_attempts(self) -> int:
        """This process's timed-out attempts of this breaker that are still running."""
        return 0 if self._runner is None else self._runner.abandoned

    def guard(self, config: GuardConfig | None = None, **settings: Unpack[GuardSettings]) -> Guard:
        """Retry, attempt timeout and fallback around this breaker, composed in one order:
        fallback -> breaker -> retry -> timeout -> call.

        Args:
            config: a :class:`GuardConfig`; keyword ``settings`` override its fields.
            **settings: any :class:`GuardConfig` field, e.g. ``attempt_timeout=2``,
                ``retry_on=(ConnectionError,)``, ``fallback=redbreaker.fallback_value([])``.

        Usage::

            @payments.guard(attempt_timeout=2, retry_on=ConnectionError, deadline=5)
            def charge(order): ...
        """
        link = BreakerLink(
            self,
            self._attempt_runner,
            self._core.check_cached_rejection,
            Permit._lease_hold,
            Permit._finish,
            Permit._ended_by,
        )
        return build_guard(link, config, dict(settings))

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the breaker and return its result.

        The function's own exceptions pass through unchanged. Of a generator function,
        the generator is returned and the permit spans its iteration: taken at the first
        ``next()`` (a rejection is raised there), a success when it is exhausted, its
        exception classified as a call's, nothing counted when it is closed early.

        Raises:
            CircuitOpenError: rejected; ``fn`` did not run.
        """
        code = getattr(fn, "__code__", None)  # require_sync's fast case, inlined: every call
        if code is None or code.co_flags & _SLOW_CODE:
            require_sync(fn, self, "call()")
            if is_generator_function(fn):
                return iterate(self, fn, args, kwargs)  # type: ignore[arg-type, return-value]
        lane = self._lane
        if lane is not None:
            self.store.poll_feed()  # a transition published meanwhile counts from now on
            started = self._core.now()
            copy = lane.admit(started)
            if copy is not None:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    Permit(self, lane.permit(copy, started))._ended_by(exc, finishing=False)
                    raise
                if hasattr(result, "__await__") or not lane.succeeded(copy, started, result):
                    self._finish_call(Permit(self, lane.permit(copy, started)), result, fn)
                return result
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            permit._ended_by(exc, finishing=False)
            raise
        self._finish_call(permit, result, fn)
        return result

    @staticmethod
    def _finish_call(permit: Permit, result: object, fn: object) -> None:
        """Settle ``permit`` of a call of ``fn`` that returned ``result``."""
        try:
            permit._finish(result=result, origin=fn)
        except AsyncCallError:
            permit.release()  # nothing ran: count nothing
            raise
        except BaseException as exc:
            permit._ended_by(exc, finishing=True)
            raise

    def _settle(
        self,
        permit: PermitState,
        *,
        exc: BaseException | None = None,
        result: object = None,
        hold: LeaseHold | None = None,
    ) -> None:
        """Report how the call of ``permit`` ended: by ``exc``, or returning ``result``.

        ``hold``: the call's attempt may still run, abandoned; a probe's lease then stays
        until it ends.
        """
        if permit.own is not None:
            self._settle_own(permit, exc=exc, result=result)
        keep_lease = exc is not None and hold is not None and hold.keep()
        outcome, args = self._core.finish_args(
            permit, exc=exc, result=result, keep_lease=keep_lease
        )
        self._send_record(permit, outcome, args, keep_lease=keep_lease)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Use the breaker as a decorator: every call of ``fn`` goes through it (of a
        generator function, every iteration: see :meth:`call`).

        Raises:
            AsyncCallError: ``fn`` is a coroutine function (use ``redbreaker.aio``).
        """
        require_sync(fn, self, "the decorator")

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(fn, *args, **kwargs)

        return guarded

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The stored state (one round trip)."""
        return self.snapshot().state


# Cached breakers whose counted successes must be sent when the process exits normally.
_flush_at_exit: weakref.WeakSet[Breaker] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    # Counted successes would be lost with the process; one round trip each sends them.
    for breaker in list(_flush_at_exit):
        with contextlib.suppress(Exception):
            breaker.flush()
