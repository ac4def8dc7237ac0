"""What the APIs accept as work: the sync API plain callables, never coroutines; the
asyncio API coroutine functions; generator functions only where the permit can span the
iteration (a breaker, not a guard). No I/O here."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from ._exceptions import AsyncCallError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ASYNC_CODE",
    "ITERATING_CODE",
    "is_async_generator_function",
    "is_awaitable",
    "is_generator_function",
    "refuse_generator",
    "refuse_result",
    "require_async",
    "require_sync",
]

ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
ITERATING_CODE = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
_NOT_FOR_A_GUARD = (
    "a guard retries and times out calls, and a generator's items can be neither replayed "
    "nor bounded by one attempt timeout; decorate the generator function with the breaker "
    "itself (@breaker), whose permit spans the iteration"
)


def _either(test: Callable[[object], bool], fn: object) -> bool:
    """``test`` of ``fn``, or of its ``__call__`` (a callable object's method)."""
    return test(fn) or test(getattr(fn, "__call__", None))  # noqa: B004 (the method)


def _describe(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def require_sync(fn: Callable[..., object], owner: object, verb: str) -> None:
    """Raise :class:`AsyncCallError` if ``fn`` is a coroutine function (or an object whose
    ``__call__`` is one): calling it would only build a coroutine. ``owner`` and ``verb``
    say where, in the message only (nothing is formatted when ``fn`` is fine).

    Cheap for what is called most (a function or a bound method: one flag test); other
    callables (partials, callable objects) take inspect's slower look."""
    code = getattr(fn, "__code__", None)
    if code is not None and not code.co_flags & ASYNC_CODE:
        return
    if _either(inspect.iscoroutinefunction, fn):
        raise AsyncCallError(f"{owner!r}: {verb} got the coroutine function {_describe(fn)}")


def is_generator_function(fn: object) -> bool:
    """True for a generator function (or an object whose ``__call__`` is one)."""
    return _either(inspect.isgeneratorfunction, fn)


def is_async_generator_function(fn: object) -> bool:
    """True for an async generator function (or an object whose ``__call__`` is one)."""
    return _either(inspect.isasyncgenfunction, fn)


def refuse_generator(fn: Callable[..., object], owner: object, verb: str) -> None:
    """Raise ``TypeError`` if ``fn`` is a generator function: a guard cannot retry or
    time out its items. Cheap for a plain function (one flag test)."""
    code = getattr(fn, "__code__", None)
    if code is not None and not code.co_flags & ITERATING_CODE:
        return
    if is_generator_function(fn) or is_async_generator_function(fn):
        raise TypeError(
            f"{owner!r}: {verb} got the generator function {_describe(fn)}: " + _NOT_FOR_A_GUARD
        )


def require_async(fn: Callable[..., object], owner: object, verb: str) -> None:
    """Raise ``TypeError`` unless ``fn`` is a coroutine function: an async guard cannot time
    out or cancel a plain function (it would block the event loop), so it refuses one
    before anything is counted."""
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & inspect.CO_COROUTINE:
        return
    if _either(inspect.iscoroutinefunction, fn):
        return
    raise TypeError(
        f"{owner!r}: {verb} takes coroutine functions; {_describe(fn)} is not one (the sync "
        "redbreaker guard runs plain functions)"
    )


def is_awaitable(result: object) -> bool:
    """True for a coroutine, a future, a task: anything a sync call cannot have finished.
    One attribute look-up, cheap enough for every call's result."""
    return hasattr(result, "__await__")


def refuse_result(fn: object, result: object) -> AsyncCallError:
    """The error for a call that returned an awaitable; a coroutine is closed first, so
    Python does not warn that it was never awaited."""
    close = getattr(result, "close", None)
    if inspect.iscoroutine(result) and close is not None:
        close()
    return AsyncCallError(f"{_describe(fn)} returned an awaitable ({type(result).__name__})")
