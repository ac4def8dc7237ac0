"""Quorum opening (issue 14, ``min_reporters``): the fleet's breaker trips only once that
many distinct processes reported failures in the window; meanwhile each failing process is
protected by a breaker of its own. On both drivers, on the embedded store (and a real
redis-server where the Lua's keys are looked at).

Other processes are simulated by stores of their own on one ``memory://<name>`` server
(each store has its own in-process store for its own breakers), each acting under an
identity of its own: :func:`as_reporter` sets what ``process_identity()`` answers.
Processes proper (fork, spawn) are in ``test_quorum_processes.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

import redbreaker
from drivers import unwrap
from redbreaker import (
    Breaker,
    BreakerConfig,
    CircuitOpenError,
    ConfigError,
    ManualClock,
    State,
    StoreError,
    Transition,
    _policies,
)
from redbreaker._keys import BreakerKeys
from redbreaker._scripts import lua_dir

if TYPE_CHECKING:
    from collections.abc import Iterator

    from drivers import AnyBreaker, Driver

PREFIX = "q"
WINDOW_S = 10.0
QUORUM: dict[str, Any] = {
    "min_reporters": 3,
    "failure_threshold": 3,
    "recovery_timeout": 5,
    "window": WINDOW_S,
}


@contextlib.contextmanager
def as_reporter(identity: str) -> Iterator[None]:
    """Run the block as another process: ``process_identity()`` answers ``identity``."""
    saved = dict(_policies._identity)
    _policies._identity.clear()
    _policies._identity[os.getpid()] = identity
    try:
        yield
    finally:
        _policies._identity.clear()
        _policies._identity.update(saved)


def fail(breaker: AnyBreaker) -> None:
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(down)


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


class Fleet:
    """Simulated processes of one breaker: a store each on one embedded server."""

    def __init__(self, driver: Driver, clock: ManualClock, **settings: Any) -> None:
        self.url = f"memory://quorum-{uuid.uuid4().hex}"
        self.driver = driver
        self.clock = clock
        self.settings = settings
        self.first = driver.connect(self.url, clock=clock, prefix=PREFIX)
        self.breakers: dict[str, AnyBreaker] = {}
        self.stores: dict[str, Any] = {}
        # A plain client of the same server, to look at the keys.
        self.raw = redbreaker.connect(self.url, prefix=PREFIX).client

    def process(self, identity: str) -> AnyBreaker:
        if identity not in self.breakers:
            store = (
                self.first
                if not self.breakers
                else self.driver.reconnect(self.first, clock=self.clock, prefix=PREFIX)
            )
            self.stores[identity] = store
            self.breakers[identity] = self.driver.breaker("dep", store=store, **self.settings)
        return self.breakers[identity]

    def fail(self, identity: str) -> None:
        with as_reporter(identity):
            fail(self.process(identity))

    def reporters(self) -> list[str]:
        return [m.decode() for m in self.raw.zrange(f"{PREFIX}:{{dep}}:reporters", 0, -1)]


@pytest.fixture
def fleet(driver: Driver, clock: ManualClock) -> Fleet:
    return Fleet(driver, clock, **QUORUM)


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1001, 2.0, True, "3", None])
def test_an_invalid_min_reporters_is_named(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        BreakerConfig(min_reporters=value)  # type: ignore[arg-type]
    assert info.value.field == "min_reporters"
    assert isinstance(info.value, ValueError)


def test_min_reporters_edges_and_script_config(driver: Driver, clock: ManualClock) -> None:
    assert BreakerConfig(min_reporters=1).script_config == ""
    assert BreakerConfig(min_reporters=1000).script_config == "min_reporters=1000"
    store = driver.connect("memory://", clock=clock)
    with pytest.raises(ConfigError) as info:
        driver.breaker("bad", store=store, min_reporters=0)
    assert info.value.field == "min_reporters"


# -- one process failing alone ------------------------------------------------------------


def test_a_process_failing_alone_is_stopped_by_its_own_breaker(fleet: Fleet) -> None:
    breaker = fleet.process("a")
    fresh = breaker.snapshot()
    assert (fresh.process_state, fresh.reporters) == (State.CLOSED, 0)
    for _ in range(3):
        fleet.fail("a")
    ran: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: ran.append(1))
    assert ran == []
    assert (info.value.scope, info.value.state, info.value.retry_after) == ("process", "open", 5.0)
    assert "in this process" in str(info.value)
    snap = breaker.snapshot()
    assert snap.state is State.CLOSED
    assert snap.process_state is State.OPEN
    assert snap.reporters == 1
    assert (snap.consecutive_failures, snap.window_failures) == (3, 3)
    assert fleet.reporters() == ["a"]


def test_a_consumer_waiting_for_admission_waits_for_its_own_breaker(fleet: Fleet) -> None:
    """wait_admitting (a queue consumer pausing its fetching) sees the process's own
    breaker: a sick worker stops taking messages while the fleet's breaker stays closed."""
    breaker = fleet.process("a")
    assert breaker.wait_admitting(max_wait=0) is True
    for _ in range(3):
        fleet.fail("a")
    assert breaker.wait_admitting(max_wait=0) is False
    assert breaker.snapshot().state is State.CLOSED
    assert fleet.process("b").wait_admitting(max_wait=0) is True  # another worker goes on


