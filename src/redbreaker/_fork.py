"""Forks of this process, for what a forked child must not take over from its parent.

Threads do not survive ``fork()`` and sockets would be shared with the parent, so objects
that own either compare :func:`generation` with the one they were made in and start
afresh when it moved (a worker forked by gunicorn's ``preload_app`` from a master that had
used breakers already, a multiprocessing ``fork`` pool).
"""

from __future__ import annotations

import os

__all__ = ["generation"]

_forks = [0]


def generation() -> int:
    """How many forks lie between the first process and this one."""
    return _forks[0]


def _count_fork() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_count_fork)
