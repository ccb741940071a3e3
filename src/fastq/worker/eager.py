"""Running a task locally: ``task.apply()`` and ``task_always_eager``."""

from __future__ import annotations

import asyncio
import time
import uuid

from .. import states
from .._speedups import Request, current_request
from ..exceptions import Retry
from ..messages import Message, ResultMeta
from ..result import EagerResult
from ..task import format_exception


def _message(task, args: list, kwargs: dict, task_id: str, retries: int) -> Message:
    parent = current_request.get()
    return Message(task_id, task.name, args, kwargs, retries, None, None, 0,
                   parent.id if parent is not None else None,
                   (parent.root_id or parent.id) if parent is not None else None, time.time())


def _again(task, exc: BaseException, retries: int) -> bool:
    return isinstance(exc, Retry) or (
        task.should_autoretry(exc) and (task.max_retries is None or retries < task.max_retries)
    )


def _failure(task, task_id: str, exc: BaseException, runtime: float, retries: int) -> EagerResult:
    cls = type(exc)
    meta = ResultMeta(states.FAILURE, None, cls.__name__, cls.__module__, str(exc), format_exception(exc),
                      time.time(), runtime, "eager", retries, task.name)
    return EagerResult(task_id, meta, task.name)


def _success(task, task_id: str, value, runtime: float, retries: int) -> EagerResult:
    meta = ResultMeta(states.SUCCESS, value, None, None, None, None, time.time(), runtime, "eager", retries, task.name)
    return EagerResult(task_id, meta, task.name)


def run_eagerly(task, args: list, kwargs: dict, task_id: str | None, options: dict) -> EagerResult:
    """Run now, in this thread. Retries run again at once (no countdown wait),
    as Celery's eager mode does. A coroutine task is run to completion
    (worker/aio.run_coroutine: on a helper thread's loop if this thread runs one)."""
    task_id = task_id or str(uuid.uuid4())
    retries = 0
    while True:
        token = current_request.set(Request(_message(task, args, kwargs, task_id, retries), "eager", None, None))
        t0 = time.perf_counter()
        try:
            value = task.run(*args, **kwargs)
            if task.is_async:
                from .aio import run_coroutine

                value = run_coroutine(value, task.soft_time_limit)
        except BaseException as exc:
            if _again(task, exc, retries):
                retries += 1
                continue
            if task.app.conf.task_eager_propagates:
                raise
            return _failure(task, task_id, exc, time.perf_counter() - t0, retries)
        finally:
            current_request.reset(token)
        return _success(task, task_id, value, time.perf_counter() - t0, retries)


async def run_eagerly_async(task, args: list, kwargs: dict, task_id: str | None, options: dict) -> EagerResult:
    """``await task.apply_async_async()`` in eager mode: a coroutine task is
    awaited on the caller's loop; a sync task runs inline, as ``apply()`` does."""
    task_id = task_id or str(uuid.uuid4())
    retries = 0
    while True:
        token = current_request.set(Request(_message(task, args, kwargs, task_id, retries), "eager", None, None))
        t0 = time.perf_counter()
        try:
            value = task.run(*args, **kwargs)
            if task.is_async:
                from .aio import call_limited

                value = await call_limited(value, task.soft_time_limit)
        except asyncio.CancelledError:
            raise  # the caller was cancelled: not the task's failure
        except BaseException as exc:
            if _again(task, exc, retries):
                retries += 1
                continue
            if task.app.conf.task_eager_propagates:
                raise
            return _failure(task, task_id, exc, time.perf_counter() - t0, retries)
        finally:
            current_request.reset(token)
        return _success(task, task_id, value, time.perf_counter() - t0, retries)