def test_without_a_quorum_there_is_no_process_state(driver: Driver, clock: ManualClock) -> None:
    store = driver.connect("memory://", clock=clock)
    breaker = driver.breaker("dep", store=store, failure_threshold=3)
    fail(breaker)
    snap = breaker.snapshot()
    assert (snap.process_state, snap.reporters) == (None, 0)


# -- a fleet --------------------------------------------------------------------------------


def test_the_fleet_trips_once_min_reporters_distinct_processes_failed(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    fleet.fail("a")
    fleet.fail("a")
    fleet.fail("b")  # the streak (3) meets the rule; 2 reporters of 3
    b = fleet.process("b")
    snap = b.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.reporters) == (State.CLOSED, 3, 2)
    assert snap.reporter_ids == ("b", "a")  # who failed, newest first
    # b's own breaker counts b's single failure alone: it still admits b's calls.
    assert snap.process_state is State.CLOSED
    [short] = events(caplog, "quorum_not_met")
    assert (short.levelno, short.reporters, short.min_reporters) == (logging.WARNING, 2, 3)
    fleet.fail("b")
    fleet.fail("a")  # a's own breaker opens (its third); a is still one reporter
    assert fleet.process("a").snapshot().process_state is State.OPEN
    assert sorted(fleet.reporters()) == ["a", "b"]
    assert fleet.process("a").snapshot().state is State.CLOSED
    assert len(events(caplog, "quorum_not_met")) == 2  # once per breaker object: b's, a's
    fleet.fail("c")
    c = fleet.process("c")
    snap = c.snapshot()
    assert (snap.state, snap.last_reason) == (State.OPEN, "consecutive_failures")
    assert snap.process_state is State.CLOSED
    for identity in ("b", "c"):
        with pytest.raises(CircuitOpenError) as info:
            fleet.process(identity).call(lambda: None)
        assert info.value.scope == "fleet"


def test_the_worst_leak_is_a_threshold_per_missing_reporter(fleet: Fleet) -> None:
    """The bound docs/policies.md states for a fleet whose processes fail one after
    another: each of the first min_reporters - 1 fails until its own breaker stops it, and
    the next one's first failure trips the fleet: (3 - 1) x 3 + 1 = 7 dependency calls."""
    calls: list[str] = []
    scopes: dict[str, str] = {}
    for identity in ("a", "b", "c", "d"):
        with as_reporter(identity):
            breaker = fleet.process(identity)
            while identity not in scopes:

                def down(who: str = identity) -> None:
                    calls.append(who)
                    raise ConnectionError("down")

                try:
                    breaker.call(down)
                except CircuitOpenError as rejected:
                    scopes[identity] = rejected.scope
                except ConnectionError:
                    pass
    bound = (QUORUM["min_reporters"] - 1) * QUORUM["failure_threshold"] + 1
    assert len(calls) == bound == 7
    assert calls == ["a"] * 3 + ["b"] * 3 + ["c"]
    assert scopes == {"a": "process", "b": "process", "c": "fleet", "d": "fleet"}
    assert fleet.process("d").snapshot().state is State.OPEN


