"""The fleet policies' decisions, shared by both drivers: no I/O here.

- The retry budget: what a guard sends before a retry (one record script call, outcome
  ``retry``), what the reply means (retry, stop with the last error, stop because the
  breaker opened), and the log line said once per edge.
- Quorum opening: who this process is to the reporter set (host, pid and a random part,
  new after a fork), what a reply short of the quorum means (said once per edge), and the
  config of the breaker each process keeps of its own.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from ._exceptions import CircuitOpenError
from ._hooks import logger

if TYPE_CHECKING:
    from ._config import BreakerConfig
    from ._observe import Reports
    from ._state import RecordReply

__all__ = ["FleetPolicies", "RetryVerdict", "own_config", "process_identity"]

RetryVerdict = Literal["retry", "exhausted"]
"""The budget's answer to one retry: go on, or stop with the last real error."""

# The identity made for the pid that holds it (a forked child has another pid).
_identity: dict[int, str] = {}


def process_identity() -> str:
    """This process as a reporter: ``host:pid:random``. A forked child (a new pid) or a
    restarted process is a new reporter, so a pid reused on another life never merges."""
    pid = os.getpid()
    identity = _identity.get(pid)
    if identity is None:
        host = socket.gethostname()[:64] or "unknown-host"
        _identity.clear()
        identity = _identity[pid] = f"{host}:{pid}:{secrets.token_hex(4)}"
    return identity


def own_config(config: BreakerConfig) -> BreakerConfig:
    """The settings of a process's own breaker (``min_reporters`` > 1): the fleet's trip
    rules and recovery on an embedded store, admitting from its local copy (cached, so a
    success costs no script call), with no quorum and no budget of its own."""
    return replace(
        config,
        min_reporters=1,
        retry_budget=None,
        retry_budget_floor=10.0,
        consistency="cached",
        on_store_error="reject",
    )


class FleetPolicies:
    """One breaker's fleet policies in one process: the retry budget's and the quorum's
    edges, each said once when it begins and once when it ends."""

    __slots__ = (
        "_budget_exhausted",
        "_last_refusal_ms",
        "_name",
        "_quorum_short",
        "_refill_ms",
        "_reports",
        "min_reporters",
        "quorum",
    )

    def __init__(self, name: str, config: BreakerConfig, reports: Reports) -> None:
        self._name = name
        self._reports = reports
        self.min_reporters = config.min_reporters
        # A trip needs more than one reporter, and each process keeps a breaker of its own.
        self.quorum = config.min_reporters > 1
        self._budget_exhausted = False
        self._last_refusal_ms = 0
        # A budget near its limit grants and refuses in turn: it counts as available again
        # only once a window bucket (window / 10) passed without a refusal, so a fleet at
        # the limit logs one pair per bucket at most, not one per call.
        self._refill_ms = max(1, math.ceil(config.window_seconds * 100))
        self._quorum_short = False

    def on_retry_reply(self, reply: RecordReply) -> RetryVerdict:
        """What the budget said of one retry.

        Raises:
            CircuitOpenError: the shared breaker is open or forced open: no more retries.
        """
        if reply.status == "reject":
            retry_after = None if reply.retry_after_ms < 0 else reply.retry_after_ms / 1000
            raise CircuitOpenError(self._name, reply.state.value, retry_after)
        if reply.status == "exhausted":
            self._reports.policy("retry_budget_exhausted")
            self._last_refusal_ms = reply.now_ms
            if not self._budget_exhausted:
                self._budget_exhausted = True
                logger.warning(
                    "circuit %r: the fleet's retry budget is spent; calls end at their "
                    "first failure until it refills",
                    self._name,
                    extra={"event": "retry_budget_exhausted", "breaker": self._name},
                )
            return "exhausted"
        if self._budget_exhausted and reply.now_ms - self._last_refusal_ms >= self._refill_ms:
            self._budget_exhausted = False
            logger.info(
                "circuit %r: the fleet's retry budget allows retries again",
                self._name,
                extra={"event": "retry_budget_available", "breaker": self._name},
            )
        return "retry"

    def on_failure_reply(self, reply: RecordReply) -> None:
        """A failure (or slow call) was recorded: say when a trip rule fired short of the
        quorum (the fleet's breaker stayed closed), and when that ends."""
        if reply.reporters > 0:
            if not self._quorum_short:
                self._quorum_short = True
                logger.warning(
                    "circuit %r: a trip rule fired, but only %d of the %d processes it "
                    "needs reported failures: the fleet's breaker stays closed, each "
                    "failing process's own breaker protects it",
                    self._name,
                    reply.reporters,
                    self.min_reporters,
                    extra={
                        "event": "quorum_not_met",
                        "breaker": self._name,
                        "reporters": reply.reporters,
                        "min_reporters": self.min_reporters,
                    },
                )
        elif self._quorum_short:
            self._quorum_short = False
            logger.log(
                logging.INFO,
                "circuit %r: no trip rule short of the quorum any more",
                self._name,
                extra={"event": "quorum_not_met_ended", "breaker": self._name},
            )
