"""Remote control: app.control (ping, inspect, pool_grow/shrink, add/cancel_consumer,
revoke, rate_limit, shutdown) and the `fastq inspect|control|status|queues` commands,
against real workers."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import subprocess
import time

from conftest import ROOT, fastq_command, wait_for
from fastq import states

APP = "tests.apps.basic:app"


def fastq_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*fastq_command(), "-A", APP, *args], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def _stats(app, host):
    return app.control.inspect([host], timeout=3).stats().get(host)


def test_ping_inspect_and_destination(app, worker):
    # Given a process-pool worker and a thread-pool worker
    wp = worker("-c", "2")
    wt = worker("-P", "thread", "-c", "1")
    # When pinged
    replies = app.control.ping(timeout=3)
    # Then both answer pong, once each
    assert sorted(replies, key=lambda r: next(iter(r))) == sorted(
        [{wp.name: {"ok": "pong"}}, {wt.name: {"ok": "pong"}}], key=lambda r: next(iter(r)))
    # And a destination limits the question to one worker
    assert app.control.ping(destination=[wt.name], timeout=3) == [{wt.name: {"ok": "pong"}}]
    i = app.control.inspect(timeout=3)
    registered = i.registered()
    assert set(registered) == {wp.name, wt.name}
    assert "tests.add" in registered[wp.name]
    stats = i.stats()
    assert stats[wp.name]["pool"]["implementation"] == "process"
    assert len(stats[wp.name]["pool"]["processes"]) == 2
    assert stats[wt.name]["pool"]["implementation"] == "thread"
    queues = i.active_queues()[wp.name]
    assert [(q["name"], q["routing_key"], q["exchange"]["type"]) for q in queues] == [("default", "default", "direct")]
    # And the counters follow the work done (children report about every second)
    app.tasks["tests.add"].delay(1, 1).get(timeout=30)
    app.tasks["tests.fail"].delay().get(timeout=30, propagate=False)
    wait_for(lambda: sum(s.get("processed", 0) for s in i.stats().values()) >= 2, 30, 0.3, message="processed counts")
    assert sum(s.get("failed", 0) for s in i.stats().values()) == 1


def test_active_reserved_scheduled_and_revoked(app, worker):
    # Given a solo worker running a long task, with more fetched behind it: its fetch window
    # grows on 20 quick tasks (1, 2, 4, 8, 16), so the long one (21st) shares a batch with the
    # three after it; the hold watch is off, so they stay reserved instead of handed back
    quick = [app.tasks["tests.add"].delay(i, 0) for i in range(20)]
    long = app.tasks["tests.sleep"].delay(30)
    queued = [app.tasks["tests.add"].delay(i, i) for i in range(3)]
    later = app.tasks["tests.add"].apply_async((5, 5), countdown=600)
    w = worker("-P", "solo", "--prefetch", "10", env={"FASTQ_TEST_HOLD_TIME": "60"})
    i = app.control.inspect([w.name], timeout=3)
    # Then active shows the running task with its arguments
    active = wait_for(lambda: i.active().get(w.name), 30, 0.2, message="an active task")
    assert [(t["id"], t["name"], t["args"]) for t in active] == [(long.id, "tests.sleep", [30])]
    # And reserved the fetched ones not started, scheduled the delayed one
    reserved = wait_for(lambda: i.reserved().get(w.name), 30, 0.2, message="reserved tasks")
    # (quick ones of the long task's batch are finished but not yet acknowledged: listed too)
    assert {r.id for r in queued} <= {t["id"] for t in reserved} <= {r.id for r in queued + quick}
    scheduled = i.scheduled()[w.name]
    assert [s["request"]["id"] for s in scheduled] == [later.id]
    assert dt.datetime.fromisoformat(scheduled[0]["eta"]) > dt.datetime.now(dt.timezone.utc)
    # When the delayed one and a queued one are revoked
    app.control.revoke([later.id, queued[0].id])
    wait_for(lambda: set(i.revoked().get(w.name, [])) >= {later.id, queued[0].id}, 10, 0.2, message="revoked ids")
    # And the running one is revoked with terminate (not supported by solo: it says so)
    reply = app.control.revoke(long.id, terminate=True, reply=True, timeout=3)
    assert "not supported" in reply[0][w.name]["ok"]
    w.kill_all()  # rather than wait for the long task


def test_inspect_answers_in_celerys_shapes(app, worker):
    """What Celery's own inspect tests ask, with Celery's reply shapes."""
    long = app.tasks["tests.sleep"].delay(30)
    later = app.tasks["tests.add"].apply_async((1, 2), {}, countdown=600)
    w = worker("-P", "thread", "-c", "2")
    i = app.control.inspect([w.name], timeout=3)
    # active: Celery's Request.info()
    active = wait_for(lambda: i.active().get(w.name), 30, 0.2, message="an active task")
    assert active == [{"id": long.id, "name": "tests.sleep", "args": [30], "kwargs": {}, "type": "tests.sleep",
                       "hostname": w.name, "time_start": None, "acknowledged": True,
                       "delivery_info": {"exchange": "", "routing_key": "default", "priority": 0,
                                         "redelivered": False},
                       "worker_pid": active[0]["worker_pid"]}]
    assert isinstance(active[0]["worker_pid"], int)
    # query_task: where each task is; nothing for an unknown id
    found = i.query_task(long.id, later.id, "no-such-id")[w.name]
    assert found[long.id][0] == "active" and found[later.id][0] == "scheduled"
    assert found[later.id][1]["args"] == [1, 2] and "no-such-id" not in found
    assert i.query_task("no-such-id") == {w.name: {}}
    # registered with task attributes; clock; conf; report
    assert "tests.sleep [name=tests.sleep]" in i.registered("name")[w.name]
    first = i.clock()[w.name]["clock"]
    assert i.clock()[w.name]["clock"] > first > 0
    conf = i.conf()[w.name]
    assert "broker_url" not in conf or "********" in conf["broker_url"] or "@" not in conf["broker_url"]
    assert "software -> fastq:" in i.report()[w.name]["ok"]
    app.control.revoke([long.id, later.id])
    w.kill_all()


def test_bugreport_masks_every_password(app):
    app.conf.result_backend = "sentinel://:secret1@h1:26379;sentinel://:secret2@h2:26379/0"
    try:
        report = app.bugreport()
        assert "secret1" not in report and "secret2" not in report
        assert "sentinel://:********@h1:26379;sentinel://:********@h2:26379/0" in report
        app.conf.result_backend = "redis://:p,ass@word@localhost:6379/0"
        report = app.bugreport()
        assert "p,ass" not in report and "word@" not in report and "redis://:********@localhost:6379/0" in report
        assert report.startswith("software -> fastq:")
    finally:
        app.conf.result_backend = None


def test_revoke_with_terminate_in_process_pool_and_queued(app, worker):
    # Given a process-pool worker running a long task
    w = worker("-c", "1")
    long = app.tasks["tests.sleep"].delay(60)
    queued = app.tasks["tests.add"].delay(2, 3)
    wait_for(lambda: app.control.inspect([w.name], timeout=2).active().get(w.name), 30, 0.2, message="active")
    # When both are revoked, the running one with terminate
    replies = app.control.revoke(long.id, terminate=True, reply=True, timeout=3)
    app.control.revoke(queued.id)
    # Then the child running it is killed, and neither task runs to completion
    assert "terminated" in replies[0][w.name]["ok"]
    assert long.get(timeout=30, propagate=False) is not None
    assert long.state == states.REVOKED
    queued.get(timeout=30, propagate=False)
    assert queued.state == states.REVOKED
    # And the pool replaced the child and keeps working
    assert app.tasks["tests.add"].delay(1, 2).get(timeout=30) == 3
    assert "terminated by a revoke" in w.log()


def test_revoke_is_known_by_a_worker_started_later(app, worker):
    # Given a task revoked while no worker runs
    r = app.tasks["tests.add"].delay(1, 1)
    assert app.control.revoke(r.id, reply=True, timeout=0.5) == []
    # When a worker starts, it finds the revoke in Redis
    worker("-P", "solo")
    r.get(timeout=30, propagate=False)
    assert r.state == states.REVOKED


def test_pool_grow_and_shrink(app, worker):
    # Given a process pool of one and a thread pool of one
    wp = worker("-c", "1")
    wt = worker("-P", "thread", "-c", "1")
    # When each grows by 2
    replies = app.control.pool_grow(2, reply=True, timeout=3)
    assert {next(iter(r)) for r in replies} == {wp.name, wt.name}
    # Then the process pool has three children, the thread pool three consumers
    wait_for(lambda: len(_stats(app, wp.name)["pool"]["processes"]) == 3, 30, 0.3, message="3 processes")
    assert _stats(app, wt.name)["pool"]["max-concurrency"] == 3
    # When the process pool shrinks by 2 (warm: children exit 0, none is replaced)
    app.control.pool_shrink(2, destination=[wp.name])
    wait_for(lambda: len(_stats(app, wp.name)["pool"]["processes"]) == 1, 30, 0.3, message="1 process")
    assert "died" not in wp.log()
    # And it still works
    assert app.tasks["tests.add"].delay(2, 2).get(timeout=30) == 4
    # A solo pool refuses to grow
    ws = worker("-P", "solo")
    reply = app.control.pool_grow(1, destination=[ws.name], reply=True, timeout=3)
    assert "solo pool runs one consumer" in reply[0][ws.name]["error"]


def test_add_and_cancel_consumer(app, worker):
    # Given a process worker and a thread worker on the default queue
    wp = worker("-c", "1")
    wt = worker("-P", "thread", "-c", "1")
    # When both are told to consume "extra" too
    replies = app.control.add_consumer("extra", reply=True, timeout=3)
    assert len(replies) == 2
    # Then tasks sent to "extra" run
    r = app.tasks["tests.who"].apply_async(queue="extra")
    assert r.get(timeout=30)["queue"] == "extra"
    queues = app.control.inspect(timeout=3).active_queues()
    assert [q["name"] for q in queues[wp.name]] == [q["name"] for q in queues[wt.name]] == ["default", "extra"]
    # When the process worker cancels "default"
    app.control.cancel_consumer("default", destination=[wp.name], reply=True, timeout=3)
    assert [q["name"] for q in app.control.inspect([wp.name], timeout=3).active_queues()[wp.name]] == ["extra"]
    # Then it still serves "extra"; cancelling its last queue is refused
    assert app.tasks["tests.add"].apply_async((3, 4), queue="extra").get(timeout=30) == 7
    reply = app.control.cancel_consumer("extra", destination=[wp.name], reply=True, timeout=3)
    assert "last queue" in reply[0][wp.name]["error"]


def test_rate_limit_and_shutdown(app, worker):
    w = worker("-P", "solo")
    # rate_limit answers per worker, and a bad rate fails in the caller
    reply = app.control.rate_limit("tests.add", "10/s", reply=True, timeout=3)
    assert "new rate limit" in reply[0][w.name]["ok"]
    reply = app.control.rate_limit("tests.nope", "10/s", reply=True, timeout=3)
    assert "unknown task" in reply[0][w.name]["error"]
    import pytest

    from fastq.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        app.control.rate_limit("tests.add", "fast")
    # shutdown stops the worker warm
    reply = app.control.shutdown(destination=[w.name], reply=True, timeout=3)
    assert reply == [{w.name: {"ok": "shutdown signal sent"}}]
    assert w.proc.wait(30) == 0


def test_cli_inspect_control_status_and_queues(app, worker):
    # Given two workers
    w1 = worker("-P", "solo")
    w2 = worker("-P", "thread", "-c", "1")
    # `fastq control ping` lists both; -d limits it
    out = fastq_cli("control", "ping", "-t", "3")
    assert out.returncode == 0, out.stderr
    assert f"-> {w1.name}: OK" in out.stdout and f"-> {w2.name}: OK" in out.stdout
    assert "2 node(s) replied." in out.stdout
    out = fastq_cli("control", "ping", "-d", w2.name, "-t", "3")
    assert w1.name not in out.stdout and "1 node(s) replied." in out.stdout
    # `fastq inspect registered --json` and the group-level -d form
    out = fastq_cli("inspect", "registered", "--json", "-t", "3")
    assert "tests.add" in json.loads(out.stdout)[w1.name]
    out = fastq_cli("inspect", "-d", w1.name, "stats", "--json")
    assert list(json.loads(out.stdout)) == [w1.name]
    for cmd in ("active", "reserved", "scheduled", "revoked"):
        out = fastq_cli("inspect", cmd, "-t", "3")
        assert out.returncode == 0, (cmd, out.stderr)
    # control pool-grow (hyphen accepted) on the thread worker
    out = fastq_cli("control", "pool-grow", "1", "-d", w2.name)
    assert "pool will grow to 2" in out.stdout
    # no worker answers a destination that does not exist
    out = fastq_cli("inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5")
    assert out.returncode != 0 and "No nodes replied" in out.stderr
    # `fastq status -d`
    out = fastq_cli("status", "-d", w1.name)
    assert f"{w1.name}: OK" in out.stdout and w2.name not in out.stdout
    # `fastq queues` has rate columns; --json has rate_in/rate_out
    for i in range(20):
        app.tasks["tests.add"].delay(i, i)
    out = fastq_cli("queues", "--interval", "0.5")
    assert "in/s" in out.stdout and "out/s" in out.stdout and "default" in out.stdout
    rows = json.loads(fastq_cli("queues", "--json", "--interval", "0.5").stdout)
    assert {"queue", "waiting", "in_flight", "delayed", "dead", "rate_in", "rate_out"} <= set(rows[0])
    # control revoke and shutdown through the CLI
    r = app.tasks["tests.add"].apply_async((1, 1), countdown=600)
    out = fastq_cli("control", "revoke", r.id, "-t", "3")
    assert "flagged as revoked" in out.stdout
    out = fastq_cli("control", "shutdown", "-d", w1.name, "-t", "3")
    assert "shutdown signal sent" in out.stdout
    assert w1.proc.wait(30) == 0


def _clock_off_by(offset: str) -> dict:
    """Environment that sets a worker's clock off by ``offset`` (libfaketime,
    Debian's faketime package: .ci/deps.sh installs it); monotonic time stays."""
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime is missing: apt-get install faketime (.ci/deps.sh does)"
    return {"LD_PRELOAD": libs[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_workers_whose_clocks_are_off_are_listed_online(app, worker, r):
    from fastq.monitor import workers

    # Given workers on hosts whose clocks are a minute behind and a minute ahead
    slow = worker("-P", "solo", env=_clock_off_by("-60s"))
    fast = worker("-P", "solo", env=_clock_off_by("+60s"))
    stamped = {w.name: json.loads(r.get(f"fastq:worker:{w.name}"))["ts"] - time.time() for w in (slow, fast)}
    assert stamped[slow.name] < -50 and stamped[fast.name] > 50, stamped  # their clocks really are off
    # Then status, the monitor and ping count both as online: heartbeats age on Redis's clock
    out = fastq_cli("status")
    assert f"{slow.name}: OK" in out.stdout and f"{fast.name}: OK" in out.stdout, out.stdout
    assert "2 node(s) online." in out.stdout
    online = {w["hostname"]: w["online"] for w in workers(app)}
    assert online == {slow.name: True, fast.name: True}