def test_the_reporters_set_holds_at_most_min_reporters_within_the_window(
    driver: Driver, clock: ManualClock
) -> None:
    fleet = Fleet(driver, clock, **{**QUORUM, "failure_threshold": 1000})
    for identity in "abcde":
        fleet.fail(identity)
        clock.advance(0.1)
        assert len(fleet.reporters()) <= 3
    assert fleet.reporters() == ["c", "d", "e"]  # the newest, by their last failure
    ttl_ms = fleet.raw.pttl(f"{PREFIX}:{{dep}}:reporters")
    assert 0 < ttl_ms <= WINDOW_S * 1000
    assert fleet.process("a").snapshot().reporters == 3
    clock.advance(WINDOW_S + 1)
    assert fleet.process("a").snapshot().reporters == 0
    fleet.fail("f")
    assert fleet.reporters() == ["f"]  # the others left with the window


def test_a_hand_written_reporters_key_is_dropped_not_fatal(fleet: Fleet) -> None:
    """Something else written at the reporters key (by hand) does not stop failures from
    being recorded: the key is dropped, the repair noted, and the quorum counts afresh."""
    key = f"{PREFIX}:{{dep}}:reporters"
    fleet.fail("a")
    fleet.raw.delete(key)
    fleet.raw.set(key, "not a sorted set")
    fleet.fail("b")
    assert fleet.reporters() == ["b"]
    assert fleet.raw.hget(f"{PREFIX}:{{dep}}", "last_repair") == (
        b"dropped a non-zset at the reporters key"
    )
    assert fleet.process("b").snapshot().consecutive_failures == 2


@pytest.mark.parametrize("how", ["reset", "force_open", "metrics_only"])
def test_a_fleet_transition_deletes_the_reporters(fleet: Fleet, how: str) -> None:
    fleet.fail("a")
    fleet.fail("b")
    assert sorted(fleet.reporters()) == ["a", "b"]
    breaker = fleet.process("a")
    before = breaker.snapshot().generation
    getattr(breaker, how)()
    assert breaker.snapshot().generation > before
    assert fleet.raw.exists(f"{PREFIX}:{{dep}}:reporters") == 0
    assert breaker.snapshot().reporters == 0


def test_a_trip_deletes_the_reporters(fleet: Fleet) -> None:
    for identity in "abc":
        fleet.fail(identity)
    assert fleet.process("c").state is State.OPEN
    assert fleet.raw.exists(f"{PREFIX}:{{dep}}:reporters") == 0


def test_reporters_on_a_real_server(driver: Driver, redis_url: str, clock: ManualClock) -> None:
    """The same Lua on redis-server: the set's members, bound and TTL; the trip clears it."""
    url_store = driver.connect(redis_url, clock=clock, prefix=PREFIX)
    raw = redis.Redis.from_url(redis_url)
    key = f"{PREFIX}:{{dep}}:reporters"
    breakers: dict[str, AnyBreaker] = {}
    for identity in "abcd":
        store = (
            url_store if not breakers else driver.reconnect(url_store, clock=clock, prefix=PREFIX)
        )
        breakers[identity] = driver.breaker(
            "dep", store=store, **{**QUORUM, "failure_threshold": 1000}
        )
        with as_reporter(identity):
            fail(breakers[identity])
        clock.advance(0.1)
    assert [m.decode() for m in raw.zrange(key, 0, -1)] == ["b", "c", "d"]
    assert 0 < raw.pttl(key) <= WINDOW_S * 1000
    assert breakers["a"].snapshot().reporters == 3
    breakers["a"].force_open()
    assert raw.exists(key) == 0
    raw.close()


# -- the record script's contract ---------------------------------------------------------


@pytest.mark.sync_only("sends the record script's arguments itself")
def test_a_failure_without_the_reporter_is_refused(store: redbreaker.Store) -> None:
    breaker = Breaker("dep", store=store, **QUORUM)
    permit = breaker.acquire()
    args = breaker._core.record_args(permit._state, "failure")
    assert args is not None
    assert args[-1] == _policies.process_identity()
    for bad in (args[:-1], [*args[:-1], ""], [*args[:-1], "x" * 257]):
        with pytest.raises(StoreError, match=r"min_reporters > 1 needs the reporter \(ARGV\[14\]"):
            store.run("record", breaker._keys, bad)
    assert breaker.snapshot().window_failures == 0  # nothing was counted
    store.run("record", breaker._keys, args)
    assert breaker.snapshot().window_failures == 1
    permit.release()


