"""Sentinel failover under load: one primary, one replica, three sentinels, four worker
processes calling through a shared breaker; the primary is SIGKILLed.

Held: callers see only their ``on_store_error`` policy's exceptions ("allow": none,
"reject": StoreUnavailableError alone); every worker's store uses the promoted replica
again without a restart; the time from the kill to each worker's recovery is printed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from typing import Any

import pytest

import failover_workers
from redis_servers import RedisServer
from test_topologies import SentinelServer

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]

WORKERS = 4
READY_SECONDS = 20.0


def _sentinel(master_port: int) -> SentinelServer:
    """A sentinel of ``mymaster`` with a quorum of 2 and a 1 s down-after."""
    return SentinelServer(master_port, quorum=2, down_after_ms=1000, failover_timeout_ms=5000)


def _wait(check: Any, what: str, seconds: float = READY_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} within {seconds:g} s", pytrace=False)
        time.sleep(0.05)


def _master_port(sentinel: SentinelServer) -> int | None:
    with contextlib.suppress(Exception), sentinel.client(decode_responses=True) as r:
        address = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return int(address[1]) if address else None
    return None


def _ready(primary: RedisServer, replica: RedisServer, sentinels: list[SentinelServer]) -> bool:
    with replica.client(decode_responses=True) as r:
        if r.info("replication").get("master_link_status") != "up":
            return False
    for sentinel in sentinels:
        with sentinel.client(decode_responses=True) as r:
            master = r.sentinel_master("mymaster")
            if master.get("num-other-sentinels") != 2 or master.get("num-slaves") != 1:
                return False
        if _master_port(sentinel) != primary.port:
            return False
    return True


@pytest.mark.parametrize(
    ("driver", "policy"), [("sync", "allow"), ("sync", "reject"), ("aio", "allow")]
)
def test_sigkill_of_the_primary_under_load(driver: str, policy: str) -> None:
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    sentinels = [_sentinel(primary.port).start() for _ in range(3)]
    servers: list[RedisServer] = [*sentinels, replica, primary]
    ctx = multiprocessing.get_context("spawn")
    stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs: list[Any] = []
    try:
        _wait(lambda: _ready(primary, replica, sentinels), "the sentinels did not see both")
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        url = f"redis+sentinel://{hosts}/mymaster"
        procs = [
            ctx.Process(
                target=failover_workers.run if driver == "sync" else failover_workers.run_aio,
                args=(i, url, policy),
                kwargs={"ready": ready, "stop": stop, "results": results},
                daemon=True,
            )
            for i in range(WORKERS)
        ]
        for proc in procs:
            proc.start()
        assert ready.wait(READY_SECONDS)
        time.sleep(1.0)  # calls flow through the primary

        killed_at = time.time()
        primary.kill()
        promoted = _wait(
            lambda: _master_port(sentinels[0]) == replica.port,
            "no sentinel promoted the replica",
        )
        promoted_at = time.time()
        assert promoted
        time.sleep(7.0)  # calls flow through the promoted replica (store backoff cap: 5 s)
        stop.set()
        reports = [results.get(timeout=30) for _ in range(WORKERS)]
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()

    errors = [r["error"] for r in reports if "error" in r]
    assert errors == []
    allowed = {"ok"} if policy == "allow" else {"ok", "StoreUnavailableError"}
    recovered_after = []
    for report in reports:
        assert set(report["outcomes"]) <= allowed, report
        assert report["outcomes"]["ok"] > 0
        kinds = [kind for kind, _ in report["events"]]
        # Each worker lost Redis with the primary and used the promoted replica again.
        assert kinds[:1] == ["store_degraded"], report
        assert kinds[-1] == "store_recovered", report
        recovered_at = max(at for kind, at in report["events"] if kind == "store_recovered")
        assert recovered_at > killed_at
        assert report["last_ok_through_redis"] > promoted_at
        recovered_after.append(recovered_at - killed_at)
    print(
        f"\n[failover] driver={driver} policy={policy} "
        f"promoted_after={promoted_at - killed_at:.2f}s "
        f"recovered_after(max)={max(recovered_after):.2f}s "
        f"outcomes={[r['outcomes'] for r in sorted(reports, key=lambda r: r['index'])]}"
    )
