"""How many script calls a store may have in flight at once: as many as its client's
connection pool may open. No I/O here; both drivers' stores gate their calls with it.

A pool built with ``max_connections=8`` (``redis://host/0?max_connections=8``, or a
``BlockingConnectionPool``) must serve 64 calling threads (or 2,000 tasks) without an error
and without a ninth connection: past the limit redis-py's plain pool raises "Too many
connections", which would read as an outage. So a call waits for one in flight to end,
for at most :attr:`CallLimit.wait` seconds, the time a store call may take anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_WAIT", "UNBOUNDED", "CallLimit", "call_limit"]

UNBOUNDED = 2**31
"""redis-py's ``max_connections`` when none was asked for: no limit to keep."""

DEFAULT_WAIT = 5.0
"""Seconds a call waits for a connection when the pool's connections have no timeout."""


@dataclass(frozen=True)
class CallLimit:
    """At most ``calls`` script calls in flight; a call waits ``wait`` seconds at most for
    one of them to end."""

    calls: int
    wait: float

    def exhausted(self) -> str:
        """Why a call gave up waiting (a redis-py ConnectionError's text: the store maps
        it as Redis not answering in time)."""
        return (
            f"all {self.calls} connections of the client's pool were busy for {self.wait:g} s "
            "(max_connections bounds the script calls a process has in flight)"
        )


def call_limit(pool: object) -> CallLimit | None:
    """The limit a client's connection pool sets, or None when it sets none (the default
    pool, a cluster client's per-node pools, the embedded Redis)."""
    calls = getattr(pool, "max_connections", None)
    if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls < UNBOUNDED:
        return None
    kwargs = getattr(pool, "connection_kwargs", None)
    wait: object = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    blocking = getattr(pool, "timeout", None)  # BlockingConnectionPool's own wait
    if _positive(blocking) and (not _positive(wait) or blocking < wait):  # type: ignore[operator]
        wait = blocking
    return CallLimit(calls, float(wait) if _positive(wait) else DEFAULT_WAIT)  # type: ignore[arg-type]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