@pytest.mark.sync_only("sends the scripts' keys itself")
def test_the_reporters_key_is_one_of_the_scripts_keys(store: redbreaker.Store) -> None:
    """Every key a script touches is one of its KEYS (as Redis asks of scripts, and as a
    store that refuses undeclared keys needs): a quorum breaker gives the reporters key to
    every script, a plain breaker to inspect alone; a quorum call without it is refused."""
    quorum = Breaker("dep", store=store, **QUORUM)
    plain = Breaker("dep", store=store)
    state = f"{store.prefix}:{{dep}}"
    three = (state, f"{state}:probes", f"{state}:reporters")
    assert [quorum._keys.script_keys(s) for s in ("acquire", "record", "control")] == [three] * 3
    assert plain._keys.script_keys("acquire") == three[:2]
    assert plain._keys.script_keys("inspect") == three
    permit = quorum.acquire()
    args = quorum._core.record_args(permit._state, "failure")
    assert args is not None
    with pytest.raises(StoreError, match=r"min_reporters > 1 needs KEYS\[3\]"):
        store.run("record", plain._keys, args)  # the plain breaker's two keys
    wrong = BreakerKeys(store.prefix, "dep", quorum=True)
    wrong._keys_and_reporters = (state, f"{state}:probes", f"{state}:elsewhere")
    with pytest.raises(StoreError, match=r"KEYS\[3\] must be the reporters key"):
        store.run("record", wrong, args)
    assert quorum.snapshot().window_failures == 0  # nothing was counted
    store.run("record", quorum._keys, args)
    assert quorum.snapshot().window_failures == 1


def test_no_script_names_a_key_it_was_not_given() -> None:
    """The Lua builds no key name of its own: the one ':reporters' in it checks KEYS[3]."""
    lua = lua_dir()
    sources = {p.name: p.read_text() for p in lua.iterdir() if p.name.endswith(".lua")}
    assert len(sources) == 5, sorted(sources)
    built = [
        (name, line.strip())
        for name, text in sources.items()
        for line in text.splitlines()
        if "':" in line and not line.lstrip().startswith("--")
    ]
    assert built == [
        ("_common.lua", "if REPORTERS ~= nil and REPORTERS ~= KEY .. ':reporters' then"),
        (
            "_common.lua",
            "return 'redbreaker: KEYS[3] must be the reporters key ' .. KEY .. ':reporters'",
        ),
    ]


# -- what the own breaker says, and to whom ----------------------------------------------


class Observer:
    def __init__(self) -> None:
        self.transitions: list[Transition] = []

    def on_call(self, record: redbreaker.CallRecord) -> None:
        pass

    def on_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)


