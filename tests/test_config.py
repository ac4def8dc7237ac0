"""BreakerConfig, breaker names and key prefixes are validated at construction.

Pure and fast: no Redis is contacted (a ``memory://`` store is built but never used).
"""

from __future__ import annotations

import dataclasses
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

import redbreaker
from redbreaker import Breaker, BreakerConfig, ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

NAN = math.nan
INF = math.inf

# Durations that must be > 0, finite, at least 1 ms, and a number or a timedelta.
BAD_DURATIONS: tuple[object, ...] = (
    0,
    0.0,
    -1,
    -0.5,
    0.0005,  # under 1 ms: timing is kept in whole ms
    NAN,
    INF,
    -INF,
    "30",
    True,
    False,
    [1],
    timedelta(0),
    timedelta(seconds=-5),
)
DURATION_FIELDS = (
    "window",
    "recovery_timeout",
    "probe_lease",
    "key_ttl",
    "slow_call_duration",
    "max_recovery_timeout",
    "half_open_max_wait",
)
# Counts: ints >= 1; floats, strings and bools are refused.
BAD_COUNTS: tuple[object, ...] = (0, -1, -100, 1.0, 2.5, NAN, INF, "5", True, False, None)
COUNT_FIELDS = ("failure_threshold", "minimum_calls", "half_open_max_calls", "success_threshold")
# Ratios in (0, 1].
BAD_RATIOS: tuple[object, ...] = (0, 0.0, -0.1, 1.0001, 2, NAN, INF, -INF, "0.5", True, False)
RATIO_FIELDS = ("failure_rate", "slow_call_rate")
BAD_BACKOFFS: tuple[object, ...] = (0.999, 0, -2, NAN, INF, "2", True, False, None)
BAD_JITTERS: tuple[object, ...] = (-0.01, 1, 1.0, 1.5, NAN, INF, "0.1", True, False, None)
BAD_MATCHERS: tuple[object, ...] = (
    3,
    (),
    "ValueError",
    int,  # a class, but not an exception
    object,
    (ValueError, 3),
    (ValueError, int),
    (ValueError, (KeyError,)),
    [ValueError],
    {ValueError},
    ValueError("an instance, not a class"),
)


def _case_id(value: object) -> str:
    if isinstance(value, type):
        return f"class-{value.__name__}"
    return f"{type(value).__name__}-{value!r}"[:40]


def _bad_cases() -> Iterator[tuple[str, object]]:
    for name in DURATION_FIELDS:
        for value in BAD_DURATIONS:
            yield name, value
    for name in COUNT_FIELDS:
        for value in BAD_COUNTS:
            if value is None and name == "failure_threshold":
                continue  # None turns the consecutive rule off (tested below)
            yield name, value
    for name in RATIO_FIELDS:
        for value in BAD_RATIOS:
            yield name, value
    yield "slow_call_rate", None  # only failure_rate may be None
    for name in ("window", "recovery_timeout", "probe_lease"):
        yield name, None  # only slow_call_duration, max_recovery_timeout,
        # half_open_max_wait and key_ttl may be None
    for value in BAD_BACKOFFS:
        yield "recovery_backoff", value
    for value in BAD_JITTERS:
        yield "recovery_jitter", value
    for value in BAD_MATCHERS:
        yield "record_on", value
        yield "ignore_on", value
    yield "record_on", None  # record_on has no "off"; ignore_on does
    for value in (3, "x", ValueError("not a predicate")):
        yield "failure_result", value


BAD_CASES = list(_bad_cases())


@pytest.mark.parametrize(
    ("field", "value"), BAD_CASES, ids=[f"{f}={_case_id(v)}" for f, v in BAD_CASES]
)
def test_bad_value_is_a_config_error_naming_the_field(field: str, value: object) -> None:
    """Each invalid setting raises ConfigError (a ValueError) whose .field names it."""
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(**{field: value})
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, redbreaker.RedbreakerError)
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("field", "value"), BAD_CASES[::7], ids=[f"{f}={_case_id(v)}" for f, v in BAD_CASES[::7]]
)
def test_breaker_keyword_settings_are_validated_too(field: str, value: object) -> None:
    """Breaker(..., **settings) validates each setting like BreakerConfig does."""
    store = redbreaker.connect("memory://")
    try:
        with pytest.raises(ConfigError) as caught:
            Breaker("svc", store=store, **{field: value})
        assert caught.value.field == field
    finally:
        store.close()


