"""Clock skew: workers whose wall clocks are hours apart run one breaker exactly as workers
with one clock do, because every shared time comes from the Redis server (``TIME`` inside
the scripts), never from a host's wall clock.

Four worker processes (``spawn``, see ``skew_workers.py``) read a wall clock 6 h behind,
right, 3 h ahead and 11 h ahead; they take turns failing, trip the breaker, are rejected
while it is open and race for the probe after it. The same scenario run with no skew gives
the same transitions, generations and open durations.

Patching the wall clock leaves ``time.monotonic`` alone (a wrong wall clock does not move
it); the library uses the monotonic clock only locally, to age a rejection it cached and to
time a call, so a skewed host still stops rejecting locally when the server's deadline
passes.
"""

from __future__ import annotations

import ast
import multiprocessing
import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
import skew_workers

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

HOUR = 3600.0
OFFSETS = (-6 * HOUR, 0.0, 3 * HOUR, 11 * HOUR)
AHEAD = OFFSETS.index(11 * HOUR)
RECOVERY_MS = 300
SETTINGS: dict[str, Any] = {
    "failure_threshold": 5,
    "recovery_timeout": RECOVERY_MS / 1000,
    "probe_lease": 5.0,
}
RESULT_TIMEOUT = 30.0
POLL_LIMIT = 5.0
SRC = Path(__file__).resolve().parents[1] / "src" / "redbreaker"


