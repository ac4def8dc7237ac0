"""``--json`` on every command: each documented shape parsed and checked; errors leave
stdout empty (or valid JSON) and keep their one line on stderr and their exit code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from redbreaker._cli import EXIT_CODES, main
from redis_servers import find_free_port
from test_cli import _policy_breaker

if TYPE_CHECKING:
    from collections.abc import Iterator

PREFIX = "jsontest"
TRANSITION_KEYS = {"name", "previous", "current", "reason", "generation", "at_ms", "at"}


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out else None), captured.err


@pytest.fixture
def where(redis_url: str) -> Iterator[tuple[str, ...]]:
    store = redbreaker.connect(redis_url, prefix=PREFIX)
    redbreaker.Breaker("alpha", store=store).call(lambda: None)
    yield ("--url", redis_url, "--prefix", PREFIX, "--json")
    store.close()


def test_list_json(capsys: pytest.CaptureFixture[str], where: tuple[str, ...]) -> None:
    assert _json(capsys, "list", *where) == (0, {"prefix": PREFIX, "breakers": ["alpha"]}, "")


def test_show_json_has_every_snapshot_field_and_iso_times(
    capsys: pytest.CaptureFixture[str], where: tuple[str, ...]
) -> None:
    code, data, err = _json(capsys, "show", "alpha", *where)
    assert (code, err) == (0, "")
    fields = set(redbreaker.Snapshot.__dataclass_fields__)
    assert set(data) == fields | {"open_until", "forced_until", "changed_at", "now"}
    assert (data["name"], data["state"], data["exists"]) == ("alpha", "closed", True)
    assert data["now"].endswith("+00:00")
    assert data["forced_until"] is None


def test_show_json_has_the_fleet_policies(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """A retry budget spent (3 granted, 2 refused) and one reporter of a quorum of 3."""
    _policy_breaker(redis_url, "jsonpolicy").close()
    code, data, err = _json(
        capsys, "show", "fleet", "--url", redis_url, "--prefix", "jsonpolicy", "--json"
    )
    assert (code, err) == (0, "")
    assert (data["window_retries"], data["retry_budget_exhausted_count"]) == (3, 2)
    assert data["reporters"] == 1
    assert data["process_state"] is None  # the command keeps no breaker of its own


@pytest.mark.parametrize(
    ("command", "order", "state"),
    [
        ("force-open", "force_open", "forced_open"),
        ("force-close", "force_close", "forced_closed"),
        ("metrics-only", "metrics_only", "metrics_only"),
        ("reset", "reset", "closed"),
    ],
)
def test_order_json(
    capsys: pytest.CaptureFixture[str],
    where: tuple[str, ...],
    command: str,
    order: str,
    state: str,
) -> None:
    code, data, err = _json(capsys, command, "alpha", *where)
    assert (code, err) == (0, "")
    assert {k: data[k] for k in ("name", "prefix", "order", "state", "created", "duration")} == {
        "name": "alpha",
        "prefix": PREFIX,
        "order": order,
        "state": state,
        "created": False,
        "duration": None,
    }
    [transition] = data["transitions"]
    assert set(transition) == TRANSITION_KEYS
    assert (transition["previous"], transition["current"], transition["generation"]) == (
        "closed",
        state,
        2,
    )


def test_order_json_with_create_and_duration(
    capsys: pytest.CaptureFixture[str], where: tuple[str, ...]
) -> None:
    code, data, err = _json(capsys, "force-open", "beta", *where, "--duration", "30", "--create")
    assert (code, err) == (0, f"note: created breaker 'beta' under prefix {PREFIX!r}\n")
    assert (data["created"], data["duration"], data["state"]) == (True, 30.0, "forced_open")


def test_order_json_on_an_unknown_name(
    capsys: pytest.CaptureFixture[str], where: tuple[str, ...]
) -> None:
    """Refused: exit 1, stdout empty, one line on stderr."""
    code, data, err = _json(capsys, "reset", "nope", *where)
    assert (code, data) == (1, None)
    assert err.count("\n") == 1
    assert "--create" in err


def test_show_json_unknown_and_unreachable(
    capsys: pytest.CaptureFixture[str], where: tuple[str, ...]
) -> None:
    assert _json(capsys, "show", "nope", *where)[:2] == (1, None)
    url = f"redis://127.0.0.1:{find_free_port()}/0"
    for argv in (["list"], ["show", "x"], ["doctor"], ["force-open", "x"]):
        code, data, err = _json(capsys, *argv, "--url", url, "--json")
        assert (code, data) == (2, None), argv
        assert err.count("\n") == 1


@pytest.mark.slow
def test_demo_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """demo --json: the report on stderr, one JSON summary on stdout."""
    code, data, err = _json(capsys, "demo", "--json", "--workers", "2", "--duration", "3")
    assert code == 0, err
    assert "one fleet-wide trip" in err
    assert data["ok"] is True
    assert (data["workers"], data["duration"], data["probes_limit"], data["trips"]) == (
        2,
        3.0,
        1,
        1,
    )
    assert data["probes_per_window"]
    assert all(n == 1 for n in data["probes_per_window"])
    trips = [t for t in data["timeline"] if (t["previous"], t["current"]) == ("closed", "open")]
    assert len(trips) == 1
    assert [w["worker"] for w in data["worker_counts"]] == [0, 1]
    assert all(
        w["calls"] == w["successes"] + w["failures"] + w["rejected"] for w in data["worker_counts"]
    )
    assert data["final"]["state"] == "closed"
    assert data["url"] is None


def test_demo_forever_with_json_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, data, err = _json(capsys, "demo", "--forever", "--json")
    assert (code, data) == (2, None)
    assert "not with --forever" in err


def test_help_documents_exit_codes_and_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for code in EXIT_CODES:
        assert f" {code} " in out
    assert main(["dashboard", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "No --json" in out
    assert "REDBREAKER_ADMIN_TOKEN" in out


def test_dashboard_without_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDBREAKER_URL", raising=False)
    assert main(["dashboard"]) == 2
    assert "--url is required" in capsys.readouterr().err


def test_dashboard_without_the_extra_names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """starlette missing (None in sys.modules makes its import fail): exit 2, one line
    naming the extra to install."""
    monkeypatch.setitem(sys.modules, "starlette", None)
    assert main(["dashboard", "--url", "memory://", "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "pip install 'redbreaker[dashboard]'" in captured.err


@pytest.mark.slow
def test_dashboard_command_serves_and_stops_on_sigterm(redis_url: str) -> None:
    """`redbreaker dashboard` reaches run_dashboard with the token from the environment:
    it prints its address, answers /api/breakers, and exits 0 on SIGTERM."""
    pytest.importorskip("starlette", reason="!!! the dashboard extra is not installed !!!")
    env = {**os.environ, "REDBREAKER_ADMIN_TOKEN": "t0ken"}
    argv = ["dashboard", "--url", redis_url, "--prefix", PREFIX, "--port", "0"]
    with subprocess.Popen(
        [sys.executable, "-m", "redbreaker", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as server:
        try:
            assert server.stdout is not None
            first = server.stdout.readline()
            found = re.search(r"serving (http://127\.0\.0\.1:\d+)", first)
            assert found is not None, first
            assert "operator actions on" in server.stdout.readline()
            with urllib.request.urlopen(f"{found.group(1)}/api/breakers", timeout=30) as reply:
                assert reply.status == 200
                json.loads(reply.read())
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                server.kill()


def test_docs_list_every_command_and_exit_code() -> None:
    """docs/cli.md has a section per command and a row per exit code the CLI uses."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for command in ("demo", "list", "show", "force-open", "force-close", "metrics-only"):
        assert re.search(rf"^## .*\b{command}\b", text, re.MULTILINE), command
    for command in ("reset", "watch", "doctor", "dashboard"):
        assert re.search(rf"^## .*\b{command}\b", text, re.MULTILINE), command
    for code in EXIT_CODES:
        assert f"\n| {code} |" in text, code


def test_a_reader_that_leaves_early_is_not_a_redis_error(redis_url: str) -> None:
    """`redbreaker list --json | head -c 1`: the pipe closes under the command; it ends
    quietly with 141, never blaming Redis."""
    store = redbreaker.connect(redis_url, prefix=PREFIX)
    for i in range(3000):  # enough output to outlast the pipe's buffer
        store.client.hset(f"{PREFIX}:{{breaker-{i:04d}}}", "state", "closed")
    store.close()
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first flush fails with EPIPE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "redbreaker", "list", "--url", redis_url, "--prefix", PREFIX],
        stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60, env=env, check=False,
    )
    os.close(writer)
    assert done.returncode == 141, done.stderr
    assert "Redis" not in done.stderr, done.stderr
