"""Sentry: report failed tasks, built on ``fastq.signals``.

    import sentry_sdk
    from fastq.contrib.sentry import FastQIntegration

    sentry_sdk.init(dsn="https://...", integrations=[FastQIntegration()])

Do this where the worker imports your app (the module ``fastq worker -A`` names),
so the pool's processes inherit it. Each task that ends in FAILURE (after its last
retry; not retries, rejects or revokes) becomes one Sentry event, marked unhandled,
with the tags ``fastq.task`` and ``fastq.task_id``, the transaction set to the task
name, and a ``fastq`` context (id, retries, queue, hostname, parent and root ids).
The task's arguments are added only with ``send_default_pii=True`` or
``FastQIntegration(include_args=True)``. Events are flushed when the worker stops
and when a pool process exits.

A connected ``task_failure`` receiver makes every task take the worker's slow
path (the one that sends signals): a few microseconds per task.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import multiprocessing.util
from typing import Any

import sentry_sdk
from sentry_sdk.integrations import Integration
from sentry_sdk.utils import event_from_exception

from .. import signals
from .._speedups import current_request

__all__ = ["FastQIntegration"]

#: Seconds to wait for unsent events when a worker or pool process stops.
FLUSH_TIMEOUT = 2.0


class FastQIntegration(Integration):
    """``sentry_sdk.init(integrations=[FastQIntegration()])``: failed tasks go to Sentry.

    ``include_args``: send the task's args and kwargs (None: only when the
    client has ``send_default_pii=True``)."""

    identifier = "fastq"

    def __init__(self, include_args: bool | None = None) -> None:
        self.include_args = include_args

    @staticmethod
    def setup_once() -> None:
        signals.task_failure.connect(_on_task_failure)
        signals.worker_shutdown.connect(_flush)
        signals.worker_process_init.connect(_on_process_init)


def _on_task_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                     args: Any = None, kwargs: Any = None, **_: Any) -> None:
    client = sentry_sdk.get_client()
    integration = client.get_integration(FastQIntegration)
    if integration is None or exception is None:  # sentry_sdk.init() without the integration, or no client
        return
    req = current_request.get()
    name = getattr(sender, "name", None) or (req.task if req is not None else None) or "fastq task"
    context: dict[str, Any] = {"task": name, "id": task_id}
    if req is not None:
        context.update(retries=req.retries, queue=req.queue, hostname=req.hostname, parent_id=req.parent_id,
                       root_id=req.root_id, delivery_count=req.delivery_count)
    include = integration.include_args if integration.include_args is not None else client.should_send_default_pii()
    if include:
        context.update(args=list(args or ()), kwargs=dict(kwargs or {}))
    event, hint = event_from_exception(exception, client_options=client.options,
                                       mechanism={"type": "fastq", "handled": False})
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("fastq.task", name)
        scope.set_tag("fastq.task_id", task_id)
        scope.set_transaction_name(name, source="task")
        scope.set_context("fastq", context)
        sentry_sdk.capture_event(event, hint=hint)


def _flush(**_: Any) -> None:
    sentry_sdk.flush(timeout=FLUSH_TIMEOUT)


def _on_process_init(**_: Any) -> None:
    # A pool process leaves through os._exit (no atexit): flush from multiprocessing's exit hook.
    multiprocessing.util.Finalize(None, sentry_sdk.flush, kwargs={"timeout": FLUSH_TIMEOUT}, exitpriority=10)
