"""The breaker: admission, outcome reporting and operator orders for one dependency.

Data flows one way: :class:`BreakerConfig` -> breaker -> a Lua function (one FCALL, or
one EVALSHA where Functions are not used) -> a reply decoded in ``_state`` -> local hooks
for the transitions this call made.

:class:`_BreakerCore` holds every line that does no I/O (argument building, exception and
result classification, the cached-rejection check, hook dispatch, the decision of whether
an outcome needs a round trip at all). :class:`Breaker` adds only the Redis calls, so an
asyncio twin is a thin subclass that awaits the same calls.

Round trips per call:
    closed, success, no failure streak      1 (acquire)
    closed, success after failures / slow   2 (acquire + record)
    closed, failure                         2 (acquire + record)
    rejected while open                     1 for the first rejection, then 0 until the
                                            deadline Redis gave has passed (cached locally)
    half-open probe                         2 (acquire + record)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from . import _fork
from ._cache import LOCAL_STATES, Batch, HeldOpen, LocalCopy, flush_at_exit
from ._callables import is_awaitable, refuse_result, require_sync
from ._config import BreakerConfig, ExceptionMatcher, Seconds, seconds_setting
from ._exceptions import (
    AttemptRejectedError,
    AttemptTimeoutError,
    CircuitOpenError,
    ConfigError,
    PermitError,
    StoreError,
    StoreUnavailableError,
)
from ._guard import Guard, GuardConfig, build_guard
from ._keys import breaker_keys, check_name
from ._state import (
    AcquireReply,
    RecordReply,
    Snapshot,
    State,
    Transition,
    decode_acquire,
    decode_control,
    decode_record,
    decode_snapshot,
)
from ._store import Store, connect
from ._timeout import AttemptRunner

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Breaker", "LeaseHold", "Permit", "TransitionHook"]

P = ParamSpec("P")
R = TypeVar("R")
TransitionHook = Callable[[Transition], None]
"""A callable run in the process whose script made a transition."""

Outcome = Literal["success", "failure", "ignore", "release"]

logger = logging.getLogger("redbreaker")
# A library leaves output to the application's logging setup.
logger.addHandler(logging.NullHandler())
_LOUD = frozenset({State.OPEN, State.FORCED_OPEN})


def _matches(matcher: ExceptionMatcher | None, exc: BaseException) -> bool:
    if matcher is None:
        return False
    if isinstance(matcher, (type, tuple)):
        return isinstance(exc, matcher)
    return bool(matcher(exc))


class _BreakerCore:
    """Everything a breaker does that is not I/O. Strictly private."""

    def __init__(
        self,
        name: str,
        *,
        store: Store,
        config: BreakerConfig | None,
        on_transition: TransitionHook | Iterable[TransitionHook],
        settings: dict[str, Any],
    ) -> None:
        self.name = check_name(name)
        if not isinstance(store, Store):
            raise ConfigError("store", f"expected a Store (see connect()), got {store!r}")
        unknown = set(settings) - BreakerConfig.setting_names()
        if unknown:
            raise ConfigError(
                sorted(unknown)[0],
                "is not a breaker setting; settings: "
                + ", ".join(sorted(BreakerConfig.setting_names())),
            )
        if config is not None and not isinstance(config, BreakerConfig):
            raise ConfigError("config", f"expected a BreakerConfig, got {config!r}")
        self.config = replace(config or BreakerConfig(), **settings)
        self.store = store
        self._keys = breaker_keys(store.prefix, self.name)
        self._hooks = (on_transition,) if callable(on_transition) else tuple(on_transition)
        for hook in self._hooks:
            if not callable(hook):
                raise ConfigError("on_transition", f"{hook!r} is not callable")
        self._slow_after = self.config.slow_call_seconds
        self._window_ms = round(self.config.window_seconds * 1000)
        self._random = random.random
        self._runner: AttemptRunner | None = None
        self._runner_lock = threading.Lock()
        self._local: Breaker | None = None
        if self.config.on_store_error == "local":
            _embedded_store(store)  # fails now, not in an outage, if fakeredis is missing
        self._cached = self.config.consistency == "cached"
        self._max_staleness = seconds_setting("max_staleness", self.config.max_staleness) or 0.0
        self._flush_interval = (
            seconds_setting("flush_interval", self.config.flush_interval) or 0.0
        )
        self._copy: LocalCopy | None = None
        self._held_open: HeldOpen | None = None
        self._batch = Batch()
        _fork.after_fork_in_child(self)

    def _after_fork_in_child(self) -> None:
        """A forked child starts with an empty batch (the parent sends its own successes:
        inherited, they would be counted once per child) and asks Redis afresh."""
        self._batch = Batch()
        self._copy = None
        self._held_open = None
        self._runner_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<redbreaker.{type(self).__name__} {self.name!r} prefix={self.store.prefix!r}>"

    # -- building script arguments ------------------------------------------------------

    def _args(self, *extra: str) -> list[str]:
        override = self.store.clock.server_ms()
        return [
            "" if override is None else str(override),
            self._keys.channel,
            self.name,
            repr(self._random()),
            self.config.script_config,
            *extra,
        ]

    def _control_args(self, order: str, duration: Seconds | None) -> list[str]:
        seconds = seconds_setting("duration", duration, optional=True)
        return self._args(order, "" if seconds is None else str(max(1, round(seconds * 1000))))

    # -- admission -----------------------------------------------------------------------

    def _check_cached_rejection(self) -> None:
        cached = self.store.cached_rejection(self._keys.state, self._max_staleness)
        if cached is not None:
            raise CircuitOpenError(self.name, cached[1], cached[0])

    def _admission(self, reply: AcquireReply) -> None:
        """Fire the reply's hooks; raise if it rejects the call."""
        self._fire(reply.transitions)
        if reply.verdict == "reject":
            retry_after = None if reply.retry_after_ms < 0 else reply.retry_after_ms / 1000
            if retry_after is not None and reply.state in _LOUD:
                # The deadline is the server's; until it passes nothing can admit us.
                self.store.cache_rejection(
                    self._keys.state, reply.retry_after_ms, reply.state.value
                )
            raise CircuitOpenError(self.name, reply.state.value, retry_after)

    # -- outcomes ------------------------------------------------------------------------

    def _classify_exception(self, exc: BaseException) -> Outcome:
        if not isinstance(exc, Exception):
            return "release"
        if isinstance(exc, AttemptTimeoutError):
            return "failure"  # whatever record_on says: the dependency did not answer in time
        if isinstance(exc, AttemptRejectedError):
            return "ignore"  # local saturation, not the dependency's fault
        if _matches(self.config.ignore_on, exc):
            return "ignore"
        if _matches(self.config.record_on, exc):
            return "failure"
        return "ignore"

    def _classify_result(self, result: object) -> Outcome:
        check = self.config.failure_result
        return "failure" if check is not None and check(result) else "success"

    def _record_args(
        self,
        permit: _PermitState,
        outcome: Outcome,
        slow: bool | None = None,
        *,
        keep_lease: bool = False,
    ) -> list[str] | None:
        """The record script's arguments, or None when Redis has nothing to learn.

        ``slow`` overrides the measured duration (a timed-out call is slow by definition).
        ``keep_lease``: a probe's outcome is known but its call still runs (abandoned).
        """
        if self._slow_after is None or outcome not in ("success", "failure"):
            slow = False
        elif slow is None:
            slow = self.store.clock.monotonic() - permit.started >= self._slow_after
        quiet = (
            (outcome == "success" and not slow and permit.streak_at_admission == 0)
            or outcome == "release"
            or (outcome == "ignore" and not permit.counted)
        ) and not permit.probe_token
        # A cached breaker's locally admitted call was not counted in Redis yet.
        own_call = 0 if permit.counted or outcome in ("ignore", "release") else 1
        if quiet:
            # Nothing for Redis to learn now: a plain success was counted when admitted
            # (strict), or joins the batch (cached), which goes out once it is due.
            if not self._cached:
                return None
            batched = self._batch.add(permit, own_call, self._flush_interval, self._now())
            if batched is None:
                return None
            generation, incarnation, calls = batched
            return self._args(
                "flush", str(generation), "", "0", "", incarnation, str(calls)
            )
        riding = 0
        if self._cached:
            riding = self._batch.take(permit.generation, permit.incarnation)
        calls = riding + own_call
        args = self._args(
            outcome,
            str(permit.generation),
            permit.probe_token,
            "1" if slow else "0",
            "" if permit.admitted_at_ms is None else str(permit.admitted_at_ms),
            permit.incarnation,
            str(calls),
        )
        if keep_lease:
            args.append("1")
        return args

    def _now(self) -> float:
        return self.store.clock.monotonic()

    # -- the local copy (cached consistency) -----------------------------------------------

    def _admit_locally(self) -> _PermitState | None:
        """A permit from the local copy, or None when Redis must decide.

        Raises:
            CircuitOpenError: the breaker is forced open without a deadline, as this
                process learned from Redis or from the feed (held until a transition is
                heard or max_staleness passes).
        """
        heard = self.store.heard(self.name)
        now = self._now()
        copy = self._copy
        if copy is not None and (
            now - copy.taken_at >= self._max_staleness or heard != copy.heard
        ):
            copy = self._copy = None  # a transition was pushed, or the copy is too old
        if copy is None:
            self._check_held_open(heard, now)
            return None
        return _PermitState(
            copy.generation,
            "",
            None,
            copy.streak,
            now,
            incarnation=copy.incarnation,
            counted=False,
        )

    def _check_held_open(self, heard: int, now: float) -> None:
        held = self._held_open
        if held is not None and (
            held.heard != heard or now - held.taken_at >= self._max_staleness
        ):
            held = self._held_open = None
        if held is None:
            if self.store.last_event(self.name) != (heard, State.FORCED_OPEN.value, -1):
                return
            held = self._held_open = HeldOpen(heard, now)
        raise CircuitOpenError(self.name, State.FORCED_OPEN.value, None)

    def _keep_copy(self, reply: AcquireReply, heard: int, taken_at: float) -> None:
        if (
            reply.verdict == "reject"
            and reply.state is State.FORCED_OPEN
            and reply.retry_after_ms < 0
            and not reply.transitions
        ):
            self._held_open = HeldOpen(heard, taken_at)
        if reply.verdict == "admit" and reply.state in LOCAL_STATES and not reply.transitions:
            self._copy = LocalCopy(
                reply.generation, reply.incarnation, reply.consecutive_failures, heard, taken_at
            )
        else:
            self._copy = None

    def _learn(self, reply: RecordReply) -> None:
        """A cached breaker's copy follows what its own records reveal."""
        copy = self._copy
        if copy is None:
            return
        if reply.status == "stale" or reply.transitions or reply.generation != copy.generation:
            # Redis moved on (or lost the breaker): ask it again at the next call.
            self._copy = None
        else:
            copy.streak = reply.consecutive_failures

    def _fire(self, transitions: Iterable[Transition]) -> None:
        for transition in transitions:
            self.store.forget_rejection(self._keys.state)
            level = (
                logging.WARNING
                if transition.current in _LOUD or transition.reason.startswith("would_trip:")
                else logging.INFO
            )
            previous = transition.previous.value if transition.previous else "unreadable"
            logger.log(
                level,
                "circuit %r: %s -> %s (%s)",
                transition.name,
                previous,
                transition.current.value,
                transition.reason,
                extra={
                    "event": "transition",
                    "breaker": transition.name,
                    "from_state": previous,
                    "to_state": transition.current.value,
                    "reason": transition.reason,
                    "generation": transition.generation,
                },
            )
            for hook in self._hooks:
                try:
                    hook(transition)
                except Exception:
                    # A broken hook must never break the guarded call or hide its result.
                    logger.exception("redbreaker transition hook %r failed", hook)


