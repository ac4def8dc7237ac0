"""doctor: ``Store.doctor()``, ``await aio.Store.doctor()`` and ``redbreaker doctor`` on real
redis-servers configured to be healthy, evicting, locked down and password-protected."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import redbreaker
import redbreaker.aio
from redbreaker import _doctor_core as core
from redbreaker._cli import main
from redbreaker._doctor_findings import (
    CLUSTER_SCRIPT_COMMANDS,
    SCRIPT_COMMANDS,
    eviction_finding,
    version_finding,
)
from redbreaker._doctor_replies import version_tuple
from redis_servers import RedisServer, find_free_port, redis_server_binary

if TYPE_CHECKING:
    from collections.abc import Iterator

PASSWORD = "doctor-admin-pw"
USER_PASSWORD = "app-pw"
# The documented minimal ACL (docs/security.md), for prefix "rb".
MINIMAL = [
    "reset", "on", f">{USER_PASSWORD}", "resetchannels", "~rb:*", "&rb:events", "-@all",
    "+fcall", "+function|load", "+hmget", "+hget", "+hset", "+hdel", "+hgetall", "+del",
    "+type", "+pexpire", "+persist", "+zadd", "+zcard", "+zrange", "+zrem",
    "+zremrangebyscore", "+zcount", "+publish", "+time", "+scan", "+subscribe",
]  # fmt: skip


def _need_redis() -> None:
    if redis_server_binary() is None:
        pytest.skip("!!! redis-server not found: the doctor tests are SKIPPED !!!")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _statuses(report: core.DoctorReport) -> dict[str, str]:
    return {f.check: f.status for f in report.findings}


@pytest.fixture(scope="module")
def locked() -> Iterator[RedisServer]:
    """A redis-server with requirepass for the default user (ACL users are added per test)."""
    _need_redis()
    with RedisServer(
        extra_args=["--requirepass", PASSWORD], client_kwargs={"password": PASSWORD}
    ) as server:
        yield server


def _user_url(server: RedisServer, user: str, rules: list[str]) -> str:
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", user, *rules)
        admin.flushall()
    return f"redis://{user}:{USER_PASSWORD}@127.0.0.1:{server.port}/0"


def test_script_commands_are_those_of_the_lua() -> None:
    """The doctor checks exactly the commands the Lua scripts call."""
    lua = Path(__file__).resolve().parents[1] / "lua"
    called = set()
    for path in lua.glob("*.lua"):
        called |= set(re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", path.read_text()))
    assert {c.upper() for c in called} == {*SCRIPT_COMMANDS, *CLUSTER_SCRIPT_COMMANDS}


def test_healthy_redis_warns_only_about_persistence(redis_url: str) -> None:
    """The tests' redis-server persists nothing: one warning, every other check ok; the
    default user may run ACL DRYRUN, so nothing is written."""
    store = redbreaker.connect(redis_url, prefix="doc")
    try:
        redbreaker.Breaker("svc", store=store).call(lambda: None)
        report = store.doctor()
        assert store.breaker_names() == ["svc"]  # no scratch breaker left behind
    finally:
        store.close()
    assert [f.check for f in report.findings] == list(core.CHECKS)
    statuses = _statuses(report)
    assert statuses.pop("persistence") == "warn"
    assert statuses.pop("latency") in ("ok", "warn")  # a loaded machine may be slow
    assert set(statuses.values()) == {"ok"}, report
    assert report.ok
    assert report.method == "acl-dryrun"
    persistence = report.finding("persistence")
    assert persistence is not None
    assert "open breakers come back closed" in persistence.advice
    keys = report.finding("keys")
    assert keys is not None
    assert keys.summary == "1 key under 'doc': 1 breaker"  # no probes key yet
    assert re.fullmatch(r"round trip median \d+\.\d\d ms over 5 PINGs", report.findings[3].summary)


def test_volatile_policy_warns_that_open_breakers_are_evicted() -> None:
    """maxmemory with volatile-lru: breaker keys (all with a TTL) go first: a warning."""
    _need_redis()
    with RedisServer(extra_args=["--maxmemory", "50mb", "--maxmemory-policy", "volatile-lru"]) as s:
        store = redbreaker.connect(s.url)
        try:
            report = store.doctor()
        finally:
            store.close()
    eviction = report.finding("eviction")
    assert eviction is not None
    assert eviction.status == "warn"
    assert "volatile-lru" in eviction.summary
    assert "evicted open breaker comes back closed" in eviction.advice
    assert report.ok  # warnings alone are not a failure


def test_minimal_acl_passes_by_exercising_the_library(locked: RedisServer) -> None:
    """Under the documented ACL (no ACL DRYRUN, no INFO, no CONFIG): permissions ok, found
    by running the library's path; what cannot be read is "unknown", never a crash; the
    scratch breaker's keys are gone afterwards."""
    url = _user_url(locked, "minimal", MINIMAL)
    store = redbreaker.connect(url, prefix="rb")
    try:
        report = store.doctor()
    finally:
        store.close()
    assert report.method == "exercise"
    statuses = _statuses(report)
    assert statuses["permissions"] == "ok", report
    assert statuses["scripts"] == "ok"
    for check in ("version", "persistence", "eviction"):
        finding = report.finding(check)
        assert finding is not None
        assert (finding.status, finding.summary.split(":")[0]) == ("warn", "unknown"), finding
    assert report.ok
    with locked.client() as admin:
        assert admin.keys("rb:*") == []


