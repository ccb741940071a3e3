"""The asyncio side of the connection to Redis: one ``redis.asyncio`` client per
event loop and Redis URL (made on first use), and the retry that turns an
unreachable server into BrokerError. Used by the async producer (fastq.aio) and
the async result waits (fastq.result).

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import asyncio
import random
import weakref

import redis.asyncio

from ..exceptions import BrokerError
from .connect import make_async_client
from .redis import CONNECTION_ERRORS, safe_url

#: Longest single blocking wait on a result; a longer timeout waits in several, so a
#: lost connection or a Ctrl-C is noticed within this many seconds.
WAIT_CHUNK = 5.0

#: loop -> {(url, blocking): client}
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def client_for(broker, blocking: bool = False) -> redis.asyncio.Redis:
    """The running loop's asyncio client for this broker's Redis (``blocking``:
    the one for waits, with a socket timeout longer than a wait)."""
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    key = (broker.url, blocking)
    client = per_loop.get(key)
    if client is None:
        kwargs = broker.connection_options()
        if blocking:
            kwargs["socket_timeout"] = WAIT_CHUNK + 5
        client = per_loop[key] = make_async_client(broker.target, **kwargs)
    return client


async def aclose() -> None:
    """Close this loop's connections (they are made again if needed)."""
    per_loop = _clients.pop(asyncio.get_running_loop(), None) or {}
    for client in per_loop.values():
        await client.aclose()


async def _retrying(broker, call):
    """``await call()``, retried on connection errors with backoff, then BrokerError."""
    for attempt in range(broker.retries + 1):
        try:
            return await call()
        except CONNECTION_ERRORS as exc:
            if attempt == broker.retries:
                raise BrokerError(f"Redis at {safe_url(broker.url)} is unreachable: {exc}") from exc
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["aclose", "client_for"]
