"""One test source for both drivers: ``redbreaker`` (sync) and ``redbreaker.aio``.

A test takes the ``driver`` fixture (``sync`` or ``aio``, see ``conftest.py``) and writes
sync-looking code against what :class:`Driver` hands out::

    store = driver.connect("memory://", clock=clock)
    breaker = driver.breaker("dep", store=store, failure_threshold=3)
    breaker.call(fn)
    with breaker.acquire() as permit: ...
    breaker.snapshot(); breaker.force_open(); breaker.guard(retry_on=...).outcome(fn)

The sync driver hands out the library's own objects, untouched: a sync run is exactly the
test as written. The aio driver hands out thin facades of the ``redbreaker.aio`` objects
that await each call on an event loop owned by the driver (one per test, closed with every
store at teardown). Nothing is decided in a facade: each method awaits the aio method of
the same name with the same arguments and hands back its result or exception.

The functions a test gives a breaker or a guard are plain callables; for the aio driver
each one is turned into an ``async def`` that calls it, so the dependency runs as a
coroutine inside the awaited call. A dependency that itself calls a breaker of the test
(an order, another breaker's call) must be wrapped with :meth:`Driver.nested`: for the aio
driver it then runs in a worker thread whose breaker calls are sent to the loop, which is
awaiting it meanwhile. :meth:`Driver.concurrently` runs callables at once the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, TypeAlias

import redis
import redis.asyncio

import redbreaker
from redbreaker import aio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

__all__ = ["KINDS", "AnyBreaker", "AnyStore", "Driver", "TasksLeftPendingError", "unwrap"]

KINDS = ("sync", "aio")

AnyStore: TypeAlias = "redbreaker.Store | AioStore"
"""What ``Driver.connect`` returns (and the ``store`` fixture, with a driver)."""
AnyBreaker: TypeAlias = "redbreaker.Breaker | AioBreaker"
"""What ``Driver.breaker`` returns."""


class TasksLeftPendingError(AssertionError):
    """Tasks of the aio driver's loop were still running after every store was closed."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"tasks left pending after every store was closed: {names}")
        self.names = names


def unwrap(obj: Any) -> Any:
    """The library's own object behind a facade (``obj`` itself for the sync driver)."""
    return obj.raw if isinstance(obj, _Facade) else obj


async def _outcome(awaitable: Awaitable[Any]) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, the exception)``: a BaseException (KeyboardInterrupt,
    a CancelledError the code raised) is handed back as it is, after the code under test
    has seen it, instead of stopping or cancelling the loop's run."""
    try:
        return True, await awaitable
    except BaseException as exc:  # re-raised by Driver.run
        return False, exc


