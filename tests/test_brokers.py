"""Whether a queue's broker is the breaker's own Redis (redbreaker._brokers)."""

from __future__ import annotations

import logging

import pytest
import redis

import redbreaker
from redbreaker._brokers import check_broker, redis_endpoint, same_server, store_endpoint


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("redis://localhost:6379/0", ("localhost", "6379")),
        ("redis://127.0.0.1/3", ("localhost", "6379")),
        ("rediss://user:pw@cache.example:6380/1", ("cache.example", "6380")),
        ("redis://[::1]:7000", ("localhost", "7000")),
        ("unix:///run/redis.sock?db=2", ("unix", "/run/redis.sock")),
        ("amqp://guest:guest@localhost:5672//", None),
        ("sqs://", None),
        ("redis://host:notaport", None),
    ],
)
def test_broker_urls_name_their_server(url: str, endpoint: tuple[str, str] | None) -> None:
    assert redis_endpoint(url) == endpoint


def test_a_store_client_names_its_server_unless_it_moves_between_servers() -> None:
    assert store_endpoint(redis.Redis(host="127.0.0.1", port=6390)) == ("localhost", "6390")
    assert store_endpoint(redis.Redis(unix_socket_path="/tmp/r.sock")) == ("unix", "/tmp/r.sock")
    assert store_endpoint(object()) is None


def test_the_same_server_under_another_db_or_spelling_is_the_same_server() -> None:
    client = redis.Redis(host="localhost", port=6390, db=0)
    assert same_server("redis://127.0.0.1:6390/5", client)
    assert not same_server("redis://127.0.0.1:6391/0", client)
    assert not same_server("amqp://localhost:6390//", client)


def test_a_shared_broker_is_warned_about_with_the_advice(caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis(host="localhost", port=6390)
    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        assert check_broker(
            "redis://localhost:6390/1", client, breaker="pay", on_store_error="allow", queue="rq"
        )
        assert not check_broker(
            "redis://localhost:6391/1", client, breaker="pay", on_store_error="allow", queue="rq"
        )
    [record] = caplog.records
    assert "rq's broker is the Redis server that holds circuit 'pay'" in record.getMessage()
    assert "on_store_error='local'" in record.getMessage()
    assert record.event == "shared_broker"  # type: ignore[attr-defined]


def test_an_embedded_store_never_shares_a_broker() -> None:
    store = redbreaker.connect("memory://")
    assert not same_server("redis://localhost:6379/0", store.client)
