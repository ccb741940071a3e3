"""Worker names: -n expansion, default names on one host, and restarts that take a dead
worker's name (and hand back what it held) at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ROOT, WorkerProcess, fastq_command, wait_for

APP = "tests.apps.basic:app"
HOST = socket.gethostname()


def _start(argv: list[str], name: str, redis_url: str, started: list) -> WorkerProcess:
    wp = WorkerProcess(["-A", APP, "--loglevel", "INFO", *argv], {**os.environ, "FASTQ_BROKER_URL": redis_url}, name)
    started.append(wp)
    return wp


@pytest.fixture
def workers(redis_url):
    """WorkerProcesses started with exactly the arguments given (no --hostname added)."""
    started: list[WorkerProcess] = []
    yield lambda argv, name: _start(argv, name, redis_url, started)
    for wp in started:
        wp.kill_all()
        wp._log.close()


@pytest.mark.timeout(600)
def test_restart_right_after_sigkill_takes_the_name_and_runs_what_it_held(app, workers, r, ledger):
    # Given the same command a service manager runs again and again, with a long lease
    # (so what the killed worker held can only come back through the takeover)
    argv = ["-P", "process", "-c", "1", "-n", "svc@%h", "--lease-timeout", "120"]
    name = f"svc@{HOST}"
    w = workers(argv, name)
    w.wait_ready(r)
    for i in range(10):
        # When the worker is SIGKILLed while it runs a task ...
        res = app.tasks["tests.hold_once"].delay(f"hold:{i}")
        wait_for(lambda i=i: ledger.hget(f"hold:{i}", "started"), 30, 0.05, f"task {i} to start")
        os.kill(w.pid, signal.SIGKILL)
        w.proc.wait(10)
        # ... and started again at once with the same command
        restarted = time.monotonic()
        w = workers(argv, name)
        w.wait_ready(r)
        # Then it comes up under the same name, and the task the dead one held runs within seconds
        assert res.get(timeout=30) == "done"
        assert time.monotonic() - restarted < 20, f"round {i}: the held task came back only after the lease"
        assert int(ledger.hget(f"hold:{i}", "finished")) == 1
        log = w.log()
        assert "Took over the name" in log and "handed back 1 message(s)" in log, log
        assert "already named" not in log and "Traceback" not in log, log
    assert r.zrange("fastq:workers", 0, -1) == [name.encode()]


@pytest.mark.timeout(180)
def test_two_workers_without_a_name_on_one_host_both_run(app, workers, r):
    # Given a worker started without -n
    first = workers(["-P", "solo"], f"fastq@{HOST}")
    first.wait_ready(r)
    # When a second one starts on the same host, also without -n
    second = workers(["-P", "solo"], f"fastq-2@{HOST}")
    second.wait_ready(r)
    # Then both run, under distinct default names the banners explain
    assert first.proc.poll() is None and second.proc.poll() is None
    assert f"worker fastq@{HOST} (default name; -n NAME chooses one)" in first.log()
    assert f"worker fastq-2@{HOST} (default name; fastq@{HOST} is held by a live worker (pid {first.pid}" \
        in second.log(), second.log()
    out = subprocess.run([*fastq_command(), "-A", APP, "status"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert f"fastq@{HOST}: OK" in out.stdout and f"fastq-2@{HOST}: OK" in out.stdout
    # And when the first is SIGKILLed, a third started without -n takes its name back at once
    first.kill_all()
    third = workers(["-P", "solo"], f"fastq@{HOST}")
    third.wait_ready(r, timeout=15)
    assert "Took over the name" in third.log()


@pytest.mark.timeout(180)
def test_hostname_expansion(app, workers, r):
    short, _, domain = HOST.partition(".")
    # Given -n with Celery's escapes, and a bare name
    cases = [(["-n", "exp-%n-%i%I@%h"], f"exp-{short}-0@{HOST}"), (["-n", "bare"], f"bare@{HOST}"),
             (["-n", "pct%%@%d"], f"pct%@{domain}")]
    for argv, expected in cases:
        # When a worker starts with it
        w = workers(["-P", "solo", *argv], expected)
        # Then it registers under the expanded name, which its tasks see
        w.wait_ready(r)
        assert f"worker {expected}\n" in w.log()
        w.kill_all()
        r.delete(f"fastq:worker:{expected}")
    # And an unknown escape is a clear error at start-up
    out = subprocess.run([*fastq_command(), "worker", "-A", APP, "-n", "w%q@x"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "unknown %q" in out.stderr and "Traceback" not in out.stderr


def _foreign_heartbeat(name: str, pid: int = 1) -> str:
    """A heartbeat as a worker in another container (another pid namespace) writes it."""
    return json.dumps({"hostname": name, "pid": pid, "instance": "0" * 32, "queues": ["default"], "ts": time.time(),
                       "proc": {"host": "other-container", "boot": "b", "pidns": "pid:[1]", "pid": pid, "start": 7}})


@pytest.mark.timeout(120)
def test_a_name_held_elsewhere_is_taken_once_its_heartbeat_stops(app, workers, r):
    # Given a name whose holder this host cannot see (another container, pid 1 there) and which stopped heartbeating
    r.set(f"fastq:worker:box@{HOST}", _foreign_heartbeat(f"box@{HOST}"), ex=10)
    # When a worker with that name starts
    w = workers(["-P", "solo", "-n", "box@%h"], f"box@{HOST}")
    # Then it takes the name once the heartbeat has been silent for 2.5 intervals (not the 10 s TTL, no refusal)
    w.wait_ready(r, timeout=30)
    assert "already named" not in w.log()
    assert json.loads(r.get(f"fastq:worker:box@{HOST}"))["pid"] == w.pid


@pytest.mark.timeout(120)
def test_a_name_held_by_a_live_worker_elsewhere_is_refused(app, r, redis_url):
    # Given a name whose holder this host cannot see, and which keeps heartbeating
    key = f"fastq:worker:busy@{HOST}"
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            r.set(key, _foreign_heartbeat(f"busy@{HOST}"), ex=10)
            stop.wait(1.0)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        # When a worker with that name starts
        out = subprocess.run([*fastq_command(), "worker", "-A", APP, "-P", "solo", "-n", "busy@%h"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        t.join()
    # Then it refuses with one line, naming the holder, and printed no banner
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"already named 'busy@{HOST}' (pid 1 on other-container)" in lines[0], out.stderr
    assert out.stdout == ""
