"""The Redis Streams consumer's decisions, for the sync and the async driver: settings,
which read to make next, what a reply holds, when a message is dead-lettered, key names.
No I/O here: the drivers send what this module decides and hand back what Redis replied.

The order of reads, every time the consumer reads (under a permit, or before taking one
while the breaker admits as far as the process knows: see :mod:`._streams_base`):

1. its own pending messages (``XREADGROUP ... 0``, then from the last one handled): the
   ones it failed, was refused a permit for, or read before a restart under the same
   name. A pass that met a failure starts again at ``0`` once it reaches the end, so
   failed messages are retried before anything new is read.
2. when ``min_idle`` has passed since the last sweep, ``XAUTOCLAIM`` of messages left
   pending that long by any consumer (one that died mid-message, say).
3. new messages (``XREADGROUP ... >``, blocking up to ``max_block``; not at all under a
   half-open breaker's probe permit, whose slot is not held while idle).

Failures are counted per message in a hash (``<stream>:<group>:failures``), not taken
from XPENDING's delivery counter, which also counts reads that were refused a permit and
reclaims. The count, the dead-lettering and the ack change in one Lua script, so a crash
can neither lose a message nor dead-letter it twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ._config import Seconds, count_setting, seconds_setting
from ._exceptions import ConfigError

__all__ = [
    "ACK_SCRIPT",
    "FAIL_SCRIPT",
    "FailureVerdict",
    "Read",
    "StreamConfig",
    "StreamCore",
    "StreamMessage",
    "StreamStats",
    "decode_entries",
    "is_busygroup",
    "is_nogroup",
]

MAX_BATCH = 10_000
_MAX_ERROR_TEXT = 500

# KEYS: stream, failure counts. ARGV: group, message id.
# Returns 1 when this ack took the message off the pending list, 0 when another consumer
# had acked it already (this handling was a duplicate).
ACK_SCRIPT = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return acked
"""

# KEYS: stream, failure counts, dead-letter stream.
# ARGV: group, message id, max failures ('' = never dead-letter), error type, error text,
#       consumer, then the message's fields and values.
# Returns {failures, dead_lettered}; {0, 0} when the message is no longer pending (acked
# or dead-lettered by another consumer meanwhile): nothing is counted for it then.
FAIL_SCRIPT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
    return {0, 0}
end
local failures = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if ARGV[3] == '' or failures < tonumber(ARGV[3]) then
    return {failures, 0}
