"""Signals for integrations (Sentry, OpenTelemetry, ...), like ``celery.signals``.

    from fastq.signals import task_failure

    @task_failure.connect
    def report(sender=None, task_id=None, exception=None, **kw): ...

Receivers are called with ``sender`` and keyword arguments; an exception in a
receiver is logged, never raised into the worker.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fastq.signals")


class Signal:
    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Callable] = []

    def connect(self, receiver: Callable | None = None, **_: Any):
        """Connect a receiver; usable as ``@signal.connect`` or ``@signal.connect()``."""
        if receiver is None:
            return self.connect
        if receiver not in self.receivers:
            self.receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Callable) -> None:
        if receiver in self.receivers:
            self.receivers.remove(receiver)

    def send(self, sender: Any = None, **kwargs: Any) -> list:
        out = []
        for r in list(self.receivers):
            try:
                out.append((r, r(sender=sender, signal=self, **kwargs)))
            except Exception as exc:
                log.exception("Signal receiver %r for %s failed", r, self.name)
                out.append((r, exc))
        return out

    def __bool__(self) -> bool:
        return bool(self.receivers)

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


#: Sent by the producer for each message about to be published (only while it has
#: receivers): ``sender`` is the task name, ``body`` the Message, ``headers`` its
#: ``Message.headers`` dict, which receivers may add to (e.g. a trace context),
#: ``routing_key`` the queue, ``priority`` and ``eta`` (epoch seconds or None),
#: and Celery's ``exchange`` ("") and ``properties`` (correlation_id, reply_to,
#: priority, delivery_mode).
before_task_publish = Signal("before_task_publish")
#: Sent in the worker when a task message is taken to run (Celery's): ``request``
#: is its Request (``id``, ``task``, ``args``...), before expiry, revoke and rate checks.
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
