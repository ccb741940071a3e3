"""Running coroutine tasks (``@app.task async def ...``): the time limits of a
coroutine, and how a pool without an event loop runs one.

- The asyncio pool (``-P asyncio``, or ``-P process --async-concurrency M``)
  runs many coroutines on one loop (``worker/async_consumer.py``).
- The other pools (``solo``, ``thread``, ``process`` without
  ``--async-concurrency``) run a coroutine task to completion with its own
  ``asyncio.run``: it works, one at a time per consumer. The worker says so at
  start-up (``worker.startup_checks``).

Soft time limit: the coroutine is cancelled (``asyncio.CancelledError`` is
raised inside it at its current ``await``, so ``except``/``finally`` blocks run),
and the task fails with ``SoftTimeLimitExceeded``. A coroutine that catches the
cancellation and returns a value succeeds, as a sync task that catches
SoftTimeLimitExceeded does. Hard time limit (asyncio pool): the coroutine is
cancelled and the task fails with ``TimeLimitExceeded`` whatever it does then.
In the sync pools the process pool's hard limit (killing the process) applies
to coroutine tasks as to any other.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Coroutine
from typing import Any

from .exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded

log = logging.getLogger("fastq.worker")


class Limits:
    """Why a running coroutine was cancelled by the worker (None: not by us)."""

    __slots__ = ("handles", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None  #: "soft", "hard" or "terminate"
        self.handles: list = []

    def arm(self, task: asyncio.Task, soft: float | None, hard: float | None) -> None:
        """Cancel ``task`` after ``soft`` / ``hard`` seconds."""
        loop = asyncio.get_running_loop()
        if soft:
            self.handles.append(loop.call_later(soft, self.cancel, task, "soft"))
        if hard:
            self.handles.append(loop.call_later(hard, self.cancel, task, "hard"))

    def cancel(self, task: asyncio.Task, reason: str) -> None:
        if reason == "soft" and self.reason is not None:
            return  # already cancelled, for a stronger reason
        self.reason = reason
        task.cancel()

    def disarm(self) -> None:
        for h in self.handles:
            h.cancel()
        self.handles = []


async def call_limited(coro: Coroutine, soft: float | None, hard: float | None = None,
                       limits: Limits | None = None) -> Any:
    """Await ``coro`` in the current asyncio task, cancelling it at its time limits.

    A cancellation the worker asked for comes out as SoftTimeLimitExceeded,
    TimeLimitExceeded or (revoke with terminate) TaskRevokedError; any other
    (the loop shutting down) is re-raised."""
    limits = limits if limits is not None else Limits()
    me = asyncio.current_task()
    limits.arm(me, soft, hard)
    try:
        retval = await coro
    except asyncio.CancelledError:
        if limits.reason is None:
            raise
        _uncancel(me)
        if limits.reason == "hard":
            raise TimeLimitExceeded(f"hard time limit ({hard}s) exceeded") from None
        if limits.reason == "soft":
            raise SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded") from None
        raise TaskRevokedError("terminated") from None
    finally:
        limits.disarm()
    if limits.reason is not None:
        _uncancel(me)
        if limits.reason == "hard":  # it caught the cancellation and carried on: still a failure
            raise TimeLimitExceeded(f"hard time limit ({hard}s) exceeded")
    return retval


def _uncancel(task: asyncio.Task | None) -> None:
    """Forget our cancel request, so later awaits in the same task work (3.11+)."""
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def run_coroutine(coro: Coroutine, soft: float | None = None) -> Any:
    """Run a coroutine to completion from synchronous code (a sync pool, eager
    mode), with the soft time limit as cancellation. The request context is
    carried into the coroutine. With a loop already running in this thread
    (eager mode called from async code) it runs on a new loop in a helper
    thread, and this thread waits."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(call_limited(coro, soft))
    box: dict = {}
    ctx = contextvars.copy_context()

    def run() -> None:
        try:
            box["value"] = ctx.run(asyncio.run, call_limited(coro, soft))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, name="fastq-eager-coroutine", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


__all__ = ["Limits", "call_limited", "run_coroutine"]