end
local entry = {
    'redbreaker:id', ARGV[2], 'redbreaker:stream', KEYS[1], 'redbreaker:group', ARGV[1],
    'redbreaker:failures', tostring(failures), 'redbreaker:error', ARGV[4],
    'redbreaker:error_text', ARGV[5], 'redbreaker:consumer', ARGV[6],
}
for i = 7, #ARGV do
    entry[#entry + 1] = ARGV[i]
end
redis.call('XADD', KEYS[3], '*', unpack(entry))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return {failures, 1}
"""


def _text_setting(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a str, got {type(value).__name__}")
    if not value:
        raise ConfigError(name, "must not be empty")
    return value


@dataclass(frozen=True)
class StreamConfig:
    """How a stream consumer reads, retries and gives up. Validated when built.

    Attributes:
        stream: the stream's key.
        group: the consumer group (created at the start of ``run()`` if missing, with the
            stream, reading it from its first entry).
        consumer: this consumer's name in the group. A consumer restarted under the same
            name handles its own pending messages first; a new name leaves them to be
            reclaimed after ``min_idle``.
        dead_letter: the stream a message goes to after ``max_deliveries`` failed
            handler runs (default ``<stream>:dead``).
        max_deliveries: failed handler runs before the message is dead-lettered and
            acked; None retries forever. Runs refused a permit never count.
        min_idle: how long a message must sit unacked before any consumer of the group
            may take it over (XAUTOCLAIM), and how often each consumer sweeps for such
            messages. Make it longer than the slowest handler run: a message held longer
            may be handled twice.
        batch_size: messages per read (COUNT); each is handled under a permit of its own,
            taken once the message is in hand.
        max_block: the longest one wait lasts: an XREADGROUP blocking for new messages,
            or one stretch of waiting for the breaker to admit. It bounds how long an idle
            or waiting consumer takes to notice ``stop()``. An idle consumer of a breaker
            that admits sends one blocking read per ``max_block`` to the stream's Redis
            and nothing to the breakers' (it reads before taking a permit while its store's
            feed is live and says the breaker admits); one of a breaker known to reject
            waits for admission, reading nothing, sending nothing until the deadline.

    With Redis Cluster, ``stream`` and ``dead_letter`` must share a hash tag (e.g.
    ``{orders}`` and ``{orders}:dead``): the failure script touches both, and the
    failure counts' key ``<stream>:<group>:failures``.
    """

    stream: str
    group: str
    consumer: str
    dead_letter: str = ""
    max_deliveries: int | None = 5
    min_idle: Seconds = 60.0
    batch_size: int = 10
    max_block: Seconds = 1.0

    def __post_init__(self) -> None:
        _text_setting("stream", self.stream)
        _text_setting("group", self.group)
        _text_setting("consumer", self.consumer)
        if self.dead_letter == "":
            object.__setattr__(self, "dead_letter", f"{self.stream}:dead")
        if _text_setting("dead_letter", self.dead_letter) == self.stream:
            raise ConfigError("dead_letter", "must not be the stream itself")
        count_setting("max_deliveries", self.max_deliveries, optional=True)
        seconds_setting("min_idle", self.min_idle)
        count_setting("batch_size", self.batch_size)
        if self.batch_size > MAX_BATCH:
            raise ConfigError("batch_size", f"must be at most {MAX_BATCH}, got {self.batch_size}")
        seconds_setting("max_block", self.max_block)

    @property
    def min_idle_ms(self) -> int:
        value = seconds_setting("min_idle", self.min_idle)
        assert value is not None
        return max(1, round(value * 1000))

    @property
    def max_block_seconds(self) -> float:
        value = seconds_setting("max_block", self.max_block)
        assert value is not None
        return value


@dataclass(frozen=True)
class StreamMessage:
    """One entry of the stream, as the handler gets it.

    Attributes:
        id: the entry's id, e.g. ``"1718000000000-0"``.
        fields: its fields: names as ``str``; values as the client returns them (``bytes``,
            or ``str`` with ``decode_responses=True``).
        stream: the stream's key.
    """

    id: str
    fields: dict[str, Any]
    stream: str
    pairs: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    """Names and values as Redis sent them (what a dead-letter entry copies)."""

    @property
    def deleted(self) -> bool:
        """Still pending, but deleted from the stream (XDEL, XTRIM): nothing to handle."""
        return not self.pairs


@dataclass(frozen=True)
class StreamStats:
    """What one consumer did since it was built.

    Attributes:
        handled: handler runs that succeeded (each acked).
        failed: handler runs that raised (the message stayed pending, or was
            dead-lettered).
        deferred: messages read but not handled because the breaker refused a permit
            (or the handler raised CircuitOpenError); left pending, never counted as a
            delivery.
        dead_lettered: messages this consumer moved to the dead-letter stream.
        reclaimed: messages taken over from consumers that left them idle (XAUTOCLAIM).
    """

    handled: int = 0
    failed: int = 0
    deferred: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0


class Read(NamedTuple):
    """The next read: ``pending`` (own pending from ``start``), ``claim`` (XAUTOCLAIM from
    ``start``) or ``new`` (``>``, blocking ``block_ms``; None: not at all)."""

    kind: Literal["pending", "claim", "new"]
    start: str
    batch: int
    block_ms: int | None


class FailureVerdict(NamedTuple):
    """What the failure script decided: the message's failed runs so far (0: it was no
    longer pending) and whether it was dead-lettered (and acked)."""

    failures: int
    dead_lettered: bool


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _pairs(raw: object) -> tuple[Any, ...]:
    """An entry's fields as a flat (name, value, ...) tuple: redis-py parses them into a
    dict; a raw reply is a flat list; a deleted entry is None or empty."""
    if not raw:
        return ()
    if isinstance(raw, dict):
        return tuple(item for pair in raw.items() for item in pair)
    if isinstance(raw, (list, tuple)):
        return tuple(raw)
    raise TypeError(f"unexpected stream entry fields: {raw!r}")


def decode_entries(raw: object, stream: str) -> list[StreamMessage]:
    """The messages of one stream's entries: ``[(id, fields), ...]`` as redis-py parses
    them, with RESP3's extra level of nesting unwrapped."""
    if not raw:
        return []
    if not isinstance(raw, (list, tuple)):
        raise TypeError(f"unexpected stream entries: {raw!r}")
    first = raw[0]
    if isinstance(first, list) and (not first or not isinstance(first[0], (bytes, str))):
        raw = first  # RESP3: {stream: [[entries]]}
    messages = []
    for entry in raw:
        pairs = _pairs(entry[1])
        names = pairs[0::2]
        fields = {_text(name): value for name, value in zip(names, pairs[1::2], strict=True)}
        messages.append(StreamMessage(_text(entry[0]), fields, stream, pairs))
    return messages


def _read_reply(raw: object, stream: str) -> list[StreamMessage]:
    """XREADGROUP's reply: RESP2 ``[[stream, entries]]``, RESP3 ``{stream: entries}``."""
    if not raw:
        return []
    if isinstance(raw, dict):
        return [m for entries in raw.values() for m in decode_entries(entries, stream)]
    if isinstance(raw, (list, tuple)):
        return [m for item in raw for m in decode_entries(item[1], stream)]
    raise TypeError(f"unexpected XREADGROUP reply: {raw!r}")


