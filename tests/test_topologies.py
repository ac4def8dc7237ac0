"""redbreaker on the other Redis topologies: a 3-node Redis Cluster and a Sentinel-managed master.

Every server is a real ``redis-server`` started here (on free ports of 127.0.0.1, through
``tests/redis_servers.py``) and torn down at the end of the module. The scripts use a
``ManualClock``, so no test sleeps through a recovery timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.cluster import RedisCluster

import redbreaker
from redbreaker._shards import SlotChannels
from redis_servers import (
    BINARY_ENV_VAR,
    RedisServer,
    RedisServerError,
    find_free_port,
    redis_server_binary,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.slow, pytest.mark.redis_server]

State = redbreaker.State

# Twenty names that hash to slots on every node of a 3-node cluster (asserted below, not
# assumed): colons, unicode letters, an emoji.
NAMES = (
    "payments",
    "payments:eu",
    "payments:eu:v2",
    "a",
    "b:c",
    "ünïcødé",
    "日本語-api",
    "ключ:сервис",
    "emoji-🚀",
    "Ωmega",
    "svc:1",
    "svc:2",
    "svc:3",
    "x",
    "user-service",
    "inventory",
    "search:v1:shard-7",
    "ça:va",
    "mañana",
    "z:z:z",
)
_READY_TIMEOUT = 15.0  # bounded waits for cluster convergence / sentinel discovery
_EVENT_TIMEOUT = 10.0


# --------------------------------------------------------------------------- binaries


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no", "off"}


def _redis_cli_binary(server_binary: str | None) -> str | None:
    """``redis-cli`` next to the chosen ``redis-server`` if there is one, else from PATH."""
    if server_binary is not None:
        sibling = Path(server_binary).with_name("redis-cli")
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    return shutil.which("redis-cli")


def _require_binaries() -> tuple[str, str]:
    """(redis-server, redis-cli), or skip loudly (fail under CI) like conftest's fixture."""
    server = redis_server_binary()
    cli = _redis_cli_binary(server)
    missing = [
        name for name, path in (("redis-server", server), ("redis-cli", cli)) if path is None
    ]
    if server is None or cli is None:
        configured = os.environ.get(BINARY_ENV_VAR)
        where = f"${BINARY_ENV_VAR}={configured!r}" if configured else "PATH"
        hint = (
            "install redis (Debian/Ubuntu: `sudo apt-get install -y redis-server redis-tools`, "
            f"macOS: `brew install redis`) or point ${BINARY_ENV_VAR} at a redis-server binary"
        )
        if _ci():
            pytest.fail(
                f"{' and '.join(missing)} not found on {where}, and CI is set: the "
                f"cluster/sentinel tests must run in CI. Fix the CI image: {hint}.",
                pytrace=False,
            )
        pytest.skip(
            f"!!! {' and '.join(missing)} not found on {where}: the cluster/sentinel tests "
            f"are SKIPPED; {hint} !!!"
        )
    return server, cli


# --------------------------------------------------------------------------- cluster


def _info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value
    return fields


def _cluster_info(node: RedisServer) -> dict[str, str]:
    with node.client(decode_responses=True) as r:
        raw = r.execute_command("CLUSTER", "INFO")
    return raw if isinstance(raw, dict) else _info_fields(str(raw))


def _stop_all(servers: list[RedisServer]) -> None:
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


_CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
_CLUSTER_NODE_ARGS = (
    *("--cluster-enabled", "yes"),
    *("--cluster-config-file", "{dir}/nodes.conf"),
    *("--cluster-node-timeout", "2000"),
)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too and below 65536."""
    for _ in range(200):
        port = find_free_port()
        if port + _CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + _CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free port pair for a cluster node")


def _start_cluster_node() -> RedisServer:
    """One cluster-enabled redis-server; retried on a new port pair if one was taken."""
    for attempt in range(3):
        node = RedisServer(
            port=_free_cluster_port(),
            extra_args=_CLUSTER_NODE_ARGS,
        )
        try:
            return node.start()
        except RedisServerError as exc:
            node.close(graceful=False)
            if attempt == 2 or "in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


def create_cluster(nodes: list[RedisServer], *, primaries: int, replicas: int) -> None:
    """Start ``primaries * (1 + replicas)`` cluster-enabled servers into ``nodes`` (so the
    caller stops them whatever happens) and join them with ``redis-cli --cluster create``;
    the caller waits for convergence."""
    _, cli = _require_binaries()
    for _ in range(primaries * (1 + replicas)):
        nodes.append(_start_cluster_node())
    created = subprocess.run(
        [
            *(cli, "--cluster", "create"),
            *(f"{node.host}:{node.port}" for node in nodes),
            *("--cluster-replicas", str(replicas), "--cluster-yes"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if created.returncode != 0:
        pytest.fail(
            f"redis-cli --cluster create failed ({created.returncode}):\n"
            f"{created.stdout}\n{created.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    """A 3-primary Redis Cluster (no replicas), converged: every node says cluster_state:ok."""
    nodes: list[RedisServer] = []
    try:
        create_cluster(nodes, primaries=3, replicas=0)
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            infos = [_cluster_info(node) for node in nodes]
            if all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_slots_ok") == "16384"
                and info.get("cluster_known_nodes") == "3"
                for info in infos
            ):
                break
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"the cluster did not converge within {_READY_TIMEOUT:g} s: {infos}",
                    pytrace=False,
                )
            time.sleep(0.05)
        yield nodes
    finally:
        _stop_all(nodes)


@pytest.fixture
def cluster_nodes(cluster: list[RedisServer]) -> list[RedisServer]:
    """The module's cluster, emptied for this test (FLUSHALL and SCRIPT FLUSH on every node)."""
    for node in cluster:
        node.flushall(scripts=True)
    return cluster


def _cluster_url(nodes: list[RedisServer]) -> str:
    return f"redis+cluster://{nodes[0].host}:{nodes[0].port}"


def _slot_owners(nodes: list[RedisServer]) -> dict[int, int]:
    """slot -> index in ``nodes`` of the primary serving it, as node 0 sees the cluster."""
    ports = {node.port: i for i, node in enumerate(nodes)}
    with nodes[0].client() as r:
        ranges = r.execute_command("CLUSTER", "SLOTS")
    owners: dict[int, int] = {}
    for entry in ranges:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        for slot in range(start, end + 1):
            owners[slot] = ports[int(primary[1])]
    return owners


def _keyslot(node: RedisServer, key: str) -> int:
    with node.client() as r:
        return int(r.execute_command("CLUSTER", "KEYSLOT", key))


def _cluster_store(
    nodes: list[RedisServer], how: str, clock: redbreaker.ManualClock, prefix: str
) -> redbreaker.Store:
    if how == "url":
        return redbreaker.connect(_cluster_url(nodes), clock=clock, prefix=prefix)
    client = RedisCluster(host=nodes[0].host, port=nodes[0].port, decode_responses=True)
    return redbreaker.connect(client, clock=clock, prefix=prefix)


def test_cluster_every_key_of_a_breaker_is_in_one_slot(cluster_nodes: list[RedisServer]) -> None:
    """Both keys of every breaker have one CLUSTER KEYSLOT; the 20 names span all 3 nodes."""
    owners = _slot_owners(cluster_nodes)
    assert len(owners) == 16384
    used_nodes = set()
    for name in NAMES:
        state_key = f"redbreaker:{{{name}}}"
        slot = _keyslot(cluster_nodes[0], state_key)
        assert _keyslot(cluster_nodes[1], f"{state_key}:probes") == slot, name
        assert _keyslot(cluster_nodes[2], name) == slot, name  # the name is the hash tag
        used_nodes.add(owners[slot])
    assert used_nodes == {0, 1, 2}


