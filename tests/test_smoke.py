"""A first end-to-end check on every store kind."""

from __future__ import annotations

import pytest

import redbreaker


def test_trip_probe_close(store: redbreaker.Store, clock: redbreaker.ManualClock) -> None:
    """Three failures open it; after the recovery timeout one probe closes it."""
    seen: list[redbreaker.Transition] = []
    breaker = redbreaker.Breaker(
        "smoke", store=store, failure_threshold=3, recovery_timeout=5, on_transition=[seen.append]
    )
    assert breaker.call(lambda: 42) == 42
    for _ in range(3):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    with pytest.raises(redbreaker.CircuitOpenError) as rejected:
        breaker.call(lambda: 1)
    assert rejected.value.retry_after == 5.0
    clock.advance(5)
    assert breaker.call(lambda: "ok") == "ok"
    assert [(t.previous, t.current) for t in seen] == [
        (redbreaker.State.CLOSED, redbreaker.State.OPEN),
        (redbreaker.State.OPEN, redbreaker.State.HALF_OPEN),
        (redbreaker.State.HALF_OPEN, redbreaker.State.CLOSED),
    ]
    assert breaker.state is redbreaker.State.CLOSED
