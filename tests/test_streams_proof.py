"""The Streams proof: 10,000 messages, 4 consumer processes, the dependency down for 2 s in
the middle, one consumer SIGKILLed inside its handler; nothing lost, nothing
dead-lettered, the outage met with at most failure_threshold + consumers + probes calls.

Each consumer is a fresh interpreter (``tests/stream_workers.py``) running
``redbreaker.StreamConsumer`` (the ``aio`` run: ``redbreaker.aio.StreamConsumer`` on 2,000
messages and 2 processes). The stream has a redis-server of its own; the breaker and the
dependency's counters live on the session's (``redis_url``). The victim is armed after the
outage: at its next message it calls the dependency (a success, counted), then hangs
inside the handler, unacked, until the test SIGKILLs it; the survivors reclaim that message
and the rest of its batch with XAUTOCLAIM once ``min_idle`` has passed, so it is handled
twice: the duplicates reported are those. Figures go to
``/tmp/redbreaker-proofs/streams.json`` (``streams-aio.json``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from dependency import Dependency, wait_for_proof, write_proof
from redis_servers import RedisServer
from stream_workers import ARM, INSIDE_VICTIM, STATS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TESTS = Path(__file__).resolve().parent
STREAM = "{proof}:orders"
GROUP = "proof"
DOWN_SECONDS = 2.0
FAILURE_THRESHOLD = 5
RECOVERY_TIMEOUT = 0.5
MIN_IDLE = 2.0  # the victim's messages are reclaimed 2 to 3 s after it dies
# A message can fail at most once before the trip plus once per probe it carries (about
# DOWN_SECONDS / RECOVERY_TIMEOUT + 1 = 5): 10 keeps an outage from dead-lettering one.
MAX_DELIVERIES = 10
RESUME_SLACK = 1.5  # seconds, generous: 2 shared vCPUs, other suites running alongside
RUN_LIMIT = 45.0

RUNS = {
    "sync": {"messages": 10_000, "consumers": 4, "down_after": 3_000},
    "aio": {"messages": 2_000, "consumers": 2, "down_after": 600},
}


@pytest.fixture
def stream_server() -> Iterator[RedisServer]:
    """The stream's own redis-server: the breaker lives on another (``redis_url``)."""
    with RedisServer() as server:
        yield server



def _wait_for(what: str, done: Callable[[], bool], seconds: float, logs: Path) -> None:
    wait_for_proof("streams", what, done, seconds, logs)

