"""Script calls as the bytes Redis reads (RESP), for the drivers' direct path.

The same bytes redis-py's ``pack_command`` writes; what changes is that the head of a
call (``FCALL``, the function, the key count, the breaker's keys) is encoded once per
breaker and script, not on every call. Pure: no I/O, so both drivers share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CommandHead"]


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
