"""The cached mode's quiet lane: most calls of a healthy cached breaker are admitted from
the local copy and end in a plain success, which Redis learns later in a batch. The lane
decides those calls with no permit and no round trip (observers are told as usual);
anything else (a failure, a slow call, a streak to end, a batch to send) leaves the lane
and takes the full path, which decides it as it always did. When the copy grows old the
lane also says which caller renews it and which wait for that. No I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exceptions import CircuitOpenError
from ._permit_state import PermitState

if TYPE_CHECKING:
    from ._cache import LocalCopy
    from ._core import BreakerCore

__all__ = ["QuietLane", "quiet_lane"]


class QuietLane:
    """The quiet lane of one cached breaker."""

    __slots__ = ("_core", "_failure_result", "_interval", "_name", "_now", "_slow_after",
                 "_staleness", "_state_key", "_view")

    def __init__(self, core: BreakerCore) -> None:
        self._core = core
        self._name = core.name
        self._view = core._view
        self._state_key = core.keys.state
        self._staleness = core._max_staleness
        self._now = core.now
        self._slow_after = core._slow_after
        self._interval = core._flush_interval
        self._failure_result = core.config.failure_result

    def admit(self, now: float) -> LocalCopy | None:
        """The local copy that admits a call starting ``now`` (the core's clock), or
        None: the full path decides (a rejection to repeat, a stale copy, none yet).

        Raises:
            CircuitOpenError: the breaker is forced open without a deadline (as the full
                path raises it; a store with observers never takes the lane).
        """
        if self._view.cached_rejection(self._state_key, self._staleness) is not None:
            return None
        core = self._core
        try:
            return core._local.fresh_copy(self._view.heard(self._name), now)
        except CircuitOpenError as exc:
            if core._observers:
                core.reports.rejection(exc.state)
            raise

    def succeeded(self, copy: LocalCopy, started: float, result: object) -> bool:
        """Count a call :meth:`admit` let through that returned ``result``. False: it is
        not a quiet success (a failure by ``failure_result``, a slow call, a streak it
        ends, a batch due), nothing was counted, and :meth:`permit` settles it."""
        check = self._failure_result
        if check is not None and check(result):
            return False
        if copy.consecutive_failures:
            return False
        now = self._now()
        if self._slow_after is not None and now - started >= self._slow_after:
            return False
        core = self._core
        if not core._local.batch.add_one_unless_due(copy, self._interval, now):
            return False
        if core._observers:
            core.reports.call("success", copy.state, now - started)
        return True

    # -- renewing the copy: one caller asks, the others wait for its answer ---------------

    def refresh_role(self) -> str:
        """How a caller the local copy did not admit asks Redis: "lead", "follow" (wait
        up to :attr:`follow_wait` for the leader, then try the copy again) or "alone"
        (:meth:`LocalKnowledge.refresh_role`)."""
        return self._core._local.refresh_role()

    def refresh_ended(self) -> None:
        """The caller that led a refresh has its answer (or an error) in."""
        self._core._local.refresh_ended()

    @property
    def refresh_in_flight(self) -> bool:
        """A caller is renewing the local copy."""
        return self._core._local.refreshing

    @property
    def follow_wait(self) -> float:
        """The longest a follower waits for the leader's refresh: then it asks itself."""
        return self._staleness

    @staticmethod
    def permit(copy: LocalCopy, started: float) -> PermitState:
        """The permit the full path would have made for this call
        (:meth:`BreakerCore.admit_locally`)."""
        return PermitState(
            copy.generation, "", None, copy.consecutive_failures, started,
            incarnation=copy.incarnation, counted=False,
        )


def quiet_lane(core: BreakerCore) -> QuietLane | None:
    """The lane of ``core``, or None in strict mode (Redis admits every call)."""
    return QuietLane(core) if core.config.consistency == "cached" else None
