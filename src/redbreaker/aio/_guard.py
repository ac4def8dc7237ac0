"""The guard, asyncio driver: the layers :mod:`redbreaker._guard_core` decides, with
attempt timeouts by ``asyncio.timeout`` (no threads: a timed-out attempt is cancelled,
so it cannot run on abandoned) and retries by tenacity's ``AsyncRetrying``.

Same order as the sync guard: fallback -> breaker -> retry -> per-attempt timeout -> call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import types
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

import tenacity as _t

from .._callables import is_awaitable, refuse_generator, require_async
from .._clock import SystemClock
from .._exceptions import (
    AttemptTimeoutError,
    StoreError,
    StoreUnavailableError,
)
from .._guard_config import GuardConfig, Outcome, guard_config
from .._guard_core import IN_RETRY_LOOP, GuardCall, GuardCore, ReplayedFirst

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

    from ._breaker import Breaker
    from ._permit import Permit

__all__ = ["BreakerLink", "Guard", "GuardedFunction", "build_guard"]

P = ParamSpec("P")
R = TypeVar("R")


class BreakerLink(NamedTuple):
    """What an async guard asks of its breaker beyond the public API, handed over by
    :meth:`redbreaker.aio.Breaker.guard`: the guard reaches into nothing else of the
    breaker or its permits."""

    breaker: Breaker
    acquire: Callable[[], Awaitable[Permit]]
    check_cached_rejection: Callable[[], None]
    # (permit, *, result): settle by a returned value; the record to await, if any.
    finish: Callable[..., Awaitable[object] | None]
    ended_by: Callable[..., Awaitable[None]]  # (permit, exc, *, finishing)


class Guard(GuardCore):
    """An async breaker with retry, attempt timeout and fallback around it; the asyncio
    twin of :class:`redbreaker.Guard`, with the same settings.

    Get one from :meth:`redbreaker.aio.Breaker.guard`. ``await guard.call(fn, ...)``
    returns the value (the fallback's when degraded), ``await guard.outcome(fn, ...)`` an
    :class:`~redbreaker.Outcome` that says which, and ``@guard`` decorates a coroutine
    function keeping its signature. A fallback may be a plain or a coroutine function.
    """

    def __init__(self, link: BreakerLink, config: GuardConfig) -> None:
        breaker = link.breaker
        # One event loop updates the counts: no lock.
        super().__init__(breaker.name, config, breaker.store.clock, contextlib.nullcontext())
        self.breaker = breaker
        self._budgeted = breaker.config.retry_budget is not None
        self._link = link

    def __repr__(self) -> str:
        return f"<redbreaker.aio.Guard of {self.breaker!r}>"

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn`` through fallback, breaker, retry and timeout; return the value."""
        return (await self.outcome(fn, *args, **kwargs)).value

    async def outcome(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Outcome[R]:
        """Like :meth:`call`, but say whether the value is degraded and why.

        Raises:
            TypeError: ``fn`` is not a coroutine function (before anything is counted).
        """
        refuse_generator(fn, self, "call()")
        require_async(fn, self, "call()")
        call = GuardCall()
        try:
            value = await self._through_breaker(call, functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            degraded = self._degraded_outcome(exc, call)
            if is_awaitable(degraded.value):  # a coroutine fallback
                try:
                    value = await degraded.value
                except Exception as fallback_exc:
                    if fallback_exc is exc:
                        raise
                    raise fallback_exc from exc
                degraded = dataclasses.replace(degraded, value=value)
            return degraded
        return self._good_outcome(value, call)

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> GuardedFunction[P, R]:
        """Decorate a coroutine function: every call goes through the guard.

        Raises:
            TypeError: ``fn`` is not a coroutine function (use the sync guard).
        """
        refuse_generator(fn, self, "the decorator")
        require_async(fn, self, "the decorator")
        return GuardedFunction(self, fn)

    # -- breaker -------------------------------------------------------------------------

    async def _through_breaker(self, call: GuardCall, fn: Callable[[], Awaitable[R]]) -> R:
        try:
            permit = await self._link.acquire()
        except (StoreUnavailableError, StoreError):
            call.store_failed = True
            raise
        finishing = False
        try:
            call.permit = permit
            self._begin(call, permit.is_probe)
            if call.max_attempts == 1:
                result = await self._attempt(call, fn)
            else:
                result = await self._with_retries(call, fn)
            finishing = True
            recording = self._link.finish(permit, result=result)
            if recording is not None:
                await recording
        except BaseException as exc:
            await self._link.ended_by(permit, exc, finishing=finishing)
            raise
        return result

    # -- retry ---------------------------------------------------------------------------

    async def _with_retries(self, call: GuardCall, fn: Callable[[], Awaitable[R]]) -> R:
        try:
            value = await self._attempt(call, fn)
        except Exception as exc:
            first = self._replay_first(exc, None)
            if first is None:
                raise
        else:
            first = self._replay_first(None, value)
            if first is None:
                return value
        sleep = functools.partial(self._sleep_if_granted, call) if self._budgeted else self._sleep
        policy = self._retry_policy(call, budgeted=self._budgeted)
        retrying = _t.AsyncRetrying(sleep=sleep, **policy)
        result: R = await retrying(self._attempt_after, first, call, fn)
        return result

    async def _attempt_after(
        self, first: ReplayedFirst, call: GuardCall, fn: Callable[[], Awaitable[R]]
    ) -> R:
        """Attempt 1 replayed from ``first`` (it already ran), then real attempts."""
        return first.replay() if not first.replayed else await self._attempt(call, fn)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        clock = self._clock
        if isinstance(clock, SystemClock):
            await asyncio.sleep(seconds)
        else:
            clock.sleep(seconds)  # a test clock moves instead of sleeping
            await asyncio.sleep(0)

    # -- one attempt, with its timeout ---------------------------------------------------

    async def _attempt(self, call: GuardCall, fn: Callable[[], Awaitable[R]]) -> R:
        if call.attempts:
            if call.budget_exhausted:
                return self._budget_spent(call)  # type: ignore[no-any-return]
            if self._budgeted:
                # The budget was asked before the backoff: an open this process heard while
                # it slept (its feed, another call's rejection) still stops the retry.
                self._link.check_cached_rejection()
            elif self.config.recheck_breaker:
                await self._recheck()
        budget = self._budget(call)
        call.attempts += 1
        started = self._clock.monotonic()
        # A nested guard inside this attempt leaves retrying to this one.
        nested = IN_RETRY_LOOP.set(True) if call.max_attempts > 1 else None
        try:
            if budget is None:
                result = await fn()
            elif _TIMEOUT is not None:
                # A timeout can cancel an attempt only where it suspends: the attempt runs
                # here up to its first suspension, and only then is the timer set, with
                # what is left of the budget. One that never suspends (a cache hit) needs
                # no timer at all.
                attempt = fn()
                if type(attempt) is types.CoroutineType:
                    try:
                        suspended_on = attempt.send(None)
                    except StopIteration as done:
                        result = done.value
                    else:
                        resumed = _Resumed(attempt, suspended_on)
                        result = await self._within(resumed, budget, started)
                else:
                    result = await self._within(attempt, budget, started)
            else:  # pragma: no cover (Python 3.10)
                result = await _within(budget, fn, self._name)
        except BaseException as exc:
            call.last_error = exc
            duration = budget if isinstance(exc, AttemptTimeoutError) and budget else None
            self._attempted(call, duration or self._clock.monotonic() - started, exc)
            raise
        finally:
            if nested is not None:
                IN_RETRY_LOOP.reset(nested)
        call.last_error, call.last_value = None, result
        self._attempted(call, self._clock.monotonic() - started, None)
        return result

    async def _sleep_if_granted(self, call: GuardCall, seconds: float) -> None:
        """Before a retry's backoff, ask the fleet's retry budget (its round trip also
        stands in for the recheck): refused, the call ends without sleeping."""
        if await self._retry_granted(call):
            self._say_retry(call, call.retry_note)
            await self._sleep(seconds)
        else:
            call.budget_exhausted = True

    async def _retry_granted(self, call: GuardCall) -> bool:
        """Ask the fleet's retry budget for one retry (one round trip).

        Raises:
            CircuitOpenError: the breaker opened meanwhile: no more retries.
        """
        self._link.check_cached_rejection()
        permit: Permit = call.permit
        try:
            return await permit._breaker._ask_retry(permit._state) == "retry"
        except StoreUnavailableError as exc:
            self._recheck_unavailable(exc, self.breaker.config.on_store_error)
            return True

    async def _within(self, attempt: Awaitable[R], budget: float, started: float) -> R:
        """``await attempt`` under ``asyncio.timeout``, cancelled once ``budget`` seconds
        have passed since ``started`` (AttemptTimeoutError then); the dependency's own
        TimeoutError passes through as it is."""
        assert _TIMEOUT is not None
        timeout = _TIMEOUT(budget - (self._clock.monotonic() - started))
        try:
            async with timeout:
                return await attempt
        except TimeoutError:
            if not timeout.expired():
                raise  # the dependency's own TimeoutError
            raise AttemptTimeoutError(self._name, budget, started=True, cancelled=True) from None

    async def _recheck(self) -> None:
        """Stop retrying if the shared breaker opened meanwhile (by any process)."""
        self._link.check_cached_rejection()
        try:
            snapshot = await self.breaker.snapshot()
        except StoreUnavailableError as exc:
            self._recheck_unavailable(exc, self.breaker.config.on_store_error)
            return
        self._recheck_snapshot(snapshot)


# asyncio.timeout (3.11+) cancels the attempt at its deadline; 3.10 waits on a task.
_TIMEOUT = getattr(asyncio, "timeout", None)


class _Resumed(Generic[R]):
    """A coroutine that already ran to its first suspension (it is waiting on
    ``suspended_on``), awaited from there: what ``await`` would have done had it started
    the coroutine itself. What the task sends or throws in (a result, a cancellation)
    goes to the coroutine; what it yields goes to the task."""

    __slots__ = ("_coroutine", "_suspended_on")

    def __init__(self, coroutine: types.CoroutineType[Any, Any, R], suspended_on: object) -> None:
        self._coroutine = coroutine
        self._suspended_on = suspended_on

    def __await__(self) -> Generator[Any, Any, R]:
        coroutine, yielded = self._coroutine, self._suspended_on
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # a cancellation, or what the task threw in
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


async def _within(
    budget: float, fn: Callable[[], Awaitable[R]], name: str
) -> R:  # pragma: no cover (Python 3.10)
    """``await fn()`` as a task, cancelled after ``budget`` seconds (AttemptTimeoutError
    then)."""
    task = asyncio.ensure_future(fn())
    done, _ = await asyncio.wait({task}, timeout=budget)
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise AttemptTimeoutError(name, budget, started=True, cancelled=True)


class GuardedFunction(Generic[P, R]):
    """A coroutine function decorated by an async guard: await it as before, or await
    ``.outcome(...)``."""

    def __init__(self, guard: Guard, fn: Callable[P, Awaitable[R]]) -> None:
        self.guard = guard
        self.__wrapped__ = fn
        functools.update_wrapper(self, fn)
        # Frameworks ask whether a handler is a coroutine function: the answer stays yes.
        if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+
            inspect.markcoroutinefunction(self)
        else:  # asyncio.iscoroutinefunction's marker before 3.12
            self._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.guard.call(self.__wrapped__, *args, **kwargs)

    async def outcome(self, *args: P.args, **kwargs: P.kwargs) -> Outcome[R]:
        """Await it and say whether the value is degraded (see :class:`Outcome`)."""
        return await self.guard.outcome(self.__wrapped__, *args, **kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:  # noqa: ANN401
        # Decorating a method: bind like a function would.
        if instance is None:
            return self
        return GuardedFunction(self.guard, types.MethodType(self.__wrapped__, instance))


def build_guard(link: BreakerLink, config: GuardConfig | None, settings: dict[str, Any]) -> Guard:
    """An async guard for ``link.breaker``: ``config`` with keyword ``settings`` applied."""
    return Guard(link, guard_config(config, settings))
