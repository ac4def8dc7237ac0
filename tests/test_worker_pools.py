"""Worker pools, proven with the real servers (issue 11, item 4).

Two web servers run as real subprocesses on free ports, each serving tests/pool_apps.py,
whose handler calls the dependency (tests/dependency.py) under one breaker permit:

1. ``test_gunicorn_preload_sync_workers[strict|cached]``: gunicorn, ``preload_app = True``,
   4 sync workers, ``redbreaker.Breaker``. The app (store, breaker, one admitted call) is
   built in the master and the workers are forks of it: the proof that fork safety holds
   under gunicorn's preload. ``cached`` also has the master's transition feed thread running
   when it forks. Figures: gunicorn.json and gunicorn-cached.json.
2. ``test_uvicorn_workers_aio``: uvicorn ``--workers 2 --factory``, ``redbreaker.aio.Breaker``.

Breaker store, dependency counters and the counters of the dependency path all live on the
test's own redis-server. 8 client threads send requests continuously (a new connection per
request, ``http.client``); after a warm-up the dependency goes down for 2 s and comes back,
and the load runs on until the breaker is closed again. Asserted:

- **One trip.** A trip is a closed -> open transition. The breaker opens more than once in an
  outage longer than ``recovery_timeout``: each failed half-open probe re-opens it
  (``probe_failed``). So: exactly one closed -> open transition on the transition feed, and,
  counted independently, ``snapshot().open_count`` minus the probes that failed at the
  dependency is 1 (every other open follows a failed probe).
- **Probes within the limit.** The app counts, in one Lua script on entry and one on exit,
  how many calls made under a probe permit are inside the dependency at once: never more
  than ``half_open_max_calls``.
- **Every request answered**: 200 ``ok``, 200 ``fallback`` (the dependency failed), or 503
  ``rejected`` with a ``Retry-After`` of whole seconds (>= 1, at most ``recovery_timeout``
  rounded up). No connection error, no 500, no other status.
- **Calls during the outage** (``calls_down``) <= failure_threshold + concurrency slots +
  probes that failed at the dependency. Slots: 4 for gunicorn (a sync worker serves one
  request at a time), 8 for uvicorn (every client's request may be in flight at once). Strict
  admission makes the true worst case one less (the slot recording the tripping failure is
  one of the threshold's calls); the bound is the one every consumer proof uses.
- **Answers match the dependency**: one dependency success per ``ok``, one call made while
  down per ``fallback``, no request id handled twice.
- **Resume**: the first success after the dependency is back comes within
  ``recovery_timeout`` + a generous slack (2.5 s: 2 cores shared with other test runs).

Figures are printed (``pytest -s``) and written as one JSON line to
/tmp/redbreaker-proofs/<name>.json (gunicorn, gunicorn-cached, uvicorn).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from dependency import Dependency, write_proof
from pool_apps import PATH_COUNTS
from redis_servers import find_free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis_server,
    pytest.mark.skipif(sys.platform == "win32", reason="gunicorn and signals need POSIX"),
]

FAILURE_THRESHOLD = 5
RECOVERY_TIMEOUT = 0.5
HALF_OPEN_MAX_CALLS = 1
OUTAGE = 2.0
WARM_UP = 1.0
AFTER_CLOSED = 1.0  # load kept on once the breaker is closed again
MAX_AFTER_UP = 10.0  # the breaker must have closed by then
CLIENTS = 8
GUNICORN_WORKERS = 4
UVICORN_WORKERS = 2
RESUME_SLACK = 2.5
BREAKER = "pool-dependency"
READY_WITHIN = 30.0
TESTS = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- the servers


def _server_env(redis_url: str, consistency: str = "strict") -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env.update(
        POOL_STORE_URL=redis_url,
        POOL_DEPENDENCY_URL=redis_url,
        POOL_BREAKER=BREAKER,
        POOL_FAILURE_THRESHOLD=str(FAILURE_THRESHOLD),
        POOL_RECOVERY_TIMEOUT=str(RECOVERY_TIMEOUT),
        POOL_HALF_OPEN_MAX_CALLS=str(HALF_OPEN_MAX_CALLS),
        POOL_CONSISTENCY=consistency,
    )
    return env


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, body
    finally:
        conn.close()


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def serving(argv: list[str], *, env: dict[str, str], port: int, log: Path) -> Iterator[int]:
    """Run a server until the block ends; yields its pid once ``/health`` answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{argv[2]} exited with {proc.returncode}:\n{_log_tail(log)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _get(port, "/health", timeout=2.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{argv[2]} not ready in {READY_WITHIN} s:\n{_log_tail(log)}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        # Workers the server left behind are in its own session: end that group, by its id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Answer:
    status: int | None
    result: str | None
    retry_after: str | None
    pid: int | None
    built_in: int | None
    probe: bool
    error: str | None


class Load:
    """``CLIENTS`` threads, each sending one request after another until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            answer = self._one(f"c{client}-{n}")
            with self._lock:
                self.answers.append(answer)

    def _one(self, request_id: str) -> Answer:
        try:
            status, headers, body = _get(self.port, f"/?id={request_id}")
        except (OSError, http.client.HTTPException) as exc:
            return Answer(None, None, None, None, None, False, repr(exc))
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError:
            data = {}
        return Answer(
            status,
            data.get("result"),
            headers.get("retry-after"),
            data.get("pid"),
            data.get("built_in"),
            bool(data.get("probe")),
            None,
        )


class TransitionLog:
    """Every transition of the test's breakers, from the feed, collected in a thread."""

    def __init__(self, redis_url: str) -> None:
        self._store = redbreaker.connect(redis_url)
        self.events: list[redbreaker.Transition] = []
        self.error: BaseException | None = None
        events = self._store.transitions()  # subscribed when this returns
        self._thread = threading.Thread(target=self._collect, args=(events,), daemon=True)
        self._thread.start()

    def _collect(self, events: Iterator[redbreaker.Transition]) -> None:
        try:
            for event in events:
                if event.name == BREAKER:
                    self.events.append(event)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def close(self) -> None:
        time.sleep(0.2)  # the last events on their way
        self._store.close()
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------- the proof


def _valid_retry_after(value: str | None) -> bool:
    if value is None or not value.isdigit():
        return False
    return 1 <= int(value) <= max(1, math.ceil(RECOVERY_TIMEOUT))


def _run_outage(
    name: str, port: int, redis_url: str, *, slots: int
) -> tuple[dict[str, Any], list[Answer]]:
    """Load the server across one outage; the figures, checked by the caller."""
    dependency = Dependency(redis_url)
    store = redbreaker.connect(redis_url)
    breaker = redbreaker.Breaker(
        BREAKER,
        store=store,
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=RECOVERY_TIMEOUT,
        half_open_max_calls=HALF_OPEN_MAX_CALLS,
    )
    transitions = TransitionLog(redis_url)
    started = time.monotonic()
    try:
        with Load(port) as load:
            time.sleep(WARM_UP)
            dependency.take_down()
            time.sleep(OUTAGE)
            dependency.bring_up()
            up = time.monotonic()
            while time.monotonic() - up < MAX_AFTER_UP:
                if (
                    breaker.state is redbreaker.State.CLOSED
                    and dependency.resume_seconds() is not None
                ):
                    break
                time.sleep(0.05)
            time.sleep(AFTER_CLOSED)
        wall = time.monotonic() - started
    finally:
        transitions.close()
    snapshot = breaker.snapshot()
    store.close()
    counts = dependency.counts()
    resume = dependency.resume_seconds()
    dependency.close()
    with redis.Redis.from_url(redis_url) as client:
        path = {k.decode(): int(v) for k, v in client.hgetall(PATH_COUNTS).items()}
    assert transitions.error is None, f"transition feed failed: {transitions.error!r}"

    answers = load.answers
    by_kind = Counter(
        "error"
        if a.error is not None
        else f"{a.status} {a.result}"
        if a.status in (200, 503)
        else f"status {a.status}"
        for a in answers
    )
    events = transitions.events
    trips = sum(
        1
        for e in events
        if e.previous is redbreaker.State.CLOSED and e.current is redbreaker.State.OPEN
    )
    reopens = sum(
        1
        for e in events
        if e.previous is redbreaker.State.HALF_OPEN
        and e.current is redbreaker.State.OPEN
        and e.reason == "probe_failed"
    )
    probes_failed = path.get("probes_failed", 0)
    answered = by_kind["200 ok"] + by_kind["200 fallback"] + by_kind["503 rejected"]
    figures: dict[str, Any] = {
        "queue": name,
        "requests": len(answers),
        "successes": by_kind["200 ok"],
        "fallbacks": by_kind["200 fallback"],
        "rejections_503": by_kind["503 rejected"],
        "errors": len(answers) - answered,  # anything else: lost, 500s, bad statuses
        "trips": trips,
        "opens": snapshot.open_count,
        "reopens_after_failed_probe": reopens,
        "probes": path.get("probes", 0),
        "probes_failed": probes_failed,
        "max_probes_in_flight": path.get("max_probes_in_flight", 0),
        "max_calls_in_flight": path.get("max_in_flight", 0),
        "calls_down": counts["calls_down"],
        "bound": FAILURE_THRESHOLD + slots + probes_failed,
        "slots": slots,
        "final_state": str(snapshot.state),
        # The queue proofs' fields: a request is a message, each with its own id.
        "messages": len(answers),
        "handled": counts["handled"],
        "duplicates": counts["successes"] - counts["handled"],
        "lost": by_kind["error"],
        "failed": len(answers) - answered - by_kind["error"],  # answered, but not validly
        "resume_seconds": resume,
        "wall_seconds": round(wall, 2),
        "worker_pids": len({a.pid for a in answers if a.pid is not None}),
        "answers": dict(by_kind),
    }
    print(f"\n[{name}] " + json.dumps(figures))
    write_proof(name, figures)
    return figures, answers


def _check(figures: dict[str, Any], answers: list[Answer]) -> None:
    errors = [a for a in answers if a.error is not None]
    assert not errors, f"{len(errors)} requests unanswered, e.g. {errors[:3]}"
    bad = [
        a
        for a in answers
        if not (
            (a.status == 200 and a.result in ("ok", "fallback"))
            or (a.status == 503 and a.result == "rejected" and _valid_retry_after(a.retry_after))
        )
    ]
    assert not bad, f"{len(bad)} invalid answers, e.g. {bad[:3]}"
    # The scenario happened: served before and after, degraded and rejected in between.
    assert figures["successes"] > 0
    assert figures["fallbacks"] > 0
    assert figures["rejections_503"] > 0
    assert figures["final_state"] == "closed", figures
    # Every answer matches what the dependency saw: one success per ok, one down call per
    # fallback (the app degrades exactly when the dependency failed).
    assert figures["handled"] == figures["successes"], figures
    assert figures["duplicates"] == 0, figures
    assert figures["calls_down"] == figures["fallbacks"], figures

    assert figures["trips"] == 1, figures
    assert figures["reopens_after_failed_probe"] == figures["probes_failed"], figures
    assert figures["opens"] - figures["probes_failed"] == 1, figures
    assert 1 <= figures["max_probes_in_flight"] <= HALF_OPEN_MAX_CALLS, figures
    assert figures["calls_down"] <= figures["bound"], figures
    assert figures["resume_seconds"] is not None, figures
    assert figures["resume_seconds"] <= RECOVERY_TIMEOUT + RESUME_SLACK, figures


@pytest.mark.parametrize("consistency", ["strict", "cached"])
def test_gunicorn_preload_sync_workers(redis_url: str, tmp_path: Path, consistency: str) -> None:
    port = find_free_port()
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        "\n".join(
            [
                f'bind = "127.0.0.1:{port}"',
                f"workers = {GUNICORN_WORKERS}",
                'worker_class = "sync"',
                "preload_app = True",  # the breaker is built in the master, before fork
                "graceful_timeout = 5",
                'loglevel = "warning"',
                "",
            ]
        )
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), "pool_apps:make_wsgi_app()"]
    env = _server_env(redis_url, consistency)
    name = "gunicorn" if consistency == "strict" else f"gunicorn-{consistency}"
    with serving(argv, env=env, port=port, log=tmp_path / "gunicorn.log") as master:
        figures, answers = _run_outage(name, port, redis_url, slots=GUNICORN_WORKERS)
    _check(figures, answers)
    # preload_app: one breaker built in the master, used by its forked workers.
    assert {a.built_in for a in answers} == {master}
    workers = {a.pid for a in answers}
    assert master not in workers
    assert 2 <= len(workers) <= GUNICORN_WORKERS, workers


def test_uvicorn_workers_aio(redis_url: str, tmp_path: Path) -> None:
    port = find_free_port()
    options = f"--factory --workers {UVICORN_WORKERS} --host 127.0.0.1 --port {port}"
    quiet = "--log-level warning --no-access-log --timeout-graceful-shutdown 5"
    argv = [sys.executable, "-m", "uvicorn", *options.split(), *quiet.split()]
    argv += ["--app-dir", str(TESTS), "pool_apps:make_asgi_app"]
    env = _server_env(redis_url)
    with serving(argv, env=env, port=port, log=tmp_path / "uvicorn.log") as supervisor:
        figures, answers = _run_outage("uvicorn", port, redis_url, slots=CLIENTS)
    _check(figures, answers)
    # Each worker builds its own breaker (uvicorn spawns them): the same breaker in Redis.
    assert all(a.built_in == a.pid for a in answers)
    workers = {a.pid for a in answers}
    assert supervisor not in workers
    assert len(workers) == UVICORN_WORKERS, workers
