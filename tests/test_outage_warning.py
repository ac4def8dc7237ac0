"""No silent misconfiguration: a process that runs calls without the shared breaker because
its Redis cannot be reached says so with a :class:`redbreaker.StoreOutageWarning`, once per
store per outage, even where the application configured no logging at all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import pytest
import redis

import redbreaker
import redbreaker.aio
from redbreaker import Breaker, ManualClock, StoreOutageWarning
from redis_servers import RedisServer, find_free_port


def _fail_scripts(store: Any, outage: dict[str, bool]) -> None:
    """While ``outage["down"]``, every script call fails like a lost connection."""
    real = store._call

    def call(script: str, keys: Any, args: Any) -> Any:
        if outage["down"]:
            raise redis.ConnectionError("Connection refused (simulated)")
        return real(script, keys, args)

    store._call = call


def _outage_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, StoreOutageWarning)]


def test_once_per_outage_edge_not_once_per_call() -> None:
    clock = ManualClock()
    store = redbreaker.connect("memory://", clock=clock)
    outage = {"down": True}
    _fail_scripts(store, outage)
    first, second = Breaker("payments", store=store), Breaker("search", store=store)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own default: once per text and place
        for _ in range(20):
            assert first.call(lambda: "ran") == "ran"
            assert second.call(lambda: "ran") == "ran"
            clock.advance(0.5)
        assert len(_outage_warnings(caught)) == 1
        outage["down"] = False
        clock.advance(10)
        first.call(lambda: None)  # the store answers: the outage is over
        assert len(_outage_warnings(caught)) == 1
        outage["down"] = True
        clock.advance(10)
        for _ in range(5):
            first.call(lambda: None)
            clock.advance(0.5)
    texts = _outage_warnings(caught)
    assert len(texts) == 2, texts  # the second outage is told too, with the same text
    assert "'payments'" in texts[0]
    assert "UNGUARDED" in texts[0]
    assert "ConnectionError" in texts[0]
    # Shown at the application's line, not inside the library.
    assert all(w.filename == __file__ for w in caught)


def test_local_policy_says_the_breaker_is_this_process_only() -> None:
    store = redbreaker.connect("memory://", clock=ManualClock())
    _fail_scripts(store, {"down": True})
    breaker = Breaker("payments", store=store, on_store_error="local")
    with pytest.warns(StoreOutageWarning, match="own breaker only"):
        breaker.call(lambda: None)


def test_reject_policy_raises_instead_of_warning() -> None:
    store = redbreaker.connect("memory://", clock=ManualClock())
    _fail_scripts(store, {"down": True})
    breaker = Breaker("payments", store=store, on_store_error="reject")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(redbreaker.StoreUnavailableError):
            breaker.call(lambda: None)
    assert _outage_warnings(caught) == []


def test_aio_warns_once_too() -> None:
    async def main() -> list[str]:
        store = redbreaker.aio.connect(f"redis://127.0.0.1:{find_free_port()}/0")
        breaker = redbreaker.aio.Breaker("payments", store=store)

        async def ok() -> str:
            return "ran"

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            for _ in range(5):
                assert await breaker.call(ok) == "ran"
        await store.close()
        return _outage_warnings(caught)

    texts = asyncio.run(main())
    assert len(texts) == 1
    assert "UNGUARDED" in texts[0]


_NEW_USER = """
import redbreaker
store = redbreaker.connect({url!r})
breaker = redbreaker.Breaker("payments", store=store)
for _ in range(3):
    assert breaker.call(lambda: 42) == 42
print("done")
"""


@pytest.mark.redis_server
@pytest.mark.slow
def test_a_new_user_with_no_logging_sees_it_on_stderr_per_outage() -> None:
    """The issue's case: ``connect()`` to a Redis that is not there, default policy, no
    logging configured: stderr names the problem (and a Redis that answers prints nothing)."""
    port = find_free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_NEW_USER.format(url=url))],
            capture_output=True, text=True, timeout=60, env=env, check=True,
        )

    down = run()
    assert down.stdout.strip() == "done"
    assert down.stderr.count("StoreOutageWarning") == 1, down.stderr
    assert f"127.0.0.1:{port}" in down.stderr
    with RedisServer(port=port):
        up = run()
    assert up.stdout.strip() == "done"
    assert "StoreOutageWarning" not in up.stderr, up.stderr
