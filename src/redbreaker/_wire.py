"""Script calls as the bytes Redis reads (RESP), for the drivers' direct path.

The same bytes redis-py's ``pack_command`` writes; what changes is that the head of a
call (``FCALL``, the function, the key count, the breaker's keys) is encoded once per
breaker and script, not on every call. Pure: no I/O, so both drivers share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["CommandHead", "ScriptPacker"]


class CommandHead:
    """The leading arguments of a command, encoded once; :meth:`pack` adds the rest.

    ``encoding`` and ``errors`` are the client's (``Redis(encoding=...)``), so that a key
    is the same bytes whether this packs it or redis-py does.
    """

    __slots__ = ("_count", "_encoded", "_errors", "encoding")

    def __init__(self, *leading: str, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.encoding = encoding
        self._errors = errors
        self._count = len(leading)
        self._encoded = b"".join(self._bulk(arg) for arg in leading)

    def _bulk(self, arg: str) -> bytes:
        data = arg.encode(self.encoding, self._errors)
        return b"$%d\r\n%b\r\n" % (len(data), data)

    def pack(self, args: Sequence[str]) -> bytes:
        """The whole command: this head, then ``args``.

        Raises:
            UnicodeEncodeError: an argument the client's encoding cannot write.
        """
        bulk = self._bulk
        return b"".join(
            (b"*%d\r\n" % (self._count + len(args)), self._encoded, *[bulk(arg) for arg in args])
        )


class ScriptPacker:
    """The script calls of one client, packed in its encoding (read from the pool's
    ``connection_kwargs``, as redis-py reads them): each breaker's FCALL head is encoded
    once and kept."""

    __slots__ = ("_encoding", "_errors", "_heads")

    def __init__(self, connection_kwargs: Mapping[str, object]) -> None:
        self._encoding = str(connection_kwargs.get("encoding", "utf-8"))
        self._errors = str(connection_kwargs.get("encoding_errors", "strict"))
        self._heads: dict[tuple[str, tuple[str, ...]], CommandHead] = {}

    def fcall(self, function: str, keys: tuple[str, ...], args: Sequence[str]) -> bytes:
        """``FCALL function len(keys) *keys *args``."""
        head = self._heads.get((function, keys))
        if head is None:
            head = self._heads[function, keys] = CommandHead(
                "FCALL", function, str(len(keys)), *keys,
                encoding=self._encoding, errors=self._errors,
            )  # fmt: skip
        return head.pack(args)

    def function_load(self, library: str) -> bytes:
        """``FUNCTION LOAD REPLACE library``."""
        head = CommandHead(
            "FUNCTION", "LOAD", "REPLACE", encoding=self._encoding, errors=self._errors
        )
        return head.pack([library])
