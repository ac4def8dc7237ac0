"""A switch for users' test suites: retries without waiting, and fewer of them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._config import count_setting

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["TestingMode", "is_testing", "set_testing", "testing_mode"]


@dataclass(frozen=True)
class TestingMode:
    """What :func:`set_testing` turned on: no backoff sleeps, at most ``max_attempts``."""

    __test__ = False  # not a pytest test class, despite the name

    max_attempts: int


_lock = threading.Lock()
_mode: TestingMode | None = None


class _Restore:
    """Returned by :func:`set_testing`; leaving its ``with`` block restores the old mode."""

    def __init__(self, previous: TestingMode | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _mode  # noqa: PLW0603 (one process-wide switch, by design)
        with _lock:
            _mode = self._previous


def set_testing(enabled: bool = True, *, max_attempts: int = 1) -> _Restore:
    """Make every guard retry at once and at most ``max_attempts`` times, process-wide.

    For the test suites of applications that use redbreaker: no test waits for backoff.
    Attempt timeouts and the breaker itself still apply. Use it as a call, or as a
    context manager that restores the previous mode::

        with redbreaker.set_testing(max_attempts=2):
            ...
    """
    global _mode  # noqa: PLW0603 (one process-wide switch, by design)
    count_setting("max_attempts", max_attempts)
    with _lock:
        previous = _mode
        _mode = TestingMode(max_attempts) if enabled else None
    return _Restore(previous)


def testing_mode() -> TestingMode | None:
    """The testing mode in force, or None."""
    return _mode


def is_testing() -> bool:
    """True while :func:`set_testing` is on."""
    return _mode is not None
