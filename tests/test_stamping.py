"""Stamping (fastq.stamping): stamps put on a workflow reach every task it runs,
its callbacks and errbacks, survive retries and replacement, and revoke what they
label, on real workers (``-A tests.apps.canvasapp:app``).

Run: FASTQ_TEST_DB=13 FASTQ_TEST_LEDGER_DB=14 python -m pytest tests/test_stamping.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import ROOT, fastq_command, wait_for
from fastq import StampingVisitor, chain, chord, group, signals, states
from fastq.exceptions import TaskRevokedError


class MonitoringId(StampingVisitor):
    def __init__(self, value):
        self.value = value

    def on_signature(self, sig, **headers):
        return {"monitoring_id": self.value}


def fastq_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*fastq_command(), "-A", "tests.apps.canvasapp:app", *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=60)


def _notes(ledger, key: str) -> list:
    return [json.loads(x) for x in ledger.lrange(key, 0, -1)]


# --- the walk and the message (no worker) -----------------------------------------------


def test_stamp_puts_stamps_in_options_and_links(capp):
    a = capp.note_stamps.s(1)
    cb, eb = capp.note_stamps.si("cb"), capp.note_stamps.si("eb")
    a.link(cb)
    a.link_error(eb)
    # When a signature is stamped by a visitor and by keyword
    a.stamp(MonitoringId("m1"), tenant="acme")
    # Then its options carry the stamps, named by stamped_headers, and so do its callbacks
    assert (a.options["monitoring_id"], a.options["tenant"]) == ("m1", "acme")
    assert sorted(a.options["stamped_headers"]) == ["monitoring_id", "tenant"]
    for link in (cb, eb):
        assert link.options["monitoring_id"] == "m1" and "monitoring_id" in link.options["stamped_headers"]
    # And stamping again replaces a value, or with append_stamps keeps both
    a.stamp(MonitoringId("m2"))
    assert a.options["monitoring_id"] == "m2"
    a.stamp(MonitoringId("m3"), append_stamps=True)
    assert a.options["monitoring_id"] == ["m3", "m2"]  # the newest first, as in Celery
    # And keyword stamps reach the callbacks too, but a signature's own stamps are not passed on
    assert cb.options["tenant"] == "acme"
    mine = capp.add.si(1, 1).set(own="x", stamped_headers=["own"])
    cb2 = mine.link(capp.add.si(2, 2))
    mine.stamp(tenant="t")
    assert "own" not in cb2.options and cb2.options["tenant"] == "t"
    # And a callback given as a dict (Celery's signatures are dicts) is stamped in place
    as_dict = dict(capp.add.si(3, 3))
    d = capp.add.si(1, 1).set(link=[as_dict])
    d.stamp(tenant="t")
    assert as_dict["options"]["tenant"] == "t" and as_dict["options"]["stamped_headers"] == ["tenant"]
    # And options given later do not change a stamp (Celery: stamped headers are immutable)
    assert a.clone(monitoring_id="other", queue="q").options["monitoring_id"] == ["m3", "m2"]


def test_visitor_hooks_stamp_every_part(capp):
    calls = []

    class Hooks(StampingVisitor):
        def on_signature(self, sig, **headers):
            calls.append(("sig", sig.task))
            return {"who": "sig"}

        def on_group_start(self, group, **headers):
            calls.append(("group", None))
            return {"in_group": True}

        def on_chain_start(self, chain, **headers):
            calls.append(("chain", None))
            return {"in_chain": True}

        def on_chord_body(self, sig, **headers):
            calls.append(("body", None))
            return {"body": True}

    body = capp.tsum.s()
    c = chord([capp.add.s(1, 1), capp.add.s(2, 2) | capp.add.s(3)], body)
    # When a chord with a chain in its header is stamped
    c.stamp(Hooks())
    # Then each part's hook ran, and each task has the stamps of every part around it
    assert ("group", None) in calls and ("chain", None) in calls and ("body", None) in calls
    first, (inner1, inner2) = c.tasks[0], c.tasks[1].tasks
    assert first.options["in_group"] and "in_chain" not in first.options
    assert inner1.options["in_chain"] and inner2.options["in_group"]
    assert c.body.options["body"] and c.body.options["who"] == "sig"
    # Without a visitor, a chord's body is stamped too (Celery stamps it only through a visitor)
    plain = chord([capp.add.s(1, 1)], capp.tsum.s())
    plain.stamp(batch="b1")
    assert plain.tasks[0].options["batch"] == "b1" and plain.body.options["batch"] == "b1"
    # A stamp that is a dict is copied to each member, never shared between them
    a, b = capp.add.s(1, 1).set(meta={"own": 1}, stamped_headers=["meta"]), capp.add.s(2, 2)
    g = group(a, b)
    g.stamp(meta={"g": 1})
    assert g.tasks[1].options["meta"] == {"g": 1} and g.tasks[0].options["meta"] == {"g": 1, "own": 1}


def test_stamps_travel_in_the_headers(capp):
    seen = []

    def on_publish(sender=None, headers=None, **kw):
        seen.append(dict(headers))

    signals.before_task_publish.connect(on_publish)
    try:
        # When a stamped signature is sent
        sig = capp.add.si(1, 1)
        sig.stamp(MonitoringId("m1"))
        sig.apply_async()
    finally:
        signals.before_task_publish.disconnect(on_publish)
    # Then the message's headers carry them as Celery's do, and no option is left over
    assert seen[-1]["stamps"] == {"monitoring_id": "m1"} and seen[-1]["stamped_headers"] == ["monitoring_id"]
    # And a malformed stamped_headers fails at the call, in one line
    with pytest.raises(TypeError, match="stamped_headers must be a list"):
        capp.add.apply_async((1, 1), stamped_headers=[1])
    with pytest.raises(TypeError, match="revoke_by_stamped_headers takes a dict"):
        capp.app.control.revoke_by_stamped_headers("monitoring_id")


def test_eager_apply_shows_the_stamps(capp, ledger):
    sig = capp.note_stamps.s("x", key="stamps:eager")
    sig.stamp(MonitoringId("m1"))
    assert sig.apply().get() == "x"
    assert _notes(ledger, "stamps:eager") == [["canvas.note_stamps", {"monitoring_id": "m1"}, ["monitoring_id"]]]


# --- on a worker ------------------------------------------------------------------------------


def test_every_task_of_a_stamped_workflow_carries_the_stamps(capp, cworker, ledger):
    cworker()
    key = "stamps:workflow"
    n = capp.note_stamps
    # Given a chain of a group, a chord whose header holds a chain, and a callback
    wf = chain(
        group(n.s(1, key=key), n.s(2, key=key)),
        chord([n.si(3, key=key), n.si(4, key=key) | n.s(key=key)], n.s(key=key)),
    )
    wf.link(n.si("callback", key=key))
    # When it is stamped and sent
    wf.stamp(MonitoringId("m1"))
    wf.apply_async().get(timeout=30)
    # Then all seven tasks (the callback too) ran with the stamp
    wait_for(lambda: ledger.llen(key) >= 7, 30, message="seven stamped tasks")
    notes = _notes(ledger, key)
    assert len(notes) == 7
    assert all(stamps == {"monitoring_id": "m1"} and names == ["monitoring_id"] for _, stamps, names in notes)


def test_errbacks_are_stamped(capp, cworker, ledger):
    cworker()
    key = "stamps:errback"
    failing = capp.note_stamps.s("x", key=key, fail=True)
    failing.link_error(capp.note_stamps.si("errback", key=key))
    failing.stamp(MonitoringId("m1"))
    with pytest.raises(ValueError):
        failing.apply_async().get(timeout=30)
    wait_for(lambda: ledger.llen(key) >= 2, 30, message="the errback")
    assert [stamps for _, stamps, _ in _notes(ledger, key)] == [{"monitoring_id": "m1"}] * 2


def test_a_retry_keeps_the_stamps(capp, cworker, ledger):
    cworker()
    sig = capp.retry_stamps.s("stamps:retry")
    sig.stamp(MonitoringId("m1"))
    assert sig.apply_async().get(timeout=30) == {"monitoring_id": "m1"}
    assert _notes(ledger, "stamps:retry") == [[0, {"monitoring_id": "m1"}], [1, {"monitoring_id": "m1"}]]


def test_a_replacement_keeps_the_stamps_and_on_replace_adds_its_own(capp, cworker, ledger):
    cworker()
    sig = capp.replace_stamped.s("stamps:replace")
    sig.stamp(MonitoringId("m1"))
    assert sig.apply_async().get(timeout=30) == "replaced"
    [[name, stamps, names]] = _notes(ledger, "stamps:replace")
    assert name == "canvas.note_stamps"
    assert stamps == {"monitoring_id": "m1", "on_replace": "yes"} and names == ["monitoring_id", "on_replace"]
    # A stamp the replacement has already is its own, not the replaced task's
    sig = capp.replace_stamped.s("stamps:replace-own", own="child")
    sig.stamp(MonitoringId("m1"), tenant="acme")
    assert sig.apply_async().get(timeout=30) == "replaced"
    [[_, stamps, _]] = _notes(ledger, "stamps:replace-own")
    assert stamps == {"monitoring_id": "child", "tenant": "acme", "on_replace": "yes"}


def test_revoke_by_stamped_headers_revokes_what_they_label(capp, worker, ledger, r):
    # Given stamps revoked before any worker runs, and a malformed member written by something else
    capp.app.control.revoke_by_stamped_headers({"monitoring_id": ["bad", 7]})
    r.zadd(capp.app.broker.keys.revoked_stamps, {b"\xff not json": time.time() + 600})
    good, bad, listed = (capp.note_stamps.s(v, key="stamps:revoke") for v in ("good", "bad", "listed"))
    good.stamp(MonitoringId("fine"))
    bad.stamp(MonitoringId("bad"))
    listed.stamp(monitoring_id=["other", 7])  # a list matches on any of its values
    results = [s.apply_async() for s in (good, bad, listed)]
    # When a worker starts afterwards (it learns the revokes from Redis)
    w = worker("-P", "thread", "-c", "2", app="tests.apps.canvasapp:app")
    # Then the labelled tasks are REVOKED, not run, and the other runs
    assert results[0].get(timeout=30) == "good"
    for res in results[1:]:
        with pytest.raises(TaskRevokedError):
            res.get(timeout=30)
        assert res.state == states.REVOKED
    assert [stamps for _, stamps, _ in _notes(ledger, "stamps:revoke")] == [{"monitoring_id": "fine"}]
    assert "malformed revoked stamp" in w.log()
    # And a revoke broadcast to the running worker applies at once, with Celery's reply
    replies = capp.app.control.revoke_by_stamped_headers({"monitoring_id": ["late"]}, reply=True, timeout=5)
    assert replies == [{w.name: {"ok": "headers {'monitoring_id': ['late']} flagged as revoked, but not terminated"}}]
    late = capp.note_stamps.s("late", key="stamps:revoke")
    late.stamp(MonitoringId("late"))
    with pytest.raises(TaskRevokedError):
        late.apply_async().get(timeout=30)
    # And so does one from the CLI (Celery's NAME=VALUE form); a malformed one is a one-line error
    out = fastq_cli("control", "revoke_by_stamped_headers", "monitoring_id=cli", "-t", "5")
    assert out.returncode == 0 and "flagged as revoked" in out.stdout, out.stderr
    cli = capp.note_stamps.s("cli", key="stamps:revoke")
    cli.stamp(MonitoringId("cli"))
    with pytest.raises(TaskRevokedError):
        cli.apply_async().get(timeout=30)
    bad = fastq_cli("control", "revoke_by_stamped_headers", "no-equals-sign")
    assert bad.returncode == 2 and "is not NAME=VALUE" in bad.stderr and "Traceback" not in bad.stderr


def test_revoke_by_stamped_headers_terminates_a_running_task(capp, cworker, ledger):
    w = cworker()
    sig = capp.record.s("slow", "stamps:terminate", "ran", seconds=60)
    sig.stamp(MonitoringId("stop-me"))
    res = sig.apply_async()
    # Given the stamped task running in a pool process
    wait_for(lambda: any(t["id"] == res.id for ts in capp.app.control.inspect(timeout=2).active().values()
                         for t in ts), 30, 0.2, message="the task running")
    # When its stamp is revoked with terminate=True
    replies = capp.app.control.revoke_by_stamped_headers({"monitoring_id": "stop-me"}, terminate=True, reply=True,
                                                         timeout=5)
    # Then the process running it is killed and the task ends REVOKED, never finishing
    assert replies[0][w.name]["ok"].endswith(f"terminated {res.id}")
    with pytest.raises(TaskRevokedError):
        res.get(timeout=60)
    assert ledger.hget("stamps:terminate", "ran") is None
