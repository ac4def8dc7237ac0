"""Hostile input: whatever a person can put in a breaker's keys by hand, names and settings
at the edge of what is allowed.

The contract for hand-written garbage in the breaker's keys: the next script that reads it
either raises a clear :class:`redbreaker.StoreError` naming the key and the problem (never a
Lua stack trace), or repairs the breaker: closed, one Transition with reason
``"repaired_invalid_fields"``, and the call admitted. A field nothing decides on (``config``,
a window bucket that does not parse, a counter only shown in snapshots) is ignored.

Every test runs on both drivers (``redbreaker`` and ``redbreaker.aio``, through the
``driver`` fixture), on the embedded store and on a real redis-server (``decode_responses``
off and on) through the ``store`` fixture; time moves only through ``clock.advance``. Scripts
run with the ManualClock's ms, so ``clock.server_ms()`` is the scripts' "now".

What ``tests/test_breaker.py`` already covers (one mangled field of a closed breaker, a
string at the breaker key) is not repeated; this module runs every kind of garbage in every
state, and at each of the next acquire, record, operator order and snapshot.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from redbreaker import BreakerConfig, CircuitOpenError, ConfigError, State, Transition

if TYPE_CHECKING:
    from collections.abc import Callable

    from drivers import AnyBreaker, AnyStore, Driver

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
FORCED_OPEN, METRICS_ONLY = State.FORCED_OPEN, State.METRICS_ONLY
REPAIRED = "repaired_invalid_fields"
LUA_LEAKS = ("user_script", "stack traceback", "attempt to")
"""Text that only a Lua runtime error carries: a clear error never contains it."""

SETTINGS: dict[str, Any] = {"failure_threshold": 3, "recovery_timeout": 10, "probe_lease": 5}
WINDOW_MS = 60_000  # the default window: 10 buckets of 6 s
BUCKET_MS = WINDOW_MS // 10
START_MS = redbreaker.ManualClock().server_ms()
LIVE_SLOT = START_MS // BUCKET_MS % 10
"""The window bucket the calls of these tests land in (the clock starts in it)."""
OTHER_SLOT = (LIVE_SLOT + 5) % 10
KB10 = 10 * 1024


class DownError(ConnectionError):
    """The dependency failed."""


def _down() -> None:
    raise DownError("down")


def key_of(store: AnyStore, name: str) -> str:
    return f"{store.prefix}:{{{name}}}"


def probes_of(store: AnyStore, name: str) -> str:
    return key_of(store, name) + ":probes"


def text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def moves(seen: list[Transition]) -> list[tuple[State | None, State, str]]:
    return [(t.previous, t.current, t.reason) for t in seen]


def fail_times(breaker: AnyBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(DownError):
            breaker.call(_down)


def assert_clear_message(message: str, key: str) -> None:
    """An error message naming the key, with nothing of a Lua runtime error in it."""
    assert key in message, message
    for leak in LUA_LEAKS:
        assert leak not in message, message


def assert_clear_error(error: BaseException, key: str) -> None:
    """A StoreError naming the key, with nothing of a Lua runtime error in it."""
    assert isinstance(error, redbreaker.StoreError), repr(error)
    assert_clear_message(str(error), key)


def attempt(action: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """(result, None), or (None, the exception) when ``action`` raised."""
    try:
        return action(), None
    except Exception as exc:  # the caller asserts which it was
        return None, exc


def assert_sane_window(snap: redbreaker.Snapshot) -> None:
    """Window counts a person can believe: none negative, never more failures than calls."""
    assert snap.window_calls >= 0
    assert 0 <= snap.window_failures <= snap.window_calls, snap
    assert 0 <= snap.window_slow_calls <= snap.window_calls, snap
    for rate in (snap.failure_rate, snap.slow_call_rate):
        assert rate is None or 0 <= rate <= 1, snap


# -- putting a breaker in each state ---------------------------------------------------------

STATES = ("closed", "open", "half_open", "forced_open", "metrics_only")


@dataclass
class Scene:
    """A breaker in one state, with a permit it granted before the garbage arrived."""

    breaker: AnyBreaker
    seen: list[Transition]
    permit: Any
    state: State
    generation: int


def prepare(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, state: str, *names: str
) -> list[Scene]:
    """Put breakers ``names`` in ``state`` in lockstep (so they share every time and
    generation); each hook list starts empty after that.

    closed: a failure streak of 1 and a permit in flight. open: tripped, with a permit of
    the closed generation still in flight. half_open: a probe in flight. forced_open: forced
    without a deadline while a permit was in flight. metrics_only: a permit in flight.
    """
    seen: list[list[Transition]] = [[] for _ in names]
    breakers = [
        driver.breaker(name, store=store, on_transition=[s.append], **SETTINGS)
        for name, s in zip(names, seen, strict=True)
    ]

    def each(step: Callable[[AnyBreaker], Any]) -> list[Any]:
        return [step(b) for b in breakers]

    if state == "closed":
        each(lambda b: fail_times(b, 1))
        permits = each(lambda b: b.acquire())
    elif state == "open":
        permits = each(lambda b: b.acquire())
        each(lambda b: fail_times(b, 3))
    elif state == "half_open":
        each(lambda b: fail_times(b, 3))
        clock.advance(10)
        permits = each(lambda b: b.acquire())
        assert all(p.is_probe for p in permits)
    elif state == "forced_open":
        permits = each(lambda b: b.acquire())
        each(lambda b: b.force_open())
    else:
        each(lambda b: b.metrics_only())
        permits = each(lambda b: b.acquire())
    scenes = []
    for breaker, hooked, permit in zip(breakers, seen, permits, strict=True):
        snap = breaker.snapshot()
        assert snap.state.value == state
        hooked.clear()
        scenes.append(Scene(breaker, hooked, permit, snap.state, snap.generation))
    return scenes


def prepare_one(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, state: str
) -> Scene:
    """Breaker "dep" in ``state`` (see :func:`prepare`)."""
    return prepare(driver, store, clock, state, "dep")[0]


# -- 1. unreadable fields: the next script repairs the breaker --------------------------------

UNREADABLE: list[tuple[str, str]] = [
    ("state", "banana"),
    ("state", ""),
    ("state", "OPEN"),  # states are lowercase
    ("state", "closed "),
    ("state", "x" * KB10),
    ("generation", "-1"),
    ("generation", "1.5"),
    ("generation", "abc"),
    ("generation", ""),
    ("generation", "nan"),
    ("generation", "g" * KB10),
    ("consecutive_failures", "-2"),
    ("consecutive_failures", "0.5"),
    ("consecutive_failures", "lots"),
    ("open_until", "soon"),
    ("open_until", "-5"),
    ("open_until", "12.5"),
    ("forced_until", "later"),
    ("forced_until", "-1"),
    ("half_open_successes", "many"),
    ("half_open_successes", "-1"),
    ("consecutive_opens", "??"),
    ("half_open_at", "1.25"),
]

ONE_PER_FIELD = [
    (field, value) for i, (field, value) in enumerate(UNREADABLE) if UNREADABLE[i - 1][0] != field
]
"""The first garbage of each field: every value fails the same parse, which the acquire
tests cover value by value; the record and order tests need each field once."""


def _case(field: str, value: str) -> str:
    shown = value if len(value) <= 12 else f"{value[:3]}...x{len(value)}"
    return f"{field}={shown!r}"


def expected_repair(
    scene: Scene, field: str, clock: redbreaker.ManualClock
) -> tuple[State | None, int]:
    """(previous state the repair reports, generation after the repair).

    An unreadable generation restarts at the server's now in ms + 1, above any generation a
    permit in flight can carry; a readable one is bumped by one as any transition does.
    """
    previous = None if field == "state" else scene.state
    generation = clock.server_ms() + 1 if field == "generation" else scene.generation + 1
    return previous, generation


def check_snapshot_survives(scene: Scene, field: str) -> None:
    """Reading a mangled breaker raises nothing, repairs nothing and shows sane counts."""
    snap = scene.breaker.snapshot()
    assert snap.exists is True
    assert snap.state is (CLOSED if field == "state" else scene.state)
    assert_sane_window(snap)
    assert scene.seen == []


def check_works_after(scene: Scene) -> None:
    """After the repair the breaker is an ordinary closed breaker: the third failure in a
    row trips it."""
    fail_times(scene.breaker, 3 - scene.breaker.snapshot().consecutive_failures)
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.last_reason) == (OPEN, "consecutive_failures")
    assert_sane_window(snap)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("field", "value"), UNREADABLE, ids=[_case(*c) for c in UNREADABLE])
def test_unreadable_field_repaired_at_next_acquire(  # noqa: PLR0917 (fixtures and parameters)
    driver: Driver,
    store: AnyStore,
    clock: redbreaker.ManualClock,
    state: str,
    field: str,
    value: str,
) -> None:
    """An unreadable field: snapshot still reads; the next acquire repairs closed and admits."""
    scene = prepare_one(driver, store, clock, state)
    store.client.hset(key_of(store, "dep"), field, value)
    check_snapshot_survives(scene, field)
    previous, generation = expected_repair(scene, field, clock)

    permit = scene.breaker.acquire()

    assert (permit.is_probe, permit.generation) == (False, generation)
    assert moves(scene.seen) == [(previous, CLOSED, REPAIRED)]
    assert (scene.seen[0].generation, scene.seen[0].at_ms) == (generation, clock.server_ms())
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.generation, snap.consecutive_failures) == (CLOSED, generation, 0)
    assert (snap.last_reason, snap.window_calls, snap.window_failures) == (REPAIRED, 1, 0)
    permit.failure()
    check_works_after(scene)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("field", "value"), ONE_PER_FIELD, ids=[_case(*c) for c in ONE_PER_FIELD])
def test_unreadable_field_repaired_at_next_record(  # noqa: PLR0917 (fixtures and parameters)
    driver: Driver,
    store: AnyStore,
    clock: redbreaker.ManualClock,
    state: str,
    field: str,
    value: str,
) -> None:
    """Settling a permit granted before the garbage repairs the breaker; the outcome is stale."""
    scene = prepare_one(driver, store, clock, state)
    store.client.hset(key_of(store, "dep"), field, value)
    check_snapshot_survives(scene, field)
    previous, generation = expected_repair(scene, field, clock)

    scene.permit.failure()  # the repair starts a new generation: the permit's is older

    assert moves(scene.seen) == [(previous, CLOSED, REPAIRED)]
    assert scene.seen[0].generation == generation
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.generation, snap.consecutive_failures) == (CLOSED, generation, 0)
    assert (snap.window_calls, snap.window_failures, snap.probes_in_flight) == (0, 0, 0)
    check_works_after(scene)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("field", "value"), ONE_PER_FIELD, ids=[_case(*c) for c in ONE_PER_FIELD])
def test_unreadable_field_repaired_at_next_order(  # noqa: PLR0917 (fixtures and parameters)
    driver: Driver,
    store: AnyStore,
    clock: redbreaker.ManualClock,
    state: str,
    field: str,
    value: str,
) -> None:
    """An operator order on a mangled breaker repairs it first, then applies the order."""
    scene = prepare_one(driver, store, clock, state)
    store.client.hset(key_of(store, "dep"), field, value)
    check_snapshot_survives(scene, field)
    previous, generation = expected_repair(scene, field, clock)

    assert scene.breaker.force_open() is FORCED_OPEN

    assert moves(scene.seen) == [
        (previous, CLOSED, REPAIRED),
        (CLOSED, FORCED_OPEN, "operator:force_open"),
    ]
    assert [t.generation for t in scene.seen] == [generation, generation + 1]
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.generation, snap.retry_after) == (FORCED_OPEN, generation + 1, None)
    with pytest.raises(CircuitOpenError):
        scene.breaker.acquire()
    assert scene.breaker.reset() is CLOSED
    check_works_after(scene)


# -- 2. numbers a person wrote that no script ever writes ---------------------------------

ABSURD: list[tuple[str, str, str]] = [
    ("closed", "generation", "99999999999999999999"),  # 1e20: integral in Lua, past 2^63
    ("closed", "generation", "inf"),
    ("closed", "generation", "9" * KB10),  # reads as inf in Lua
    ("closed", "consecutive_failures", "inf"),
    ("closed", "consecutive_failures", "1e400"),
    ("closed", "open_until", "inf"),
    ("open", "open_until", "inf"),
    ("closed", "forced_until", "inf"),
    ("forced_open", "forced_until", "99999999999999999999"),
    ("half_open", "half_open_successes", "inf"),
]


@pytest.mark.parametrize(
    ("state", "field", "value"), ABSURD, ids=[f"{s}-{_case(f, v)}" for s, f, v in ABSURD]
)
def test_absurd_number_is_repaired_like_garbage(  # noqa: PLR0917 (fixtures and parameters)
    driver: Driver,
    store: AnyStore,
    clock: redbreaker.ManualClock,
    state: str,
    field: str,
    value: str,
) -> None:
    """Infinite or past-2^63 counts and deadlines are unreadable too: repaired, not trusted."""
    scene = prepare_one(driver, store, clock, state)
    store.client.hset(key_of(store, "dep"), field, value)
    check_snapshot_survives(scene, field)
    previous, generation = expected_repair(scene, field, clock)

    permit = scene.breaker.acquire()

    assert moves(scene.seen) == [(previous, CLOSED, REPAIRED)]
    assert (permit.is_probe, permit.generation) == (False, generation)
    permit.failure()
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.generation, snap.consecutive_failures) == (CLOSED, generation, 1)
    check_works_after(scene)


def test_probe_seq_garbage_in_half_open(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock
) -> None:
    """A mangled probe_seq: the next probe is admitted, or a clear StoreError names the key."""
    scene = prepare_one(driver, store, clock, "half_open")
    scene.permit.success()  # closes it; trip again for an empty probe slot
    fail_times(scene.breaker, 3)
    clock.advance(10)
    key = key_of(store, "dep")
    for garbage in ("abc", "1.5", str(2**63 - 1)):
        store.client.hset(key, "probe_seq", garbage)
        permit, error = attempt(scene.breaker.acquire)
        if error is not None:
            assert_clear_error(error, key)
            assert "probe_seq" in str(error)
        else:
            assert permit.is_probe
            permit.release()


# -- 3. fields nothing decides on: ignored ---------------------------------------------------

IGNORED: list[tuple[str, str]] = [
    ("config", "garbage"),
    ("config", "window_ms=abc minimum_calls=-1"),
    ("config", "c" * KB10),
    ("last_reason", "r" * KB10),
    ("changed_at", "yesterday"),
    ("created_at", "-1"),
    ("opened_at", "x"),
    ("open_count", "lots"),
    ("would_trip_count", "-4"),
    ("last_repair", "l" * KB10),
    ("a_field_of_our_own", "1"),
    (f"w.{LIVE_SLOT}", "x"),
    (f"w.{LIVE_SLOT}", "1 2 3"),
    (f"w.{LIVE_SLOT}", f"{START_MS} -5 -1 -1"),
    (f"w.{LIVE_SLOT}", f"{START_MS} 1 2 3 4"),
    (f"w.{LIVE_SLOT}", f"{START_MS}.5 1 1 0"),
    (f"w.{LIVE_SLOT}", ""),
    (f"w.{LIVE_SLOT}", "9" * KB10),
    (f"w.{OTHER_SLOT}", "1 2 3"),
    (f"w.{OTHER_SLOT}", f"{START_MS - 5 * BUCKET_MS} x 1 1"),
]


def _run_ops(scene: Scene, *, with_window: bool) -> list[object]:
    """acquire, settle the earlier permit as a failure, force_open: what each one did (and
    the window counts after each, if ``with_window``)."""
    out: list[object] = []
    try:
        permit = scene.breaker.acquire()
    except CircuitOpenError as exc:
        out.append(("rejected", exc.state, exc.retry_after))
    else:
        out.append(("admitted", permit.is_probe, permit.generation))
        permit.release()
    snap = scene.breaker.snapshot()
    assert_sane_window(snap)
    out.append((snap.state, snap.generation, snap.consecutive_failures))
    if with_window:
        out.append((snap.window_calls, snap.window_failures, snap.window_slow_calls))
    scene.permit.failure()
    snap = scene.breaker.snapshot()
    assert_sane_window(snap)
    out.append((snap.state, snap.generation, snap.consecutive_failures, snap.probes_in_flight))
    if with_window:
        out.append((snap.window_calls, snap.window_failures, snap.window_slow_calls))
    out.append(scene.breaker.force_open())
    out.append([(t.previous, t.current, t.reason, t.generation) for t in scene.seen])
    return out


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("field", "value"), IGNORED, ids=[_case(*c) for c in IGNORED])
def test_ignored_field_changes_no_decision(  # noqa: PLR0917 (fixtures and parameters)
    driver: Driver,
    store: AnyStore,
    clock: redbreaker.ManualClock,
    state: str,
    field: str,
    value: str,
) -> None:
    """Garbage in a field no rule reads: no repair, every decision as on a clean twin."""
    # The window counts match too, unless the garbage overwrote the bucket the calls are in.
    scene, twin = prepare(
        driver, store, clock, state, "dep", "twin"
    )  # the same generations and times
    store.client.hset(key_of(store, "dep"), field, value)
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.generation) == (scene.state, scene.generation)
    assert_sane_window(snap)

    with_window = field != f"w.{LIVE_SLOT}"
    assert _run_ops(scene, with_window=with_window) == _run_ops(twin, with_window=with_window)
    assert all(t.reason != REPAIRED for t in scene.seen)


@pytest.mark.parametrize("field", ["w.10", "w.-1", "w.03", "w.x"])
def test_snapshot_reads_only_the_ten_window_buckets(
    driver: Driver, store: AnyStore, field: str
) -> None:
    """A field like a bucket but not w.0..w.9: the rules never read it, nor does snapshot."""
    breaker = driver.breaker("dep", store=store, failure_threshold=None, failure_rate=0.5)
    for _ in range(2):
        breaker.acquire().success()
    store.client.hset(key_of(store, "dep"), field, f"{START_MS} 100 100 100")
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.window_slow_calls) == (2, 0, 0)
    with pytest.raises(DownError):
        breaker.call(_down)  # 1 failure in 3 calls: the rules see no 100 failures
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 3, 1)


def test_far_future_bucket_does_not_silence_the_rate_rule(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock
) -> None:
    """A bucket stamped 1 h ahead in the live slot does not swallow calls: the rate trips."""
    seen: list[Transition] = []
    breaker = driver.breaker(
        "dep",
        store=store,
        on_transition=[seen.append],
        failure_threshold=None,
        failure_rate=0.5,
        minimum_calls=4,
    )
    breaker.acquire().success()  # creates the breaker; one call in the live bucket
    future = (START_MS // BUCKET_MS + 600) * BUCKET_MS  # one hour ahead, the same slot
    assert future // BUCKET_MS % 10 == LIVE_SLOT
    store.client.hset(key_of(store, "dep"), f"w.{LIVE_SLOT}", f"{future} 0 0 0")
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures) == (0, 0)  # the overwritten call is gone

    for _ in range(3):
        with pytest.raises(DownError):
            breaker.call(_down)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 3, 3)
    with pytest.raises(DownError):
        breaker.call(_down)
    assert moves(seen) == [(CLOSED, OPEN, "failure_rate")]


def test_future_bucket_counts_are_not_counted(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock
) -> None:
    """100 failures stamped 1 h ahead never happened: no snapshot or trip rule counts them."""
    breaker = driver.breaker(
        "dep", store=store, failure_threshold=None, failure_rate=0.5, minimum_calls=4
    )
    for _ in range(3):
        breaker.acquire().success()
    future = (START_MS // BUCKET_MS + 601) * BUCKET_MS
    store.client.hset(key_of(store, "dep"), f"w.{(LIVE_SLOT + 1) % 10}", f"{future} 100 100 0")
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.failure_rate) == (3, 0, 0.0)
    with pytest.raises(DownError):
        breaker.call(_down)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failures) == (CLOSED, 4, 1)


def test_failure_of_a_call_whose_bucket_was_overwritten_keeps_the_window_sane(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock
) -> None:
    """A failure settled after its bucket was overwritten leaves no failures > calls."""
    # record.lua promises "a window never holds more failures than calls".
    breaker = driver.breaker("dep", store=store, failure_threshold=None, failure_rate=0.5)
    permit = breaker.acquire()
    store.client.hset(key_of(store, "dep"), f"w.{LIVE_SLOT}", "x")
    permit.failure()
    assert_sane_window(breaker.snapshot())


# -- 4. the breaker key holds another type: a clear StoreError --------------------------------


def _put_wrong_type(client: Any, key: str, kind: str) -> None:
    client.delete(key)
    writers: dict[str, Callable[[], object]] = {
        "string": lambda: client.set(key, "x"),
        "list": lambda: client.rpush(key, "a", "b"),
        "set": lambda: client.sadd(key, "a"),
        "zset": lambda: client.zadd(key, {"a": 1}),
        "stream": lambda: client.xadd(key, {"a": "1"}),
    }
    writers[kind]()


@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "stream"])
def test_breaker_key_of_wrong_type_is_a_clear_store_error(
    driver: Driver,
    store: AnyStore,
    clock: redbreaker.ManualClock,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """Another type at the breaker key: StoreError naming it; settling logs it, never raises."""
    scene = prepare_one(driver, store, clock, "half_open")
    key = key_of(store, "dep")
    _put_wrong_type(store.client, key, kind)
    calls = 0

    def guarded() -> None:
        nonlocal calls
        calls += 1

    for action in (
        scene.breaker.acquire,
        lambda: scene.breaker.call(guarded),
        scene.breaker.snapshot,
        scene.breaker.force_open,
        scene.breaker.reset,
    ):
        with pytest.raises(redbreaker.StoreError) as caught:
            action()
        assert_clear_error(caught.value, key)
        assert "is not a breaker hash" in str(caught.value)
    assert calls == 0
    with caplog.at_level(logging.WARNING, logger="redbreaker"):
        scene.permit.success()  # a probe: its outcome always goes to Redis
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "record_failed"]
    assert "StoreError" in record.getMessage()
    assert_clear_message(record.getMessage(), key)
    assert text(store.client.type(key)) == kind  # the stranger's data is left alone
    assert scene.seen == []


# -- 5. the probes key holds another type: dropped, and the breaker says so -------------------


def _put_probes_wrong_type(client: Any, key: str, kind: str) -> None:
    client.delete(key)
    writers: dict[str, Callable[[], object]] = {
        "string": lambda: client.set(key, "x"),
        "hash": lambda: client.hset(key, "token", "1"),
        "list": lambda: client.rpush(key, "token"),
        "set": lambda: client.sadd(key, "token"),
    }
    writers[kind]()


PROBE_KINDS = ["string", "hash", "list", "set"]


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_probes_key_of_wrong_type_repaired_at_acquire(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, kind: str
) -> None:
    """Another type at the probes key: acquire drops it, says so in last_repair, gets a probe."""
    # The lease of the probe already in flight went with the stranger: its slot is free.
    scene = prepare_one(driver, store, clock, "half_open")
    probes = probes_of(store, "dep")
    _put_probes_wrong_type(store.client, probes, kind)
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.probes_in_flight) == (HALF_OPEN, 0)

    permit = scene.breaker.acquire()  # the lease of the earlier probe went with the stranger

    assert (permit.is_probe, permit.generation) == (True, scene.generation)
    assert text(store.client.hget(key_of(store, "dep"), "last_repair")) == (
        f"dropped a {kind} at the probes key"
    )
    assert text(store.client.type(probes)) == "zset"
    assert scene.breaker.snapshot().probes_in_flight == 1
    permit.success()
    assert moves(scene.seen) == [(HALF_OPEN, CLOSED, "probes_succeeded")]


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_probes_key_of_wrong_type_repaired_at_record(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, kind: str
) -> None:
    """A probe settled after its lease key was overwritten: stranger dropped, breaker closes."""
    scene = prepare_one(driver, store, clock, "half_open")
    probes = probes_of(store, "dep")
    _put_probes_wrong_type(store.client, probes, kind)

    scene.permit.success()

    assert moves(scene.seen) == [(HALF_OPEN, CLOSED, "probes_succeeded")]
    assert text(store.client.hget(key_of(store, "dep"), "last_repair")) == (
        f"dropped a {kind} at the probes key"
    )
    assert text(store.client.type(probes)) == "none"
    snap = scene.breaker.snapshot()
    assert (snap.state, snap.probes_in_flight) == (CLOSED, 0)


@pytest.mark.parametrize("kind", PROBE_KINDS)
@pytest.mark.parametrize("state", ["closed", "half_open", "forced_open"])
def test_probes_key_of_wrong_type_does_not_block_orders(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, state: str, kind: str
) -> None:
    """Orders and closed calls never read the leases: a stranger there blocks none of them."""
    scene = prepare_one(driver, store, clock, state)
    _put_probes_wrong_type(store.client, probes_of(store, "dep"), kind)
    if state == "closed":
        scene.breaker.acquire().success()
    assert scene.breaker.metrics_only(30) is METRICS_ONLY
    assert scene.breaker.force_open() is FORCED_OPEN
    assert scene.breaker.reset() is CLOSED
    assert text(store.client.type(probes_of(store, "dep"))) == "none"
    assert scene.breaker.acquire().generation == scene.generation + 3


@pytest.mark.parametrize("expiry", ["4102444800000", "+inf"], ids=["year-2100", "inf"])
def test_hand_written_lease_cannot_wedge_half_open(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, expiry: str
) -> None:
    """A lease no breaker grants (ending in 2100, or never) holds a slot <= probe_lease."""
    # Either the impossible lease is ignored at once, or a rejection says to retry within
    # probe_lease and a probe passes then.
    breaker = driver.breaker("dep", store=store, **SETTINGS)
    fail_times(breaker, 3)
    clock.advance(10)
    store.client.zadd(probes_of(store, "dep"), {"by-hand": float(expiry)})
    permit, error = attempt(breaker.acquire)
    if error is not None:
        assert isinstance(error, CircuitOpenError), repr(error)
        assert error.state == "half_open"
        assert error.retry_after is not None
        assert 0 < error.retry_after <= 5.0
        clock.advance(5)
        permit = breaker.acquire()
    assert permit.is_probe
    permit.success()
    assert breaker.state is CLOSED


# -- 6. keys deleted under a permit in flight --------------------------------------------------


def _wipe(store: AnyStore, how: str) -> None:
    if how == "del":
        store.client.delete(key_of(store, "dep"), probes_of(store, "dep"))
    else:
        # FLUSHALL, SCRIPT FLUSH, FUNCTION FLUSH: the keys and the server's code are gone.
        store.client.flushall()
        store.client.script_flush()
        store.client.function_flush("SYNC")


WIPES = ["del", "flushall"]


@pytest.mark.parametrize("how", WIPES)
def test_wipe_then_record_of_a_generation_1_permit_is_stale(
    driver: Driver, store: AnyStore, how: str
) -> None:
    """Permits admitted before a wipe never count: the record does not recreate the breaker,
    and a breaker created again is a new incarnation even at generation 1."""
    seen: list[Transition] = []
    breaker = driver.breaker("dep", store=store, on_transition=[seen.append], **SETTINGS)
    old = [breaker.acquire() for _ in range(3)]
    fail_times(breaker, 3)
    assert breaker.state is OPEN
    _wipe(store, how)

    old[0].failure()  # the breaker is gone: the outcome is stale and creates nothing
    assert breaker.snapshot().exists is False
    breaker.call(lambda: None)  # a new breaker, generation 1 again
    before = breaker.snapshot()
    assert (before.state, before.generation) == (CLOSED, 1)
    old[1].failure()
    old[2].failure()
    after = breaker.snapshot()
    assert (after.state, after.generation, after.consecutive_failures) == (CLOSED, 1, 0)
    assert moves(seen) == [(CLOSED, OPEN, "consecutive_failures")]


def test_reset_then_record_of_a_generation_1_permit_is_stale(
    driver: Driver, store: AnyStore
) -> None:
    """The same story with reset() instead of a wipe: the old permits are fenced off."""
    breaker = driver.breaker("dep", store=store, **SETTINGS)
    old = [breaker.acquire() for _ in range(3)]
    fail_times(breaker, 3)
    assert breaker.reset() is CLOSED
    for permit in old:
        permit.failure()
    snap = breaker.snapshot()
    assert (snap.state, snap.generation, snap.consecutive_failures) == (CLOSED, 3, 0)


@pytest.mark.parametrize("how", WIPES)
@pytest.mark.parametrize("state", STATES)
def test_wipe_under_a_permit_in_flight(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock, state: str, how: str
) -> None:
    """Keys wiped under a permit: its outcome is stale and creates nothing; the next call
    creates a closed breaker at generation 1 that admits."""
    scene = prepare_one(driver, store, clock, state)
    _wipe(store, how)
    snap = scene.breaker.snapshot()
    assert (snap.exists, snap.state, snap.generation) == (False, CLOSED, 1)

    scene.permit.failure()

    snap = scene.breaker.snapshot()
    assert (snap.exists, snap.state, snap.generation) == (False, CLOSED, 1)
    permit = scene.breaker.acquire()
    assert (permit.is_probe, permit.generation) == (False, 1)
    permit.success()
    snap = scene.breaker.snapshot()
    assert (snap.consecutive_failures, snap.probes_in_flight, snap.open_count) == (0, 0, 0)
    assert scene.seen == []  # a recreated breaker is created, not transitioned


@pytest.mark.parametrize("how", WIPES)
def test_wipe_then_failure_keeps_the_window_sane(driver: Driver, store: AnyStore, how: str) -> None:
    """A generation-1 failure settled after a wipe leaves no window with failures > calls."""
    breaker = driver.breaker("dep", store=store, failure_threshold=None, failure_rate=0.5)
    permit = breaker.acquire()
    _wipe(store, how)
    permit.failure()
    assert_sane_window(breaker.snapshot())


def test_wipe_while_cached_rejection_is_local_only(
    driver: Driver, store: AnyStore, clock: redbreaker.ManualClock
) -> None:
    """A cached open rejection outlives a wipe for max_staleness at most (not until its
    deadline, 10 s away), then a new breaker admits."""
    breaker = driver.breaker("dep", store=store, **SETTINGS)
    fail_times(breaker, 3)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    _wipe(store, "del")
    clock.advance(0.999)
    with pytest.raises(CircuitOpenError) as cached:
        breaker.acquire()
    assert cached.value.retry_after == 9.001
    assert store.client.exists(key_of(store, "dep")) == 0  # no round trip was made
    clock.advance(0.001)  # max_staleness (1 s) after the rejection was learned
    assert breaker.acquire().generation == 1


# -- 7. names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "x" * KB10,
        "{" * KB10,
        "dep}:probes",
        "{dep}",
        "dep:{x}",
        "a\u3000b",  # ideographic space
        "a\x85b",  # next line
        "a\u2029b",  # paragraph separator
        "a\u202eb",  # right-to-left override
        "a\ufeffb",  # byte order mark
        "\ud800",  # a lone surrogate cannot be sent as UTF-8
        "svc*",
        "svc[1-2]",
    ],
    ids=lambda n: repr(n)[:20],
)
def test_hostile_name_is_a_short_config_error(driver: Driver, name: str) -> None:
    """Names the key scheme cannot carry raise ConfigError('name') without echoing 10 KB."""
    store = driver.connect("memory://")
    try:
        with pytest.raises(ConfigError) as caught:
            driver.breaker(name, store=store)
        assert caught.value.field == "name"
        assert len(str(caught.value)) < 200
        assert store.breaker_names() == []
    finally:
        store.close()


TRICKY_NAMES = [
    "dep",
    "dep:probes",  # looks like dep's probes key, but is "<prefix>:{dep:probes}"
    "dep:",
    ":dep",
    "events",
    "zahlungs-dienst-ü",
    "支払い.api_v2",
    "emoji-\U0001f4b3",
    "a|b=c,d;e@f#g$h%i&j+k!l~m'n\"o<p>q()",
    "y" * 200,
]


def test_tricky_names_get_separate_keys_end_to_end(driver: Driver, store: AnyStore) -> None:
    """Names with colons, unicode, quotes: own keys, listed back exactly, no shared state."""
    breakers = [driver.breaker(n, store=store, failure_threshold=1) for n in TRICKY_NAMES]
    for b in breakers:
        b.acquire().success()
    assert store.breaker_names() == sorted(TRICKY_NAMES)
    for name in TRICKY_NAMES:
        assert text(store.client.type(key_of(store, name))) == "hash"
    fail_times(breakers[1], 1)  # "dep:probes"
    states = {b.name: b.state for b in breakers}
    assert states == {n: OPEN if n == "dep:probes" else CLOSED for n in TRICKY_NAMES}
    assert text(store.client.type(probes_of(store, "dep"))) == "none"
    assert store.breaker_names() == sorted(TRICKY_NAMES)


# -- 8. settings test_config.py does not cover ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attempt_threads", 1),
        ("attempt_threads", 0),
        ("attempt_threads", -4),
        ("attempt_threads", 2.0),
        ("attempt_threads", "16"),
        ("attempt_threads", True),
        ("attempt_threads", None),
        ("attempt_threads", math.nan),
        ("max_abandoned_attempts", 0),
        ("max_abandoned_attempts", -1),
        ("max_abandoned_attempts", 1.5),
        ("max_abandoned_attempts", None),
        ("max_abandoned_attempts", 16),  # not below attempt_threads
        ("max_abandoned_attempts", 10**6),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_attempt_thread_settings_are_validated(field: str, value: object) -> None:
    """attempt_threads (int >= 2), max_abandoned_attempts (int >= 1, below it) are checked."""
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(**{field: value})
    assert caught.value.field == field


HUGE = 1e15  # seconds: 31 million years; finite, so no rule refuses it today


@pytest.mark.parametrize(
    ("field", "settings"),
    [
        ("recovery_timeout", {"recovery_timeout": HUGE, "key_ttl": 2 * HUGE}),
        ("window", {"window": HUGE, "key_ttl": 2 * HUGE}),
        ("probe_lease", {"probe_lease": HUGE, "key_ttl": 2 * HUGE}),
        ("half_open_max_wait", {"half_open_max_wait": HUGE, "key_ttl": 2 * HUGE}),
        ("key_ttl", {"key_ttl": HUGE}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_huge_duration_is_refused_or_works(
    driver: Driver, store: AnyStore, field: str, settings: dict[str, Any]
) -> None:
    """A finite, absurd duration is a ConfigError naming it, or works: never a Lua error."""
    breaker, refused = attempt(
        lambda: driver.breaker("dep", store=store, failure_threshold=1, **settings)
    )
    if refused is not None:
        assert isinstance(refused, ConfigError), repr(refused)
        assert refused.field in (field, "key_ttl")
        return
    _, error = attempt(lambda: fail_times(breaker, 1))
    assert error is None, f"{field}={HUGE} was accepted, then every call fails: {error}"
    assert breaker.snapshot().state is OPEN


@pytest.mark.parametrize("order", ["force_open", "force_close", "metrics_only"])
def test_huge_operator_duration_is_refused_or_works(
    driver: Driver, store: AnyStore, order: str
) -> None:
    """An order held for 31 million years is a ConfigError('duration') or simply holds."""
    breaker = driver.breaker("dep", store=store)
    state, error = attempt(lambda: getattr(breaker, order)(HUGE))
    if isinstance(error, ConfigError):
        assert error.field == "duration"
        return
    assert error is None, f"{order}({HUGE}) was accepted, then failed in Lua: {error}"
    assert state.value == {"force_open": "forced_open", "force_close": "forced_closed"}.get(
        order, order
    )


def test_huge_counts_work(driver: Driver, store: AnyStore) -> None:
    """Counts far past 2^53 are accepted and simply never reached: the breaker admits."""
    breaker = driver.breaker(
        "dep",
        store=store,
        failure_threshold=10**30,
        failure_rate=1.0,
        minimum_calls=10**30,
        half_open_max_calls=10**30,
        success_threshold=10**30,
    )
    fail_times(breaker, 5)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.window_failures) == (CLOSED, 5, 5)
