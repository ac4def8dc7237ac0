"""``doctor``'s per-server checks: what each Redis server is asked (round trips, INFO,
CONFIG, SCAN), and how a Cluster's primaries' findings merge into one per check. No I/O here.

On one Redis the server is the store's own connection. On a Cluster every primary is asked
on its own: persistence, eviction, the version and the keys are each server's, and a
breaker lives on whichever primary owns its slot, so a single node's answer would vouch
for breakers it does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from . import _doctor_findings as checks
from ._doctor_findings import Finding, Status
from ._doctor_replies import Answer, Ask, LibraryStep, config_pairs, info_fields, reply_text

if TYPE_CHECKING:
    import re
    from collections.abc import Generator

__all__ = [
    "PINGS",
    "ServerFacts",
    "count_keys",
    "gather",
    "merge",
    "round_trips",
    "server_findings",
]

PINGS = 5
"""Timed PINGs per server for the latency check."""

Request = Union[Ask, LibraryStep]  # noqa: UP007 (a runtime alias on 3.10)

_RANK: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class ServerFacts:
    """What one server answered; ``node`` is ``host:port`` on a Cluster, None otherwise.
    ``down`` is the error of a server that could not be reached (nothing else was asked)."""

    node: str | None
    trips: tuple[float, ...] = ()
    down: str | None = None
    server: dict[str, str] | None = None
    persistence: dict[str, str] | None = None
    memory: dict[str, str] | None = None
    save: dict[str, str] | None = None
    keys: int = 0
    breakers: int = 0
    scan_error: str | None = None


def round_trips(answers: list[Answer]) -> list[float]:
    # A refused PING (an ACL without it, as the documented one) still made a round trip.
    return [a.seconds * 1000 for a in answers if a.kind in (None, "noperm")]


def gather(
    node: str | None, prefix: str, state_key: re.Pattern[str], trips: list[float] | None
) -> Generator[Request, Answer, ServerFacts]:
    """Ask one server everything the per-server checks read. ``trips``: round trips
    already timed on this server (the single-server case), else PINGs are sent here."""
    if trips is None:
        pings = []
        for _ in range(PINGS):
            pings.append((yield Ask(("PING",), timed=True, node=node)))
            if pings[-1].kind in ("unavailable", "credentials"):
                return ServerFacts(node, down=pings[-1].error or pings[-1].kind)
        trips = round_trips(pings)
    server = info_fields((yield Ask(("INFO", "server"), node=node)))
    persistence = info_fields((yield Ask(("INFO", "persistence"), node=node)))
    memory = info_fields((yield Ask(("INFO", "memory"), node=node)))
    save = config_pairs((yield Ask(("CONFIG", "GET", "save"), node=node)))
    keys, breakers, scan_error = yield from count_keys(node, prefix, state_key)
    return ServerFacts(
        node, tuple(trips), None, server, persistence, memory, save, keys, breakers, scan_error
    )


def count_keys(
    node: str | None, prefix: str, state_key: re.Pattern[str]
) -> Generator[Request, Answer, tuple[int, int, str | None]]:
    """The keys under ``prefix`` on one server and how many are breakers' state keys,
    and SCAN's error if it was refused."""
    keys = breakers = 0
    cursor = "0"
    while True:
        reply = yield Ask(("SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", "1000"), node=node)
        if reply.error is not None:
            return keys, breakers, reply.error
        value = reply.value
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            return keys, breakers, f"unexpected SCAN reply {value!r}"
        cursor = reply_text(value[0])
        batch = [reply_text(k) for k in value[1]]
        keys += len(batch)
        breakers += sum(1 for k in batch if state_key.fullmatch(k))
        if cursor == "0":
            return keys, breakers, None


def server_findings(facts: ServerFacts, version: tuple[int, ...] | None) -> dict[str, Finding]:
    """One server's findings of the per-server checks, by check."""
    return {
        "version": checks.version_finding(facts.server, version),
        "latency": checks.latency_finding(list(facts.trips)),
        "persistence": checks.persistence_finding(facts.save, facts.persistence),
        "eviction": checks.eviction_finding(facts.memory),
    }


def merge(check: str, per_node: list[tuple[str, Finding]]) -> Finding:
    """One finding for ``check`` from every primary's: the worst status; one summary when
    they all agree, else each summary with the primaries that gave it, the worst first."""
    worst = max(per_node, key=lambda pair: _RANK[pair[1].status])[1]
    groups: dict[tuple[Status, str], list[str]] = {}
    for node, finding in per_node:
        groups.setdefault((finding.status, finding.summary), []).append(node)
    if len(groups) == 1:
        where = f"all {len(per_node)} primaries" if len(per_node) > 1 else f"on {per_node[0][0]}"
        return Finding(check, worst.status, f"{worst.summary} ({where})", worst.advice)
    ordered = sorted(groups.items(), key=lambda item: -_RANK[item[0][0]])
    summary = "; ".join(f"{', '.join(nodes)}: {text}" for (_, text), nodes in ordered)
    return Finding(check, worst.status, summary, worst.advice)