class StreamCore:
    """One consumer's read plan, counts and script arguments (no I/O)."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        # Failure counts share the stream's hash tag, if it has one (Redis Cluster).
        self._failures = f"{config.stream}:{config.group}:failures"
        self._counts = dict.fromkeys(StreamStats.__dataclass_fields__, 0)
        # Own pending first: a consumer restarted under its name resumes its messages.
        self._pending_from: str | None = "0"
        self._rescan = False  # a failure in this pass: read own pending again from 0
        self._claim_from = "0-0"
        self._next_claim_at = -math.inf

    @property
    def stats(self) -> StreamStats:
        return StreamStats(**self._counts)

    def restart(self) -> None:
        """Read from the start again (the group was recreated, the connection came back)."""
        self._pending_from = "0"
        self._rescan = False
        self._claim_from = "0-0"
        self._next_claim_at = -math.inf

    # -- reading ---------------------------------------------------------------------------

    def next_read(self, now: float, *, block: bool = True) -> Read:
        """What to read now (``now``: a monotonic reading in seconds). Not ``block``: a
        read for new messages returns at once (a probe's slot is not held while idle)."""
        count = self.config.batch_size
        if self._pending_from is not None:
            return Read("pending", self._pending_from, count, None)
        if now >= self._next_claim_at:
            return Read("claim", self._claim_from, count, None)
        wait = max(1, round(self.config.max_block_seconds * 1000)) if block else None
        return Read("new", ">", count, wait)

    def on_read(self, read: Read, raw: object, now: float) -> list[StreamMessage]:
        """The messages ``read`` got; moves the plan on."""
        stream = self.config.stream
        if read.kind == "claim":
            # [next start, entries, deleted ids (Redis >= 7)]
            assert isinstance(raw, (list, tuple))
            messages = decode_entries(raw[1], stream)
            cursor = _text(raw[0])
            if cursor in ("0-0", "0"):
                self._claim_from = "0-0"
                # Sweeping twice per min_idle bounds a dead consumer's message's wait.
                self._next_claim_at = now + self.config.min_idle_ms / 2000
            else:
                self._claim_from = cursor
            self._counts["reclaimed"] += len(messages)
            return messages
        messages = _read_reply(raw, stream)
        if read.kind == "pending" and not messages:
            if self._rescan:
                self._rescan = False
                self._pending_from = "0"
            else:
                self._pending_from = None
        return messages

    # -- outcomes --------------------------------------------------------------------------

    def _processed(self, read: Read, message: StreamMessage, *, failed: bool) -> None:
        if read.kind == "pending":
            self._pending_from = message.id
            self._rescan = self._rescan or failed
        elif failed:
            self._pending_from = "0"

    def on_success(self, read: Read, message: StreamMessage) -> None:
        self._counts["handled"] += 1
        self._processed(read, message, failed=False)

    def on_skipped(self, read: Read, message: StreamMessage) -> None:
        """A deleted entry acked without a handler run."""
        self._processed(read, message, failed=False)

    def on_failure(self, read: Read, message: StreamMessage, verdict: FailureVerdict) -> None:
        self._counts["failed"] += 1
        if verdict.dead_lettered:
            self._counts["dead_lettered"] += 1
        self._processed(read, message, failed=not verdict.dead_lettered)

    def on_deferred(self, read: Read, left: int) -> None:
        """``left`` messages of the batch were refused a permit (or the handler raised
        CircuitOpenError): they stay pending and are read again first."""
        self._counts["deferred"] += left
        self.on_put_back(read)

    def on_put_back(self, read: Read) -> None:
        """Messages of ``read`` were left unhandled: read own pending first next time (a
        pending pass resumes after the last message it processed, so it meets them)."""
        if read.kind != "pending":
            self._pending_from = self._pending_from or "0"

    # -- script arguments ------------------------------------------------------------------

    def ack_keys(self) -> list[str]:
        return [self.config.stream, self._failures]

    def ack_args(self, message: StreamMessage) -> list[str]:
        return [self.config.group, message.id]

    def fail_keys(self) -> list[str]:
        return [self.config.stream, self._failures, self.config.dead_letter]

    def fail_args(self, message: StreamMessage, exc: BaseException) -> list[Any]:
        kind = type(exc)
        error = f"{kind.__module__}.{kind.__qualname__}"
        max_deliveries = self.config.max_deliveries
        return [
            self.config.group,
            message.id,
            "" if max_deliveries is None else str(max_deliveries),
            error,
            str(exc)[:_MAX_ERROR_TEXT],
            self.config.consumer,
            *message.pairs,
        ]

    def on_fail_reply(self, raw: object) -> FailureVerdict:
        assert isinstance(raw, (list, tuple))
        return FailureVerdict(int(raw[0]), bool(int(raw[1])))

    def put_back_ids(self, messages: list[StreamMessage]) -> list[Any]:
        """The messages to hand back when stopping: the driver claims them for this
        consumer again with their idle time set to ``min_idle`` (XCLAIM ... IDLE, JUSTID:
        no delivery counted), so the next sweep of any other consumer takes them at once."""
        return [m.id for m in messages]

def is_busygroup(exc: BaseException) -> bool:
    """The group existed already (XGROUP CREATE's BUSYGROUP error)."""
    return str(exc).startswith("BUSYGROUP")


def is_nogroup(exc: BaseException) -> bool:
    """The group (or the stream) is gone: deleted while the consumer ran."""
    text = str(exc)
    return text.startswith("NOGROUP") or "requires the key to exist" in text