@pytest.mark.parametrize("how", ["url", "client-decoded"])
def test_cluster_breakers_trip_reject_probe_and_close(
    cluster_nodes: list[RedisServer], how: str
) -> None:
    """20 breakers on all 3 nodes each open, reject, probe and close; keys on the slot's node."""
    clock = redbreaker.ManualClock()
    store = _cluster_store(cluster_nodes, how, clock, prefix="topo")
    try:
        seen: dict[str, list[tuple[State | None, State, str, int]]] = {n: [] for n in NAMES}
        breakers = {
            name: redbreaker.Breaker(
                name,
                store=store,
                failure_threshold=2,
                recovery_timeout=5,
                on_transition=[
                    lambda t, name=name: seen[name].append(
                        (t.previous, t.current, t.reason, t.generation)
                    )
                ],
            )
            for name in NAMES
        }
        for breaker in breakers.values():
            assert breaker.call(lambda: "fine") == "fine"
            for _ in range(2):
                with pytest.raises(ZeroDivisionError):
                    breaker.call(lambda: 1 / 0)
        for name, breaker in breakers.items():
            with pytest.raises(redbreaker.CircuitOpenError) as rejected:
                breaker.call(lambda: "never runs")
            assert rejected.value.retry_after == 5.0, name
            snap = breaker.snapshot()
            assert (snap.exists, snap.state, snap.open_count, snap.generation) == (
                True, State.OPEN, 1, 2,
            ), name  # fmt: skip

        # The keys sit on the primary that owns the slot: a plain client on that node sees
        # them (a plain client on any other node would get MOVED).
        owners = _slot_owners(cluster_nodes)
        for name in NAMES:
            node = cluster_nodes[owners[_keyslot(cluster_nodes[0], name)]]
            with node.client() as r:
                assert r.exists(f"topo:{{{name}}}") == 1, name
                assert r.hget(f"topo:{{{name}}}", "state") == b"open", name

        clock.advance(5)
        for name, breaker in breakers.items():
            with breaker.acquire() as permit:
                assert permit.is_probe, name
            assert breaker.state is State.CLOSED, name
            assert seen[name] == [
                (State.CLOSED, State.OPEN, "consecutive_failures", 2),
                (State.OPEN, State.HALF_OPEN, "recovery_timeout_elapsed", 3),
                (State.HALF_OPEN, State.CLOSED, "probes_succeeded", 4),
            ], name
            assert breaker.snapshot().generation == 4, name
            with breaker.acquire() as permit:  # closed again: an ordinary admission
                assert not permit.is_probe, name
        assert store.breaker_names() == sorted(NAMES)
    finally:
        store.close()


def test_cluster_operator_orders_and_noscript_reload(cluster_nodes: list[RedisServer]) -> None:
    """force_open/reset work on every node, and a node that lost its scripts gets them back."""
    clock = redbreaker.ManualClock()
    store = redbreaker.connect(_cluster_url(cluster_nodes), clock=clock, prefix="orders")
    try:
        breakers = [redbreaker.Breaker(name, store=store) for name in NAMES]
        for breaker in breakers:
            assert breaker.force_open() is State.FORCED_OPEN
        for node in cluster_nodes:
            node.script_flush()  # every node forgets the scripts: EVALSHA gets NOSCRIPT
        for breaker in breakers:
            with pytest.raises(redbreaker.CircuitOpenError) as rejected:
                breaker.call(lambda: 1)
            assert (rejected.value.state, rejected.value.retry_after) == ("forced_open", None)
            assert breaker.reset() is State.CLOSED
            assert breaker.call(lambda: 7) == 7
    finally:
        store.close()


def test_cluster_breaker_names_scans_every_primary(cluster_nodes: list[RedisServer]) -> None:
    """breaker_names() on a cluster lists its prefix's breakers from all three primaries."""
    clock = redbreaker.ManualClock()
    store = redbreaker.connect(_cluster_url(cluster_nodes), clock=clock, prefix="names")
    other = redbreaker.connect(_cluster_url(cluster_nodes), clock=clock, prefix="names:other")
    try:
        for name in NAMES:
            redbreaker.Breaker(name, store=store, failure_threshold=1).call(lambda: None)
            with pytest.raises(ValueError, match="boom"):
                redbreaker.Breaker(name, store=store, failure_threshold=1).call(_boom)
        redbreaker.Breaker("elsewhere", store=other).call(lambda: None)
        per_node = []
        for node in cluster_nodes:
            with node.client() as r:
                per_node.append(sum(1 for _ in r.scan_iter(match="names:{*}")))
        assert all(count > 0 for count in per_node), per_node  # spread over every primary
        assert sum(per_node) == len(NAMES)
        assert store.breaker_names() == sorted(NAMES)
        assert other.breaker_names() == ["elsewhere"]
    finally:
        store.close()
        other.close()


