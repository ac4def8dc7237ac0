"""What a breaker does with a call's outcome, with no I/O: the classification, the record
script's arguments (or none: a plain success has nothing to tell Redis), the retry
budget's question, and the replies. Part of the sans-I/O core
(:class:`~redbreaker._core.BreakerCore` is this plus admission, orders and hooks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._classify import Outcome, classify_exception, classify_result
from ._exceptions import AttemptTimeoutError
from ._hooks import logger
from ._policies import process_identity
from ._state import decode_record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._cache import LocalKnowledge
    from ._config import BreakerConfig
    from ._observe import BreakerObserver, Reports
    from ._permit_state import PermitState
    from ._policies import FleetPolicies, RetryVerdict
    from ._state import RecordReply, Transition

__all__ = ["OutcomeCore"]


class OutcomeCore:
    """The outcome half of the core; :class:`~redbreaker._core.BreakerCore` sets every
    attribute declared here."""

    name: str
    config: BreakerConfig
    policies: FleetPolicies
    reports: Reports
    now: Callable[[], float]
    _observers: tuple[BreakerObserver, ...]
    _slow_after: float | None
    _cached: bool
    _flush_interval: float
    _local: LocalKnowledge

    if TYPE_CHECKING:

        def _args(self, *extra: str) -> list[str]: ...

        def _fire(self, transitions: Iterable[Transition]) -> None: ...

    def classify_exception(self, exc: BaseException) -> Outcome:
        """What an exception that ended a call means for the breaker."""
        return classify_exception(self.config, exc)

    def classify_result(self, result: object) -> Outcome:
        """What a returned value means for the breaker (``failure_result``)."""
        return classify_result(self.config, result)

    def finish_args(
        self,
        permit: PermitState,
        *,
        exc: BaseException | None = None,
        result: object = None,
        keep_lease: bool = False,
    ) -> tuple[Outcome, list[str] | None]:
        """Settle ``permit`` by how its call ended (raising ``exc``, or returning
        ``result``): the outcome, and the record script's arguments (None: nothing to send).

        ``keep_lease``: a probe's call still runs, abandoned; its lease stays until it ends.
        """
        permit.settled = True
        if exc is None:
            outcome = self.classify_result(result)
            return outcome, self.record_args(permit, outcome)
        outcome = self.classify_exception(exc)
        if keep_lease and outcome == "release":
            return outcome, None  # nothing to count; the lease goes with the attempt
        # A timed-out call is slow by definition, whatever slow_call_duration says.
        slow = True if isinstance(exc, AttemptTimeoutError) else None
        return outcome, self.record_args(permit, outcome, slow, keep_lease=keep_lease)

    def record_args(
        self,
        permit: PermitState,
        outcome: Outcome,
        slow: bool | None = None,
        *,
        keep_lease: bool = False,
    ) -> list[str] | None:
        """The record script's arguments, or None when Redis has nothing to learn.

        ``slow`` overrides the measured duration (a timed-out call is slow by definition).
        ``keep_lease``: a probe's outcome is known but its call still runs (abandoned).
        """
        if self._observers and outcome != "release":
            self.reports.outcome(outcome, permit, self.now())
        if permit.offline:
            return None
        if self._slow_after is None or outcome not in ("success", "failure"):
            slow = False
        elif slow is None:
            slow = self.now() - permit.started >= self._slow_after
        quiet = (
            (outcome == "success" and not slow and permit.consecutive_failures_at_admission == 0)
            or outcome == "release"
            or (outcome == "ignore" and not permit.counted)
        ) and not permit.probe_token
        # A cached breaker's locally admitted call was not counted in Redis yet.
        own_call = 0 if permit.counted or outcome in ("ignore", "release") else 1
        if quiet:
            # Nothing for Redis to learn now: a plain success was counted when admitted
            # (strict), or joins the batch (cached), which goes out once it is due.
            if not self._cached:
                return None
            batched = self._local.batch.add(permit, own_call, self._flush_interval, self.now())
            return None if batched is None else self._flush_args(*batched)
        riding = 0
        if self._cached:
            riding = self._local.batch.take(permit.generation, permit.incarnation)
        args = self._args(
            outcome,
            str(permit.generation),
            permit.probe_token,
            "1" if slow else "0",
            "" if permit.admitted_at_ms is None else str(permit.admitted_at_ms),
            permit.incarnation,
            str(riding + own_call),
        )
        if self.policies.quorum:
            args += ("1" if keep_lease else "0", process_identity())
        elif keep_lease:
            args.append("1")
        return args

    def retry_args(self, permit: PermitState) -> list[str]:
        """The record script's arguments that ask the fleet's retry budget for one retry
        of ``permit``'s call (an attempt failed; nothing else is counted)."""
        return self._args(
            "retry", str(permit.generation), "", "0", "", permit.incarnation, "0"
        )

    def on_retry_reply(self, raw: list[Any]) -> RetryVerdict:
        """The budget's answer to a retry (hooks fire for transitions it made).

        Raises:
            CircuitOpenError: the shared breaker is open: the guard stops retrying.
        """
        reply = decode_record(self.name, raw)
        self._fire(reply.transitions)
        return self.policies.on_retry_reply(reply)

    def _flush_args(self, generation: int, incarnation: str, calls: int) -> list[str]:
        return self._args("flush", str(generation), "", "0", "", incarnation, str(calls))

    def release_args(self, permit: PermitState) -> list[str]:
        """The record script's arguments that free ``permit``'s probe slot and count
        nothing (for a caller interrupted or cancelled with a probe in hand)."""
        return self._args(
            "release", str(permit.generation), permit.probe_token, "0", "",
            permit.incarnation, "0",
        )

    def flush_args(self) -> list[str] | None:
        """The record script's arguments that send every counted success now; None when
        there are none."""
        batched = self._local.batch.drain()
        return None if batched is None else self._flush_args(*batched)

    def on_record_reply(self, raw: list[Any]) -> RecordReply:
        """Take in the record script's reply: the local copy follows it, hooks fire."""
        reply = decode_record(self.name, raw)
        if self._cached:
            self._local.learn(reply)
        self._fire(reply.transitions)
        if self.policies.quorum and reply.status == "recorded":
            self.policies.on_failure_reply(reply)
        return reply

    def on_record_unavailable(self) -> None:
        """Redis could not take an outcome: the local copy can no longer be trusted."""
        self._local.copy = None

    def on_record_refused(self, outcome: str, exc: Exception) -> None:
        """Redis refused an outcome: say so; bookkeeping never masks the call's result."""
        logger.warning(
            "circuit %r: could not record a %s: %s: %s",
            self.name,
            outcome,
            type(exc).__name__,
            exc,
            extra={"event": "record_failed", "breaker": self.name, "outcome": outcome},
        )
