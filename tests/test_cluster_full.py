"""Redis Cluster, fully: Functions on every primary, FCALL routed by the breaker's slot
(never a COMMAND GETKEYS), MOVED and ASK followed, EVALSHA where an ACL refuses
Functions. Sync and asyncio stores alike. The transitions on sharded pub/sub:
test_cluster_shards.py.

The 3-primary cluster is test_topologies' fixture (real redis-server processes).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

import redbreaker
import redbreaker.aio
from redbreaker._scripts import library_name, library_source
from redbreaker._shards import scripts_spublish
from test_topologies import NAMES, _cluster_url, _keyslot, _slot_owners, cluster, cluster_nodes

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis_servers import RedisServer

__all__ = ["cluster", "cluster_nodes"]  # the fixtures, imported for pytest to find

pytestmark = [pytest.mark.slow, pytest.mark.redis_server]

DRIVERS = ["sync", "aio"]
_WAIT = 10.0  # bounded waits for what happens in the background (subscriptions, events)

def _owner_of(nodes: list[RedisServer], name: str) -> int:
    return _slot_owners(nodes)[_keyslot(nodes[0], name)]


def _one_name_per_node(nodes: list[RedisServer]) -> dict[int, str]:
    """node index -> a name of NAMES whose slot that node serves."""
    owners = _slot_owners(nodes)
    picked: dict[int, str] = {}
    for name in NAMES:
        picked.setdefault(owners[_keyslot(nodes[0], name)], name)
    assert sorted(picked) == [0, 1, 2], picked
    return picked


def _libraries(node: RedisServer) -> set[str]:
    with node.client(decode_responses=True) as r:
        listed = r.function_list()
    # RESP3 gives a map per library, RESP2 a flat list of field, value.
    return {
        str(lib["library_name"] if isinstance(lib, dict) else lib[lib.index("library_name") + 1])
        for lib in listed
    }


def _reset_stats(nodes: list[RedisServer]) -> None:
    for node in nodes:
        node.reset_stats()


def _boom() -> None:
    raise ValueError("boom")


def _exercise_sync(store: redbreaker.Store, names: list[str]) -> None:
    for name in names:
        breaker = redbreaker.Breaker(name, store=store, failure_threshold=100)
        assert breaker.call(lambda: 1) == 1
        with pytest.raises(ValueError, match="boom"):
            breaker.call(_boom)
        assert breaker.snapshot().consecutive_failures == 1


async def _exercise_aio(store: redbreaker.aio.Store, names: list[str]) -> None:
    async def one() -> int:
        return 1

    async def boom() -> None:
        raise ValueError("boom")

    for name in names:
        breaker = redbreaker.aio.Breaker(name, store=store, failure_threshold=100)
        assert await breaker.call(one) == 1
        with pytest.raises(ValueError, match="boom"):
            await breaker.call(boom)
        assert (await breaker.snapshot()).consecutive_failures == 1


def _with_store(
    driver: str, nodes: list[RedisServer], prefix: str, body: Callable[[], None], names: list[str]
) -> None:
    """Exercise ``names`` on a new store of ``driver`` (the warm-up), run ``body`` (a
    check between), and exercise them again."""
    url = _cluster_url(nodes)
    if driver == "sync":
        store = redbreaker.connect(url, prefix=prefix)
        try:
            _exercise_sync(store, names)
            body()
            _exercise_sync(store, names)
        finally:
            store.close()
        return

    async def run() -> None:
        async with redbreaker.aio.connect(url, prefix=prefix) as astore:
            await _exercise_aio(astore, names)
            body()
            await _exercise_aio(astore, names)

    asyncio.run(run())


@pytest.mark.parametrize("driver", DRIVERS)
def test_fcall_on_every_primary_and_never_command_getkeys(
    cluster_nodes: list[RedisServer], driver: str
) -> None:
    """After a warm-up, calls for breakers on all 3 shards are FCALLs on each slot's own
    primary: no EVALSHA, no COMMAND (GETKEYS) on any node; the library is on all 3."""
    names = list(NAMES)
    assert {_owner_of(cluster_nodes, n) for n in names} == {0, 1, 2}

    def between() -> None:
        for node in cluster_nodes:
            assert library_name() in _libraries(node), node
        _reset_stats(cluster_nodes)

    _with_store(driver, cluster_nodes, f"fcall-{driver}", between, names)
    for node in cluster_nodes:
        stats = node.commandstats()
        assert stats.get("fcall", 0) >= 2, (node, stats)
        assert "evalsha" not in stats, (node, stats)
        assert "eval" not in stats, (node, stats)
        commands = {k: v for k, v in stats.items() if k == "command" or k.startswith("command|")}
        assert commands == {}, (node, commands)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_primary_that_lost_the_library_gets_it_back(
    cluster_nodes: list[RedisServer], driver: str
) -> None:
    """FUNCTION FLUSH on one primary: the next call there loads the library on that node
    (and only there) and is answered; nothing falls back to EVALSHA."""
    victim, name = 1, _one_name_per_node(cluster_nodes)[1]
    others = [n for i, n in enumerate(cluster_nodes) if i != victim]

    def between() -> None:
        cluster_nodes[victim].function_flush()
        assert _libraries(cluster_nodes[victim]) == set()
        _reset_stats(cluster_nodes)

    _with_store(driver, cluster_nodes, f"flush-{driver}", between, [name])
    assert library_name() in _libraries(cluster_nodes[victim])
    stats = cluster_nodes[victim].commandstats()
    assert stats.get("function|load") == 1, stats
    assert stats.get("fcall", 0) >= 2, stats
    assert "evalsha" not in stats, stats
    for node in others:
        assert "function|load" not in node.commandstats()


@pytest.mark.parametrize(
    ("denied", "sharded"),
    [
        ("-fcall -function", scripts_spublish(library_source())),
        ("-fcall -function -spublish -ssubscribe", False),
    ],
    ids=["no-functions", "no-functions-no-sharded-pubsub"],
)
def test_an_acl_without_functions_falls_back_to_evalsha(
    cluster_nodes: list[RedisServer], denied: str, sharded: bool
) -> None:
    """A user who may not FCALL or FUNCTION LOAD: the same Lua by EVALSHA, on every shard
    (redis-py routes EVALSHA by its keys, no COMMAND either). Without SPUBLISH too, the
    transitions go out on the prefix's channel by plain PUBLISH."""
    for node in cluster_nodes:
        with node.client() as r:
            r.execute_command("ACL", "SETUSER", "limited", "reset", "on", ">pw", "~*", "&*",
                              "+@all", *denied.split())
    try:
        url = _cluster_url(cluster_nodes).replace("://", "://limited:pw@")
        store = redbreaker.connect(url, prefix="acl")
        try:
            _exercise_sync(store, list(NAMES))
            _reset_stats(cluster_nodes)
            _exercise_sync(store, list(NAMES))
            assert store._route.functions is False
            assert store._cluster is not None
            assert store._cluster.sharded() is sharded
        finally:
            store.close()
        for node in cluster_nodes:
            stats = node.commandstats()
            assert stats.get("evalsha", 0) >= 2, stats
            assert stats.get("fcall", 0) == 0, stats
            assert not any(k == "command" or k.startswith("command|") for k in stats), stats
    finally:
        for node in cluster_nodes:
            with node.client() as r:
                r.execute_command("ACL", "DELUSER", "limited")

