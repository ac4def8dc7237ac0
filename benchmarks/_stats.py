"""Small statistics and markdown helpers (no numpy: the bench installs nothing heavy)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


@dataclass(frozen=True)
class Spread:
    """The median of some per-round figures, and their min and max."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread | None:
        data = [v for v in values if not math.isnan(v)]
        if not data:
            return None
        return cls(statistics.median(data), min(data), max(data), len(data))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def ratios(top: Sequence[float], bottom: Sequence[float]) -> list[float]:
    """Per-round ratios top[i] / bottom[i] (rounds where both were measured)."""
    pairs = zip(top, bottom, strict=True)
    return [t / b for t, b in pairs if b and not math.isnan(t) and not math.isnan(b)]


def num(value: float, digits: int = 3) -> str:
    """A number with about ``digits`` significant figures, thousands separated."""
    if math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{num(value / 1e6, digits)}M"
    if abs(value) >= 1e4:
        return f"{num(value / 1e3, digits)}k"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def spread_text(spread: Spread | None, digits: int = 3, unit: str = "") -> str:
    if spread is None:
        return "n/a"
    low, high = num(spread.low, digits), num(spread.high, digits)
    return f"{num(spread.median, digits)}{unit} ({low}-{high})"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column (l or r), default l then r."""
    rows = [list(r) for r in rows]
    spec = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in spec]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
