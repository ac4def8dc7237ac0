"""A fleet of worker processes for the multi-process figures.

The workers are started once (``spawn``: each is a fresh interpreter with its own
connections) and then take orders over a pipe: run a variant for a while from a given
wall-clock instant (throughput), hammer a breaker until it rejects (propagation), or call a
dependency that starts failing at a shared instant (leak). Wall-clock times are
``time.time()`` in every process: one machine, one CLOCK_REALTIME.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import traceback
from typing import TYPE_CHECKING, Any

import _variants

import redbreaker

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection


class FleetError(RuntimeError):
    """A worker crashed, raised, or did not answer in time."""


# --------------------------------------------------------------------------- the worker


class _Worker:
    def __init__(self, conn: Connection, url: str, index: int) -> None:
        self.conn = conn
        self.url = url
        self.index = index
        self.built: _variants.Built | None = None
        self.stores: dict[str, redbreaker.Store] = {}
        self.store_events: list[str] = []

    def store(self, prefix: str) -> redbreaker.Store:
        store = self.stores.get(prefix)
        if store is None:
            store = self.stores[prefix] = _variants.open_store(
                self.url, prefix, on_store_event=lambda e: self.store_events.append(e.kind)
            )
        return store

    def setup(self, prefix: str, warmup: int) -> list[str]:
        self.built = _variants.build(self.url, prefix)
        for fn in self.built.fns.values():
            for _ in range(warmup):
                fn()
        return list(self.built.fns)

    def throughput(self, key: str, start_at: float, duration: float) -> tuple[int, float]:
        assert self.built is not None
        fn = self.built.fns[key]
        fn()
        left = start_at - time.time()
        if left > 0:
            time.sleep(left)
        clock = time.perf_counter
        started = last = clock()
        end = started + duration
        calls, chunk = 0, 1
        while True:
            for _ in range(chunk):
                fn()
            calls += chunk
            now = clock()
            if now >= end:
                return calls, now - started
            # Cheap calls run in growing chunks, so reading the clock costs them little.
            if now - last < 0.0002 and chunk < 4096:
                chunk *= 2
            last = now

    def propagation(self, mode: str, prefix: str, name: str, timeout: float) -> dict[str, Any]:
        breaker = _variants.make_breaker(self.store(prefix), name, mode)
        try:
            calls, ready = 0, False
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    breaker.call(_variants.noop)
                except redbreaker.CircuitOpenError:
                    return {"rejected_at": time.time(), "calls": calls, "events": self._events()}
                calls += 1
                if not ready:
                    self.conn.send(("ready", time.time()))
                    ready = True
            return {"rejected_at": None, "calls": calls, "events": self._events()}
        finally:
            _variants.close_breaker(breaker)

    def leak(  # noqa: PLR0917 (orders arrive over the pipe as tuples)
        self,
        mode: str,
        prefix: str,
        name: str,
        fail_at: float,
        threshold: int,
        timeout: float,
    ) -> dict[str, Any]:
        breaker = _variants.make_breaker(
            self.store(prefix), name, mode, failure_threshold=threshold, recovery_timeout=120
        )
        leaked = 0

        def dependency() -> None:
            nonlocal leaked
            if time.time() >= fail_at:
                leaked += 1
                raise _variants.DependencyError

        try:
            calls, ready = 0, False
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    breaker.call(dependency)
                except _variants.DependencyError:
                    pass
                except redbreaker.CircuitOpenError:
                    return {"leaked": leaked, "rejected_at": time.time(), "calls": calls,
                            "events": self._events()}
                calls += 1
                if not ready:
                    self.conn.send(("ready", time.time()))
                    ready = True
            return {"leaked": leaked, "rejected_at": None, "calls": calls,
                    "events": self._events()}
        finally:
            _variants.close_breaker(breaker)

    def _events(self) -> list[str]:
        events, self.store_events = self.store_events, []
        return events

    def close(self) -> None:
        if self.built is not None:
            self.built.close()
        for store in self.stores.values():
            store.close()


def worker_main(conn: Connection, url: str, index: int) -> None:
    worker = _Worker(conn, url, index)
    conn.send(("ok", index))
    try:
        serve_orders(conn, lambda order: getattr(worker, order[0])(*order[1:]))
    finally:
        worker.close()


def serve_orders(conn: Connection, handle: Callable[[tuple[Any, ...]], Any]) -> None:
    """Answer the parent's orders with ("ok", handle(order)) or ("error", traceback) until
    it says stop or goes away."""
    while True:
        try:
            order = conn.recv()
        except EOFError:
            return
        if order[0] == "stop":
            return
        try:
            conn.send(("ok", handle(order)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


# --------------------------------------------------------------------------- the parent


class Fleet:
    """``size`` worker processes; orders go to the first ``n`` of them."""

    def __init__(self, url: str, size: int, *, start_timeout: float = 120.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(child, url, i), name=f"bench-worker-{i}", daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for i in range(size):
            self.expect(i, "ok", start_timeout)

    @property
    def size(self) -> int:
        return len(self.conns)

    def send(self, n: int, *order: object) -> None:
        for conn in self.conns[:n]:
            conn.send(order)

    def expect(self, i: int, kind: str, timeout: float) -> Any:
        got, payload = self.receive(i, timeout)
        if got != kind:
            raise FleetError(f"worker {i} sent {got!r}, expected {kind!r}")
        return payload

    def receive(self, i: int, timeout: float) -> tuple[str, Any]:
        """The next message of worker ``i``: ("ok" | "ready", payload)."""
        conn = self.conns[i]
        if not conn.poll(timeout):
            raise FleetError(f"worker {i} sent nothing for {timeout:g} s")
        try:
            got, payload = conn.recv()
        except EOFError as exc:
            raise FleetError(f"worker {i} died (exit code {self.procs[i].exitcode})") from exc
        if got == "error":
            raise FleetError(f"worker {i} failed:\n{payload}")
        return got, payload

    def ask(self, n: int, *order: object, timeout: float = 60.0) -> list[Any]:
        self.send(n, *order)
        return [self.expect(i, "ok", timeout) for i in range(n)]

    def close(self) -> None:
        stop_workers(self.conns, self.procs)


def stop_workers(conns: list[Connection], procs: list[Any]) -> None:
    """Ask every worker to stop, wait for it (terminated after 10 s), close the pipes."""
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send(("stop",))
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    for conn in conns:
        conn.close()