def test_own_transitions_are_logged_as_the_process_s_and_kept_from_hooks(
    driver: Driver, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redbreaker")
    observer = Observer()
    store = driver.connect("memory://", clock=clock, observers=[observer])
    hooked: list[Transition] = []
    breaker = driver.breaker("dep", store=store, on_transition=[hooked.append], **QUORUM)
    breaker.call(lambda: "created")  # the fleet's breaker is made: its hook fires
    # The own breaker (cached) caches a rejection its feed hears from when it hears it:
    # on a ManualClock the event must be heard before time moves.
    own_store = unwrap(store).process_store()
    driver.wait_for(lambda: own_store.feed_live, "the own store's feed subscribed")
    hooked.clear()
    observer.transitions.clear()
    caplog.clear()
    for _ in range(3):
        fail(breaker)
    [opened] = events(caplog, "transition")
    assert (opened.scope, opened.from_state, opened.to_state) == ("process", "closed", "open")
    assert "this process's own breaker" in opened.getMessage()
    assert [(t.scope, t.current) for t in observer.transitions] == [("process", State.OPEN)]
    driver.wait_for(
        lambda: (own_store.view.last_event("dep") or (0, ""))[1] == "open",
        "the own store's feed heard the trip",
    )
    clock.advance(5)
    assert breaker.call(lambda: "ok") == "ok"  # the own breaker's probe: it closes again
    snap = breaker.snapshot()
    assert (snap.process_state, snap.state) == (State.CLOSED, State.CLOSED)
    assert [(t.scope, t.current) for t in observer.transitions] == [
        ("process", State.OPEN),
        ("process", State.HALF_OPEN),
        ("process", State.CLOSED),
    ]
    assert {r.scope for r in events(caplog, "transition")} == {"process"}
    assert hooked == []
    breaker.force_open()  # a fleet transition reaches the hook, as ever
    assert [(t.scope, t.current) for t in hooked] == [("fleet", State.FORCED_OPEN)]


def test_the_own_breaker_counts_only_this_process_s_outcomes(fleet: Fleet) -> None:
    for identity in "ab":
        fleet.fail(identity)
    a = fleet.process("a")
    assert a.snapshot().consecutive_failures == 2  # the fleet's streak
    own = unwrap(a)._own_breaker()
    own_snap = own.snapshot() if not fleet.driver.is_aio else fleet.driver.run(own.snapshot())
    assert (own_snap.consecutive_failures, own_snap.window_calls) == (1, 1)
    assert own_snap.name == "dep"
    a.call(lambda: "ok")
    own_snap = own.snapshot() if not fleet.driver.is_aio else fleet.driver.run(own.snapshot())
    assert (own_snap.consecutive_failures, own_snap.state) == (0, State.CLOSED)


def test_a_store_without_observers_makes_the_own_breaker_just_the_same(
    driver: Driver, clock: ManualClock
) -> None:
    store = driver.connect("memory://", clock=clock)
    breaker = driver.breaker("dep", store=store, **QUORUM)
    for _ in range(3):
        fail(breaker)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)
    assert info.value.scope == "process"


def test_reset_closes_this_process_s_own_breaker_too(fleet: Fleet) -> None:
    for _ in range(3):
        fleet.fail("a")
    a = fleet.process("a")
    assert a.snapshot().process_state is State.OPEN
    a.reset()
    assert a.snapshot().process_state is State.CLOSED
    assert a.call(lambda: "ok") == "ok"


def test_a_reset_heard_on_the_feed_resets_the_own_breaker(fleet: Fleet) -> None:
    """An operator's reset ordered in another process reaches this process's own breaker
    when this process hears the feed: its next call is admitted, long before the own
    breaker's recovery_timeout. Only a reset does: another transition heard does not."""
    for _ in range(3):
        fleet.fail("a")
    a = fleet.process("a")
    a_store = fleet.stores["a"]
    a_store.start_feed()
    fleet.driver.wait_for(lambda: a_store.feed_live, "a's feed subscribed")
    with pytest.raises(CircuitOpenError) as rejected:
        a.call(lambda: "ok")
    assert rejected.value.scope == "process"

    heard = a_store.view.heard("dep")
    other = fleet.process("b")
    other.force_open()
    other.force_close()  # transitions heard, no reset: a's own breaker stays open
    fleet.driver.wait_for(lambda: a_store.view.heard("dep") >= heard + 2, "the orders heard")
    assert a.snapshot().process_state is State.OPEN
    with pytest.raises(CircuitOpenError):
        a.call(lambda: "ok")
    assert a.wait_admitting(max_wait=0) is False

    other.reset()
    fleet.driver.wait_for(lambda: a_store.view.resets_heard("dep") == 1, "the reset heard")
    assert a.wait_admitting(max_wait=0) is True  # a consumer waiting takes it too
    assert a.call(lambda: "ok") == "ok"  # the clock never moved: no recovery timed out
    assert a.snapshot().process_state is State.CLOSED
    for _ in range(3):
        fleet.fail("a")  # the reset is taken once: a fresh streak opens it again
    with pytest.raises(CircuitOpenError) as again:
        a.call(lambda: "ok")
    assert again.value.scope == "process"


@pytest.mark.parametrize("order", ["force_close", "metrics_only"])
def test_an_operator_state_that_admits_all_sets_the_own_breaker_aside(
    fleet: Fleet, order: str
) -> None:
    for _ in range(3):
        fleet.fail("a")
    a = fleet.process("a")
    with pytest.raises(CircuitOpenError):
        a.call(lambda: None)
    getattr(a, order)()
    assert a.call(lambda: "ok") == "ok"
