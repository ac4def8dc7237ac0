"""The dashboard: its board (the sans-I/O core, on the embedded store), and its HTTP API
against a real redis-server, served by ``run_dashboard`` in a child process."""

from __future__ import annotations

import http.client
import io
import json
import time
import urllib.parse
from typing import Any

import pytest
import redis

import redbreaker
from dashboard_servers import DashboardProcess, breaker_of
from redbreaker._state import State
from redis_servers import RedisServer

TOKEN = "test-admin-token-0123456789abcdef"
XSS_NAME = "<img/src=x/onerror=alert(1)>"


def _trip(store: redbreaker.Store, name: str, **settings: Any) -> redbreaker.Breaker:
    breaker = redbreaker.Breaker(name, store=store, failure_threshold=2, **settings)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    assert breaker.snapshot().state is State.OPEN
    return breaker


def _touch(store: redbreaker.Store, name: str) -> redbreaker.Breaker:
    """A breaker that exists in Redis (one successful call)."""
    breaker = redbreaker.Breaker(name, store=store, failure_threshold=2)
    breaker.call(lambda: None)
    assert breaker.snapshot().exists
    return breaker


class EventStream:
    """A viewer of /api/events: reads the Server-Sent Events one by one."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        self._conn.request("GET", "/api/events")
        self.response = self._conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")

    def next_event(self, seconds: float = 15.0) -> tuple[str, dict[str, Any]]:
        assert self._conn.sock is not None
        self._conn.sock.settimeout(seconds)  # heartbeats come every 10 s: never silent
        kind, data = "", ""
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                data = line[len("data: "):]
            elif not line and data:
                return kind, json.loads(data)

    def wait_for(self, check: Any, seconds: float = 10.0) -> list[dict[str, Any]]:
        """Events until one passes ``check`` (it last), within ``seconds``."""
        deadline = time.monotonic() + seconds
        seen: list[dict[str, Any]] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                kind, event = self.next_event(left)
            except TimeoutError:
                break
            assert event["type"] == kind
            seen.append(event)
            if check(event):
                return seen
        raise AssertionError(f"no such event within {seconds} s; saw {seen}")

    def close(self) -> None:
        self._conn.close()


# -- the HTTP API on a real redis-server -------------------------------------------------


@pytest.fixture
def sync_store(redis_url: str):
    store = redbreaker.connect(redis_url)
    yield store
    store.close()


def test_api_lists_every_breaker_with_its_figures(redis_url: str, sync_store) -> None:
    _touch(sync_store, "inventory")
    _trip(sync_store, "payments-api")
    with DashboardProcess(redis_url) as dash:
        board = dash.wait_for_board(lambda b: len(b["breakers"]) == 2)
        assert board["prefix"] == "redbreaker"
        assert board["admin_actions"] is False
        assert board["redis"]["reachable"] is True
        payments = breaker_of(board, "payments-api")
        assert payments is not None
        assert payments["state"] == "open"
        # Opening starts a fresh window: the counts that tripped it are gone.
        assert payments["window_calls"] == 0
        assert payments["failure_rate"] is None
        assert 0 < payments["retry_after"] <= 60
        assert payments["open_until_ms"] > payments["read_at_ms"]
        assert payments["last_reason"] in {"consecutive_failures", "failure_rate"}
        assert payments["probes_in_flight"] == 0
        inventory = breaker_of(board, "inventory")
        assert inventory is not None
        assert (inventory["state"], inventory["window_calls"]) == ("closed", 1)
        with pytest.raises(ZeroDivisionError):
            redbreaker.Breaker("inventory", store=sync_store).call(lambda: 1 / 0)
        # No transition: the refresh loop brings the new counts.
        board = dash.wait_for_board(
            lambda b: breaker_of(b, "inventory")["window_failures"] == 1  # type: ignore[index]
        )
        inventory = breaker_of(board, "inventory")
        assert inventory is not None
        assert (inventory["window_calls"], inventory["failure_rate"]) == (2, 0.5)
        assert inventory["consecutive_failures"] == 1
        status, headers, _ = dash.request("GET", "/healthz")
        assert status == 200
        assert headers["cache-control"] == "no-store"


def test_watching_writes_nothing_to_redis(redis_server: RedisServer, redis_url: str) -> None:
    with redis_server.client() as client, DashboardProcess(redis_url) as dash:
        dash.wait_for_board(lambda b: b["redis"]["reachable"])
        status, _ = dash.act("force-open", {"name": "typo"}, token=TOKEN)
        assert status == 404
        time.sleep(0.5)
        assert client.dbsize() == 0


def test_one_subscription_serves_every_viewer(redis_server: RedisServer, redis_url: str) -> None:
    with redis_server.client() as client, DashboardProcess(redis_url) as dash:
        dash.wait_for_board(lambda b: b["redis"]["reachable"])
        viewers = [EventStream(dash.url) for _ in range(4)]
        try:
            for viewer in viewers:
                assert viewer.next_event()[0] == "board"
            assert dash.get_json("/healthz")["viewers"] == 4
            ((_, subscribers),) = client.pubsub_numsub("redbreaker:events")
            assert subscribers == 1
        finally:
            for viewer in viewers:
                viewer.close()
        # Viewers that left are forgotten (a heartbeat every 10 s notices at the latest).
        deadline = time.monotonic() + 15
        while dash.get_json("/healthz")["viewers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dash.get_json("/healthz")["viewers"] == 0


def test_actions_are_absent_without_a_token(redis_url: str, sync_store) -> None:
    _touch(sync_store, "payments")
    with DashboardProcess(redis_url) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        for token in (None, TOKEN):
            status, reply = dash.act("force-open", {"name": "payments"}, token=token)
            assert status == 404
            assert "REDBREAKER_ADMIN_TOKEN" in reply["error"]
        assert redbreaker.Breaker("payments", store=sync_store).snapshot().state is State.CLOSED
        assert any("read-only" in line for line in dash.first_lines)


def test_actions_refuse_a_missing_or_wrong_token(redis_url: str, sync_store) -> None:
    _touch(sync_store, "payments")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        status, _, _ = dash.request("GET", "/")
        assert status == 200
        status, reply = dash.act("force-open", {"name": "payments"}, token=None)
        assert status == 401
        assert "Bearer" in reply["error"]
        status, reply = dash.act("force-open", {"name": "payments"}, token=TOKEN + "x")
        assert status == 403
        assert reply == {"error": "wrong admin token"}
        status, _, _ = dash.request(
            "POST",
            "/api/actions/force-open",
            body={"name": "payments"},
            headers={"Authorization": f"Basic {TOKEN}"},
        )
        assert status == 401
        assert redbreaker.Breaker("payments", store=sync_store).snapshot().state is State.CLOSED


def test_the_right_token_takes_the_order_to_redis(redis_url: str, sync_store) -> None:
    breaker = _touch(sync_store, "payments")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        status, reply = dash.act("force-open", {"name": "payments", "duration": 30}, TOKEN)
        assert status == 200, reply
        assert reply["breaker"]["state"] == "forced_open"
        snapshot = breaker.snapshot()
        assert snapshot.state is State.FORCED_OPEN
        assert snapshot.forced_until_ms is not None
        assert 25_000 < snapshot.forced_until_ms - snapshot.now_ms <= 30_000
        status, reply = dash.act("metrics-only", {"name": "payments"}, TOKEN)
        assert (status, breaker.snapshot().state) == (200, State.METRICS_ONLY)
        status, reply = dash.act("force-close", {"name": "payments", "duration": None}, TOKEN)
        assert (status, breaker.snapshot().state) == (200, State.FORCED_CLOSED)
        status, reply = dash.act("reset", {"name": "payments"}, TOKEN)
        assert (status, breaker.snapshot().state) == (200, State.CLOSED)
        # What the board says follows at once (the order's reply), and in history.
        board = dash.wait_for_board(
            lambda b: len(breaker_of(b, "payments")["history"]) >= 4  # type: ignore[index]
        )
        reasons = [t["reason"] for t in breaker_of(board, "payments")["history"]]  # type: ignore[index]
        assert reasons[0] == "reset"


def test_bad_action_requests_are_refused(redis_url: str, sync_store) -> None:
    _touch(sync_store, "payments")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        assert dash.act("explode", {"name": "payments"}, TOKEN)[0] == 404
        assert dash.act("force-open", {"name": "payments", "duration": -1}, TOKEN)[0] == 400
        assert dash.act("force-open", {"name": "payments", "duration": "1"}, TOKEN)[0] == 400
        assert dash.act("reset", {"name": "payments", "duration": 5}, TOKEN)[0] == 400
        assert dash.act("force-open", ["payments"], TOKEN)[0] == 400
        status, _, _ = dash.request(
            "POST",
            "/api/actions/force-open",
            body=None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
        )
        assert status == 415
        assert redbreaker.Breaker("payments", store=sync_store).snapshot().state is State.CLOSED


def test_an_order_for_an_unknown_name_creates_nothing(
    redis_server: RedisServer, redis_url: str, sync_store
) -> None:
    _touch(sync_store, "payments")
    with redis_server.client() as client, DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        keys = sorted(client.keys("*"))
        for name in ("paymnets", "has space", XSS_NAME):
            status, reply = dash.act("force-open", {"name": name}, TOKEN)
            assert status == 404, reply
            assert "never create" in reply["error"]
        assert sorted(client.keys("*")) == keys


def test_the_page_carries_no_token_and_a_strict_policy(redis_url: str) -> None:
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        status, headers, body = dash.request("GET", "/")
        assert status == 200
        page = body.decode()
        assert TOKEN not in page
        assert "innerHTML" not in page
        assert "insertAdjacentHTML" not in page
        policy = headers["content-security-policy"]
        assert "script-src 'sha256-" in policy
        assert "'unsafe-inline'" not in policy
        assert "connect-src 'self'" in policy
        assert all(TOKEN not in line for line in dash.first_lines)


def test_an_xss_name_is_served_as_data(redis_url: str, sync_store) -> None:
    _trip(sync_store, XSS_NAME)
    with DashboardProcess(redis_url) as dash:
        board = dash.wait_for_board(lambda b: b["breakers"])
        assert board["breakers"][0]["name"] == XSS_NAME
        _, headers, _ = dash.request("GET", "/api/breakers")
        assert headers["content-type"].startswith("application/json")


def test_the_event_stream_delivers_a_trip(redis_url: str, sync_store) -> None:
    _touch(sync_store, "payments")
    with DashboardProcess(redis_url) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        stream = EventStream(dash.url)
        try:
            kind, board = stream.next_event()
            assert kind == "board"
            assert breaker_of(board, "payments")["state"] == "closed"  # type: ignore[index]
            _trip(sync_store, "payments")
            event = stream.wait_for(lambda e: e["type"] == "transition")[-1]
            transition = event["transition"]
            assert transition["name"] == "payments"
            assert (transition["previous"], transition["current"]) == ("closed", "open")
            assert transition["heard"] is True
            # The breaker is read again at once: its deadline arrives with it.
            event = stream.wait_for(
                lambda e: e["type"] == "breaker" and e["breaker"]["state"] == "open"
            )[-1]
            assert event["breaker"]["open_until_ms"] is not None
            assert event["breaker"]["history"][0]["generation"] == transition["generation"]
        finally:
            stream.close()


def test_survives_a_redis_restart() -> None:
    with RedisServer() as server:
        store = redbreaker.connect(server.url)
        try:
            _touch(store, "payments")
            with DashboardProcess(server.url) as dash:
                dash.wait_for_board(lambda b: b["breakers"] and b["redis"]["reachable"])
                stream = EventStream(dash.url)
                try:
                    stream.next_event()
                    server.stop()
                    down = stream.wait_for(lambda e: e["type"] == "redis")[-1]
                    assert down["redis"]["reachable"] is False
                    assert down["redis"]["down_since_ms"] is not None
                    board = dash.get_json("/api/breakers")
                    assert board["redis"]["reachable"] is False
                    assert breaker_of(board, "payments") is not None  # last known figures
                    assert dash.get_json("/healthz")["redis_reachable"] is False
                    server.start()  # same port, no data
                    # Back: everything read again (the restarted Redis lost its data).
                    seen = stream.wait_for(
                        lambda e: e["type"] == "redis" and e["redis"]["reachable"], seconds=20
                    )
                    assert {"type": "removed", "name": "payments"} in seen
                    fresh = redbreaker.connect(server.url)  # no memory of the outage
                    try:
                        _trip(fresh, "search")
                    finally:
                        fresh.close()
                    event = stream.wait_for(lambda e: e["type"] == "transition")[-1]
                    assert event["transition"]["name"] == "search"
                finally:
                    stream.close()
                assert dash.stop() == 0
        finally:
            store.close()


def test_warns_when_bound_beyond_loopback(redis_url: str) -> None:
    dash = DashboardProcess(redis_url, host="0.0.0.0", admin_token=TOKEN)
    with dash:
        assert dash.get_json("/healthz")["ok"] is True
        assert dash.stop() == 0
        warnings = dash.stderr_text()
    assert "!!! WARNING: serving on 0.0.0.0" in warnings
    assert "clear text" in warnings
    assert TOKEN not in warnings


def test_a_taken_port_exits_2(redis_url: str) -> None:
    from redbreaker._dashboard import run_dashboard

    with DashboardProcess(redis_url) as dash:
        port = urllib.parse.urlsplit(dash.url).port
        assert port is not None
        code = run_dashboard(
            redis_url, prefix="p", host="127.0.0.1", port=port, admin_token=None, out=io.StringIO()
        )
        assert code == 2


def test_metrics_exports_the_fleet_gauges(redis_url: str, sync_store) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _trip(sync_store, "payments-api")
    inventory = _touch(sync_store, "inventory")
    with pytest.raises(ZeroDivisionError):
        inventory.call(lambda: 1 / 0)
    with DashboardProcess(redis_url) as dash:
        dash.wait_for_board(lambda b: len(b["breakers"]) == 2)
        status, headers, body = dash.request("GET", "/metrics")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert samples[("redbreaker_state", (("name", "payments-api"), ("state", "open")))] == 1
        assert samples[("redbreaker_state", (("name", "inventory"), ("state", "open")))] == 0
        assert samples[("redbreaker_failure_rate", (("name", "inventory"),))] == 0.5


def test_metrics_in_resilience4j_names(redis_url: str, sync_store) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _trip(sync_store, "payments-api")
    with DashboardProcess(redis_url, naming="resilience4j", prefix="redbreaker") as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        status, _, body = dash.request("GET", "/metrics")
        assert status == 200, body
        states = {
            s.labels["state"]: s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "resilience4j_circuitbreaker_state"
        }
        assert states["open"] == 1
        assert states["closed"] == 0


def test_serves_while_redis_is_down() -> None:
    """A dashboard whose Redis is down still serves, and says so."""
    port = RedisServer().port  # a free port, nobody listening
    with DashboardProcess(f"redis://127.0.0.1:{port}/0") as dash:
        board = dash.wait_for_board(lambda b: b["redis"]["problem"] not in (None, "connecting"))
        assert board["redis"]["reachable"] is False
        assert board["breakers"] == []
        assert dash.stop() == 0


def test_redis_errors_do_not_leak_as_500s(redis_url: str, sync_store) -> None:
    _touch(sync_store, "payments")
    with DashboardProcess(redis_url, admin_token=TOKEN) as dash:
        dash.wait_for_board(lambda b: b["breakers"])
        with redis.Redis.from_url(redis_url) as client:
            client.set("redbreaker:{not-a-hash}", "x")
        board = dash.wait_for_board(lambda b: b["redis"]["reachable"])
        assert breaker_of(board, "not-a-hash") is None
        assert dash.act("force-open", {"name": "not-a-hash"}, TOKEN)[0] in (404, 503)


def read_to_the_end(viewer: EventStream, most: int = 10) -> None:
    """Read ``viewer``'s events until its stream ends (EOFError): events sent before a
    shutdown may still be buffered. A stream that hangs raises TimeoutError; one that goes
    on past ``most`` events fails."""
    for _ in range(most):
        viewer.next_event(5)
    raise AssertionError(f"the stream went on past {most} events")


def test_sigterm_ends_every_stream_and_exits_0(redis_url: str) -> None:
    with DashboardProcess(redis_url) as dash:
        viewers = [EventStream(dash.url) for _ in range(3)]
        try:
            for viewer in viewers:
                assert viewer.next_event()[0] == "board"
            assert dash.stop() == 0  # None would mean it had to be killed
            for viewer in viewers:
                with pytest.raises(EOFError):
                    read_to_the_end(viewer)
        finally:
            for viewer in viewers:
                viewer.close()