@pytest.mark.parametrize(
    ("drop", "named"),
    [("+publish", "'publish' command"), ("~rb:*", "keys rb:*: refused to HSET")],
)
def test_acl_without_a_permission_fails_naming_it(
    locked: RedisServer, capsys: pytest.CaptureFixture[str], drop: str, named: str
) -> None:
    """An ACL without PUBLISH, or without the key pattern: permissions fail, naming what is
    missing; the command exits 1."""
    url = _user_url(locked, "partial", [r for r in MINIMAL if r != drop])
    code, out, err = _run(capsys, "doctor", "--url", url, "--prefix", "rb", "--json")
    assert (code, err) == (1, "")
    data = json.loads(out)
    assert data["ok"] is False
    assert data["target"] == f"redis://partial:***@127.0.0.1:{locked.port}/0"
    permissions = next(f for f in data["findings"] if f["check"] == "permissions")
    assert permissions["status"] == "fail"
    assert named in permissions["summary"]
    assert "+publish" in permissions["advice"]


def test_dryrun_names_the_missing_command(locked: RedisServer) -> None:
    """A user allowed ACL DRYRUN is checked command by command, nothing written."""
    rules = [*(r for r in MINIMAL if r != "+publish"), "+acl"]
    url = _user_url(locked, "dry", rules)
    store = redbreaker.connect(url, prefix="rb")
    try:
        report = store.doctor()
    finally:
        store.close()
    assert report.method == "acl-dryrun"
    permissions = report.finding("permissions")
    assert permissions is not None
    assert permissions.status == "fail"
    assert "PUBLISH: This user has no permissions to run the 'publish' command" in (
        permissions.summary
    )


def test_wrong_password_fails_the_credentials_check(
    locked: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong password: reachable ok, credentials fail, exit 1 with the advice."""
    url = f"redis://:wrong@127.0.0.1:{locked.port}/0"
    code, out, err = _run(capsys, "doctor", "--url", url)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[1].startswith("ok    reachable")
    assert lines[2].startswith("FAIL  credentials  Redis refused the credentials: ")
    assert "redis://USER:PASSWORD@host:6379/0" in lines[3]
    assert "wrong" not in out


def test_unreachable_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{find_free_port()}/0"
    for extra in ((), ("--json",)):
        code, out, err = _run(capsys, "doctor", "--url", url, *extra)
        assert (code, out) == (2, "")
        assert err.startswith(f"redbreaker: cannot use the Redis at {url}: ConnectionError")
        assert err.count("\n") == 1
    store = redbreaker.connect(url)
    try:
        report = store.doctor()
    finally:
        store.close()
    assert (report.reachable, report.ok, len(report.findings)) == (False, False, 1)


def test_embedded_store_says_what_applies(capsys: pytest.CaptureFixture[str]) -> None:
    """memory://: no credentials, ACL or eviction; a warning that it is in-process only."""
    code, out, err = _run(capsys, "doctor", "--url", "memory://", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["method"] == "embedded"
    statuses = {f["check"]: f["status"] for f in data["findings"]}
    assert statuses.pop("persistence") == "warn"
    assert statuses.pop("latency") in ("ok", "warn")
    assert set(statuses.values()) == {"ok"}


def test_aio_store_doctor(redis_url: str) -> None:
    """The asyncio store gives the same report."""

    async def check() -> core.DoctorReport:
        store = redbreaker.aio.connect(redis_url, prefix="doc")
        try:
            return await store.doctor()
        finally:
            await store.aclose()

    report = asyncio.run(check())
    assert isinstance(report, redbreaker.DoctorReport)
    assert [f.check for f in report.findings] == list(core.CHECKS)
    assert report.ok
    assert _statuses(report)["persistence"] == "warn"


def test_aio_doctor_exercises_under_the_minimal_acl(locked: RedisServer) -> None:
    url = _user_url(locked, "partial-aio", [r for r in MINIMAL if r != "+publish"])

    async def check() -> core.DoctorReport:
        store = redbreaker.aio.connect(url, prefix="rb")
        try:
            return await store.doctor()
        finally:
            await store.aclose()

    report = asyncio.run(check())
    assert report.method == "exercise"
    permissions = report.finding("permissions")
    assert permissions is not None
    assert permissions.status == "fail"
    assert "'publish' command" in permissions.summary


@pytest.mark.parametrize(
    ("memory", "status", "words"),
    [
        ({"maxmemory": "0", "maxmemory_policy": "allkeys-lru"}, "ok", "nothing is evicted"),
        ({"maxmemory": "100", "maxmemory_policy": "noeviction"}, "ok", "nothing is evicted"),
        ({"maxmemory": "100", "maxmemory_policy": "allkeys-lru"}, "warn", "any key may be"),
        ({"maxmemory": "100", "maxmemory_policy": "volatile-ttl"}, "warn", "TTL are evicted"),
        (None, "warn", "unknown"),
    ],
)
def test_eviction_decisions(memory: dict[str, str] | None, status: str, words: str) -> None:
    finding = eviction_finding(memory)
    assert finding.status == status
    assert words in finding.summary


@pytest.mark.parametrize(
    ("version", "status"),
    [("7.0.15", "ok"), ("6.2.14", "warn"), ("5.0.14", "warn"), ("4.0.14", "fail")],
)
def test_version_decisions_match_the_documented_minimum(version: str, status: str) -> None:
    """Redis >= 5 (README, docs/stores.md): older fails, 5 to 6.x warns (no Functions)."""
    found = version_finding({"redis_version": version}, version_tuple(version))
    assert found.status == status, found
