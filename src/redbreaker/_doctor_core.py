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
from typing import Literal, Union

from . import _doctor_findings as checks
from ._doctor_findings import SCRATCH_NAME, SCRIPT_COMMANDS, Finding, Status

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

ErrorKind = Literal["unavailable", "credentials", "noperm", "unknown_command", "error"]

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


@dataclass(frozen=True)
class Ask:
    """Send ``argv`` as one command (``timed``: measure its round trip)."""

    argv: tuple[str, ...]
    timed: bool = False


@dataclass(frozen=True)
class LibraryStep:
    """Run one step of the library's own path with the store's client: ``inspect`` (a
    snapshot of the scratch breaker: reads only), ``call`` (acquire and record one
    success), ``reset`` (an operator order: publishes one event), ``names`` (SCAN for
    the breakers) or ``subscribe`` (subscribe to the events channel and leave)."""

    step: Literal["inspect", "call", "reset", "names", "subscribe"]


@dataclass(frozen=True)
class Answer:
    """What a request got back.

    Attributes:
        value: the reply (any redis-py shape: bytes or str, dicts for INFO and CONFIG);
            for a ``LibraryStep``, whether the store calls Functions (FCALL) after it.
        error: the error's text, None when it answered.
        kind: what the error means (the driver classifies redis-py's exceptions).
        seconds: the round trip of a timed request.
        command: for a refused script, the command on the script's failing line.
    """

    value: object = None
    error: str | None = None
    kind: ErrorKind | None = None
    seconds: float = 0.0
    command: str | None = None


Request = Union[Ask, LibraryStep]  # noqa: UP007 (a runtime alias on 3.10)
Examination = Generator[Request, Answer, DoctorReport]


# -- reading replies ---------------------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _info(answer: Answer) -> dict[str, str] | None:
    """INFO's fields, whether redis-py parsed them into a dict or left the text."""
    if answer.error is not None:
        return None
    if isinstance(answer.value, dict):
        return {_text(k): _text(v) for k, v in answer.value.items()}
    fields = {}
    for line in _text(answer.value).splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def _config(answer: Answer) -> dict[str, str] | None:
    """CONFIG GET's pairs (a dict, or a flat list on some clients)."""
    if answer.error is not None:
        return None
    value = answer.value
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_text(v) for v in value]
        return dict(zip(items[::2], items[1::2], strict=False))
    return None


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if found is None:
        return None
    return tuple(int(part or 0) for part in found.groups())


_NAMED = re.compile(r"'([^']+)' (command|key|channel)")


def _denied(answer: Answer, command: str) -> str:
    """What a refusal names: ``"the 'publish' command"``, ``"the key 'x'"``..."""
    text = answer.error or _text(answer.value)
    if answer.command is not None:
        return f"the {answer.command.lower()!r} command (inside a script)"
    found = _NAMED.search(text)
    if found is not None:
        thing, what = found.groups()
        return f"the {thing!r} {what}" if what == "command" else f"the {what} {thing!r}"
    low = text.lower()
    if "channel" in low:
        return f"the channel of {command}"
    if "key" in low:
        return f"the keys of {command}"
    return f"the {command.lower()!r} command"


def _short(error: str) -> str:
    """A library error without the wrapping: ``Redis refused the x script: <reason>``."""
    return re.sub(r"^\w+Error: (Redis refused the \w+ script: )?", "", error)


def failing_line(error: str) -> tuple[str, int] | None:
    """Where a refused script stopped: ``("function" | "script", line)`` from Redis's
    ``@user_function:200`` / ``@user_script:12``, or None."""
    found = re.search(r"@user_(function|script):(\d+)", error)
    if found is None:
        return None
    return found.group(1), int(found.group(2))


def command_on_line(source: str, line: int) -> str | None:
    """The command a Lua line calls (``redis.call('PUBLISH', ...)`` gives ``"PUBLISH"``)."""
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return None
    found = re.search(r"redis\.p?call\(\s*'([A-Za-z]+)'", lines[line - 1])
    return found.group(1).upper() if found else None


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
    user = _text(whoami.value) if whoami.error is None else None
    findings.append(
        Finding(
            "credentials",
            "ok",
            f"accepted, user {user!r}" if user else "accepted (ACL WHOAMI not allowed)",
        )
    )
    server = _info((yield Ask(("INFO", "server"))))
    persistence = _info((yield Ask(("INFO", "persistence"))))
    memory = _info((yield Ask(("INFO", "memory"))))
    save = _config((yield Ask(("CONFIG", "GET", "save"))))
    version = _version(server.get("redis_version") if server else None)
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
        missing.append(f"inspect: {_short(route.error)}")
    functions = bool(route.value)
    if method == "acl-dryrun":
        assert user is not None
        for argv in _dryrun_commands(prefix, functions=functions):
            reply = yield Ask(("ACL", "DRYRUN", user, *argv))
            refusal = _text(reply.value) if reply.error is None else reply.error
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
        cursor = _text(value[0])
        batch = [_text(k) for k in value[1]]
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
            missing.append(f"{step}: {_short(answer.error)}")
        elif answer.command not in refused:
            refused.add(answer.command)
            missing.append(f"{answer.command}: {_denied(answer, step)}")
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
        denied = _denied(answer, argv[0])
        if denied.startswith(("the keys of", "the key ")):
            keys_denied.append(argv[0])
        else:
            missing.append(f"{argv[0]}: {denied}")
    if keys_denied:
        missing.append(f"keys {prefix}:*: refused to {', '.join(keys_denied)}")
    return missing
