"""The ``redbreaker`` command: the demo end to end, the operator commands, and its errors."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest
import redis

import redbreaker
from redbreaker._cli import main
from redbreaker._policies import process_identity
from redis_servers import find_free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

PREFIX = "clitest"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _demo_claims(out: str) -> tuple[list[str], list[int], int]:
    """(timeline lines that are closed -> open, probes per half-open window, their limit)."""
    trips = [line for line in out.splitlines() if re.search(r"\bclosed -> open\b", line)]
    found = re.search(r"^probes admitted per half-open window: (.*) \(limit (\d+)\)$", out, re.M)
    assert found is not None, out
    per_window = [int(n) for n in found.group(1).split(", ")]
    return trips, per_window, int(found.group(2))


@pytest.fixture
def breakers(redis_url: str) -> Iterator[redbreaker.Store]:
    """Two breakers under PREFIX: 'alpha' closed, 'payments' tripped open (generation 2)."""
    store = redbreaker.connect(redis_url, prefix=PREFIX)
    redbreaker.Breaker("alpha", store=store).call(lambda: None)
    payments = redbreaker.Breaker(
        "payments", store=store, failure_threshold=2, recovery_timeout=600
    )
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            payments.call(lambda: 1 / 0)
    yield store
    store.close()


def _snapshot(store: redbreaker.Store, name: str) -> redbreaker.Snapshot:
    return redbreaker.Breaker(name, store=store).snapshot()


# -- the demo ----------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_on_the_embedded_redis(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's first command: 4 processes, one trip, at most 1 probe per window."""
    code, out, err = _run(capsys, "demo")
    assert code == 0, out + err
    trips, per_window, limit = _demo_claims(out)
    assert len(trips) == 1, out
    assert re.search(r"\+\s*\d+ ms  w[0-3] +closed -> open +consecutive_failures", trips[0])
    assert "one fleet-wide trip: 1 closed->open transition reported across 4 workers" in out
    assert limit == 1
    assert per_window, out
    assert per_window == [1] * len(per_window), out
    assert "saw the same" in out
    assert re.search(r"^final snapshot: closed, ", out, re.M), out
    assert len(re.findall(r"^  w[0-3] +\d+ ", out, re.M)) == 4
    assert len(out.splitlines()) <= 40
    assert err == ""


