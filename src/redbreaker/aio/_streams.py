"""A Redis Streams consumer guarded by a breaker, asyncio driver: the twin of
:class:`redbreaker.StreamConsumer`, with the same settings and the same decisions (they
live in :mod:`redbreaker._streams_core`), awaited.

::

    payments = redbreaker.aio.Breaker("payments-api", store=store)

    async def handle(message: redbreaker.StreamMessage) -> None:
        await charge(message.fields["order"])

    consumer = redbreaker.aio.StreamConsumer(
        payments, "redis://queue-host:6379/0", stream="orders", group="billing",
        handler=handle,
    )
    await consumer.run(install_signal_handlers=True)   # until SIGTERM/SIGINT or stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from .._callables import require_async
from .._exceptions import CircuitOpenError, ConfigError
from .._memory import fakeredis_module, memory_server
from .._streams_base import SOCKET_SLACK, ConsumerBase, url_spec
from .._streams_core import (
    FailureVerdict,
    Read,
    StreamMessage,
    StreamStats,
    is_busygroup,
    is_nogroup,
)
from ._breaker import Breaker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from typing_extensions import Unpack

    from .._streams_base import StreamSettings
    from ._permit import Permit

__all__ = ["StreamConsumer"]

_STREAM_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class StreamConsumer(ConsumerBase):
    """Consume one stream through a consumer group while ``breaker`` admits: the asyncio
    twin of :class:`redbreaker.StreamConsumer` (same arguments; ``handler`` is a coroutine
    function, ``client`` a ``redis.asyncio`` client or a URL).

    Raises:
        ConfigError: a bad setting, handler, breaker or client (nothing is sent to Redis
            before :meth:`run`).
    """

    _api = "redbreaker.aio"
    _breaker_type = Breaker
    _client_hint = "a redis.asyncio client"
    client: redis.asyncio.Redis
    breaker: Breaker

    def __init__(
        self,
        breaker: Breaker,
        client: redis.asyncio.Redis | str,
        *,
        handler: Callable[[StreamMessage], Awaitable[object]],
        stream: str,
        group: str,
        **settings: Unpack[StreamSettings],
    ) -> None:
        try:
            require_async(handler, "StreamConsumer", "handler")
        except TypeError:
            raise ConfigError(
                "handler", f"must be a coroutine function (async def), got {handler!r}"
            ) from None
        self.handler = handler
        # stop() may come before run() made its event, or from another thread.
        self._stop_requested = False
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._setup(breaker, client, stream, group, settings)

    def _open(self, url: str, max_block: float) -> redis.asyncio.Redis:
        kind, what = url_spec(url)
        if kind == "memory":
            client: redis.asyncio.Redis = fakeredis_module().FakeAsyncRedis(
                server=memory_server(what)
            )
            return client
        return redis.asyncio.Redis.from_url(
            what, socket_timeout=max_block + SOCKET_SLACK, socket_connect_timeout=SOCKET_SLACK
        )

    def _accepts(self, client: object) -> bool:
        return hasattr(client, "xreadgroup") and hasattr(client, "__aenter__")

    def stop(self) -> None:
        """Ask :meth:`run` to return: it finishes (and acks) the message in hand, hands the
        rest of its batch back, releases its permit. Safe from any task or thread."""
        self._stop_requested = True
        stopped, loop = self._stopped, self._loop
        if stopped is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stopped.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(stopped.set)

    async def run(self, *, install_signal_handlers: bool = False) -> StreamStats:
        """Consume until :meth:`stop` (or, with ``install_signal_handlers``, SIGTERM or
        SIGINT: the first one stops cleanly, a second acts as it did before). Starts the
        breaker's store's transition feed (one pub/sub connection per store).

        Returns:
            The counts, as :attr:`stats`.

        Raises:
            RuntimeError: ``install_signal_handlers`` outside the main thread.
        """
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self._stop_requested:
            self._stopped.set()
        restore = self._install_signal_handlers() if install_signal_handlers else None
        try:
            await self._start_feed()
            while not self._stop_requested:
                await self._step_safely()
        finally:
            if restore is not None:
                restore()
        return self.stats

    async def aclose(self) -> None:
        """Close the stream client if this consumer opened it from a URL."""
        if self._owns_client:
            await self.client.aclose()

    close = aclose
    """An alias of :meth:`aclose`."""

    async def __aenter__(self) -> StreamConsumer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the loop --------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when stop() comes first."""
        assert self._stopped is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _step_safely(self) -> None:
        """One step; a lost stream connection is waited out, a deleted group recreated."""
        try:
            await self._step()
        except _STREAM_ERRORS as exc:
            if not self._stream_down:
                self._stream_down = True
                self._log("stream_unavailable", exc, self._max_block)
            await self._pause(self._max_block)
            return
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self._group_ready = False
            self._core.restart()
            return
        if self._stream_down:
            self._stream_down = False
            self._log("stream_recovered")

    async def _ensure_group(self) -> None:
        c = self.config
        try:
            await self.client.xgroup_create(c.stream, c.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not is_busygroup(exc):
                raise
        self._group_ready = True

    async def _start_feed(self) -> None:
        """Hear the breaker's transitions (what lets an idle consumer read first), and give
        the subscription up to ``max_block`` to be made: a first ask answered before it
        would be stale at once, and asked again."""
        store = self.breaker.store
        heard = self._heard()
        store.start_feed()
        if not store.feed_live:
            await store.await_news(self.breaker.name, heard, self._max_block)

    async def _step(self) -> None:
        """Read, then take a permit per message, while the breaker admits as far as this
        process knows; otherwise wait for a permit (at most ``max_block``) and read under
        it. Either way, handle what came."""
        if not self._group_ready:
            await self._ensure_group()
        if self._reads_first():
            read, messages = await self._read_some(block=True)
            if messages:
                await self._handle_batch(read, messages, None)
            return
        heard = self._heard()
        try:
            permit = await self.breaker.acquire(max_wait=self._max_block)
        except CircuitOpenError:
            self._admission.refused(self._heard())
            return  # still refused: look at stop(), then wait again
        self._admission.admitted(heard)
        try:
            read, messages = await self._read_some(block=not permit.is_probe)
        except BaseException:
            _release(permit)
            raise
        if not messages:
            await permit.release()
            if permit.is_probe:  # nothing to try the dependency with: leave it to others
                await self._pause(self._max_block)
            return
        await self._handle_batch(read, messages, permit)

    async def _read_some(self, *, block: bool) -> tuple[Read, list[StreamMessage]]:
        """Own pending, else reclaimable, else new messages: at most three reads."""
        core = self._core
        for _ in range(3):
            read = core.next_read(time.monotonic(), block=block)
            messages = core.on_read(read, await self._read(read), time.monotonic())
            if messages or read.kind == "new" or self._stop_requested:
                break
        return read, messages

    async def _read(self, read: Read) -> object:
        c = self.config
        if read.kind == "claim":
            return await self.client.xautoclaim(
                c.stream, c.group, c.consumer, c.min_idle_ms, start_id=read.start,
                count=read.batch,
            )
        return await self.client.xreadgroup(
            c.group, c.consumer, {c.stream: read.start}, count=read.batch, block=read.block_ms
        )

    async def _handle_batch(
        self, read: Read, messages: list[StreamMessage], permit: Permit | None
    ) -> None:
        """Each message under a permit of its own: ``permit`` (if any) for the first, then
        one asked for each (without waiting); the first refusal leaves the rest pending."""
        held = permit
        try:
            for index, message in enumerate(messages):
                if self._stop_requested:
                    await self._put_back(read, messages[index:])
                    break
                if message.deleted:
                    await self._send_ack(message)  # deleted from the stream: nothing to handle
                    self._core.on_skipped(read, message)
                    continue  # a permit held goes to the next message
                if held is None:
                    held = await self._ask()
                    if held is None:
                        self._core.on_deferred(read, len(messages) - index)
                        break
                current, held = held, None
                rejection = await self._handle(read, message, current)
                if rejection is not None:
                    self._core.on_deferred(read, len(messages) - index)
                    await self._pause(self.breaker.defer_delay(rejection))
                    break
        except BaseException:
            if held is not None:
                _release(held)  # unused; cancelled callers are not kept waiting for it
            raise
        if held is not None:
            await held.release()  # unused: a probe's slot must not wait for its lease

    async def _ask(self) -> Permit | None:
        """A permit for the next message, asked once; None when the breaker refuses."""
        heard = self._heard()
        try:
            permit = await self.breaker.acquire()
        except CircuitOpenError:
            self._admission.refused(self._heard())
            return None
        self._admission.admitted(heard)
        return permit

    async def _handle(
        self, read: Read, message: StreamMessage, permit: Permit
    ) -> CircuitOpenError | None:
        """Run the handler under ``permit`` and settle both; a rejection the handler
        raised is handed back (the message stays pending, uncounted)."""
        try:
            await self.handler(message)
        except CircuitOpenError as exc:
            await permit.release()
            return exc
        except Exception as exc:
            await permit.failure(exc)
            verdict = await self._send_failure(message, exc)
            self._core.on_failure(read, message, verdict)
            if verdict.dead_lettered:
                self._log(
                    "dead_lettered", message.id, self.config.dead_letter, verdict.failures,
                    type(exc).__name__,
                )
            return None
        except BaseException:
            _release(permit)  # cancelled or interrupted: frees a probe slot
            raise
        await permit.success()
        await self._send_ack(message)
        self._core.on_success(read, message)
        return None

    async def _send_ack(self, message: StreamMessage) -> None:
        core = self._core
        await self._ack(keys=core.ack_keys(), args=core.ack_args(message))

    async def _send_failure(self, message: StreamMessage, exc: BaseException) -> FailureVerdict:
        core = self._core
        return core.on_fail_reply(
            await self._fail(keys=core.fail_keys(), args=core.fail_args(message, exc))
        )

    async def _put_back(self, read: Read, messages: list[StreamMessage]) -> None:
        """Stopping: hand unhandled messages to the next sweep of any other consumer."""
        self._core.on_put_back(read)
        c = self.config
        with contextlib.suppress(redis.RedisError):
            await self.client.xclaim(
                c.stream, c.group, c.consumer, 0, self._core.put_back_ids(messages),
                idle=c.min_idle_ms, justid=True,
            )

    def _install_signal_handlers(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.getsignal(sig) for sig in signals}
        installed: list[signal.Signals] = []

        def restore() -> None:
            while installed:
                sig = installed.pop()
                loop.remove_signal_handler(sig)
                handler = previous[sig]
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

        def on_signal(sig: signal.Signals) -> None:
            self._log("stream_stopping", sig.name)
            self.stop()
            restore()  # a second signal acts as it did before

        try:
            for sig in signals:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
        except (ValueError, RuntimeError) as exc:
            restore()
            raise RuntimeError(
                f"install_signal_handlers: cannot set them here ({exc}); only the main "
                "thread's event loop can"
            ) from exc
        return restore


def _release(permit: Permit) -> None:
    """Free a permit while an exception (a cancellation, too) is on its way out: the
    release runs in a task of its own, so a cancelled caller is not delayed by it."""
    task = asyncio.ensure_future(permit.release())
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


_releasing: set[asyncio.Task[Any]] = set()
