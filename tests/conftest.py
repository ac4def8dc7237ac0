"""Shared fixtures. Real-Redis tests run against a ``redis-server`` started by the tests.

``tests/`` is on ``sys.path``: it has no ``__init__.py``, so pytest's default ``prepend``
import mode inserts the directory of this conftest, and test modules (and this file) can
``from redis_servers import RedisServer``.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from drivers import KINDS, Driver
from redis_servers import BINARY_ENV_VAR, RedisServer, redis_server_binary

if TYPE_CHECKING:
    from collections.abc import Iterator

_INSTALL_HINT = (
    "install redis-server (Debian/Ubuntu: `sudo apt-get install -y redis-server`, "
    f"macOS: `brew install redis`) or point ${BINARY_ENV_VAR} at a redis-server binary"
)

# Fixtures that need a real redis-server; tests using them (directly or through other
# fixtures) get the `redis_server` marker automatically, see pytest_collection_modifyitems.
_REDIS_FIXTURES = frozenset({"redis_server", "redis_url"})


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no", "off"}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session, on a free port of 127.0.0.1."""
    if redis_server_binary() is None:
        configured = os.environ.get(BINARY_ENV_VAR)
        where = f"${BINARY_ENV_VAR}={configured!r}" if configured else "PATH"
        if _ci():
            pytest.fail(
                f"redis-server not found on {where}, and CI is set: the real-Redis tests "
                f"must run in CI. Fix the CI image: {_INSTALL_HINT}.",
                pytrace=False,
            )
        pytest.skip(
            f"!!! redis-server not found on {where}: the real-Redis tests are SKIPPED; "
            f"{_INSTALL_HINT} !!!"
        )
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session redis-server, emptied for this test (FLUSHALL, SCRIPT FLUSH and
    FUNCTION FLUSH).

    If an earlier test killed or paused the session server, it is brought back first.
    """
    redis_server.ensure_running()
    redis_server.unpause()
    redis_server.flushall(scripts=True)
    return redis_server.url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sync_only(reason): runs on the sync driver alone, for the reason given (what it "
        "tests exists only there); every other breaker test takes the `driver` fixture",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection sees the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    marker = pytest.mark.redis_server
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        if _REDIS_FIXTURES.intersection(fixturenames) and not item.get_closest_marker(
            "redis_server"
        ):
            item.add_marker(marker)


# =====================================================================================
# More fixtures go below this line.
# =====================================================================================

STORE_KINDS = ("memory", "redis", "redis-decoded")


@pytest.fixture
def clock() -> redbreaker.ManualClock:
    """A test clock shared by the store's scripts and its local cache."""
    return redbreaker.ManualClock()


@pytest.fixture(params=KINDS)
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """The driver a test runs on: ``sync`` (``redbreaker``) or ``aio`` (``redbreaker.aio``
    through :class:`drivers.Driver`'s sync-looking facade). Select one with ``-k sync`` or
    ``-k aio``. Every store it opened and (aio) its event loop are closed after the test."""
    made = Driver(request.param)
    yield made
    made.close()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, clock: redbreaker.ManualClock) -> Iterator[Any]:
    """The behaviour suite's store: embedded fakeredis, and a real redis-server with
    ``decode_responses`` off and on. The same tests must pass on all three.

    A test that also takes ``driver`` gets a store of that driver (the embedded one named
    ``memory://<unique>``, so that ``driver.reconnect(store)`` reaches the same data);
    without it, a ``redbreaker.Store``.
    """
    kind = request.param
    if "driver" in request.fixturenames:
        driver: Driver = request.getfixturevalue("driver")
        if kind == "memory":
            yield driver.connect(f"memory://test-{uuid.uuid4().hex}", clock=clock)
        else:
            url = request.getfixturevalue("redis_url")
            yield driver.connect(url, decode_responses=(kind == "redis-decoded"), clock=clock)
        return  # the driver closes its stores
    if kind == "memory":
        result = redbreaker.connect("memory://", clock=clock)
    else:
        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url, decode_responses=(kind == "redis-decoded"))
        result = redbreaker.connect(client, clock=clock)
    yield result
    result.close()


@pytest.hookimpl(trylast=True)
def pytest_itemcollected(item: pytest.Item) -> None:
    """Real-Redis params of ``store`` fetch redis_url lazily: mark them here."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and str(callspec.params.get("store", "")).startswith("redis"):
        item.add_marker(pytest.mark.redis_server)
