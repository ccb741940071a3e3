"""Typed tasks (``@app.task(typed=True)``): arguments checked against the
function's annotations with msgspec.

At registration each parameter gets its msgspec type (``*args: T`` becomes
``tuple[T, ...]``, ``**kwargs: T`` becomes ``dict[str, T]``, no annotation is
``Any``); an annotation msgspec cannot handle is refused then. A send converts
the arguments (``msgspec.convert``: a dict for a dataclass parameter becomes the
dataclass, a wrong type raises ``ValidationError`` naming the task and the
argument) before anything reaches Redis; msgspec then encodes them. The worker
converts the decoded arguments back into the annotated types (a datetime sent
as JSON arrives as a string, a dataclass as a dict) before the call, and a
message that does not convert fails that task with ``ValidationError``.

Celery's ``@app.task(pydantic=True)`` is here too (``PydanticCall``): pydantic
models in, dicts on the wire, models back in the worker.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

import msgspec

from .exceptions import ImproperlyConfigured, ValidationError

_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_KEYWORD = inspect.Parameter.VAR_KEYWORD


def call_signature(fn, bind: bool) -> inspect.Signature:
    """The signature a caller sees (without the task itself for ``bind=True``)."""
    sig = inspect.signature(fn)
    if bind:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    return sig


def arguments_checker(name: str, fn, bind: bool):
    """Celery's ``typing=True``: a call whose arguments do not fit the function
    raises ``TypeError`` when sent, as calling it would, not later in a worker.
    Returns ``check(args, kwargs)``, or None when any call fits (``*args, **kwargs``).
    The common case (positional arguments only, within the counts) is decided by
    two comparisons; anything else binds to the signature."""
    try:
        sig = call_signature(fn, bind)
    except (TypeError, ValueError):  # no signature to check against (a builtin, a C function)
        return None
    params = list(sig.parameters.values())
    kinds = {p.kind for p in params}
    if inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD in kinds:
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    least = sum(1 for p in positional if p.default is p.empty)
    most = None if inspect.Parameter.VAR_POSITIONAL in kinds else len(positional)
    # a required keyword-only argument: no call without keywords fits
    fast = not any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in params)

    def check(args, kwargs) -> None:
        if fast and not kwargs and type(args) in (tuple, list):
            n = len(args)
            if least <= n and (most is None or n <= most):
                return
        elif args is not None and type(args) not in (tuple, list):
            return  # an iterator: binding it would consume it; the worker checks
        try:
            sig.bind(*(args or ()), **(kwargs or {}))
        except TypeError as exc:
            raise TypeError(f"{name}() {exc}") from None

    return check


class PydanticCall:
    """Celery's ``pydantic=True``. A caller may pass a pydantic model or a dict for
    a parameter annotated with a model; a model is sent as its
    ``model_dump(mode="json")``. In the worker each such argument is validated
    into its model (``model_validate``) before the call, and a model the task
    returns is stored as its ``model_dump()``. Annotations are resolved at the
    first call (a string annotation may name a class defined later)."""

    def __init__(self, name: str, fn, bind: bool) -> None:
        try:
            import pydantic  # optional dependency: only tasks declared pydantic=True need it
        except ImportError:
            raise ImproperlyConfigured(f"task {name!r}: pydantic=True needs pydantic (pip install pydantic)") from None
        self._base = pydantic.BaseModel
        self._fn = fn
        self._sig = inspect.signature(fn)
        self._models: dict[str, type] | None = None

    def models(self) -> dict[str, type]:
        """Parameter name -> its pydantic model, for the annotated parameters."""
        if self._models is None:
            try:
                hints = typing.get_type_hints(self._fn)
            except Exception:  # noqa: BLE001 - an unresolvable annotation: nothing to validate
                hints = {}
            self._models = {k: v for k, v in hints.items()
                            if k != "return" and isinstance(v, type) and issubclass(v, self._base)}
        return self._models

    def wrap(self):
        """The function the worker calls: arguments validated, a returned model dumped."""
        fn, sig, base = self._fn, self._sig, self._base

        @functools.wraps(fn)
        def call(*args, **kwargs):
            models = self.models()
            if models:
                bound = sig.bind(*args, **kwargs)
                for k, v in bound.arguments.items():
                    if k in models:
                        bound.arguments[k] = models[k].model_validate(v)
                args, kwargs = bound.args, bound.kwargs
            out = fn(*args, **kwargs)
            return out.model_dump() if isinstance(out, base) else out

        return call

    def dump(self, args, kwargs) -> tuple:
        """What is sent: models as plain data (msgspec does not encode them)."""
        base = self._base
        if args:
            args = [a.model_dump(mode="json") if isinstance(a, base) else a for a in args]
        if kwargs:
            kwargs = {k: v.model_dump(mode="json") if isinstance(v, base) else v for k, v in kwargs.items()}
        return args, kwargs


def _unsupported(tp: Any) -> str | None:
    """Why msgspec cannot encode and convert ``tp`` back (None when it can):
    fastq has no encode/decode hooks, so any class msgspec does not know is out."""
    try:
        info = msgspec.inspect.type_info(tp)
    except Exception as exc:  # noqa: BLE001 - msgspec raises TypeError (and others) for what it rejects
        return str(exc)
    seen: set[int] = set()
    todo: list[Any] = [info]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            return f"{node.cls.__qualname__} is not a type msgspec knows (use a dataclass, msgspec.Struct, ...)"
        if isinstance(node, (msgspec.inspect.Type, msgspec.inspect.Field)):
            for field in msgspec.structs.fields(node):
                todo.append(getattr(node, field.name))
        elif isinstance(node, (tuple, list)):
            todo.extend(node)
    return None


class TypedCall:
    """One task's argument converter, built once at registration."""

    __slots__ = ("name", "return_type", "signature", "types")

    def __init__(self, name: str, fn, bind: bool) -> None:
        self.name = name
        self.signature = call_signature(fn, bind)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # noqa: BLE001 - NameError, TypeError... from the annotations
            raise ImproperlyConfigured(f"task {name!r}: typed=True, but its annotations cannot be resolved: {exc}") from None
        #: parameter name -> the msgspec type its value converts to
        self.types: dict[str, Any] = {}
        for p in self.signature.parameters.values():
            tp = hints.get(p.name, Any)
            if p.kind is _POSITIONAL:
                tp = tuple[tp, ...]
            elif p.kind is _KEYWORD:
                tp = dict[str, tp]
            problem = _unsupported(tp)
            if problem:
                raise ImproperlyConfigured(
                    f"task {name!r}: typed=True, but argument {p.name!r} has an annotation msgspec cannot convert: {problem}"
                )
            self.types[p.name] = tp
        ret = hints.get("return", Any)
        if _unsupported(ret):  # results of such a type are returned as decoded
            ret = Any
        #: what ``AsyncResult.get()`` converts a stored result into (Any: as decoded)
        self.return_type = None if ret is Any or ret is None or ret is type(None) else ret

    def convert(self, args, kwargs) -> tuple[list, dict]:
        """``(args, kwargs)`` converted to the annotated types; raises ValidationError."""
        try:
            bound = self.signature.bind(*(args or ()), **(kwargs or {}))
        except TypeError as exc:
            raise ValidationError(f"task {self.name!r}: {exc}", self.name, None) from None
        arguments = bound.arguments
        types = self.types
        for key, value in arguments.items():
            try:
                arguments[key] = msgspec.convert(value, types[key])
            except msgspec.ValidationError as exc:
                detail = str(exc).replace("`$", f"`{key}")  # "- at `$.x`" -> "- at `p.x`"
                raise ValidationError(f"task {self.name!r}: argument {key!r}: {detail}", self.name, key) from None
        return list(bound.args), bound.kwargs

    def convert_result(self, value: Any) -> Any:
        """A stored return value as the annotated return type (as decoded when it does not convert)."""
        try:
            return msgspec.convert(value, self.return_type)
        except msgspec.ValidationError:
            return value


__all__ = ["TypedCall", "ValidationError", "call_signature"]
