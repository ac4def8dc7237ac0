"""The embedded store's servers: in-process Redis (fakeredis) for ``memory://`` URLs.

``memory://`` is a private server per store; ``memory://<name>`` is one server per name in
the process, shared by the sync and the asyncio stores of that name.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from . import _fork
from ._exceptions import ConfigError

__all__ = ["fakeredis_module", "memory_server"]

_servers: dict[str, Any] = {}
_lock = threading.Lock()
os.register_at_fork(after_in_child=lambda: _fork.reinit_lock(_lock))


def fakeredis_module() -> Any:  # noqa: ANN401 (an optional, untyped dependency)
    """fakeredis, imported on first use, or a ConfigError saying how to install it."""
    try:
        import fakeredis  # noqa: PLC0415 (an optional dependency, imported on first use)
    except ImportError as exc:
        raise ConfigError(
            "target",
            "memory:// needs the embedded Redis: pip install 'redbreaker[embedded]'",
        ) from exc
    return fakeredis


def memory_server(name: str) -> Any:  # noqa: ANN401 (a fakeredis.FakeServer)
    """The server of ``memory://<name>`` (a new private one for ``name == ""``)."""
    fakeredis = fakeredis_module()
    if not name:
        return fakeredis.FakeServer()
    with _lock:
        return _servers.setdefault(name, fakeredis.FakeServer())
