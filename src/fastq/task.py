"""Tasks: what ``@app.task`` makes of a function.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import states, workflow
from ._speedups import current_request
from .broker.keys import validate_queue_name
from .builtin_tasks import register_builtins
from .canvas import Signature, chain, chunks
from .eager import run_eagerly
from .events import publish_progress
from .exceptions import ImproperlyConfigured, MaxRetriesExceededError, NotRegistered, Replaced, Retry, ValidationError
from .messages import ResultMeta, check_serializer
from .options import TASK_OPTIONS, Countdown, due_time, parse_rate
from .typed import PydanticCall, TypedCall, arguments_checker, call_signature
from .unique import check_seconds, prepare

if TYPE_CHECKING:
    from .result import AsyncResult

#: The task function's parameters and return type (``Task[P, R]``), for editors and mypy.
P = ParamSpec("P")
R = TypeVar("R")

class _EmptyRequest:
    """``task.request`` outside a worker (a plain call)."""

    id = task = eta = expires = parent_id = root_id = hostname = queue = options = headers = None
    args: list = []
    kwargs: dict = {}
    retries = 0
    delivery_count = 0
    priority = 0
    called_directly = True
    delivery = None
    is_eager = False
    reply_to = None
    replaced_task_nesting = 0
    stamped_headers: list = []
    stamps: dict = {}
    properties: dict = {}


_EMPTY_REQUEST = _EmptyRequest()

#: Celery's handler methods, called by the worker when a base class defines them.
_HANDLERS = ("before_start", "on_success", "on_retry", "on_failure", "after_return")

#: Task options with their defaults (None: take the app setting).


class Task(Generic[P, R]):
    """A registered task. Call it for a local call, ``delay()`` to send it.

    Generic in the function's parameters and return type: ``add.delay(1, 2)`` is
    checked by mypy against ``add``'s signature and gives an ``AsyncResult[int]``."""

    def __init__(self, app=None, fn: Callable[..., Any] | None = None, **options: Any) -> None:
        if fn is None:  # a class-based task: class Send(app.Task): name = ...; def run(self, ...)
            fn, options = self._class_based(options)
            if app is None:  # made as Celery users do, Send(): bound by app.register_task()
                self.app, self.name, self._declared = None, options["name"], None
                return
        unknown = set(options) - set(TASK_OPTIONS)
        name = options.get("name") or f"{fn.__module__}.{fn.__qualname__}"
        if unknown:
            raise TypeError(f"task {name!r}: unknown option(s) {', '.join(sorted(unknown))}")
        #: What it was declared with: the settings it reads are applied again when they change.
        self._declared = (app, fn, options)
        opts = {**TASK_OPTIONS, **options}
        conf = app.conf
        table = conf.task_annotations or {}
        annotations = {**(table.get("*") or {}), **(table.get(name) or {})}  # '*': every task, as in Celery
        opts.update({k: v for k, v in annotations.items() if k in TASK_OPTIONS})
        self.app = app
        self.fn = fn
        self.name = name
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.bind = bool(opts["bind"])
        self.queue = opts["queue"]
        self.priority = opts["priority"]
        self.ignore_result = conf.task_ignore_result if opts["ignore_result"] is None else bool(opts["ignore_result"])
        self.acks_late = conf.task_acks_late if opts["acks_late"] is None else bool(opts["acks_late"])
        self.track_started = conf.task_track_started if opts["track_started"] is None else bool(opts["track_started"])
        self.max_retries = opts["max_retries"]
        self.default_retry_delay = opts["default_retry_delay"]
        self.autoretry_for = tuple(opts["autoretry_for"] or ())
        self.dont_autoretry_for = tuple(opts["dont_autoretry_for"] or ())
        self.retry_backoff = opts["retry_backoff"]
        self.retry_backoff_max = opts["retry_backoff_max"]
        self.retry_jitter = bool(opts["retry_jitter"])
        self.rate_limit = opts["rate_limit"]
        self.rate = parse_rate(self.rate_limit, f"task {name!r}")
        self.rate_limit_scope = opts["rate_limit_scope"]
        if self.rate_limit_scope not in (None, "cluster", "worker"):
            raise ImproperlyConfigured(f"task {name!r}: rate_limit_scope must be 'cluster' or 'worker'")
        self.time_limit = opts["time_limit"] if opts["time_limit"] is not None else conf.task_time_limit
        self.soft_time_limit = opts["soft_time_limit"] if opts["soft_time_limit"] is not None else conf.task_soft_time_limit
        self.expires = opts["expires"]
        #: Celery's option: checked (json or msgpack), and messages still take the app's task_serializer
        self.serializer = opts["serializer"]
        self.send_error_emails = opts["send_error_emails"]
        self.typed = bool(opts["typed"])
        self.unique = bool(opts["unique"])
        self.unique_for = opts["unique_for"]
        self.is_async = inspect.iscoroutinefunction(fn)
        self._validate()
        #: The argument converter of a typed task (fastq.typed), else None.
        self._typed = None
        if self.typed:
            self._typed = TypedCall(name, fn, self.bind)
        if self.unique:
            self._signature = call_signature(fn, self.bind)
        #: Celery's ``typing``: arguments that do not fit the function raise TypeError
        #: when sent (a typed task's converter checks them itself).
        self.typing = bool(opts["typing"])
        self._check_args = arguments_checker(name, fn, self.bind) if self.typing and not self.typed else None
        #: Celery's ``pydantic=True`` (fastq.typed.PydanticCall), else None.
        self._pydantic = None
        if opts["pydantic"]:
            if self.typed or self.is_async:
                raise ImproperlyConfigured(f"task {name!r}: pydantic=True is for plain (not typed, not async) tasks")
            self._pydantic = PydanticCall(name, fn, self.bind)
            fn = self._pydantic.wrap()
        #: True when a send needs more than the plain path (typed, pydantic or unique tasks).
        self._special = self.typed or self.unique or self._pydantic is not None
        #: Declared with a soft limit above the hard one: as in Celery, the task is
        #: accepted and every send of it refused (ValueError), unless the call overrides.
        self._limits_reversed = bool(self.soft_time_limit and self.time_limit
                                     and self.soft_time_limit > self.time_limit)
        #: A base class defines Celery's handler methods (on_success...): the worker calls them.
        self._handlers = any(getattr(type(self), h) is not getattr(Task, h) for h in _HANDLERS)
        #: What the worker calls: the function, bound to the task when bind=True.
        self.run = (lambda *a, **kw: fn(self, *a, **kw)) if self.bind else fn
        self._refresh()

    @classmethod
    def _class_based(cls, options: dict) -> tuple[Callable[..., Any], dict]:
        """The function and options of a class-based task: its ``run`` method (bound:
        it gets the task as ``self``), and the options set as class attributes
        (``name``, ``max_retries``, ``autoretry_for``..., and Celery's
        ``retry_kwargs`` max_retries / countdown)."""
        own = [c for c in cls.__mro__ if c is not Task and issubclass(c, Task)]
        run = next((vars(c)["run"] for c in own if "run" in vars(c)), None)
        if run is None:
            raise TypeError(f"{cls.__name__}: a class-based task defines run(self, ...)")
        found: dict[str, Any] = {}
        for c in reversed(own):
            found.update({k: v for k, v in vars(c).items() if k in TASK_OPTIONS})
            retry_kwargs = vars(c).get("retry_kwargs") or {}
            if "max_retries" in retry_kwargs:
                found["max_retries"] = retry_kwargs["max_retries"]
            if "countdown" in retry_kwargs:
                found["default_retry_delay"] = retry_kwargs["countdown"]
        found.update(options)
        found["bind"] = True
        found.setdefault("name", f"{cls.__module__}.{cls.__qualname__}")
        return run, found

    def _redeclare(self) -> None:
        """Declare again with the same arguments: a task-default setting changed."""
        app, fn, options = self._declared
        self.__init__(app, fn, **options)

    def _refresh(self) -> None:
        #: True when a normal return needs nothing but a result write and an ack.
        self._fast = (
            self.acks_late
            and not self._handlers
            and not self.track_started
            and not self.time_limit
            and not self.soft_time_limit
            and self.rate is None
            and not self.is_async
            and not self.typed  # the Executor converts the arguments first
        )

    def _validate(self) -> None:
        where = f"task {self.name!r}"
        try:
            check_serializer(self.serializer, where)
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        if self.queue is not None:
            validate_queue_name(self.queue)
        if self.priority is not None and (not isinstance(self.priority, int) or not 0 <= self.priority <= 9):
            raise ImproperlyConfigured(f"{where}: priority must be an integer from 0 to 9, not {self.priority!r}")
        if self.max_retries is not None and (not isinstance(self.max_retries, int) or self.max_retries < 0):
            raise ImproperlyConfigured(f"{where}: max_retries must be None or an integer >= 0, not {self.max_retries!r}")
        for opt in ("default_retry_delay", "retry_backoff_max", "time_limit", "soft_time_limit"):
            v = getattr(self, opt)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise ImproperlyConfigured(f"{where}: {opt} must be a number of seconds >= 0, not {v!r}")
        if not isinstance(self.retry_backoff, (bool, int, float)) or self.retry_backoff < 0:
            raise ImproperlyConfigured(f"{where}: retry_backoff must be True/False or seconds, not {self.retry_backoff!r}")
        for opt in ("autoretry_for", "dont_autoretry_for"):
            for exc in getattr(self, opt):
                if not (isinstance(exc, type) and issubclass(exc, BaseException)):
                    raise ImproperlyConfigured(f"{where}: {opt} entries must be exception classes, not {exc!r}")
        if self.unique_for is not None:
            try:
                check_seconds(self.unique_for, "unique_for", where)
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(str(exc)) from None

    # --- calling ----------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """A plain local call (for an ``async def`` task: the coroutine, to await)."""
        return self.run(*args, **kwargs)

    @property
    def request(self):
        """The running task's context (``id``, ``retries``, ``hostname``, ...)."""
        req = current_request.get()
        return req if req is not None else _EMPTY_REQUEST

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task: ``add.delay(2, 2)`` -> AsyncResult."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult[R]:
        """Send the task with options (``queue``, ``countdown``, ``eta``, ``expires``,
        ``priority``, ``task_id``, ``ignore_result``, ``link``, ``link_error``,
        ``unique_key``/``unique_for``, ``debounce_key`` ...)."""
        app = self.app
        if app is None:
            raise NotRegistered(f"task {self.name!r} is not registered: app.register_task({type(self).__name__}())")
        if self._check_args is not None:
            self._check_args(args, kwargs)
        if self._special:  # typed: convert the arguments; unique: derive the key
            args, kwargs = self._prepare(args, kwargs, options)
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)  # the call's options: its request shows them
        return app.producer.send(self.name, args, kwargs, options, self)

    def _prepare(self, args, kwargs, options: dict) -> tuple:
        """What a send of a typed or unique task does first (raises ValidationError
        for arguments that do not fit a typed task's annotations)."""
        args, kwargs = self._convert_args(args, kwargs)
        if self.unique:
            prepare(self, args, kwargs, options)
        return args, kwargs

    def _convert_args(self, args, kwargs) -> tuple:
        """The arguments as sent: converted for a typed task, models dumped for a pydantic one."""
        if self._typed is not None:
            return self._typed.convert(args, kwargs)
        if self._pydantic is not None:
            return self._pydantic.dump(args, kwargs)
        return args, kwargs

    async def delay_async(self, *args: Any, **kwargs: Any):
        """``await add.delay_async(2, 2)``: ``delay()`` for async code (the event loop
        is not blocked while the message is sent). Returns an AsyncResult."""
        if self._check_args is not None:
            self._check_args(args, kwargs)
        return await self.app.producer.send_async(self.name, args, kwargs, {}, self)

    async def apply_async_async(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any):
        """``await add.apply_async_async((2, 2), countdown=5)``: ``apply_async()`` for
        async code, with the same options. In eager mode the task runs here (a
        coroutine task on the caller's loop)."""
        if self._check_args is not None:
            self._check_args(args, kwargs)
        return await self.app.producer.send_async(self.name, args, kwargs, options, self)

    def apply(self, args: Iterable | None = None, kwargs: dict | None = None, task_id: str | None = None, **options: Any):
        """Run the task here and now; returns an EagerResult."""
        if self._typed is not None:
            args, kwargs = self._typed.convert(args, kwargs)

        return run_eagerly(self, list(args or ()), dict(kwargs or {}), task_id, options)

    # --- signatures ---------------------------------------------------------------

    def signature(self, args: Iterable | None = None, kwargs: dict | None = None, options: dict | None = None, **opts: Any):
        return Signature(self.name, args, kwargs, {**(options or {}), **opts}, app=self.app)

    def s(self, *args: Any, **kwargs: Any):
        """A signature: ``add.s(2)`` (partial: a parent's result is prepended)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any):
        """An immutable signature: ignores the parent's result."""
        return self.signature(args, kwargs, immutable=True)

    def map_async(self, iterable: Iterable) -> list:
        """Send one task per item, pipelined: ``add.map_async([(1, 2), (3, 4)])``."""
        return self.app.send_many(Signature(self.name, tuple(a), None, app=self.app) for a in iterable)

    def map(self, it: Iterable):
        """A signature of one task calling this one for each item: ``add.map([...])``
        (``fastq.map``; the result is the list of results)."""
        register_builtins(self.app)
        # immutable, as Celery's xmap: in a chain, the previous result is not an argument
        return Signature("fastq.map", (), {"task": self.name, "it": list(it)}, app=self.app, immutable=True)

    def starmap(self, it: Iterable):
        """Like ``map`` with each item unpacked as arguments: ``add.starmap([(1, 2), (3, 4)])``."""
        register_builtins(self.app)
        return Signature("fastq.starmap", (), {"task": self.name, "it": [list(a) for a in it]}, app=self.app,
                         immutable=True)

    def chunks(self, it: Iterable, n: int):
        """Split the calls into chunks of ``n``, one task each: ``add.chunks(zip(xs, ys), 10)``.
        ``apply_async()`` sends them as a group (a GroupResult of lists); ``.group()`` gives the group."""
        register_builtins(self.app)
        return chunks(self.s(), it, n, app=self.app)

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: dict | None = None) -> None:
        """Record a custom state, e.g. progress, while the task runs:
        ``self.update_state(state="PROGRESS", meta={"done": 40, "total": 100})``.
        Readers see ``r.state == "PROGRESS"`` and ``r.info == meta``."""
        req = self.request
        task_id = task_id or req.id
        if task_id is None:
            raise ValueError("update_state() needs a task_id outside a running task")
        if state in states.READY_STATES:
            raise ValueError(f"update_state() records progress; {state} is stored by the worker when the task ends")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"task {self.name!r}: update_state(meta=...) takes a dict, not {type(meta).__name__}")
        meta_obj = ResultMeta(state or "PROGRESS", None, date_done=time.time(), hostname=req.hostname,
                              retries=req.retries, task=self.name, meta=meta)
        self.app.backend.store(task_id, meta_obj)
        if req.delivery is not None and self.app.conf.worker_send_task_events:  # in a worker: tell the monitors
            publish_progress(self.app, req.hostname, task_id, self.name, meta_obj.state, meta)

    # --- retries -------------------------------------------------------------------

    def retry(self, args: Iterable | None = None, kwargs: dict | None = None, exc: BaseException | None = None,
              countdown: float | None = None, eta: Any = None, max_retries: Any = ..., **options: Any) -> Retry:
        """Ask for another try (``raise self.retry(exc=exc, countdown=5)``).

        ``args`` / ``kwargs``: the next try's arguments instead of this one's; as
        in Celery, giving only one keeps what the other passed unless it names
        the same parameters. Raises Retry. After the last allowed try it raises
        ``exc`` itself (or MaxRetriesExceededError when no ``exc`` was given)."""
        req = self.request
        if args is not None or kwargs is not None:
            args, kwargs = self._retry_arguments(req, args, kwargs)
        limit = self.max_retries if max_retries is ... else max_retries
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"task {self.name}[{req.id}] retried {req.retries} times, max_retries={limit}")
        if eta is not None:
            when = due_time(eta, None, time.time()) or time.time()
        else:  # a delay: counted on Redis's clock when filed (broker/due.py)
            delay = self.default_retry_delay if countdown is None else countdown
            when = Countdown(time.time(), max(0.0, float(delay or 0)))
        raise Retry(f"retry in {max(0.0, when - time.time()):.3g}s", exc=exc, when=when, args=args, kwargs=kwargs)

    def _retry_arguments(self, req, args, kwargs) -> tuple[list, dict]:
        """The next try's (args, kwargs) from ``retry(args=..., kwargs=...)``, as Celery
        5.7 merges them: new positional arguments drop the inherited keywords they
        fill; new keywords replace the inherited positional arguments they name."""
        if args is not None and (isinstance(args, (str, bytes, dict)) or not isinstance(args, Iterable)):
            raise TypeError(f"retry(args=...) takes a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"retry(kwargs=...) takes a dict, not {type(kwargs).__name__}")
        old_args, old_kwargs = list(req.args or ()), dict(req.kwargs or {})
        if args is not None and kwargs is not None:
            return list(args), dict(kwargs)
        params = call_signature(self.fn, self.bind).parameters if self.fn is not None else {}
        by_keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
        if args is not None:
            args = list(args)
            positional = [p for p in params.values() if p.kind in (inspect.Parameter.POSITIONAL_ONLY, by_keyword)]
            for p in positional[: len(args)]:
                if p.kind == by_keyword:
                    old_kwargs.pop(p.name, None)
            return args, old_kwargs
        kwargs = dict(kwargs)
        names = [p.name for p in params.values() if p.kind in (inspect.Parameter.POSITIONAL_ONLY, by_keyword)]
        for i, name in enumerate(names[: len(old_args)]):
            if name in kwargs and params[name].kind == by_keyword:
                old_args[i] = kwargs.pop(name)
        return old_args, {**old_kwargs, **kwargs}

    def replace(self, sig: Signature) -> Any:
        """Replace the running task with ``sig`` (a signature, chain, group or chord),
        as Celery's ``return self.replace(sig)``: the replacement's result is stored
        under this task's id (a group's as the list of its results), and this task's
        callbacks, errbacks, the rest of its chain and its place in a chord move to
        it. In a worker it raises (the replacement is sent with the task's ack, and
        the task stores no state of its own); called outside a worker or eagerly,
        the replacement runs here and its value is returned."""
        if not isinstance(sig, Signature):
            raise TypeError(f"replace() takes a signature (task.s(...)), not {type(sig).__name__}")
        if "chord" in sig.options:
            raise ImproperlyConfigured("A signature replacing a task must not be part of a chord")
        if isinstance(sig, chain) and not sig.tasks:
            raise ImproperlyConfigured("Cannot replace with an empty chain")
        # The replacement keeps this task's stamps (fastq.stamping), but not over its own
        own = sig.options.get("stamped_headers") or ()
        stamps = {k: v for k, v in self.request.stamps.items() if k not in own}
        if stamps:
            sig.stamp(None, False, **stamps)
        return self.on_replace(sig)

    def on_replace(self, sig: Signature) -> Any:
        """Called by ``replace()`` with the replacement, as Celery's hook: an override
        may change or stamp ``sig`` and must end with ``return super().on_replace(sig)``."""
        if self.request.delivery is None:  # a plain or eager call: run it here
            return sig.apply().get()
        raise Replaced(sig)

    def add_to_chord(self, sig: Signature, lazy: bool = False) -> Any:
        """Add ``sig`` to the header of the chord this running task belongs to, as
        Celery's: the chord's body then waits for it too, and gets its result
        (after the others). Sends it and returns its result, or with ``lazy`` (a
        single signature only) returns the signature, set up, to send yourself."""
        if not isinstance(sig, Signature):
            raise TypeError(f"add_to_chord() takes a signature (task.s(...)), not {type(sig).__name__}")
        opts = self.request.options or {}
        chord_id = opts.get("chord")
        if chord_id is None:
            raise ValueError("Current task is not member of any chord")
        composite = sig.subtask_type is not None  # a chain, group or chord
        if lazy and composite:
            raise ValueError("add_to_chord(lazy=True) takes a single task's signature")
        index = self.app.broker.chord_grow(chord_id)
        if not composite:
            sig = sig.clone(chord=chord_id, group_index=index)
            return sig if lazy else sig.apply_async()
        tree = workflow.freeze(sig.as_dict(), None, (chord_id, index))
        workflow.publish(self.app, workflow.launch(self.app, tree, (), {}, (), self.request.id,
                                                   self.request.root_id or self.request.id))
        return workflow.result_of(self.app, tree)

    def _autoretry_delay(self, retries: int) -> float:
        backoff = self.retry_backoff
        if not backoff:
            return float(self.default_retry_delay)
        factor = 1 if backoff is True else backoff
        delay = min(self.retry_backoff_max, factor * (2**retries))
        if self.retry_jitter:
            delay = random.uniform(0, delay)
        return float(delay)

    def should_autoretry(self, exc: BaseException) -> bool:
        return (
            bool(self.autoretry_for)
            and isinstance(exc, self.autoretry_for)
            and not isinstance(exc, self.dont_autoretry_for)
            and not isinstance(exc, ValidationError)  # bad arguments stay bad: never retried
        )

    # --- Celery's handlers: a base class (@app.task(base=...)) overrides them ---------

    def before_start(self, task_id: str, args: list, kwargs: dict) -> None:
        """Called in the worker just before the task runs."""

    def on_success(self, retval: Any, task_id: str, args: list, kwargs: dict) -> None:
        """Called in the worker after the task returned (its result is stored)."""

    def on_retry(self, exc: BaseException, task_id: str, args: list, kwargs: dict, einfo: str | None) -> None:
        """Called in the worker when the task will be retried."""

    def on_failure(self, exc: BaseException, task_id: str, args: list, kwargs: dict, einfo: str | None) -> None:
        """Called in the worker when the task failed for good (``einfo``: the traceback text)."""

    def after_return(self, status: str, retval: Any, task_id: str, args: list, kwargs: dict,
                     einfo: str | None) -> None:
        """Called in the worker after on_success, on_retry or on_failure, with the state."""

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


__all__ = ["Task", "parse_rate", "states"]
