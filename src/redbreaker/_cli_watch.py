"""``redbreaker watch``: every transition as it is published, through Redis restarts.

When the feed is lost, watch says so (stderr, and a ``disconnected`` JSON line), subscribes
again after a backoff with jitter (:data:`redbreaker._health.FEED_BACKOFF`), says when it
is back, and then reports the breakers whose generation moved while it was away: the
transitions it could not hear. It ends on Ctrl-C or SIGTERM (exit 0), or on a
configuration error (refused credentials, an ACL without SUBSCRIBE: exit 2).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from ._breaker import Breaker
from ._cli_json import emit, iso, transition_json
from ._cli_ops import describe
from ._exceptions import StoreError, StoreUnavailableError
from ._health import FEED_BACKOFF, wait_after

if TYPE_CHECKING:
    import argparse
    from types import FrameType

    from ._store import Store

__all__ = ["watch"]


class _StoppedError(Exception):
    """SIGTERM arrived: leave as Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _StoppedError


def _generations(store: Store) -> dict[str, tuple[int, str]]:
    """(generation, state) of every breaker under the prefix: a SCAN and a snapshot each."""
    found = {}
    for name in store.breaker_names():
        snapshot = Breaker(name, store=store).snapshot()
        if snapshot.exists:
            found[name] = (snapshot.generation, snapshot.state.value)
    return found


class _Watch:
    def __init__(self, args: argparse.Namespace, store: Store, target: str) -> None:
        self.json: bool = args.json
        self.prefix: str = args.prefix
        self.store = store
        self.target = target
        self.known: dict[str, tuple[int, str]] | None = None
        self.lost_at: float | None = None
        self.failures = 0

    def say(self, event: str, human: str | None, **fields: Any) -> None:  # noqa: ANN401
        if human is not None:
            print(f"redbreaker watch: {human}", file=sys.stderr, flush=True)
        if self.json:
            emit({"event": event, **fields}, lines=True)

    def run(self) -> None:
        if self.json:
            emit({"event": "watching", "prefix": self.prefix}, lines=True)
        else:
            print(f"watching transitions under prefix {self.prefix!r} (Ctrl-C to stop)", flush=True)
        while True:
            try:
                self._follow()
            except StoreUnavailableError as exc:
                self._lost(exc)

    def _follow(self) -> None:
        # Subscribe first, then read the generations: a transition in between is heard.
        events = self.store.transitions()
        now = _generations(self.store)
        if self.lost_at is not None:
            self._back(now)
        self.known = now
        self.failures = 0
        for transition in events:
            self.known[transition.name] = (transition.generation, transition.current.value)
            if self.json:
                emit({"event": "transition", **transition_json(transition)}, lines=True)
            else:
                print(f"{iso(transition.at_ms)}  {describe(transition)}", flush=True)

    def _lost(self, exc: StoreUnavailableError) -> None:
        self.failures += 1
        wait = wait_after(FEED_BACKOFF, self.failures)
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            detail = " ".join(exc.detail.split())
            self.say(
                "disconnected",
                f"lost the feed from {self.target}: {detail}; reconnecting",
                error=detail,
                at=iso(int(time.time() * 1000)),
            )
        time.sleep(wait)

    def _back(self, now: dict[str, tuple[int, str]]) -> None:
        assert self.lost_at is not None
        away = time.monotonic() - self.lost_at
        self.lost_at = None
        self.say(
            "reconnected",
            f"back after {away:.1f} s",
            outage_seconds=round(away, 3),
            at=iso(int(time.time() * 1000)),
        )
        if self.known is None:
            return  # never connected before: nothing to compare with
        before = self.known
        for name in sorted(set(before) | set(now)):
            was, is_now = before.get(name), now.get(name)
            if was == is_now or (was is None and is_now is not None and is_now[0] <= 1):
                continue  # unchanged, or created while away and never changed state
            self._missed(name, was, is_now)

    def _missed(
        self, name: str, was: tuple[int, str] | None, is_now: tuple[int, str] | None
    ) -> None:
        previous = was[0] if was is not None else None
        generation, state = is_now if is_now is not None else (None, None)
        if self.json:
            emit(
                {
                    "event": "missed",
                    "name": name,
                    "previous_generation": previous,
                    "generation": generation,
                    "state": state,
                },
                lines=True,
            )
        elif is_now is None:
            print(
                f"{name}: gone while disconnected (was generation {previous}): Redis lost "
                "it (a restart without persistence?) or its keys expired",
                flush=True,
            )
        else:
            since = f"generation {previous}" if previous is not None else "unknown"
            print(
                f"{name}: changed while disconnected ({since} -> generation {generation}), "
                f"now {state}",
                flush=True,
            )


def watch(args: argparse.Namespace, store: Store, target: str) -> int:
    """Run until Ctrl-C or SIGTERM (0); refused credentials or ACL: StoreError (exit 2)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() run by an embedding program)
        previous = None
    try:
        _Watch(args, store, target).run()
    except (KeyboardInterrupt, _StoppedError):
        return 0
    except StoreError:
        raise  # a configuration error: the caller prints it, exit 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0  # pragma: no cover (run() only ends by raising)
