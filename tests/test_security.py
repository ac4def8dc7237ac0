"""Security: credentials in the URL (a password, an ACL user), the minimal ACL that
``docs/security.md`` documents (every rule needed, nothing broader), TLS via ``rediss://``,
one prefix's ACL shutting out another prefix, and nothing read from Redis ever unpickled or
evaluated.

Every server is a real ``redis-server`` started here on a free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import redis

import redbreaker
from redbreaker import Breaker, CircuitOpenError, ManualClock, State, StoreError
from redis_servers import BINARY_ENV_VAR, RedisServer, RedisServerError, redis_server_binary

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
SECURITY_DOC = REPO / "docs" / "security.md"

# The line docs/security.md gives, verbatim (test_doc_states_the_tested_acl keeps them equal).
ACL_LINE = (
    "ACL SETUSER redbreaker reset on >CHANGE-ME resetchannels ~redbreaker:* "
    "&redbreaker:events -@all +fcall +function|load +hmget +hget +hset +hdel "
    "+hgetall +del +type +pexpire +persist +zadd +zcard +zrange +zrem +zremrangebyscore "
    "+zcount +publish +time +scan +subscribe"
)
USER = "redbreaker"
# URL delimiters, a percent sign, a space and a non-ASCII letter: all must survive escaping.
USER_PASSWORD = "s3cr3t p@ss:/?#[]%&=+ ü"
ADMIN_PASSWORD = "adm1n:p@ss/w?rd#[]%&=+"  # the default user's (requirepass), no spaces
PREFIX = "redbreaker"
RECOVERY = 0.05
STOP = "zz-stop-watching"
STOP_PAYLOAD = json.dumps(
    {
        "name": STOP,
        "from_state": "closed",
        "to_state": "closed",
        "reason": "test:stop",
        "generation": 0,
        "at_ms": 0,
    }
)
LIFECYCLE_EVENTS = [
    ("closed", "open", "consecutive_failures"),
    ("open", "half_open", "recovery_timeout_elapsed"),
    ("half_open", "closed", "probes_succeeded"),
    ("closed", "forced_open", "operator:force_open"),
    ("forced_open", "closed", "reset"),
]
# redis-py >= 5 sends CLIENT SETINFO after connecting and ignores a refusal; Redis >= 7.2
# logs that refusal in ACL LOG (7.0 does not know the subcommand at all).
_TOLERATED_DENIALS = frozenset({("command", "client|setinfo")})


# --------------------------------------------------------------------------- helpers


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no", "off"}


def _skip_or_fail(what: str, hint: str) -> None:
    if _ci():
        pytest.fail(f"{what}, and CI is set: these tests must run in CI. {hint}", pytrace=False)
    pytest.skip(f"!!! {what}: the security tests that need it are SKIPPED; {hint} !!!")


def _require_redis_server() -> None:
    if redis_server_binary() is None:
        _skip_or_fail(
            "redis-server not found",
            f"install redis-server or point ${BINARY_ENV_VAR} at a redis-server binary",
        )


def _acl_rules(*, drop: str | None = None) -> list[str]:
    """The rules of ACL_LINE (after ``ACL SETUSER <user>``), with the test password."""
    tokens = shlex.split(ACL_LINE)
    assert tokens[:3] == ["ACL", "SETUSER", USER]
    rules = [f">{USER_PASSWORD}" if t == ">CHANGE-ME" else t for t in tokens[3:]]
    assert drop is None or drop in rules, drop
    return [t for t in rules if t != drop]


def _user_url(port: int, *, query: str = "", db: int = 0) -> str:
    auth = f"{quote(USER, safe='')}:{quote(USER_PASSWORD, safe='')}"
    return f"redis://{auth}@127.0.0.1:{port}/{db}{query}"


def _raises(exc_type: type[BaseException], fn: Callable[[], object]) -> bool:
    try:
        fn()
    except exc_type:
        return True
    return False


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and everything it was raised from or during."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _acl_denials(admin: redis.Redis) -> set[tuple[str, str]]:
    """(reason, object) of every ACL LOG entry, e.g. ("command", "hdel")."""
    denials = set()
    for entry in admin.execute_command("ACL", "LOG"):
        fields: dict[str, Any] = (
            entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        )
        denials.add((str(fields["reason"]), str(fields["object"])))
    return denials


def _lifecycle(
    url: str, admin: redis.Redis, *, clock: ManualClock | None = None
) -> list[tuple[str, str, str]]:
    """All of redbreaker against ``url``: creation, a trip, a probe while a second caller is
    turned away, a snapshot, a reload after FUNCTION FLUSH and SCRIPT FLUSH, operator
    orders, names, events. Returns (from, to, reason) of every event seen on the channel."""
    # The first FCALL (or EVALSHA) finds nothing: the user runs FUNCTION LOAD (SCRIPT LOAD).
    admin.function_flush("SYNC")
    admin.script_flush()
    store = redbreaker.connect(url, clock=clock)
    try:
        events = store.transitions()
        breaker = Breaker(
            "payments",
            store=store,
            failure_threshold=2,
            recovery_timeout=RECOVERY,
            on_store_error="reject",
        )
        assert breaker.call(lambda: 42) == 42
        # A failure reported in a later window bucket than the one its call was counted in:
        # the script reads that bucket with HGET (a bucket is window/10 = 6 s by default).
        permit = breaker.acquire()
        if clock is not None:
            clock.advance(6)
        permit.failure()
        assert _raises(ZeroDivisionError, lambda: breaker.call(lambda: 1 / 0))
        # The snapshot, not a call: a call after a stall longer than RECOVERY would probe.
        assert breaker.snapshot().state is State.OPEN
        if clock is None:
            time.sleep(RECOVERY * 3)  # Redis TIME moves on by itself
        else:
            clock.advance(RECOVERY)
        probe = breaker.acquire()
        assert probe.is_probe
        assert _raises(CircuitOpenError, breaker.acquire)  # the only probe slot is taken
        snapshot = breaker.snapshot()
        assert (snapshot.state, snapshot.probes_in_flight) == (State.HALF_OPEN, 1)
        # The code is gone in the middle of a probe: reloaded as the user.
        admin.function_flush("SYNC")
        admin.script_flush()
        probe.success()
        assert breaker.state is State.CLOSED
        assert breaker.force_open() is State.FORCED_OPEN  # no deadline: PERSIST
        assert breaker.reset() is State.CLOSED  # DEL of the probe leases
        assert store.breaker_names() == ["payments"]
        admin.publish(f"{PREFIX}:events", STOP_PAYLOAD)
        seen = []
        for transition in events:
            if transition.name == STOP:
                break
            previous = transition.previous.value if transition.previous else ""
            seen.append((previous, transition.current.value, transition.reason))
        events.close()
        return seen
    finally:
        store.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A redis-server whose default user needs ADMIN_PASSWORD."""
    _require_redis_server()
    with RedisServer(
        extra_args=["--requirepass", ADMIN_PASSWORD],
        client_kwargs={"password": ADMIN_PASSWORD},
    ) as server:
        yield server


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    """The default (all-powerful) user, on an empty server where USER has exactly the
    documented ACL and ACL LOG is empty."""
    with acl_server.client(decode_responses=True) as client:
        client.flushall()
        client.script_flush()
        client.function_flush("SYNC")
        client.execute_command("ACL", "SETUSER", USER, *_acl_rules())
        client.execute_command("ACL", "LOG", "RESET")
        yield client


