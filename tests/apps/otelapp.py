"""An app whose worker traces its tasks with fastq.contrib.otel. Finished spans go,
as JSON, to the ledger list ``spans`` (a small exporter), so the test process can
read the worker's spans."""

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from tests.apps.ledger import ledger

from fastq import FastQ
from fastq.contrib.otel import FastQInstrumentor


def span_record(span) -> dict:
    return {"name": span.name, "trace_id": span.context.trace_id, "span_id": span.context.span_id,
            "parent_id": span.parent.span_id if span.parent is not None else None, "kind": span.kind.name,
            "status": span.status.status_code.name, "attributes": dict(span.attributes or {}),
            "events": [e.name for e in span.events]}


class LedgerExporter(SpanExporter):
    def export(self, spans):
        for s in spans:
            ledger().rpush("spans", json.dumps(span_record(s)))
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(LedgerExporter()))
FastQInstrumentor().instrument(tracer_provider=provider)

app = FastQ("otel")
tracer = provider.get_tracer("otelapp")


@app.task(name="otel.add")
def add(x, y):
    with tracer.start_as_current_span("inside add"):
        return x + y


@app.task(name="otel.fail")
def fail():
    raise LookupError("no such order")


@app.task(name="otel.parent")
def parent(n):
    # a task sent from a task: same trace, one level down
    return add.delay(n, n).id


@app.task(name="otel.flaky", bind=True, max_retries=1, default_retry_delay=0)
def flaky(self):
    if self.request.retries == 0:
        raise self.retry()
    return "ok"
