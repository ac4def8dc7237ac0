"""Generator functions through a breaker: the permit spans the iteration, not the call.

Calling a generator function runs none of its body, so a breaker that counted that call
would record a success for work not yet done, and miss the failures raised while the
items are produced. Here the permit is taken at the first ``next()`` (a rejection is
raised there, before the body runs), and settled when the iteration ends: exhausted is a
success, an exception is classified as a call's would be, and a generator closed early
(``close()``/``aclose()``, or collected after a ``break``) counts nothing but
frees a probe's slot, as an interrupted call does. Sends and throws reach the inner
generator as they would without the breaker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator

    from ._breaker import Breaker
    from .aio._breaker import Breaker as AioBreaker

__all__ = ["iterate", "iterate_async"]


def iterate(
    breaker: Breaker,
    fn: Callable[..., Generator[Any, Any, Any]],
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> Generator[Any, Any, Any]:
    """``fn(*args, **kwargs)``'s items, through ``breaker``; returns what it returns."""
    permit = breaker.acquire()
    try:
        result = yield from fn(*args, **kwargs)
    except BaseException as exc:
        permit._ended_by(exc, finishing=False)
        raise
    breaker._finish_call(permit, result, fn)
    return result


async def iterate_async(
    breaker: AioBreaker,
    fn: Callable[..., AsyncGenerator[Any, Any]],
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> AsyncGenerator[Any, Any]:
    """``fn(*args, **kwargs)``'s items, through the asyncio ``breaker``."""
    permit = await breaker._acquire()
    try:
        inner = fn(*args, **kwargs)
        try:
            item = await inner.__anext__()
            while True:
                try:
                    sent = yield item
                except GeneratorExit:
                    await inner.aclose()
                    raise
                except BaseException as exc:  # thrown in by the consumer: the inner one's
                    item = await inner.athrow(exc)
                else:
                    item = await inner.asend(sent)
        except StopAsyncIteration:
            pass
    except GeneratorExit:
        # Closed early (aclose, or the loop finalizing it): awaiting is allowed here, so the
        # probe's slot is freed now, not by a task of its own as for a cancellation.
        await permit.release()
        raise
    except BaseException as exc:
        await breaker._ended_by(permit, exc, finishing=False)
        raise
    recording = permit._finish(result=None)
    if recording is not None:
        await recording
