"""fastq.contrib.otel with the real opentelemetry-sdk: the producer (this process,
InMemorySpanExporter) and a `fastq worker` subprocess (process pool, spans written
to the ledger) share one trace; the worker's span is the child of the send span."""

from __future__ import annotations

import json
import os

import pytest

if not os.environ.get("CI"):  # in CI a missing dependency must fail, not skip
    pytest.importorskip("opentelemetry.sdk", reason="pip install opentelemetry-sdk (the contrib-test extra)")

from conftest import wait_for
from fastq import FastQ
from fastq.messages import Message

APP = "tests.apps.otelapp:app"


@pytest.fixture
def traced():
    """An instrumented producer app with its own tracer provider and an in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fastq.contrib.otel import FastQInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inst = FastQInstrumentor().instrument(tracer_provider=provider)
    yield provider.get_tracer("test"), exporter
    inst.uninstrument()


def _worker_spans(ledger, n: int) -> dict[str, list[dict]]:
    def enough():
        spans = [json.loads(x) for x in ledger.lrange("spans", 0, -1)]
        return spans if len(spans) >= n else None

    by_name: dict[str, list[dict]] = {}
    for s in wait_for(enough, 30, message=f"{n} worker spans"):
        by_name.setdefault(s["name"], []).append(s)
    return by_name


def test_the_task_span_joins_the_producers_trace(redis_url, worker, ledger, traced):
    tracer, exporter = traced
    worker("-c", "1", app=APP)
    app = FastQ("client", broker=redis_url)
    # Given a request handled in this process that sends a task
    with tracer.start_as_current_span("checkout") as root:
        r = app.send_task("otel.add", (2, 3))
    assert r.get(timeout=30) == 5
    # Then this process has the request span and a PRODUCER span under it
    mine = {s.name: s for s in exporter.get_finished_spans()}
    send = mine["send otel.add"]
    assert send.parent.span_id == root.get_span_context().span_id and send.kind.name == "PRODUCER"
    assert send.attributes["messaging.destination.name"] == "default" and send.attributes["messaging.message.id"] == r.id
    # And the worker's CONSUMER span is in the same trace, the child of the send span
    spans = _worker_spans(ledger, 2)
    run = spans["run otel.add"][0]
    assert run["trace_id"] == root.get_span_context().trace_id
    assert run["parent_id"] == send.context.span_id and run["kind"] == "CONSUMER"
    assert run["attributes"]["fastq.task.state"] == "SUCCESS" and run["attributes"]["messaging.message.id"] == r.id
    # And spans the task makes are children of the task's span
    inner = spans["inside add"][0]
    assert inner["trace_id"] == run["trace_id"] and inner["parent_id"] == run["span_id"]


def test_failures_retries_and_tasks_sent_by_tasks(redis_url, worker, ledger, traced):
    tracer, _exporter = traced
    worker("-c", "1", app=APP)
    app = FastQ("client", broker=redis_url)
    with tracer.start_as_current_span("batch") as root:
        bad = app.send_task("otel.fail")
        flaky = app.send_task("otel.flaky")
        par = app.send_task("otel.parent", (4,))
    bad.get(timeout=30, propagate=False)
    assert flaky.get(timeout=30) == "ok"
    child = app.AsyncResult(par.get(timeout=30))
    assert child.get(timeout=30) == 8
    trace_id = root.get_span_context().trace_id
    # run fail, run flaky x2, run parent, send add (in the worker), run add, inside add
    spans = _worker_spans(ledger, 7)
    assert all(s["trace_id"] == trace_id for group in spans.values() for s in group)
    failed = spans["run otel.fail"][0]
    assert failed["status"] == "ERROR" and "exception" in failed["events"]
    assert failed["attributes"]["fastq.task.state"] == "FAILURE"
    first, second = sorted(spans["run otel.flaky"], key=lambda s: s["attributes"]["fastq.task.retries"])
    assert "retry" in first["events"] and first["attributes"]["fastq.task.state"] == "RETRY"
    assert second["attributes"]["fastq.task.state"] == "SUCCESS"
    # a task sent from a task: run parent -> send otel.add -> run otel.add
    run_parent, send_add, run_add = spans["run otel.parent"][0], spans["send otel.add"][0], spans["run otel.add"][0]
    assert send_add["parent_id"] == run_parent["span_id"] and run_add["parent_id"] == send_add["span_id"]


def test_no_headers_without_instrumentation(redis_url, r):
    import msgspec

    from fastq.canvas import Signature
    from fastq.producer import _publish_hooks

    # Given no instrumentor installed in this process
    assert not _publish_hooks
    app = FastQ("client", broker=redis_url)
    app.send_task("otel.add", (1, 1))
    app.send_many([Signature("otel.add", (1, 2), app=app)])
    # Then the messages carry no headers at all
    msgs = [msgspec.msgpack.decode(f[b"p"], type=Message) for _id, f in r.xrange("fastq:{default}:s")]
    assert len(msgs) == 2 and all(m.headers is None for m in msgs)


def test_send_many_and_explicit_headers_are_traced(redis_url, r, traced):
    import msgspec

    from fastq.canvas import Signature

    tracer, exporter = traced
    app = FastQ("client", broker=redis_url)
    with tracer.start_as_current_span("bulk"):
        app.send_many([Signature("otel.add", (i, i), app=app) for i in range(3)])
        app.send_task("otel.add", (1, 1), headers={"tenant": "acme"})
    msgs = [msgspec.msgpack.decode(f[b"p"], type=Message) for _id, f in r.xrange("fastq:{default}:s")]
    assert len(msgs) == 4 and all("traceparent" in m.headers for m in msgs)
    assert msgs[-1].headers["tenant"] == "acme"  # the caller's own headers are kept
    assert len([s for s in exporter.get_finished_spans() if s.name == "send otel.add"]) == 4
