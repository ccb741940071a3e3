"""PROGRESS (``self.update_state``) where people look: ``fastq result ID``, the
dashboard's API (task list and detail), and ``fastq events``."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import ROOT, fastq_command, wait_for
from fastq import FastQ
from test_dashboard import APP, dashboard, mon  # noqa: F401 - fixtures


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*fastq_command(), "-A", APP, *args], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=60)


def test_fastq_result_shows_progress_and_its_meta(mon, worker, ledger):  # noqa: F811
    # Given a running task that reported progress
    worker("-P", "thread", "-c", "1", app=APP)
    r = mon.tasks["mon.progress"].delay("go-cli")
    wait_for(lambda: r.state == "PROGRESS", 30, message="PROGRESS")
    # When `fastq result ID` runs, it prints the state and the meta as JSON
    out = _cli("result", r.id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["PROGRESS", '{"done": 3, "total": 10}']
    stored = json.loads(_cli("result", "--json", r.id).stdout)
    assert (stored["state"], stored["meta"]) == ("PROGRESS", {"done": 3, "total": 10})
    # And once it finishes, the result
    ledger.set("go-cli", 1)
    assert r.get(timeout=30) == "finished"
    assert _cli("result", r.id).stdout.splitlines() == ["SUCCESS", "'finished'"]


def test_dashboard_lists_and_shows_progress(mon, worker, dashboard, ledger):  # noqa: F811
    d = dashboard
    worker("-P", "thread", "-c", "2", app=APP)
    # Given two running tasks with progress
    r = mon.tasks["mon.progress"].delay("go-dash")
    other = mon.tasks["mon.progress"].delay("go-dash", meta={"step": "upload"})
    # Then the task list shows it as PROGRESS with its meta (from the task-progress event)
    row = wait_for(lambda: [t for t in d.json(f"/api/tasks?search={r.id}")["tasks"] if t["state"] == "PROGRESS"], 30,
                   0.2, message="PROGRESS in /api/tasks")[0]
    assert row["meta"] == {"done": 3, "total": 10} and row["name"] == "mon.progress"
    ids = {t["id"] for t in d.json("/api/tasks?state=PROGRESS")["tasks"]}
    wait_for(lambda: {t["id"] for t in d.json("/api/tasks?state=PROGRESS")["tasks"]} == {r.id, other.id}, 30, 0.2,
             message=f"the PROGRESS filter ({ids})")
    # And the detail page has the state and the meta
    detail = d.json(f"/api/tasks/{r.id}")
    assert (detail["state"], detail["meta"]) == ("PROGRESS", {"done": 3, "total": 10})
    assert d.json(f"/api/tasks/{other.id}")["meta"] == {"step": "upload"}
    # When it finishes, the list says SUCCESS
    ledger.set("go-dash", 1)
    assert r.get(timeout=30) == "finished"
    wait_for(lambda: d.json(f"/api/tasks?search={r.id}")["tasks"][0]["state"] == "SUCCESS", 30, 0.2,
             message="SUCCESS in /api/tasks")


def test_progress_outside_a_worker_sends_no_event_and_meta_must_be_a_dict(redis_url, r):
    # update_state for a task id from outside a worker stores the state but sends no event
    app = FastQ("progress-client", broker=redis_url)
    t = app.task(name="p.noop", bind=True)(lambda self: None)
    t.update_state(task_id="abc", state="PROGRESS", meta={"n": 1})
    assert app.AsyncResult("abc").state == "PROGRESS" and app.AsyncResult("abc").info == {"n": 1}
    assert r.xlen("fastq:events") == 0
    # A meta that is not a dict is refused at the call (it could not be read back), naming the task
    with pytest.raises(TypeError, match=r"task 'p\.noop': update_state\(meta=\.\.\.\) takes a dict, not list"):
        t.update_state(task_id="abc", state="PROGRESS", meta=[1, 2])
    assert app.AsyncResult("abc").info == {"n": 1}


def test_progress_event_leaves_out_a_large_meta(redis_url, worker, ledger):
    from fastq import events

    app = FastQ("progress-client", broker=redis_url)
    w = worker("-P", "thread", "-c", "1", app=APP)
    big = {"blob": "x" * (events.MAX_PROGRESS_META + 10)}
    res = app.send_task("mon.progress", ("go-big",), {"meta": big})
    wait_for(lambda: res.state == "PROGRESS", 30, message="PROGRESS")
    client = app.broker.client
    evs = [ev for _id, f in client.xrange("fastq:events") for ev in events.unpack_entry(f)]
    prog = [ev for ev in evs if ev["type"] == "task-progress"]
    assert prog and prog[0]["uuid"] == res.id and prog[0]["state"] == "PROGRESS" and "meta" not in prog[0]
    assert prog[0]["hostname"] == w.name
    assert res.info == big  # readers still get it from the backend
    ledger.set("go-big", 1)
    assert res.get(timeout=30) == "finished"
