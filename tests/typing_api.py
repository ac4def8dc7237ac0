"""Type-checked by mypy --strict in CI, never run: the public API keeps callers' types.

A line marked ``type: ignore[...]`` must stay an error (mypy --strict warns about an
unused ignore), so a decorator that erased the signature would fail this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redbreaker

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterator

store = redbreaker.connect("memory://")
payments = redbreaker.Breaker("payments-api", store=store, failure_threshold=5)


@payments.guard(attempt_timeout=2.0, retry_on=(ConnectionError,))
def charge(order_id: str, *, amount: int) -> dict[str, int]:
    return {order_id: amount}


@payments
def refund(order_id: str) -> bool:
    return bool(order_id)


value: dict[str, int] = charge("o-1", amount=3)
outcome: redbreaker.Outcome[dict[str, int]] = charge.outcome("o-1", amount=3)
degraded: bool = outcome.degraded
failure: redbreaker.Failure | None = outcome.failure
refunded: bool = refund("o-1")
direct: int = payments.call(len, "abc")
guarded: str = payments.guard().call(str.upper, "abc")

charge(1, amount=3)  # type: ignore[arg-type]
charge("o-1")  # type: ignore[call-arg]
refund(order_id=2)  # type: ignore[arg-type]
wrong: str = payments.call(len, "abc")  # type: ignore[assignment]

with payments.acquire() as permit:
    is_probe: bool = permit.is_probe

with redbreaker.set_testing(max_attempts=2):
    pass

# Settings are typed: a misspelt or mistyped one is a type error, not only a ConfigError.
redbreaker.Breaker("typo", store=store, failure_treshold=5)  # type: ignore[call-arg]
redbreaker.Breaker("typed", store=store, failure_threshold="5")  # type: ignore[arg-type]

# The fleet policies are settings like the others, and their readings are typed.
fleet = redbreaker.Breaker(
    "fleet-api", store=store, retry_budget=0.2, retry_budget_floor=5.0, min_reporters=3
)
redbreaker.Breaker("typed", store=store, min_reporters="3")  # type: ignore[arg-type]
fleet_snapshot = fleet.snapshot()
retries: int = fleet_snapshot.window_retries + fleet_snapshot.retry_budget_exhausted_count
reporters: int = fleet_snapshot.reporters
process_state: redbreaker.State | None = fleet_snapshot.process_state
try:
    fleet.call(refund, "o-1")
except redbreaker.CircuitOpenError as rejection:
    scope: str = rejection.scope
payments.guard(attempt_timout=1)  # type: ignore[call-arg]


# The asyncio twin keeps the same types through await.
async def _aio_api() -> None:
    import redbreaker.aio

    aio_store = redbreaker.aio.connect("memory://")
    orders = redbreaker.aio.Breaker("orders-api", store=aio_store)

    async def fetch(url: str) -> bytes:
        return url.encode()

    body: bytes = await orders.call(fetch, "https://example.invalid")
    size: int = await orders.call(len, "abc")  # a plain function's result as it is
    wrong_body: str = await orders.call(fetch, "x")  # type: ignore[call-overload]
    await orders.call(fetch, 1)  # type: ignore[call-overload]
    del body, size, wrong_body

    @orders
    async def pages(url: str) -> AsyncGenerator[bytes, None]:
        yield url.encode()

    @orders
    async def fetched(url: str) -> bytes:
        return url.encode()

    async for page in pages("https://example.invalid"):
        page_size: int = len(page)
        del page_size
    whole: bytes = await fetched("x")
    not_a_page: str = await fetched("x")  # type: ignore[assignment]
    pages(1)  # type: ignore[arg-type]
    del whole, not_a_page


@payments
def statement_lines(account: str) -> Iterator[str]:
    yield account


first_line: str = next(statement_lines("acct"))
statement_lines(1)  # type: ignore[arg-type]