class _PermitState:
    """What a permit remembers between admission and its outcome."""

    __slots__ = ("admitted_at_ms", "counted", "generation", "incarnation", "offline",
                 "probe_token", "settled", "started", "streak_at_admission")

    def __init__(
        self,
        generation: int,
        probe_token: str,
        admitted_at_ms: int | None,
        streak: int,
        started: float,
        *,
        incarnation: str = "",
        offline: bool = False,
        counted: bool = True,
    ) -> None:
        # counted: Redis counted the call when it admitted it; a cached breaker's local
        # admission was not counted yet, so its outcome (or a batch) must carry it.
        self.counted = counted
        self.incarnation = incarnation
        # offline: admitted without Redis (on_store_error="allow"); its outcome goes nowhere.
        self.offline = offline
        self.generation = generation
        self.probe_token = probe_token
        self.admitted_at_ms = admitted_at_ms
        self.streak_at_admission = streak
        self.started = started
        self.settled = False


class LeaseHold:
    """Keeps a probe's lease while its attempt runs on abandoned (it timed out, or its
    caller was interrupted): the caller has its answer and the breaker its outcome, but the
    dependency is still serving the probe, so no other probe may take its slot until it
    ends (or its lease expires). An :class:`AbandonWatcher` for the attempt runner."""

    __slots__ = ("_breaker", "_lock", "_owed", "_permit", "_running")

    def __init__(self, breaker: Breaker, permit: _PermitState) -> None:
        self._breaker = breaker
        self._permit = permit
        self._lock = threading.Lock()
        self._running = False
        self._owed = False  # the outcome went out keeping the lease: ended() frees it

    def abandoned(self) -> None:
        with self._lock:
            self._running = True

    def keep(self) -> bool:
        """True when the attempt still runs: the outcome must leave the lease in place."""
        with self._lock:
            self._owed = self._running
            return self._owed

    def ended(self) -> None:
        with self._lock:
            self._running = False
            owed, self._owed = self._owed, False
        if owed:
            self._breaker._record(self._permit, "release")


