"""``doctor``'s findings: what each check's answer means, and the advice. No I/O here.

:mod:`redbreaker._doctor_core` gathers the answers; each function here turns what one check
found into a :class:`Finding` with advice.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

Status = Literal["ok", "warn", "fail"]

SCRATCH_NAME = "__redbreaker_doctor__"
"""The breaker the library's path is exercised on when ACL DRYRUN is not allowed."""
SCRIPT_COMMANDS = (
    "DEL", "HDEL", "HGET", "HGETALL", "HMGET", "HSET", "PERSIST", "PEXPIRE", "PUBLISH",
    "TIME", "TYPE", "ZADD", "ZCARD", "ZCOUNT", "ZRANGE", "ZREM", "ZREMRANGEBYSCORE",
)  # fmt: skip
CLUSTER_SCRIPT_COMMANDS = ("SPUBLISH",)
"""What the scripts call only on a Redis Cluster: transitions on sharded pub/sub."""
SLOW_ROUND_TRIP_MS = 5.0


@dataclass(frozen=True)
class Finding:
    """One check's outcome.

    Attributes:
        check: which check (one of :data:`CHECKS`).
        status: ``"ok"``, ``"warn"`` (works, but read the advice) or ``"fail"`` (the
            library cannot work as it should).
        summary: what was found, one line.
        advice: what to do about it; empty when there is nothing to do.
    """

    check: str
    status: Status
    summary: str
    advice: str = ""


# -- findings ----------------------------------------------------------------------------


def unreachable(error: str | None) -> Finding:
    return Finding(
        "reachable",
        "fail",
        f"cannot reach Redis: {error}",
        "Check the host and port in the URL, that Redis is running, and that no firewall "
        "or TLS setting (rediss://) stands between.",
    )


def refused_credentials(error: str | None) -> Finding:
    return Finding(
        "credentials",
        "fail",
        f"Redis refused the credentials: {error}",
        "Put the user and password in the URL, percent-escaped: "
        "redis://USER:PASSWORD@host:6379/0 (redis://:PASSWORD@... for requirepass).",
    )


def version_finding(server: Mapping[str, str] | None, version: tuple[int, ...] | None) -> Finding:
    if server is None or version is None:
        return Finding(
            "version",
            "warn",
            "unknown: INFO server is not allowed",
            "Nothing to fix for the library; it needs Redis >= 5 (>= 7 for Functions).",
        )
    text = server.get("redis_version", "?")
    if version >= (7,):
        return Finding("version", "ok", f"Redis {text}")
    # The scripts need effects replication (Redis 5's default), so TIME may run in them.
    if version >= (5,):
        return Finding(
            "version",
            "warn",
            f"Redis {text}: no Functions, the library runs its scripts by EVALSHA",
            "Works; Redis >= 7 saves the script round trips after a restart or a failover.",
        )
    return Finding(
        "version",
        "fail",
        f"Redis {text} is too old: the scripts call TIME, which needs effects replication",
        "Use Redis >= 5 (>= 7 preferred).",
    )


def latency_finding(trips: list[float]) -> Finding:
    if not trips:
        return Finding("latency", "warn", "unknown: no round trip could be timed")
    median = statistics.median(trips)
    summary = f"round trip median {median:.2f} ms over {len(trips)} PINGs"
    if median <= SLOW_ROUND_TRIP_MS:
        return Finding("latency", "ok", summary)
    return Finding(
        "latency",
        "warn",
        summary,
        "A strict breaker spends about two round trips per guarded call (acquire, record). "
        "Put Redis closer to the workers, or use consistency='cached'.",
    )


def permissions_finding(
    method: str, missing: list[str], prefix: str, *, servers: int = 1
) -> Finding:
    if method == "acl-dryrun":
        how = "ACL DRYRUN per command (nothing written)"
        if servers > 1:
            how += f" on each of {servers} primaries"
    else:
        how = (
            f"by running them on the scratch breaker {SCRATCH_NAME!r} (keys deleted or "
            "expiring within seconds; one reset event published)"
        )
        if servers > 1:
            # The scratch keys hash to one slot, so one primary ran them.
            how += (
                ", on the one primary that holds it: ACL users are each server's own, so "
                "give every primary the same ACL (ACL DRYRUN, if allowed, checks them all)"
            )
    if not missing:
        return Finding("permissions", "ok", f"every command the library needs is allowed, {how}")
    return Finding(
        "permissions",
        "fail",
        f"refused, checked {how}: " + "; ".join(missing),
        f"Grant the user the documented ACL (docs/security.md): ~{prefix}:* "
        f"&{prefix}:events +fcall +function|load (or +evalsha +script|load) and "
        + " ".join(f"+{c.lower()}" for c in SCRIPT_COMMANDS)
        + " +scan +subscribe (on a Redis Cluster also +spublish +ssubscribe).",
    )


