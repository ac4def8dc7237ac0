"""The cluster drivers' sans-I/O part (redbreaker._shards): slots, slot channels, and the
book of sharded subscriptions. No server: redis-py's own CRC16 is the reference."""

from __future__ import annotations

import pytest
from redis.crc import key_slot as redis_key_slot

from redbreaker._shards import SLOTS, ShardBook, SlotChannels, key_slot, scripts_spublish, slot_tags
from test_topologies import NAMES


@pytest.mark.parametrize(
    "key",
    ["plain", "p:{payments}", "p:{payments}:probes", "{}x", "a{}b{c}", "{a", "}{b}", "ünï{ç}"],
)
def test_key_slot_is_redis_clusters(key: str) -> None:
    assert key_slot(key) == redis_key_slot(key.encode())


def test_every_slot_has_a_short_tag_that_hashes_to_it() -> None:
    tags = slot_tags()
    assert len(tags) == SLOTS
    assert all(1 <= len(tag) <= 3 and tag.isalnum() for tag in tags)
    assert [redis_key_slot(tag.encode()) for tag in tags] == list(range(SLOTS))


def test_a_breakers_channel_lives_in_its_keys_slot() -> None:
    channels = SlotChannels("app")
    for name in NAMES:
        slot, channel = channels.of_breaker(name)
        assert slot == redis_key_slot(f"app:{{{name}}}".encode())
        assert redis_key_slot(channel.encode()) == slot
        assert channel == channels.of_slot(slot)
        assert channel.startswith("app:{")
        assert channel.endswith("}:events")
    assert len(channels.all()) == SLOTS


def test_the_book_plans_confirms_and_forgets_by_node() -> None:
    book = ShardBook()
    assert all(book.want(f"c{slot}", slot) for slot in (1, 2, 3))
    assert not book.want("c1", 1)
    assert not book.settled
    owner = {1: "n1", 2: "n1", 3: "n2"}.__getitem__
    assert book.pending(owner) == {"n1": ["c1", "c2"], "n2": ["c3"]}
    for node, channel in (("n1", "c1"), ("n1", "c2"), ("n2", "c3")):
        book.confirmed(node, channel)
    assert book.settled
    assert book.pending(owner) == {}
    assert book.nodes() == {"n1", "n2"}
    assert sorted(book.node_lost("n1")) == ["c1", "c2"]
    assert book.pending(owner) == {"n1": ["c1", "c2"]}
    book.confirmed("n1", "c1")
    book.dropped("c1")  # the server ended it: its slot moved
    assert book.pending(owner) == {"n1": ["c1", "c2"]}
    book.confirmed("n2", "unknown")  # never wanted: not counted
    book.unconfirmed()
    assert book.pending(owner) == {"n1": ["c1", "c2"], "n2": ["c3"]}


def test_the_scripts_say_whether_they_spublish() -> None:
    assert scripts_spublish("redis.call('SPUBLISH', CHANNEL, x)")
    assert not scripts_spublish("redis.call('PUBLISH', CHANNEL, x)")
