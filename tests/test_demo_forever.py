"""``redbreaker demo --forever`` (``DemoOptions(forever=True)``): the outage cycle repeats
until SIGINT or SIGTERM, which end it with exit code 0 and the summary of what was seen; a
worker whose parent was killed stops on its own.

The runs are real: a parent process (``run_demo`` in a subprocess, so the signal it gets is
a real one) spawning real worker processes, on the embedded Redis or a real redis-server.
The cycle is the shortest allowed (2 s: the dependency is down from 0.4 s to 1.2 s of each).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from redbreaker._demo_forever import Tally, outages_begun
from redbreaker._demo_report import FOREVER_PREFIX, DemoOptions, Hooked, Plan, Probed
from redbreaker._state import State, Transition

if TYPE_CHECKING:
    from collections.abc import Callable

_RUN = (
    "import sys\n"
    "from redbreaker._demo import DemoOptions, run_demo\n"
    "sys.exit(run_demo(DemoOptions(url={url!r}, forever=True, duration=2.0, workers=2), "
    "sys.stdout))\n"
)
_DEADLINE = 90.0


def _start(tmp_path: Path, url: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "demo.out"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-u", "-c", _RUN.format(url=url)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return process, log


def _wait_for(what: str, ready: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + _DEADLINE
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def _trips_printed(log: Path) -> int:
    return len(re.findall(r"closed -> open", log.read_text(errors="replace")))


def _children(pid: int) -> list[int]:
    """The spawned worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in {"Z", "X"}  # a zombie no longer runs; its new parent reaps it