def _boom() -> None:
    raise ValueError("boom")


def test_cluster_transitions_reach_a_subscriber_of_their_slot_channels(
    cluster_nodes: list[RedisServer],
) -> None:
    """An SSUBSCRIBE of the breakers' slot channels (each on its owner) gets the JSON
    transitions SPUBLISHed by scripts on all nodes, each exactly once."""
    clock = redbreaker.ManualClock()
    store = redbreaker.connect(_cluster_url(cluster_nodes), clock=clock, prefix="events")
    owners = _slot_owners(cluster_nodes)
    assert {owners[_keyslot(cluster_nodes[0], n)] for n in NAMES} == {0, 1, 2}
    channels = SlotChannels("events")
    expected = {
        name: {
            "name": name,
            "from_state": "closed",
            "to_state": "open",
            "reason": "consecutive_failures",
            "generation": 2,
            "at_ms": clock.server_ms(),
            "retry_after_ms": 30_000,  # the default recovery_timeout
        }
        for name in NAMES
    }
    received: dict[str, dict[str, object]] = {}
    cluster_client = RedisCluster(host=cluster_nodes[0].host, port=cluster_nodes[0].port)
    pubsub = cluster_client.pubsub()
    try:
        wanted = {channels.of_breaker(name)[1] for name in NAMES}
        for channel in wanted:
            pubsub.ssubscribe(channel)
        confirmed: set[bytes] = set()
        deadline = time.monotonic() + _EVENT_TIMEOUT
        while len(confirmed) < len(wanted) and time.monotonic() < deadline:
            message = pubsub.get_sharded_message(timeout=0.2)
            if message is not None and message["type"] == "ssubscribe":
                confirmed.add(message["channel"])
        assert len(confirmed) == len(wanted)
        for name in NAMES:
            with pytest.raises(ValueError, match="boom"):
                redbreaker.Breaker(name, store=store, failure_threshold=1).call(_boom)
        deadline = time.monotonic() + _EVENT_TIMEOUT
        while len(received) < len(NAMES) and time.monotonic() < deadline:
            message = pubsub.get_sharded_message(timeout=0.2)
            if message is not None and message["type"] == "smessage":
                event = json.loads(message["data"])
                assert event["name"] not in received, event  # each event exactly once
                received[event["name"]] = event
    finally:
        pubsub.close()
        cluster_client.close()
        store.close()
    assert received == expected


def test_cluster_store_transitions_iterator(cluster_nodes: list[RedisServer]) -> None:
    """Store.transitions() on a cluster store yields the transitions of all three nodes."""
    clock = redbreaker.ManualClock()
    store = redbreaker.connect(_cluster_url(cluster_nodes), clock=clock, prefix="watch")
    watcher = redbreaker.connect(_cluster_url(cluster_nodes), clock=clock, prefix="watch")
    received: list[redbreaker.Transition] = []
    done = threading.Event()

    def watch() -> None:
        for transition in events:
            received.append(transition)
            if transition.name == "__stop__" or len(received) == len(NAMES):
                break
        done.set()

    events = watcher.transitions()  # subscribed (every slot's channel) when this returns
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        for name in NAMES:
            with pytest.raises(ValueError, match="boom"):
                redbreaker.Breaker(name, store=store, failure_threshold=1).call(_boom)
        done.wait(_EVENT_TIMEOUT)
    finally:
        watcher.close()  # ends the watch (within 5 ms) if it is still waiting
        thread.join(_EVENT_TIMEOUT)
        store.close()
    assert not thread.is_alive()
    assert sorted((t.name, t.previous, t.current, t.reason) for t in received) == sorted(
        (name, State.CLOSED, State.OPEN, "consecutive_failures") for name in NAMES
    )


