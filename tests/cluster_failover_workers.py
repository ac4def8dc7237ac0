"""Worker processes for tests/test_cluster_failover.py's lost-trip run: each calls a
dependency that always fails through one shared breaker on a Redis Cluster, and counts
the dependency calls it made after it had first been rejected (with no lost write the
breaker stays open for its whole recovery_timeout, so such calls are the loss's cost).

The parent kills the breaker's primary only after every worker was rejected: none has a
call in flight then, and every dependency call counted afterwards was admitted by the
promoted replica.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redbreaker


class DependencyDownError(Exception):
    """What the dependency raises: every call fails."""


def run_tripping(
    index: int,
    url: str,
    name: str,
    *,
    prefix: str,
    failure_threshold: int,
    recovery_timeout: float,
    ready: Any,
    go: Any,
    rejected: Any,
    stop: Any,
    results: Any,
) -> None:
    """Wait for ``go``, then call ``name``'s failing dependency until ``stop``. Puts
    ``index`` on ``rejected`` at the first :class:`redbreaker.CircuitOpenError` (not a
    StoreUnavailableError): from then on this worker has no call in flight."""
    store = redbreaker.connect(url, store_timeout=0.5, prefix=prefix)
    breaker = redbreaker.Breaker(
        name,
        store=store,
        failure_threshold=failure_threshold,
        recovery_timeout=recovery_timeout,
        on_store_error="reject",
    )
    outcomes: Counter[str] = Counter()
    calls = {"before_rejection": 0, "after_rejection": 0}
    seen_rejection = False

    def dependency() -> None:
        calls["after_rejection" if seen_rejection else "before_rejection"] += 1
        raise DependencyDownError(name)

    try:
        # The slot table and the cluster's version are asked for now, not after `go`.
        redbreaker.Breaker(f"warm-up-{index}", store=store).call(lambda: None)
        ready.put(index)
        assert go.wait(30)
        while not stop.is_set():
            try:
                breaker.call(dependency)
            except Exception as exc:  # what a caller would see, by type
                outcomes[type(exc).__name__] += 1
                if type(exc) is redbreaker.CircuitOpenError and not seen_rejection:
                    seen_rejection = True
                    rejected.put(index)
            time.sleep(0.002)
        results.put({"index": index, "outcomes": dict(outcomes), **calls})
    except BaseException as exc:
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        store.close()