class Permit:
    """Leave to make one call through a breaker; report how it went exactly once.

    Get one from :meth:`Breaker.acquire`. Call :meth:`success`, :meth:`failure` or
    :meth:`release`, or use it as a context manager: leaving the block normally is a
    success, an exception is classified by the breaker's config (and re-raised).

    A permit that is never settled counts as a call that did not fail; if it was a probe,
    its slot returns after ``probe_lease``.
    """

    __slots__ = ("_breaker", "_state")

    def __init__(self, breaker: Breaker, state: _PermitState) -> None:
        self._breaker = breaker
        self._state = state

    @property
    def is_probe(self) -> bool:
        """True when this call is one of the half-open probes."""
        return bool(self._state.probe_token)

    @property
    def generation(self) -> int:
        """The breaker generation the call was admitted under."""
        return self._state.generation

    def success(self) -> None:
        """The call succeeded."""
        self._settle("success")

    def failure(self, exc: BaseException | None = None) -> None:
        """The call failed. With ``exc``, the config's classification decides whether it
        counts as a failure, is ignored, or (a non-``Exception``) only releases the permit."""
        self._settle("failure" if exc is None else self._breaker._classify_exception(exc))

    def release(self) -> None:
        """The call ended without an outcome (cancelled): count nothing, free a probe slot."""
        self._settle("release")

    def _settle(self, outcome: Outcome) -> None:
        if self._state.settled:
            raise PermitError(f"this permit of circuit {self._breaker.name!r} is already settled")
        self._state.settled = True
        self._breaker._record(self._state, outcome)

    def _finish(
        self,
        *,
        exc: BaseException | None = None,
        result: object = None,
        hold: LeaseHold | None = None,
    ) -> None:
        # The breaker that admitted the call records it: during an outage with
        # on_store_error="local" that is the process's own breaker, not the shared one.
        self._breaker._settle(self._state, exc=exc, result=result, hold=hold)

    def _lease_hold(self) -> LeaseHold | None:
        """A hold on this probe's lease for an attempt that may be abandoned; None when
        the call is not a probe."""
        return LeaseHold(self._breaker, self._state) if self._state.probe_token else None

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state.settled:
            return
        if exc is None:
            self.success()
        else:
            self.failure(exc)


