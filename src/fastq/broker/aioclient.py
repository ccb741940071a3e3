"""The asyncio side of the connection to Redis, per event loop and Redis URL
(made on first use): the pipeline the loop's sends and short reads share
(``fastq.broker.autopipe``), a ``redis.asyncio`` client for blocking result
waits, and the retry that turns an unreachable server into BrokerError. Used by
the broker's async sends and the results store's async reads and waits.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import asyncio
import os
import random
import weakref

import redis.asyncio
from redis.exceptions import ResponseError

from ..exceptions import BrokerError
from .autopipe import LoopPipeline
from .cluster import is_redirect
from .connect import CONNECTION_ERRORS, make_async_client, safe_url
from .scripts import SCRIPTS

#: Longest single blocking wait on a result; a longer timeout waits in several, so a
#: lost connection or a Ctrl-C is noticed within this many seconds.
WAIT_CHUNK = 5.0

#: loop -> {(url, blocking): client}
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: loop -> {url: LoopPipeline}
_pipelines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class AsyncChannel:
    """Packed commands out, replies in, over one redis.asyncio connection (the asyncio
    consumer's counterpart of ``Channel``); connects on the first send."""

    def __init__(self, url: str, kwargs: dict) -> None:
        self._client = redis.asyncio.Redis.from_url(url, **kwargs)
        self.conn = None

    async def send(self, data: bytes) -> None:
        if self.conn is None:
            conn = self._client.connection_pool.make_connection()
            await conn.connect()
            self.conn = conn
        await self.conn.send_packed_command(data, check_health=False)

    async def read(self):
        """The next reply; an error reply is raised."""
        return await self.conn.read_response(disable_decoding=True)

    async def read_many(self, n: int) -> list:
        """The next ``n`` replies; error replies are returned, not raised."""
        out = []
        for _ in range(n):
            try:
                out.append(await self.conn.read_response(disable_decoding=True))
            except ResponseError as exc:
                out.append(exc)
        return out

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.disconnect()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


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


#: The pipeline pipeline_for returned last: the common case (one loop, one Redis) skips the lookups.
_last: LoopPipeline | None = None


def pipeline_for(broker) -> LoopPipeline:
    """The running loop's shared pipeline to this broker's Redis (never a forked parent's)."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last.loop is loop and last.url == broker.url and last.pid == os.getpid():
        return last
    per_loop = _pipelines.get(loop)
    if per_loop is None:
        per_loop = _pipelines[loop] = {}
    pipe = per_loop.get(broker.url)
    if pipe is None or pipe.pid != os.getpid():
        pipe = per_loop[broker.url] = LoopPipeline(
            loop, broker.url, lambda: make_async_client(broker.target, **broker.connection_options()))
    _last = pipe
    return pipe


async def aclose() -> None:
    """Close this loop's connections (they are made again if needed)."""
    loop = asyncio.get_running_loop()
    global _last
    for pipe in (_pipelines.pop(loop, None) or {}).values():
        pipe.close()
    _last = None
    per_loop = _clients.pop(loop, None) or {}
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


async def execute_packed_async(broker, cmds: list[bytes]) -> list:
    """``broker.execute_packed`` for async code: the commands go out in this loop
    step's shared write (with every other send of the step) and their replies
    are returned; a script Redis lost (a restart) is loaded and its command sent
    again; connection errors are retried with backoff, then BrokerError; an error
    reply is raised. A cluster's slot redirects are followed by the sync path, in
    a thread."""
    if broker.is_cluster:
        return await asyncio.to_thread(broker.execute_packed, cmds, True)
    return await _retrying(broker, lambda: _execute_shared(broker, cmds))


async def _execute_shared(broker, cmds: list[bytes]) -> list:
    pipe = pipeline_for(broker)
    replies: list = [None] * len(cmds)
    todo = list(range(len(cmds)))
    for _ in range(2):
        got = await pipe.execute(b"".join([cmds[i] for i in todo]), len(todo))
        missing = []
        for i, reply in zip(todo, got):
            replies[i] = reply
            if isinstance(reply, ResponseError):
                if is_redirect(reply):  # a demoted master: connect again (Sentinel names the new one)
                    pipe.close()
                    raise ConnectionError(f"Redis refused a write: {reply}")
                if "NOSCRIPT" in str(reply):
                    missing.append(i)
        error = next((r for r in replies if isinstance(r, ResponseError) and "NOSCRIPT" not in str(r)), None)
        if error is not None:
            raise error
        if not missing:
            return replies
        loads = SCRIPTS.load_commands()
        await pipe.execute(b"".join(loads), len(loads))
        todo = missing
    raise BrokerError("Redis lost its scripts twice in a row while a message was sent")


__all__ = ["WAIT_CHUNK", "aclose", "client_for", "execute_packed_async", "pipeline_for"]
