"""``redbreaker watch`` as a process: it survives a Redis restart and a dropped connection,
says so, reports what changed while it was away, and ends on SIGTERM with exit 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from redis_servers import RedisServer, redis_server_binary

if TYPE_CHECKING:
    from collections.abc import Iterator

PREFIX = "wr"


class _Watcher:
    """``python -m redbreaker watch --json`` with its stdout and stderr read by threads."""

    def __init__(self, url: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "redbreaker", "watch", "--url", url, "--prefix", PREFIX, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        stdout, stderr = self.proc.stdout, self.proc.stderr
        self.readers = [
            threading.Thread(target=lambda: [self.out.put(x) for x in stdout], daemon=True),
            threading.Thread(target=lambda: [self.err.append(x) for x in stderr], daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def next_json(self, seconds: float = 30) -> dict[str, Any]:
        line = self.out.get(timeout=seconds)
        data: dict[str, Any] = json.loads(line)  # every stdout line is one JSON object
        return data

    def until(self, event: str, seconds: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while True:
            data = self.next_json(max(0.1, deadline - time.monotonic()))
            if data["event"] == event:
                return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for reader in self.readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    if redis_server_binary() is None:
        pytest.skip("!!! redis-server not found: the watch tests are SKIPPED !!!")
    with RedisServer() as made:
        yield made


def _subscribed(server: RedisServer) -> None:
    deadline = time.monotonic() + 30
    with server.client() as client:
        while (
            dict(client.pubsub_numsub(f"{PREFIX}:events")).get(f"{PREFIX}:events".encode(), 0) < 1
        ):
            assert time.monotonic() < deadline, "watch never subscribed"
            time.sleep(0.02)


def _force_open(url: str, name: str) -> None:
    store = redbreaker.connect(url, prefix=PREFIX)
    try:
        redbreaker.Breaker(name, store=store).force_open()
    finally:
        store.close()


@pytest.mark.slow
def test_watch_survives_a_restart_and_reports_missed_transitions(server: RedisServer) -> None:
    """Restart: disconnected, then reconnected, and transitions after it are printed. A
    dropped connection while the watcher is frozen (SIGSTOP): the transition made meanwhile
    is reported as missed after the reconnect. SIGTERM: exit 0."""
    watcher = _Watcher(server.url, "--json")
    try:
        assert watcher.next_json() == {"event": "watching", "prefix": PREFIX}
        _subscribed(server)
        _force_open(server.url, "svc")
        first = watcher.until("transition")
        assert (first["name"], first["previous"], first["current"]) == (
            "svc",
            "closed",
            "forced_open",
        )
        assert first["generation"] == 2
        assert first["at"].endswith("+00:00")

        server.stop()
        lost = watcher.until("disconnected")
        assert lost["error"]
        time.sleep(0.5)  # a few failed reconnects in a row
        assert watcher.proc.poll() is None
        server.start()  # same port, empty
        back = watcher.until("reconnected")
        assert back["outage_seconds"] > 0
        # The restart lost every key (no persistence): watch says so.
        assert watcher.next_json() == {
            "event": "missed",
            "name": "svc",
            "previous_generation": 2,
            "generation": None,
            "state": None,
        }
        _subscribed(server)
        _force_open(server.url, "svc2")
        again = watcher.until("transition")
        assert (again["name"], again["current"]) == ("svc2", "forced_open")

        # A blip without data loss: freeze the watcher, drop its connection, change a breaker.
        os.kill(watcher.proc.pid, signal.SIGSTOP)
        try:
            with server.client() as admin:
                assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
            store = redbreaker.connect(server.url, prefix=PREFIX)
            try:
                redbreaker.Breaker("svc2", store=store).reset()
            finally:
                store.close()
        finally:
            os.kill(watcher.proc.pid, signal.SIGCONT)
        watcher.until("disconnected")
        watcher.until("reconnected")
        missed = watcher.until("missed")
        assert missed == {
            "event": "missed",
            "name": "svc2",
            "previous_generation": 2,
            "generation": 3,
            "state": "closed",
        }
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.proc.wait(timeout=30) == 0
    finally:
        watcher.close()
    stderr = "".join(watcher.err)
    assert "redbreaker watch: lost the feed from" in stderr
    assert "redbreaker watch: back after" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_watch_text_says_so_on_stderr(server: RedisServer) -> None:
    """Without --json: stdout has the transitions, stderr the lost/back lines."""
    watcher = _Watcher(server.url)
    try:
        assert watcher.out.get(timeout=30) == (
            f"watching transitions under prefix {PREFIX!r} (Ctrl-C to stop)\n"
        )
        _subscribed(server)
        server.kill()
        deadline = time.monotonic() + 30
        while not any("lost the feed" in line for line in watcher.err):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.start()
        _subscribed(server)
        _force_open(server.url, "svc")
        line = watcher.out.get(timeout=30)
        assert line.endswith("  svc: closed -> forced_open (operator:force_open, generation 2)\n")
        watcher.proc.send_signal(signal.SIGINT)
        assert watcher.proc.wait(timeout=30) == 0
    finally:
        watcher.close()


def test_watch_with_refused_credentials_exits_2() -> None:
    """A configuration error is not a blip: exit 2 with one line."""
    if redis_server_binary() is None:
        pytest.skip("!!! redis-server not found: the watch tests are SKIPPED !!!")
    with RedisServer(
        extra_args=["--requirepass", "right"], client_kwargs={"password": "right"}
    ) as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        done = subprocess.run(
            [sys.executable, "-m", "redbreaker", "watch", "--url", url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stdout.splitlines()[1:]) == (2, [])
    assert done.stderr.count("\n") == 1
    assert "refused the credentials" in done.stderr
    assert "wrong" not in done.stderr


@pytest.mark.slow
def test_watch_started_before_redis_waits_for_it(server: RedisServer) -> None:
    """Redis down when watch starts: it keeps trying (no exit), then follows it, with
    nothing reported as missed (it had nothing to compare with)."""
    server.stop()
    watcher = _Watcher(server.url, "--json")
    try:
        assert watcher.next_json() == {"event": "watching", "prefix": PREFIX}
        assert watcher.next_json()["event"] == "disconnected"
        time.sleep(0.3)
        assert watcher.proc.poll() is None
        server.start()
        assert watcher.next_json()["event"] == "reconnected"
        _subscribed(server)
        _force_open(server.url, "svc")
        assert watcher.next_json()["event"] == "transition"
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.proc.wait(timeout=30) == 0
    finally:
        watcher.close()
