"""The breaker, asyncio driver: the same decisions as :class:`redbreaker.Breaker` (they
live in :class:`~redbreaker._core.BreakerCore`), sent with ``await``.

Nothing here blocks the event loop: every Redis call is awaited, the core's bookkeeping is
synchronous and never spans an await, and no lock is held across one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from .. import _fork
from .._bases import BreakerBase
from .._callables import (
    ITERATING_CODE,
    is_async_generator_function,
    is_generator_function,
    require_async,
)
from .._exceptions import (
    StoreError,
    StoreUnavailableError,
)
from .._iteration import iterate_async
from .._waiting import max_wait_setting
from . import _breaker_orders, _breaker_policies, _breaker_waiting
from ._guard import BreakerLink, Guard, build_guard
from ._permit import Permit, _Acquiring
from ._store import Store

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from typing_extensions import Unpack

    from .._config import Seconds
    from .._core import Outcome, PermitState
    from .._guard_config import GuardConfig, GuardSettings
    from .._state import RecordReply

__all__ = ["Breaker", "Permit"]

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")

# Releases sent for cancelled callers run as tasks of their own (a cancelled task must not
# await anything more); a reference keeps each alive until it is done.
_background: set[asyncio.Task[Any]] = set()


def _in_background(work: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


class Breaker(BreakerBase[Store]):
    """One circuit breaker shared by every process that builds it with the same name; the
    asyncio twin of :class:`redbreaker.Breaker`, with the same arguments and settings.

    Usage::

        store = redbreaker.aio.connect("redis://localhost:6379/0")
        payments = redbreaker.aio.Breaker("payments-api", store=store, failure_threshold=5)

        await payments.call(fetch, url)          # one call

        @payments                                # or every call of a coroutine function
        async def charge(order): ...

        async with payments.acquire() as permit: # or work that spans callbacks
            ...

    Raises:
        ConfigError: an invalid name or setting, naming it (a ``ValueError``).
    """

    _store_type = Store
    _store_hint = "a redbreaker.aio Store (see aio.connect())"

    # One event loop runs every call: the batch needs no lock.
    _batch_lock = contextlib.nullcontext

    # Waiting for admission and the fleet policies' sending live in modules of their own.
    _acquire_waiting = _breaker_waiting.acquire_waiting
    _waiting = _breaker_waiting.waiting
    wait_admitting = _breaker_waiting.wait_admitting
    _would_admit = _breaker_waiting.would_admit
    _acquire_with_own = _breaker_policies.acquire_with_own
    _own_abandoned = _breaker_policies.own_abandoned
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
        # Set when the task renewing the local copy has Redis's answer (see _acquire).
        self._refreshed: asyncio.Event | None = None
        _fork.after_fork_in_child(self)

    def _after_fork_in_child(self) -> None:
        self._own = None  # a forked child is a new reporter with a breaker of its own

    # -- admission -----------------------------------------------------------------------

    def acquire(self, *, max_wait: Seconds | None = 0) -> _Acquiring:
        """Ask for leave to make one call: ``permit = await breaker.acquire()``, or
        ``async with breaker.acquire() as permit:``.

        Args:
            max_wait: how long to wait for the breaker to admit the call: 0 asks once,
                None waits as long as it takes (see :meth:`wait_admitting`); while
                half-open only callers granted a probe slot go on.

        Raises:
            CircuitOpenError: the breaker rejects the call (still, after ``max_wait``);
                ``retry_after`` says when to try again.
            ConfigError: ``max_wait`` is not 0, None or a duration (raised at once).
        """
        if max_wait != 0:
            max_wait_setting(max_wait)
        return _Acquiring(self, max_wait)

    async def _acquire(self) -> Permit:
        if self._quorum and not self._core.fleet_admits_all:
            return await self._acquire_with_own()
        return await self._acquire_now()

    async def _acquire_now(self) -> Permit:
        core = self._core
        if self._cached and self.store.feed_due():
            await self.store.poll_feed()  # a transition published meanwhile counts now
        local = core.admit_without_redis()
        if local is not None:
            return Permit(self, local)
        lane = self._lane
        if lane is None:
            return await self._ask_redis()
        self.store.start_feed()
        role = lane.refresh_role()
        if role == "follow" and self._refreshed is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._refreshed.wait(), lane.follow_wait)
            local = core.admit_without_redis()
            if local is not None:
                return Permit(self, local)
        if role != "lead":
            return await self._ask_redis()
        self._refreshed = asyncio.Event()
        try:
            return await self._ask_redis()
        finally:
            lane.refresh_ended()
            self._refreshed.set()

    async def _ask_redis(self) -> Permit:
        """The acquire script's permit (or the store-error policy's, Redis unreachable)."""
        core = self._core
        heard = core.heard()
        started = core.now()
        args = core.acquire_args()
        # Interrupted (KeyboardInterrupt, a cancellation) before the caller holds its
        # permit: the slot the script may have granted under the token chosen here is
        # freed at once. No line runs after the permit is made, so none can lose it.
        try:
            raw = await self.store.run("acquire", self._keys, args)
            self._local = None  # Redis answers: the shared breaker decides again
            return Permit(self, core.on_acquire_reply(raw, heard, started))
        except StoreUnavailableError as exc:
            return await self._acquire_without_store(exc, started)
        except Exception:
            raise  # Redis said no, or rejected the call: nothing was granted
        except BaseException:
            self._free_slot(core.interrupted_acquire_args(args))
            raise

    def _free_slot(self, args: list[str]) -> None:
        """Release a probe slot a cancelled caller may hold, in a task of its own."""

        async def release() -> None:
            with contextlib.suppress(Exception):
                await self.store.run("record", self._keys, args)

        _in_background(release())

    async def _acquire_without_store(self, exc: StoreUnavailableError, started: float) -> Permit:
        state = self._core.without_store(exc, started)
        if state is not None:
            return Permit(self, state)
        return await self._local_breaker()._acquire()

    # -- outcomes ------------------------------------------------------------------------

    async def _send_record(
        self, permit: PermitState, outcome: Outcome, args: list[str]
    ) -> RecordReply | None:
        core = self._core
        try:
            raw = await self.store.run("record", self._keys, args)
        except StoreUnavailableError:
            core.on_record_unavailable()
            return None  # the store's outage was logged once, when it began
        except StoreError as exc:
            core.on_record_refused(outcome, exc)
            return None
        except BaseException as exc:
            # Cancelled before the outcome reached Redis: a probe's slot must not wait for
            # its lease to expire.
            if not isinstance(exc, Exception) and permit.probe_token:
                self._free_slot(core.release_args(permit))
            raise
        return core.on_record_reply(raw)

    async def flush(self) -> None:
        """Send the successes a cached breaker has counted but not sent yet (one round
        trip when there are any). Snapshots do it first."""
        args = self._core.flush_args()
        if args is not None:
            with contextlib.suppress(StoreUnavailableError, StoreError):
                await self.store.run("record", self._keys, args)

    # Two signatures, not one with a union: mypy cannot infer R through the union (a
    # coroutine function's result came out as Never).
    @overload
    async def call(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    @overload
    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def call(
        self, fn: Callable[P, Awaitable[R]] | Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker and return its result (a plain
        function's result is returned as it is).

        The function's own exceptions pass through unchanged; a cancellation frees a
        probe's slot at once and counts nothing.

        Of an async generator function, the async generator is returned and the permit
        spans its iteration (see :meth:`redbreaker.Breaker.call`); a plain generator
        function is refused (``TypeError``): its items would be produced by blocking calls.

        Raises:
            CircuitOpenError: rejected; ``fn`` did not run.
        """
        code = getattr(fn, "__code__", None)
        if code is None or code.co_flags & ITERATING_CODE:
            if is_async_generator_function(fn):
                return iterate_async(self, fn, args, kwargs)  # type: ignore[arg-type, return-value]
            if is_generator_function(fn):
                raise TypeError(
                    f"{self!r}: call() got the generator function {fn!r}: an async breaker "
                    "guards an async generator function, or use redbreaker.Breaker"
                )
        permit = await self._acquire()
        finishing = False
        try:
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__"):  # is_awaitable(), inlined: every call
                result = await result
            finishing = True
            recording = permit._finish(result=result)
            if recording is not None:
                await recording
        except BaseException as exc:
            await self._ended_by(permit, exc, finishing=finishing)
            raise
        return result

    async def _ended_by(self, permit: Permit, exc: BaseException, *, finishing: bool) -> None:
        """The call (or, ``finishing``, the recording of its result) raised ``exc``. A
        cancelled call records nothing more in its own task: a probe's slot is freed by a
        release in a task of its own."""
        state = permit._state
        if isinstance(exc, Exception):
            recording = None if finishing else permit._finish(exc=exc)
            if recording is not None:
                await recording
            return
        state.settled = True
        own = state.own
        if isinstance(own, Permit):
            state.own = None
            self._own_abandoned(own._state)
        if state.probe_token:
            permit._breaker._free_slot(permit._breaker._core.release_args(state))

    def guard(self, config: GuardConfig | None = None, **settings: Unpack[GuardSettings]) -> Guard:
        """Retry, attempt timeout and fallback around this breaker, as the sync
        :meth:`redbreaker.Breaker.guard` (same settings); attempts are cancelled, not
        abandoned, when they time out.

        Usage::

            @payments.guard(attempt_timeout=2, retry_on=ConnectionError, deadline=5)
            async def charge(order): ...
        """
        link = BreakerLink(
            self, self._acquire, self._core.check_cached_rejection, Permit._finish, self._ended_by
        )
        return build_guard(link, config, dict(settings))

    @overload
    def __call__(
        self, fn: Callable[P, AsyncGenerator[Y, S]]
    ) -> Callable[P, AsyncGenerator[Y, S]]: ...

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    def __call__(
        self, fn: Callable[P, Awaitable[R]] | Callable[P, AsyncGenerator[Y, S]]
    ) -> Callable[P, Awaitable[R]] | Callable[P, AsyncGenerator[Y, S]]:
        """Use the breaker as a decorator of a coroutine function, or of an async
        generator function (the permit spans each iteration: see :meth:`call`).

        Raises:
            TypeError: ``fn`` is neither (use :class:`redbreaker.Breaker`).
        """
        if is_async_generator_function(fn):
            generator_fn = cast("Callable[P, AsyncGenerator[Y, S]]", fn)

            @functools.wraps(generator_fn)
            def iterating(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Y, S]:
                return iterate_async(self, generator_fn, args, kwargs)

            return iterating
        require_async(fn, self, "the decorator")
        coroutine_fn = cast("Callable[P, Awaitable[R]]", fn)

        @functools.wraps(coroutine_fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(coroutine_fn, *args, **kwargs)

        return guarded
