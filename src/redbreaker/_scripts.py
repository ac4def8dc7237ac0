"""The Lua scripts: found once, composed with their shared part, registered per client.

The wheel carries the top-level ``lua/`` folder as ``redbreaker/lua``; a source checkout
or an editable install reads the folder in place.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sys
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["SCRIPT_NAMES", "lua_dir", "script_source"]

SCRIPT_NAMES = ("acquire", "control", "inspect", "record")
_COMMON = "_common.lua"


@functools.cache
def lua_dir() -> Traversable:
    """The folder that holds the ``.lua`` files."""
    packaged = resources.files("redbreaker") / "lua"
    if packaged.is_dir():
        return packaged
    # An editable install or a source checkout: src/redbreaker/ -> the repository's lua/.
    checkout = Path(__file__).resolve().parents[2] / "lua"
    if checkout.is_dir():
        return checkout
    raise RuntimeError(
        "redbreaker's Lua scripts are missing: neither the packaged redbreaker/lua "
        f"nor {checkout} exists; reinstall the package"
    )


@functools.cache
def script_source(name: str) -> str:
    """The full text Redis runs for script ``name``: ``_common.lua`` then ``<name>.lua``."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"no script named {name!r}; scripts: {', '.join(SCRIPT_NAMES)}")
    folder = lua_dir()
    common = (folder / _COMMON).read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return f"{common}\n{body}"
