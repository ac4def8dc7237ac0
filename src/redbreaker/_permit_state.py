"""What a permit remembers between its admission and its outcome, whichever driver made
it. No I/O here."""

from __future__ import annotations

__all__ = ["PermitState"]


class PermitState:
    """What a permit remembers between admission and its outcome."""

    __slots__ = (
        "admitted_at_ms",
        "consecutive_failures_at_admission",
        "counted",
        "generation",
        "incarnation",
        "offline",
        "own",
        "probe_token",
        "settled",
        "started",
        "state",
    )

    state: str  # set by the core only when the store has observers (see below)

    def __init__(
        self,
        generation: int,
        probe_token: str,
        admitted_at_ms: int | None,
        consecutive_failures: int,
        started: float,
        *,
        incarnation: str = "",
        offline: bool = False,
        counted: bool = True,
    ) -> None:
        # counted: Redis counted the call when it admitted it; a cached breaker's local
        # admission was not counted yet, so its outcome (or a batch) must carry it.
        self.counted = counted
        self.incarnation = incarnation
        # offline: admitted without Redis (on_store_error="allow"); its outcome goes nowhere.
        self.offline = offline
        self.generation = generation
        self.probe_token = probe_token
        self.admitted_at_ms = admitted_at_ms
        self.consecutive_failures_at_admission = consecutive_failures
        self.started = started
        self.settled = False
        # The permit of this process's own breaker (min_reporters > 1), settled with this one.
        self.own: object | None = None
        # ``state``: the state the call was admitted in, set by the core only when the
        # store has observers (they are told it; nothing else reads it).