class Driver:
    """Builds stores and breakers of one driver and runs their calls (see the module)."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown driver {kind!r}")
        self.kind = kind
        self.is_aio = kind == "aio"
        self.api: Any = aio if self.is_aio else redbreaker
        """The driver's module: ``redbreaker.aio`` or ``redbreaker`` (its classes)."""
        self.loop: asyncio.AbstractEventLoop | None = (
            asyncio.new_event_loop() if self.is_aio else None
        )
        self._stores: list[Any] = []
        self._recipes: dict[int, tuple[Any, bool | None]] = {}  # by id() of an open store
        self._as_async: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<Driver {self.kind}>"

    # -- running ---------------------------------------------------------------------------

    def run(self, value: Any) -> Any:
        """``value``, or (aio) what the awaitable ``value`` gives on this driver's loop.

        Called from a worker thread (:meth:`nested`, :meth:`concurrently`) while the loop
        runs, the awaitable is sent to the loop and the thread waits for it.
        """
        if not inspect.isawaitable(value):
            return value
        loop = self.loop
        assert loop is not None, "an awaitable on the sync driver"
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if inspect.iscoroutine(value):
                value.close()
            raise RuntimeError(
                "a breaker call made inside a dependency running on the loop: "
                "wrap the dependency with driver.nested()"
            )
        if loop.is_running():
            ok, result = asyncio.run_coroutine_threadsafe(_outcome(value), loop).result()
        else:
            ok, result = loop.run_until_complete(_outcome(value))
        if not ok:
            raise result
        return result

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of real time pass; the aio driver's loop runs meanwhile (its
        transition feed and background tasks run, as a sync store's threads do)."""
        if self.is_aio:
            self.run(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)

    def wait_for(self, predicate: Callable[[], bool], what: str, limit: float = 5.0) -> float:
        """Poll ``predicate`` (real time, see :meth:`sleep`) until true; return how long
        it took."""
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > limit:
                raise AssertionError(f"not within {limit}s: {what}")
            self.sleep(0.001)
        return time.monotonic() - start

    def as_async(self, fn: Any) -> Any:
        """What the driver's breakers are given for the test's callable ``fn``: ``fn``
        itself (sync driver; a coroutine function or a function decorated by an aio
        breaker or guard), else an ``async def`` calling it (the same one each time)."""
        if not self.is_aio:
            return fn
        if isinstance(fn, _Facade):
            return fn.raw
        if inspect.iscoroutinefunction(fn):
            return fn
        try:
            return self._as_async[fn]
        except (KeyError, TypeError):
            pass

        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        if inspect.isfunction(fn) or inspect.ismethod(fn):
            functools.update_wrapper(coroutine, fn)
        with contextlib.suppress(TypeError):  # not weakly referable: made again next time
            self._as_async[fn] = coroutine
        return coroutine

    def nested(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` for a dependency that calls breakers itself: for the aio driver, an
        ``async def`` that runs ``fn`` in a worker thread, whose breaker calls the loop
        runs while this coroutine awaits the thread."""
        if not self.is_aio:
            return fn

        async def in_a_thread(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kwargs)

        return in_a_thread

    def concurrently(self, *fns: Callable[[], Any]) -> list[Any]:
        """Run ``fns`` at once, each in a thread of its own released by one barrier; return
        what each returned or raised (an Exception), in order. For the aio driver their
        breaker calls are in flight on the loop together."""
        gate = threading.Barrier(len(fns))

        def each(fn: Callable[[], Any]) -> Any:
            gate.wait(5)
            try:
                return fn()
            except Exception as exc:  # handed back to the test
                return exc

        if self.is_aio:

            async def together() -> list[Any]:
                return list(await asyncio.gather(*(asyncio.to_thread(each, fn) for fn in fns)))

            results: list[Any] = self.run(together())
            return results
        out: list[Any] = [None] * len(fns)

        def slot(i: int, fn: Callable[[], Any]) -> None:
            out[i] = each(fn)

        threads = [threading.Thread(target=slot, args=(i, fn)) for i, fn in enumerate(fns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return out

    # -- building ----------------------------------------------------------------------------

    def connect(self, target: Any, *, decode_responses: bool | None = None, **kw: Any) -> Any:
        """A store of this driver on ``target`` (a URL or a client of this driver), closed
        at teardown. With ``decode_responses``, the store gets a client built from the URL
        with that setting (as the ``store`` fixture does for a real server)."""
        given = target
        if decode_responses is not None:
            client_type = redis.asyncio.Redis if self.is_aio else redis.Redis
            target = client_type.from_url(target, decode_responses=decode_responses)
        if self.is_aio:
            store: Any = AioStore(self, aio.connect(target, **kw))
        else:
            store = redbreaker.connect(target, **kw)
        self._stores.append(store)
        self._recipes[id(store)] = (given, decode_responses)
        return store

    def reconnect(self, store: Any, **kw: Any) -> Any:
        """Another store on ``store``'s data, with a client of its own (another process, in
        effect); ``store`` must come from :meth:`connect` with a URL (``memory://<name>``
        for the embedded Redis)."""
        target, decode_responses = self._recipes[id(store)]
        assert isinstance(target, str), "reconnect() needs a store built from a URL"
        assert target != "memory://", "a private memory:// store has no other client"
        return self.connect(target, decode_responses=decode_responses, **kw)

    def breaker(self, name: str, *, store: Any, **settings: Any) -> Any:
        """A breaker of this driver (``redbreaker.Breaker`` or a facade of an aio one)."""
        if self.is_aio:
            assert isinstance(store, AioStore), store
            return AioBreaker(self, store, aio.Breaker(name, store=store.raw, **settings))
        return redbreaker.Breaker(name, store=store, **settings)

    @property
    def guarded_function_type(self) -> type:
        """The class of a function decorated by a guard of this driver."""
        if self.is_aio:
            from redbreaker.aio._guard import GuardedFunction

            return GuardedFunction
        return redbreaker.GuardedFunction

    # -- teardown ----------------------------------------------------------------------------

    def close_store(self, store: Any) -> None:
        if store in self._stores:
            self._stores.remove(store)
            del self._recipes[id(store)]
            if self.is_aio:
                self.run(unwrap(store).aclose())
            else:
                store.close()

    def close(self) -> None:
        """Close every store this driver opened, then (aio) its loop.

        Raises:
            TasksLeftPendingError: (aio) tasks were still pending a second after the stores were
                closed (cancelled then, and named): the code under test leaked them.
        """
        for store in list(self._stores):
            self.close_store(store)
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        leaked: set[asyncio.Task[Any]] = set()
        try:
            pending = asyncio.all_tasks(loop)
            if pending:  # a release sent in a task of its own may still be on its way
                _, leaked = loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            for task in leaked:
                task.cancel()
            if leaked:
                loop.run_until_complete(asyncio.gather(*leaked, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
        if leaked:
            raise TasksLeftPendingError(sorted(task.get_name() for task in leaked))


# ----------------------------------------------------------------------------- facades


class _Facade:
    """A ``redbreaker.aio`` object behind the surface of its sync twin. Attributes that are
    not coroutine methods (``name``, ``config``, ``_core``, ``degraded_counts``...) are the
    aio object's own, read and set through the facade."""

    _own: tuple[str, ...] = ("raw", "_driver")

    def __init__(self, driver: Driver, raw: Any) -> None:
        object.__setattr__(self, "_driver", driver)
        object.__setattr__(self, "raw", raw)

    def __getattr__(self, name: str) -> Any:
        value = getattr(object.__getattribute__(self, "raw"), name)
        if inspect.iscoroutinefunction(value):
            raise AttributeError(f"{type(self).__name__} has no facade for {name}() yet")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self)._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    def __repr__(self) -> str:
        return f"<facade of {self.raw!r}>"

    def _run(self, value: Any) -> Any:
        return self._driver.run(value)


class _Client:
    """A ``redis.asyncio`` client whose commands are awaited on the driver's loop."""

    def __init__(self, driver: Driver, raw: Any) -> None:
        self._driver = driver
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.raw, name)
        if not callable(value):
            return value

        def command(*args: Any, **kwargs: Any) -> Any:
            return self._driver.run(value(*args, **kwargs))

        return command


class AioStore(_Facade):
    """An ``aio.Store`` with ``redbreaker.Store``'s surface."""

    _own = ("raw", "_driver", "client")

    def __init__(self, driver: Driver, raw: aio.Store) -> None:
        super().__init__(driver, raw)
        self.client = _Client(driver, raw.client)

    def start_feed(self) -> None:
        async def start() -> None:  # the feed is a task of the running loop
            self.raw.start_feed()

        self._run(start())

    def breaker_names(self) -> list[str]:
        names: list[str] = self._run(self.raw.breaker_names())
        return names

    def close(self) -> None:
        self._driver.close_store(self)


class AioPermit(_Facade):
    """An ``aio.Permit``: ``success()``, ``failure(exc)``, ``release()``, and ``with``
    as ``async with`` (the same ``__aexit__``)."""

    def success(self) -> None:
        self._run(self.raw.success())

    def failure(self, exc: BaseException | None = None) -> None:
        self._run(self.raw.failure(exc))

    def release(self) -> None:
        self._run(self.raw.release())

    def __enter__(self) -> AioPermit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._run(self.raw.__aexit__(exc_type, exc, tb))


class AioBreaker(_Facade):
    """An ``aio.Breaker`` with ``redbreaker.Breaker``'s surface."""

    _own = ("raw", "_driver", "store")

    def __init__(self, driver: Driver, store: AioStore, raw: aio.Breaker) -> None:
        super().__init__(driver, raw)
        self.store = store

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.raw.call(self._driver.as_async(fn), *args, **kwargs))

    def acquire(self, **kwargs: Any) -> AioPermit:
        return AioPermit(self._driver, self._run(self.raw.acquire(**kwargs)))

    def wait_admitting(self, *args: Any, **kwargs: Any) -> bool:
        admitting: bool = self._run(self.raw.wait_admitting(*args, **kwargs))
        return admitting

    def snapshot(self) -> redbreaker.Snapshot:
        snap: redbreaker.Snapshot = self._run(self.raw.snapshot())
        return snap

    @property
    def state(self) -> redbreaker.State:
        return self.snapshot().state

    def flush(self) -> None:
        self._run(self.raw.flush())

    def force_open(self, duration: Any = None) -> redbreaker.State:
        state: redbreaker.State = self._run(self.raw.force_open(duration))
        return state

    def force_close(self, duration: Any = None) -> redbreaker.State:
        state: redbreaker.State = self._run(self.raw.force_close(duration))
        return state

    def metrics_only(self, duration: Any = None) -> redbreaker.State:
        state: redbreaker.State = self._run(self.raw.metrics_only(duration))
        return state

    def reset(self) -> redbreaker.State:
        state: redbreaker.State = self._run(self.raw.reset())
        return state

    def guard(self, config: Any = None, **settings: Any) -> AioGuard:
        return AioGuard(self._driver, self.raw.guard(config, **settings))

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        decorated = self.raw(self._driver.as_async(fn))

        @functools.wraps(decorated)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self._run(decorated(*args, **kwargs))

        return guarded


class AioGuard(_Facade):
    """An aio ``Guard`` with ``redbreaker.Guard``'s surface."""

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.raw.call(self._driver.as_async(fn), *args, **kwargs))

    def outcome(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.raw.outcome(self._driver.as_async(fn), *args, **kwargs))

    def __call__(self, fn: Callable[..., Any]) -> AioGuardedFunction:
        return AioGuardedFunction(self._driver, self.raw(self._driver.as_async(fn)))


class AioGuardedFunction(_Facade):
    """A function decorated by an aio guard, called (and bound as a method) like one
    decorated by a sync guard. Its ``__wrapped__`` is the aio ``GuardedFunction``."""

    _own = ("raw", "_driver", "__wrapped__", "__name__", "__qualname__", "__doc__", "__module__")

    def __init__(self, driver: Driver, raw: Any) -> None:
        super().__init__(driver, raw)
        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            object.__setattr__(self, attribute, getattr(raw, attribute))
        object.__setattr__(self, "__wrapped__", raw)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.raw(*args, **kwargs))

    def outcome(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.raw.outcome(*args, **kwargs))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return AioGuardedFunction(self._driver, self.raw.__get__(instance, owner))
