"""``doctor`` on a Redis Cluster checks every primary: the per-server checks (version,
latency, persistence, eviction, keys, ACL DRYRUN) are each primary's, and a finding names
the primaries that differ. The real 3-primary cluster is test_topologies' fixture; a
primary that does not answer is driven through the core with canned replies."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import redbreaker
import redbreaker.aio
from redbreaker import _doctor_core as core
from test_cluster_full import _one_name_per_node
from test_topologies import _cluster_url, cluster, cluster_nodes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from redis_servers import RedisServer

__all__ = ["cluster", "cluster_nodes"]  # the fixtures, imported for pytest to find


def _node(server: RedisServer) -> str:
    return f"{server.host}:{server.port}"


def _doctor(driver: str, url: str) -> redbreaker.DoctorReport:
    if driver == "sync":
        store = redbreaker.connect(url, prefix="doc")
        try:
            return store.doctor()
        finally:
            store.close()

    async def run() -> redbreaker.DoctorReport:
        async with redbreaker.aio.connect(url, prefix="doc") as astore:
            return await astore.doctor()

    return asyncio.run(run())


def _finding(report: redbreaker.DoctorReport, check: str) -> redbreaker.Finding:
    found = report.finding(check)
    assert found is not None, report
    return found


def _doctor_as_user(
    nodes: list[RedisServer], driver: str, rules: Callable[[RedisServer], list[str]]
) -> redbreaker.DoctorReport:
    """The doctor run as the ACL user ``doc``, whose rules on each primary are
    ``rules(primary)`` (ACL users are each server's own); the user is deleted after."""
    for server in nodes:
        with server.client() as r:
            r.execute_command("ACL", "SETUSER", "doc", "reset", "on", ">pw", *rules(server))
    try:
        return _doctor(driver, _cluster_url(nodes).replace("://", "://doc:pw@"))
    finally:
        for server in nodes:
            with server.client() as r:
                r.execute_command("ACL", "DELUSER", "doc")


@pytest.fixture
def one_aof_one_volatile(cluster_nodes: list[RedisServer]) -> Iterator[list[RedisServer]]:
    """Primary 1 with AOF on, primary 2 under a volatile eviction policy; put back after."""
    with cluster_nodes[1].client() as r:
        r.config_set("appendonly", "yes")
    with cluster_nodes[2].client() as r:
        r.config_set("maxmemory", "1gb")
        r.config_set("maxmemory-policy", "volatile-lru")
    try:
        yield cluster_nodes
    finally:
        with cluster_nodes[1].client() as r:
            r.config_set("appendonly", "no")
        with cluster_nodes[2].client() as r:
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", "0")


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("driver", ["sync", "aio"])
def test_every_primary_is_checked_and_the_odd_one_named(
    one_aof_one_volatile: list[RedisServer], driver: str
) -> None:
    nodes = one_aof_one_volatile
    url = _cluster_url(nodes)
    store = redbreaker.connect(url, prefix="doc")
    try:
        for name in _one_name_per_node(nodes).values():
            redbreaker.Breaker(name, store=store).call(lambda: None)
    finally:
        store.close()

    report = _doctor(driver, url)

    assert _finding(report, "reachable").summary == "Redis Cluster answers: 3 primaries"
    assert _finding(report, "version").status == "ok"
    assert _finding(report, "version").summary.endswith("(all 3 primaries)")
    # one key a breaker on each primary; a single node's SCAN would have found one
    assert _finding(report, "keys").summary == "3 keys under 'doc' on 3 primaries: 3 breakers"
    persistence = _finding(report, "persistence")
    assert persistence.status == "warn"
    off, on = persistence.summary.split("; ")
    assert off.startswith(f"{_node(nodes[0])}, {_node(nodes[2])}: off"), persistence
    assert on == f"{_node(nodes[1])}: AOF is on", persistence
    eviction = _finding(report, "eviction")
    assert eviction.status == "warn"
    assert eviction.summary.startswith(f"{_node(nodes[2])}: "), eviction
    assert "volatile-lru" in eviction.summary
    assert f"{_node(nodes[0])}, {_node(nodes[1])}: no maxmemory" in eviction.summary
    latency = _finding(report, "latency")  # each primary timed: equal medians say it once
    assert latency.summary.endswith("(all 3 primaries)") or all(
        _node(n) in latency.summary for n in nodes
    ), latency
    assert report.ok, report


@pytest.mark.slow
@pytest.mark.redis_server
def test_dry_run_names_the_primary_whose_acl_lacks_a_command(
    cluster_nodes: list[RedisServer],
) -> None:
    """ACL users are each server's own: a user who may not ZADD on one primary fails the
    permissions check, and the finding names that primary alone."""
    odd = cluster_nodes[2]
    report = _doctor_as_user(
        cluster_nodes,
        "sync",
        lambda server: ["~*", "&*", "+@all", *(["-zadd"] if server is odd else [])],
    )
    assert report.method == "acl-dryrun"
    permissions = _finding(report, "permissions")
    assert permissions.status == "fail"
    assert "on each of 3 primaries" in permissions.summary
    assert "ZADD: " in permissions.summary
    assert permissions.summary.endswith(f"(on {_node(odd)})"), permissions
    assert permissions.summary.count("(on ") == 1, permissions
    assert not report.ok


@pytest.mark.slow
@pytest.mark.redis_server
@pytest.mark.parametrize("driver", ["sync", "aio"])
def test_without_dry_run_the_library_path_runs_on_the_cluster(
    cluster_nodes: list[RedisServer], driver: str
) -> None:
    """No ACL DRYRUN: the library's path and each script command run on the scratch
    breaker's primary (keyless ones on the first primary), all allowed, and the summary
    says that one primary ran them."""
    report = _doctor_as_user(cluster_nodes, driver, lambda _: ["~*", "&*", "+@all", "-acl|dryrun"])
    assert report.method == "exercise"
    permissions = _finding(report, "permissions")
    assert permissions.status == "ok", permissions
    assert "on the one primary that holds it" in permissions.summary
    assert report.ok, report


# -- a primary that does not answer, through the core ---------------------------------


def _converse(down: str) -> redbreaker.DoctorReport:
    """Drive the examination of a 2-primary cluster whose primary ``down`` refuses
    connections; every other request answers as a healthy Redis 7 would."""
    steps = core.examine("doc", embedded=False, primaries=("a:1", "b:2"))
    request = next(steps)
    asked: list[core.Ask] = []
    try:
        while True:
            if isinstance(request, core.LibraryStep):
                answer = core.Answer(value=True)
            else:
                asked.append(request)
                answer = _healthy(request)
                if request.node == down:
                    answer = core.Answer(error="ConnectionError: refused", kind="unavailable")
            request = steps.send(answer)
    except StopIteration as done:
        report: redbreaker.DoctorReport = done.value
    assert [a.argv for a in asked if a.node == down] == [("PING",)] * (2 if down == "a:1" else 1)
    return report


def _healthy(request: core.Ask) -> core.Answer:
    replies: dict[tuple[str, ...], object] = {
        ("PING",): "PONG",
        ("ACL", "WHOAMI"): "default",
        ("INFO", "server"): {"redis_version": "7.0.15"},
        ("INFO", "persistence"): {"aof_enabled": "1"},
        ("INFO", "memory"): {"maxmemory": "0", "maxmemory_policy": "noeviction"},
        ("CONFIG", "GET", "save"): {"save": ""},
    }
    if request.argv[0] == "SCAN":
        return core.Answer(value=["0", ["doc:{x}"]])
    if request.argv[:2] == ("ACL", "DRYRUN"):
        return core.Answer(error="NoPermissionError: no DRYRUN", kind="noperm")
    return core.Answer(value=replies.get(request.argv, "OK"), seconds=0.0002)


@pytest.mark.parametrize("down", ["a:1", "b:2"])
def test_a_primary_that_does_not_answer_fails_reachable_naming_it(down: str) -> None:
    """The first primary or another: the rest of the report is the one that answered."""
    report = _converse(down)
    alive = "b:2" if down == "a:1" else "a:1"
    reachable = _finding(report, "reachable")
    assert reachable.status == "fail"
    assert reachable.summary == (
        f"1 of 2 Cluster primaries do not answer: {down}: ConnectionError: refused"
    )
    assert "cluster-announce-ip" in reachable.advice
    assert not report.ok
    # the rest is the primary that answered, said to be its alone
    assert _finding(report, "persistence").summary == f"AOF is on (on {alive})"
    assert _finding(report, "keys").summary == "1 key under 'doc': 1 breaker"
    assert [f.check for f in report.findings] == list(core.CHECKS)


def test_every_primary_down_reports_nothing_else() -> None:
    steps = core.examine("doc", embedded=False, primaries=("a:1",))
    request = next(steps)
    try:
        while True:
            assert isinstance(request, core.Ask), request
            answer = (
                core.Answer(error="ConnectionError: refused", kind="unavailable")
                if request.node == "a:1"
                else _healthy(request)
            )
            request = steps.send(answer)
    except StopIteration as done:
        report: redbreaker.DoctorReport = done.value
    assert [f.check for f in report.findings] == ["reachable"]
    assert report.method == "none"
    assert not report.ok
