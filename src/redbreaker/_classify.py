"""What the end of a call means for a breaker (and an error for a retry). No I/O here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._exceptions import AttemptRejectedError, AttemptTimeoutError

if TYPE_CHECKING:
    from ._config import BreakerConfig, ExceptionMatcher

__all__ = ["Outcome", "classify_exception", "classify_result", "matches"]

Outcome = Literal["success", "failure", "ignore", "release"]
"""How a call ended, for the record script: ``ignore`` counts as no call, ``release`` only
frees a probe slot."""


def matches(matcher: ExceptionMatcher | None, exc: BaseException) -> bool:
    """Whether ``exc`` is what ``matcher`` (classes, or a predicate) names."""
    if matcher is None:
        return False
    if isinstance(matcher, (type, tuple)):
        return isinstance(exc, matcher)
    return bool(matcher(exc))


def classify_exception(config: BreakerConfig, exc: BaseException) -> Outcome:
    """What an exception that ended a call means for the breaker."""
    if not isinstance(exc, Exception):
        return "release"
    if isinstance(exc, AttemptTimeoutError):
        return "failure"  # whatever record_on says: the dependency did not answer in time
    if isinstance(exc, AttemptRejectedError):
        return "ignore"  # local saturation, not the dependency's fault
    if matches(config.ignore_on, exc):
        return "ignore"
    if matches(config.record_on, exc):
        return "failure"
    return "ignore"


def classify_result(config: BreakerConfig, result: object) -> Outcome:
    """What a returned value means for the breaker (``failure_result``)."""
    check = config.failure_result
    return "failure" if check is not None and check(result) else "success"