def _stop_and_read(process: subprocess.Popen[bytes], log: Path, sig: signal.Signals) -> str:
    process.send_signal(sig)
    try:
        process.wait(timeout=_DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the demo did not end after {sig.name}:\n{log.read_text(errors='replace')}")
    return log.read_text(errors="replace")


def _check_summary(out: str, sig: signal.Signals) -> None:
    assert f"stopped by {sig.name} after " in out, out
    trips = re.search(
        r"^one trip per outage: (\d+) closed->open transitions in (\d+) outages", out, re.M
    )
    assert trips is not None, out
    assert int(trips.group(1)) >= 2, out
    assert int(trips.group(1)) <= int(trips.group(2)), out
    probes = re.search(
        r"^probes admitted per half-open window: at most (\d+) in (\d+) windows", out, re.M
    )
    assert probes is not None, out
    assert probes.group(1) == "1", out
    assert int(probes.group(2)) >= 2, out
    assert "saw the same" in out, out
    assert len(re.findall(r"^  w[01] +\d+ ", out, re.M)) == 2, out
    assert re.search(r"^final snapshot: ", out, re.M), out
    assert out.count("goes DOWN (outage ") >= 2, out


@pytest.mark.slow
def test_sigterm_ends_a_forever_demo_with_its_summary(tmp_path: Path) -> None:
    """On the embedded Redis: trips and recoveries repeat; SIGTERM ends it, exit code 0,
    the summary counts every trip (one per outage), and no worker is left running."""
    process, log = _start(tmp_path)
    try:
        _wait_for("workers", lambda: len(_children(process.pid)) == 2, log)
        workers = _children(process.pid)
        _wait_for("two trips", lambda: _trips_printed(log) >= 2, log)
        out = _stop_and_read(process, log, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out
    _check_summary(out, signal.SIGTERM)
    assert f"key prefix {FOREVER_PREFIX}" in out
    assert "Traceback" not in out, out
    for pid in workers:
        _wait_for(f"worker {pid} to end", lambda pid=pid: _gone(pid), log)


@pytest.mark.slow
def test_sigint_ends_a_forever_demo_on_a_real_redis(tmp_path: Path, redis_url: str) -> None:
    """On a real redis-server, under the fixed prefix a dashboard is pointed at: Ctrl-C
    (SIGINT) ends it with exit code 0 and the summary; the breaker's keys expire on their
    own."""
    process, log = _start(tmp_path, redis_url)
    try:
        _wait_for("two trips", lambda: _trips_printed(log) >= 2, log)
        out = _stop_and_read(process, log, signal.SIGINT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out
    _check_summary(out, signal.SIGINT)
    with redis.Redis.from_url(redis_url) as client:
        assert 0 < client.ttl(f"{FOREVER_PREFIX}:{{payments-api}}") <= 60


@pytest.mark.slow
def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    """A forever demo killed with SIGKILL cannot stop its workers: they notice they were
    re-parented and stop by themselves instead of calling for ever."""
    process, log = _start(tmp_path)
    try:
        _wait_for("workers", lambda: len(_children(process.pid)) == 2, log)
        workers = _children(process.pid)
        _wait_for("a trip", lambda: _trips_printed(log) >= 1, log)
        assert all(not _gone(pid) for pid in workers)
    finally:
        process.kill()
        process.wait()
    for pid in workers:
        _wait_for(f"orphaned worker {pid} to stop", lambda pid=pid: _gone(pid), log)


# -- the parent's tally, fed by hand -----------------------------------------------------


def _transition(previous: State, current: State, generation: int, at_ms: int) -> Transition:
    return Transition(
        name="payments-api",
        previous=previous,
        current=current,
        reason="test",
        generation=generation,
        at_ms=at_ms,
    )


def test_tally_counts_trips_per_cycle_and_probes_per_window(tmp_path: Path) -> None:
    """Trips are counted per outage cycle and probes per half-open window, with the worst
    of each kept, while only a few recent cycles and windows are held."""
    tally = Tally(zero_ms=10_000, cycle_ms=2_000)
    with (tmp_path / "timeline").open("w") as out:
        for cycle in range(50):
            base = 10_000 + cycle * 2_000
            generation = cycle * 3
            tally.add(
                Hooked(
                    cycle % 3, _transition(State.CLOSED, State.OPEN, generation + 1, base + 420)
                ),
                out,
            )
            tally.add(
                Hooked(0, _transition(State.OPEN, State.HALF_OPEN, generation + 2, base + 920)), out
            )
            tally.add(Probed(1, generation + 2), out)
            tally.add(
                Hooked(1, _transition(State.HALF_OPEN, State.CLOSED, generation + 3, base + 930)),
                out,
            )
        assert (tally.trips, tally.windows, tally.hooked) == (50, 50, 150)
        assert tally.worst_trips_in_a_cycle == 1
        assert tally.worst_probes_in_a_window == 1
        # A second trip in the last cycle, and two more probes in its window.
        tally.add(
            Hooked(2, _transition(State.CLOSED, State.OPEN, 999, 10_000 + 49 * 2_000 + 1_500)), out
        )
        tally.add(Probed(0, 49 * 3 + 2), out)
        tally.add(Probed(2, 49 * 3 + 2), out)
    assert tally.worst_trips_in_a_cycle == 2
    assert tally.worst_probes_in_a_window == 3
    assert len(tally._trips_by_cycle) <= 8
    assert len(tally._probes_by_window) <= 8
    assert tally.hooks == Counter({0: 50 + 17, 1: 50 + 17, 2: 16 + 1})
    lines = (tmp_path / "timeline").read_text().splitlines()
    assert len(lines) == 151  # one timeline row per transition
    assert re.fullmatch(r"\s+\+420 ms  w0 +closed -> open +test +gen 1", lines[0])


def test_outages_begun_counts_cycles_whose_outage_started() -> None:
    plan = Plan(
        url="redis://x",
        prefix=FOREVER_PREFIX,
        name="payments-api",
        settings={},
        duration=2.0,
        down_from=0.4,
        down_until=1.2,
        forever=True,
    )
    assert [outages_begun(plan, s) for s in (0.0, 0.39, 0.4, 2.39, 2.4, 9.0)] == [0, 0, 1, 1, 2, 5]


def test_forever_is_off_by_default() -> None:
    assert DemoOptions().forever is False
    assert DemoOptions(forever=True).duration == 5.0  # the cycle is the run's length
