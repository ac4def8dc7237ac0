"""What the sync API accepts as work: plain callables, never coroutines. No I/O here."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from ._exceptions import AsyncCallError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ASYNC_CODE", "is_awaitable", "refuse_result", "require_async", "require_sync"]

ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


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
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (the method, not callable())
    ):
        raise AsyncCallError(f"{owner!r}: {verb} got the coroutine function {_describe(fn)}")


def require_async(fn: Callable[..., object], owner: object, verb: str) -> None:
    """Raise ``TypeError`` unless ``fn`` is a coroutine function: an async guard cannot time
    out or cancel a plain function (it would block the event loop), so it refuses one
    before anything is counted."""
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & inspect.CO_COROUTINE:
        return
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (the method, not callable())
    ):
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