def _migrate_slot(nodes: list[RedisServer], slot: int, src: int, dst: int, *, finish: bool) -> None:
    """Move ``slot`` from node ``src`` to node ``dst`` with its keys; with ``finish=False``
    stop halfway (keys moved, slot still MIGRATING/IMPORTING: the source answers ASK)."""
    ids = []
    for node in nodes:
        with node.client(decode_responses=True) as r:
            ids.append(str(r.execute_command("CLUSTER", "MYID")))
    with nodes[dst].client() as r:
        r.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
    with nodes[src].client() as r:
        r.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        keys = r.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if keys:
            target = nodes[dst]
            r.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
    if finish:
        _finish_migration(nodes, slot, ids[dst])


def _finish_migration(nodes: list[RedisServer], slot: int, dst_id: str) -> None:
    for node in nodes:
        with node.client() as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def _node_id(node: RedisServer) -> str:
    with node.client(decode_responses=True) as r:
        return str(r.execute_command("CLUSTER", "MYID"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_moved_and_ask_during_a_resharding(cluster_nodes: list[RedisServer], driver: str) -> None:
    """A breaker's slot moves from node 0 to node 2 (which never had the library) under a
    store that knows the old table: halfway its calls follow ASK, after it MOVED, and all
    are FCALLs answered by node 2."""
    name = _one_name_per_node(cluster_nodes)[0]
    prefix = f"move-{driver}"
    slot = _keyslot(cluster_nodes[0], name)
    dst_id = _node_id(cluster_nodes[2])
    cluster_nodes[2].function_flush()

    def halfway() -> None:
        # Every key a call names must exist for the importing node to take it on ASK (a
        # node refuses a multi-key command with TRYAGAIN while it holds only some of
        # them): a probe lease that ended long ago makes the probes key, a reporter from
        # long before the window the reporters key (inspect names it).
        with cluster_nodes[0].client() as r:
            r.zadd(f"{prefix}:{{{name}}}:probes", {"ended-lease": 1})
            r.zadd(f"{prefix}:{{{name}}}:reporters", {"gone:1:x": 1})
        _migrate_slot(cluster_nodes, slot, 0, 2, finish=False)  # keys on 2, 0 says ASK
        _reset_stats(cluster_nodes)

    def finish() -> None:
        assert cluster_nodes[2].commandstats().get("asking", 0) >= 1
        _finish_migration(cluster_nodes, slot, dst_id)  # now 0 says MOVED

    try:
        if driver == "sync":
            store = redbreaker.connect(_cluster_url(cluster_nodes), prefix=prefix)
            try:
                _exercise_sync(store, [name])
                halfway()
                assert redbreaker.Breaker(name, store=store).snapshot().consecutive_failures == 1
                finish()
                _exercise_sync(store, [name])
            finally:
                store.close()
        else:

            async def run() -> None:
                url = _cluster_url(cluster_nodes)
                async with redbreaker.aio.connect(url, prefix=prefix) as astore:
                    await _exercise_aio(astore, [name])
                    halfway()
                    snap = await redbreaker.aio.Breaker(name, store=astore).snapshot()
                    assert snap.consecutive_failures == 1
                    finish()
                    await _exercise_aio(astore, [name])

            asyncio.run(run())
        with cluster_nodes[2].client() as r:
            assert r.hget(f"{prefix}:{{{name}}}", "consecutive_failures") == b"1"
        stats = cluster_nodes[2].commandstats()
        assert stats.get("fcall", 0) >= 3, stats
        assert "evalsha" not in stats, stats
        assert stats.get("function|load") == 1, stats
    finally:
        _restore_slot(cluster_nodes, slot, owner=0)


def _restore_slot(nodes: list[RedisServer], slot: int, *, owner: int) -> None:
    """Give ``slot`` back to node ``owner`` (the module's cluster is shared)."""
    for node in nodes:
        with node.client() as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    holder = _slot_owners(nodes)[slot]
    if holder != owner:
        _migrate_slot(nodes, slot, holder, owner, finish=True)
    owner_port = nodes[owner].port
    deadline = time.monotonic() + _WAIT
    while any(_slot_port(node, slot) != owner_port for node in nodes):  # as each node sees it
        assert time.monotonic() < deadline, "the slot did not come back"
        time.sleep(0.05)


def _slot_port(node: RedisServer, slot: int) -> int:
    with node.client() as r:
        for start, end, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
    raise AssertionError(f"slot {slot} is not served")


def test_fleet_policies_keep_their_keys_in_the_breakers_slot(
    cluster_nodes: list[RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On each primary: the reporters set (a key the scripts name after the breaker's, not
    one passed in KEYS) lives in the breaker's slot, so a quorum trips on a cluster; the
    retry budget counts its retries there too."""
    import redbreaker._core_outcomes as outcomes

    identities = iter(["host:1:a", "host:1:a", "host:2:b"])
    monkeypatch.setattr(outcomes, "process_identity", lambda: next(identities))
    store = redbreaker.connect(_cluster_url(cluster_nodes), prefix="policies")
    # Another process: a store of its own, so an own breaker of its own (one per store).
    other = redbreaker.connect(_cluster_url(cluster_nodes), prefix="policies")
    try:
        for index, name in _one_name_per_node(cluster_nodes).items():
            identities = iter(["host:1:a", "host:1:a", "host:2:b"])
            first = redbreaker.Breaker(name, store=store, failure_threshold=2, min_reporters=2)
            first.reset()
            for _ in range(2):
                with pytest.raises(ValueError, match="boom"):
                    first.call(_boom)
            assert first.snapshot().state is redbreaker.State.CLOSED  # one reporter
            with cluster_nodes[index].client() as r:
                key = f"policies:{{{name}}}:reporters"
                assert r.zcard(key) == 1
                assert 0 < r.pttl(key) <= 60_000
            # Another process (its own breaker is closed): the second reporter trips it.
            second = redbreaker.Breaker(name, store=other, failure_threshold=2, min_reporters=2)
            with pytest.raises(ValueError, match="boom"):
                second.call(_boom)
            assert second.snapshot().state is redbreaker.State.OPEN
            with cluster_nodes[index].client() as r:
                assert r.exists(key) == 0  # the trip started a new generation

            budgeted = redbreaker.Breaker(
                f"{name}-budget", store=store, failure_threshold=None, failure_rate=1.0,
                minimum_calls=1000, retry_budget=0.5, retry_budget_floor=0.0,
            )
            budgeted.reset()
            guard = budgeted.guard(retry_on=ValueError, max_attempts=3)
            for _ in range(4):
                with pytest.raises(ValueError, match="boom"):
                    guard.call(_boom)
            snapshot = budgeted.snapshot()
            # 0.5 retries per call: calls 2 and 4 get one retry each, every other ask is refused.
            assert snapshot.window_retries == 2
            assert snapshot.retry_budget_exhausted_count == 4  # 1 + 1 + 1 + 1 refusals
    finally:
        store.close()
        other.close()