# --------------------------------------------------------------------------- auth in the URL


@pytest.mark.parametrize("username", ["", "default"])
@pytest.mark.slow
@pytest.mark.redis_server
def test_requirepass_url_with_escaped_password(
    acl_server: RedisServer, admin: redis.Redis, username: str
) -> None:
    """A requirepass password full of URL delimiters, percent-escaped in the URL, works for
    the whole lifecycle, with or without the ``default`` user name."""
    url = f"redis://{username}:{quote(ADMIN_PASSWORD, safe='')}@127.0.0.1:{acl_server.port}/0"
    assert _lifecycle(url, admin, clock=ManualClock()) == LIFECYCLE_EVENTS


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.slow
@pytest.mark.redis_server
def test_acl_user_runs_the_whole_lifecycle_under_the_documented_acl(
    acl_server: RedisServer, admin: redis.Redis, protocol: int
) -> None:
    """Under exactly the documented ACL (and Redis TIME, as in production), an ACL user from
    the URL trips, probes, closes, inspects, reloads scripts, orders, lists and watches, and
    Redis denied it nothing on the way (ACL LOG stays empty); RESP2 (AUTH) and RESP3
    (HELLO AUTH) alike."""
    url = _user_url(acl_server.port, query=f"?protocol={protocol}")
    assert _lifecycle(url, admin) == LIFECYCLE_EVENTS
    assert _acl_denials(admin) - _TOLERATED_DENIALS == set()


