"""What a transition is told to: the log, then the breaker's ``on_transition`` hooks. No
I/O here; both drivers' cores call it for the transitions their scripts made."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ._config import hooks_setting
from ._state import State, Transition

__all__ = ["LOUD", "TransitionHook", "announce", "logger", "transition_hooks"]

TransitionHook = Callable[[Transition], None]
"""A callable run in the process whose script made a transition."""

logger = logging.getLogger("redbreaker")
# A library leaves output to the application's logging setup.
logger.addHandler(logging.NullHandler())

LOUD = frozenset({State.OPEN, State.FORCED_OPEN})
"""States that reject calls: entering one is logged as a warning."""


def transition_hooks(
    on_transition: TransitionHook | Iterable[TransitionHook],
) -> tuple[TransitionHook, ...]:
    """``on_transition`` as a tuple of plain callables.

    Raises:
        ConfigError: an item is not callable, or is a coroutine function.
    """
    return hooks_setting("on_transition", on_transition)


def announce(transition: Transition, hooks: Iterable[TransitionHook]) -> None:
    """Log ``transition`` and run each hook with it; a hook that raises is logged."""
    level = (
        logging.WARNING
        if transition.current in LOUD or transition.reason.startswith("would_trip:")
        else logging.INFO
    )
    previous = transition.previous.value if transition.previous else "unreadable"
    logger.log(
        level,
        "circuit %r: %s -> %s (%s)"
        if transition.scope == "fleet"
        else "circuit %r, this process's own breaker: %s -> %s (%s)",
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
            "scope": transition.scope,
        },
    )
    for hook in hooks:
        try:
            hook(transition)
        except Exception:
            # A broken hook must never break the guarded call or hide its result.
            logger.exception("redbreaker transition hook %r failed", hook)
