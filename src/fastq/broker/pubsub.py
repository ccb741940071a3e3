"""The control channel's transport: Redis pub/sub (``fastq.control`` is the user's side).

``app.control`` publishes a command on one channel per database; every worker
subscribes to it with a connection of its own, and a command that wants replies
names a reply channel the asker listens on. Pub/sub delivers to whoever listens
at that moment and keeps nothing, which is what control needs: a command for
the workers that are up now. Revokes, which must also reach workers started
later, are kept in a sorted set besides (``RedisBroker.revoke``).

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import time
from typing import Any

from .connect import CONNECTION_ERRORS


def ask(client, channel: str, body: str, reply_to: str, expected: int, timeout: float) -> list[bytes]:
    """Publish ``body`` on ``channel`` once subscribed to ``reply_to``; collect the
    replies for at most ``timeout`` seconds (sooner once ``expected`` came, when > 0)."""
    pubsub = client.pubsub(ignore_subscribe_messages=False)
    replies: list[bytes] = []
    try:
        pubsub.subscribe(reply_to)
        # Wait for the subscription to be confirmed: a reply published before it would be lost.
        deadline = time.monotonic() + max(timeout, 2.0)
        while time.monotonic() < deadline:
            m = pubsub.get_message(timeout=0.5)
            if m is not None and m["type"] == "subscribe":
                break
        client.publish(channel, body)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (expected and len(replies) >= expected):
                break
            m = pubsub.get_message(timeout=min(left, 0.5))
            if m is not None and m["type"] == "message":
                replies.append(m["data"])
    finally:
        try:
            pubsub.unsubscribe()
            pubsub.close()
        except CONNECTION_ERRORS:
            pass
    return replies


class Subscription:
    """A worker's subscription to the control channel, on connections of its own
    (fork-safe, and never contended with the worker's)."""

    def __init__(self, client: Any, channel: str) -> None:
        #: The subscription's own client, for the calls a (re)subscription makes.
        self.client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._pubsub.get_message(timeout=1.0)  # the subscribe confirmation

    def next(self, timeout: float) -> bytes | None:
        """The next command published, or None after ``timeout`` seconds."""
        m = self._pubsub.get_message(timeout=timeout)
        return m["data"] if m is not None and m["type"] == "message" else None

    def reply(self, reply_to: str, body: str) -> None:
        self.client.publish(reply_to, body)

    def close(self) -> None:
        try:
            self._pubsub.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


__all__ = ["Subscription", "ask"]
