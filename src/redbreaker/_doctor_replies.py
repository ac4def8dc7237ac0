"""``doctor``'s conversation with a Redis, as data: what the examination asks (an
:class:`Ask`, a :class:`LibraryStep`), what it is sent back (an :class:`Answer`), and how a
reply reads (INFO and CONFIG in any redis-py shape, what a refusal names, which Lua line a
refused script stopped on). No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Answer",
    "Ask",
    "ErrorKind",
    "LibraryStep",
    "command_on_line",
    "config_pairs",
    "failing_line",
    "info_fields",
    "reply_text",
    "short_error",
    "version_tuple",
    "what_was_denied",
]

ErrorKind = Literal["unavailable", "credentials", "noperm", "unknown_command", "error"]


@dataclass(frozen=True)
class Ask:
    """Send ``argv`` as one command (``timed``: measure its round trip) through the
    store's client, or to the one Cluster primary ``node`` (``host:port``)."""

    argv: tuple[str, ...]
    timed: bool = False
    node: str | None = None


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


def reply_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def info_fields(answer: Answer) -> dict[str, str] | None:
    """INFO's fields, whether redis-py parsed them into a dict or left the text."""
    if answer.error is not None:
        return None
    if isinstance(answer.value, dict):
        return {reply_text(k): reply_text(v) for k, v in answer.value.items()}
    fields = {}
    for line in reply_text(answer.value).splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def config_pairs(answer: Answer) -> dict[str, str] | None:
    """CONFIG GET's pairs (a dict, or a flat list on some clients)."""
    if answer.error is not None:
        return None
    value = answer.value
    if isinstance(value, dict):
        return {reply_text(k): reply_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [reply_text(v) for v in value]
        return dict(zip(items[::2], items[1::2], strict=False))
    return None


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if found is None:
        return None
    return tuple(int(part or 0) for part in found.groups())


_NAMED = re.compile(r"'([^']+)' (command|key|channel)")


def what_was_denied(answer: Answer, command: str) -> str:
    """What a refusal names: ``"the 'publish' command"``, ``"the key 'x'"``..."""
    text = answer.error or reply_text(answer.value)
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


def short_error(error: str) -> str:
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
