"""Running a task locally: ``task.apply()`` and ``task_always_eager``."""

from __future__ import annotations

import time
import uuid

from .. import states
from .._speedups import Request, current_request
from ..exceptions import Retry
from ..messages import Message, ResultMeta
from ..result import EagerResult
from ..task import format_exception


def run_eagerly(task, args: list, kwargs: dict, task_id: str | None, options: dict) -> EagerResult:
    """Run now, in this thread. Retries run again at once (no countdown wait),
    as Celery's eager mode does."""
    task_id = task_id or str(uuid.uuid4())
    parent = current_request.get()
    retries = 0
    while True:
        msg = Message(task_id, task.name, args, kwargs, retries, None, None, 0,
                      parent.id if parent is not None else None,
                      (parent.root_id or parent.id) if parent is not None else None, time.time())
        token = current_request.set(Request(msg, "eager", None, None))
        t0 = time.perf_counter()
        try:
            value = task.run(*args, **kwargs)
        except BaseException as exc:
            runtime = time.perf_counter() - t0
            if isinstance(exc, Retry) or (
                task.should_autoretry(exc) and (task.max_retries is None or retries < task.max_retries)
            ):
                retries += 1
                continue
            if task.app.conf.task_eager_propagates:
                raise
            cls = type(exc)
            meta = ResultMeta(states.FAILURE, None, cls.__name__, cls.__module__, str(exc), format_exception(exc),
                              time.time(), runtime, "eager", retries, task.name)
            return EagerResult(task_id, meta, task.name)
        finally:
            current_request.reset(token)
        meta = ResultMeta(states.SUCCESS, value, None, None, None, None, time.time(),
                          time.perf_counter() - t0, "eager", retries, task.name)
        return EagerResult(task_id, meta, task.name)
