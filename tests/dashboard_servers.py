"""A dashboard server for the tests: ``run_dashboard`` in a child process on a free port,
and small HTTP helpers (the standard library's; the dashboard extra brings no client).

The child is started through ``redbreaker._dashboard.run_dashboard`` itself (not the CLI),
and stopped with SIGTERM, which must make it return 0.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

_CHILD = """
import sys
from redbreaker._dashboard import run_dashboard
url, prefix, token, host, naming = sys.argv[1:6]
sys.exit(run_dashboard(url, prefix=prefix, host=host, port=0, admin_token=token or None,
                       naming=naming, out=sys.stdout))
"""
_START_SECONDS = 20.0


class DashboardProcess:
    """``with DashboardProcess(redis_url, admin_token=...) as dash: dash.get_json(...)``."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "redbreaker",
        admin_token: str | None = None,
        host: str = "127.0.0.1",
        naming: str = "redbreaker",
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.admin_token = admin_token
        self.host = host
        self.naming = naming
        self.url = ""
        self.first_lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> DashboardProcess:
        args = [self.redis_url, self.prefix, self.admin_token or "", self.host, self.naming]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + _START_SECONDS
        while not self.url:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._proc.stdout], [], [], max(0.0, left))
            line = self._proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
            if not line:
                self.stop()
                raise RuntimeError(f"the dashboard did not start: {self.stderr_text()}")
            self.first_lines.append(line)
            if "serving http" in line:
                self.url = line.split("serving ", 1)[1].split()[0].rstrip("/")
                # The next line says whether operator actions are on.
                self.first_lines.append(self._proc.stdout.readline())  # type: ignore[union-attr]
        return self

    def stop(self) -> int | None:
        """SIGTERM, then wait: the exit code (None if it had to be killed)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return None
        return proc.returncode

    def stderr_text(self) -> str:
        proc = self._proc
        if proc is None or proc.stderr is None:
            return ""
        if proc.poll() is None:
            return "(still running)"
        return proc.stderr.read()

    def __enter__(self) -> DashboardProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._proc is not None:
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()

    # -- HTTP ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                return reply.status, _lower(reply.headers), reply.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _lower(exc.headers), exc.read()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)

    def act(
        self,
        action: str,
        body: Any,
        token: str | None,
    ) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        status, _, reply = self.request(
            "POST", f"/api/actions/{action}", body=body, headers=headers
        )
        return status, json.loads(reply) if reply else None

    def wait_for_board(self, check: Any, seconds: float = 10.0) -> Any:
        """Poll /api/breakers until ``check(board)`` is true: the board then."""
        deadline = time.monotonic() + seconds
        while True:
            board = self.get_json("/api/breakers")
            if check(board):
                return board
            if time.monotonic() > deadline:
                raise AssertionError(f"the board never got there: {board}")
            time.sleep(0.05)


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def breaker_of(board: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((b for b in board["breakers"] if b["name"] == name), None)
