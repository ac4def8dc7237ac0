"""Adapters that guard the consumers of the queues people run, one module per queue, each
an optional extra imported only when used:

- :mod:`redbreaker.contrib.celery` (``pip install redbreaker[celery]``)
- :mod:`redbreaker.contrib.rq` (``pip install redbreaker[rq]``)
- :mod:`redbreaker.contrib.arq` (``pip install redbreaker[arq]``)
- :mod:`redbreaker.contrib.dramatiq` (``pip install redbreaker[dramatiq]``)

Every adapter does the same three things: it admits a job only through its breaker, puts
a rejected job away for ``breaker.defer_delay(rejection)`` seconds without counting it as
a failed attempt, and warns at start-up when the queue's broker is the breaker's own Redis.

Metrics observers (docs/metrics.md), registered with ``connect(url, observers=[...])``:

- :mod:`redbreaker.contrib.prometheus` (``pip install redbreaker[prometheus]``)
- :mod:`redbreaker.contrib.otel` (``pip install redbreaker[otel]``)
"""

from __future__ import annotations
