"""The demo parent's Redis side: the embedded Redis, and a pub/sub watcher comparing
what ``Store.transitions()`` sees with what the workers' hooks reported."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from ._connect import connect
from ._demo_report import DemoError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._state import Transition

__all__ = ["EmbeddedRedis", "Watcher"]


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


class Watcher:
    """Reads every transition from ``Store.transitions()`` (what ``redbreaker watch`` does),
    to compare with what the hooks reported.

    It has a store of its own, so closing that store is what ends its loop: nothing is
    published to wake it, and a dashboard on the same channel never sees a message that is
    not a breaker's. It counts transitions rather than keeping them, so ``--forever`` runs
    in bounded memory.
    """

    def __init__(self, url: str, prefix: str, name: str) -> None:
        self.count = 0
        self.error: str | None = None
        self.listening = False
        self._store = connect(url, prefix=prefix)
        self._name = name
        self._thread = threading.Thread(target=self._run, name="redbreaker-demo-watch", daemon=True)
        self._stream: Iterator[Transition] | None = None

    def start(self) -> None:
        """Subscribe, then read in a thread; the subscription is live when this returns
        (``transitions()`` confirms it), so no event published afterwards is missed."""
        try:
            self._stream = self._store.transitions()
        except Exception as exc:  # reported in the summary; the demo goes on without it
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.listening = True
        self._thread.start()

    def stop(self) -> None:
        """End the loop (within the feed's short read wait) and close the connections."""
        self._store.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self._stream is not None
        try:
            for transition in self._stream:
                if transition.name == self._name:
                    self.count += 1
        except Exception as exc:  # the Redis went away: report, never raise in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                self._stream.close()  # type: ignore[attr-defined]
