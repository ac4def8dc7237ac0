"""A throw-away redis-server for one benchmark run: free port, temp dir, no persistence.

Kept apart from ``tests/redis_servers.py`` so the benchmark needs nothing but the package,
its ``bench`` extra and a ``redis-server`` binary.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

HOST = "127.0.0.1"


def _die_with_us() -> None:
    """In the child (Linux): get SIGKILL when the benchmark process dies, however it dies."""
    name = ctypes.util.find_library("c")
    if name:
        ctypes.CDLL(name).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class BenchServerError(RuntimeError):
    """redis-server is missing or would not start."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_binary() -> str:
    configured = os.environ.get("REDBREAKER_REDIS_SERVER", "").strip()
    found = shutil.which(configured or "redis-server")
    if found is None:
        raise BenchServerError(
            "redis-server not found (install it, e.g. `apt-get install redis-server`, "
            "or point $REDBREAKER_REDIS_SERVER at one)"
        )
    return found


class BenchServer:
    """``redis-server --save '' --appendonly no`` on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.binary = server_binary()
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="redbreaker-bench-"))
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return out.strip()

    def start(self) -> BenchServer:
        for _ in range(3):
            self.port = _free_port()
            log = self.dir / "redis.log"
            self.proc = subprocess.Popen(
                [
                    self.binary, "--port", str(self.port), "--bind", HOST,
                    "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                    "--daemonize", "no", "--loglevel", "warning", "--logfile", str(log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the benchmark, which stops it
                preexec_fn=_die_with_us if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with redis.Redis(host=HOST, port=self.port, socket_timeout=1) as r:
                        r.ping()
                    return self
                except (redis.RedisError, OSError):
                    time.sleep(0.02)
            self._terminate()
        log = self.dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise BenchServerError(f"redis-server would not start:\n{tail}")

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=10, **kwargs)

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
