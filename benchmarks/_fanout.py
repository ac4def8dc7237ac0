"""What one pub/sub message costs Redis per subscriber: the fan-out of a transition.

``subscribers`` plain sockets SUBSCRIBE to one channel of this module's own (the cost of a
delivery does not depend on whose channel it is) and never read: every message fits in
their kernel buffers. The parent PUBLISHes ``messages`` messages of a transition's size with
and without them; the difference in Redis CPU (INFO cpu) over the deliveries is the cost of
one delivery, the write to one subscriber included.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

CHANNEL = b"bench-scale:fanout"
PAYLOAD = 300  # bytes: about one transition event's JSON


def _cpu(admin: redis.Redis) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _publish(admin: redis.Redis, messages: int, expect: int) -> float:
    body = b"x" * PAYLOAD
    before = _cpu(admin)
    for _ in range(messages):
        got = admin.publish(CHANNEL, body)
        if got != expect:
            raise RuntimeError(f"PUBLISH reached {got} subscribers, expected {expect}")
    return _cpu(admin) - before


def measure(admin: redis.Redis, host: str, port: int, *, subscribers: int,
            messages: int) -> dict[str, float]:
    """Redis CPU µs per delivered message, and per PUBLISH with no subscriber."""
    alone = _publish(admin, messages, 0)
    socks: list[socket.socket] = []
    command = b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(CHANNEL), CHANNEL)
    try:
        for _ in range(subscribers):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(command)
            socks.append(sock)
        deadline = time.monotonic() + 30
        while dict(admin.pubsub_numsub(CHANNEL)).get(CHANNEL, 0) < subscribers:
            if time.monotonic() > deadline:
                raise RuntimeError("the fan-out subscribers did not all subscribe")
            time.sleep(0.01)
        fanned = _publish(admin, messages, subscribers)
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    return {
        "subscribers": subscribers, "messages": messages, "payload": PAYLOAD,
        "us_per_publish_alone": alone * 1e6 / messages,
        "us_per_delivery": (fanned - alone) * 1e6 / (messages * subscribers),
    }
