"""The layout's promises, checked from the source: the sans-I/O core imports no I/O.

The core decides (arguments, replies, state, classification, retry policy, cached-mode
bookkeeping); the sync and async drivers only send, sleep, wait and read. A core module
that imported redis, threading, asyncio or time would be a decision tied to one driver.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "redbreaker"
CORE = (
    "_bases",
    "_board",
    "_brokers",
    "_cache",
    "_callables",
    "_classify",
    "_config",
    "_core",
    "_core_outcomes",
    "_doctor_core",
    "_doctor_findings",
    "_doctor_replies",
    "_exceptions",
    "_feed_core",
    "_guard_config",
    "_guard_core",
    "_hooks",
    "_keys",
    "_lane",
    "_metric_names",
    "_observe",
    "_permit_state",
    "_policies",
    "_policy_config",
    "_pool_limit",
    "_settings",
    "_reach",
    "_shards",
    "_state",
    "_streams_base",
    "_streams_core",
    "_url",
    "_view",
    "_waiting",
    "_wire",
)
IO_MODULES = frozenset({"redis", "threading", "asyncio", "time"})


def _imported(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports (TYPE_CHECKING blocks included:
    a type from a driver is fine only if nothing runs it, so they are listed too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io(module: str) -> None:
    assert not _imported(PACKAGE / f"{module}.py") & IO_MODULES


def test_drivers_are_where_the_io_is() -> None:
    """The drivers do import what the core may not (this test would pass vacuously if the
    import reading above were broken)."""
    assert "redis" in _imported(PACKAGE / "_store.py")
    assert "asyncio" in _imported(PACKAGE / "aio" / "_guard.py")
    assert "threading" in _imported(PACKAGE / "_timeout.py")