def test_max_recovery_timeout_below_recovery_timeout() -> None:
    """max_recovery_timeout < recovery_timeout is refused; equal is fine."""
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(recovery_timeout=30, max_recovery_timeout=29.999)
    assert caught.value.field == "max_recovery_timeout"
    assert BreakerConfig(recovery_timeout=30, max_recovery_timeout=30).script_argv[7] == "30000"


def test_default_max_recovery_timeout() -> None:
    """max_recovery_timeout None means max(recovery_timeout, 300 s) on the wire."""
    assert BreakerConfig(recovery_timeout=5).script_argv[7] == "300000"
    assert BreakerConfig(recovery_timeout=400).script_argv[7] == "400000"


@pytest.mark.parametrize(
    ("settings", "shortest_ok"),
    [
        ({}, 600.0),  # default cap of the open duration: 300 s
        ({"window": 1000}, 2000.0),
        ({"probe_lease": 400}, 800.0),
        ({"half_open_max_wait": 500}, 1000.0),
        ({"recovery_timeout": 10, "max_recovery_timeout": 450}, 900.0),
    ],
)
def test_key_ttl_must_be_twice_the_longest_duration(
    settings: dict[str, Any], shortest_ok: float
) -> None:
    """key_ttl below 2x the longest other duration is refused, exactly 2x is fine."""
    BreakerConfig(**settings, key_ttl=shortest_ok)
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(**settings, key_ttl=shortest_ok - 0.001)
    assert caught.value.field == "key_ttl"


def test_no_trip_rule_at_all() -> None:
    """Turning off the consecutive rule with no rate rule left is refused."""
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(failure_threshold=None)
    assert caught.value.field == "failure_threshold"
    assert "no trip rule" in str(caught.value)
    # Either rate rule alone is enough.
    assert BreakerConfig(failure_threshold=None, failure_rate=0.5).script_argv[:2] == ("", "0.5")
    slow_only = BreakerConfig(failure_threshold=None, slow_call_duration=2)
    assert slow_only.script_argv[0] == ""
    assert slow_only.script_argv[4] == "1.0"


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_rate": 1},
        {"failure_rate": 1e-9},
        {"slow_call_rate": 1.0, "slow_call_duration": 0.001},
        {"recovery_jitter": 0},
        {"recovery_jitter": 0.999},
        {"recovery_backoff": 1},
        {"recovery_backoff": 2.5},
        {"failure_threshold": 1},
        {"minimum_calls": 1},
        {"record_on": ValueError},
        {"record_on": (ValueError, KeyError)},
        {"record_on": lambda exc: isinstance(exc, OSError)},
        {"ignore_on": (KeyError,)},
        {"failure_result": lambda r: r is None},
        {"half_open_max_wait": 0.001},
    ],
    ids=lambda s: ",".join(f"{k}={v!r}"[:30] for k, v in s.items()),
)
def test_boundary_values_are_accepted(settings: dict[str, Any]) -> None:
    """Values on the edge of each valid range are accepted."""
    config = BreakerConfig(**settings)
    for key, value in settings.items():
        assert getattr(config, key) is value


def test_timedelta_is_accepted_and_sent_in_ms() -> None:
    """Every duration takes a timedelta and puts the same ms on the wire as seconds do."""
    as_td = BreakerConfig(
        window=timedelta(seconds=10),
        slow_call_duration=timedelta(milliseconds=250),
        recovery_timeout=timedelta(milliseconds=1500),
        max_recovery_timeout=timedelta(minutes=2),
        probe_lease=timedelta(seconds=3),
        half_open_max_wait=timedelta(seconds=45),
        key_ttl=timedelta(hours=1),
    )
    as_float = BreakerConfig(
        window=10,
        slow_call_duration=0.25,
        recovery_timeout=1.5,
        max_recovery_timeout=120.0,
        probe_lease=3,
        half_open_max_wait=45.0,
        key_ttl=3600,
    )
    assert as_td.script_argv == as_float.script_argv
    assert as_td.script_argv[2] == "10000"  # window_ms
    assert as_td.script_argv[5] == "1500"  # recovery_timeout_ms
    assert as_td.script_argv[7] == "120000"  # max_recovery_timeout_ms
    assert as_td.script_argv[11] == "3000"  # probe_lease_ms
    assert as_td.script_argv[12] == "45000"  # half_open_max_wait_ms
    assert as_td.script_argv[13] == "3600000"  # key_ttl_ms
    assert as_td.slow_call_seconds == 0.25
    assert as_td.window_seconds == 10.0


