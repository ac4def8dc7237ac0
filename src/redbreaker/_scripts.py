"""The Lua scripts: found once, composed with their shared part, in two forms.

- The library form: one Redis Functions library (``FUNCTION LOAD``) holding every script
  as a function, called with ``FCALL``. Its shared part runs once per load, so a call pays
  only for its own work. Its name carries a digest of its text: processes of two releases
  sharing one Redis load two libraries side by side and never replace each other's.
- The script form: one ``EVAL`` body per script, for servers without Functions (Redis
  < 7) and users whose ACL grants ``EVALSHA`` but not ``FCALL``.

The wheel carries the top-level ``lua/`` folder as ``redbreaker/lua``; a source checkout
or an editable install reads the folder in place.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ._config import SCRIPT_FIELDS, script_defaults

if TYPE_CHECKING:
    import sys
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["SCRIPT_NAMES", "function_name", "library_name", "library_source", "lua_dir",
           "script_source"]

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


_FIELDS_MARK = "{--[[SCRIPT_FIELDS]]}"


def _lua_fields() -> str:
    """The Lua parser's field list, written from :data:`SCRIPT_FIELDS` and the default
    config's text (a field a config text leaves out takes its default)."""
    defaults = script_defaults()
    rows = ", ".join(
        f"{{ '{f.name}', {'true' if f.may_be_empty else 'false'}, '{defaults[f.name]}' }}"
        for f in SCRIPT_FIELDS
    )
    return f"{{ {rows} }}"



@functools.cache
def _read(file: str) -> str:
    text = (lua_dir() / file).read_text(encoding="utf-8")
    if file == _COMMON:
        if _FIELDS_MARK not in text:
            raise RuntimeError(f"{file} lacks {_FIELDS_MARK}: the scripts and the package differ")
        text = text.replace(_FIELDS_MARK, _lua_fields())
    return text


def _check(name: str) -> None:
    if name not in SCRIPT_NAMES:
        raise ValueError(f"no script named {name!r}; scripts: {', '.join(SCRIPT_NAMES)}")


@functools.cache
def script_source(name: str) -> str:
    """The EVAL body of script ``name``: ``_common.lua``, ``<name>.lua``, then a call."""
    _check(name)
    return f"{_read(_COMMON)}\n{_read(f'{name}.lua')}\nreturn {name}(KEYS, ARGV)\n"


@functools.cache
def _library_body() -> str:
    return "\n".join([_read(_COMMON), *(_read(f"{n}.lua") for n in SCRIPT_NAMES)])


@functools.cache
def library_name() -> str:
    """``redbreaker_<digest of the library's text>``."""
    digest = hashlib.sha1(_library_body().encode(), usedforsecurity=False).hexdigest()
    return f"redbreaker_{digest[:16]}"


def function_name(name: str) -> str:
    """The name ``FCALL`` calls script ``name`` by."""
    _check(name)
    return f"{library_name()}_{name}"


@functools.cache
def library_source() -> str:
    """The text ``FUNCTION LOAD`` takes: every script as one library."""
    registrations = "\n".join(
        f"redis.register_function('{function_name(n)}', {n})" for n in SCRIPT_NAMES
    )
    return f"#!lua name={library_name()}\n{_library_body()}\n{registrations}\n"
