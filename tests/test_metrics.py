"""Prometheus metrics of `fastq worker --metrics-port`, and JSON log lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request

import pytest

from conftest import ROOT, fastq_command, free_port, wait_for

if not os.environ.get("CI"):  # in CI a missing dependency must fail, not skip
    pytest.importorskip("prometheus_client", reason="pip install 'fastq[metrics]'")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in an exposition, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if got == {k: str(v) for k, v in labels.items()}:
            return float(m.group(4))
    return None


def scrape_until(port: int, **wanted) -> str:
    """Scrape until every ``name=(labels, value)`` holds; return the last exposition."""
    def ready():
        text = scrape(port)
        return text if all(sample(text, n.split("__")[0], **labels) == v for n, (labels, v) in wanted.items()) else None

    return wait_for(ready, 30, 0.3, message=f"metrics {wanted}")


def test_worker_metrics_endpoint(app, worker):
    # Given a process-pool worker with --metrics-port
    port = free_port()
    worker("-c", "2", "--metrics-port", str(port))
    # When tasks succeed and fail
    results = [app.tasks["tests.add"].delay(i, i) for i in range(5)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(5)]
    app.tasks["tests.fail"].delay().get(timeout=30, propagate=False)
    app.tasks["tests.add"].apply_async((1, 1), countdown=600)  # one delayed
    # Then the endpoint counts them per task and state, with runtimes
    text = scrape_until(port, fastq_tasks_total__add=({"task": "tests.add", "state": "succeeded"}, 5),
                        fastq_tasks_total__fail=({"task": "tests.fail", "state": "failed"}, 1))
    assert sample(text, "fastq_task_runtime_seconds_count", task="tests.add") == 5
    assert sample(text, "fastq_task_runtime_seconds_bucket", task="tests.add", le="+Inf") == 5
    assert sample(text, "fastq_tasks_received_total") >= 1
    # And the queue, worker and process gauges
    assert sample(text, "fastq_queue_length", queue="default") == 0
    assert sample(text, "fastq_in_flight", queue="default") == 0
    assert sample(text, "fastq_queue_delayed", queue="default") == 1
    assert sample(text, "fastq_workers_online") == 1
    assert sample(text, "fastq_worker_concurrency") == 2
    assert sample(text, "fastq_worker_memory_bytes") > 10_000_000
    assert sample(text, "process_resident_memory_bytes") > 0
    # And no label carries a task id or arguments
    for r in results:
        assert r.id not in text


def test_metrics_count_only_own_events(app, worker):
    # Given two workers, one with metrics
    port = free_port()
    worker("-P", "solo", "--metrics-port", str(port))
    other = worker("-P", "solo", "-Q", "other")
    # When the other one runs tasks
    for _ in range(3):
        assert app.tasks["tests.who"].apply_async(queue="other").get(timeout=30)["hostname"] == other.name
    assert app.tasks["tests.add"].delay(1, 1).get(timeout=30) == 2
    # Then the first counts only its own
    text = scrape_until(port, fastq_tasks_total=({"task": "tests.add", "state": "succeeded"}, 1))
    assert sample(text, "fastq_tasks_total", task="tests.who", state="succeeded") is None
    assert sample(text, "fastq_workers_online") == 2


def test_task_label_cardinality_is_bounded(monkeypatch):
    # Given the limit of distinct task labels lowered to 3
    import prometheus_client

    from fastq import metrics

    monkeypatch.setattr(metrics, "MAX_TASK_NAMES", 3)
    registry = prometheus_client.CollectorRegistry()
    tm = metrics.TaskMetrics(registry)
    # When 10 task names succeed
    for i in range(10):
        tm.observe({"type": "task-succeeded", "name": f"t{i}", "uuid": f"id-{i}", "runtime": 0.01})
    text = prometheus_client.generate_latest(registry).decode()
    # Then 3 have their own label and the rest are "other"
    assert sample(text, "fastq_tasks_total", task="t0", state="succeeded") == 1
    assert sample(text, "fastq_tasks_total", task="t3", state="succeeded") is None
    assert sample(text, "fastq_tasks_total", task="other", state="succeeded") == 7
    assert "id-" not in text


def test_json_logs_carry_task_fields(app, worker):
    # Given a worker logging JSON lines
    w = worker("-P", "solo", "--log-format", "json")
    # When a task succeeds and one fails
    ok = app.tasks["tests.add"].delay(2, 3)
    bad = app.tasks["tests.fail"].delay("nope")
    assert ok.get(timeout=30) == 5
    bad.get(timeout=30, propagate=False)

    def lines():
        out = []
        for line in w.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    # Then each line is JSON, and task lines carry name, id, state, runtime and hostname
    found = wait_for(lambda: [x for x in lines() if x.get("task_id") in (ok.id, bad.id)] if len(
        [x for x in lines() if x.get("task_id") in (ok.id, bad.id)]) >= 2 else None, 30, 0.2, message="task log lines")
    by_id = {x["task_id"]: x for x in found}
    assert by_id[ok.id]["task_name"] == "tests.add" and by_id[ok.id]["state"] == "SUCCESS"
    assert by_id[ok.id]["runtime"] >= 0 and by_id[ok.id]["hostname"] == w.name
    assert by_id[bad.id]["state"] == "FAILURE" and by_id[bad.id]["level"] == "ERROR"
    assert all(x["hostname"] == w.name for x in lines())


def test_json_log_format_prints_only_json_lines(app, redis_url, r):
    # Given a worker started with --log-format json, stdout and stderr kept apart
    name = "jsonlines@test"
    proc = subprocess.Popen([*fastq_command(), "worker", "-A", "tests.apps.basic:app", "-P", "solo", "-n", name,
                             "--log-format", "json", "--loglevel", "INFO"], cwd=ROOT,
                            env={**os.environ, "FASTQ_BROKER_URL": redis_url}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: r.zscore("fastq:workers", name) is not None, 30, message="the worker to register")
        assert app.tasks["tests.add"].delay(2, 3).get(timeout=30) == 5
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    # Then every line it printed, on either stream, is a JSON object (no text banner) ...
    lines = [line for line in (out + err).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(x, dict) for x in records)
    # ... and the banner is one of them, with the worker's facts
    banner = next(x for x in records if x.get("event") == "worker-banner")
    assert banner["worker"] == name and banner["queues"] == ["default"] and banner["pool"] == "solo"
    assert "tests.add" in banner["tasks"] and banner["hostname"] == name
