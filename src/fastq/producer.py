"""The producer: the one way a message leaves, whoever sends it.

``delay``/``apply_async``, ``send_task``, the asyncio API, ``send_many``,
unique and debounced sends, canvas workflows, retries and beat all come here:

- ``build`` makes the message and decides where it goes (routing, priority,
  countdown/eta, expiry, parent and root ids, a tenant's group, the
  ``before_task_publish`` signal), checking every option at the call;
- ``encode`` serializes it and enforces ``max_message_size``;
- ``send`` / ``send_async`` / ``send_many`` hand the bytes to the broker, which
  builds the commands (through a fair queue's gate when there is one). Sync and
  async sends make the same decisions and differ only in how they wait.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

from ._speedups import current_request, new_task_id
from .broker.keys import validate_queue_name
from .eager import run_eagerly_async
from .exceptions import ImproperlyConfigured, MessageTooLarge, NotRegistered
from .fairness import with_tenant
from .messages import Message, Serializer, check_serializer, now
from .options import (
    REPR_OPTIONS,
    SEND_OPTIONS,
    SPECIAL_OPTIONS,
    WORKER_OPTIONS,
    check_option,
    due_time,
    expiry_time,
    unknown_options,
)
from .result import AsyncResult
from .signals import before_task_publish
from .unique import (
    DEBOUNCE_RECORD_TTL,
    DEFAULT_UNIQUE_FOR,
    check_key,
    check_seconds,
)
from .workflow import callbacks, note_child

#: The receivers of before_task_publish (a list the signal keeps): empty in most
#: apps, so the per-message check is one truth test.
_publish_hooks = before_task_publish.receivers


class Producer:
    """Builds, encodes and sends the messages of one app (``app.producer``)."""

    __slots__ = ("app",)

    def __init__(self, app) -> None:
        self.app = app

    # --- building -------------------------------------------------------------------

    def build(self, name: str, args, kwargs, options: dict, task) -> tuple[Message, str, int, float | None]:
        """Make the message and decide where it goes: (message, queue, priority, due).
        ``options`` is consumed: what is left over is an unknown option (TypeError)."""
        if options:
            return self._build_with_options(name, args, kwargs, options, task)
        if task is not None and task._limits_reversed:
            _check_limits(name, task, options)
        # The common call (no options) stays short: it runs once per message.
        queue, priority = self.placement(name, task, args, kwargs, options)
        expires = None if task is None or task.expires is None else expiry_time(task.expires, now())
        parent = current_request.get()
        if parent is None:
            parent_id = root_id = None
        else:
            parent_id, root_id = parent.id, parent.root_id or parent.id
        msg = Message(new_task_id(), name, args or [], kwargs or {}, 0, None, expires, priority, parent_id, root_id,
                      now(), None, None)
        if parent is not None and parent.delivery is not None:  # sent from a task a worker runs
            note_child(parent, msg.id)
        if _publish_hooks:
            self._before_publish(msg, queue, priority, None)
        return msg, queue, priority, None

    def placement(self, name: str, task, args, kwargs, options) -> tuple[str, int]:
        """The queue and priority a message goes to when the call does not say."""
        if task is not None and task.queue:
            queue = task.queue
        else:
            queue = self.app.router.route(name, args, kwargs, options)
        if task is not None and task.priority is not None:
            return queue, task.priority
        # conf["..."]: a plain dict read; attribute access on the settings costs
        # about as much as the rest of this function
        return queue, _check_priority(self.app.conf["task_default_priority"])

    def _before_publish(self, msg: Message, queue: str, priority: int, due: float | None) -> None:
        """Send before_task_publish; its receivers may add to ``msg.headers``."""
        headers = msg.headers = dict(msg.headers) if msg.headers else {}
        opts = msg.options
        # properties: Celery's message properties (what the transport carries beside the headers)
        before_task_publish.send(sender=msg.task, body=msg, headers=headers, routing_key=queue, priority=priority,
                                 eta=due, exchange="", properties={
                                     "correlation_id": msg.id, "reply_to": opts.get("reply_to") if opts else None,
                                     "priority": priority, "delivery_mode": 2})
        if not headers:
            msg.headers = None

    def _build_with_options(self, name: str, args, kwargs, options: dict, task) -> tuple[Message, str, int, float | None]:
        stamps = _take_stamps(name, options) if "stamped_headers" in options else None
        if "time_limit" in options or "soft_time_limit" in options or (task is not None and task._limits_reversed):
            _check_limits(name, task, options)
        task_id = options.pop("task_id", None) or new_task_id()
        eta = options.pop("eta", None)
        countdown = options.pop("countdown", None)
        expires = options.pop("expires", None)
        priority = options.pop("priority", None)
        queue = options.pop("queue", None)
        t = now()
        due = due_time(eta, countdown, t)
        if expires is None and task is not None:
            expires = task.expires
        if expires is not None:
            expires = expiry_time(expires, t)
        default_queue, default_priority = self.placement(name, task, args, kwargs, options)
        if queue is None:
            queue = default_queue
        else:
            validate_queue_name(queue)
        priority = default_priority if priority is None else _check_priority(priority)
        parent = current_request.get()
        parent_id = options.pop("parent_id", None) or (parent.id if parent is not None else None)
        root_id = options.pop("root_id", None) or (
            (parent.root_id or parent.id) if parent is not None else None
        )
        retries = options.pop("retries", 0)
        headers = options.pop("headers", None)
        for key in REPR_OPTIONS:  # Celery's: how monitors show the call; carried as headers
            value = options.pop(key, None)
            if value is not None:
                if not isinstance(value, str):
                    raise TypeError(f"task {name!r}: {key} must be a string, not {type(value).__name__}")
                headers = {**(headers or {}), key: value}
        if stamps is not None:  # fastq.stamping: carried in the headers, where the worker reads them
            headers = {**(headers or {}), **stamps}
        _check_envelope(task_id, parent_id, root_id, retries, headers)
        tenant_key = options.pop("tenant_key", None)
        if "group_key" in options:  # the option's name before the rename (#19)
            old = options.pop("group_key")
            if tenant_key is not None and old is not None:
                raise ValueError(f"task {name!r}: both tenant_key and group_key given (group_key is tenant_key's old name)")
            if tenant_key is None:
                tenant_key = old
        if tenant_key is not None:  # per-tenant fairness: the queue must be fair (fastq.fairness)
            headers = with_tenant(self.app, name, queue, tenant_key, headers)
        msg = Message(
            task_id,
            name,
            list(args) if args else [],
            kwargs if kwargs else {},
            retries,
            None if due is None else float(due),
            expires,
            priority,
            parent_id,
            root_id,
            t,
            _message_options(options),
            headers,
        )
        if parent is not None and parent.delivery is not None and parent_id == parent.id:
            note_child(parent, msg.id)
        if _publish_hooks:
            self._before_publish(msg, queue, priority, due)
        return msg, queue, priority, due

    def encode(self, msg: Message, task) -> bytes:
        """The message's bytes; TypeError naming an argument that cannot be
        serialized, MessageTooLarge past ``max_message_size``."""
        serializer = self.app.serializer
        try:
            payload = serializer.encode(msg)
        except serializer.error as exc:
            raise _unserializable(msg, exc, serializer) from None
        limit = self.app.conf.max_message_size
        if len(payload) > limit:
            raise MessageTooLarge(
                f"message for task {msg.task!r} is {len(payload)} bytes, more than max_message_size={limit}"
            )
        return payload

    # --- sending ----------------------------------------------------------------------

    def send(self, name: str, args, kwargs, options: dict, task) -> AsyncResult:
        """Send one task message; its AsyncResult. Unique and debounced calls
        (``unique_key``, ``debounce_key``) take their own atomic send."""
        if options and not SPECIAL_OPTIONS.isdisjoint(options):
            return self._send_special(name, args, kwargs, options, task)
        app = self.app
        msg, queue, priority, due = self.build(name, args, kwargs, options, task)
        payload = self.encode(msg, task)
        app.broker.publish(queue, priority, app.serializer.field, payload, due)
        return self._result(msg, msg.id, name, task)

    async def send_async(self, name: str, args, kwargs, options: dict, task) -> AsyncResult:
        """``send`` for async code: the same message and commands, sent on the
        running loop's connection. In eager mode (``task_always_eager``) the task
        runs here: a coroutine task on this loop."""
        app = self.app
        if app.conf["task_always_eager"]:  # a plain dict read (see placement)
            if task is None:
                raise NotRegistered(f"task {name!r} is not registered, so it cannot run eagerly")
            return await run_eagerly_async(task, list(args or ()), dict(kwargs or {}), options.get("task_id"), options)
        # Typed and unique tasks, unique or debounced calls, and sends confirmed by
        # replicas (WAIT must follow the write on its connection) take the sync
        # path in a thread: the same decisions, made once.
        if task is not None and task._special:
            return await asyncio.to_thread(lambda: task.apply_async(args, kwargs, **options))
        if app.broker.wait_replicas or not SPECIAL_OPTIONS.isdisjoint(options):
            return await asyncio.to_thread(self.send, name, args, kwargs, dict(options), task)
        msg, queue, priority, due = self.build(name, args, kwargs, dict(options), task)
        payload = self.encode(msg, task)
        await app.broker.publish_async(queue, priority, app.serializer.field, payload, due)
        return self._result(msg, msg.id, name, task)

    def send_many(self, signatures: Iterable) -> list:
        """Send many signatures in pipelined batches; their AsyncResults.

        Signatures without options take a short path: what depends only on the
        task (queue, priority, expiry, parent) is worked out once per run of
        same-task signatures, not once per message."""
        app = self.app
        batch, results = [], []
        in_flight = None  # the previous batch, sent while this one is built
        broker = app.broker
        serializer = app.serializer
        field, encode = serializer.field, serializer.encode
        limit = app.conf.max_message_size
        parent = current_request.get()
        parent_id = parent.id if parent is not None else None
        root_id = (parent.root_id or parent.id) if parent is not None else None
        last_name, placement = None, None
        hooks = _publish_hooks
        special = app._special_tasks
        for sig in signatures:
            name = sig.task
            task = app.tasks.get(name)
            own = sig.options and not SPECIAL_OPTIONS.isdisjoint(sig.options)  # unique_key, debounce_key
            if own or (special and name in special):
                if own or task.unique:  # unique or debounced: its own atomic send
                    results.append(task.apply_async(sig.args, sig.kwargs, **sig.options) if task is not None
                                   else self.send(name, sig.args, sig.kwargs, dict(sig.options), None))
                    continue
                a, kw = task._convert_args(sig.args, sig.kwargs)  # typed or pydantic: convert, then batch
                sig = sig.clone()
                sig.args, sig.kwargs = tuple(a), kw
            if sig.options:
                msg, queue, priority, due = self.build(name, sig.args, sig.kwargs, dict(sig.options), task)
                payload = self.encode(msg, task)
            else:
                if name != last_name:
                    queue, priority = self.placement(name, task, sig.args, sig.kwargs, {})
                    expires = None if task is None or task.expires is None else expiry_time(task.expires, now())
                    last_name, placement = name, (queue, priority, expires)
                queue, priority, expires = placement
                due = None
                msg = Message(new_task_id(), name, sig.args, sig.kwargs, 0, None, expires, priority, parent_id,
                              root_id, now(), None, None)
                if hooks:
                    self._before_publish(msg, queue, priority, None)
                try:
                    payload = encode(msg)
                except serializer.error as exc:
                    raise _unserializable(msg, exc, serializer) from None
                if len(payload) > limit:
                    payload = self.encode(msg, task)  # raises MessageTooLarge with the details
            batch.append((queue, priority, due, payload))
            res = AsyncResult(msg.id, app=app, task_name=name)
            if task is not None and task.ignore_result:
                res.ignored = True
            results.append(res)
            if len(batch) >= 1000:
                if in_flight is not None:
                    broker.finish_packed(in_flight)
                in_flight = broker.start_packed(broker.publish_many_commands(batch, field))
                batch = []
        if in_flight is not None:
            broker.finish_packed(in_flight)
        if batch:
            broker.publish_many(batch, field)
        return results

    # --- unique and debounced sends (fastq.unique documents both) ----------------------

    def _send_special(self, name: str, args, kwargs, options: dict, task) -> AsyncResult:
        where = f"task {name!r}"
        unique_key = options.pop("unique_key", None)
        unique_for = options.pop("unique_for", None)
        debounce = options.pop("debounce_key", None)
        if debounce is not None:
            if unique_key is not None:
                raise ValueError(f"{where}: unique_key and debounce_key cannot be combined")
            if unique_for is not None:
                raise ValueError(f"{where}: unique_for is an option of unique_key, not of debounce_key")
            return self._send_debounced(name, args, kwargs, options, task, check_key(debounce, "debounce_key", where))
        if unique_key is None:
            if unique_for is not None:
                raise ValueError(f"{where}: unique_for needs unique_key (or @app.task(unique=True))")
            return self.send(name, args, kwargs, options, task)
        key = check_key(unique_key, "unique_key", where)
        if unique_for is None:
            unique_for = getattr(task, "unique_for", None) or DEFAULT_UNIQUE_FOR
        ttl = check_seconds(unique_for, "unique_for", where)
        return self._send_unique(name, args, kwargs, options, task, key, ttl)

    def _send_unique(self, name, args, kwargs, options, task, key: str, ttl: float) -> AsyncResult:
        msg, queue, priority, due = self.build(name, args, kwargs, options, task)
        broker = self.app.broker
        lock = broker.unique_lock(queue, key)
        msg.options = {**(msg.options or {}), "unique": lock}  # the worker frees it when the task ends
        payload = self.encode(msg, task)
        cmds = broker.unique_publish_commands(queue, priority, self.app.serializer.field, payload, due, lock,
                                              max(1, math.ceil(ttl * 1000)), msg.id)
        return self._result(msg, _text(broker.execute_packed(cmds)[0]), name, task)

    def _send_debounced(self, name, args, kwargs, options, task, key: str) -> AsyncResult:
        where = f"task {name!r}"
        countdown = options.get("countdown")
        if countdown is None:
            raise ValueError(f"{where}: debounce_key needs countdown= (the debounce window, in seconds)")
        window = check_seconds(countdown, "countdown", where)
        if options.get("eta") is not None:
            raise ValueError(f"{where}: debounce_key takes countdown= (the window), not eta=")
        if options.get("task_id") is not None:
            raise ValueError(f"{where}: debounce_key cannot be combined with task_id: the sends of a window share one id")
        msg, queue, priority, due = self.build(name, args, kwargs, options, task)
        payload = self.encode(msg, task)
        broker = self.app.broker
        record = broker.debounce_record(queue, key)
        cmds = broker.debounce_commands(queue, priority, self.app.serializer.field, payload, due, record,
                                        math.ceil((window + DEBOUNCE_RECORD_TTL) * 1000), msg.id)
        return self._result(msg, _text(broker.execute_packed(cmds)[0]), name, task)

    def _result(self, msg: Message, task_id: str, name: str, task=None) -> AsyncResult:
        """The AsyncResult of a send; ``task_id`` differs from the message's when a
        unique or debounced send found an earlier one, which is the one to follow.
        A task that stores no result (``ignore_result``) gives an ``ignored`` one,
        whose ``get()`` returns None at once, as Celery's does."""
        app = self.app
        if task_id != msg.id:  # not sent: the running task's children list names the one that was
            parent = current_request.get()
            ids = getattr(parent, "_extra", None) if parent is not None else None
            if ids and msg.id in ids:
                ids[ids.index(msg.id)] = task_id
        result: AsyncResult[Any] = AsyncResult(task_id, app=app, task_name=name)
        if (task is not None and task.ignore_result) or (msg.options and msg.options.get("ignore_result")):
            result.ignored = True
        if msg.parent_id is not None:
            result.parent = AsyncResult(msg.parent_id, app=app)
        return result


