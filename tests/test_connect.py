"""connect(): URL schemes, malformed URLs, the embedded store, and real redis-servers reached
by TCP with a password, by a unix socket, and through redis-py clients of either
``decode_responses`` setting."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio

import redbreaker
from redbreaker import Breaker, CircuitOpenError, ConfigError, ManualClock, State
from redis_servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _trip(breaker: Breaker, failures: int) -> None:
    for _ in range(failures):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)


# -- URLs refused before any I/O --------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://x",
        "https://redis.example:6379",
        "foo://",
        "memcached://h:11211",
        "localhost:6379",  # no scheme: urlsplit reads "localhost" as the scheme
        "",
        "redis",
        "redis://:notaport",
        "redis://h:notaport",
        "redis://h:99999",
        "redis://",
        "rediss://",
        "redis+cluster://",
        "redis+cluster://:7000",
        "unix://",
        "redis+sentinel://",
        "redis+sentinel://h:1",  # no service name
        "redis+sentinel://h:1/",  # empty service name
        "redis+sentinel://h:x/svc",  # port not a number
        "redis+sentinel://h/svc",  # no port
        "redis+sentinel://h:0/svc",  # port out of range
        "redis+sentinel://h:1/svc/notadb",
        "redis+sentinel://h:1/svc/0/extra",
    ],
)
def test_bad_target_is_a_config_error(target: str) -> None:
    """An unknown scheme or a malformed URL is a ConfigError (field 'target') at once."""
    with pytest.raises(ConfigError) as caught:
        redbreaker.connect(target)
    assert caught.value.field == "target"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("target", [42, None, b"redis://127.0.0.1:6379", object()])
def test_non_client_target_is_a_config_error(target: object) -> None:
    """Something that is neither a URL str nor a redis-py client is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        redbreaker.connect(target)  # type: ignore[arg-type]
    assert caught.value.field == "target"


def test_asyncio_client_is_a_config_error() -> None:
    """An asyncio redis client is refused (the sync Breaker cannot await it)."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=1)
    try:
        with pytest.raises(ConfigError) as caught:
            redbreaker.connect(client)  # type: ignore[arg-type]
        assert caught.value.field == "target"
        assert "async" in str(caught.value)
    finally:
        asyncio.run(client.aclose())


def test_scheme_is_case_insensitive() -> None:
    """MEMORY:// is memory://."""
    store = redbreaker.connect("MEMORY://")
    try:
        assert Breaker("svc", store=store).state is State.CLOSED
    finally:
        store.close()


# -- the embedded store --------------------------------------------------------------------


def test_memory_is_private_per_store() -> None:
    """Two memory:// stores are two Redis: a breaker tripped in one is closed in the other."""
    one, two = redbreaker.connect("memory://"), redbreaker.connect("memory://")
    try:
        _trip(Breaker("svc", store=one, failure_threshold=2), 2)
        assert Breaker("svc", store=one).state is State.OPEN
        other = Breaker("svc", store=two, failure_threshold=2)
        assert other.snapshot().exists is False
        assert other.call(lambda: "through") == "through"
        assert other.state is State.CLOSED
        assert one.breaker_names() == ["svc"]
        assert two.breaker_names() == ["svc"]  # created by the call above, closed
        assert other.snapshot().generation == 1
    finally:
        one.close()
        two.close()


def test_named_memory_is_shared_in_process() -> None:
    """memory://<name> is one Redis for every store of that name in the process."""
    name = f"shared-{uuid.uuid4().hex}"
    one, two = redbreaker.connect(f"memory://{name}"), redbreaker.connect(f"memory://{name}")
    elsewhere = redbreaker.connect(f"memory://{name}-other")
    try:
        _trip(Breaker("payments", store=one, failure_threshold=2), 2)
        seen_from_two = Breaker("payments", store=two, failure_threshold=2)
        with pytest.raises(CircuitOpenError) as rejected:
            seen_from_two.call(lambda: "never runs")
        assert rejected.value.state == "open"
        assert seen_from_two.state is State.OPEN
        assert two.breaker_names() == ["payments"]
        assert elsewhere.breaker_names() == []
        assert Breaker("payments", store=elsewhere).state is State.CLOSED
        # An order given through the second store is seen through the first.
        seen_from_two.reset()
        assert Breaker("payments", store=one).state is State.CLOSED
    finally:
        for store in (one, two, elsewhere):
            store.close()


# -- real redis-server ---------------------------------------------------------------------


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_redis_py_client_either_decoding(redis_url: str, decode: bool) -> None:
    """A redis-py client with decode_responses off or on drives a full trip-probe-close."""
    clock = ManualClock()
    client = redis.Redis.from_url(redis_url, decode_responses=decode)
    store = redbreaker.connect(client, prefix="app", clock=clock)
    seen: list[redbreaker.Transition] = []
    try:
        assert store.client is client
        name = "zahlungs-dienst-ü:eu/1"
        breaker = Breaker(
            name, store=store, failure_threshold=2, recovery_timeout=5, on_transition=seen.append
        )
        assert breaker.call(lambda: 1) == 1
        _trip(breaker, 2)
        with pytest.raises(CircuitOpenError) as rejected:
            breaker.call(lambda: 1)
        assert rejected.value.retry_after == 5.0
        snap = breaker.snapshot()
        assert (snap.state, snap.generation, snap.open_count) == (State.OPEN, 2, 1)
        assert snap.last_reason == "consecutive_failures"
        clock.advance(5)
        assert breaker.call(lambda: "probe") == "probe"
        assert breaker.state is State.CLOSED
        assert [(t.previous, t.current, t.generation) for t in seen] == [
            (State.CLOSED, State.OPEN, 2),
            (State.OPEN, State.HALF_OPEN, 3),
            (State.HALF_OPEN, State.CLOSED, 4),
        ]
        assert store.breaker_names() == [name]
        assert client.exists(f"app:{{{name}}}") == 1
    finally:
        store.close()