class Breaker(_BreakerCore):
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

    def __init__(
        self,
        name: str,
        *,
        store: Store,
        config: BreakerConfig | None = None,
        on_transition: TransitionHook | Iterable[TransitionHook] = (),
        **settings: Any,  # noqa: ANN401 (checked against BreakerConfig's fields at once)
    ) -> None:
        super().__init__(
            name, store=store, config=config, on_transition=on_transition, settings=settings
        )
        if self._cached:
            flush_at_exit(self)

    def acquire(self) -> Permit:
        """Ask for leave to make one call.

        Raises:
            CircuitOpenError: the breaker rejects the call; ``retry_after`` says when to
                try again.
        """
        if self._cached:
            self.store.poll_feed()  # a transition published meanwhile counts from now on
        self._check_cached_rejection()
        if self._cached:
            local = self._admit_locally()
            if local is not None:
                return Permit(self, local)
            self.store.start_feed()
            heard = self.store.heard(self.name)
        started = self.store.clock.monotonic()
        try:
            raw = self.store.run("acquire", self._keys, self._args())
        except StoreUnavailableError as exc:
            return self._acquire_without_store(exc, started)
        self._local = None  # Redis answers: the shared breaker decides again
        reply = decode_acquire(self.name, raw)
        state = _PermitState(
            reply.generation,
            reply.probe_token,
            reply.now_ms,
            reply.consecutive_failures,
            started,
            incarnation=reply.incarnation,
        )
        try:
            if self._cached:
                self._keep_copy(reply, heard, started)
            self._admission(reply)
            return Permit(self, state)
        except CircuitOpenError:
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt) with a probe granted and no permit handed
            # out: nobody would free its slot before the lease expires.
            if state.probe_token:
                self._record(state, "release")
            raise

    def _acquire_without_store(self, exc: StoreUnavailableError, started: float) -> Permit:
        policy = self.config.on_store_error
        if policy == "reject":
            raise exc
        if policy == "allow":
            return Permit(self, _PermitState(0, "", 0, 0, started, offline=True))
        local = self._local
        if local is None:
            # A breaker of this process alone, same config and same Lua, on an embedded
            # Redis: it guards the dependency until the shared one answers again.
            local = self._local = Breaker(
                self.name,
                store=_embedded_store(self.store),
                config=replace(self.config, on_store_error="reject"),
                on_transition=self._hooks,
            )
        return local.acquire()

    def _record(
        self,
        permit: _PermitState,
        outcome: Outcome,
        *,
        slow: bool | None = None,
        keep_lease: bool = False,
    ) -> RecordReply | None:
        args = (
            None
            if permit.offline
            else self._record_args(permit, outcome, slow, keep_lease=keep_lease)
        )
        if args is None:
            return None
        try:
            reply = decode_record(self.name, self.store.run("record", self._keys, args))
        except StoreUnavailableError:
            self._copy = None
            return None  # the store's outage was logged once, when it began
        except StoreError as exc:
            # Bookkeeping must never mask the call's own result or exception.
            logger.warning(
                "circuit %r: could not record a %s: %s: %s",
                self.name,
                outcome,
                type(exc).__name__,
                exc,
                extra={"event": "record_failed", "breaker": self.name, "outcome": outcome},
            )
            return None
        if self._cached:
            self._learn(reply)
        self._fire(reply.transitions)
        return reply

    def flush(self) -> None:
        """Send the successes a cached breaker has counted but not sent yet (one round
        trip when there are any). Snapshots do it first; exiting processes do it too."""
        batched = self._batch.drain()
        if batched is None:
            return
        generation, incarnation, calls = batched
        args = self._args("flush", str(generation), "", "0", "", incarnation, str(calls))
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

    def guard(self, config: GuardConfig | None = None, **settings: Any) -> Guard:  # noqa: ANN401
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
        return build_guard(self, config, settings)

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` through the breaker and return its result.

        The function's own exceptions pass through unchanged.

        Raises:
            CircuitOpenError: rejected; ``fn`` did not run.
        """
        require_sync(fn, self, "call()")
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            permit._finish(exc=exc)
            raise
        if is_awaitable(result):
            permit.release()  # nothing ran: count nothing
            raise refuse_result(fn, result)
        permit._finish(result=result)
        return result

    def _settle(
        self,
        permit: _PermitState,
        *,
        exc: BaseException | None = None,
        result: object = None,
        hold: LeaseHold | None = None,
    ) -> None:
        """Report how the call of ``permit`` ended: by ``exc``, or returning ``result``.

        ``hold``: the call's attempt may still run, abandoned; a probe's lease then stays
        until it ends.
        """
        permit.settled = True
        if exc is None:
            self._record(permit, self._classify_result(result))
            return
        outcome = self._classify_exception(exc)
        keep_lease = hold is not None and hold.keep()
        if keep_lease and outcome == "release":
            return  # nothing to count; the lease goes when the abandoned attempt ends
        # A timed-out call is slow by definition, whatever slow_call_duration says.
        slow = True if isinstance(exc, AttemptTimeoutError) else None
        self._record(permit, outcome, slow=slow, keep_lease=keep_lease)


    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Use the breaker as a decorator: every call of ``fn`` goes through it.

        Raises:
            AsyncCallError: ``fn`` is a coroutine function (use ``redbreaker.aio``).
        """
        require_sync(fn, self, "the decorator")

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(fn, *args, **kwargs)

        return guarded

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The breaker as Redis holds it now (one round trip; changes nothing but the
        sending of a cached breaker's counted successes)."""
        self.flush()
        reply = self.store.run("inspect", self._keys, self._args())
        return decode_snapshot(self.name, reply, self._window_ms)

    @property
    def state(self) -> State:
        """The stored state (one round trip)."""
        return self.snapshot().state

    # -- operator orders, fleet-wide -------------------------------------------------------

    def _order(self, order: str, duration: Seconds | None) -> State:
        reply = decode_control(
            self.name, self.store.run("control", self._keys, self._control_args(order, duration))
        )
        self.store.forget_rejection(self._keys.state)
        self._held_open = None  # this process's own order: ask Redis again
        self._copy = None
        self._fire(reply.transitions)
        return reply.state

    def force_open(self, duration: Seconds | None = None) -> State:
        """Reject every call fleet-wide, for ``duration`` or until another order."""
        return self._order("force_open", duration)

    def force_close(self, duration: Seconds | None = None) -> State:
        """Admit every call fleet-wide and count nothing, for ``duration`` or until another
        order."""
        return self._order("force_close", duration)

    def metrics_only(self, duration: Seconds | None = None) -> State:
        """Admit every call fleet-wide, count, and report would-trips instead of opening,
        for ``duration`` or until another order."""
        return self._order("metrics_only", duration)

    def reset(self) -> State:
        """Back to closed with empty counts and no open backoff, fleet-wide."""
        return self._order("reset", None)



_embedded_stores: dict[int, Store] = {}
_embedded_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: _fork.reinit_lock(_embedded_lock))


def _embedded_store(shared: Store) -> Store:
    """The in-process store that ``on_store_error="local"`` breakers of ``shared`` fall
    back to: one per shared store, created on first need."""
    with _embedded_lock:
        store = _embedded_stores.get(id(shared))
        if store is None:
            store = connect("memory://", prefix=shared.prefix, clock=shared.clock)
            _embedded_stores[id(shared)] = store
        return store