def _start(params: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(TESTS / "stream_workers.py"), json.dumps(params)],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def _stop(workers: list[subprocess.Popen[bytes]]) -> list[int | None]:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in workers]


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_proof_no_message_lost_across_an_outage_and_a_sigkill(
    kind: str, redis_url: str, stream_server: RedisServer, tmp_path: Path
) -> None:
    run = RUNS[kind]
    messages, consumers = run["messages"], run["consumers"]
    stream_url = stream_server.url
    dependency = Dependency(redis_url)
    counters = redis.Redis.from_url(redis_url)
    streams = redis.Redis.from_url(stream_url)
    streams.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [f"m{i:05d}" for i in range(messages)]
    with streams.pipeline(transaction=False) as pipe:
        for n in ids:
            pipe.xadd(STREAM, {"n": n, "body": "x" * 64})
        pipe.execute()

    breaker_settings = {
        "failure_threshold": FAILURE_THRESHOLD,
        "recovery_timeout": RECOVERY_TIMEOUT,
        "half_open_max_calls": 1,
    }
    base = {
        "kind": kind, "dep_url": redis_url, "store_url": redis_url, "stream_url": stream_url,
        "stream": STREAM, "group": GROUP, "breaker": breaker_settings,
        "settings": {
            "batch_size": 10, "min_idle": MIN_IDLE, "max_block": 0.5,
            "max_deliveries": MAX_DELIVERIES,
        },
    }
    names = [f"c{i}" for i in range(consumers)]
    victim = names[-1]
    started = time.monotonic()
    workers = [
        _start({**base, "consumer": name, "role": "victim" if name == victim else "work"},
               tmp_path / f"{name}.log")
        for name in names
    ]
    exits: list[int | None] = []
    try:
        _wait_for(
            "the first messages", lambda: dependency.counts()["handled"] >= run["down_after"],
            30, tmp_path,
        )
        dependency.take_down()
        time.sleep(DOWN_SECONDS)
        dependency.bring_up()
        resumed_at = dependency.counts()["handled"]
        _wait_for(
            "handling after the outage",
            lambda: dependency.counts()["handled"] >= resumed_at + 200, 15, tmp_path,
        )
        counters.set(ARM, "1")
        _wait_for("the victim inside its handler", lambda: counters.exists(INSIDE_VICTIM), 15,
                  tmp_path)
        workers[-1].send_signal(signal.SIGKILL)
        workers[-1].wait(10)
        killed_in = counters.get(INSIDE_VICTIM).decode()
        _wait_for(
            "every message handled and acked",
            lambda: dependency.counts()["handled"] >= messages
            and streams.xpending(STREAM, GROUP)["pending"] == 0,
            RUN_LIMIT, tmp_path,
        )
        wall = time.monotonic() - started
    finally:
        exits = _stop(workers)

    store = redbreaker.connect(redis_url)
    snapshot = redbreaker.Breaker("dep", store=store, **breaker_settings).snapshot()
    store.close()
    counts = dependency.counts()
    handled_ids = dependency.handled()
    resume = dependency.resume_seconds()
    pending = streams.xpending(STREAM, GROUP)["pending"]
    dead = streams.xlen(f"{STREAM}:dead")
    failure_counts = streams.hlen(f"{STREAM}:{GROUP}:failures")
    stats = {k.decode(): json.loads(v) for k, v in counters.hgetall(STATS).items()}
    totals = {
        field: sum(s[field] for s in stats.values())
        for field in ("handled", "failed", "deferred", "dead_lettered", "reclaimed")
    }
    dependency.close()
    counters.close()
    streams.close()

    probes = snapshot.open_count - 1  # every re-open followed one failed probe
    bound = FAILURE_THRESHOLD + consumers + probes
    # Waiters wake at the deadline plus a jitter under 50 ms; then one probe's time.
    resume_bound = RECOVERY_TIMEOUT + 0.05 + RESUME_SLACK
    figures: dict[str, Any] = {
        "queue": "streams" if kind == "sync" else "streams-aio",
        "driver": kind,
        "messages": messages,
        "handled": counts["handled"],
        "duplicates": counts["successes"] - counts["handled"],
        "lost": messages - len(handled_ids & set(ids)),
        "failed": totals["failed"],
        "calls_down": counts["calls_down"],
        "bound": bound,
        "probes": probes,
        "opens": snapshot.open_count,
        "resume_seconds": resume,
        "resume_bound": round(resume_bound, 2),
        "wall_seconds": round(wall, 2),
        "consumers": consumers,
        "killed": victim,
        "killed_in_message": killed_in,
        "pending_at_end": pending,
        "dead_lettered": dead,
        "failure_counts_left": failure_counts,
        "deferred": totals["deferred"],
        "reclaimed": totals["reclaimed"],
        "survivor_stats": stats,
        "survivor_exits": exits[:-1],
        "final_state": str(snapshot.state),
    }
    print(f"\n[{figures['queue']}] " + json.dumps(figures))
    write_proof(str(figures["queue"]), figures)

    assert handled_ids == set(ids), "a message was lost"
    assert pending == 0
    assert dead == 0
    assert failure_counts == 0  # every failure count went with its message's ack
    assert counts["calls_down"] <= bound, figures
    assert resume is not None, figures
    assert resume <= resume_bound, figures
    assert snapshot.open_count >= 1
    assert killed_in in handled_ids
    assert totals["reclaimed"] >= 1  # the victim's message came back through XAUTOCLAIM
    assert figures["duplicates"] >= 1  # ... handled twice: it died before its ack
    assert exits[:-1] == [0] * (consumers - 1)  # the survivors stopped cleanly on SIGTERM
    assert len(stats) == consumers - 1