@pytest.mark.parametrize("scheme", ["REDIS+CLUSTER", "Redis+Cluster"])
def test_cluster_url_scheme_is_case_insensitive(
    cluster_nodes: list[RedisServer], scheme: str
) -> None:
    """connect() accepts the cluster scheme in any case (URL schemes are case-insensitive)."""
    node = cluster_nodes[0]
    store = redbreaker.connect(
        f"{scheme}://{node.host}:{node.port}", clock=redbreaker.ManualClock()
    )
    try:
        assert isinstance(store.client, RedisCluster)
        assert redbreaker.Breaker("case", store=store).call(lambda: 3) == 3
    finally:
        store.close()


def _client_addrs(node: RedisServer, *, ignore_name_prefix: str = "") -> set[str]:
    """``addr`` of every client connection of ``node`` but the one asking (and those whose
    name starts with ``ignore_name_prefix``)."""
    with node.client(decode_responses=True) as r:
        return {
            str(c.get("addr"))
            for c in r.client_list()
            if c.get("cmd") != "client|list"
            and not (ignore_name_prefix and str(c.get("name", "")).startswith(ignore_name_prefix))
        }


def _left_open(
    nodes: list[RedisServer], before: list[set[str]], *, ignore_name_prefix: str = ""
) -> list[set[str]]:
    """Per node, the connections opened since ``before`` that are still open. A client that
    just closed its socket may be listed for an instant, so this waits (bounded, 2 s in all)
    for none to be left."""
    deadline = time.monotonic() + 2.0
    while True:
        left = [
            _client_addrs(node, ignore_name_prefix=ignore_name_prefix) - seen
            for node, seen in zip(nodes, before, strict=True)
        ]
        if not any(left) or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def test_cluster_store_close_closes_every_connection(cluster_nodes: list[RedisServer]) -> None:
    """After close(), a cluster store that used all three primaries holds no connection."""
    before = [_client_addrs(node) for node in cluster_nodes]
    store = redbreaker.connect(
        _cluster_url(cluster_nodes), clock=redbreaker.ManualClock(), prefix="close"
    )
    for name in NAMES:
        redbreaker.Breaker(name, store=store).call(lambda: None)
    assert store.breaker_names() == sorted(NAMES)
    opened = [_client_addrs(node) - seen for node, seen in zip(cluster_nodes, before, strict=True)]
    assert all(opened), opened  # the store talked to every primary
    store.close()
    assert _left_open(cluster_nodes, before) == [set(), set(), set()]
    del store  # keep the store alive until the checks above ran: no help from the GC


# --------------------------------------------------------------------------- sentinel


class SentinelServer(RedisServer):
    """A ``redis-server <conf> --sentinel`` monitoring ``mymaster`` on ``master_port``.

    Sentinel needs its config file as the first argument and rewrites it, so the file is
    written (afresh, on every start) into the server's own directory.
    """

    def __init__(
        self,
        master_port: int,
        *,
        quorum: int = 1,
        down_after_ms: int = 5000,
        failover_timeout_ms: int | None = None,
    ) -> None:
        super().__init__()
        self.master_port = master_port
        self.quorum = quorum
        # Generous by default: only a master silent this long is marked down, so a loaded
        # machine does not trigger a failover in the tests that are not about one.
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def _command_line(self, binary: str, workdir: Path) -> list[str]:
        conf = workdir / "sentinel.conf"
        failover = (
            ""
            if self.failover_timeout_ms is None
            else f"sentinel failover-timeout mymaster {self.failover_timeout_ms}\n"
        )
        conf.write_text(
            f"port {self.port}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds mymaster {self.down_after_ms}\n" + failover
        )
        command = super()._command_line(binary, workdir)
        # `redis-server <conf> --sentinel --port ... --dir ...`; persistence options mean
        # nothing to a sentinel, leave them out.
        options = command[1:]
        for name in ("--save", "--appendonly"):
            at = options.index(name)
            del options[at : at + 2]
        return [command[0], str(conf), "--sentinel", *options]


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[RedisServer, SentinelServer]]:
    """A master and one sentinel that knows it as ``mymaster`` (and says so)."""
    _require_binaries()
    master = RedisServer()
    watcher: SentinelServer | None = None
    try:
        master.start()
        watcher = SentinelServer(master.port)
        watcher.start()
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            with watcher.client(decode_responses=True) as r:
                address = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
                flags = r.sentinel_master("mymaster").get("flags", "")
            if address and int(address[1]) == master.port and flags == "master":
                break
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"the sentinel did not see the master within {_READY_TIMEOUT:g} s: "
                    f"{address} {flags}\n{watcher.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)
        yield master, watcher
    finally:
        _stop_all([s for s in (watcher, master) if s is not None])


