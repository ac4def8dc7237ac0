"""Deadlines no config can produce, and rejections cached longer than the config allows.

1. A deadline written by hand (or by a server clock far ahead) that no config could have
   set is repaired like any other absurd field: ``HSET <key> state open open_until
   99999999999999`` (year 5138) used to be trusted, and every caller of the fleet was
   rejected with ``retry_after`` of about 3000 years. The next call must find the breaker
   closed, reason ``repaired_invalid_fields``, with a new generation and incarnation. The
   bounds leave 60 s of slack for a server clock that steps back: ``open_until`` at most
   now + ``max_recovery_timeout`` + 60 s, ``forced_until`` at most now + 10 years (the
   longest operator duration) + 60 s, ``half_open_at`` (a past time) at most now + 60 s.
   A deadline the config can produce, or within the slack, is not repaired.

2. A rejection a process cached never outlives ``max_staleness`` (1 s by default), in
   either consistency mode: after the key is deleted or another process resets or closes
   the breaker, the process admits again within ``max_staleness``, not when the cached
   deadline of a long open passes.

3. (slow, real redis-server, separate processes) An operator order reaches every process
   within ``max_staleness``: 4 workers rejected by a breaker open for 300 s, each caching
   that rejection; the parent calls ``force_close()`` or ``reset()``; every worker must be
   admitted within 3 s (the documented bound is 1 s; before the fix a strict worker waited
   the whole 300 s). Run with ``-s`` to see the ``[orders] ...`` figures.

Tests 1 and 2 run on the ``store`` fixture (embedded and real Redis) with its ManualClock:
``clock.server_ms()`` is the scripts' "now", and ``clock.advance`` ages cached rejections.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from typing import TYPE_CHECKING, Any

import pytest

import order_workers
import redbreaker
from redbreaker import Breaker, CircuitOpenError, State, Transition

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
REPAIRED = "repaired_invalid_fields"
SECOND = 1000
MINUTE = 60 * SECOND
SLACK_MS = MINUTE
"""Slack for a server clock stepping back: a deadline this far past the bound is trusted."""
TEN_YEARS_MS = 10 * 365 * 86_400 * SECOND
"""The longest operator duration (longer ones are a ConfigError)."""
YEAR_5138_MS = 99_999_999_999_999


class DownError(ConnectionError):
    """The dependency failed."""


def _down() -> None:
    raise DownError("down")


def _ok() -> str:
    return "ok"


def key_of(store: redbreaker.Store, name: str = "dep") -> str:
    return f"{store.prefix}:{{{name}}}"


def text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def moves(seen: list[Transition]) -> list[tuple[State | None, State, str]]:
    return [(t.previous, t.current, t.reason) for t in seen]


@pytest.fixture
def twin(
    store: redbreaker.Store, clock: redbreaker.ManualClock
) -> Iterator[Callable[[], redbreaker.Store]]:
    """Builds other stores on the same data as ``store`` (other processes, in effect):
    their own client and connection pool, rejection cache and feed; the same clock."""
    made: list[tuple[redbreaker.Store, Any]] = []

    def build() -> redbreaker.Store:
        pool = store.client.connection_pool
        twin_pool = type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs)
        client = type(store.client)(connection_pool=twin_pool)
        made.append((redbreaker.connect(client, clock=clock), twin_pool))
        return made[-1][0]

    yield build
    for other, pool in made:
        other.close()
        pool.disconnect()


# -- 1. deadlines beyond what the config can produce --------------------------------------

SETTINGS: dict[str, Any] = {"failure_threshold": 3, "recovery_timeout": 10}
MAX_RECOVERY_MS = 300 * SECOND
"""max_recovery_timeout of SETTINGS: the larger of recovery_timeout and 300 s."""


def created(store: redbreaker.Store, **settings: Any) -> tuple[Breaker, list[Transition]]:
    """Breaker "dep", created closed by one successful call; its hook list is empty."""
    seen: list[Transition] = []
    breaker = Breaker("dep", store=store, on_transition=[seen.append], **settings)
    assert breaker.call(_ok) == "ok"
    seen.clear()
    return breaker, seen


def hand_write(store: redbreaker.Store, **fields: str | int) -> tuple[int, str]:
    """Write ``fields`` into the breaker hash as a person would (HSET); return the
    generation and incarnation the breaker had."""
    key = key_of(store)
    generation = int(text(store.client.hget(key, "generation")) or 0)
    incarnation = text(store.client.hget(key, "incarnation")) or ""
    assert generation >= 1
    assert incarnation
    store.client.hset(key, mapping={k: str(v) for k, v in fields.items()})
    return generation, incarnation


def check_repaired(
    store: redbreaker.Store,
    breaker: Breaker,
    seen: list[Transition],
    previous: State,
    before: tuple[int, str],
) -> None:
    """The next acquire repaired the breaker: closed, reason repaired_invalid_fields, a new
    generation and incarnation, and the call admitted (not as a probe)."""
    generation, incarnation = before
    try:
        permit = breaker.acquire()
    except CircuitOpenError as exc:
        pytest.fail(f"the absurd deadline was trusted: rejected, retry_after={exc.retry_after}")
    assert permit.is_probe is False
    assert permit.generation == generation + 1
    permit.success()
    assert moves(seen) == [(previous, CLOSED, REPAIRED)]
    snap = breaker.snapshot()
    assert (snap.state, snap.last_reason, snap.generation) == (CLOSED, REPAIRED, generation + 1)
    assert (snap.open_until_ms, snap.forced_until_ms, snap.retry_after) == (None, None, 0)
    assert text(store.client.hget(key_of(store), "incarnation")) != incarnation
    # An ordinary closed breaker again: the third failure in a row trips it.
    for _ in range(3):
        with pytest.raises(DownError):
            breaker.call(_down)
    assert breaker.snapshot().state is OPEN


def test_year_5138_open_deadline_is_repaired_at_the_next_call(
    store: redbreaker.Store, clock: redbreaker.ManualClock
) -> None:
    """The incident: ``HSET <key> state open open_until 99999999999999``. The next call is
    admitted on a repaired, closed breaker; nobody caches a rejection of 3000 years."""
    breaker, seen = created(store, **SETTINGS)
    generation, incarnation = hand_write(store, state="open", open_until=YEAR_5138_MS)

    try:
        assert breaker.call(_ok) == "ok"
    except CircuitOpenError as exc:
        pytest.fail(f"wedged: rejected with retry_after={exc.retry_after} s")

    assert moves(seen) == [(OPEN, CLOSED, REPAIRED)]
    snap = breaker.snapshot()
    assert (snap.state, snap.last_reason, snap.generation) == (CLOSED, REPAIRED, generation + 1)
    assert text(store.client.hget(key_of(store), "incarnation")) != incarnation
    # A second process (its own breaker object and rejection cache) is not wedged either.
    other = Breaker("dep", store=store, **SETTINGS)
    assert other.call(_ok) == "ok"


ABSURD_DEADLINES: list[tuple[str, dict[str, Any], str]] = [
    # (state written, fields written (ms after now, or absolute), case id)
    ("open", {"open_until": YEAR_5138_MS}, "open-year-5138"),
    ("open", {"open_until": "now+10d"}, "open-10-days"),
    ("open", {"open_until": "now+max+10min"}, "open-max-recovery-plus-10min"),
    ("forced_open", {"forced_until": YEAR_5138_MS}, "forced_open-year-5138"),
    ("forced_open", {"forced_until": "now+10y+10min"}, "forced_open-10y-plus-10min"),
    ("forced_closed", {"forced_until": YEAR_5138_MS}, "forced_closed-year-5138"),
    ("metrics_only", {"forced_until": YEAR_5138_MS}, "metrics_only-year-5138"),
    ("half_open", {"half_open_at": YEAR_5138_MS}, "half_open-year-5138"),
    ("half_open", {"half_open_at": "now+10min"}, "half_open-10min-ahead"),
]


def resolve(fields: dict[str, Any], now_ms: int, max_recovery_ms: int) -> dict[str, int]:
    """Turn "now+..." placeholders into Unix ms."""
    spans = {
        "now+10d": 10 * 86_400 * SECOND,
        "now+max+10min": max_recovery_ms + 10 * MINUTE,
        "now+10y+10min": TEN_YEARS_MS + 10 * MINUTE,
        "now+10min": 10 * MINUTE,
        "now+max": max_recovery_ms,
        "now+max+30s": max_recovery_ms + 30 * SECOND,
        "now+10y": TEN_YEARS_MS,
        "now+10y+30s": TEN_YEARS_MS + 30 * SECOND,
        "now+30s": 30 * SECOND,
    }
    return {k: v if isinstance(v, int) else now_ms + spans[v] for k, v in fields.items()}


@pytest.mark.parametrize(
    ("state", "fields"),
    [(s, f) for s, f, _ in ABSURD_DEADLINES],
    ids=[i for _, _, i in ABSURD_DEADLINES],
)
def test_deadline_beyond_the_config_is_repaired(
    store: redbreaker.Store, clock: redbreaker.ManualClock, state: str, fields: dict[str, Any]
) -> None:
    """A deadline no config could have set is repaired like any other absurd field."""
    breaker, seen = created(store, **SETTINGS)
    before = hand_write(store, state=state, **resolve(fields, clock.server_ms(), MAX_RECOVERY_MS))
    check_repaired(store, breaker, seen, State(state), before)


def test_open_deadline_bound_follows_the_config(
    store: redbreaker.Store,
    clock: redbreaker.ManualClock,
    twin: Callable[[], redbreaker.Store],
) -> None:
    """The bound is the config's max_recovery_timeout: an open deadline 2 h away is legit
    for a breaker whose backoff may reach 3 h, absurd for one capped at 1 h (which also
    created the breaker, so its config is the one stored with it)."""
    capped, seen = created(store, **SETTINGS, max_recovery_timeout=3600)
    hand_write(store, state="open", open_until=clock.server_ms() + 2 * 3600 * SECOND)

    longer = Breaker("dep", store=twin(), **SETTINGS, max_recovery_timeout=3 * 3600)
    with pytest.raises(CircuitOpenError) as rejected:
        longer.acquire()
    assert rejected.value.retry_after == 2 * 3600
    assert seen == []
    assert capped.snapshot().state is OPEN

    try:
        permit = capped.acquire()
    except CircuitOpenError as exc:
        pytest.fail(f"2 h trusted by a breaker capped at 1 h: retry_after={exc.retry_after}")
    assert permit.is_probe is False
    permit.success()
    assert moves(seen) == [(OPEN, CLOSED, REPAIRED)]
    assert capped.snapshot().last_reason == REPAIRED


LEGIT_DEADLINES: list[tuple[str, dict[str, Any], str]] = [
    ("open", {"open_until": "now+max"}, "open-max-recovery"),
    ("open", {"open_until": "now+max+30s"}, "open-max-recovery-within-slack"),
    ("forced_open", {"forced_until": "now+10y"}, "forced_open-10y"),
    ("forced_open", {"forced_until": "now+10y+30s"}, "forced_open-10y-within-slack"),
]


@pytest.mark.parametrize(
    ("state", "fields"),
    [(s, f) for s, f, _ in LEGIT_DEADLINES],
    ids=[i for _, _, i in LEGIT_DEADLINES],
)
def test_long_legit_deadline_is_not_repaired(
    store: redbreaker.Store, clock: redbreaker.ManualClock, state: str, fields: dict[str, Any]
) -> None:
    """A deadline the config can produce (or within the slack for clock steps) stands: the
    breaker keeps rejecting, with the retry_after it implies, and nothing is repaired."""
    breaker, seen = created(store, **SETTINGS)
    written = resolve(fields, clock.server_ms(), MAX_RECOVERY_MS)
    generation, _ = hand_write(store, state=state, **written)
    deadline = next(iter(written.values()))

    with pytest.raises(CircuitOpenError) as rejected:
        breaker.acquire()

    assert rejected.value.state == state
    assert rejected.value.retry_after == (deadline - clock.server_ms()) / 1000
    assert seen == []
    snap = breaker.snapshot()
    assert (snap.state.value, snap.generation, snap.last_reason) == (state, generation, "created")
    # Still rejecting a minute later, from Redis too (a new breaker object on a new cache
    # would ask; this one may use its cache, both must reject).
    clock.advance(60)
    for who in (breaker, Breaker("dep", store=store, **SETTINGS)):
        with pytest.raises(CircuitOpenError):
            who.acquire()
    assert seen == []
    assert breaker.snapshot().state.value == state


def test_half_open_at_within_the_slack_is_not_repaired(
    store: redbreaker.Store, clock: redbreaker.ManualClock
) -> None:
    """half_open_at 30 s ahead (a server clock that stepped back) is trusted: a probe."""
    breaker, seen = created(store, **SETTINGS)
    generation, _ = hand_write(store, state="half_open", half_open_at=clock.server_ms() + 30_000)
    permit = breaker.acquire()
    assert permit.is_probe is True
    assert permit.generation == generation
    permit.release()
    assert seen == []
    assert breaker.snapshot().state is HALF_OPEN


def test_longest_operator_order_is_not_repaired(
    store: redbreaker.Store, clock: redbreaker.ManualClock
) -> None:
    """force_open for 10 years, the longest duration allowed, is an order and stands."""
    breaker, seen = created(store, **SETTINGS)
    assert breaker.force_open(TEN_YEARS_MS / 1000) is State.FORCED_OPEN
    clock.advance(3600)
    other = Breaker("dep", store=store, on_transition=[seen.append], **SETTINGS)
    with pytest.raises(CircuitOpenError) as rejected:
        other.acquire()
    assert rejected.value.state == "forced_open"
    assert rejected.value.retry_after == TEN_YEARS_MS / 1000 - 3600
    assert [t.reason for t in seen] == ["operator:force_open"]


# -- 2. a cached rejection lives at most max_staleness --------------------------------------


@pytest.fixture
def no_feed(store: redbreaker.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """``store`` never hears pushed transitions: as if every push were lost."""
    monkeypatch.setattr(store, "start_feed", lambda: None)


LONG_OPEN: dict[str, Any] = {"failure_threshold": 1, "recovery_timeout": 300}
ELSEWHERE = ["del", "other_process_reset", "other_process_force_close"]


@pytest.mark.usefixtures("no_feed")
@pytest.mark.parametrize("consistency", ["strict", "cached"])
@pytest.mark.parametrize("elsewhere", ELSEWHERE)
def test_cached_rejection_lives_at_most_max_staleness(
    store: redbreaker.Store,
    clock: redbreaker.ManualClock,
    twin: Callable[[], redbreaker.Store],
    consistency: str,
    elsewhere: str,
) -> None:
    """A process rejected by a breaker open for 300 s caches that rejection; once the breaker
    is deleted, reset or closed elsewhere, it admits again after max_staleness (1 s), not
    after 300 s. The cached breaker hears no pushes here (as if each were lost)."""
    breaker = Breaker("dep", store=store, consistency=consistency, **LONG_OPEN)
    with pytest.raises(DownError):
        breaker.call(_down)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(_ok)
    assert rejected.value.retry_after == 300

    if elsewhere == "del":
        store.client.delete(key_of(store))
    else:
        other = Breaker("dep", store=twin(), **LONG_OPEN)
        order = other.reset if elsewhere == "other_process_reset" else other.force_close
        assert order() in (CLOSED, State.FORCED_CLOSED)

    clock.advance(1.001)
    try:
        assert breaker.call(_ok) == "ok"
    except CircuitOpenError as exc:
        pytest.fail(
            f"a rejection cached for 300 s outlived max_staleness (1 s) after {elsewhere}: "
            f"still rejected, retry_after={exc.retry_after}"
        )


@pytest.mark.usefixtures("no_feed")  # a push read late would move a ManualClock deadline
@pytest.mark.parametrize("consistency", ["strict", "cached"])
def test_cached_rejection_of_a_long_open_still_rejects_while_it_is_open(
    store: redbreaker.Store, clock: redbreaker.ManualClock, consistency: str
) -> None:
    """The cap changes how long a rejection is trusted locally, not the breaker: once the
    cached one ages out, Redis rejects again until the server's deadline."""
    breaker = Breaker("dep", store=store, consistency=consistency, **LONG_OPEN)
    with pytest.raises(DownError):
        breaker.call(_down)
    for advance in (0, 1.001, 5, 100, 193.9):  # up to 299.9 s in all
        clock.advance(advance)
        with pytest.raises(CircuitOpenError):
            breaker.call(_ok)
    clock.advance(0.1)
    assert breaker.acquire().is_probe is True