@pytest.mark.slow
@pytest.mark.redis_server
def test_an_acl_with_evalsha_instead_of_fcall_still_works(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    """The ACL of redbreaker releases before Functions (EVALSHA and SCRIPT LOAD instead of
    FCALL and FUNCTION LOAD) still runs the whole lifecycle: each store is refused one
    FCALL, then runs the same scripts by EVALSHA."""
    rules = [
        {"+fcall": "+evalsha", "+function|load": "+script|load"}.get(t, t) for t in _acl_rules()
    ]
    admin.execute_command("ACL", "SETUSER", USER, *rules)
    assert _lifecycle(_user_url(acl_server.port), admin, clock=ManualClock()) == LIFECYCLE_EVENTS
    assert _acl_denials(admin) - _TOLERATED_DENIALS == {("command", "fcall")}


def _granting_rules() -> list[str]:
    """The rules that grant something: commands, the key pattern, the channel."""
    return [t for t in _acl_rules() if t[0] in "+~&"]


@pytest.mark.parametrize("rule", _granting_rules())
@pytest.mark.slow
@pytest.mark.redis_server
def test_every_rule_of_the_acl_is_needed(
    acl_server: RedisServer, admin: redis.Redis, rule: str
) -> None:
    """Without any one command, key pattern or channel of the ACL, the lifecycle fails, and
    ACL LOG names exactly what was refused."""
    admin.execute_command("ACL", "SETUSER", USER, *_acl_rules(drop=rule))
    # Only the scripts' TIME needs the real clock; the rest runs on a ManualClock.
    clock = None if rule == "+time" else ManualClock()
    with pytest.raises((redbreaker.RedbreakerError, redis.RedisError, AssertionError)):
        _lifecycle(_user_url(acl_server.port), admin, clock=clock)
    expected = {
        "~": ("key", f"{PREFIX}:{{payments}}"),
        "&": ("channel", f"{PREFIX}:events"),
        "+": ("command", rule[1:]),
    }[rule[0]]
    assert expected in _acl_denials(admin)


@pytest.mark.slow
@pytest.mark.redis_server
def test_a_refused_record_is_only_logged(
    acl_server: RedisServer, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that refuses a command the record script needs to trip (HDEL) never masks the
    call's own exception: each refusal is one record_failed WARNING, the breaker never opens,
    and the writes the script made before the refusal stay (Redis does not roll back)."""
    admin.execute_command("ACL", "SETUSER", USER, *_acl_rules(drop="+hdel"))
    store = redbreaker.connect(_user_url(acl_server.port), clock=ManualClock())
    try:
        breaker = Breaker("payments", store=store, failure_threshold=1)
        with caplog.at_level(logging.WARNING, logger="redbreaker"):
            for _ in range(3):
                assert _raises(ZeroDivisionError, lambda: breaker.call(lambda: 1 / 0))
        snapshot = breaker.snapshot()
    finally:
        store.close()
    failed = [r for r in caplog.records if getattr(r, "event", None) == "record_failed"]
    assert len(failed) == 3
    assert "can't run this command" in failed[0].getMessage()
    assert (snapshot.state, snapshot.consecutive_failures, snapshot.open_count) == (
        State.CLOSED,
        3,
        0,
    )
    assert _acl_denials(admin) == {("command", "hdel")}


@pytest.mark.slow
@pytest.mark.redis_server
def test_acl_user_can_do_nothing_broader(acl_server: RedisServer, admin: redis.Redis) -> None:
    """The ACL user cannot read or write keys outside the prefix, run commands it was not
    given (inside the prefix either), flush, configure, EVAL, touch other channels, or
    escape through a script it loads itself; it can write breaker keys directly (an ACL
    cannot confine commands to the scripts), which docs/security.md says."""
    admin.set("other:secret", "kept")
    outside = "other:{payments}"
    with redis.Redis.from_url(_user_url(acl_server.port), decode_responses=True) as user:
        denied: list[Callable[[], object]] = [
            lambda: user.get("other:secret"),
            lambda: user.set("other:secret", "stolen"),
            lambda: user.set(f"{PREFIX}:x", "1"),  # a key it may touch, a command it may not
            lambda: user.hset(outside, "state", "closed"),  # a command it may, a key it may not
            lambda: user.hgetall(outside),
            lambda: user.delete("other:secret"),
            user.flushall,
            user.flushdb,
            lambda: user.config_get("*"),
            lambda: user.config_set("appendonly", "yes"),
            lambda: user.keys("*"),
            lambda: user.eval("return 1", 0),
            lambda: user.script_load("return 1"),
            user.script_flush,
            lambda: user.publish("other:events", "x"),
            lambda: user.execute_command("ACL", "SETUSER", USER, "+@all"),
            lambda: user.execute_command("CLIENT", "KILL", "TYPE", "normal"),
            lambda: user.execute_command("FUNCTION", "FLUSH"),
        ]
        for attempt in denied:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        pubsub = user.pubsub()
        pubsub.subscribe("other:events")
        with pytest.raises(redis.exceptions.NoPermissionError):
            pubsub.get_message(timeout=5.0)  # the refusal is the subscription's reply
        pubsub.close()

        # FUNCTION LOAD is granted, so any Lua library can be loaded and run by FCALL, but
        # every command inside is checked against the same ACL: a function can do nothing
        # its user could not.
        user.function_load(
            "#!lua name=acl_probe\n"
            "redis.register_function('read_any', function(k) return redis.call('GET', k[1]) end)\n"
            "redis.register_function('read_other',"
            " function() return redis.call('HGETALL', 'other:x') end)\n"
            "redis.register_function('flush_all', function() return redis.call('FLUSHALL') end)\n"
            "redis.register_function('publish_other',"
            " function() return redis.call('PUBLISH', 'other:e', 'x') end)\n",
            replace=True,
        )
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.fcall("read_any", 1, "other:secret")  # declared key outside the pattern
        functions = [  # (function, keys, what the refusal names)
            ("read_any", [f"{PREFIX}:x"], "run this command"),  # GET: not granted at all
            ("read_other", [], "keys"),
            ("flush_all", [], "run this command"),
            ("publish_other", [], "channel"),
        ]
        for function, keys, refusal in functions:
            with pytest.raises(redis.ResponseError) as refused:
                user.fcall(function, len(keys), *keys)
            assert "The user executing the script can't" in str(refused.value)
            assert refusal in str(refused.value)

        # What the ACL does allow, said honestly: direct writes to the breaker keys.
        assert user.hset(f"{PREFIX}:{{payments}}", "state", "forced_open") == 1
    assert admin.get("other:secret") == "kept"
    assert admin.dbsize() == 2


@pytest.mark.slow
@pytest.mark.redis_server
def test_a_non_zero_database_needs_select(acl_server: RedisServer, admin: redis.Redis) -> None:
    """redis-py sends SELECT on connect for /1: the documented ACL refuses it (a StoreError
    from a NOPERM at the first call), and adding +select is all it takes."""
    url = _user_url(acl_server.port, db=1)
    store = redbreaker.connect(url)
    try:
        with pytest.raises(StoreError) as refused:
            Breaker("payments", store=store).call(lambda: 1)
        assert isinstance(refused.value.__cause__, redis.exceptions.NoPermissionError)
        assert "'select'" in str(refused.value)
    finally:
        store.close()
    admin.execute_command("ACL", "SETUSER", USER, "+select")
    store = redbreaker.connect(url)
    try:
        assert Breaker("payments", store=store).call(lambda: 7) == 7
    finally:
        store.close()
    assert admin.exists(f"{PREFIX}:{{payments}}") == 0
    with acl_server.client(db=1) as db1:
        assert db1.exists(f"{PREFIX}:{{payments}}") == 1
        db1.flushdb()


@pytest.mark.parametrize(
    "credentials",
    [f"{USER}:wrong", f"{USER}:", ":wrong", "default:wrong", "nobody:x", ""],
    ids=[
        "user-wrong",
        "user-no-password",
        "default-wrong",
        "default-named-wrong",
        "no-user",
        "none",
    ],
)
@pytest.mark.slow
@pytest.mark.redis_server
def test_wrong_credentials_at_the_first_call(
    acl_server: RedisServer, admin: redis.Redis, credentials: str
) -> None:
    """Bad credentials surface at the first call, not at connect(), as a StoreError chained
    to redis-py's AuthenticationError under every on_store_error policy: a configuration
    error is not an outage, so no policy runs calls unguarded because of it and no
    store_degraded is reported. breaker_names() and transitions() raise StoreError too."""
    at = f"{credentials}@" if credentials else ""
    url = f"redis://{at}127.0.0.1:{acl_server.port}/0"
    store_events: list[redbreaker.StoreEvent] = []
    store = redbreaker.connect(url, on_store_event=store_events.append)
    ran: list[str] = []
    try:
        for policy in ("reject", "allow", "local"):
            breaker = Breaker("payments", store=store, on_store_error=policy)
            with pytest.raises(redbreaker.StoreError) as refused:
                breaker.call(ran.append, policy)
            assert isinstance(refused.value.__cause__, redis.AuthenticationError)
        assert store_events == []
        with pytest.raises(redbreaker.StoreError) as listing:
            store.breaker_names()
        assert isinstance(listing.value.__cause__, redis.AuthenticationError)
        with pytest.raises(redbreaker.StoreError) as watching:
            store.transitions()
        assert isinstance(watching.value.__cause__, redis.AuthenticationError)
    finally:
        store.close()
    assert ran == []
    assert admin.dbsize() == 0


# --------------------------------------------------------------------------- one prefix per ACL


@pytest.mark.slow
@pytest.mark.redis_server
def test_acl_for_one_prefix_denies_another_prefix(
    acl_server: RedisServer, admin: redis.Redis
) -> None:
    """A store with prefix "billing" under the user of prefix "redbreaker" is refused with
    NOPERM at the first call (StoreError chained to redis-py's NoPermissionError; the call
    does not run), and for snapshots, orders and its channel, and billing's breaker is left
    as it was. SCAN is not filtered by key patterns: breaker_names() still lists billing's
    names (docs/security.md says so)."""
    admin_url = f"redis://:{quote(ADMIN_PASSWORD, safe='')}@127.0.0.1:{acl_server.port}/0"
    billing_admin = redbreaker.connect(admin_url, prefix="billing")
    try:
        invoices = Breaker("invoices", store=billing_admin)
        assert invoices.call(lambda: 1) == 1
        before = invoices.snapshot()

        foreign = redbreaker.connect(_user_url(acl_server.port), prefix="billing")
        ran: list[int] = []
        try:
            breaker = Breaker("invoices", store=foreign)
            for attempt in (
                lambda: breaker.call(ran.append, 1),
                breaker.snapshot,
                breaker.force_open,
            ):
                with pytest.raises(StoreError) as refused:
                    attempt()
                assert isinstance(refused.value.__cause__, redis.exceptions.NoPermissionError)
                assert "no permissions to access one of the keys" in str(refused.value)
            with pytest.raises(StoreError, match="channels") as unsubscribed:
                foreign.transitions()
            assert isinstance(unsubscribed.value.__cause__, redis.exceptions.NoPermissionError)
            assert foreign.breaker_names() == ["invoices"]  # the SCAN leak, names only
        finally:
            foreign.close()
        assert ran == []
        after = invoices.snapshot()
        assert (after.state, after.generation, after.window_calls) == (
            before.state,
            before.generation,
            before.window_calls,
        )
    finally:
        billing_admin.close()
    assert ("key", "billing:{invoices}") in _acl_denials(admin)
    assert ("channel", "billing:events") in _acl_denials(admin)


# --------------------------------------------------------------------------- TLS


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
_LEAF = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"


def _openssl(workdir: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)


def _issue(workdir: Path, name: str, subject: str, extensions: str) -> None:
    """A P-256 key and a certificate for it, signed by the CA in ``workdir``."""
    (workdir / f"{name}.ext").write_text(_LEAF + extensions)
    csr, crt = f"{name}.csr", f"{name}.crt"
    _openssl(workdir, "req", *_EC_KEY, "-keyout", f"{name}.key", "-out", csr, "-subj", subject)
    signing = ("-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2")
    _openssl(workdir, "x509", "-req", "-in", csr, *signing, "-out", crt, "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for IP 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        _skip_or_fail("openssl not found", "install openssl (Debian/Ubuntu: apt install openssl)")
    workdir = tmp_path_factory.mktemp("tls")
    ca_extensions = (
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(workdir, "req", "-x509", *_EC_KEY, "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=redbreaker test CA", *ca_extensions)  # fmt: skip
    server_extensions = "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n"
    _issue(workdir, "server", "/CN=127.0.0.1", server_extensions)
    _issue(workdir, "client", "/CN=redbreaker-client", "extendedKeyUsage=clientAuth\n")
    return workdir


def _tls_server(certs: Path, *, auth_clients: str) -> RedisServer:
    """A TLS-only redis-server (``--port 0``); the helper's own PINGs go over TLS too."""
    _require_redis_server()
    server = RedisServer(
        extra_args=[
            "--tls-port", "{port}", "--port", "0",
            "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", auth_clients,
        ],
        client_kwargs={
            "ssl": True,
            "ssl_ca_certs": str(certs / "ca.crt"),
            "ssl_certfile": str(certs / "client.crt"),
            "ssl_keyfile": str(certs / "client.key"),
        },
    )  # fmt: skip
    try:
        server.start()
    except RedisServerError as exc:
        server.close()
        if "tls" in str(exc).lower():
            _skip_or_fail(
                "this redis-server cannot serve TLS",
                f"use a redis-server built with BUILD_TLS=yes. {str(exc)[-300:]}",
            )
        raise
    return server


@pytest.fixture(scope="module")
def tls_server(certs: Path) -> Iterator[RedisServer]:
    """TLS only, no client certificates required."""
    server = _tls_server(certs, auth_clients="no")
    yield server
    server.close()


def _tls_url(server: RedisServer, *, host: str = "127.0.0.1", **query: str) -> str:
    text = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in query.items())
    return f"rediss://{host}:{server.port}/0" + (f"?{text}" if text else "")


def _unreachable(url: str) -> list[BaseException]:
    """The exception chain of the first call through a fail-closed breaker on ``url``."""
    store = redbreaker.connect(url)
    try:
        with pytest.raises(redbreaker.StoreUnavailableError) as refused:
            Breaker("payments", store=store, on_store_error="reject").call(lambda: 1)
    finally:
        store.close()
    chain = _chain(refused.value)
    assert isinstance(chain[1], redis.ConnectionError)
    return chain


@pytest.mark.slow
@pytest.mark.redis_server
def test_rediss_url_with_the_ca_runs_the_lifecycle(tls_server: RedisServer, certs: Path) -> None:
    """rediss:// with ?ssl_ca_certs= trips, probes, closes, inspects, lists and watches
    over TLS on a server that has no plain-text port."""
    url = _tls_url(tls_server, ssl_ca_certs=str(certs / "ca.crt"))
    with tls_server.client(decode_responses=True) as admin:
        admin.flushall()
        assert admin.config_get("port") == {"port": "0"}
        assert _lifecycle(url, admin, clock=ManualClock()) == LIFECYCLE_EVENTS


@pytest.mark.slow
@pytest.mark.redis_server
def test_rediss_refuses_a_server_it_cannot_verify(tls_server: RedisServer, certs: Path) -> None:
    """A client that does not trust the CA, or that reaches the server by a name its
    certificate does not carry, fails the handshake (ssl.SSLCertVerificationError in a
    redis-py ConnectionError, as StoreUnavailableError); plain redis:// gets no answer."""
    untrusted = _unreachable(_tls_url(tls_server))
    assert isinstance(untrusted[2], ssl.SSLCertVerificationError)
    assert "self-signed certificate in certificate chain" in str(untrusted[2])

    wrong_name = _unreachable(
        _tls_url(tls_server, host="localhost", ssl_ca_certs=str(certs / "ca.crt"))
    )
    assert isinstance(wrong_name[2], ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(wrong_name[2])

    plain = _unreachable(f"redis://127.0.0.1:{tls_server.port}/0")
    assert not any(isinstance(e, ssl.SSLError) for e in plain)


@pytest.mark.slow
@pytest.mark.redis_server
def test_rediss_with_a_client_certificate(certs: Path) -> None:
    """Against --tls-auth-clients yes, ?ssl_certfile=&ssl_keyfile= in the URL present the
    client certificate and calls work; without it the server ends the handshake."""
    server = _tls_server(certs, auth_clients="yes")
    try:
        ca = str(certs / "ca.crt")
        url = _tls_url(
            server,
            ssl_ca_certs=ca,
            ssl_certfile=str(certs / "client.crt"),
            ssl_keyfile=str(certs / "client.key"),
        )
        store = redbreaker.connect(url)
        try:
            breaker = Breaker("payments", store=store, failure_threshold=1)
            assert _raises(ZeroDivisionError, lambda: breaker.call(lambda: 1 / 0))
            assert breaker.state is State.OPEN
        finally:
            store.close()
        no_cert = _unreachable(_tls_url(server, ssl_ca_certs=ca))
        # TLS 1.3 sends the refusal after the client's handshake ends: depending on timing
        # it surfaces as CERTIFICATE_REQUIRED, an EOF or a reset; an OSError each time.
        assert any(isinstance(e, OSError) for e in no_cert[2:])
    finally:
        server.close()


# --------------------------------------------------------------------------- no eval, no pickle

_PYTHON_FORBIDDEN = {
    "pickle": re.compile(r"\b(c?pickle|jsonpickle|dill|cloudpickle)\b"),
    "marshal": re.compile(r"\bmarshal\b"),
    "shelve": re.compile(r"\bshelve\b"),
    "literal_eval": re.compile(r"\bliteral_eval\b"),
    "yaml.load": re.compile(r"\byaml\b"),
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
    "compile(": re.compile(r"(?<![\w.])compile\s*\("),
    "__import__": re.compile(r"\b__import__\b"),
}
_LUA_FORBIDDEN = {
    "loadstring": re.compile(r"\bloadstring\b"),
    "load(": re.compile(r"(?<![\w.:])load\s*\("),
    "dofile": re.compile(r"\b(dofile|loadfile)\b"),
}


def _hits(lines: list[str], patterns: dict[str, re.Pattern[str]]) -> list[str]:
    return [name for line in lines for name, pattern in patterns.items() if pattern.search(line)]


def _offences(paths: list[Path], patterns: dict[str, re.Pattern[str]]) -> list[str]:
    return [
        f"{path.name}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _hits([line], patterns)
    ]


def test_nothing_read_from_redis_is_unpickled_or_evaluated() -> None:
    """The library's Python has no pickle, marshal, shelve, literal_eval, yaml, eval(),
    exec(), compile() or __import__, and its Lua no loadstring/load/dofile: what Redis holds
    is only ever parsed as JSON or numbers (EVALSHA, script_load and re.compile are fine)."""
    sources = sorted((REPO / "src" / "redbreaker").glob("*.py"))
    scripts = sorted((REPO / "lua").glob("*.lua"))
    assert len(sources) >= 10
    assert len(scripts) == 5
    assert _offences(sources, _PYTHON_FORBIDDEN) == []
    assert _offences(scripts, _LUA_FORBIDDEN) == []
    # The patterns catch what they must and spare what they must (so this test can fail).
    bad = ["x = eval(raw)", "y = exec (raw)", "import pickle", "yaml.load(s)", "literal_eval(s)"]
    expected = ["eval(", "exec(", "pickle", "yaml.load", "literal_eval"]
    assert _hits(bad, _PYTHON_FORBIDDEN) == expected
    fine = ["client.evalsha(sha)", "self.eval(x)", "re.compile(p)", "EVALSHA", "unpickled"]
    assert _hits(fine, _PYTHON_FORBIDDEN) == []
    lua = ["local f = loadstring(s)", "local f = load(s)", "dofile(p)", "cjson.encode(t)"]
    assert _hits(lua, _LUA_FORBIDDEN) == ["loadstring", "load(", "dofile"]


# --------------------------------------------------------------------------- the doc


def test_doc_states_the_tested_acl() -> None:
    """docs/security.md gives ACL_LINE verbatim, and its table explains exactly the
    commands the line grants."""
    text = SECURITY_DOC.read_text(encoding="utf-8")
    assert ACL_LINE in text
    granted = {t for t in shlex.split(ACL_LINE) if t.startswith("+")}
    rows = re.findall(r"^\| `(\+[a-z\\|]+)` \|", text, flags=re.MULTILINE)
    explained = {row.replace("\\|", "|") for row in rows}  # a table cell escapes its pipe
    assert explained == granted