@pytest.mark.parametrize(("path", "db"), [("/mymaster", 0), ("/mymaster/0", 0), ("/mymaster/3", 3)])
def test_sentinel_breaker_trips_probes_and_closes(
    sentinel: tuple[RedisServer, SentinelServer], path: str, db: int
) -> None:
    """Via redis+sentinel:// a breaker opens, rejects, probes, closes, in the URL's master db."""
    master, watcher = sentinel
    master.flushall(scripts=True)
    clock = redbreaker.ManualClock()
    store = redbreaker.connect(f"redis+sentinel://127.0.0.1:{watcher.port}{path}", clock=clock)
    try:
        seen: list[tuple[State | None, State]] = []
        breaker = redbreaker.Breaker(
            "via:sentinel",
            store=store,
            failure_threshold=2,
            recovery_timeout=5,
            on_transition=[lambda t: seen.append((t.previous, t.current))],
        )
        assert breaker.call(lambda: "ok") == "ok"
        for _ in range(2):
            with pytest.raises(ZeroDivisionError):
                breaker.call(lambda: 1 / 0)
        with pytest.raises(redbreaker.CircuitOpenError) as rejected:
            breaker.call(lambda: "never runs")
        assert rejected.value.retry_after == 5.0
        assert breaker.state is State.OPEN
        with master.client(db=db) as r:
            assert r.hget("redbreaker:{via:sentinel}", "state") == b"open"
            assert r.dbsize() == 1  # the probes zset is empty, so it does not exist
        for other_db in {0, 3} - {db}:
            with master.client(db=other_db) as r:
                assert r.dbsize() == 0
        clock.advance(5)
        with breaker.acquire() as permit:
            assert permit.is_probe
        assert breaker.state is State.CLOSED
        assert seen == [
            (State.CLOSED, State.OPEN),
            (State.OPEN, State.HALF_OPEN),
            (State.HALF_OPEN, State.CLOSED),
        ]
        assert store.breaker_names() == ["via:sentinel"]
    finally:
        store.close()


def test_sentinel_store_close_closes_every_connection(
    sentinel: tuple[RedisServer, SentinelServer],
) -> None:
    """After close(), a redis+sentinel:// store holds no connection to master nor sentinel."""
    master, watcher = sentinel
    master.flushall(scripts=True)
    # The sentinel's own links to the master are named sentinel-<id>-cmd / -pubsub.
    master_before = _client_addrs(master, ignore_name_prefix="sentinel-")
    sentinel_before = _client_addrs(watcher)
    store = redbreaker.connect(
        f"redis+sentinel://127.0.0.1:{watcher.port}/mymaster", clock=redbreaker.ManualClock()
    )
    assert redbreaker.Breaker("closing", store=store).call(lambda: 5) == 5
    assert _client_addrs(watcher) - sentinel_before  # it asked the sentinel for the master
    store.close()
    assert _left_open(
        [master, watcher], [master_before, sentinel_before], ignore_name_prefix="sentinel-"
    ) == [set(), set()]
    del store  # keep the store (and its Sentinel) alive until the checks above ran