# -- 3. operator orders reach every process (separate processes, real Redis) ---------------

WORKERS = 4
ADMIT_WITHIN = 3.0
"""Seconds after the order by which every worker must be admitted (documented: 1 s)."""
GIVE_UP = 6.0
"""Seconds after the order a worker stops trying and reports "never"."""
RESULT_TIMEOUT = 60.0
MODES = [
    pytest.param("strict", True, id="strict"),
    pytest.param("cached", True, id="cached"),
    pytest.param("cached", False, id="cached-pushes-lost"),
]


class Workers:
    """``WORKERS`` processes running :func:`order_workers.entry`."""

    def __init__(self, url: str, params: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.order_at = ctx.Value("d", 0.0)
        self.procs = [
            ctx.Process(
                target=order_workers.entry,
                args=(i, url, params, self.order_at, self.results),
                daemon=True,
                name=f"order-worker-{i}",
            )
            for i in range(WORKERS)
        ]

    def __enter__(self) -> Workers:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            proc.close()
        self.results.close()
        self.results.join_thread()

    def wait_for(self, kind: str) -> list[Any]:
        """Every worker's message of ``kind``, by index; a worker's error fails the test."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(got) < WORKERS:
            try:
                index, what, payload = self.results.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                missing = sorted(set(range(WORKERS)) - set(got))
                raise AssertionError(f"workers {missing} sent no {kind!r} in time") from None
            if what == "error":
                raise AssertionError(f"worker {index} failed:\n{payload}")
            assert what == kind, (index, what, payload)
            got[index] = payload
        return [got[i] for i in range(WORKERS)]


@pytest.mark.slow
@pytest.mark.parametrize("order", ["force_close", "reset"])
@pytest.mark.parametrize(("consistency", "feed"), MODES)
def test_operator_order_reaches_every_process_within_max_staleness(
    redis_url: str, consistency: str, feed: bool, order: str
) -> None:
    """4 processes rejected by a breaker open for 300 s (each caching the rejection) are
    all admitted within a few seconds of force_close() or reset(), not in 300 s."""
    config = {"recovery_timeout": 300, "failure_threshold": 1, "consistency": consistency}
    parent_store = redbreaker.connect(redis_url)
    try:
        parent = Breaker("dep", store=parent_store, **{**config, "consistency": "strict"})
        with pytest.raises(DownError):
            parent.call(_down)
        assert parent.state is OPEN
        params = {"config": config, "feed": feed, "limit": GIVE_UP}
        with Workers(redis_url, params) as workers:
            ready = workers.wait_for("ready")
            assert all(r["state"] == "open" for r in ready), ready
            time.sleep(0.2)  # every worker is calling on its cached rejection meanwhile
            workers.order_at.value = time.monotonic()
            getattr(parent, order)()
            done = workers.wait_for("done")
        latencies = [
            None if d["admitted_at"] is None else round(d["admitted_at"] - d["order_at"], 3)
            for d in done
        ]
        print(
            f"\n[orders] consistency={consistency} feed={feed} order={order} "
            f"cached_at_ready={[r['cached'] for r in ready]} "
            f"admitted_after_s={['never' if x is None else x for x in latencies]} "
            f"rejected_calls_after_order={[d['calls_after'] for d in done]}"
        )
        late = {i: x for i, x in enumerate(latencies) if x is None or x > ADMIT_WITHIN}
        assert not late, (
            f"{order}() reached workers {sorted(late)} only after "
            f"{[f'never (> {GIVE_UP} s)' if x is None else x for x in late.values()]}; "
            f"every process must be admitted within max_staleness (1 s), here {ADMIT_WITHIN} s"
        )
    finally:
        parent_store.close()
