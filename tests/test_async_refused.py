"""The sync API refuses async work it cannot run, loudly, before anything is counted.

Before: ``@breaker`` on an ``async def``, ``breaker.call(async_fn)`` and ``guard(async_fn)``
returned a coroutine that never ran and counted a success (and Python warned that it was
never awaited).
"""

from __future__ import annotations

import functools
import gc
import warnings
from typing import Any

import pytest

import redbreaker
from redbreaker import AsyncCallError, Breaker


async def fetch(x: int = 1) -> int:
    return x


class AsyncCallable:
    async def __call__(self) -> int:
        return 1


def returns_coroutine() -> Any:
    return fetch()


class Pending:
    """An awaitable that is not a coroutine (a future, a task, a library's handle)."""

    def __await__(self) -> Any:
        yield


def returns_future() -> Any:
    return Pending()


@pytest.fixture
def breaker(store: redbreaker.Store) -> Breaker:
    return Breaker("dep", store=store, failure_threshold=1)


def _untouched(breaker: Breaker) -> None:
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures) == (0, 0)
    assert snap.state is redbreaker.State.CLOSED


def test_error_is_a_type_error_naming_the_async_api() -> None:
    error = AsyncCallError("x")
    assert isinstance(error, TypeError)
    assert isinstance(error, redbreaker.RedbreakerError)
    assert "redbreaker.aio" in str(error)


@pytest.mark.parametrize(
    "fn",
    [fetch, functools.partial(fetch, 2), AsyncCallable()],
    ids=["async-def", "partial", "async-callable-object"],
)
def test_call_refuses_a_coroutine_function_before_admission(
    breaker: Breaker, fn: Any
) -> None:
    with pytest.raises(AsyncCallError, match=r"redbreaker\.aio"):
        breaker.call(fn)
    _untouched(breaker)


def test_decorating_a_coroutine_function_fails_at_once(breaker: Breaker) -> None:
    with pytest.raises(AsyncCallError, match="coroutine function fetch"):
        breaker(fetch)
    with pytest.raises(AsyncCallError):
        breaker.guard()(fetch)
    _untouched(breaker)


def test_guard_refuses_even_with_a_fallback(breaker: Breaker) -> None:
    guard = breaker.guard(fallback=redbreaker.fallback_value("degraded"))
    with pytest.raises(AsyncCallError):
        guard.call(fetch)
    with pytest.raises(AsyncCallError):
        guard.outcome(fetch)
    assert guard.degraded_counts == {}
    _untouched(breaker)


@pytest.mark.parametrize("fn", [returns_coroutine, returns_future], ids=["coroutine", "future"])
@pytest.mark.parametrize("through", ["call", "guard", "guard-with-timeout"])
def test_a_call_returning_an_awaitable_is_refused_not_counted(
    breaker: Breaker, fn: Any, through: str
) -> None:
    """A plain function that returns an awaitable: refused, its permit released (no success,
    no failure), and no "never awaited" warning (the coroutine is closed)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if through == "call":
            run: Any = breaker.call
        elif through == "guard":
            run = breaker.guard(fallback=redbreaker.fallback_value(0)).call
        else:
            run = breaker.guard(attempt_timeout=5).call
        with pytest.raises(AsyncCallError, match="returned an awaitable"):
            run(fn)
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]
    snap = breaker.snapshot()
    assert (snap.window_failures, snap.consecutive_failures) == (0, 0)
    assert snap.state is redbreaker.State.CLOSED


def test_probe_returning_an_awaitable_frees_its_slot(
    store: redbreaker.Store, clock: redbreaker.ManualClock
) -> None:
    breaker = Breaker("dep", store=store, failure_threshold=1, recovery_timeout=1)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    clock.advance(1)
    with pytest.raises(AsyncCallError):
        breaker.call(returns_coroutine)
    assert breaker.snapshot().probes_in_flight == 0
    assert breaker.call(lambda: "probe") == "probe"
    assert breaker.state is redbreaker.State.CLOSED


def test_sync_functions_and_methods_still_pass(breaker: Breaker) -> None:
    class Client:
        def get(self) -> str:
            return "ok"

    assert breaker.call(Client().get) == "ok"
    assert breaker.call(functools.partial(str, 5)) == "5"
    assert breaker(len)([1, 2]) == 2


async def _async_predicate(value: object) -> bool:
    return False


@pytest.mark.parametrize(
    "settings",
    [
        {"on_transition": _async_predicate},
        {"failure_result": _async_predicate},
        {"record_on": _async_predicate},
        {"ignore_on": _async_predicate},
    ],
    ids=lambda s: next(iter(s)),
)
def test_coroutine_hooks_and_predicates_are_config_errors(
    store: redbreaker.Store, settings: dict[str, Any]
) -> None:
    """A coroutine function where a plain one runs inline would never run (a hook) or be
    always true (a predicate: every result a failure): refused at construction."""
    with pytest.raises(redbreaker.ConfigError, match=next(iter(settings))):
        Breaker("dep", store=store, **settings)


@pytest.mark.parametrize("name", ["retry_result", "retry_on", "on_attempt", "fallback"])
def test_coroutine_guard_settings_are_config_errors(breaker: Breaker, name: str) -> None:
    with pytest.raises(redbreaker.ConfigError, match=name):
        breaker.guard(**{name: _async_predicate})
