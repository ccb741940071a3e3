"""Signatures and workflows: ``chain``, ``group``, ``chord``, ``chunks``.

A signature is a task call packaged to be sent later or elsewhere. Workflows
are trees of signatures; sending one turns the tree into plain dicts (see
``fastq.workflow``) that travel inside the messages, so the continuation of a
workflow lives in Redis, never in a worker's memory.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from . import stamping, workflow
from ._speedups import new_task_id
from .current import current_app_or_none
from .result import AsyncResult, GroupResult
from .workflow import as_list


def _is_sig(obj: Any) -> bool:
    return isinstance(obj, Signature)


def maybe_signature(obj: Any, app=None, where: str = "workflow") -> Signature:
    """A Signature from a Signature or its dict form; TypeError for anything else."""
    if isinstance(obj, Signature):
        return obj
    if isinstance(obj, dict) and ("task" in obj or "subtask_type" in obj):
        return Signature.from_dict(obj, app=app)
    if isinstance(getattr(obj, "name", None), str) and callable(getattr(obj, "s", None)):
        return obj.s()  # a task itself, as Celery takes it: its signature without arguments
    raise TypeError(f"{where}: expected a signature (task.s(...)), not {type(obj).__name__}: {obj!r:.80}")


def _app_of(sigs: Iterable[Signature]):
    for s in sigs:
        app = s.app or (s._find_app() if hasattr(s, "_find_app") else None)
        if app is not None:
            return app
    return None


class Signature:
    """``add.s(2, 2)``: a task name with arguments and options.

    Partial: arguments given at call time are prepended, as in Celery
    (``add.s(2)`` called with a parent's result ``r`` runs ``add(r, 2)``).
    ``immutable=True`` (``add.si``) ignores them.
    """

    #: None for a task; "chain", "group", "chord" for workflows.
    subtask_type: str | None = None

    def __init__(self, task: str, args: Any = None, kwargs: dict | None = None, options: dict | None = None,
                 app=None, immutable: bool = False) -> None:
        if not isinstance(task, str):
            task = getattr(task, "name", None) or str(task)
        self.task = task
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = bool(self.options.pop("immutable", immutable))
        self.app = app

    def _app(self):
        app = self.app if self.app is not None else self._find_app()
        if app is None:
            raise RuntimeError(f"signature for {self!r} has no app: build it from a task (task.s())")
        return app

    def _find_app(self):
        return current_app_or_none()  # signature("proj.add") without an app: the current one, as in Celery

    @property
    def name(self) -> str:
        """The task's name (Celery's ``Signature.name``, as a task has)."""
        return self.task

    @property
    def id(self) -> str | None:
        """The task id, once set (``freeze()`` or ``set(task_id=...)``)."""
        return self.options.get("task_id")

    def clone(self, args: Any = None, kwargs: dict | None = None, **options: Any) -> Signature:
        """A copy, with ``args`` prepended and ``kwargs``/``options`` merged (unless
        immutable). Stamps it has are kept: options do not change them, as in Celery."""
        s = copy.copy(self)
        s.options = {**self.options, **_unstamped(self.options, options)}
        s.kwargs = dict(self.kwargs)
        if args and not self.immutable:
            s.args = tuple(args) + self.args
        if kwargs and not self.immutable:
            s.kwargs.update(kwargs)
        return s

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set options in place (``sig.set(queue="q", countdown=5)``); returns self.
        ``immutable=True`` makes it ignore the previous step's result, as Celery's."""
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def link(self, callback: Any) -> Any:
        """Add a callback run with this task's result (``apply_async(link=...)``)."""
        callback = maybe_signature(callback, self.app, "link")
        self.options["link"] = [*as_list(self.options.get("link")), callback]
        return callback

    def link_error(self, errback: Any) -> Any:
        """Add an errback (``apply_async(link_error=...)``): a one-argument task gets
        the failed task's id; one taking ``(request, exc, traceback)`` is called in
        the worker (Celery's old- and new-style errbacks, docs/canvas.md)."""
        errback = maybe_signature(errback, self.app, "link_error")
        self.options["link_error"] = [*as_list(self.options.get("link_error")), errback]
        return errback

    def stamp(self, visitor: stamping.StampingVisitor | None = None, append_stamps: bool = False,
              **headers: Any) -> Signature:
        """Stamp this signature, its callbacks and errbacks: ``headers`` (``sig.stamp(
        monitoring_id="42")``) and what ``visitor.on_signature`` returns; the
        worker shows them as ``self.request.stamps`` (fastq.stamping). A stamp it
        has already is replaced, or with ``append_stamps`` kept in a list with the
        new one."""
        self.stamp_links(visitor, append_stamps, **headers)
        found = None if visitor is None else (visitor.on_signature(self, **headers) or {})
        return self.set(**stamping.collect(self.options, found, append_stamps, headers))

    def stamp_links(self, visitor: stamping.StampingVisitor | None = None, append_stamps: bool = False,
                    **headers: Any) -> None:
        """Stamp the callbacks and errbacks (``visitor.on_callback`` / ``on_errback``
        add to what each gets); the signature's own stamps are not passed on."""
        for key, hook in (("link", "on_callback"), ("link_error", "on_errback")):
            passed = copy.deepcopy(headers)
            for given in as_list(self.options.get(key)):
                link = maybe_signature(given, self.app, key)
                found = None if visitor is None else (getattr(visitor, hook)(link, **passed) or {})
                passed = stamping.collect(None, found, append_stamps, passed)
                link.stamp(visitor, append_stamps, **passed)
                if isinstance(given, dict):  # a callback given as a dict is stamped in place, as in Celery
                    given.update(link.as_dict())

    def on_error(self, errback: Any) -> Signature:
        """``link_error`` that returns this signature, as Celery's does, so it
        chains: ``chain(a.s(), b.s()).on_error(eb).apply_async()`` sends the chain."""
        self.link_error(errback)
        return self

    def freeze(self, _id: str | None = None):
        """Fix the task id now (kept when sent) and return its AsyncResult."""
        if _id is not None:
            self.options["task_id"] = _id
        elif not self.options.get("task_id"):
            self.options["task_id"] = new_task_id()
        return AsyncResult(self.options["task_id"], app=self._app(), task_name=self.task)

    def apply_async(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Send it (partial ``args`` are prepended); returns an AsyncResult."""
        s = self.clone(args, kwargs, **options)
        return s._app().send_task(s.task, s.args, s.kwargs, **s.options)

    def delay(self, *args: Any, **kwargs: Any):
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Run it here and now (an EagerResult)."""
        s = self.clone(args, kwargs)
        names = as_list(s.options.get("stamped_headers"))
        if names:  # its stamps show in the eager request too
            options = {**{k: s.options.get(k) for k in names}, "stamped_headers": names, **options}
        return s._app().tasks[s.task].apply(s.args, s.kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        s = self.clone(args, kwargs)
        return s._app().tasks[s.task](*s.args, **s.kwargs)

    # --- composing ------------------------------------------------------------------

    def __or__(self, other: Any) -> Signature:
        """``a | b``: a chain; ``group | task``: a chord."""
        if not _is_sig(other):
            raise TypeError(f"cannot chain {self!r} with {type(other).__name__}: expected a signature (task.s(...))")
        return chain(self, other)

    def __ror__(self, other: Any) -> Signature:
        raise TypeError(f"cannot chain {type(other).__name__} with {self!r}: expected a signature (task.s(...))")

    # --- the wire form ---------------------------------------------------------------

    def as_dict(self) -> dict:
        """The plain-dict form that travels in messages (callbacks included)."""
        return {"task": self.task, "args": list(self.args), "kwargs": dict(self.kwargs),
                "options": _options_dict(self.options), "immutable": self.immutable}

    @staticmethod
    def from_dict(d: dict, app=None) -> Signature:
        """Rebuild a Signature (or a chain, group, chord) from ``as_dict()``'s form."""
        kind = d.get("subtask_type")
        options = {k: v for k, v in (d.get("options") or {}).items()}
        for key in ("link", "link_error"):
            if key in options:
                options[key] = [maybe_signature(c, app, key) for c in as_list(options[key])]
        if kind is None:
            return Signature(d["task"], d.get("args"), d.get("kwargs"), options, app=app,
                             immutable=bool(d.get("immutable")))
        if kind == "chain":
            return chain(*(maybe_signature(t, app) for t in d["tasks"]), app=app, **options)
        if kind == "group":
            return group([maybe_signature(t, app) for t in d["tasks"]], app=app, **options)
        if kind == "chord":
            return chord([maybe_signature(t, app) for t in d["header"]],
                         maybe_signature(d["body"], app) if d.get("body") is not None else None, app=app, **options)
        raise TypeError(f"unknown signature type {kind!r}")

    # Celery's signatures are dicts; dict(sig) and sig["task"] read the wire form here too.
    def keys(self):
        return self.as_dict().keys()

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def __iter__(self):
        return iter(self.as_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args})"


def _unstamped(own: dict, options: dict) -> dict:
    """``options`` without the stamps ``own`` has (they are immutable, as in Celery)."""
    names = own.get("stamped_headers")
    if not options or not names:
        return options
    fixed = {"stamped_headers", *names}
    return {k: v for k, v in options.items() if k not in fixed or k not in own}


def _options_dict(options: dict) -> dict:
    out = dict(options)
    for key in ("link", "link_error"):
        if key in out and out[key] is not None:
            out[key] = [c.as_dict() if _is_sig(c) else c for c in as_list(out[key])]
    return out


class _Workflow(Signature):
    """What chain, group and chord share: sending goes through ``fastq.workflow``."""

    def _find_app(self):
        return _app_of(self._children()) or current_app_or_none()

    def _children(self) -> list[Signature]:
        raise NotImplementedError

    _frozen: tuple[dict, dict] | None = None  #: (the tree as it was, the tree frozen), after freeze()
    _sent = False  #: the frozen tree was sent already

    @property
    def id(self) -> str | None:
        """The result's id once frozen (the last task's, a group's id), else None."""
        if self._frozen is None:
            return None
        return workflow.result_of(self._app(), self._frozen[1]).id

    def freeze(self, _id: str | None = None):
        """Fix every task id now and return the result handle; sending it later
        (unchanged) keeps those ids, as Celery's ``freeze()``. ``_id`` names the
        result (the last task of a chain, a chord's body, a group)."""
        tree = self.as_dict()
        if _id is not None:
            key = "group_id" if tree.get("subtask_type") == workflow.GROUP else "task_id"
            tree["options"] = {**tree.get("options", {}), key: _id}
        self._frozen = (self.as_dict(), workflow.freeze(tree))
        return workflow.result_of(self._app(), self._frozen[1])

    def apply_async(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Send the workflow: every first step in pipelined batches. Returns the
        result of the last step (a GroupResult for a group)."""
        app = self._app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        again = False
        if self._frozen is not None and not options and self._frozen[0] == self.as_dict():
            tree = self._frozen[1]  # frozen and unchanged since: the ids given out then
            # Sent before with these ids: as in Celery each apply is a new run, so a
            # chord that ran to its end is opened afresh.
            again, self._sent = self._sent, True
        else:
            tree = self.as_dict()
            if options:
                tree["options"] = {**tree["options"], **_options_dict(options)}
            tree = workflow.freeze(tree)
        result = workflow.result_of(app, tree)
        workflow.publish(app, workflow.launch(app, tree, tuple(args or ()), dict(kwargs or {}), again=again))
        if isinstance(result, GroupResult) and len(result.results) == 1 and isinstance(result.results[0], GroupResult):
            # Celery's special case: group(a | group(b, c)) gives the inner group's result
            return result.results[0]
        return result

    def __call__(self, *args: Any, **kwargs: Any):
        """Workflows are sent when called, as in Celery."""
        return self.apply_async(args, kwargs)

    def clone(self, args: Any = None, kwargs: dict | None = None, **options: Any) -> Signature:
        s = copy.copy(self)
        s.options = {**self.options, **options}
        return s

    def _stamp_parts(self, visitor, append_stamps: bool, headers: dict, start: str, end: str) -> None:
        """A chain's or group's stamp: its stamps (``visitor.<start>``) go to its
        callbacks and to every task inside; ``visitor.<end>`` closes the part."""
        found = None if visitor is None else (getattr(visitor, start)(self, **headers) or {})
        headers = stamping.collect(self.options, found, append_stamps, headers)
        self.stamp_links(visitor, append_stamps, **headers)
        for t in self.tasks:
            t.stamp(visitor, append_stamps, **headers)
        if visitor is not None:
            getattr(visitor, end)(self, **headers)



class chain(_Workflow):  # noqa: N801 - Celery's name
    """``chain(a, b, c)`` or ``a | b | c``: each result is the first argument of
    the next task. The result is the last task's; a failure stops the chain and
    the chain's result fails with that error."""

    subtask_type = "chain"

    def __init__(self, *tasks: Any, app=None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], (Signature, dict)) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])
        self.tasks = tuple(maybe_signature(t, app, "chain") for t in tasks)
        super().__init__("fastq.chain", (), {}, options, app=app)

    def _children(self) -> list[Signature]:
        return list(self.tasks)

    def __or__(self, other: Any) -> Signature:
        if not _is_sig(other):
            raise TypeError(f"cannot chain {self!r} with {type(other).__name__}: expected a signature (task.s(...))")
        tasks = other.tasks if isinstance(other, chain) and not other.options else (other,)
        return chain(*self.tasks, *tasks, app=self.app, **self.options)

    def as_dict(self) -> dict:
        return {"subtask_type": "chain", "tasks": [t.as_dict() for t in self.tasks],
                "options": _options_dict(self.options)}

    def stamp(self, visitor: stamping.StampingVisitor | None = None, append_stamps: bool = False,
              **headers: Any) -> None:
        """Stamp every step (``visitor.on_chain_start`` adds stamps for all of them)."""
        self._stamp_parts(visitor, append_stamps, headers, "on_chain_start", "on_chain_end")

    def apply(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Run every step here, in order (eager mode)."""
        result = None
        for i, t in enumerate(self.tasks):
            if isinstance(t, group) and len(t.tasks) == 1:
                t = t.tasks[0]  # a one-task group in a chain is that task, as when sent
            result = t.apply(args, kwargs) if i == 0 else t.apply((result.get(),))
            if result.failed():
                return result
        return result

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"


class group(_Workflow):  # noqa: N801 - Celery's name
    """``group(sigs)``: run the signatures in parallel. ``apply_async()`` returns
    a GroupResult; the messages go out in pipelined batches."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, app=None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], (Signature, dict)) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])
        # Copies, as Celery's group makes: linking a member later does not change the caller's signature
        self.tasks = tuple(maybe_signature(t, app, "group").clone() for t in tasks)
        super().__init__("fastq.group", (), {}, options, app=app)

    def _children(self) -> list[Signature]:
        return list(self.tasks)

    def __or__(self, other: Any) -> Signature:
        """``group | task``: a chord with the task as its body."""
        if not _is_sig(other):
            raise TypeError(f"cannot chain {self!r} with {type(other).__name__}: expected a signature (task.s(...))")
        return chord(self, other, app=self.app)

    def link(self, callback: Any) -> Any:
        """As Celery's ``group.link``: the callback, immutable, is linked to the
        group's first task, so it runs once, without the group's results (for a
        callback with the results, make a chord: ``group | callback``)."""
        callback = maybe_signature(callback, self.app, "link")
        if not self.tasks:
            raise ValueError("cannot link a callback to an empty group")
        once = callback.clone()
        once.set_immutable(True)
        return self.tasks[0].link(once)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def as_dict(self) -> dict:
        return {"subtask_type": "group", "tasks": [t.as_dict() for t in self.tasks],
                "options": _options_dict(self.options)}

    def stamp(self, visitor: stamping.StampingVisitor | None = None, append_stamps: bool = False,
              **headers: Any) -> None:
        """Stamp every member (``visitor.on_group_start`` adds stamps for all of them)."""
        self._stamp_parts(visitor, append_stamps, headers, "on_group_start", "on_group_end")

    def apply(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Run every member here (eager mode); inner groups unrolled, as when sent."""
        return _eager_group([t.apply(args, kwargs) for t in _unrolled(self.tasks)])

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"


class chord(_Workflow):  # noqa: N801 - Celery's name
    """``chord(header, body)``: run the header group, then the body once with the
    list of header results. ``chord(header)(body)`` sends it at once.

    The worker counts finished header tasks in Redis (one atomic script per
    task, idempotent per task), and the call that completes the count sends the
    body: there is no polling unlock task. A failed header task fails the
    chord: the body does not run, its result fails with that task's error and
    its ``link_error`` callbacks run."""

    subtask_type = "chord"

    def __init__(self, header: Any, body: Any = None, app=None, **options: Any) -> None:
        if isinstance(header, group):
            options = {**header.options, **options}
            header = header.tasks
        elif isinstance(header, (Signature, dict)):
            header = [header]
        elif not isinstance(header, Iterable):
            raise TypeError(f"chord header: expected a group or signatures, not {type(header).__name__}")
        # A generator is kept as it is: apply_async sends each header task as it is
        # yielded, as Celery does; anything that reads .tasks first turns it into a tuple.
        self._lazy: Iterator | None = header if isinstance(header, Iterator) else None
        self._tasks = () if self._lazy is not None else tuple(
            maybe_signature(t, app, "chord header").clone() for t in header)  # copies, as a group's
        self.body = maybe_signature(body, app, "chord body") if body is not None else None
        super().__init__("fastq.chord", (), {}, options, app=app)

    @property
    def tasks(self) -> tuple:
        if self._lazy is not None:
            lazy, self._lazy = self._lazy, None
            self._tasks = tuple(maybe_signature(t, self.app, "chord header").clone() for t in lazy)
        return self._tasks

    @tasks.setter
    def tasks(self, value) -> None:
        self._lazy, self._tasks = None, tuple(value)

    def apply_async(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Send the chord (see _Workflow.apply_async); a generator header is sent as it yields."""
        app = self._app()
        if self._lazy is None or self.body is None or app.conf.task_always_eager:
            return super().apply_async(args, kwargs, **options)
        lazy, self._lazy = self._lazy, None  # consumed by this send, as Celery's
        node = {"subtask_type": "chord", "header": [], "body": self.body.as_dict(),
                "options": _options_dict({**self.options, **options})}
        header = (maybe_signature(t, app, "chord header").as_dict() for t in lazy)
        return workflow.send_lazy_chord(app, node, header, tuple(args or ()), dict(kwargs or {}))

    @property
    def header(self) -> group:
        return group(self.tasks, app=self.app)

    def link_error(self, errback: Any) -> Any:
        """The errback runs when the chord fails (its body's errback). With
        ``task_allow_error_cb_on_chord_header`` (Celery's setting) each header task
        gets it too, immutable, so it also runs for each header task that fails."""
        errback = maybe_signature(errback, self.app, "link_error")
        app = self._find_app()
        if app is not None and app.conf.task_allow_error_cb_on_chord_header:
            for t in self.tasks:
                frozen = errback.clone()
                frozen.set_immutable(True)
                t.link_error(frozen)
        return super().link_error(errback)

    def _children(self) -> list[Signature]:
        # not .tasks: finding the app must not consume a generator header
        return [*self._tasks, *([self.body] if self.body is not None else [])]

    def __or__(self, other: Any) -> Signature:
        """``chord | task``: the task runs after the body, with its result."""
        if not _is_sig(other):
            raise TypeError(f"cannot chain {self!r} with {type(other).__name__}: expected a signature (task.s(...))")
        if self.body is None:
            return chord(self.tasks, other, app=self.app, **self.options)
        return chord(self.tasks, self.body | other, app=self.app, **self.options)

    def __call__(self, body: Any = None, **options: Any):
        """``chord(header)(body)``: send with this body."""
        if body is not None:
            return chord(self.tasks, body, app=self.app, **self.options).apply_async(**options)
        return self.apply_async(**options)

    def as_dict(self) -> dict:
        if self.body is None:
            raise TypeError("a chord needs a body: chord(header, body) or chord(header)(body)")
        return {"subtask_type": "chord", "header": [t.as_dict() for t in self.tasks], "body": self.body.as_dict(),
                "options": _options_dict(self.options)}

    def stamp(self, visitor: stamping.StampingVisitor | None = None, append_stamps: bool = False,
              **headers: Any) -> None:
        """Stamp the header tasks (``visitor.on_chord_header_start`` adds stamps for
        them) and the body (``visitor.on_chord_body``). A generator header is read
        now. Unlike Celery 5.7, the body is stamped without a visitor too, so
        ``chord.stamp(monitoring_id=...)`` labels every task of the chord."""
        found = None if visitor is None else (visitor.on_chord_header_start(self, **headers) or {})
        headers = stamping.collect(self.options, found, append_stamps, headers)
        self.stamp_links(visitor, append_stamps, **headers)
        for t in self.tasks:
            t.stamp(visitor, append_stamps, **headers)
        if visitor is not None:
            visitor.on_chord_header_end(self, **headers)
        if self.body is not None:
            found = None if visitor is None else (visitor.on_chord_body(self, **headers) or {})
            self.body.stamp(visitor, append_stamps, **stamping.collect(self.options, found, append_stamps, headers))

    def apply(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        """Run the header, then the body, here (eager mode)."""
        if self.body is None:
            raise TypeError("a chord needs a body: chord(header, body) or chord(header)(body)")
        header = _eager_group([t.apply(args, kwargs) for t in self.tasks])
        failed = next((r for r in header.results if r.failed()), None)
        if failed is not None:
            return failed
        return self.body.apply((header.get(),))

    def __repr__(self) -> str:
        return f"chord([{', '.join(repr(t) for t in self.tasks)}], {self.body!r})"


class chunks(_Workflow):  # noqa: N801 - Celery's name
    """``add.chunks(items, n)``: the items split into groups of ``n`` calls, each
    chunk one ``fastq.starmap`` task. Sends as a group (a GroupResult of lists)."""

    subtask_type = "chunks"

    def __init__(self, task: Any, it: Iterable, n: int, app=None, **options: Any) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"chunks: n must be a positive integer, not {n!r}")
        self.target = maybe_signature(task, app, "chunks")
        self.it = [tuple(a) for a in it]
        self.n = n
        super().__init__("fastq.chunks", (), {}, options, app=app or self.target.app)

    def _children(self) -> list[Signature]:
        return [self.target]

    def group(self) -> group:
        """The group of starmap tasks, one per chunk."""
        name = self.target.task
        tasks = [Signature("fastq.starmap", (), {"task": name, "it": [list(a) for a in self.it[i : i + self.n]]},
                           dict(self.target.options), app=self.app)
                 for i in range(0, len(self.it), self.n)]
        return group(tasks, app=self.app, **self.options)

    def stamp(self, visitor: stamping.StampingVisitor | None = None, append_stamps: bool = False,
              **headers: Any) -> None:
        """Stamp the task every chunk calls."""
        self.target.stamp(visitor, append_stamps, **headers)

    def as_dict(self) -> dict:
        return self.group().as_dict()

    def __or__(self, other: Any) -> Signature:
        return self.group() | other

    def apply(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        return self.group().apply(args, kwargs)

    def __repr__(self) -> str:
        return f"{self.target.task}.chunks({len(self.it)} items, {self.n})"


def _unrolled(tasks) -> Iterable[Signature]:
    for t in tasks:
        if isinstance(t, group):
            yield from _unrolled(t.tasks)
        else:
            yield t


def _eager_group(results: list):
    """The GroupResult of a group run eagerly."""
    return GroupResult(None, results)


def signature(task: Any, args: Any = None, kwargs: dict | None = None, options: dict | None = None, app=None,
              **opts: Any) -> Signature:
    """``fastq.signature("proj.add", args=(2, 2))``; also takes a Signature or its dict form."""
    if isinstance(task, Signature):
        return task.clone(args, kwargs, **(options or {}), **opts)
    if isinstance(task, dict):
        return Signature.from_dict(task, app=app)
    return Signature(task, args, kwargs, {**(options or {}), **opts}, app=app)


subtask = signature

StampingVisitor = stamping.StampingVisitor

__all__ = ["Signature", "StampingVisitor", "chain", "chord", "chunks", "group", "maybe_signature", "signature", "subtask"]
