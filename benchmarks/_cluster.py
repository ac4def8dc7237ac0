"""Propagation of an open on a Redis Cluster: cached breakers in worker processes.

A 3-primary cluster of fresh ``redis-server`` processes (cluster mode, no persistence, on
free ports of 127.0.0.1); ``workers`` spawned processes call through one cached breaker
in a loop; the parent force-opens it and each worker notes its first rejection (the same
trial as the "Propagation" section of run.py, ``_multi.propagation``). Per trial: the last
of the workers; over ``trials`` trials: median, p99 and max, in ms. The target is a p99 of
10 ms or less. Each trial's breaker has a new name, so the trials spread over the shards.

    python benchmarks/_cluster.py                      # 20 trials, 8 workers
    python benchmarks/_cluster.py --trials 40 --json out.json
    python benchmarks/_cluster.py --preview-spublish   # see below

How the open reaches the workers depends on the scripts: where they SPUBLISH (Redis >= 7),
on the sharded channel of the breaker's slot, heard on the shard that owns it; else on the
prefix's channel by plain PUBLISH, which the cluster broadcasts to every node. The report
says which. ``--preview-spublish`` measures the sharded path before lua/_common.lua sends
SPUBLISH, by making that one-line change in memory in every process of the run (the CLI's
own: spawned workers import this file again as their main module).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _multi
import redis
from _fleet import Fleet
from _server import HOST, server_binary
from _stats import num, percentile

import redbreaker
from redbreaker import _scripts

if TYPE_CHECKING:
    from collections.abc import Callable

_PREVIEW_ENV = "REDBREAKER_BENCH_PREVIEW_SPUBLISH"
_PUBLISH = "redis.call('PUBLISH', CHANNEL, cjson.encode({"
_SPUBLISH = (
    "redis.call(string.find(CHANNEL, '{', 1, true) and 'SPUBLISH' or 'PUBLISH', CHANNEL, "
    "cjson.encode({"
)
TARGET_P99_MS = 10.0


def preview_spublish() -> None:
    """Make the scripts SPUBLISH a channel with a brace, in this process (see above)."""
    if _scripts.library_source().count("SPUBLISH"):
        return  # the Lua does already
    read = _scripts._read.__wrapped__

    def patched(file: str) -> str:
        text = read(file)
        return text.replace(_PUBLISH, _SPUBLISH) if file == "_common.lua" else text

    _scripts._read = __import__("functools").cache(patched)  # type: ignore[assignment]
    for cached in (_scripts.script_source, _scripts._library_body, _scripts.library_name,
                   _scripts.library_source):
        cached.cache_clear()
    if "SPUBLISH" not in _scripts.library_source():
        raise RuntimeError("lua/_common.lua changed: its PUBLISH line is not the one known")


if os.environ.get(_PREVIEW_ENV):
    preview_spublish()


# --------------------------------------------------------------------------- the cluster


def _free_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class BenchCluster:
    """Three cluster-enabled ``redis-server`` processes, one primary each, no replicas."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="redbreaker-bench-cluster-"))

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.ports[0]}"

    def start(self) -> BenchCluster:
        binary = server_binary()
        for i in range(self.size):
            port = _free_pair()
            node_dir = self.dir / str(i)
            node_dir.mkdir()
            self.procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", HOST, "--dir", str(node_dir),
                 "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            self.ports.append(port)
        for port in self.ports:
            self._wait(lambda port=port: _ask(port, "PING") == "PONG", "a node to start")
        cli = str(Path(binary).with_name("redis-cli"))
        subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        self._wait(
            lambda: all("cluster_state:ok" in _ask(p, "CLUSTER", "INFO") for p in self.ports),
            "the cluster to converge",
        )
        return self

    @staticmethod
    def _wait(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def _ask(port: int, *command: str) -> str:
    with redis.Redis(host=HOST, port=port, socket_timeout=2, decode_responses=True) as r:
        reply = r.execute_command(*command)
    return reply if isinstance(reply, str) else "PONG" if reply is True else str(reply)


# --------------------------------------------------------------------------- the measure


def measure(
    url: str | None = None, *, trials: int = 20, workers: int = 8, settle: float = 0.2
) -> dict[str, Any]:
    """Open a cached breaker ``trials`` times while ``workers`` processes call through
    it on a Redis Cluster (``url``, else one started here); return the figures in ms and
    how the transitions travelled (``"sharded"`` pub/sub or ``"plain"``)."""
    cluster = None
    if url is None:
        cluster = BenchCluster().start()
        url = cluster.url
    fleet = None
    store = redbreaker.connect(url, prefix="bench-cluster", store_timeout=2.0)
    try:
        fleet = Fleet(url, workers)
        # Any other URL gives the one-server figure to compare with.
        path = "one server, plain" if store._cluster is None else (
            "cluster, sharded" if store._cluster.sharded() else "cluster, plain"
        )
        results = _multi.propagation(
            fleet, store, "cached", trials=trials, workers=workers, settle=settle, timeout=10.0
        )
    finally:
        if fleet is not None:
            fleet.close()
        store.close()
        if cluster is not None:
            cluster.stop()
    worst = [t.worst * 1000 for t in results if t.lags]
    return {
        "path": path,
        "workers": workers,
        "trials": trials,
        "median_ms": statistics.median(worst) if worst else None,
        "p99_ms": percentile(worst, 99) if worst else None,
        "max_ms": max(worst) if worst else None,
        "missed": sum(t.missed for t in results),
        "early": sum(t.early for t in results),
        "raw": [asdict(t) for t in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a redis+cluster:// URL (default: start a cluster); "
                        "a redis:// URL measures one server, to compare")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--preview-spublish", action="store_true",
                        help="measure sharded pub/sub before the Lua SPUBLISHes (see above)")
    args = parser.parse_args(argv)
    if args.preview_spublish and not os.environ.get(_PREVIEW_ENV):
        # The workers are spawned: they learn it from the environment, as this process.
        os.environ[_PREVIEW_ENV] = "1"
        preview_spublish()
    got = measure(args.url, trials=args.trials, workers=args.workers)
    p99 = got["p99_ms"]
    print(
        f"propagation of an open to all {got['workers']} workers, cached "
        f"({got['path']} pub/sub), {got['trials']} trials: median {num(got['median_ms'])} ms, "
        f"p99 {num(p99)} ms, max {num(got['max_ms'])} ms; never rejected {got['missed']}, "
        f"early {got['early']} (target: p99 <= {TARGET_P99_MS:g} ms: "
        f"{'met' if p99 is not None and p99 <= TARGET_P99_MS else 'NOT met'})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(got, indent=2), encoding="utf-8")
    return 0 if p99 is not None and not got["missed"] and not got["early"] else 1


if __name__ == "__main__":
    sys.exit(main())
