"""Built-in tasks: ``fastq.map`` and ``fastq.starmap``, which ``task.map()``,
``task.starmap()`` and ``task.chunks()`` send, and ``fastq.accumulate``, the body
that ``Task.replace(group)`` puts after a group (Celery's ``celery.accumulate``);
registered on an app when first used and by every worker.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

from .coroutines import run_coroutine
from .exceptions import NotRegistered


def register_builtins(app) -> None:
    """``fastq.map``, ``fastq.starmap`` (``task.map()``, ``starmap()``, ``chunks()``)
    and ``fastq.accumulate`` (``Task.replace(group)``)."""
    if "fastq.accumulate" in app.tasks:
        return

    def target(name: str):
        t = app.tasks.get(name)
        if t is None:
            raise NotRegistered(f"task {name!r} is not registered in this worker")
        return t

    def xmap(task, it):
        """Call ``task(item)`` for each item; the list of results."""
        t = target(task)
        if t.is_async:
            return _await_each(t(item) for item in it)
        return [t(item) for item in it]

    def xstarmap(task, it):
        """Call ``task(*args)`` for each args; the list of results."""
        t = target(task)
        if t.is_async:
            return _await_each(t(*args) for args in it)
        return [t(*args) for args in it]

    def accumulate(values):
        """The list of a group's results, as one result (a replacing group's value)."""
        return values

    app.task(name="fastq.map")(xmap)
    app.task(name="fastq.starmap")(xstarmap)
    app.task(name="fastq.accumulate")(accumulate)


def _await_each(coros) -> list:
    """A coroutine task's calls in fastq.map/starmap: run one after another (as for
    sync tasks) on one event loop (this is a sync task: a thread of its own in the
    asyncio pool)."""
    async def each() -> list:
        return [await c for c in coros]

    return run_coroutine(each())
