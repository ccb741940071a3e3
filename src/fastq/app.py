"""The application: settings and the task registry (messages leave through ``fastq.producer``).

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from . import current, routing
from .broker import RedisBroker, safe_url
from .broker.results import RedisBackend
from .canvas import Signature
from .control import Control, bugreport
from .exceptions import ImproperlyConfigured, NotRegistered
from .messages import Serializer
from .options import parse_rate
from .producer import Producer
from .result import AsyncResult
from .schedules import zone
from .settings import Settings
from .task import Task

if TYPE_CHECKING:
    from .task import Task

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class FastQ:
    """A fastq application.

    ``FastQ("proj", broker="redis://127.0.0.1:6379/0")``; the broker and the
    result backend default to ``FASTQ_BROKER_URL`` / ``FASTQ_RESULT_BACKEND``.
    Extra keyword arguments are settings (``app.conf``).
    """

    def __init__(self, main: str | None = None, broker: str | None = None, backend: str | None = None, **settings: Any) -> None:
        self.main = main
        self.conf = Settings(settings)
        # Tasks read some settings when declared (task_annotations, task_acks_late...):
        # set later, as Celery allows, they reach the tasks declared before.
        self.conf.__dict__["on_task_defaults"] = self._redeclare_tasks
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        #: Registered tasks by name.
        self.tasks: dict[str, Any] = {}
        #: The class ``@app.task`` makes (``fastq.task.Task``, or a subclass set here, as
        #: Celery's ``app.Task``); ``@app.task(base=...)`` picks one per task.
        self.Task: type = Task
        #: Names of tasks whose sends need more than the plain path (typed, unique).
        self._special_tasks: set[str] = set()
        self._pid = os.getpid()
        #: The one way messages leave (fastq.producer): build, encode, send.
        self.producer = Producer(self)
        current.register_app(self)  # the current app now, with every shared_task on it

    def set_default(self) -> None:
        """Make this the current app (``current_app``, ``shared_task``, signatures
        without an app), whichever app was made last, as Celery's does."""
        current.set_default(self)

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

    def register_task(self, task: Any) -> Any:
        """Register a class-based task (Celery's ``app.register_task(MyTask())``): a
        ``fastq.Task`` subclass that defines ``run(self, ...)`` and its options as
        class attributes. The worker must register it too (import the module that
        does). Returns the registered task."""
        if isinstance(task, type):
            task = task()
        if not isinstance(task, Task):
            raise TypeError(f"register_task() takes a fastq.Task subclass or instance, not {type(task).__name__}")
        if task.app is not self:
            task.__init__(self)
        self.tasks[task.name] = task
        (self._special_tasks.add if task._special else self._special_tasks.discard)(task.name)
        return task

    def _redeclare_tasks(self) -> None:
        for task in list(self.tasks.values()):
            task._redeclare()
            if task._special:
                self._special_tasks.add(task.name)
            else:
                self._special_tasks.discard(task.name)

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

    def bugreport(self) -> str:
        """Versions, platform and the settings changed from the defaults, passwords
        masked: what to paste into a bug report (Celery's ``app.bugreport()``)."""
        return bugreport(self)

    def send_task(self, name: str, args: Iterable | None = None, kwargs: dict | None = None, **options: Any):
        """Send a task by name (the task need not be registered here)."""
        task = self.tasks.get(name)
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        if self.conf.task_always_eager:
            raise NotRegistered(f"task {name!r} is not registered, so it cannot run eagerly")
        return self.producer.send(name, args, kwargs, options, None)

    async def send_task_async(self, name: str, args: Iterable | None = None, kwargs: dict | None = None, **options: Any):
        """``send_task()`` for async code: ``await app.send_task_async("proj.add", (2, 2))``."""
        return await self.producer.send_async(name, args, kwargs, options, self.tasks.get(name))

    def send_many(self, signatures: Iterable) -> list:
        """Send many signatures in pipelined batches; return their AsyncResults."""
        return self.producer.send_many(signatures)

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

    def __repr__(self) -> str:
        return f"<FastQ {self.main or '__main__'} broker={self.broker_safe_url}>"

    @property
    def broker_safe_url(self) -> str:
        return safe_url(self.broker_url)


class SharedTask:
    """What ``shared_task`` returns: the current app's task of that name, looked up at
    each use (so it works before any app exists, and follows ``set_default()``)."""

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable, name: str) -> None:
        self.fn = fn
        self.name = name

    def _task(self) -> Task:
        return current.current_app().tasks[self.name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._task(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<shared task {self.name}>"


def shared_task(*args: Any, **options: Any) -> Any:
    """Celery's ``shared_task``: ``@shared_task`` or ``@shared_task(name=..., bind=True)``
    registers the function on every app, also on apps made later, and returns a
    ``SharedTask`` that stands for the current app's task (``fastq.current``), so a
    library's tasks need no app of their own."""
    def wrap(fn: Callable) -> SharedTask:
        current.share(fn, options)
        return SharedTask(fn, options.get("name") or f"{fn.__module__}.{fn.__qualname__}")

    if len(args) == 1 and callable(args[0]) and not options:
        return wrap(args[0])
    if args:
        raise TypeError("shared_task() takes options as keyword arguments only")
    return wrap


def current_app() -> FastQ:
    """The current app: the one made last, or the one ``app.set_default()`` named."""
    return current.current_app()

