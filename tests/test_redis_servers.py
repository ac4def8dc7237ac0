"""Fast checks of the test helper in redis_servers.py (real redis-server processes)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import redis

from redis_servers import RedisServer, find_free_port

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _needs_redis_server(redis_server: RedisServer) -> None:
    """Skip (or, with CI set, fail) like every real-Redis test when there is no binary."""


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A private server, so pausing it or resetting its stats disturbs no other test."""
    with RedisServer() as server:
        yield server


def test_find_free_port() -> None:
    assert 1024 <= find_free_port() <= 65535


def test_start_ping_url_and_cleanup() -> None:
    server = RedisServer()
    with server:
        assert server.is_running()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client() as r:
            assert r.ping() is True
            r.set("k", "v")
        with redis.Redis.from_url(server.url) as r:
            assert r.get("k") == b"v"
        workdir = server.dir
        assert workdir is not None
        assert (workdir / "redis.log").exists()
    assert not server.is_running()
    assert not workdir.exists()
    assert not server.ping(timeout=0.2)


def test_kill_then_restart_comes_back_empty_on_the_same_port() -> None:
    with RedisServer() as server:
        port = server.port
        with server.client() as r:
            r.set("k", "v")
            server.kill()
            assert not server.is_running()
            with pytest.raises(redis.ConnectionError):
                r.get("k")
            server.restart()
            assert server.port == port
            assert r.get("k") is None  # the pool reconnects; no data survived
            assert r.dbsize() == 0


def test_commandstats_counts_commands(own_server: RedisServer) -> None:
    own_server.reset_stats()
    assert own_server.commandstats() == {}
    with own_server.client() as r:
        r.set("k", "v")
        r.set("k", "w")
        r.hgetall("h")
    stats = own_server.commandstats()
    assert stats["set"] == 2
    assert stats["hgetall"] == 1
    assert "info" not in stats
    assert "config|resetstat" not in stats
    assert own_server.commandstats(include_helper_commands=True)["info"] >= 1


def test_pause_times_a_client_out_then_it_recovers(own_server: RedisServer) -> None:
    with own_server.client(socket_timeout=0.2) as r:
        assert r.ping()  # connect before the pause (the handshake would block too)
        started = time.monotonic()
        own_server.pause(0.5)
        with pytest.raises(redis.TimeoutError):
            r.get("k")
        time.sleep(max(0.0, 0.6 - (time.monotonic() - started)))
        assert r.ping()


def test_fixtures_mark_and_empty_the_session_server(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_url: str
) -> None:
    assert request.node.get_closest_marker("redis_server") is not None
    assert redis_url == redis_server.url
    with redis_server.client() as r:
        assert r.dbsize() == 0
        assert r.script_exists("0" * 40) == [False]
