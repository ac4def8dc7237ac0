"""The ``--json`` shapes of the ``redbreaker`` command (documented in docs/cli.md).

Field names are those of :class:`redbreaker.Snapshot` and :class:`redbreaker.Transition`;
states are their text (``"open"``); times are Unix ms on the Redis server's clock, each
with an ISO 8601 twin in UTC (``changed_at_ms`` and ``changed_at``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._doctor_core import DoctorReport
    from ._state import Snapshot, Transition

__all__ = ["emit", "iso", "report_json", "snapshot_json", "transition_json"]


def iso(at_ms: int | None) -> str | None:
    """``at_ms`` (Unix ms) as ISO 8601 in UTC with ms, or None."""
    if at_ms is None:
        return None
    stamp = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds")


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """Every Snapshot field, plus ``open_until``, ``forced_until``, ``changed_at`` and
    ``now``: the ``*_ms`` times as ISO strings."""
    data = dataclasses.asdict(snapshot)
    data["state"] = snapshot.state.value
    process = snapshot.process_state
    data["process_state"] = None if process is None else process.value
    for field in ("open_until_ms", "forced_until_ms", "changed_at_ms", "now_ms"):
        data[field[: -len("_ms")]] = iso(getattr(snapshot, field))
    return data


def transition_json(transition: Transition) -> dict[str, Any]:
    """Every Transition field (``previous`` null when unknown), plus ``at`` (ISO)."""
    return {
        "name": transition.name,
        "previous": transition.previous.value if transition.previous is not None else None,
        "current": transition.current.value,
        "reason": transition.reason,
        "generation": transition.generation,
        "at_ms": transition.at_ms,
        "at": iso(transition.at_ms),
    }


def report_json(report: DoctorReport, target: str) -> dict[str, Any]:
    """A doctor report: ``ok``, how permissions were checked, and the findings."""
    return {
        "target": target,
        "prefix": report.prefix,
        "ok": report.ok,
        "method": report.method,
        "findings": [dataclasses.asdict(f) for f in report.findings],
    }


def emit(data: object, *, lines: bool = False) -> None:
    """Print ``data`` as JSON on stdout: indented, or one line (``lines``, for JSON lines),
    flushed at once so that a pipe sees each line as it happens."""
    text = json.dumps(data, separators=(",", ":")) if lines else json.dumps(data, indent=2)
    print(text, flush=True)
    sys.stdout.flush()
