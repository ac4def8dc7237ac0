"""Forks of this process, for what a forked child must not take over from its parent.

Threads do not survive ``fork()``, sockets would be shared with the parent, and a lock
that another thread of the parent held at that instant stays held in the child forever.
So objects that own any of these either compare :func:`generation` with the one they were
made in and start afresh when it moved, or are registered with :func:`after_fork_in_child`
and reset in the child before any of its code runs (a worker forked by gunicorn's
``preload_app`` from a master whose threads were using breakers, a multiprocessing
``fork`` pool).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "after_fork_in_child", "generation", "reinit_lock"]

logger = logging.getLogger("redbreaker")

_forks = [0]


class ForkAware(Protocol):
    """An object with state a forked child must not inherit as it is."""

    def _after_fork_in_child(self) -> None:
        """Run in the child, in its only thread, right after ``fork()``."""


_owners: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def generation() -> int:
    """How many forks lie between the first process and this one."""
    return _forks[0]


def after_fork_in_child(owner: ForkAware) -> None:
    """Have ``owner._after_fork_in_child()`` run in every forked child while it lives."""
    _owners.add(owner)


def reinit_lock(lock: object) -> None:
    """Release ``lock`` (a ``threading.Lock`` or ``RLock``) in a forked child, in place, so
    every object that shares it sees the fresh one (what ``threading`` does for its own)."""
    reinit = getattr(lock, "_at_fork_reinit", None)
    if reinit is not None:
        reinit()


def _count_fork() -> None:
    _forks[0] += 1
    for owner in list(_owners):
        try:
            owner._after_fork_in_child()
        except Exception:  # the child must start whatever one owner does
            logger.exception("redbreaker: resetting %r after fork failed", owner)


os.register_at_fork(after_in_child=_count_fork)
