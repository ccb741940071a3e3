"""fastq.contrib.sentry with the real sentry-sdk: a `fastq worker` (process pool)
reports failed tasks through a transport that records events (no network)."""

from __future__ import annotations

import json
import os

import pytest

if not os.environ.get("CI"):  # in CI a missing dependency must fail, not skip
    pytest.importorskip("sentry_sdk", reason="pip install sentry-sdk (the contrib-test extra)")

from conftest import wait_for
from fastq import FastQ

APP = "tests.apps.sentryapp:app"


def _events(ledger) -> list[dict]:
    return [json.loads(x) for x in ledger.lrange("sentry", 0, -1)]


def test_a_failed_task_is_one_sentry_event(redis_url, worker, ledger):
    w = worker("-c", "1", app=APP)
    app = FastQ("client", broker=redis_url)
    # Given a task that fails, one that retries then succeeds, one rejected and one that succeeds
    bad = app.send_task("sentry.charge", ("4111-1111",), {"amount": 30})
    assert app.send_task("sentry.flaky").get(timeout=30) == "second try"
    app.send_task("sentry.reject").get(timeout=30, propagate=False)
    assert app.send_task("sentry.ok").get(timeout=30) == "fine"
    bad.get(timeout=30, propagate=False)
    # Then only the failure was reported, as an unhandled exception of its own type
    events = wait_for(lambda: _events(ledger), 30, message="the Sentry event")
    assert len(events) == 1
    ev = events[0]
    exc = ev["exception"]["values"][-1]
    assert exc["type"] == "PaymentDeclined" and exc["value"] == "card declined for 30"
    assert exc["mechanism"] == {"type": "fastq", "handled": False}
    assert any(f["function"] == "charge" for f in exc["stacktrace"]["frames"])
    assert ev["tags"]["fastq.task"] == "sentry.charge" and ev["tags"]["fastq.task_id"] == bad.id
    assert ev["transaction"] == "sentry.charge"
    ctx = ev["contexts"]["fastq"]
    assert (ctx["id"], ctx["queue"], ctx["hostname"], ctx["retries"]) == (bad.id, "default", w.name, 0)
    # The arguments stay out of the context without send_default_pii (the frames' local
    # variables are Sentry's own choice: include_local_variables)
    assert "args" not in ctx and "kwargs" not in ctx


def test_arguments_are_sent_with_send_default_pii(redis_url, worker, ledger):
    worker("-c", "1", app=APP, env={"FASTQ_TEST_SENTRY_PII": "1"})
    app = FastQ("client", broker=redis_url)
    app.send_task("sentry.charge", ("4111-1111",), {"amount": 5}).get(timeout=30, propagate=False)
    ev = wait_for(lambda: _events(ledger), 30, message="the Sentry event")[0]
    assert ev["contexts"]["fastq"]["args"] == ["4111-1111"] and ev["contexts"]["fastq"]["kwargs"] == {"amount": 5}
