"""``doctor``'s decisions: what to ask a Redis, and what its answers mean. No I/O here.

:func:`examine` is a generator shared by both drivers (:mod:`redbreaker._doctor` and
:mod:`redbreaker.aio._doctor`): it yields what to do next (a command, a step of the
library's own path on a scratch breaker) and is sent what came back (an :class:`Answer`).
It returns a :class:`DoctorReport`: one :class:`Finding` per check, each with advice.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Union

from . import _doctor_findings as checks
from . import _doctor_nodes as nodes
from ._doctor_findings import SCRATCH_NAME, SCRIPT_COMMANDS, Finding, Status
from ._doctor_replies import (
    Answer,
    Ask,
    ErrorKind,
    LibraryStep,
    command_on_line,
    failing_line,
    reply_text,
    short_error,
    version_tuple,
    what_was_denied,
)

__all__ = [
    "CHECKS",
    "SCRATCH_NAME",
    "SCRIPT_COMMANDS",
    "Answer",
    "Ask",
    "DoctorReport",
    "ErrorKind",
    "Finding",
    "LibraryStep",
    "Status",
    "command_on_line",
    "examine",
    "failing_line",
]

SCRATCH_TTL_MS = 10_000
"""Idle lifetime of the scratch keys a direct check writes, in case its DEL is refused."""

# Every command the Lua scripts run (lua/*.lua); a test keeps this list equal to theirs.
CHECKS = (
    "reachable",
    "credentials",
    "version",
    "latency",
    "permissions",
    "scripts",
    "persistence",
    "eviction",
    "keys",
)
"""Every check's name, in the order a report lists them."""


@dataclass(frozen=True)
class DoctorReport:
    """What ``doctor`` found (``Store.doctor()``, ``redbreaker doctor``).

    Attributes:
        prefix: the key prefix checked.
        method: how the permissions were checked: ``"acl-dryrun"`` (ACL DRYRUN per
            command, nothing written), ``"exercise"`` (the commands and the library's path
            run on the scratch breaker ``__redbreaker_doctor__``, whose keys expire),
            ``"embedded"`` (the in-process store: no permissions) or ``"none"`` (Redis
            could not be used).
        findings: one :class:`Finding` per check that could run, in :data:`CHECKS` order.
    """

    prefix: str
    method: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(f.status != "fail" for f in self.findings)

    @property
    def reachable(self) -> bool:
        """False when Redis could not be reached at all (nothing else was checked)."""
        first = self.finding("reachable")
        return first is not None and first.status != "fail"

    def finding(self, check: str) -> Finding | None:
        """The finding of ``check``, or None when that check did not run."""
        return next((f for f in self.findings if f.check == check), None)


Request = Union[Ask, LibraryStep]  # noqa: UP007 (a runtime alias on 3.10)
Examination = Generator[Request, Answer, DoctorReport]


# -- the examination -------------------------------------------------------------------


