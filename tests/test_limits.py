"""Retries, time limits, expiry and worker recycling, seen from outside real workers."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.apps import limits

from conftest import wait_for
from fastq import FastQ
from fastq.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded, TimeLimitExceeded

APP = "tests.apps.limits:app"


def _app(redis_url):
    limits.app.conf.broker_url = redis_url
    limits.app._reset()
    return limits.app


# --- retries --------------------------------------------------------------------------


def test_retry_states_and_count_seen_from_outside(redis_url, worker, ledger):
    app = _app(redis_url)
    worker("-P", "solo", app=APP)
    # When a task fails twice and asks for a retry each time
    r = app.tasks["limits.flaky"].delay("flaky", 2)
    # Then between tries its state is RETRY with the last exception
    wait_for(lambda: r.state == "RETRY", 20, message="RETRY state")
    assert isinstance(r.result, OSError)
    # And the third try succeeds, knowing it is the third
    assert r.get(timeout=30) == {"tries": 3, "retries": 2}
    assert r.state == "SUCCESS"
    assert r.retries == 2


def test_autoretry_ends_in_failure_with_the_original_exception(redis_url, worker, ledger):
    app = _app(redis_url)
    worker("-P", "solo", app=APP)
    r = app.tasks["limits.auto"].delay("auto")
    with pytest.raises(OSError, match="always fails"):
        r.get(timeout=30)
    # 1 try + max_retries=2 retries, and the stored state is FAILURE (not a MaxRetries wrapper)
    assert int(ledger.hget("auto", "tries")) == 3
    assert r.state == "FAILURE"


def test_max_retries_none_retries_until_it_succeeds(redis_url, worker, ledger):
    app = _app(redis_url)
    worker("-P", "solo", app=APP)
    assert app.tasks["limits.forever"].delay("forever", 8).get(timeout=30) == 8


def test_a_retry_waits_in_the_delayed_set_not_in_the_worker(redis_url, worker, ledger, r):
    app = _app(redis_url)
    worker("-P", "solo", app=APP)
    res = app.tasks["limits.flaky"].apply_async(("slowretry", 1), countdown=0)
    wait_for(lambda: r.zcard("fastq:{default}:delayed") == 1 or res.ready(), 20, message="the retry to be delayed")
    assert res.get(timeout=30)["tries"] == 2


# --- time limits ------------------------------------------------------------------------


def test_hard_time_limit_kills_the_process_and_fails_the_task_once(redis_url, worker, ledger):
    app = _app(redis_url)
    w = worker("-c", "1", app=APP)
    # When a task runs past its hard limit in the process pool
    r = app.tasks["limits.hang"].delay("hang")
    # Then it fails with TimeLimitExceeded ...
    with pytest.raises(TimeLimitExceeded, match="hard time limit"):
        r.get(timeout=30)
    assert r.state == "FAILURE"
    # ... the process was replaced and keeps working, and the task is not redelivered
    assert app.tasks["limits.pid"].delay().get(timeout=30) > 0
    assert int(ledger.hget("hang", "runs")) == 1
    assert "hard time limit" in w.log()


def test_soft_time_limit_lets_the_task_clean_up(redis_url, worker, ledger):
    app = _app(redis_url)
    worker("-c", "1", app=APP)
    assert app.tasks["limits.soft"].delay("soft").get(timeout=30) == "cleaned up"
    assert ledger.hget("soft", "cleaned") == b"1"
    # A task that does not catch it fails with SoftTimeLimitExceeded
    with pytest.raises(SoftTimeLimitExceeded):
        app.tasks["limits.soft_raise"].delay().get(timeout=30)


def test_soft_time_limit_in_the_thread_pool(redis_url, worker):
    app = _app(redis_url)
    w = worker("-P", "thread", "-c", "2", app=APP)
    assert app.tasks["limits.soft"].delay("tsoft").get(timeout=30) == "cleaned up"
    # And the thread pool says at start-up that it cannot enforce hard limits
    assert "cannot stop a running task at its hard time limit" in w.log()


def test_worker_time_limit_flags_apply_to_tasks_without_their_own(redis_url, worker):
    app = _app(redis_url)
    worker("-c", "1", "--soft-time-limit", "0.5", app=APP)
    # limits.forever has no limit of its own; a retry loop ends long before 0.5 s
    assert app.tasks["limits.forever"].delay("flags", 2).get(timeout=30) == 2


# --- expiry -------------------------------------------------------------------------------


def test_expired_message_is_not_run_and_is_revoked(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given messages that expire before any worker takes them
    r1 = app.tasks["limits.flaky"].apply_async(("exp", 0), expires=0.2)
    r2 = app.tasks["limits.flaky"].apply_async(("exp", 0), expires=dt.datetime.now(dt.timezone.utc))
    import time

    time.sleep(0.5)
    worker("-P", "solo", app=APP)
    for r in (r1, r2):
        wait_for(lambda r=r: r.state == "REVOKED", 20, message="REVOKED")
        assert r.backend.get_meta(r.id).meta["reason"] == "expired"
    assert not ledger.exists("exp")


# --- recycling pool processes ----------------------------------------------------------


def test_max_tasks_per_child_replaces_the_process(redis_url, worker):
    app = _app(redis_url)
    w = worker("-c", "1", "--max-tasks-per-child", "4", "--prefetch", "10", app=APP)
    pids = [app.tasks["limits.pid"].delay().get(timeout=30) for _ in range(10)]
    # 10 tasks, at most 4 per process: at least 3 processes, in order
    assert len(set(pids)) >= 3
    assert all(pids.count(p) <= 4 for p in set(pids))
    assert "max-tasks-per-child" in w.log()


def test_max_memory_per_child_replaces_the_process(redis_url, worker):
    app = _app(redis_url)
    w = worker("-c", "1", "--max-memory-per-child", "150000", app=APP)
    first = app.tasks["limits.hog"].delay(200).get(timeout=30)  # holds 200 MB afterwards
    wait_for(lambda: "max-memory-per-child" in w.log(), 30, message="the recycle log line")
    assert app.tasks["limits.pid"].delay().get(timeout=30) != first


# --- bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"rate_limit": "10/x"}, "rate_limit"),
        ({"autoretry_for": ("OSError",)}, "autoretry_for"),
        ({"time_limit": -3}, "time_limit"),
        ({"retry_backoff": "fast"}, "retry_backoff"),
    ],
)
def test_bad_options_fail_at_decoration_naming_task_and_option(options, words):
    app = FastQ("bad")
    with pytest.raises(ImproperlyConfigured) as err:
        app.task(name="bad.task", **options)(lambda: None)
    assert "bad.task" in str(err.value) and words in str(err.value)


def test_autoscale_grows_with_waiting_work_and_shrinks_when_idle(redis_url, worker):
    import psutil

    app = _app(redis_url)
    w = worker("--autoscale", "3,1", "--prefetch", "1", app=APP)

    def children():
        return len(psutil.Process(w.pid).children())

    wait_for(lambda: children() == 1, 20, message="MIN processes at start")
    # When a backlog waits, the pool grows toward MAX
    results = app.tasks["limits.soft_raise"].map_async([()] * 12)
    wait_for(lambda: children() == 3, 30, message="growth to MAX")
    for r in results:
        r.get(timeout=60, propagate=False)
    # And once idle it shrinks back to MIN
    wait_for(lambda: children() == 1, 60, message="shrink to MIN")


def test_autoscale_needs_the_process_pool(redis_url, worker):
    import subprocess

    from conftest import ROOT, fastq_command

    out = subprocess.run([*fastq_command(), "worker", "-A", APP, "-P", "thread", "--autoscale", "3,1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "autoscale" in out.stderr
