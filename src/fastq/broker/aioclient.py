"""The asyncio side of the connection to Redis: one ``redis.asyncio`` client per
event loop and Redis URL (made on first use), and the retry that turns an
unreachable server into BrokerError. Used by the broker's async sends and the
results store's async waits.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import asyncio
import random
import weakref

import redis.asyncio
from redis.exceptions import NoScriptError, ResponseError

from ..exceptions import BrokerError
from .connect import CONNECTION_ERRORS, make_async_client, safe_url
from .scripts import SCRIPTS

#: Longest single blocking wait on a result; a longer timeout waits in several, so a
#: lost connection or a Ctrl-C is noticed within this many seconds.
WAIT_CHUNK = 5.0

#: loop -> {(url, blocking): client}
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


async def execute_packed_async(broker, cmds: list[bytes]) -> None:
    """``broker.execute_packed`` for async code: the commands in one write on the
    running loop's connection, every reply read; a script Redis lost (a restart)
    is loaded and its command sent again; connection errors retried with backoff.
    A cluster's slot redirects are followed by the sync path, in a thread."""
    if broker.is_cluster:
        await asyncio.to_thread(broker.execute_packed, cmds, True)
        return
    client = client_for(broker)
    await _retrying(broker, lambda: _send_packed(client, cmds))


async def _send_packed(client: redis.asyncio.Redis, cmds: list[bytes]) -> None:
    todo = cmds
    for _ in range(2):
        conn = await client.connection_pool.get_connection()
        errors = []
        try:
            await conn.send_packed_command(b"".join(todo))
            for cmd in todo:
                try:
                    await conn.read_response(disable_decoding=True)
                except ResponseError as exc:  # the reply was read: the others follow on the connection
                    errors.append((cmd, exc))
        finally:
            await client.connection_pool.release(conn)
        missing = [cmd for cmd, exc in errors if isinstance(exc, NoScriptError) or "NOSCRIPT" in str(exc)]
        if len(missing) < len(errors):
            raise next(exc for _, exc in errors if not ("NOSCRIPT" in str(exc) or isinstance(exc, NoScriptError)))
        if not missing:
            return
        await SCRIPTS.load_all_async(client)
        todo = missing
    raise BrokerError("Redis lost its scripts twice in a row while a message was sent")


__all__ = ["WAIT_CHUNK", "aclose", "client_for", "execute_packed_async"]
