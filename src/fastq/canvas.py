"""Signatures: a task call packaged to be sent later or elsewhere."""

from __future__ import annotations

import copy
from typing import Any


class Signature:
    """``add.s(2, 2)``: a task name with arguments and options.

    Partial: arguments given at call time are prepended, as in Celery
    (``add.s(2)`` called with a parent's result ``r`` runs ``add(r, 2)``).
    ``immutable=True`` (``add.si``) ignores them.
    """

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
        if self.app is None:
            raise RuntimeError(f"signature for {self.task!r} has no app: build it from a task (task.s())")
        return self.app

    def clone(self, args: Any = None, kwargs: dict | None = None, **options: Any) -> Signature:
        s = copy.copy(self)
        s.options = {**self.options, **options}
        s.kwargs = dict(self.kwargs)
        if args and not self.immutable:
            s.args = tuple(args) + self.args
        if kwargs and not self.immutable:
            s.kwargs.update(kwargs)
        return s

    def set(self, **options: Any) -> Signature:
        """Set options in place (``sig.set(queue="q", countdown=5)``); returns self."""
        self.options.update(options)
        return self

    def apply_async(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        s = self.clone(args, kwargs, **options)
        return s._app().send_task(s.task, s.args, s.kwargs, **s.options)

    def delay(self, *args: Any, **kwargs: Any):
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: dict | None = None, **options: Any):
        s = self.clone(args, kwargs)
        return s._app().tasks[s.task].apply(s.args, s.kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        s = self.clone(args, kwargs)
        return s._app().tasks[s.task](*s.args, **s.kwargs)

    def as_dict(self) -> dict:
        return {"task": self.task, "args": list(self.args), "kwargs": self.kwargs,
                "options": self.options, "immutable": self.immutable}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args})"


def signature(task: str, args: Any = None, kwargs: dict | None = None, options: dict | None = None, app=None,
              **opts: Any) -> Signature:
    """``fastq.signature("proj.add", args=(2, 2))``."""
    return Signature(task, args, kwargs, {**(options or {}), **opts}, app=app)