def examine(prefix: str, *, embedded: bool, primaries: tuple[str, ...] = ()) -> Examination:
    """The doctor's requests for a store with ``prefix``; returns the report.

    ``embedded``: the in-process store (``memory://``), where credentials, ACLs,
    persistence and eviction do not apply. ``primaries``: a Cluster's primaries
    (``host:port``), each checked on its own for what is each server's.
    """
    findings: list[Finding] = []
    channel = f"{prefix}:events"
    # A Cluster client sends a command without keys nowhere in particular (asyncio's
    # refuses it): those go to the first primary that answers.
    for home in primaries or (None,):
        first = yield Ask(("PING",), timed=True, node=home)
        if first.kind != "unavailable":
            break
    if first.kind == "unavailable":
        return DoctorReport(prefix, "none", (checks.unreachable(first.error),))
    if first.kind == "credentials":
        findings.append(Finding("reachable", "ok", "Redis answers"))
        findings.append(checks.refused_credentials(first.error))
        return DoctorReport(prefix, "none", tuple(findings))
    pings = [first]
    for _ in range(nodes.PINGS - 1):
        pings.append((yield Ask(("PING",), timed=True, node=home)))
    trips = nodes.round_trips(pings)
    state_key = re.compile(re.escape(prefix) + r":\{[^{}]*\}")
    if embedded:
        return (yield from _examine_embedded(prefix, trips, state_key))
    whoami = yield Ask(("ACL", "WHOAMI"), node=home)
    user = reply_text(whoami.value) if whoami.error is None else None
    # Each server's facts come before the permission checks, which may write scratch keys.
    servers: list[nodes.ServerFacts] = []
    for node in primaries or (None,):
        servers.append(
            (yield from nodes.gather(node, prefix, state_key, None if primaries else trips))
        )
    up = [facts for facts in servers if facts.down is None]
    findings.append(_reachable(servers))
    if not up:
        return DoctorReport(prefix, "none", tuple(findings))
    findings.append(
        Finding(
            "credentials",
            "ok",
            f"accepted, user {user!r}" if user else "accepted (ACL WHOAMI not allowed)",
        )
    )
    versions = [version_tuple(f.server.get("redis_version") if f.server else None) for f in up]
    known = [v for v in versions if v is not None]
    version = min(known) if known else None
    per_server = [nodes.server_findings(f, v) for f, v in zip(up, versions, strict=True)]

    def one(check: str) -> Finding:
        if not primaries:
            return per_server[0][check]
        pairs = zip(up, per_server, strict=True)
        return nodes.merge(check, [(f.node or "", got[check]) for f, got in pairs])

    findings.append(one("version"))
    findings.append(one("latency"))

    method = "exercise"
    missing: list[str] = []
    if user:
        dry = yield Ask(("ACL", "DRYRUN", user, "TIME"), node=home)
        if dry.error is None:
            method = "acl-dryrun"
    route = yield LibraryStep("inspect")
    if route.error is not None:
        missing.append(f"inspect: {short_error(route.error)}")
    functions = bool(route.value)
    if method == "acl-dryrun":
        assert user is not None
        missing += yield from _dry_run(prefix, user, functions, [f.node for f in up])
    else:
        missing += yield from _exercise(prefix, channel, home)
    scan_errors = [_on(f.node, f.scan_error) for f in up if f.scan_error is not None]
    if scan_errors and not any(m.startswith("SCAN") for m in missing):
        missing.append(f"SCAN: {scan_errors[0]}")
    findings.append(checks.permissions_finding(method, missing, prefix, servers=len(up)))
    findings.append(checks.scripts_finding(functions, version, route.error))
    findings.append(one("persistence"))
    findings.append(one("eviction"))
    findings.append(
        checks.keys_finding(
            prefix,
            sum(f.keys for f in up),
            sum(f.breakers for f in up),
            scan_errors[0] if scan_errors else None,
            servers=len(up),
        )
    )
    return DoctorReport(prefix, method, tuple(findings))


def _on(node: str | None, text: str) -> str:
    return text if node is None else f"{text} (on {node})"


def _reachable(servers: list[nodes.ServerFacts]) -> Finding:
    if servers[0].node is None:
        return Finding("reachable", "ok", "Redis answers")
    down = [f for f in servers if f.down is not None]
    if not down:
        return Finding("reachable", "ok", f"Redis Cluster answers: {len(servers)} primaries")
    return Finding(
        "reachable",
        "fail",
        f"{len(down)} of {len(servers)} Cluster primaries do not answer: "
        + "; ".join(f"{f.node}: {f.down}" for f in down),
        "The breakers whose slots those primaries serve cannot be used. Check each node, "
        "the address the cluster announces for it (cluster-announce-ip), firewalls, and "
        "that the URL's credentials are on every node (ACL users are each server's own).",
    )


def _examine_embedded(prefix: str, trips: list[float], state_key: re.Pattern[str]) -> Examination:
    route = yield LibraryStep("inspect")
    keys, breakers, scan_error = yield from nodes.count_keys(None, prefix, state_key)
    findings = [
        Finding("reachable", "ok", "the embedded in-process Redis (memory://) answers"),
        Finding("credentials", "ok", "none needed: the embedded store is in this process"),
        Finding("version", "ok", "the embedded Redis (fakeredis) runs the same Lua"),
        checks.latency_finding(trips),
        Finding("permissions", "ok", "no ACL: the embedded store allows every command"),
        checks.scripts_finding(bool(route.value), None, route.error),
        Finding(
            "persistence",
            "warn",
            "in-process only: the breakers live in this process and vanish when it exits",
            "Other processes cannot share these breakers. For a fleet, connect every "
            "process to one Redis: redbreaker.connect('redis://host:6379/0').",
        ),
        Finding("eviction", "ok", "nothing is evicted from the embedded store"),
        checks.keys_finding(prefix, keys, breakers, scan_error),
    ]
    return DoctorReport(prefix, "embedded", tuple(findings))


