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
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref

import redis.asyncio
from redis.exceptions import NoScriptError

from .broker.connect import make_async_client
from .broker.due import due_arg
from .broker.redis import CONNECTION_ERRORS, safe_url
from .broker.scripts import SCRIPTS
from .exceptions import BrokerError
from .exceptions import TimeoutError as FastQTimeout
from .messages import ResultMeta, decode_result
from .unique import OPTIONS as _SPECIAL_OPTIONS

#: Longest single blocking wait; a longer timeout waits in several (as result.py).
_WAIT_CHUNK = 5.0

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
        kwargs = dict(broker._kwargs)
        if blocking:
            kwargs["socket_timeout"] = _WAIT_CHUNK + 5
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


async def publish(broker, queue: str, priority: int, field: bytes, payload: bytes, due: float | None = None) -> None:
    """The asyncio twin of ``RedisBroker.publish``: XADD to the priority stream, or
    ZADD to the delayed set when due later (and register the queue once)."""
    qk = broker._send_keys(queue)  # a sharded queue: the next shard
    if due is None:
        cmd = ("XADD", qk.streams[priority], "*", field, payload)
    else:  # delay.lua: the due time on Redis's clock (broker/due.py)
        cmd = ("EVALSHA", SCRIPTS.delay.sha, 1, qk.delayed, due_arg(due), field + b"%d" % priority + payload)
    register = queue not in broker._known_queues
    client = client_for(broker)

    async def send():
        if not register:
            return await client.execute_command(*cmd)
        async with client.pipeline(transaction=False) as pipe:
            pipe.execute_command(*cmd)
            pipe.execute_command("SADD", broker.keys.queues_set, queue)
            return await pipe.execute()

    async def call():
        try:
            return await send()
        except NoScriptError:  # a fresh or restarted server: load delay.lua, send again
            await client.script_load(SCRIPTS.delay.source)
            return await send()

    await _retrying(broker, call)
    broker._known_queues.add(queue)


async def send(app, name: str, args, kwargs, options: dict, task=None):
    """Build, encode and publish a task message; the AsyncResult. In eager mode
    (``task_always_eager``) the task runs here: a coroutine task on this loop."""
    from .result import AsyncResult

    if app.conf.task_always_eager:
        if task is None:
            from .exceptions import NotRegistered

            raise NotRegistered(f"task {name!r} is not registered, so it cannot run eagerly")
        from .worker.eager import run_eagerly_async

        return await run_eagerly_async(task, list(args or ()), dict(kwargs or {}), options.get("task_id"), options)
    # Typed, unique or debounced sends, and sends confirmed by replicas (WAIT, which
    # must follow the write on its connection), take the sync path in a thread.
    if task is not None and task._special:
        return await asyncio.to_thread(lambda: task.apply_async(args, kwargs, **options))
    if app.broker.wait_replicas or not _SPECIAL_OPTIONS.isdisjoint(options):
        return await asyncio.to_thread(app._send, name, args, kwargs, dict(options), task)
    msg, queue, priority, due = app._build(name, args, kwargs, dict(options), task)
    payload = app._encode(msg, task)
    await publish(app.broker, queue, priority, app.serializer.field, payload, due)
    result = AsyncResult(msg.id, app=app, task_name=name)
    if msg.parent_id is not None:
        result.parent = AsyncResult(msg.parent_id, app=app)
    return result


async def wait(backend, task_id: str, timeout: float | None) -> ResultMeta:
    """Wait for a task's final state without blocking the loop: BLMOVE on the
    result list (in chunks of at most 5 s), like ``RedisBackend.wait``."""
    key = backend.keys.result(task_id)
    client = client_for(backend.broker, blocking=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        chunk = _WAIT_CHUNK if deadline is None else min(_WAIT_CHUNK, deadline - time.monotonic())
        if chunk <= 0:
            raise FastQTimeout(f"task {task_id} not ready after {timeout} s")
        wait_s = max(chunk, 0.001)
        raw = await _retrying(backend.broker, lambda: client.blmove(key, key, wait_s, "LEFT", "LEFT"))  # noqa: B023
        if raw is not None:
            return decode_result(raw)


async def get_meta(backend, task_id: str) -> ResultMeta | None:
    """The stored state (final or not) without waiting."""
    client = client_for(backend.broker)

    async def call():
        async with client.pipeline(transaction=False) as pipe:
            pipe.lindex(backend.keys.result(task_id), 0)
            pipe.get(backend.keys.state(task_id))
            return await pipe.execute()

    final, partial = await _retrying(backend.broker, call)
    raw = final if final is not None else partial
    return decode_result(raw) if raw is not None else None


__all__ = ["aclose", "client_for", "get_meta", "publish", "send", "wait"]