def scripts_finding(functions: bool, version: tuple[int, ...] | None, error: str | None) -> Finding:
    if error is not None:
        return Finding(
            "scripts",
            "fail",
            f"the library's scripts could not run: {error}",
            "See the permissions check; both FCALL and EVALSHA were refused or failed.",
        )
    if functions:
        return Finding("scripts", "ok", "Functions: the library is loaded and called by FCALL")
    why = (
        "this Redis has no Functions"
        if version is not None and version < (7,)
        else "FCALL or FUNCTION LOAD is refused"
    )
    return Finding(
        "scripts",
        "ok",
        f"scripts by EVALSHA ({why})",
        "Works. Functions (Redis >= 7, +fcall +function|load) survive a SCRIPT FLUSH and "
        "need no reload round trip per script.",
    )


_LOST = (
    "A restart loses every breaker's state and counts: open breakers come back closed, "
    "and forced states are lifted."
)


def persistence_finding(
    save: Mapping[str, str] | None, persistence: Mapping[str, str] | None
) -> Finding:
    aof = persistence.get("aof_enabled") if persistence is not None else None
    if aof == "1":
        return Finding("persistence", "ok", "AOF is on")
    if save is None:
        if persistence is None:
            return Finding(
                "persistence",
                "warn",
                "unknown: CONFIG GET and INFO persistence are not allowed",
                f"Ask your provider whether data survives a restart. {_LOST}",
            )
        return Finding(
            "persistence",
            "warn",
            "AOF is off; RDB snapshots unknown (CONFIG GET not allowed, managed Redis?)",
            f"Without snapshots: {_LOST}",
        )
    rules = save.get("save", "").strip()
    if rules:
        return Finding(
            "persistence",
            "ok",
            f"RDB snapshots on (save {rules}), AOF off",
            "Changes after the last snapshot are lost on a crash: a breaker may come "
            "back in an older state.",
        )
    return Finding(
        "persistence",
        "warn",
        "off: neither RDB snapshots nor AOF",
        f"{_LOST} Turn on AOF (appendonly yes) or RDB (save 60 1) if that matters.",
    )


def eviction_finding(memory: Mapping[str, str] | None) -> Finding:
    if memory is None or "maxmemory_policy" not in memory:
        return Finding(
            "eviction",
            "warn",
            "unknown: INFO memory is not allowed",
            "Ask your provider for maxmemory-policy: under volatile-* or allkeys-* an "
            "evicted open breaker comes back closed.",
        )
    policy = memory["maxmemory_policy"]
    limit = memory.get("maxmemory", "0")
    if limit in ("", "0"):
        return Finding("eviction", "ok", f"no maxmemory: nothing is evicted (policy {policy})")
    where = f"maxmemory {limit} bytes, maxmemory-policy {policy}"
    if policy == "noeviction":
        return Finding(
            "eviction",
            "ok",
            f"{where}: nothing is evicted",
            "When memory is full, writes fail: breakers then follow on_store_error, as "
            "when Redis cannot be reached.",
        )
    if policy.startswith("volatile-"):
        return Finding(
            "eviction",
            "warn",
            f"{where}: keys with a TTL are evicted first, and every breaker key has one",
            "On a Redis shared with a cache, breakers are among the first keys evicted, and "
            "an evicted open breaker comes back closed. Build breakers with key_ttl=None "
            "(their keys then have no TTL, out of a volatile policy's reach), or use a Redis "
            "of its own with maxmemory-policy noeviction.",
        )
    return Finding(
        "eviction",
        "warn",
        f"{where}: any key may be evicted when memory is full",
        "An evicted open breaker comes back closed. Keep memory well below maxmemory, or "
        "use maxmemory-policy noeviction.",
    )


def keys_finding(
    prefix: str, keys: int, breakers: int, scan_error: str | None, *, servers: int = 1
) -> Finding:
    if scan_error is not None:
        return Finding("keys", "warn", f"unknown: SCAN refused: {scan_error}")
    key_s = "key" if keys == 1 else "keys"
    breaker_s = "breaker" if breakers == 1 else "breakers"
    where = "" if servers == 1 else f" on {servers} primaries"
    return Finding("keys", "ok", f"{keys} {key_s} under {prefix!r}{where}: {breakers} {breaker_s}")
