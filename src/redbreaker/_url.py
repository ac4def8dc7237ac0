"""Store URLs, parsed without touching a network or a client library.

The sync and the async ``connect()`` both read a target through :func:`parse_store_url`
and build their own kind of client from the result, so a URL means the same to both.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from ._exceptions import ConfigError

__all__ = ["SCHEMES", "Scheme", "StoreURL", "parse_store_url"]

Scheme = Literal["memory", "redis", "rediss", "unix", "redis+sentinel", "redis+cluster"]
SCHEMES: tuple[Scheme, ...] = (
    "memory", "redis", "rediss", "unix", "redis+sentinel", "redis+cluster",
)
_SCHEME_OF: dict[str, Scheme] = {s: s for s in SCHEMES}


@dataclass(frozen=True)
class StoreURL:
    """A store target, understood.

    Attributes:
        scheme: which kind of store.
        client_url: what redis-py's ``from_url`` reads (the scheme lowercased; a cluster's
            as ``redis://`` or ``rediss://``); empty for ``memory`` and ``redis+sentinel``.
        memory_name: the shared embedded Redis's name (``memory://<name>``); "" = private.
        sentinels: (host, port) of each Sentinel.
        service: the Sentinel service whose master holds the breakers.
        db: the database number behind a Sentinel service.
        username, password: a Sentinel URL's credentials (others stay in ``client_url``).
    """

    scheme: Scheme
    client_url: str = ""
    memory_name: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("target", f"{url!r}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def _sentinel(url: str, parts: urllib.parse.SplitResult) -> StoreURL:
    # redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_host_port(h, url) for h in hosts.split(",") if h)
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise ConfigError(
            "target", f"{url!r}: expected redis+sentinel://host:port[,host:port]/service[/db]"
        )
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise ConfigError("target", f"{url!r}: database {db!r} is not a number")
    return StoreURL(
        "redis+sentinel",
        sentinels=sentinels,
        service=path[0],
        db=int(db),
        username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None,
    )


def parse_store_url(target: str) -> StoreURL:
    """Understand ``target``, or raise :class:`ConfigError` naming what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(target)
    except ValueError as exc:
        raise ConfigError("target", f"{target!r} is not a URL: {exc}") from exc
    scheme = _SCHEME_OF.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(
            "target",
            f"{target!r}: unknown scheme {parts.scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES),
        )
    # redis-py reads only lowercase schemes; ours are case-insensitive like any URL's.
    normalized = scheme + target[len(parts.scheme) :]
    if scheme == "memory":
        return StoreURL("memory", memory_name=parts.netloc + parts.path)
    if scheme == "redis+sentinel":
        return _sentinel(normalized, parts)
    if scheme == "unix":
        if not parts.path:
            raise ConfigError("target", f"{target!r}: no socket path")
        return StoreURL("unix", client_url=normalized)
    if not parts.hostname:
        raise ConfigError("target", f"{target!r}: no host")
    try:
        parts.port  # noqa: B018 (urllib validates the port only when it is read)
    except ValueError as exc:
        raise ConfigError("target", f"{target!r}: {exc}") from exc
    if scheme == "redis+cluster":
        return StoreURL("redis+cluster", client_url="redis" + normalized[len("redis+cluster") :])
    return StoreURL(scheme, client_url=normalized)
