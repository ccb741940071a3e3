"""The application: settings, the task registry, and the way messages leave.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from . import routing, unique
from ._speedups import current_request, new_task_id
from .aio import send
from .broker import RedisBroker, safe_url
from .broker.keys import validate_queue_name
from .broker.results import RedisBackend
from .canvas import Signature
from .control import Control
from .exceptions import ImproperlyConfigured, MessageTooLarge, NotRegistered
from .fairness import with_group
from .messages import Message, Serializer, now
from .options import SPECIAL_OPTIONS, WORKER_OPTIONS, check_option, due_time, expiry_time, parse_rate, unknown_options
from .result import AsyncResult
from .schedules import zone
from .settings import Settings
from .signals import before_task_publish
from .task import Task
from .workflow import callbacks, note_child

if TYPE_CHECKING:
    from .task import Task

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: before_task_publish's receivers (the list itself): empty unless an integration listens.
_publish_hooks = before_task_publish.receivers


class FastQ:
    """A fastq application.

    ``FastQ("proj", broker="redis://127.0.0.1:6379/0")``; the broker and the
    result backend default to ``FASTQ_BROKER_URL`` / ``FASTQ_RESULT_BACKEND``.
    Extra keyword arguments are settings (``app.conf``).
    """

    def __init__(self, main: str | None = None, broker: str | None = None, backend: str | None = None, **settings: Any) -> None:
        self.main = main
        self.conf = Settings(settings)
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        #: Registered tasks by name.
        self.tasks: dict[str, Any] = {}
        #: The class ``@app.task`` makes (None: fastq.task.Task); ``@app.task(base=...)`` picks one per task.
        self.Task: type | None = None
        #: Names of tasks whose sends need more than the plain path (typed, unique).
        self._special_tasks: set[str] = set()
        self._pid = os.getpid()

    # --- configuration ------------------------------------------------------

    @property
    def broker_url(self) -> str:
        return self.conf.broker_url or os.environ.get("FASTQ_BROKER_URL") or DEFAULT_URL

    @property
    def backend_url(self) -> str:
        return self.conf.result_backend or os.environ.get("FASTQ_RESULT_BACKEND") or self.broker_url

    def config_from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Load settings from an object, a module path or ``"module:attribute"``;
        ``namespace="FASTQ"`` reads upper-case ``FASTQ_*`` names instead
        (``app.config_from_object("django.conf:settings", namespace="FASTQ")``)."""
        self.conf.from_object(obj, namespace)
        self._reset()

    def reset(self) -> None:
        """Forget connections and what was built from the settings, after changing
        ``broker_url``, ``result_backend`` or other settings of a running app (tests
        do this); the next use connects again with the new settings."""
        for name in ("broker", "backend", "serializer", "router"):
            self.__dict__.pop(name, None)

    _reset = reset  # the old private name, still used by integrations

    def check_config(self) -> None:
        """Build what the settings describe (routes, serializer, broker URL, shards,
        fair queues, zone, rate limits), so a malformed setting fails now with
        ImproperlyConfigured naming it, not at the first send. Connects to nothing
        except a Redis Cluster (whose client learns the slots at once). The CLI
        calls this at start-up."""
        self.router, self.serializer, self.broker  # noqa: B018 - built for their checks
        try:
            zone(self.conf.timezone)
        except ValueError as exc:
            raise ImproperlyConfigured(f"timezone: {exc}") from None
        if self.conf.rate_limit_scope not in ("cluster", "worker"):
            raise ImproperlyConfigured(f"rate_limit_scope must be 'cluster' or 'worker', not {self.conf.rate_limit_scope!r}")
        for queue, rate in (self.conf.queue_rate_limits or {}).items():
            parse_rate(rate, f"queue_rate_limits[{queue!r}]")

    @cached_property
    def broker(self):
        return RedisBroker(self.broker_url, self.conf)

    @cached_property
    def backend(self):
        if self.backend_url == self.broker_url:
            return RedisBackend(self.broker)
        return RedisBackend(RedisBroker(self.backend_url, self.conf))

    @cached_property
    def serializer(self) -> Serializer:
        return Serializer(self.conf.task_serializer)

    @cached_property
    def router(self) -> routing.Router:
        return routing.Router(self.conf.task_routes, self.conf.task_default_queue)

    @cached_property
    def control(self):
        """Remote control of the workers: ``app.control.ping()``, ``app.control.inspect().active()``."""
        return Control(self)

    # --- tasks ----------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
    @overload
    def task(self, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True, ...)``."""
        def register(fn: Callable) -> Task:
            cls = options.get("base") or self.Task or Task
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise TypeError(f"task {options.get('name') or fn.__qualname__!r}: base must be a subclass of "
                                f"fastq.task.Task, not {cls!r}")
            task: Task[Any, Any] = cls(self, fn, **options)
            self.tasks[task.name] = task
            if task._special:
                self._special_tasks.add(task.name)
            else:
                self._special_tasks.discard(task.name)
            return task

        if len(args) == 1 and callable(args[0]) and not options:
            return register(args[0])
        if args:
            raise TypeError("app.task() takes options as keyword arguments only")
        return register

    def send_task(self, name: str, args: Iterable | None = None, kwargs: dict | None = None, **options: Any):
        """Send a task by name (the task need not be registered here)."""
        task = self.tasks.get(name)
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        if self.conf.task_always_eager:
            raise NotRegistered(f"task {name!r} is not registered, so it cannot run eagerly")
        return self._send(name, args, kwargs, options, None)

    async def send_task_async(self, name: str, args: Iterable | None = None, kwargs: dict | None = None, **options: Any):
        """``send_task()`` for async code: ``await app.send_task_async("proj.add", (2, 2))``."""
        return await send(self, name, args, kwargs, options, self.tasks.get(name))

    def send_many(self, signatures: Iterable) -> list:
        """Send many signatures in pipelined batches; return their AsyncResults.

        Signatures without options take a short path: what depends only on the
        task (queue, priority, expiry, parent) is worked out once per run of
        same-task signatures, not once per message."""
        batch, results = [], []
        in_flight = None  # the previous batch, sent while this one is built
        broker = self.broker
        field = self.serializer.field
        encode = self.serializer.encode
        limit = self.conf.max_message_size
        parent = current_request.get()
        parent_id = parent.id if parent is not None else None
        root_id = (parent.root_id or parent.id) if parent is not None else None
        last_name, placement = None, None
        hooks = _publish_hooks
        special = self._special_tasks
        for sig in signatures:
            name = sig.task
            task = self.tasks.get(name)
            own = sig.options and not SPECIAL_OPTIONS.isdisjoint(sig.options)  # unique_key, debounce_key
            if own or (special and name in special):
                if own or task.unique:  # unique or debounced: its own atomic send (fastq.unique)
                    results.append(task.apply_async(sig.args, sig.kwargs, **sig.options) if task is not None
                                   else self._send(name, sig.args, sig.kwargs, dict(sig.options), None))
                    continue
                a, kw = task._typed.convert(sig.args, sig.kwargs)  # typed: convert, then batch as usual
                sig = sig.clone()
                sig.args, sig.kwargs = tuple(a), kw
            if sig.options:
                msg, queue, priority, due = self._build(name, sig.args, sig.kwargs, dict(sig.options), task)
                payload = self._encode(msg, task)
            else:
                if name != last_name:
                    queue, priority = self._placement(name, task, sig.args, sig.kwargs, {})
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
                except self.serializer.error as exc:
                    raise _unserializable(msg, exc, self.serializer) from None
                if len(payload) > limit:
                    payload = self._encode(msg, task)  # raises MessageTooLarge with the details
            batch.append((queue, priority, due, payload))
            results.append(AsyncResult(msg.id, app=self, task_name=name))
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

    def add_periodic_task(self, schedule: Any, sig: Any, name: str | None = None, **options: Any) -> str:
        """Add an entry to ``conf.beat_schedule``: ``app.add_periodic_task(60.0, add.s(1, 1), name="every-minute")``.

        ``schedule`` is seconds, a timedelta, a ``crontab`` or a cron string;
        ``options`` are apply_async options (``queue``, ``priority``, ``expires``).
        The entry is checked when beat starts. Returns the entry's name
        (default: the signature's repr, as in Celery)."""
        if not isinstance(sig, Signature):
            raise TypeError(f"add_periodic_task() takes a signature (task.s(...)), not {type(sig).__name__}")
        key = name or repr(sig)
        entry = {"task": sig.task, "schedule": schedule, "args": tuple(sig.args), "kwargs": dict(sig.kwargs),
                 "options": {**sig.options, **options}}
        # a new dict: the default beat_schedule may be shared with other apps
        self.conf.beat_schedule = {**(self.conf.beat_schedule or {}), key: entry}
        return key

    def AsyncResult(self, task_id: str, task_name: str | None = None):  # noqa: N802 - Celery's name
        return AsyncResult(task_id, app=self, task_name=task_name)

    # --- sending --------------------------------------------------------------

    def _build(self, name: str, args, kwargs, options: dict, task) -> tuple[Message, str, int, float | None]:
        """Make the message and decide where it goes: (message, queue, priority, due)."""
        if options:
            return self._build_with_options(name, args, kwargs, options, task)
        # The common call (no options) stays short: it runs once per message.
        queue, priority = self._placement(name, task, args, kwargs, options)
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

    def _before_publish(self, msg: Message, queue: str, priority: int, due: float | None) -> None:
        """Send before_task_publish; its receivers may add to ``msg.headers``."""
        headers = msg.headers = dict(msg.headers) if msg.headers else {}
        before_task_publish.send(sender=msg.task, body=msg, headers=headers, routing_key=queue, priority=priority,
                                 eta=due)
        if not headers:
            msg.headers = None

    def _placement(self, name: str, task, args, kwargs, options) -> tuple[str, int]:
        if task is not None and task.queue:
            queue = task.queue
        else:
            queue = self.router.route(name, args, kwargs, options)
        if task is not None and task.priority is not None:
            return queue, task.priority
        return queue, _check_priority(self.conf.task_default_priority)

    def _build_with_options(self, name: str, args, kwargs, options: dict, task) -> tuple[Message, str, int, float | None]:
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
        default_queue, default_priority = self._placement(name, task, args, kwargs, options)
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
        _check_envelope(task_id, parent_id, root_id, retries, headers)
        group_key = options.pop("group_key", None)
        if group_key is not None:  # per-tenant fairness: the queue must be fair (fastq.fairness)
            headers = with_group(self, name, queue, group_key, headers)
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

    def _encode(self, msg: Message, task) -> bytes:
        try:
            payload = self.serializer.encode(msg)
        except self.serializer.error as exc:
            raise _unserializable(msg, exc, self.serializer) from None
        limit = self.conf.max_message_size
        if len(payload) > limit:
            raise MessageTooLarge(
                f"message for task {msg.task!r} is {len(payload)} bytes, more than max_message_size={limit}"
            )
        return payload

    def _send(self, name: str, args, kwargs, options: dict, task):
        if options and not SPECIAL_OPTIONS.isdisjoint(options):  # unique_key, debounce_key
            return unique.send(self, name, args, kwargs, options, task)
        msg, queue, priority, due = self._build(name, args, kwargs, options, task)
        payload = self._encode(msg, task)
        self.broker.publish(queue, priority, self.serializer.field, payload, due)
        result = AsyncResult(msg.id, app=self, task_name=name)
        if msg.parent_id is not None:
            result.parent = AsyncResult(msg.parent_id, app=self)
        return result

    def __repr__(self) -> str:
        return f"<FastQ {self.main or '__main__'} broker={self.broker_safe_url}>"

    @property
    def broker_safe_url(self) -> str:
        return safe_url(self.broker_url)


# --- helpers -------------------------------------------------------------------

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
    options.pop("serializer", None)
    if options:
        raise unknown_options(options)
    return out




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
