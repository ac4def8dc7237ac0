"""A Redis Cluster's shards, as the cluster drivers need them: no I/O here.

On a cluster, transitions go out on sharded pub/sub, one channel per hash slot:
``<prefix>:{<tag>}:events``, where ``<tag>`` is a short text that hashes to the slot
(:func:`slot_tags`). A breaker's transitions go out on the channel of its own slot (the
slot of its name, its keys' hash tag), so the scripts ``SPUBLISH`` it on the primary that
ran them and no other node hears of it. Per slot rather than per breaker, so that a
watcher of every breaker (``Store.transitions()``) subscribes a fixed set of channels,
breakers not created yet included, and a cached store one channel per slot it uses.

:class:`ShardBook` keeps which channels a subscriber wants, which are confirmed on which
node, and what to subscribe next; the drivers (:mod:`redbreaker._cluster`,
:mod:`redbreaker.aio._cluster` and their feeds) send and read.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "SLOTS",
    "TRYAGAIN_PAUSES",
    "ShardBook",
    "SlotChannels",
    "key_slot",
    "scripts_spublish",
    "slot_tags",
]

SLOTS = 16384
"""Hash slots of a Redis Cluster."""

TRYAGAIN_PAUSES = (0.02, 0.05)
"""Seconds before each new try of a call answered TRYAGAIN: while a slot migrates, a node
that holds one of a breaker's two keys but not the other refuses it until the other key
arrives (a breaker without probe leases has no probes key, so this is the usual case).
Short, since a caller waits them; after the last the call fails like an unreachable
store, and the breaker's on_store_error policy applies."""


def scripts_spublish(library: str) -> bool:
    """Whether the scripts SPUBLISH a channel that carries a hash tag (the Lua of this
    release says so by calling it); until they do, a cluster keeps the prefix's channel."""
    return "SPUBLISH" in library


def key_slot(key: str) -> int:
    """The hash slot of ``key``: CRC16 of its hash tag (the text between the first ``{``
    and the next ``}``, when not empty) or of the whole key, modulo 16384."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """A hash tag per slot: the first text of 1 to 3 letters or digits that hashes to it
    (every slot has one; computed once, in about 60 ms)."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    alphabet = string.ascii_letters + string.digits
    for size in (1, 2, 3):
        for letters in itertools.product(alphabet, repeat=size):
            tag = "".join(letters)
            slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
                if missing == 0:
                    return tuple(t for t in tags if t is not None)
    raise AssertionError(f"{missing} slots have no tag of 3 characters")  # never: checked


class SlotChannels:
    """The sharded channel of each slot, and of each breaker, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._by_name: dict[str, tuple[int, str]] = {}

    def of_slot(self, slot: int) -> str:
        """``<prefix>:{<tag>}:events``: the channel that lives in ``slot``."""
        return f"{self._prefix}:{{{slot_tags()[slot]}}}:events"

    def of_breaker(self, name: str) -> tuple[int, str]:
        """(slot, channel) of breaker ``name``: the slot of its keys (whose hash tag is
        the name), remembered after the first call."""
        known = self._by_name.get(name)
        if known is None:
            slot = key_slot(f"{{{name}}}")
            known = self._by_name[name] = (slot, self.of_slot(slot))
        return known

    def all(self) -> dict[str, int]:
        """Every slot's channel, with its slot: what a watcher of every breaker hears."""
        return {self.of_slot(slot): slot for slot in range(SLOTS)}


class ShardBook:
    """The sharded channels one process hears, and where.

    A channel is *wanted* once a breaker of this process used it, and *confirmed* on a
    node once that node acknowledged the SSUBSCRIBE; until then its transitions may be
    missed. The book never forgets a wanted channel; a lost node or a slot that moved away
    only makes its channels pending again.
    """

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}  # wanted channel -> its slot
        self._confirmed: dict[str, str] = {}  # channel -> node name it is subscribed on

    def want(self, channel: str, slot: int) -> bool:
        """Note a channel to hear; True when it is new (the subscriber has work)."""
        if channel in self._slots:
            return False
        self._slots[channel] = slot
        return True

    def wanted(self, channel: str) -> bool:
        """Whether ``channel`` was asked for already (no I/O, one dict lookup)."""
        return channel in self._slots

    @property
    def settled(self) -> bool:
        """Every wanted channel is confirmed: nothing published on them is missed."""
        return len(self._confirmed) == len(self._slots)

    def pending(self, owner: Callable[[int], str]) -> dict[str, list[str]]:
        """The wanted channels not confirmed yet, by the name of the node ``owner`` says
        serves their slot (the primary, from the client's slot table)."""
        plan: dict[str, list[str]] = {}
        for channel, slot in self._slots.items():
            if channel not in self._confirmed:
                plan.setdefault(owner(slot), []).append(channel)
        return plan

    def confirmed(self, node: str, channel: str) -> None:
        """``node`` acknowledged the SSUBSCRIBE of ``channel``."""
        if channel in self._slots:
            self._confirmed[channel] = node

    def dropped(self, channel: str) -> None:
        """The server ended a subscription we never ended (its slot moved to another
        shard): the channel is pending again."""
        self._confirmed.pop(channel, None)

    def node_lost(self, node: str) -> list[str]:
        """The connection to ``node`` is gone: its channels are pending again (returned)."""
        lost = [channel for channel, on in self._confirmed.items() if on == node]
        for channel in lost:
            del self._confirmed[channel]
        return lost

    def unconfirmed(self) -> None:
        """Every subscription is gone (a fork, a new event loop): all channels pending."""
        self._confirmed.clear()

    def nodes(self) -> set[str]:
        """The nodes that hold at least one confirmed subscription."""
        return set(self._confirmed.values())