class SkewedWorkers:
    """One process per offset, each answering the commands of ``skew_workers.handle``."""

    def __init__(self, url: str, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in OFFSETS]
        self.procs = [
            ctx.Process(
                target=skew_workers.entry,
                args=(i, offset, url, name, SETTINGS),
                kwargs={"commands": self.commands[i], "results": self.results},
                daemon=True,
                name=f"skew-{offset:+.0f}s",
            )
            for i, offset in enumerate(OFFSETS)
        ]

    def __enter__(self) -> SkewedWorkers:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for commands in self.commands:
            commands.put(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            proc.close()
        for q in (*self.commands, self.results):
            q.close()
            q.join_thread()

    def ask_all(self, command: tuple[Any, ...], who: list[int] | None = None) -> list[Any]:
        """Send ``command`` to workers ``who`` (all by default) at once; their replies."""
        who = list(range(len(OFFSETS))) if who is None else who
        for i in who:
            self.commands[i].put(command)
        got: dict[int, Any] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(got) < len(who):
            try:
                index, kind, payload = self.results.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                missing = sorted(set(who) - set(got))
                raise AssertionError(f"workers {missing} did not answer {command}") from None
            if kind == "error":
                raise AssertionError(f"worker {index} ({OFFSETS[index]:+.0f} s) failed:\n{payload}")
            got[index] = payload
        return [got[i] for i in who]

    def ask(self, index: int, command: tuple[Any, ...]) -> Any:
        return self.ask_all(command, [index])[0]


class LocalWorkers:
    """The baseline: four breakers with four stores in this process, one clock."""

    def __init__(self, url: str, name: str) -> None:
        self.stores = [redbreaker.connect(url) for _ in OFFSETS]
        self.seen: list[list[skew_workers.Event]] = [[] for _ in OFFSETS]
        self.breakers = [
            redbreaker.Breaker(
                name,
                store=store,
                on_transition=[lambda t, seen=seen: seen.append(skew_workers.event(t))],
                **SETTINGS,
            )
            for store, seen in zip(self.stores, self.seen, strict=True)
        ]

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        for store in self.stores:
            store.close()

    def ask(self, index: int, command: tuple[Any, ...]) -> Any:
        return skew_workers.handle(
            self.breakers[index], self.stores[index], self.seen[index], command
        )

    def ask_all(self, command: tuple[Any, ...]) -> list[Any]:
        if command[0] != "poll":
            return [self.ask(i, command) for i in range(len(OFFSETS))]
        # One process cannot poll four ways at once; the first poller gets the probe and
        # closes the breaker, the others are then admitted at once.
        return [self.ask(i, command) for i in (AHEAD, *(i for i in range(4) if i != AHEAD))]


def hash_of(client: Any, name: str) -> dict[str, str]:
    raw = client.hgetall(f"redbreaker:{{{name}}}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def run_scenario(workers: SkewedWorkers | LocalWorkers, client: Any, name: str) -> dict[str, Any]:
    """Four rounds; in round r the workers fail in turn so that worker r makes the fifth
    failure and trips the breaker; each then tries once (the one 11 h ahead first); then
    all poll until admitted. Returns what a run must agree on, and the evidence."""
    events: list[skew_workers.Event] = []
    trippers: list[int] = []
    durations: list[int] = []
    checked_ahead = 0
    probes_per_round: list[int] = []
    for r in range(len(OFFSETS)):
        order = [(r + 1 + i) % 4 for i in range(4)] + [r]
        for i in order:
            reply = workers.ask(i, ("fail",))
            if reply["events"]:
                trippers.append(i)
            events += reply["events"]
        fields = hash_of(client, name)
        assert fields["state"] == "open", fields
        opened_at, open_until = int(fields["opened_at"]), int(fields["open_until"])
        durations.append(open_until - opened_at)
        # No skewed wall clock leaked into a shared time: every stamp is the server's.
        now = server_ms(client)
        for stamp in ("opened_at", "changed_at", "created_at"):
            assert abs(int(fields[stamp]) - now) < 60_000, (stamp, fields[stamp], now)

        ahead = workers.ask(AHEAD, ("try",))
        events += ahead["events"]
        if ahead["before_ms"] < open_until - 50:
            # Its wall clock is 11 h past the deadline; Redis's is not.
            state, retry_after = ahead["rejected"]
            assert state == "open"
            assert 0 < retry_after <= RECOVERY_MS / 1000
            checked_ahead += 1

        polls = workers.ask_all(("poll", POLL_LIMIT))
        probes = 0
        for reply in polls:
            events += reply["events"]
            probes += reply["admitted"][1]
            for state, retry_after in reply["rejections"]:
                if state == "open":  # never a deadline further away than the server's
                    assert retry_after is not None
                    assert 0 < retry_after <= RECOVERY_MS / 1000
        probes_per_round.append(probes)
        half_open = [e for e in events if e[2] == "recovery_timeout_elapsed"][-1]
        assert half_open[4] >= open_until, (half_open, open_until)  # never early
        assert hash_of(client, name)["state"] == "closed"
    events.sort(key=lambda e: e[3])
    return {
        "transitions": [e[:4] for e in events],
        "trippers": trippers,
        "durations": durations,
        "probes_per_round": probes_per_round,
        "checked_ahead": checked_ahead,
    }


EXPECTED_ROUND = [
    ("closed", "open", "consecutive_failures"),
    ("open", "half_open", "recovery_timeout_elapsed"),
    ("half_open", "closed", "probes_succeeded"),
]


@pytest.fixture
def raw_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_skewed_workers_agree_with_an_unskewed_run(redis_url: str, raw_client: Any) -> None:
    """Workers at -6 h, 0, +3 h, +11 h trip, reject and probe exactly as with one clock."""
    # Same transitions and generations, open_until - opened_at == recovery_timeout exactly
    # whoever tripped, and the +11 h worker is rejected until the server's deadline.
    with SkewedWorkers(redis_url, "skewed") as workers:
        clocks = workers.ask_all(("clock",))
        now = time.time()
        for offset, reading in zip(OFFSETS, clocks, strict=True):
            assert abs(reading["time"] - now - offset) < 60, (offset, reading, now)
        skewed = run_scenario(workers, raw_client, "skewed")
    with LocalWorkers(redis_url, "plain") as local:
        plain = run_scenario(local, raw_client, "plain")

    expected = [
        (prev, cur, reason, 3 * r + k + 2)
        for r in range(4)
        for k, (prev, cur, reason) in enumerate(EXPECTED_ROUND)
    ]
    assert skewed["transitions"] == plain["transitions"] == expected
    assert skewed["trippers"] == plain["trippers"] == [0, 1, 2, 3]
    assert skewed["durations"] == plain["durations"] == [RECOVERY_MS] * 4
    assert skewed["probes_per_round"] == plain["probes_per_round"] == [1] * 4
    assert skewed["checked_ahead"] >= 1  # the 11 h-ahead worker was asked before the deadline


def test_library_reads_no_wall_clock() -> None:
    """No library module reads the wall clock (time.time, datetime.now...) but the demo."""
    # The demo schedules its own worker processes by wall clock; no breaker timing. `watch`
    # and the dashboard stamp when they lost Redis, for the operator: no Redis clock then.
    allowed = {"_demo.py", "_cli_watch.py", "_dashboard_fleet.py"}
    offenders: dict[str, list[int]] = {}
    for path in sorted(SRC.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            hit = False
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                hit = (node.value.id, node.attr) in {
                    ("time", "time"),
                    ("time", "time_ns"),
                    ("datetime", "now"),
                    ("datetime", "utcnow"),
                    ("datetime", "today"),
                    ("date", "today"),
                }
            elif isinstance(node, ast.ImportFrom) and node.module == "time":
                hit = any(alias.name in ("time", "time_ns") for alias in node.names)
            if hit:
                offenders.setdefault(path.name, []).append(node.lineno)
    assert set(offenders) <= allowed, offenders
    assert len(list(SRC.glob("*.py"))) > 10  # the scan saw the package