# --- helpers -------------------------------------------------------------------

def _text(reply) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _message_options(options: dict) -> dict | None:
    out = None
    for key in WORKER_OPTIONS:
        if key in options:
            value = options.pop(key)
            if value is not None:
                if out is None:
                    out = {}
                if key in ("link", "link_error"):  # signatures travel as frozen dicts
                    value = callbacks(value)
                else:
                    check_option(key, value)  # a bad time_limit must fail here, not wedge a worker
                out[key] = value
    check_serializer(options.pop("serializer", None), "apply_async(serializer=...)")
    if options:
        raise unknown_options(options)
    return out


def _take_stamps(name: str, options: dict) -> dict:
    """A signature's stamps (fastq.stamping), taken out of its options as the
    headers that carry them: ``stamped_headers`` names them. A stamp named like
    an apply_async option stays an option too, as in Celery."""
    names = options.pop("stamped_headers")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"task {name!r}: stamped_headers must be a list of stamp names, not {names!r:.100}")
    stamps = {n: options.get(n) if n in _ACTED_ON else options.pop(n, None) for n in names}
    return {"stamped_headers": list(names), "stamps": stamps}


#: The apply_async options the producer or the worker acts on.
_ACTED_ON = frozenset((*SEND_OPTIONS, *WORKER_OPTIONS, *REPR_OPTIONS, *SPECIAL_OPTIONS))


