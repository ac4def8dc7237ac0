"""Breaker names, key prefixes and the Redis keys they map to.

Decision: names are not escaped but checked. A name is 1 to 200 characters of printable
text; unicode letters are fine, but braces, whitespace, control characters, and the glob
characters ``* ? [ ] \\`` are rejected with a :class:`ConfigError`. Without braces the name is
the whole Redis Cluster hash tag, so every key of one breaker lands in one slot, and
``<prefix>:{<name>}`` is unambiguous because the name ends at the only ``}``. Without glob
characters, ``SCAN MATCH <prefix>:{*}`` lists breakers without quoting. Names are meant to
be chosen by the developer (one per dependency), never built from request data.
"""

from __future__ import annotations

from ._exceptions import ConfigError

__all__ = ["MAX_NAME_LENGTH", "BreakerKeys", "breaker_keys", "check_name", "check_prefix"]

MAX_NAME_LENGTH = 200
_FORBIDDEN = frozenset("{}*?[]\\")


def _check_text(field: str, value: object, *, allow_colon_edge: bool = True) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, f"must be a str, got {type(value).__name__}")
    if not value:
        raise ConfigError(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ConfigError(field, f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    for char in value:
        if char in _FORBIDDEN or char.isspace() or not char.isprintable():
            raise ConfigError(
                field,
                f"{value[:40]!r} contains {char!r}; braces, whitespace, control and glob "
                "characters (* ? [ ] \\) are not allowed",
            )
    if not allow_colon_edge and (value.startswith(":") or value.endswith(":")):
        raise ConfigError(field, f"{value!r} must not start or end with ':'")
    return value


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid breaker name, else raise :class:`ConfigError`."""
    return _check_text("name", name)


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a valid key prefix, else raise :class:`ConfigError`."""
    return _check_text("prefix", prefix, allow_colon_edge=False)


class BreakerKeys:
    """The Redis names one breaker uses; all keys share the ``{name}`` hash tag.

    ``quorum``: the breaker opens by quorum (``min_reporters`` > 1), so every script it
    runs may touch the reporters set and is given its key (see :meth:`script_keys`).
    """

    __slots__ = ("_keys", "_keys_and_reporters", "channel", "name", "probes", "quorum",
                 "reporters", "state")  # fmt: skip

    def __init__(self, prefix: str, name: str, *, quorum: bool = False) -> None:
        self.name = name
        self.state = f"{prefix}:{{{name}}}"
        self.probes = f"{self.state}:probes"
        self.reporters = f"{self.state}:reporters"
        self.channel = f"{prefix}:events"
        self.quorum = quorum
        self._keys = (self.state, self.probes)
        self._keys_and_reporters = (self.state, self.probes, self.reporters)

    def script_keys(self, script: str) -> tuple[str, ...]:
        """The KEYS of one call of ``script``: every key it may touch, as Redis asks of a
        script. The reporters set only where it may be touched: by a quorum breaker's
        scripts, and by ``inspect``, which shows the reporters to any reader (the CLI
        included) whatever its own settings."""
        if self.quorum or script == "inspect":
            return self._keys_and_reporters
        return self._keys


def breaker_keys(prefix: str, name: str, *, quorum: bool = False) -> BreakerKeys:
    """The keys of breaker ``name`` under ``prefix`` (both already checked)."""
    return BreakerKeys(prefix, name, quorum=quorum)
