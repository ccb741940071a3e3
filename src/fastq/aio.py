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

import asyncio

import redis.asyncio
from redis.exceptions import NoScriptError, ResponseError

from .broker.aioclient import _retrying, aclose, client_for
from .broker.scripts import SCRIPTS
from .eager import run_eagerly_async
from .exceptions import BrokerError, NotRegistered
from .options import SPECIAL_OPTIONS
from .result import AsyncResult


async def publish(broker, queue: str, priority: int, field: bytes, payload: bytes, due: float | None = None) -> None:
    """The asyncio twin of ``RedisBroker.publish``: the same commands (the broker's
    ``publish_commands``: the gate of a fair queue, the stream or the delayed set),
    sent on this loop's connection; only the waiting differs."""
    cmds = broker.publish_commands(queue, priority, field, payload, due)
    if broker.is_cluster:  # the sync path follows slot redirects; the loop waits in a thread
        await asyncio.to_thread(broker.execute_packed, cmds, True)
        return
    client = client_for(broker)
    await _retrying(broker, lambda: _execute_packed(client, cmds))


async def _execute_packed(client: redis.asyncio.Redis, cmds: list[bytes]) -> None:
    """Send packed commands in one write and read every reply (as ``execute_packed``);
    a script Redis lost (a restart) is loaded and its command sent again."""
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


async def send(app, name: str, args, kwargs, options: dict, task=None):
    """Build, encode and publish a task message; the AsyncResult. In eager mode
    (``task_always_eager``) the task runs here: a coroutine task on this loop."""
    if app.conf.task_always_eager:
        if task is None:
            raise NotRegistered(f"task {name!r} is not registered, so it cannot run eagerly")
        return await run_eagerly_async(task, list(args or ()), dict(kwargs or {}), options.get("task_id"), options)
    # Typed, unique or debounced sends, and sends confirmed by replicas (WAIT, which
    # must follow the write on its connection), take the sync path in a thread.
    if task is not None and task._special:
        return await asyncio.to_thread(lambda: task.apply_async(args, kwargs, **options))
    if app.broker.wait_replicas or not SPECIAL_OPTIONS.isdisjoint(options):
        return await asyncio.to_thread(app._send, name, args, kwargs, dict(options), task)
    msg, queue, priority, due = app._build(name, args, kwargs, dict(options), task)
    payload = app._encode(msg, task)
    await publish(app.broker, queue, priority, app.serializer.field, payload, due)
    result = AsyncResult(msg.id, app=app, task_name=name)
    if msg.parent_id is not None:
        result.parent = AsyncResult(msg.parent_id, app=app)
    return result


__all__ = ["aclose", "client_for", "publish", "send"]