def _dry_run(
    prefix: str, user: str, functions: bool, servers: list[str | None]
) -> Generator[Request, Answer, list[str]]:
    """ACL DRYRUN of every command on every server (ACL users are each server's own);
    a refusal seen on only some primaries names them."""
    refused: dict[str, list[str]] = {}
    for argv in _dryrun_commands(prefix, functions=functions):
        for node in servers:
            reply = yield Ask(("ACL", "DRYRUN", user, *argv), node=node)
            refusal = reply_text(reply.value) if reply.error is None else reply.error
            if refusal.upper() != "OK":
                refused.setdefault(f"{argv[0]}: {refusal}", []).append(node or "")
    return [
        text if len(where) == len(servers) else f"{text} (on {', '.join(where)})"
        for text, where in refused.items()
    ]


def _scratch_keys(prefix: str) -> tuple[str, str]:
    state = f"{prefix}:{{{checks.SCRATCH_NAME}}}"
    return state, f"{state}:probes"


def _dryrun_commands(prefix: str, *, functions: bool) -> list[tuple[str, ...]]:
    """One command line per permission the library needs, with the scratch keys standing
    for every breaker's (ACL key patterns are checked against the names)."""
    key, probes = _scratch_keys(prefix)
    route: list[tuple[str, ...]] = (
        [("FCALL", "f", "2", key, probes), ("FUNCTION", "LOAD", "x")]
        if functions
        else [("EVALSHA", "0" * 40, "2", key, probes), ("SCRIPT", "LOAD", "x")]
    )
    inner: list[tuple[str, ...]] = [
        ("DEL", key, probes),
        ("HDEL", key, "f"),
        ("HGET", key, "f"),
        ("HGETALL", key),
        ("HMGET", key, "f"),
        ("HSET", key, "f", "v"),
        ("PERSIST", key),
        ("PEXPIRE", key, "1000"),
        ("PUBLISH", f"{prefix}:events", "x"),
        ("TIME",),
        ("TYPE", key),
        ("ZADD", probes, "0", "m"),
        ("ZCARD", probes),
        ("ZCOUNT", probes, "0", "1"),
        ("ZRANGE", probes, "0", "1"),
        ("ZREM", probes, "m"),
        ("ZREMRANGEBYSCORE", probes, "0", "1"),
    ]
    return [
        *route,
        *inner,
        ("SCAN", "0", "MATCH", f"{prefix}:*"),
        ("SUBSCRIBE", f"{prefix}:events"),
    ]


def _exercise(prefix: str, channel: str, home: str | None) -> Generator[Request, Answer, list[str]]:
    """Run the library's path, then each command the scripts use, on the scratch breaker;
    return what was refused. Every key it writes carries a TTL, and it deletes them."""
    missing: list[str] = []
    refused: set[str] = set()
    for step in ("call", "reset", "names", "subscribe"):
        answer = yield LibraryStep(step)
        if answer.error is None or answer.kind not in ("noperm", "error"):
            continue
        if answer.command is None:
            missing.append(f"{step}: {short_error(answer.error)}")
        elif answer.command not in refused:
            refused.add(answer.command)
            missing.append(f"{answer.command}: {what_was_denied(answer, step)}")
    key, probes = _scratch_keys(prefix)
    ttl = str(SCRATCH_TTL_MS)
    direct: list[tuple[str, ...]] = [
        ("HSET", key, "doctor", "1"),
        ("PEXPIRE", key, ttl),
        ("HGET", key, "doctor"),
        ("HMGET", key, "doctor"),
        ("HGETALL", key),
        ("HDEL", key, "doctor"),
        ("TYPE", key),
        ("ZADD", probes, "0", "doctor"),
        ("PEXPIRE", probes, ttl),
        ("ZCARD", probes),
        ("ZCOUNT", probes, "-inf", "+inf"),
        ("ZRANGE", probes, "0", "-1"),
        ("ZREMRANGEBYSCORE", probes, "-inf", "(-inf"),
        ("ZREM", probes, "doctor"),
        ("HSET", key, "doctor", "1"),
        ("PERSIST", key),
        ("PEXPIRE", key, ttl),  # PERSIST took the TTL off: put it back
        ("TIME",),
        # Not JSON: every watcher skips it.
        ("PUBLISH", channel, "redbreaker doctor: permission check, not an event"),
        ("DEL", key, probes),
    ]
    keys_denied: list[str] = []
    for argv in direct:
        answer = yield Ask(argv, node=home if argv[0] in ("TIME", "PUBLISH") else None)
        if answer.kind != "noperm" or argv[0] in refused:
            continue
        refused.add(argv[0])
        denied = what_was_denied(answer, argv[0])
        if denied.startswith(("the keys of", "the key ")):
            keys_denied.append(argv[0])
        else:
            missing.append(f"{argv[0]}: {denied}")
    if keys_denied:
        missing.append(f"keys {prefix}:*: refused to {', '.join(keys_denied)}")
    return missing
