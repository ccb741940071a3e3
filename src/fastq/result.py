"""Results as the producer sees them: ``AsyncResult``, ``ResultSet``, ``GroupResult``.

They ask the app's results store (``fastq.broker.results.RedisBackend``, which
documents the Redis layout) by name: get, wait, forget, save a group.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import builtins
import datetime as dt
import sys
import time
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from . import states
from ._speedups import current_request
from .exceptions import TaskError
from .exceptions import TimeoutError as FastQTimeout
from .messages import ResultMeta

#: The task's return type (``AsyncResult[int]``), for editors and mypy.
R = TypeVar("R")


def exception_from_meta(meta: ResultMeta) -> BaseException:
    """Rebuild the task's exception: the same type, with the same arguments when
    they were stored, when it is an Exception subclass that can be found without
    importing anything new (only already-imported modules are searched, so a
    stored result can never make the producer import code), else TaskError
    naming the original type."""
    name, module, message = meta.exc_type or "Exception", meta.exc_module or "", meta.exc_message or ""
    mod = builtins if module in ("builtins", "") else sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    # Only Exception subclasses: a stored SystemExit or KeyboardInterrupt re-raised
    # by get() would end a caller that catches Exception.
    if isinstance(cls, type) and issubclass(cls, Exception):
        if meta.exc_args is not None:
            try:
                return cls(*meta.exc_args)
            except Exception:  # noqa: BLE001 - a constructor wanting other arguments: try the message
                pass
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a constructor wanting other arguments
            pass
    return TaskError(message, name, module)


def _utc(ts: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc) if ts is not None else None


class _ResultBase:
    """What AsyncResult and EagerResult share: reading a ResultMeta."""

    id: str

    def _meta(self) -> ResultMeta | None:
        raise NotImplementedError

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def state(self) -> str:
        meta = self._meta()
        return meta.state if meta is not None else states.PENDING

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The return value, the exception for a failed task, or the meta dict of a custom state."""
        meta = self._meta()
        if meta is None:
            return None
        if meta.exc_type is not None:
            return exception_from_meta(meta)
        if meta.state not in states.READY_STATES and meta.meta is not None:
            return meta.meta
        return meta.result

    info = result

    @property
    def traceback(self) -> str | None:
        meta = self._meta()
        return meta.traceback if meta is not None else None

    @property
    def date_done(self) -> dt.datetime | None:
        meta = self._meta()
        return _utc(meta.date_done) if meta is not None else None

    @property
    def runtime(self) -> float | None:
        meta = self._meta()
        return meta.runtime if meta is not None else None

    @property
    def retries(self) -> int:
        meta = self._meta()
        return meta.retries if meta is not None else 0

    @property
    def worker(self) -> str | None:
        meta = self._meta()
        return meta.hostname if meta is not None else None

    hostname = worker

    @staticmethod
    def _outcome(meta: ResultMeta, propagate: bool) -> Any:
        if meta.state == states.SUCCESS:
            return meta.result
        exc = exception_from_meta(meta) if meta.exc_type else TaskError(meta.state, meta.state)
        if propagate:
            raise exc
        return exc

    def __eq__(self, other: object) -> bool:
        # A result equals its own id too, as in Celery (``task_id in group_result.results``).
        if isinstance(other, _ResultBase):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"


