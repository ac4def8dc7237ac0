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
from ._doctor_findings import SCRATCH_NAME, SCRIPT_COMMANDS, Finding, Status
from ._doctor_replies import (
    Answer,
    Ask,
    ErrorKind,
    LibraryStep,
    command_on_line,
    config_pairs,
    failing_line,
    info_fields,
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
PINGS = 5


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


def _round_trips(first: Answer, more: list[Answer]) -> list[float]:
    # A refused PING (an ACL without it, as the documented one) still made a round trip.
    return [a.seconds * 1000 for a in (first, *more) if a.kind in (None, "noperm")]


def examine(prefix: str, *, embedded: bool) -> Examination:
    """The doctor's requests for a store with ``prefix``; returns the report.

    ``embedded``: the in-process store (``memory://``), where credentials, ACLs,
    persistence and eviction do not apply.
    """
    findings: list[Finding] = []
    channel = f"{prefix}:events"
    first = yield Ask(("PING",), timed=True)
    if first.kind == "unavailable":
        return DoctorReport(prefix, "none", (checks.unreachable(first.error),))
    if first.kind == "credentials":
        findings.append(Finding("reachable", "ok", "Redis answers"))
        findings.append(checks.refused_credentials(first.error))
        return DoctorReport(prefix, "none", tuple(findings))
    more = []
    for _ in range(PINGS - 1):
        more.append((yield Ask(("PING",), timed=True)))
    trips = _round_trips(first, more)
    if embedded:
        return (yield from _examine_embedded(prefix, trips))
    findings.append(Finding("reachable", "ok", "Redis answers"))
    whoami = yield Ask(("ACL", "WHOAMI"))
    user = reply_text(whoami.value) if whoami.error is None else None
    findings.append(
        Finding(
            "credentials",
            "ok",
            f"accepted, user {user!r}" if user else "accepted (ACL WHOAMI not allowed)",
        )
    )
    server = info_fields((yield Ask(("INFO", "server"))))
    persistence = info_fields((yield Ask(("INFO", "persistence"))))
    memory = info_fields((yield Ask(("INFO", "memory"))))
    save = config_pairs((yield Ask(("CONFIG", "GET", "save"))))
    version = version_tuple(server.get("redis_version") if server else None)
    findings.append(checks.version_finding(server, version))
    findings.append(checks.latency_finding(trips))
    # Keys are counted before the permission checks, which may write scratch keys.
    keys, breakers, scan_error = yield from _count_keys(prefix)

    method = "exercise"
    missing: list[str] = []
    if user:
        dry = yield Ask(("ACL", "DRYRUN", user, "TIME"))
        if dry.error is None:
            method = "acl-dryrun"
    route = yield LibraryStep("inspect")
    if route.error is not None:
        missing.append(f"inspect: {short_error(route.error)}")
    functions = bool(route.value)
    if method == "acl-dryrun":
        assert user is not None
        for argv in _dryrun_commands(prefix, functions=functions):
            reply = yield Ask(("ACL", "DRYRUN", user, *argv))
            refusal = reply_text(reply.value) if reply.error is None else reply.error
            if refusal.upper() != "OK":
                missing.append(f"{argv[0]}: {refusal}")
    else:
        missing += yield from _exercise(prefix, channel)
    if scan_error is not None and not any(m.startswith("SCAN") for m in missing):
        missing.append(f"SCAN: {scan_error}")
    findings.append(checks.permissions_finding(method, missing, prefix))
    findings.append(checks.scripts_finding(functions, version, route.error))
    findings.append(checks.persistence_finding(save, persistence))
    findings.append(checks.eviction_finding(memory))
    findings.append(checks.keys_finding(prefix, keys, breakers, scan_error))
    return DoctorReport(prefix, method, tuple(findings))


def _examine_embedded(prefix: str, trips: list[float]) -> Examination:
    route = yield LibraryStep("inspect")
    keys, breakers, scan_error = yield from _count_keys(prefix)
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


def _count_keys(prefix: str) -> Generator[Request, Answer, tuple[int, int, str | None]]:
    keys = breakers = 0
    cursor = "0"
    state = re.compile(re.escape(prefix) + r":\{[^{}]*\}")
    while True:
        reply = yield Ask(("SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", "1000"))
        if reply.error is not None:
            return keys, breakers, reply.error
        value = reply.value
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            return keys, breakers, f"unexpected SCAN reply {value!r}"
        cursor = reply_text(value[0])
        batch = [reply_text(k) for k in value[1]]
        keys += len(batch)
        breakers += sum(1 for k in batch if state.fullmatch(k))
        if cursor == "0":
            return keys, breakers, None


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


def _exercise(prefix: str, channel: str) -> Generator[Request, Answer, list[str]]:
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
        answer = yield Ask(argv)
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
