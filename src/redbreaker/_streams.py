"""A Redis Streams consumer guarded by a breaker, sync driver: it reads only while the
breaker admits, handles each message under a permit of its own, acks only after the
handler succeeded, and never loses a message (decisions in :mod:`._streams_core`).

::

    payments = redbreaker.Breaker("payments-api", store=store)

    def handle(message: redbreaker.StreamMessage) -> None:
        charge(message.fields["order"])

    consumer = redbreaker.StreamConsumer(
        payments, "redis://queue-host:6379/0", stream="orders", group="billing",
        handler=handle,
    )
    consumer.run(install_signal_handlers=True)   # until SIGTERM/SIGINT or stop()
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import TYPE_CHECKING

import redis

from ._breaker import Breaker
from ._config import plain_callable_setting
from ._exceptions import CircuitOpenError
from ._memory import fakeredis_module, memory_server
from ._streams_base import SOCKET_SLACK, ConsumerBase, url_spec
from ._streams_core import (
    FailureVerdict,
    Read,
    StreamMessage,
    StreamStats,
    is_busygroup,
    is_nogroup,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType, TracebackType

    from typing_extensions import Unpack

    from ._breaker import Permit
    from ._streams_base import StreamSettings

__all__ = ["StreamConsumer"]

_STREAM_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class _StopFlag:
    """A threading.Event that a signal handler may set: its lock is reentrant. (An Event's
    plain Lock, held by the main thread inside ``wait()`` when the signal arrives there,
    would deadlock the handler's ``set()``.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._set = False

    def set(self) -> None:
        with self._cond:
            self._set = True
            self._cond.notify_all()

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less once the flag is set."""
        with self._cond:
            if not self._set:
                self._cond.wait(seconds)


class StreamConsumer(ConsumerBase):
    """Consume one stream through a consumer group while ``breaker`` admits.

    While the breaker admits as far as this process knows (its store's transition feed is
    live: a trip anywhere is pushed within ms), the consumer reads first and takes a permit
    per message once it has one, so an idle consumer costs the breakers' Redis nothing.
    Otherwise (a rejection known, a refusal, a half-open breaker's slots taken, no feed)
    it waits up to ``max_block`` for a permit before it reads, and reads under it.

    Args:
        breaker: the breaker of the dependency the handler calls.
        client: the stream's Redis: a redis-py client or a URL (``redis://``,
            ``rediss://``, ``unix://``, ``memory://<name>``). It may be another server
            than the breakers'; when it is the same one, a WARNING says so.
        handler: called with each :class:`StreamMessage`; returning is a success (the
            message is acked), raising is a failure (it stays pending and is retried,
            dead-lettered after ``max_deliveries`` failures). Raising
            :class:`CircuitOpenError` defers the message: pending, not counted.
        stream, group: the stream's key and the consumer group.
        **settings: ``consumer``, ``dead_letter``, ``max_deliveries``, ``min_idle``,
            ``batch_size``, ``max_block``: see :class:`StreamConfig`. ``consumer``
            defaults to ``<host>-<pid>-<random>``.

    Raises:
        ConfigError: a bad setting, handler, breaker or client (nothing is sent to Redis
            before :meth:`run`).
    """

    _api = "redbreaker"
    _breaker_type = Breaker
    _client_hint = "a synchronous redis-py client"
    client: redis.Redis
    breaker: Breaker

    def __init__(
        self,
        breaker: Breaker,
        client: redis.Redis | str,
        *,
        handler: Callable[[StreamMessage], object],
        stream: str,
        group: str,
        **settings: Unpack[StreamSettings],
    ) -> None:
        plain_callable_setting("handler", handler)
        self.handler = handler
        self._stopping = _StopFlag()
        self._setup(breaker, client, stream, group, settings)

    def _open(self, url: str, max_block: float) -> redis.Redis:
        kind, what = url_spec(url)
        if kind == "memory":
            client: redis.Redis = fakeredis_module().FakeRedis(server=memory_server(what))
            return client
        return redis.Redis.from_url(
            what, socket_timeout=max_block + SOCKET_SLACK, socket_connect_timeout=SOCKET_SLACK
        )

    def _accepts(self, client: object) -> bool:
        return hasattr(client, "xreadgroup") and not (
            hasattr(client, "__aenter__") and not hasattr(client, "__enter__")
        )

    def stop(self) -> None:
        """Ask :meth:`run` to return: it finishes (and acks) the message in hand, hands the
        rest of its batch back, releases its permit. Safe from any thread."""
        self._stopping.set()

    def run(self, *, install_signal_handlers: bool = False) -> StreamStats:
        """Consume until :meth:`stop` (or, with ``install_signal_handlers``, SIGTERM or
        SIGINT: the first one stops cleanly, a second acts as it did before). Starts the
        breaker's store's transition feed (one pub/sub connection per store).

        Returns:
            The counts, as :attr:`stats`.

        Raises:
            RuntimeError: ``install_signal_handlers`` outside the main thread.
        """
        restore = self._install_signal_handlers() if install_signal_handlers else None
        try:
            self._start_feed()
            while not self._stopping.is_set():
                self._step_safely()
        finally:
            if restore is not None:
                restore()
        return self.stats

    def close(self) -> None:
        """Close the stream client if this consumer opened it from a URL."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> StreamConsumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the loop --------------------------------------------------------------------------

    def _step_safely(self) -> None:
        """One step; a lost stream connection is waited out, a deleted group recreated."""
        try:
            self._step()
        except _STREAM_ERRORS as exc:
            if not self._stream_down:
                self._stream_down = True
                self._log("stream_unavailable", exc, self._max_block)
            self._stopping.wait(self._max_block)
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

    def _ensure_group(self) -> None:
        c = self.config
        try:
            self.client.xgroup_create(c.stream, c.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not is_busygroup(exc):
                raise
        self._group_ready = True

    def _start_feed(self) -> None:
        """Hear the breaker's transitions (what lets an idle consumer read first), and give
        the subscription up to ``max_block`` to be made: a first ask answered before it
        would be stale at once, and asked again."""
        store = self.breaker.store
        heard = self._heard()
        store.start_feed()
        if not store.feed_live:
            store.await_news(self.breaker.name, heard, self._max_block)

    def _step(self) -> None:
        """Read, then take a permit per message, while the breaker admits as far as this
        process knows; otherwise wait for a permit (at most ``max_block``) and read under
        it. Either way, handle what came."""
        if not self._group_ready:
            self._ensure_group()
        if self._reads_first():
            read, messages = self._read_some(block=True)
            if messages:
                self._handle_batch(read, messages, None)
            return
        heard = self._heard()
        try:
            permit = self.breaker.acquire(max_wait=self._max_block)
        except CircuitOpenError:
            self._admission.refused(self._heard())
            return  # still refused: look at stop(), then wait again
        self._admission.admitted(heard)
        try:
            read, messages = self._read_some(block=not permit.is_probe)
        except BaseException:
            permit.release()
            raise
        if not messages:
            permit.release()
            if permit.is_probe:  # nothing to try the dependency with: leave it to others
                self._stopping.wait(self._max_block)
            return
        self._handle_batch(read, messages, permit)

    def _read_some(self, *, block: bool) -> tuple[Read, list[StreamMessage]]:
        """Own pending, else reclaimable, else new messages: at most three reads."""
        core = self._core
        for _ in range(3):
            read = core.next_read(time.monotonic(), block=block)
            messages = core.on_read(read, self._read(read), time.monotonic())
            if messages or read.kind == "new" or self._stopping.is_set():
                break
        return read, messages

    def _read(self, read: Read) -> object:
        c = self.config
        if read.kind == "claim":
            return self.client.xautoclaim(
                c.stream, c.group, c.consumer, c.min_idle_ms, start_id=read.start,
                count=read.batch,
            )
        return self.client.xreadgroup(
            c.group, c.consumer, {c.stream: read.start}, count=read.batch, block=read.block_ms
        )

    def _handle_batch(
        self, read: Read, messages: list[StreamMessage], permit: Permit | None
    ) -> None:
        """Each message under a permit of its own: ``permit`` (if any) for the first, then
        one asked for each (without waiting); the first refusal leaves the rest pending."""
        held = permit
        try:
            for index, message in enumerate(messages):
                if self._stopping.is_set():
                    self._put_back(read, messages[index:])
                    return
                if message.deleted:
                    self._send_ack(message)  # deleted from the stream: nothing to handle
                    self._core.on_skipped(read, message)
                    continue  # a permit held goes to the next message
                if held is None:
                    held = self._ask()
                    if held is None:
                        self._core.on_deferred(read, len(messages) - index)
                        return
                current, held = held, None
                rejection = self._handle(read, message, current)
                if rejection is not None:
                    self._core.on_deferred(read, len(messages) - index)
                    self._stopping.wait(self.breaker.defer_delay(rejection))
                    return
        finally:
            if held is not None:
                held.release()  # unused: a probe's slot must not wait for its lease

    def _ask(self) -> Permit | None:
        """A permit for the next message, asked once; None when the breaker refuses."""
        heard = self._heard()
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError:
            self._admission.refused(self._heard())
            return None
        self._admission.admitted(heard)
        return permit

    def _handle(
        self, read: Read, message: StreamMessage, permit: Permit
    ) -> CircuitOpenError | None:
        """Run the handler under ``permit`` and settle both; a rejection the handler
        raised is handed back (the message stays pending, uncounted)."""
        try:
            self.handler(message)
        except CircuitOpenError as exc:
            permit.release()
            return exc
        except Exception as exc:
            permit.failure(exc)
            verdict = self._send_failure(message, exc)
            self._core.on_failure(read, message, verdict)
            if verdict.dead_lettered:
                self._log(
                    "dead_lettered", message.id, self.config.dead_letter, verdict.failures,
                    type(exc).__name__,
                )
            return None
        except BaseException as exc:
            permit.failure(exc)  # an interruption: frees a probe slot, counts nothing
            raise
        permit.success()
        self._send_ack(message)
        self._core.on_success(read, message)
        return None

    def _send_ack(self, message: StreamMessage) -> None:
        core = self._core
        self._ack(keys=core.ack_keys(), args=core.ack_args(message))

    def _send_failure(self, message: StreamMessage, exc: BaseException) -> FailureVerdict:
        core = self._core
        return core.on_fail_reply(
            self._fail(keys=core.fail_keys(), args=core.fail_args(message, exc))
        )

    def _put_back(self, read: Read, messages: list[StreamMessage]) -> None:
        """Stopping: hand unhandled messages to the next sweep of any other consumer."""
        self._core.on_put_back(read)
        c = self.config
        with contextlib.suppress(redis.RedisError):
            self.client.xclaim(
                c.stream, c.group, c.consumer, 0, self._core.put_back_ids(messages),
                idle=c.min_idle_ms, justid=True,
            )

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("install_signal_handlers: only the main thread can set them")
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.getsignal(sig) for sig in signals}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._log("stream_stopping", signal.Signals(signum).name)
            self.stop()
            restore()  # a second signal acts as it did before

        for sig in signals:
            signal.signal(sig, on_signal)
        return restore

