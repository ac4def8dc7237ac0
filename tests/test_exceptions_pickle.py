"""Every redbreaker exception survives pickling (celery, rq and multiprocessing carry
exceptions between processes): same class, same attributes, same message."""

from __future__ import annotations

import pickle

import pytest

import redbreaker

CASES = [
    redbreaker.ConfigError("max_wait", "must be seconds"),
    redbreaker.CircuitOpenError("payments", "open", 1.25),
    redbreaker.CircuitOpenError("payments", "forced_open", None),
    redbreaker.StoreUnavailableError("payments", 0.5, "ConnectionError: refused"),
    redbreaker.AttemptTimeoutError("payments", 2.0, started=True),
    redbreaker.AttemptTimeoutError("payments", 2.0, started=True, cancelled=True),
    redbreaker.AttemptRejectedError("payments", 8),
    redbreaker.PermitError("settled twice"),
    redbreaker.AsyncCallError("call()"),
    redbreaker.StoreError("WRONGTYPE"),
]


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_an_exception_comes_back_the_same(exc: Exception) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)


@pytest.mark.parametrize("exc", CASES[1:4], ids=lambda e: f"{type(e).__name__}-{e.state}")
def test_a_rejection_is_rebuilt_from_its_args(exc: redbreaker.CircuitOpenError) -> None:
    # What celery's JSON result backend does with a stored exception: cls(*args).
    back = type(exc)(*exc.args)
    assert vars(back) == vars(exc)
    assert str(back) == str(exc)
