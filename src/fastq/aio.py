"""asyncio producers: send tasks and wait for results without blocking the loop.

For async web apps (FastAPI, aiohttp, Starlette)::

    r = await add.delay_async(2, 2)            # Task.delay_async / Task.apply_async_async
    value = await r.get_async(timeout=10)      # AsyncResult.get_async

These use redis-py's asyncio client (``redis.asyncio``), one client per event
loop and Redis URL, made on first use. ``get_async`` waits like ``get()``: a
blocking ``BLMOVE key key LEFT LEFT`` on the one-element result list, which
returns the moment the worker stores the result (no polling); each waiting
coroutine holds one connection from the loop's pool while it waits.

Call ``await fastq.aio.aclose()`` when the loop's work is done (e.g. in the
lifespan shutdown of a web app) to close the connections of the running loop.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

# The sends themselves are fastq.producer's (Producer.send_async), the waits the
# results store's (fastq.broker.results); this module is where users find both
# described, and the connection cleanup.
from .broker.aioclient import aclose

__all__ = ["aclose"]
