"""Start throw-away ``redis-server`` processes for the tests, hermetically.

Every :class:`RedisServer` listens on ``127.0.0.1`` on a free port, keeps its files in its own
temporary directory, persists nothing (``--save "" --appendonly no``) and is a child of the test
process (``--daemonize no``), so it can be stopped, SIGKILLed, restarted and paused at will.

No server outlives the test run: live servers are killed at interpreter exit (``atexit``), and on
Linux a server started from the main thread also gets ``PR_SET_PDEATHSIG`` so it dies with the
test process even when that process is itself SIGKILLed.

This module needs only ``redis`` (not pytest). ``tests/conftest.py`` builds the fixtures on it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

__all__ = [
    "BINARY_ENV_VAR",
    "HELPER_COMMANDS",
    "RedisServer",
    "RedisServerError",
    "find_free_port",
    "redis_server_binary",
]

BINARY_ENV_VAR = "REDBREAKER_REDIS_SERVER"
"""Environment variable naming the ``redis-server`` to use (a path or a name on PATH)."""

HELPER_COMMANDS = frozenset({"info", "config|resetstat", "hello", "auth", "client|setinfo"})
"""Commands the helper itself sends (INFO, CONFIG RESETSTAT) plus redis-py's connection
handshake (HELLO: redis-py >= 8 speaks RESP3 by default; AUTH; CLIENT SETINFO on Redis >= 7.2).
Hidden from :meth:`RedisServer.commandstats` unless ``include_helper_commands=True``."""

_HOST = "127.0.0.1"
_STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 30
_BIND_RETRIES = 3


class RedisServerError(RuntimeError):
    """A redis-server could not be started (the message carries the tail of its log)."""


def redis_server_binary() -> str | None:
    """Return the absolute path of the ``redis-server`` to use, or ``None`` if there is none.

    ``$REDBREAKER_REDIS_SERVER`` wins when set (a path or a command name); there is no silent
    fallback to PATH then, so a wrong setting shows up as "not found" rather than being ignored.
    """
    configured = os.environ.get(BINARY_ENV_VAR, "").strip()
    if configured:
        return shutil.which(configured)
    return shutil.which("redis-server")


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- child cleanup

_live: set[RedisServer] = set()
_live_lock = threading.Lock()


def _kill_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close(graceful=False)


atexit.register(_kill_all_at_exit)


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the test process dies (Linux).

    The kernel sends the signal when the *thread* that forked exits, so it is only used for
    servers started from the main thread (a server started from a short-lived worker thread
    would otherwise die with that thread). Elsewhere the atexit hook is the safety net.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# --------------------------------------------------------------------------- the server


class RedisServer:
    """One ``redis-server`` child process on a free port of 127.0.0.1.

    >>> with RedisServer() as server:
    ...     with server.client() as r:
    ...         r.set("k", "v")

    ``extra_args`` are appended to the command line (later arguments win in redis), with
    ``{port}`` and ``{dir}`` replaced, e.g. for TLS
    ``["--tls-port", "{port}", "--port", "0", "--tls-cert-file", ...]`` together with
    ``client_kwargs={"ssl": True, "ssl_ca_certs": ...}``; for ACL pass ``--user ...`` /
    ``--requirepass`` and the matching ``username``/``password`` in ``client_kwargs``.
    ``client_kwargs`` are used by every client this object makes (its own admin connections
    included) and by :attr:`url`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        client_kwargs: dict[str, Any] | None = None,
        binary: str | None = None,
        startup_timeout: float = 5.0,
    ) -> None:
        self._fixed_port = port is not None
        self._port = port if port is not None else find_free_port()
        self._extra_args = list(extra_args)
        self._client_kwargs = dict(client_kwargs or {})
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return _HOST

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (``rediss://`` and credentials if configured)."""
        scheme = "rediss" if self._client_kwargs.get("ssl") else "redis"
        auth = ""
        username = self._client_kwargs.get("username")
        password = self._client_kwargs.get("password")
        if password is not None:
            auth = f"{quote(str(username or ''), safe='')}:{quote(str(password), safe='')}@"
        elif username is not None:
            auth = f"{quote(str(username), safe='')}@"
        return f"{scheme}://{auth}{_HOST}:{self._port}/0"

    @property
    def dir(self) -> Path | None:
        """The server's working directory (``--dir``; holds ``redis.log``), once started."""
        return self._dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING. Returns ``self``."""
        if self.is_running():
            raise RedisServerError(f"redis-server on port {self._port} is already running")
        self._reap()
        attempts = 1 if self._fixed_port else _BIND_RETRIES
        for attempt in range(attempts):
            try:
                self._start_once()
            except RedisServerError as exc:
                # Another process may have taken our free port in the meantime: pick a new one.
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    self._port = find_free_port()
                    continue
                raise
            # The port belongs to this server now; restart() must reuse it.
            self._fixed_port = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Shut the server down gracefully (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._unregister()

    def kill(self) -> None:
        """SIGKILL the server (like ``kill -9``): no shutdown, connections just drop."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None
        self._unregister()

    def restart(self) -> RedisServer:
        """Stop (gracefully, if running) and start again on the same port, with no data."""
        self.stop()
        return self.start()

    def ensure_running(self) -> RedisServer:
        """Start the server again (same port, empty) if it was stopped, killed or crashed."""
        if not self.is_running():
            self.start()
        return self

    def close(self, *, graceful: bool = True) -> None:
        """Stop (or kill) the server and delete its directory. The object can start again."""
        if graceful:
            self.stop()
        else:
            self.kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._unregister()

    def __enter__(self) -> RedisServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {_HOST}:{self._port} pid={self.pid} {state}>"

    # ----------------------------------------------------------------- clients & admin

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` for this server; close it when done (or use ``with``).

        Defaults: db 0, ``socket_timeout``/``socket_connect_timeout`` 5 s and **no retries**
        (redis-py >= 6 retries timeouts and connection errors by default, which hides the very
        failures the tests provoke). ``kwargs`` override these and ``client_kwargs``.
        """
        options: dict[str, Any] = {
            "host": _HOST,
            "port": self._port,
            "db": 0,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(self._client_kwargs)
        options.update(kwargs)
        return redis.Redis(**options)

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING within ``timeout`` seconds."""
        try:
            with self.client(socket_timeout=timeout, socket_connect_timeout=timeout) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError):
            return False

    def flushall(self, *, scripts: bool = False) -> None:
        """FLUSHALL (synchronously); with ``scripts=True`` also SCRIPT FLUSH and FUNCTION
        FLUSH (every cached script and loaded function library is gone)."""
        with self.client() as r:
            r.flushall(asynchronous=False)
            if scripts:
                r.script_flush()
                r.function_flush("SYNC")

    def script_flush(self) -> None:
        """SCRIPT FLUSH: forget all cached Lua scripts (EVALSHA then gets NOSCRIPT)."""
        with self.client() as r:
            r.script_flush()

    def function_flush(self) -> None:
        """FUNCTION FLUSH: delete every function library (FCALL then gets "Function not
        found")."""
        with self.client() as r:
            r.function_flush("SYNC")

    def pause(self, seconds: float) -> None:
        """``CLIENT PAUSE <ms> ALL``: every client's commands hang for ``seconds``.

        Returns at once; the pause ends by itself (or call :meth:`unpause`).
        """
        with self.client() as r:
            r.execute_command("CLIENT", "PAUSE", max(1, round(seconds * 1000)), "ALL")

    def unpause(self) -> None:
        """``CLIENT UNPAUSE``: end a pause early (no-op if none is active)."""
        with self.client() as r:
            r.execute_command("CLIENT", "UNPAUSE")

    def commandstats(self, *, include_helper_commands: bool = False) -> dict[str, int]:
        """``INFO commandstats`` as ``{command: calls}``, e.g. ``{"evalsha": 3, "hgetall": 1}``.

        Names are lower case; subcommands look like ``"client|pause"``. The helper's own
        commands and connection handshakes (``HELPER_COMMANDS``: INFO, CONFIG RESETSTAT, HELLO,
        AUTH, CLIENT SETINFO) are left out unless ``include_helper_commands`` is true.
        """
        with self.client() as r:
            raw = r.execute_command("INFO", "commandstats")
        stats: dict[str, int] = {}
        if isinstance(raw, dict):  # redis-py parsed it: {"cmdstat_get": {"calls": 1, ...}}
            for key, value in raw.items():
                name = _command_name(str(key))
                if name is not None and isinstance(value, dict) and "calls" in value:
                    stats[name] = int(value["calls"])
        else:  # raw text: "cmdstat_get:calls=1,usec=...,..."
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            for line in text.splitlines():
                key, sep, rest = line.strip().partition(":")
                name = _command_name(key)
                if not sep or name is None:
                    continue
                fields = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
                if "calls" in fields:
                    stats[name] = int(fields["calls"])
        if not include_helper_commands:
            stats = {k: v for k, v in stats.items() if k not in HELPER_COMMANDS}
        return stats

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: zero the command statistics (and the other INFO counters)."""
        with self.client() as r:
            r.config_resetstat()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log and of its stdout/stderr."""
        if self._dir is None:
            return ""
        parts = []
        for name in ("redis.log", "output.log"):
            path = self._dir / name
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)

    # ----------------------------------------------------------------- internals

    def _command_line(self, binary: str, workdir: Path) -> list[str]:
        def expand(arg: str) -> str:
            return arg.replace("{port}", str(self._port)).replace("{dir}", str(workdir))

        return [
            binary,
            "--port", str(self._port),
            "--bind", _HOST,
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(workdir / "redis.log"),
            *(expand(arg) for arg in self._extra_args),
        ]  # fmt: skip

    def _start_once(self) -> None:
        binary = self._binary or redis_server_binary()
        if binary is None:
            raise RedisServerError(
                f"redis-server not found on PATH (or via ${BINARY_ENV_VAR}); "
                "install it, e.g. `apt-get install redis-server`"
            )
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"redbreaker-redis-{self._port}-"))
        workdir = self._dir
        for leftover in ("dump.rdb", "appendonly.aof", "appendonlydir"):  # "empty data"
            path = workdir / leftover
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        (workdir / "redis.log").unlink(missing_ok=True)

        # Errors before the logfile is open (bad arguments) go to stdout/stderr: keep them too.
        with (workdir / "output.log").open("wb") as output:
            proc = subprocess.Popen(
                self._command_line(binary, workdir),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal goes to pytest, not to redis
                preexec_fn=_die_with_parent_preexec(),  # noqa: PLW1509 - see its docstring
            )
        self._proc = proc
        self._register()

        deadline = time.monotonic() + self._startup_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                self._unregister()
                raise RedisServerError(
                    f"redis-server on port {self._port} exited with code {proc.returncode} "
                    f"during startup.\n{self.log_tail()}"
                )
            if self.ping(timeout=0.25):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{self._startup_timeout:g} s.\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _reap(self) -> None:
        """Forget a process that has already exited (crashed or killed from outside)."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
            self._unregister()

    def _register(self) -> None:
        with _live_lock:
            _live.add(self)

    def _unregister(self) -> None:
        # Keep the temp dir registered for cleanup until close(): only drop a fully closed one.
        if self._proc is None and self._dir is None:
            with _live_lock:
                _live.discard(self)


def _command_name(key: str) -> str | None:
    if not key.startswith("cmdstat_"):
        return None
    return key[len("cmdstat_") :].lower()
