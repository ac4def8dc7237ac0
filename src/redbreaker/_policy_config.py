"""The fleet policies' settings (``retry_budget``, ``retry_budget_floor``,
``min_reporters``): checked, and written as the scripts read them. No I/O here."""

from __future__ import annotations

import math
from typing import Protocol

from ._exceptions import ConfigError

__all__ = ["MAX_REPORTERS", "FleetPolicySettings", "fleet_policy_values"]

# The distinct-reporter set holds at most this many members: it is read on every failure.
MAX_REPORTERS = 1000
# A ratio above this is surely a mistake (10 retries per call is what max_attempts bounds).
_MAX_BUDGET = 10.0
_MAX_FLOOR = 1_000_000.0
_DEFAULT_FLOOR = 10.0


class FleetPolicySettings(Protocol):
    """The part of a :class:`~redbreaker.BreakerConfig` read here."""

    @property
    def retry_budget(self) -> float | None: ...

    @property
    def retry_budget_floor(self) -> float: ...

    @property
    def min_reporters(self) -> int: ...


def _number(name: str, value: object, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number {what}, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(name, f"must be {what}, got {value!r}")
    return float(value)


def fleet_policy_values(config: FleetPolicySettings) -> dict[str, str]:
    """The scripts' texts of the three settings (see ``SCRIPT_FIELDS``).

    Raises:
        ConfigError: a setting out of range, or a floor set without a budget.
    """
    floor = _number(
        "retry_budget_floor", config.retry_budget_floor, 0.0, _MAX_FLOOR,
        f"of retries per second in [0, {_MAX_FLOOR:.0f}]",
    )
    budget: float | None = None
    if config.retry_budget is None:
        if floor != _DEFAULT_FLOOR:
            raise ConfigError(
                "retry_budget_floor",
                "applies only with a retry_budget: set retry_budget too (0 allows the "
                "floor alone)",
            )
    else:
        budget = _number(
            "retry_budget", config.retry_budget, 0.0, _MAX_BUDGET,
            f"of retries per call in [0, {_MAX_BUDGET:.0f}]",
        )
        if budget == 0 and floor == 0:
            raise ConfigError(
                "retry_budget",
                "0 with retry_budget_floor=0 allows no retry at all: give the guard "
                "max_attempts=1 instead",
            )
    reporters = config.min_reporters
    if isinstance(reporters, bool) or not isinstance(reporters, int):
        raise ConfigError("min_reporters", f"must be an int, got {reporters!r}")
    if not 1 <= reporters <= MAX_REPORTERS:
        raise ConfigError(
            "min_reporters", f"must be in [1, {MAX_REPORTERS}] (1: no quorum), got {reporters}"
        )
    return {
        "retry_budget": "" if budget is None else repr(budget),
        "retry_budget_floor": repr(floor),
        "min_reporters": str(reporters),
    }
