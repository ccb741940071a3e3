"""OpenTelemetry: one trace from the code that sends a task to the worker that runs it.

    from fastq.contrib.otel import FastQInstrumentor

    FastQInstrumentor().instrument()  # in the producer, and where the worker imports your app

Producer side (``before_task_publish``): a PRODUCER span ``send <task>`` is made
as a child of the current span, and its W3C trace context (``traceparent``,
``tracestate``: the globally configured propagator) goes into ``Message.headers``.
Worker side (``task_prerun``/``task_postrun``/``task_failure``/``task_retry``): the
context is extracted from the message and the task runs inside a CONSUMER span
``run <task>``, its child, so the task's span (and every span the task makes,
including tasks it sends) joins the producer's trace. A failure records the
exception and sets the span's status to ERROR; a retry adds a ``retry`` event.

Nothing is added to messages while no instrumentor is installed. Installed, the
receivers make every task take the worker's slow path (the one that sends
signals): a few microseconds per task, next to the cost of the spans themselves.

The ``send`` span marks the moment the message is built, just before it is
written to Redis; it does not time the write.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import __version__, signals
from .._speedups import current_request

__all__ = ["FastQInstrumentor"]


class FastQInstrumentor:
    """Connects fastq's signals to OpenTelemetry (one instrumentor per process is enough).

    ``instrument(tracer_provider=None)``: None uses the global tracer provider.
    ``uninstrument()`` disconnects everything."""

    def __init__(self) -> None:
        self.tracer: trace.Tracer | None = None
        self._spans: dict[tuple[str, int], list] = {}  #: (task id, thread) -> [span, context token, retried]
        self._lock = threading.Lock()

    @property
    def is_instrumented(self) -> bool:
        return self.tracer is not None

    def instrument(self, tracer_provider: trace.TracerProvider | None = None) -> FastQInstrumentor:
        if self.tracer is not None:
            return self
        self.tracer = trace.get_tracer("fastq", __version__, tracer_provider=tracer_provider)
        signals.before_task_publish.connect(self._on_publish)
        signals.task_prerun.connect(self._on_prerun)
        signals.task_failure.connect(self._on_failure)
        signals.task_retry.connect(self._on_retry)
        signals.task_postrun.connect(self._on_postrun)
        return self

    def uninstrument(self) -> None:
        for sig, receiver in ((signals.before_task_publish, self._on_publish), (signals.task_prerun, self._on_prerun),
                              (signals.task_failure, self._on_failure), (signals.task_retry, self._on_retry),
                              (signals.task_postrun, self._on_postrun)):
            sig.disconnect(receiver)
        self.tracer = None

    # --- producer ---------------------------------------------------------------------

    def _on_publish(self, sender: Any = None, body: Any = None, headers: dict | None = None, routing_key: str | None = None,
                    **_: Any) -> None:
        if self.tracer is None or headers is None:
            return
        attributes = {"messaging.system": "fastq", "messaging.operation.type": "send",
                      "messaging.destination.name": routing_key or "", "fastq.task.name": str(sender)}
        if body is not None:
            attributes["messaging.message.id"] = body.id
        span = self.tracer.start_span(f"send {sender}", kind=SpanKind.PRODUCER, attributes=attributes)
        try:
            propagate.inject(headers, context=trace.set_span_in_context(span))
        finally:
            span.end()

    # --- worker -----------------------------------------------------------------------

    def _on_prerun(self, sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if self.tracer is None or task_id is None:
            return
        req = current_request.get()
        headers = req.headers if req is not None else None
        # only string values can be trace context (other headers are the sender's own data)
        carrier = {k: v for k, v in headers.items() if isinstance(v, str)} if isinstance(headers, dict) else {}
        parent = propagate.extract(carrier)
        name = getattr(task, "name", None) or (req.task if req is not None else "task")
        attributes = {"messaging.system": "fastq", "messaging.operation.type": "process",
                      "messaging.message.id": task_id, "fastq.task.name": name}
        if req is not None:
            attributes.update({"messaging.destination.name": req.queue or "", "fastq.task.retries": req.retries})
            if req.hostname:
                attributes["fastq.worker.hostname"] = req.hostname
        span = self.tracer.start_span(f"run {name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._spans[(task_id, threading.get_ident())] = [span, token, False]

    def _entry(self, task_id: str | None) -> list | None:
        with self._lock:
            return self._spans.get((task_id, threading.get_ident())) if task_id is not None else None

    def _on_failure(self, sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                    **_: Any) -> None:
        entry = self._entry(task_id)
        if entry is not None and exception is not None:
            entry[0].record_exception(exception)
            entry[0].set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))

    def _on_retry(self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        entry = self._entry(getattr(request, "id", None))
        if entry is not None:
            entry[0].add_event("retry", {"fastq.retry.reason": repr(reason)[:500]})
            entry[2] = True

    def _on_postrun(self, sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        with self._lock:
            entry = self._spans.pop((task_id, threading.get_ident()), None) if task_id is not None else None
        if entry is None:
            return
        span, token, retried = entry
        if retried:  # postrun says FAILURE for any exception, Retry included
            state = "RETRY"
        if state:
            span.set_attribute("fastq.task.state", state)
        span.end()
        otel_context.detach(token)