class AsyncResult(_ResultBase, Generic[R]):
    """A handle to a task's result in the backend."""

    #: The result before this one: the previous step of a chain, the header of a
    #: chord's body, or the task that sent this one from inside a task (when known here).
    parent = None

    #: True for a task that stores no result (``ignore_result``), as sent: ``get()``
    #: then returns None at once instead of waiting for a result that never comes.
    ignored = False

    def __init__(self, id: str, app=None, task_name: str | None = None, backend=None) -> None:  # noqa: A002
        if app is None:
            raise ValueError("AsyncResult needs the app (use app.AsyncResult(task_id))")
        self.id = id
        self.app = app
        self.name = task_name
        self._backend = backend
        self._cache: ResultMeta | None = None

    @property
    def backend(self):
        return self._backend or self.app.backend

    def as_tuple(self) -> tuple:
        """``((id, parent's as_tuple or None), None)``: the result's ancestry, in Celery's shape."""
        parent = self.parent
        return (self.id, parent.as_tuple() if parent is not None else None), None

    @property
    def children(self) -> list:
        """Results of the tasks this task sent while it ran (recorded by the worker with its result)."""
        meta = self._meta()
        return [AsyncResult(c, app=self.app) for c in (meta.children if meta is not None else None) or ()]

    def _meta(self) -> ResultMeta | None:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_meta(self.id)
        if meta is not None and meta.state in states.READY_STATES:
            self._cache = meta
        return meta

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float | None = None,
            disable_sync_subtasks: bool = True) -> R:
        """Wait for the task and return its value (re-raising its exception when
        ``propagate``). Raises fastq.exceptions.TimeoutError after ``timeout`` s.
        None at once when the result is ``ignored`` (Celery does the same)."""
        if self.ignored:
            return None  # type: ignore[return-value]
        _check_sync_subtask(disable_sync_subtasks)
        if self._cache is None:
            self._cache = self.backend.wait(self.id, timeout)
        value = self._outcome(self._cache, propagate)
        if self.name is not None and self._cache.state == states.SUCCESS:
            task = self.app.tasks.get(self.name)
            if task is not None and task._typed is not None and task._typed.return_type is not None:
                return task._typed.convert_result(value)  # a typed task's value as its annotation says
        return value

    wait = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True,
                        disable_sync_subtasks: bool = True) -> Any:
        """``get()`` for async code: ``await r.get_async(timeout=10)`` waits without
        blocking the event loop (a blocking BLMOVE on redis.asyncio; no polling)."""
        if self.ignored:
            return None
        _check_sync_subtask(disable_sync_subtasks)
        if self._cache is None:
            self._cache = await self.backend.wait_async(self.id, timeout)
        return self._outcome(self._cache, propagate)

    async def state_async(self) -> str:
        """``state`` for async code."""
        if self._cache is not None:
            return self._cache.state
        meta = await self.backend.get_meta_async(self.id)
        if meta is not None and meta.state in states.READY_STATES:
            self._cache = meta
        return meta.state if meta is not None else states.PENDING

    def forget(self) -> None:
        """Delete the stored result."""
        self._cache = None
        self.backend.forget(self.id)

    def revoke(self, terminate: bool = False, signal: str = "SIGKILL", wait: bool = False,
               timeout: float | None = None) -> None:
        """Revoke this task (``app.control.revoke``): a worker stores REVOKED instead of
        running it; ``terminate=True`` also stops it when it is running. ``wait``
        waits up to ``timeout`` s for the workers' replies, as in Celery."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal, reply=wait,
                                timeout=timeout if timeout is not None else 1.0)

    def revoke_by_stamped_headers(self, headers: dict, connection: Any = None, terminate: bool = False,
                                  signal: str = "SIGKILL", wait: bool = False, timeout: float | None = None) -> None:
        """Revoke every task stamped with one of these values
        (``app.control.revoke_by_stamped_headers``; fastq.stamping), as Celery's
        (whose ``connection`` argument is taken and not used: the app's is)."""
        self.app.control.revoke_by_stamped_headers(headers, terminate=terminate, signal=signal, reply=wait,
                                                   timeout=timeout if timeout is not None else 1.0)


class EagerResult(_ResultBase, Generic[R]):
    """The result of a task run locally (``apply()`` or ``task_always_eager``)."""

    def __init__(self, id: str, meta: ResultMeta, name: str | None = None) -> None:  # noqa: A002
        self.id = id
        self.name = name
        self._cache = meta

    def _meta(self) -> ResultMeta:
        return self._cache

    def get(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> R:
        return self._outcome(self._cache, propagate)

    wait = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> Any:
        return self._outcome(self._cache, propagate)

    async def state_async(self) -> str:
        return self._cache.state

    def forget(self) -> None:
        pass


class ResultSet:
    """Many results, collected in pipelined batches."""

    def __init__(self, results: Iterable[_ResultBase], app=None) -> None:
        self.results = list(results)
        self._app = app

    @property
    def app(self):
        """The given app, else that of the first result (one added later counts:
        ``ResultSet([])`` then ``add()``, as Celery users build them)."""
        if self._app is None:
            self._app = next((r.app for r in self.results if isinstance(r, AsyncResult) and r.app is not None), None)
        return self._app

    @app.setter
    def app(self, value) -> None:
        self._app = value

    def __len__(self) -> int:
        return len(self.results)

    def add(self, result: _ResultBase) -> None:
        """Add a result to the set; nothing happens when it is already in it (as in Celery)."""
        if result not in self.results:
            self.results.append(result)

    def update(self, results: Iterable[_ResultBase]) -> None:
        """``add`` each of ``results``."""
        for r in results:
            self.add(r)

    def discard(self, result: _ResultBase) -> None:
        """Remove a result if it is in the set."""
        if result in self.results:
            self.results.remove(result)

    def remove(self, result: _ResultBase) -> None:
        """Remove a result; KeyError when it is not in the set (as in Celery)."""
        if result not in self.results:
            raise KeyError(result)
        self.results.remove(result)

    def _refresh(self) -> None:
        todo = [r for r in self.results if isinstance(r, AsyncResult) and r._cache is None]
        if not todo:
            return
        metas = self.app.backend.get_many([r.id for r in todo])
        for r, meta in zip(todo, metas):
            if meta is not None:
                r._cache = meta

    def ready(self) -> bool:
        self._refresh()
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        self._refresh()
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        self._refresh()
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        self._refresh()
        return sum(1 for r in self.results if r.successful())

    def get(self, timeout: float | None = None, propagate: bool = True, disable_sync_subtasks: bool = True,
            callback=None, **_celery: Any) -> list | None:
        """All values in order. Walks the results in chunks of 1000: one pipelined
        read of a chunk's missing results, then a blocking wait on the last one
        still missing, and again. Tasks finish in about the order they were sent,
        so once the last is done most of the others are too: a chunk is read two
        or three times however slowly its results arrive (only tasks finishing
        in reverse order would have it read again after each result).

        ``callback(task_id, value)``, as in Celery: called for each result in order
        as it is ready, and nothing is returned; ``timeout`` is the budget of the
        whole call. Celery's polling arguments (``interval``, ``no_ack``...) are
        accepted and not needed."""
        _check_sync_subtask(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        if callback is not None:
            for r in self.results:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0 and not r.ready():
                    raise FastQTimeout(f"results not ready after {timeout} s")
                callback(r.id, r.get(timeout=left, propagate=propagate, disable_sync_subtasks=False))
            return None
        pending = [r for r in self.results if isinstance(r, AsyncResult) and r._cache is None]
        backend = self.app.backend if pending else None
        for i in range(0, len(pending), 1000):
            chunk = pending[i : i + 1000]
            while chunk:
                for r, meta in zip(chunk, backend.get_many([r.id for r in chunk])):
                    if meta is not None:
                        r._cache = meta
                chunk = [r for r in chunk if r._cache is None]
                if chunk:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        missing = sum(1 for r in pending if r._cache is None)
                        raise FastQTimeout(f"{missing} results not ready after {timeout} s")
                    # The last, not the first: waiting on the first re-read the rest of
                    # the chunk after every result (300 tasks of 5 ms: 13% of a core).
                    chunk[-1]._cache = backend.wait(chunk[-1].id, left)
                    chunk.pop()
        return [r._outcome(r._meta(), propagate) for r in self.results]

    join = get

    async def get_async(self, timeout: float | None = None, propagate: bool = True,
                        disable_sync_subtasks: bool = True) -> list:
        """``get()`` for async code: each result in turn, waited for without blocking the loop."""
        _check_sync_subtask(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in self.results:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            out.append(await r.get_async(timeout=left, propagate=propagate, disable_sync_subtasks=False))
        return out


class GroupResult(ResultSet):
    """The result of a group: ``get()`` (the values, in order), ``ready()``,
    ``successful()``, ``failed()``, ``completed_count()``, ``results``.

    ``save()`` stores the member ids (for ``result_expires``), so another
    process can ``GroupResult.restore(group_id, app=app)``."""

    #: The app ``restore()`` uses when none is given: the last one a GroupResult was made with.
    _default_app = None

    def __init__(self, id: str | None = None, results: Iterable = (), app=None, parent=None) -> None:  # noqa: A002
        super().__init__(results, app)
        if self.app is None:
            self.app = next((r.app for r in self.results if isinstance(r, GroupResult) and r.app is not None), None)
        self.id = id
        self.parent = parent
        if self.app is not None:
            GroupResult._default_app = self.app

    @property
    def children(self) -> list:
        return self.results

    def as_tuple(self) -> tuple:
        """``((id, parent's as_tuple or None), [each member's as_tuple])``, in Celery's shape."""
        parent = self.parent
        return (self.id, parent.as_tuple() if parent is not None else None), [r.as_tuple() for r in self.results]

    def _leaves(self) -> list:
        out = []
        for r in self.results:
            out.extend(r._leaves() if isinstance(r, GroupResult) else (r,))
        return out

    def get(self, timeout: float | None = None, propagate: bool = True, disable_sync_subtasks: bool = True) -> list:
        """Every member's value, in order (a nested group gives a nested list)."""
        _check_sync_subtask(disable_sync_subtasks)
        if not any(isinstance(r, GroupResult) for r in self.results):
            return super().get(timeout, propagate, False)
        ResultSet(self._leaves(), self.app).get(timeout, False, False)  # wait for all, in batches
        return [r.get(propagate=propagate, disable_sync_subtasks=False) if isinstance(r, GroupResult)
                else r._outcome(r._meta(), propagate) for r in self.results]

    join = get

    def _ids(self) -> list:
        return [[r.id, r._ids()] if isinstance(r, GroupResult) else r.id for r in self.results]

    def save(self) -> GroupResult:
        """Store the group (member ids) under its id for ``result_expires`` seconds."""
        if self.id is None:
            raise ValueError("this GroupResult has no id")
        self.app.backend.save_group(self.id, self._ids())
        return self

    @classmethod
    def restore(cls, id: str, app=None) -> GroupResult | None:  # noqa: A002
        """The saved group ``id`` (None when unknown or expired)."""
        app = app or cls._default_app
        if app is None:
            raise ValueError("GroupResult.restore() needs the app: GroupResult.restore(group_id, app=app)")
        members = app.backend.restore_group(id)
        if members is None:
            return None

        def build(gid, ids):
            return cls(gid, [build(*i) if isinstance(i, list) else AsyncResult(i, app=app) for i in ids], app=app)

        return build(id, members)

    def forget(self) -> None:
        """Delete the stored group and its members' results."""
        for r in self._leaves():
            r.forget()
        if self.id is not None and self.app is not None:
            self.app.backend.forget_group(self.id)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(str(r.id) for r in self.results[:10])}{', ...' if len(self) > 10 else ''}]>"


def _check_sync_subtask(disable: bool) -> None:
    req = current_request.get()
    if disable and req is not None and req.delivery is not None:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker pool. "
            "Use a chain or chord, or pass disable_sync_subtasks=False if you must."
        )
