"""How one setting's value is checked: a duration, a count, a ratio, a plain callable, hooks,
an exception matcher. Each returns the value in the form the library uses, or raises a
:class:`ConfigError` that names the setting. Shared by every config of the library."""

from __future__ import annotations

import inspect
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "count_setting",
    "hooks_setting",
    "matcher_setting",
    "plain_callable_setting",
    "ratio_setting",
    "seconds_setting",
]

# Longer is surely a mistake, and ms counts past ~1e17 reach Redis in float notation.
_MAX_SECONDS = 10 * 365 * 86_400.0


def seconds_setting(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` in seconds if it is a valid duration (None too when optional), else raise."""
    if value is None and optional:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be seconds as a number or a timedelta, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be a finite number of seconds > 0, got {value!r}")
    if value < 0.001:
        raise ConfigError(name, f"must be at least 1 ms (timing is kept in ms), got {value!r}")
    if value > _MAX_SECONDS:
        raise ConfigError(name, f"must be at most 10 years ({_MAX_SECONDS:.0f} s), got {value!r}")
    return float(value)


def count_setting(
    name: str, value: object, *, optional: bool = False, minimum: int = 1
) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an int, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
    return value


def ratio_setting(name: str, value: object, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number in (0, 1], got {value!r}")
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ConfigError(name, f"must be in (0, 1], got {value!r}")
    return float(value)


def plain_callable_setting(name: str, value: object, *, what: str = "callable") -> None:
    """``value`` must be callable and run inline: a coroutine function would only build a
    coroutine, never awaited, whose truth is always True (every result a failure)."""
    if not callable(value):
        raise ConfigError(name, f"must be {what}, got {value!r}")
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 (the method, not callable())
    ):
        raise ConfigError(
            name, f"must be a plain function, not the coroutine function {value!r}: it runs "
            "inline, in the sync and the async driver alike"
        )


def hooks_setting(
    name: str, value: Callable[..., object] | Iterable[Callable[..., object]]
) -> tuple[Any, ...]:
    """``value`` (one callable or several) as a tuple of plain callables.

    Raises:
        ConfigError: an item is not callable, or is a coroutine function.
    """
    hooks = (value,) if callable(value) else tuple(value)
    for hook in hooks:
        if not callable(hook):
            raise ConfigError(name, f"{hook!r} is not callable")
        plain_callable_setting(name, hook)
    return hooks


def matcher_setting(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, type) and issubclass(value, BaseException):
        return
    if isinstance(value, tuple) and value and all(
        isinstance(v, type) and issubclass(v, BaseException) for v in value
    ):
        return
    if callable(value) and not isinstance(value, (type, tuple)):
        plain_callable_setting(name, value, what="a predicate")
        return
    raise ConfigError(
        name, f"must be an exception type, a tuple of them, or a predicate, got {value!r}"
    )