def test_config_is_frozen() -> None:
    """Assigning to a field of a built config raises; the config is unchanged."""
    config = BreakerConfig(failure_threshold=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.failure_threshold = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.record_on = KeyError  # type: ignore[misc]
    assert config.failure_threshold == 3
    assert config.script_argv[0] == "3"


def test_config_compares_by_value() -> None:
    """Two configs with the same settings are equal (and hash equal); one change differs."""
    a = BreakerConfig(failure_threshold=3, recovery_timeout=10, record_on=(OSError,))
    b = BreakerConfig(failure_threshold=3, recovery_timeout=10, record_on=(OSError,))
    c = BreakerConfig(failure_threshold=4, recovery_timeout=10, record_on=(OSError,))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert BreakerConfig() == BreakerConfig()
    assert dataclasses.replace(a, failure_threshold=4) == c


def test_setting_names_are_the_init_fields() -> None:
    """setting_names() lists exactly the public fields, not the private argv cache."""
    assert BreakerConfig.setting_names() == frozenset(
        {
            "failure_threshold",
            "failure_rate",
            "window",
            "minimum_calls",
            "slow_call_duration",
            "slow_call_rate",
            "recovery_timeout",
            "recovery_backoff",
            "max_recovery_timeout",
            "recovery_jitter",
            "half_open_max_calls",
            "success_threshold",
            "probe_lease",
            "half_open_max_wait",
            "key_ttl",
            "retry_budget",
            "retry_budget_floor",
            "min_reporters",
            "on_store_error",
            "consistency",
            "max_staleness",
            "flush_interval",
            "attempt_threads",
            "max_abandoned_attempts",
            "record_on",
            "ignore_on",
            "failure_result",
        }
    )


# -- Breaker construction --------------------------------------------------------------


@pytest.fixture
def memory_store() -> Iterator[redbreaker.Store]:
    """A private in-process store; nothing in this module sends it a command."""
    store = redbreaker.connect("memory://")
    yield store
    store.close()


@pytest.mark.parametrize("setting", ["unknown_setting", "_argv", "failure_treshold"])
def test_unknown_setting_names_it(memory_store: redbreaker.Store, setting: str) -> None:
    """An unknown keyword setting is a ConfigError whose field is that keyword."""
    with pytest.raises(ConfigError) as caught:
        Breaker("svc", store=memory_store, **{setting: 1})
    assert caught.value.field == setting


def test_settings_override_config(memory_store: redbreaker.Store) -> None:
    """Keyword settings override the given config's fields; the rest are kept."""
    base = BreakerConfig(failure_threshold=7, recovery_timeout=12)
    breaker = Breaker("svc", store=memory_store, config=base, failure_threshold=2)
    assert breaker.config == BreakerConfig(failure_threshold=2, recovery_timeout=12)
    assert base.failure_threshold == 7


def test_non_store_is_refused() -> None:
    """A store argument that is not a Store is a ConfigError naming 'store'."""
    with pytest.raises(ConfigError) as caught:
        Breaker("svc", store="memory://")  # type: ignore[arg-type]
    assert caught.value.field == "store"


@pytest.mark.parametrize("config", [{"failure_threshold": 3}, "fast", 5])
def test_non_config_is_refused(memory_store: redbreaker.Store, config: object) -> None:
    """config= must be a BreakerConfig (a dict of settings is not one)."""
    with pytest.raises(ConfigError) as caught:
        Breaker("svc", store=memory_store, config=config)  # type: ignore[arg-type]
    assert caught.value.field == "config"


def test_non_callable_hook_is_refused(memory_store: redbreaker.Store) -> None:
    """on_transition entries must be callables."""
    with pytest.raises(ConfigError) as caught:
        Breaker("svc", store=memory_store, on_transition=[print, 3])  # type: ignore[list-item]
    assert caught.value.field == "on_transition"


BAD_NAMES: tuple[object, ...] = (
    "",
    "{x}",
    "a{b",
    "a}b",
    "a b",
    " lead",
    "trail ",
    "a*",
    "a?",
    "a[0]",
    "a\\b",
    "x" * 201,
    "ü" * 201,
    "a\x00b",
    "a\nb",
    "a\tb",
    "a\rb",
    "a\x1bb",
    "a\x7fb",
    "a\u200bb",  # zero-width space: not printable
    "a\u00a0b",  # no-break space
    "a\u2028b",  # line separator
    None,
    42,
    b"payments",
    ["payments"],
)


@pytest.mark.parametrize("name", BAD_NAMES, ids=_case_id)
def test_invalid_breaker_name(memory_store: redbreaker.Store, name: object) -> None:
    """An invalid name is a ConfigError with field 'name', from Breaker and check_name."""
    with pytest.raises(ConfigError) as caught:
        Breaker(name, store=memory_store)  # type: ignore[arg-type]
    assert caught.value.field == "name"
    with pytest.raises(ConfigError) as caught:
        redbreaker.check_name(name)
    assert caught.value.field == "name"


GOOD_NAMES = (
    "zahlungs-dienst-ü",
    "payments:eu-west/1",
    "x" * 200,
    "ü" * 200,
    ":leading-colon",
    "trailing-colon:",
    "a",
    "支払い.api_v2",
    "emoji-\U0001f4b3",
    "a|b=c,d;e@f#g$h%i&j+k!l~m'n\"o<p>q()",
)


@pytest.mark.parametrize("name", GOOD_NAMES, ids=lambda n: n[:30])
def test_valid_breaker_name(memory_store: redbreaker.Store, name: str) -> None:
    """Unicode, colons, slashes and 200 characters are accepted as breaker names."""
    breaker = Breaker(name, store=memory_store)
    assert breaker.name == name
    assert redbreaker.check_name(name) == name


BAD_PREFIXES: tuple[object, ...] = (
    "",
    ":app",
    "app:",
    ":",
    "{app}",
    "a b",
    "app*",
    "app?",
    "a[b]",
    "a\\b",
    "a\x00b",
    "a\nb",
    "x" * 201,
    None,
    5,
    b"app",
)


@pytest.mark.parametrize("prefix", BAD_PREFIXES, ids=_case_id)
def test_invalid_prefix(prefix: object) -> None:
    """An invalid key prefix is a ConfigError with field 'prefix' from connect()."""
    with pytest.raises(ConfigError) as caught:
        redbreaker.connect("memory://", prefix=prefix)  # type: ignore[arg-type]
    assert caught.value.field == "prefix"


@pytest.mark.parametrize("prefix", ["app", "app:v2", "präfix-ü", "a/b.c", "x" * 200])
def test_valid_prefix(prefix: str) -> None:
    """Colons inside, unicode and 200 characters are accepted as prefixes."""
    store = redbreaker.connect("memory://", prefix=prefix)
    try:
        assert store.prefix == prefix
    finally:
        store.close()


@pytest.mark.parametrize(
    "duration", [0, -1, NAN, INF, True, "5", [5], timedelta(0), timedelta(days=-1)], ids=_case_id
)
@pytest.mark.parametrize("order", ["force_open", "force_close", "metrics_only"])
def test_operator_duration_is_validated(
    memory_store: redbreaker.Store, order: str, duration: object
) -> None:
    """An invalid operator-order duration is a ConfigError('duration'); nothing is sent."""
    breaker = Breaker("svc", store=memory_store)
    with pytest.raises(ConfigError) as caught:
        getattr(breaker, order)(duration)
    assert caught.value.field == "duration"
    assert memory_store.breaker_names() == []  # no script ran, so no breaker was created


def test_typed_settings_list_every_config_field() -> None:
    """Breaker(**settings) and guard(**settings) are typed by TypedDicts: they name exactly
    the config fields, so a type checker sees every setting and flags a misspelt one."""
    from redbreaker._config import BreakerSettings
    from redbreaker._guard_config import GuardConfig, GuardSettings

    assert set(BreakerSettings.__annotations__) == BreakerConfig.setting_names()
    assert set(GuardSettings.__annotations__) == GuardConfig.setting_names()


def test_key_ttl_none_means_keys_that_never_expire() -> None:
    """None: an empty key_ttl_ms on the wire (the scripts then PERSIST the keys), and no
    lower bound to check."""
    config = BreakerConfig(key_ttl=None, recovery_timeout=3600)
    assert config.script_argv[13] == ""
    assert config.script_config.endswith("key_ttl_ms=")