def _check_limits(name: str, task, options: dict) -> None:
    """Refuse a send whose soft time limit (the call's, else the task's) is above its
    hard one, with Celery's words (its users match on them)."""
    soft, hard = options.get("soft_time_limit"), options.get("time_limit")
    if task is not None:
        soft = task.soft_time_limit if soft is None else soft
        hard = task.time_limit if hard is None else hard
    if (isinstance(soft, (int, float)) and isinstance(hard, (int, float)) and soft and hard and soft > hard):
        raise ValueError(f"task {name!r}: soft_time_limit must be less than or equal to time_limit "
                         f"(soft_time_limit={soft}, time_limit={hard})")


def _check_envelope(task_id, parent_id, root_id, retries, headers) -> None:
    """The envelope fields a caller may set: wrong types would only fail in the worker."""
    for name, value in (("task_id", task_id), ("parent_id", parent_id), ("root_id", root_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
    if headers is not None and not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict, not {type(headers).__name__}")


def _check_priority(priority) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise ImproperlyConfigured(f"priority must be an integer from 0 to 9, not {priority!r}")
    return priority


def _unserializable(msg: Message, exc: Exception, serializer: Serializer) -> TypeError:
    """Name the argument that cannot be serialized."""
    for i, a in enumerate(msg.args):
        try:
            serializer.encode(a)
        except serializer.error as e:
            return TypeError(f"task {msg.task!r}: argument {i} ({type(a).__name__}) cannot be serialized: {e}")
    for k, v in msg.kwargs.items():
        try:
            serializer.encode(v)
        except serializer.error as e:
            return TypeError(f"task {msg.task!r}: argument {k!r} ({type(v).__name__}) cannot be serialized: {e}")
    return TypeError(f"task {msg.task!r}: message cannot be serialized: {exc}")


__all__ = ["Producer"]
