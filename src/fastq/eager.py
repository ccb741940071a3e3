"""Running a task locally: ``task.apply()`` and ``task_always_eager``.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import contextmanager

from . import states
from ._speedups import Request, current_request
from .coroutines import call_limited, run_coroutine
from .exceptions import Retry, format_exception
from .messages import Message, ResultMeta, exception_args
from .result import EagerResult


def _message(task, args: list, kwargs: dict, task_id: str, retries: int, options: dict | None) -> Message:
    parent = current_request.get()
    # what the request shows of the call: its time limits (the task's own apply otherwise)
    limits = {k: options[k] for k in ("time_limit", "soft_time_limit") if options and options.get(k) is not None}
    # and its stamps (fastq.stamping), in the headers as a worker's message has them
    names = options.get("stamped_headers") if options else None
    headers = ({"stamped_headers": list(names), "stamps": {n: options.get(n) for n in names}}
               if isinstance(names, (list, tuple)) else None)
    return Message(task_id, task.name, args, kwargs, retries, None, None, 0,
                   parent.id if parent is not None else None,
                   (parent.root_id or parent.id) if parent is not None else None, time.time(), limits or None,
                   headers)


def _again(task, exc: BaseException, retries: int) -> bool:
    return isinstance(exc, Retry) or (
        task.should_autoretry(exc) and (task.max_retries is None or retries < task.max_retries)
    )


def _failure(task, task_id: str, exc: BaseException, runtime: float, retries: int) -> EagerResult:
    cls = type(exc)
    meta = ResultMeta(states.FAILURE, None, cls.__name__, cls.__module__, str(exc), format_exception(exc),
                      time.time(), runtime, "eager", retries, task.name, exc_args=exception_args(exc))
    return EagerResult(task_id, meta, task.name)


def _success(task, task_id: str, value, runtime: float, retries: int) -> EagerResult:
    meta = ResultMeta(states.SUCCESS, value, None, None, None, None, time.time(), runtime, "eager", retries, task.name)
    return EagerResult(task_id, meta, task.name)


class _EagerRun:
    """The bookkeeping both eager entry points share: each try runs inside
    ``with run.attempt():`` (the task's request is current, the clock runs);
    a retryable error starts another try, any other ends the run as FAILURE
    (or propagates, with ``task_eager_propagates``); ``run.succeeded(value)``
    ends it as SUCCESS. ``run.result`` is set once the run has ended."""

    def __init__(self, task, args: list, kwargs: dict, task_id: str | None, on_loop: bool = False,
                 options: dict | None = None) -> None:
        self.task, self.args, self.kwargs, self.options = task, args, kwargs, options
        self.task_id = task_id or str(uuid.uuid4())
        self.on_loop = on_loop  # awaited by the caller: its cancellation is not the task's failure
        self.retries = 0
        self.result: EagerResult | None = None
        self._t0 = 0.0

    @contextmanager
    def attempt(self):
        message = _message(self.task, self.args, self.kwargs, self.task_id, self.retries, self.options)
        token = current_request.set(Request(message, "eager", None, None, self.task))
        self._t0 = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            if self._leaves_the_run(exc):
                raise
            self._retry_or_fail(exc)
        finally:
            current_request.reset(token)

    def succeeded(self, value) -> None:
        self.result = _success(self.task, self.task_id, value, time.perf_counter() - self._t0, self.retries)

    def _leaves_the_run(self, exc: BaseException) -> bool:
        if self.on_loop and isinstance(exc, asyncio.CancelledError):
            return True
        return not _again(self.task, exc, self.retries) and self.task.app.conf.task_eager_propagates

    def _retry_or_fail(self, exc: BaseException) -> None:
        if _again(self.task, exc, self.retries):
            self.retries += 1
            if isinstance(exc, Retry):  # retry(args=..., kwargs=...): the next try's arguments
                if exc.retry_args is not None:
                    self.args = exc.retry_args
                if exc.retry_kwargs is not None:
                    self.kwargs = exc.retry_kwargs
        else:
            self.result = _failure(self.task, self.task_id, exc, time.perf_counter() - self._t0, self.retries)


def run_eagerly(task, args: list, kwargs: dict, task_id: str | None, options: dict) -> EagerResult:
    """Run now, in this thread. Retries run again at once (no countdown wait),
    as Celery's eager mode does. A coroutine task is run to completion
    (coroutines.run_coroutine: on a helper thread's loop if this thread runs one)."""
    run = _EagerRun(task, args, kwargs, task_id, options=options)
    while run.result is None:
        with run.attempt():
            value = task.run(*run.args, **run.kwargs)
            if task.is_async:
                value = run_coroutine(value, task.soft_time_limit)
            run.succeeded(value)
    return run.result


async def run_eagerly_async(task, args: list, kwargs: dict, task_id: str | None, options: dict) -> EagerResult:
    """``await task.apply_async_async()`` in eager mode: a coroutine task is
    awaited on the caller's loop; a sync task runs inline, as ``apply()`` does."""
    run = _EagerRun(task, args, kwargs, task_id, on_loop=True, options=options)
    while run.result is None:
        with run.attempt():
            value = task.run(*run.args, **run.kwargs)
            if task.is_async:
                value = await call_limited(value, task.soft_time_limit)
            run.succeeded(value)
    return run.result
