"""A dependency for the consumer proofs: up or down, every call counted in Redis.

Each consumer process (a Streams consumer, a celery/rq/arq/dramatiq worker, a web worker)
calls :meth:`Dependency.call` with the id of the message it handles. The counts live in a
hash on the test's own redis-server and change in one Lua script per call, so they are
exact across processes; times come from that server's clock.

Fields of ``<name>:counts``:
    calls             every call
    calls_down        calls made while the dependency was down (each raised DependencyDown)
    successes         calls that succeeded (a message handled), duplicates included
    down_at_ms        the server time take_down() ran
    up_at_ms          the server time bring_up() ran
    first_success_after_up_ms   the first success once it was back up
The set ``<name>:handled`` holds every id handled successfully at least once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PROOFS", "Dependency", "DependencyDown", "wait_for_proof", "write_proof"]

PROOFS = Path("/tmp/redbreaker-proofs")
"""Where every proof writes its figures, one JSON line per ``<name>.json``."""


def write_proof(name: str, figures: dict[str, object]) -> None:
    """Write a proof's figures to ``PROOFS/<name>.json`` (for the closing note)."""
    PROOFS.mkdir(parents=True, exist_ok=True)
    (PROOFS / f"{name}.json").write_text(json.dumps(figures) + "\n")


def wait_for_proof(
    proof: str, what: str, done: Callable[[], bool], seconds: float, logs: Path
) -> None:
    """Poll ``done`` until true; past ``seconds``, fail with the tail of every worker log
    under ``logs`` (a proof that stalls says where)."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:]
                for p in sorted(logs.glob("*.log"))
            )
            pytest.fail(f"{proof} proof: {what} did not happen within {seconds} s\n{tails}")
        time.sleep(0.01)

_CALL = """
local counts, handled, down = KEYS[1], KEYS[2], KEYS[3]
redis.call('HINCRBY', counts, 'calls', 1)
if redis.call('EXISTS', down) == 1 then
    redis.call('HINCRBY', counts, 'calls_down', 1)
    return 0
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HINCRBY', counts, 'successes', 1)
redis.call('SADD', handled, ARGV[1])
if redis.call('HEXISTS', counts, 'up_at_ms') == 1 then
    redis.call('HSETNX', counts, 'first_success_after_up_ms', now)
end
return 1
"""

_SWITCH = """
local counts, down = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if ARGV[1] == 'down' then
    redis.call('SET', down, '1')
    redis.call('HSET', counts, 'down_at_ms', now)
else
    redis.call('DEL', down)
    redis.call('HSET', counts, 'up_at_ms', now)
end
return now
"""


class DependencyDown(ConnectionError):  # noqa: N818 (reads as what it is: the dependency is down)
    """The dependency is down (what a real one raises: a connection error)."""


class Dependency:
    """The dependency every consumer of one proof calls, counted on ``url``'s server."""

    def __init__(self, url: str, name: str = "dependency") -> None:
        self.url = url
        self.name = name
        self._client = redis.Redis.from_url(url)
        self._keys = [f"{name}:counts", f"{name}:handled", f"{name}:down"]
        self._call = self._client.register_script(_CALL)
        self._switch = self._client.register_script(_SWITCH)

    def call(self, message_id: str) -> None:
        """Handle ``message_id``: counted; raises DependencyDown while down."""
        if not self._call(keys=self._keys, args=[message_id]):
            raise DependencyDown(f"{self.name} is down")

    def take_down(self) -> int:
        """From now on every call fails; the server time in ms."""
        return int(self._switch(keys=[self._keys[0], self._keys[2]], args=["down"]))

    def bring_up(self) -> int:
        """From now on every call succeeds; the server time in ms."""
        return int(self._switch(keys=[self._keys[0], self._keys[2]], args=["up"]))

    def counts(self) -> dict[str, int]:
        """The counters (see the module's docstring), plus ``handled``: distinct ids."""
        raw = self._client.hgetall(self._keys[0])
        counts = {k.decode(): int(v) for k, v in raw.items()}
        counts["handled"] = int(self._client.scard(self._keys[1]))
        for field in ("calls", "calls_down", "successes"):
            counts.setdefault(field, 0)
        return counts

    def handled(self) -> set[str]:
        """Every id handled successfully at least once."""
        return {m.decode() for m in self._client.smembers(self._keys[1])}

    def resume_seconds(self) -> float | None:
        """Seconds from bring_up() to the first success after it (None: none yet)."""
        counts = self.counts()
        if "first_success_after_up_ms" not in counts or "up_at_ms" not in counts:
            return None
        return (counts["first_success_after_up_ms"] - counts["up_at_ms"]) / 1000

    def close(self) -> None:
        self._client.close()