def test_url_string(redis_url: str) -> None:
    """connect('redis://host:port/0') works; the key lands in that server's db 0."""
    store = redbreaker.connect(redis_url)
    try:
        assert Breaker("svc", store=store).call(lambda: 7) == 7
        with redis.Redis.from_url(redis_url) as raw:
            assert raw.exists("redbreaker:{svc}") == 1
    finally:
        store.close()


def test_url_db_number(redis_url: str, redis_server: RedisServer) -> None:
    """The db number in the URL picks the database the breaker lives in."""
    store = redbreaker.connect(f"redis://127.0.0.1:{redis_server.port}/3")
    try:
        Breaker("svc", store=store).call(lambda: None)
        with redis_server.client(db=3) as db3, redis_server.client(db=0) as db0:
            assert db3.exists("redbreaker:{svc}") == 1
            assert db0.exists("redbreaker:{svc}") == 0
    finally:
        store.close()


PASSWORD = "s3:cr@t/pw%"  # characters that must be percent-encoded in a URL


@pytest.fixture(scope="module")
def auth_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of its own that requires a password (--requirepass)."""
    del redis_server  # only for the skip / CI logic of the session fixture
    with RedisServer(
        extra_args=["--requirepass", PASSWORD], client_kwargs={"password": PASSWORD}
    ) as server:
        yield server


def test_password_in_url(auth_server: RedisServer) -> None:
    """A URL with the right (percent-encoded) password works against --requirepass."""
    auth_server.flushall()
    url = auth_server.url
    assert "%40" in url  # the helper quoted the '@' of the password
    store = redbreaker.connect(url)
    try:
        breaker = Breaker("svc", store=store, failure_threshold=1)
        assert breaker.call(lambda: "ok") == "ok"
        _trip(breaker, 1)
        assert breaker.state is State.OPEN
        assert store.breaker_names() == ["svc"]
    finally:
        store.close()


@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
def test_bad_password_is_a_loud_config_error(
    auth_server: RedisServer, password: str | None
) -> None:
    """connect() does no I/O; at the first call wrong credentials raise StoreError chained to
    redis' AuthenticationError under every policy (not an outage: never run unguarded), and
    no store_degraded event is reported."""
    auth = "" if password is None else f":{password}@"
    events: list[redbreaker.StoreEvent] = []
    store = redbreaker.connect(
        f"redis://{auth}127.0.0.1:{auth_server.port}/0", on_store_event=events.append
    )
    ran: list[str] = []
    try:
        for policy in ("allow", "reject", "local"):
            with pytest.raises(redbreaker.StoreError) as refused:
                Breaker("svc", store=store, on_store_error=policy).call(ran.append, policy)
            assert isinstance(refused.value.__cause__, redis.AuthenticationError)
        assert ran == []
        assert events == []
    finally:
        store.close()


@pytest.fixture(scope="module")
def unix_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of its own that also listens on a unix socket in its directory."""
    del redis_server
    with RedisServer(
        extra_args=["--unixsocket", "{dir}/r.sock", "--unixsocketperm", "700"]
    ) as server:
        yield server


def test_unix_socket(unix_server: RedisServer) -> None:
    """unix:///path/r.sock reaches the server: the breaker written there is seen over TCP."""
    unix_server.flushall()
    assert unix_server.dir is not None
    store = redbreaker.connect(f"unix://{unix_server.dir}/r.sock", prefix="sock")
    try:
        breaker = Breaker("svc", store=store, failure_threshold=1)
        _trip(breaker, 1)
        assert breaker.state is State.OPEN
        assert store.client.connection_pool.connection_class is redis.UnixDomainSocketConnection
        with unix_server.client() as tcp:
            assert tcp.hget("sock:{svc}", "state") == b"open"
            by_socket = [
                c for c in tcp.client_list() if c["addr"].startswith(f"{unix_server.dir}/r.sock")
            ]
        assert [c["cmd"] for c in by_socket] == ["fcall"]  # the store's one connection
    finally:
        store.close()


def test_unix_socket_missing_path_fails_at_first_use(tmp_path: Path) -> None:
    """A unix:// URL to a socket that does not exist is a store outage at the first call:
    StoreUnavailableError (under "reject") chained to redis' ConnectionError."""
    path = tmp_path / "absent.sock"
    store = redbreaker.connect(f"unix://{path}")
    try:
        with pytest.raises(redbreaker.StoreUnavailableError) as rejected:
            Breaker("svc", store=store, on_store_error="reject").call(lambda: None)
        assert isinstance(rejected.value.__cause__, redis.ConnectionError)
    finally:
        store.close()