@pytest.mark.slow
def test_demo_on_a_real_redis_with_more_probes(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """--url, --workers, --probes, --duration: one trip, never more than 2 probes a window."""
    code, out, err = _run(
        capsys, "demo", "--url", redis_url, "--workers", "3", "--probes", "2", "--duration", "3"
    )
    assert code == 0, out + err
    trips, per_window, limit = _demo_claims(out)
    assert len(trips) == 1, out
    assert "reported across 3 workers" in out
    assert limit == 2
    assert per_window, out
    assert all(1 <= n <= 2 for n in per_window), out
    assert len(re.findall(r"^  w[0-2] +\d+ ", out, re.M)) == 3
    prefix = re.search(r"key prefix (demo-[0-9a-f]{6})$", out, re.M)
    assert prefix is not None, out
    with redis.Redis.from_url(redis_url) as client:
        assert client.ttl(f"{prefix.group(1)}:{{payments-api}}") > 0  # it expires on its own


def test_demo_rejects_a_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    """A too-short --duration is refused before anything starts: exit 2, one line."""
    code, out, err = _run(capsys, "demo", "--duration", "1")
    assert code == 2
    assert out == ""
    assert err == "redbreaker: --duration must be between 2 and 600 seconds, got 1.0\n"


def test_demo_with_an_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    """demo --url to a closed port: exit 2 and one line, no worker started."""
    url = f"redis://127.0.0.1:{find_free_port()}/0"
    code, out, err = _run(capsys, "demo", "--url", url)
    assert code == 2
    assert out == ""
    assert err.startswith(f"redbreaker: cannot use the Redis at {url}: ConnectionError: ")
    assert err.count("\n") == 1


# -- operator commands -------------------------------------------------------------------


def test_list(
    capsys: pytest.CaptureFixture[str], breakers: redbreaker.Store, redis_url: str
) -> None:
    """list prints the breaker names under the prefix, sorted, one a line."""
    assert _run(capsys, "list", "--url", redis_url, "--prefix", PREFIX) == (
        0,
        "alpha\npayments\n",
        "",
    )
    code, out, err = _run(capsys, "list", "--url", redis_url)
    assert (code, out) == (0, "")
    assert err == "no breakers under prefix 'redbreaker'\n"


def test_show_text(
    capsys: pytest.CaptureFixture[str], breakers: redbreaker.Store, redis_url: str
) -> None:
    """show prints every snapshot field, one a line."""
    code, out, err = _run(capsys, "show", "payments", "--url", redis_url, "--prefix", PREFIX)
    assert (code, err) == (0, "")
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["name"] == "payments"
    assert fields["state"] == "open"
    assert fields["generation"] == "2"
    assert fields["open_count"] == "1"
    assert fields["consecutive_failures"] == "0"
    assert fields["last_reason"] == "consecutive_failures"
    assert re.fullmatch(r"\d+ \(\S+, in \d+\.\d s\)", fields["open_until_ms"])
    assert set(fields) == {f.name for f in redbreaker.Snapshot.__dataclass_fields__.values()}


def _policy_breaker(redis_url: str, prefix: str) -> redbreaker.Store:
    """'fleet' under ``prefix``: a retry budget of 3 retries per window (the floor alone)
    spent by 3 guarded calls (3 granted, 2 refused), and one reporter of a quorum of 3."""
    store = redbreaker.connect(redis_url, prefix=prefix)
    fleet = redbreaker.Breaker(
        "fleet",
        store=store,
        retry_budget=0.0,
        retry_budget_floor=0.05,
        min_reporters=3,
        failure_threshold=100,
    )
    guard = fleet.guard(retry_on=ZeroDivisionError, max_attempts=3, backoff_base=0.001)
    for _ in range(3):
        with pytest.raises(ZeroDivisionError):
            guard.call(lambda: 1 / 0)
    return store


def test_show_text_lists_the_fleet_policies_with_the_window(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    store = _policy_breaker(redis_url, "clipolicy")
    try:
        code, out, err = _run(capsys, "show", "fleet", "--url", redis_url, "--prefix", "clipolicy")
    finally:
        store.close()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    names = [line.split(None, 1)[0] for line in lines]
    at = names.index("window_slow_calls")
    assert names[at + 1 : at + 6] == [
        "window_retries",
        "retry_budget_exhausted_count",
        "reporters",
        "reporter_ids",
        "process_state",
    ]
    fields = dict(line.split(None, 1) for line in lines)
    assert (fields["window_retries"], fields["retry_budget_exhausted_count"]) == ("3", "2")
    assert fields["reporters"] == "1"
    # Who failed: this test process, as the library names it.
    assert fields["reporter_ids"] == process_identity()
    assert fields["process_state"] == "-"  # the command keeps no breaker of its own
    # One column for the values, however long the longest name.
    assert len({len(line) - len(line.split(None, 1)[1]) for line in lines}) == 1


def test_show_json_force_open_reset(
    capsys: pytest.CaptureFixture[str], breakers: redbreaker.Store, redis_url: str
) -> None:
    """show --json, then force-open with a deadline and reset, each seen in Redis."""
    where = ("--url", redis_url, "--prefix", PREFIX)
    code, out, _ = _run(capsys, "show", "payments", *where, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["name"], data["exists"], data["state"]) == ("payments", True, "open")
    assert (data["generation"], data["open_count"]) == (2, 1)
    assert data["retry_after"] > 500

    assert _run(capsys, "force-open", "payments", *where, "--duration", "30") == (
        0,
        "payments: open -> forced_open (operator:force_open, generation 3)\n"
        "payments: forced_open for 30 s, then closed\n",
        "",
    )
    snapshot = _snapshot(breakers, "payments")
    assert snapshot.state is redbreaker.State.FORCED_OPEN
    assert snapshot.forced_until_ms is not None
    assert 29_000 <= snapshot.forced_until_ms - snapshot.now_ms <= 30_000

    assert _run(capsys, "reset", "payments", *where) == (
        0,
        "payments: forced_open -> closed (reset, generation 4)\n",
        "",
    )
    code, out, _ = _run(capsys, "show", "payments", *where, "--json")
    data = json.loads(out)
    assert (code, data["state"], data["generation"], data["forced_until_ms"]) == (
        0,
        "closed",
        4,
        None,
    )


def test_force_close_and_metrics_only(
    capsys: pytest.CaptureFixture[str], breakers: redbreaker.Store, redis_url: str
) -> None:
    """force-close and metrics-only without a deadline; repeating an order changes nothing."""
    where = ("--url", redis_url, "--prefix", PREFIX)
    assert _run(capsys, "force-close", "alpha", *where) == (
        0,
        "alpha: closed -> forced_closed (operator:force_close, generation 2)\n",
        "",
    )
    assert _run(capsys, "force-close", "alpha", *where) == (0, "alpha: already forced_closed\n", "")
    assert _run(capsys, "metrics-only", "alpha", *where) == (
        0,
        "alpha: forced_closed -> metrics_only (operator:metrics_only, generation 3)\n",
        "",
    )
    snapshot = _snapshot(breakers, "alpha")
    assert (snapshot.state, snapshot.forced_until_ms) == (redbreaker.State.METRICS_ONLY, None)


def test_order_on_an_unknown_breaker_refuses_without_create(
    capsys: pytest.CaptureFixture[str], breakers: redbreaker.Store, redis_url: str
) -> None:
    """force-open of a name Redis does not hold: exit 1 and nothing created; with --create
    it is created, and stderr says so."""
    where = ("--url", redis_url, "--prefix", PREFIX)
    code, out, err = _run(capsys, "force-open", "newdep", *where)
    assert (code, out) == (1, "")
    assert err == (
        "redbreaker: no breaker 'newdep' under prefix 'clitest'; check the name with "
        "`redbreaker list`, or pass --create to create it with this order\n"
    )
    assert breakers.breaker_names() == ["alpha", "payments"]
    code, out, err = _run(capsys, "force-open", "newdep", *where, "--create")
    assert code == 0
    assert out == "newdep: closed -> forced_open (operator:force_open, generation 2)\n"
    assert err == "note: created breaker 'newdep' under prefix 'clitest'\n"
    assert _snapshot(breakers, "newdep").state is redbreaker.State.FORCED_OPEN


def test_show_unknown_breaker(
    capsys: pytest.CaptureFixture[str], breakers: redbreaker.Store, redis_url: str
) -> None:
    """show of a name Redis does not hold: exit 1, one line, and nothing is created."""
    code, out, err = _run(capsys, "show", "nope", "--url", redis_url, "--prefix", PREFIX)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "no breaker 'nope' under prefix 'clitest'" in err
    assert breakers.breaker_names() == ["alpha", "payments"]


def test_url_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    breakers: redbreaker.Store,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$REDBREAKER_URL stands in for --url; without either, exit 2."""
    monkeypatch.delenv("REDBREAKER_URL", raising=False)
    code, out, err = _run(capsys, "list", "--prefix", PREFIX)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == (
        "redbreaker list: error: --url is required (or set $REDBREAKER_URL)"
    )
    monkeypatch.setenv("REDBREAKER_URL", redis_url)
    assert _run(capsys, "list", "--prefix", PREFIX) == (0, "alpha\npayments\n", "")


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["list", "--url", "bogus://somewhere"],
            "redbreaker: target: 'bogus://somewhere': unknown scheme 'bogus'; use one of ",
        ),
        (["show", "x", "--url", "redis://"], "redbreaker: target: 'redis://': no host"),
        (["reset", "a b", "--url", "redis://localhost:1/0"], "redbreaker: name: 'a b' contains"),
        (["list", "--url", "redis://h", "--prefix", "p:"], "redbreaker: prefix: 'p:' must not"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad URL, name or prefix: exit 2, one line on stderr, no traceback."""
    code, out, err = _run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(message), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["list", "show", "force-open", "reset"])
def test_unreachable_redis_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Connection refused: exit 2 and one line naming the URL, whatever the command."""
    url = f"redis://127.0.0.1:{find_free_port()}/0"
    argv = [command] if command == "list" else [command, "payments"]
    code, out, err = _run(capsys, *argv, "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"redbreaker: cannot use the Redis at {url}: ConnectionError: "), err
    assert err.count("\n") == 1


def test_password_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """The URL in a connection error hides its password."""
    port = find_free_port()
    code, _, err = _run(capsys, "list", "--url", f"redis://app:s3cret@127.0.0.1:{port}/0")
    assert code == 2
    assert f"redis://app:***@127.0.0.1:{port}/0" in err
    assert "s3cret" not in err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """No command, or an unknown option: argparse's message and exit 2; --help exits 0."""
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
    assert main(["force-open", "x", "--url", "redis://h", "--duration", "-1"]) == 2
    assert "must be a number of seconds > 0" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "force-open" in capsys.readouterr().out


def test_python_dash_m_exit_code() -> None:
    """`python -m redbreaker` runs main() and exits with its code."""
    done = subprocess.run(
        [sys.executable, "-m", "redbreaker", "list", "--url", "bogus://x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("redbreaker: target: 'bogus://x': unknown scheme")
    assert done.stderr.count("\n") == 1


# -- watch -------------------------------------------------------------------------------


@pytest.mark.slow
def test_watch_prints_transitions_until_ctrl_c(redis_url: str) -> None:
    """watch prints each transition made elsewhere, then exits 0 on Ctrl-C."""
    # Python ignores SIGINT if it starts with SIGINT ignored (a backgrounded test run):
    # install the KeyboardInterrupt handler explicitly.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from redbreaker._cli import main; "
        f"sys.exit(main(['watch', '--url', {redis_url!r}, '--prefix', 'w']))"
    )
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watcher:
        assert watcher.stdout is not None
        stdout = watcher.stdout
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True)
        reader.start()
        try:
            assert (
                lines.get(timeout=30) == "watching transitions under prefix 'w' (Ctrl-C to stop)\n"
            )
            with redis.Redis.from_url(redis_url) as client:
                deadline = time.monotonic() + 30
                while dict(client.pubsub_numsub("w:events")).get(b"w:events", 0) < 1:
                    assert time.monotonic() < deadline, "watch never subscribed"
                    time.sleep(0.02)
            store = redbreaker.connect(redis_url, prefix="w")
            try:
                redbreaker.Breaker("svc", store=store).force_open()
            finally:
                store.close()
            line = lines.get(timeout=30)
            assert re.fullmatch(
                r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00  svc: closed -> forced_open "
                r"\(operator:force_open, generation 2\)\n",
                line,
            ), line
            watcher.send_signal(2)  # SIGINT, as Ctrl-C sends
            assert watcher.wait(timeout=30) == 0
        finally:
            if watcher.poll() is None:
                watcher.kill()
        reader.join(timeout=5)
        assert watcher.stderr is not None
        assert watcher.stderr.read() == ""
