"""The demo parent's Redis side: the embedded Redis, and a pub/sub watcher comparing
what ``Store.transitions()`` sees with what the workers' hooks reported."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

from ._demo_report import DemoError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._state import Transition
    from ._store import Store

__all__ = ["CONTROL_NAME", "EmbeddedRedis", "Watcher"]

CONTROL_NAME = "-demo-control-"
"""Name carried by the parent's own messages on the events channel (never a breaker)."""


# -- the embedded Redis ------------------------------------------------------------------


class EmbeddedRedis:
    """fakeredis's TCP server on a free port of 127.0.0.1, served by a thread."""

    def __init__(self) -> None:
        try:
            import fakeredis  # noqa: PLC0415 (an optional dependency)
            import lupa  # noqa: F401, PLC0415 (fakeredis runs the Lua scripts with it)
        except ImportError as exc:
            raise DemoError(
                f"the embedded demo needs fakeredis with Lua ({exc}): "
                "pip install 'redbreaker[embedded]', or pass --url redis://HOST:PORT/0"
            ) from exc
        server_class = getattr(fakeredis, "TcpFakeServer", None)
        if server_class is None:
            raise DemoError(
                f"fakeredis {getattr(fakeredis, '__version__', '?')} has no TcpFakeServer: "
                "pip install -U 'fakeredis[lua]', or pass --url redis://HOST:PORT/0"
            )
        self._server = server_class(("127.0.0.1", 0))
        host, port = self._server.server_address[:2]
        self.url = f"redis://{host}:{port}/0"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="redbreaker-demo-redis",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, end every connection's handler thread, free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- a pub/sub watcher in the parent -----------------------------------------------------


def _control_payload(reason: str) -> str:
    return (
        f'{{"name": "{CONTROL_NAME}", "from_state": "closed", "to_state": "closed", '
        f'"reason": "{reason}", "generation": 0, "at_ms": 0}}'
    )


class Watcher:
    """Reads every transition from ``Store.transitions()`` (what ``redbreaker watch`` does),
    to compare with what the hooks reported."""

    def __init__(self, store: Store, name: str) -> None:
        self.seen: list[Transition] = []
        self.error: str | None = None
        self.listening = False
        self._store = store
        self._name = name
        self._channel = f"{store.prefix}:events"
        self._thread = threading.Thread(target=self._run, name="redbreaker-demo-watch", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Start, and wait until the subscription is live so no event is missed."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        hello = _control_payload("hello")
        while time.monotonic() < deadline and self._thread.is_alive():
            if int(self._store.client.publish(self._channel, hello)) > 0:
                self.listening = True
                return
            time.sleep(0.01)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._store.client.publish(self._channel, _control_payload("stop"))
            self._thread.join(timeout=5)

    def _run(self) -> None:
        stream: Iterator[Transition] = self._store.transitions()
        try:
            for transition in stream:
                if transition.name == CONTROL_NAME:
                    if transition.reason == "stop":
                        break
                elif transition.name == self._name:
                    self.seen.append(transition)
        except Exception as exc:  # the Redis went away: report, never raise in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[attr-defined]
