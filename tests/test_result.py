"""Results: states, stored fields, get() semantics, expiry, ignore_result, forget."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid

import pytest
import redis
from tests.apps import extra

import fastq.exceptions
from conftest import TEST_DB, wait_for
from fastq import AsyncResult, FastQ, GroupResult, ResultSet, states
from fastq.exceptions import TaskError, TaskRevokedError

EXTRA = "tests.apps.extra:app"




def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def expiring_app(redis_url):
    extra.expiring_app.conf.broker_url = redis_url
    extra.expiring_app._reset()
    return extra.expiring_app


@pytest.fixture
def started_app(redis_url):
    extra.started_app.conf.broker_url = redis_url
    extra.started_app._reset()
    return extra.started_app


# --- states ---------------------------------------------------------------------------------


def test_unknown_id_is_pending(app):
    # Given an id no task ever had
    res = app.AsyncResult(str(uuid.uuid4()))
    # Then it reads as PENDING with no data
    assert isinstance(res, AsyncResult)
    assert res.state == states.PENDING
    assert res.status == states.PENDING
    assert not res.ready() and not res.successful() and not res.failed()
    assert res.result is None
    assert res.traceback is None
    assert res.date_done is None
    assert res.runtime is None


def test_success_stores_value_date_and_runtime(app, worker):
    # Given a worker
    worker("-P", "solo")
    before = _utcnow() - dt.timedelta(seconds=5)
    # When a task succeeds
    res = app.tasks["tests.add"].delay(2, 3)
    assert res.get(timeout=30) == 5
    # Then the result has every field of a success
    assert res.state == states.SUCCESS
    assert res.ready() and res.successful() and not res.failed()
    assert res.result == 5
    assert res.traceback is None
    assert before <= res.date_done <= _utcnow() + dt.timedelta(seconds=5)
    assert isinstance(res.runtime, float) and res.runtime >= 0
    # ... and a fresh handle on the same id reads the same
    again = app.AsyncResult(res.id)
    assert again.state == states.SUCCESS
    assert again.result == 5
    assert again.get(timeout=5) == 5


def test_failure_stores_type_message_and_traceback(app, worker):
    # Given a worker
    worker("-P", "solo")
    # When a task raises ValueError
    res = app.tasks["tests.fail"].delay("boom!")
    # Then get() re-raises a ValueError with the same message
    with pytest.raises(ValueError, match="boom!"):
        res.get(timeout=30)
    # ... and the result records the failure
    assert res.state == states.FAILURE
    assert res.failed() and res.ready() and not res.successful()
    assert isinstance(res.result, ValueError) and str(res.result) == "boom!"
    assert res.traceback.startswith("Traceback (most recent call last):")
    assert "raise ValueError(message)" in res.traceback
    assert "ValueError: boom!" in res.traceback
    assert res.date_done is not None
    # ... get(propagate=False) returns the exception instead
    exc = app.AsyncResult(res.id).get(timeout=5, propagate=False)
    assert isinstance(exc, ValueError) and str(exc) == "boom!"


def test_failure_with_an_exception_from_an_unknown_module_is_a_task_error(app, worker):
    # Given a worker running a task whose exception class lives in a module the
    # producer never imported
    worker("-P", "solo", app=EXTRA)
    # When it fails
    res = extra.private_error.delay()
    # Then get() raises TaskError naming the original exception
    with pytest.raises(TaskError) as info:
        res.get(timeout=30)
    assert info.value.exc_type == "PrivateError"
    assert info.value.exc_module == "tests.apps.never_imported_anywhere"
    assert "tests.apps.never_imported_anywhere.PrivateError" in str(info.value)
    assert "hidden cause" in str(info.value)
    assert isinstance(res.get(propagate=False), TaskError)


def test_failure_with_an_exception_that_cannot_be_rebuilt_is_a_task_error(app, worker):
    # Given a task raising an exception whose constructor needs two arguments
    worker("-P", "solo", app=EXTRA)
    # When it fails
    res = extra.needs_two_args.delay()
    # Then get() raises TaskError naming it
    with pytest.raises(TaskError, match="NeedsTwoArgs") as info:
        res.get(timeout=30)
    assert "left/right" in str(info.value)


@pytest.mark.parametrize("eager", [False, True])
def test_an_exception_comes_back_with_its_arguments(app, worker, eager):
    # Given tasks raising exceptions with several arguments (Celery's ExpectedException;
    # one whose constructor needs two), run by a worker or eagerly
    if eager:
        extra.app.conf.task_always_eager = True
    else:
        extra.app.conf.task_always_eager = False
        worker("-P", "solo", app=EXTRA)
    try:
        # Then get() raises the same type, built with the same arguments
        with pytest.raises(extra.ExpectedException) as info:
            extra.expected_exception.delay().get(timeout=30)
        assert info.value.args == ("Task expected to fail", "test")
        with pytest.raises(extra.Pair) as pair:
            extra.pair_error.delay().get(timeout=30)
        assert (pair.value.left, pair.value.right) == ("left", {"n": 2})
    finally:
        extra.app.conf.task_always_eager = False


def test_started_state_with_track_started_task_option(app, worker):
    # Given a worker and a task declared with track_started=True
    worker("-P", "solo")
    # When the task runs for a while
    res = app.tasks["tests.started"].delay(3)
    # Then STARTED is recorded while it runs, and SUCCESS after
    wait_for(lambda: res.state == states.STARTED, 20, interval=0.02, message="STARTED")
    assert not res.ready()
    assert res.get(timeout=30) == "done"
    assert res.state == states.SUCCESS


def test_started_state_with_task_track_started_setting(started_app, worker):
    # Given a worker for an app with task_track_started=True
    worker("-P", "solo", app="tests.apps.extra:started_app")
    key = f"tracked-{uuid.uuid4()}"
    # When a task of that app runs (held until released)
    res = started_app.tasks["extra.tracked"].delay(key)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    # Then its state is STARTED while it runs
    assert res.state == states.STARTED
    assert not res.ready()
    # ... and SUCCESS once it finished
    extra.release(key)
    assert res.get(timeout=30) == "released"
    assert res.state == states.SUCCESS


def test_tasks_without_track_started_stay_pending_while_running(app, worker):
    # Given a worker and a task without track_started
    worker("-P", "solo", app=EXTRA)
    key = f"untracked-{uuid.uuid4()}"
    # When it runs
    res = extra.block.delay(key)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    # Then no STARTED state is recorded
    assert res.state == states.PENDING
    extra.release(key)
    assert res.get(timeout=30) == "released"


def test_retry_state_is_recorded_with_the_exception(app, worker):
    # Given a worker and a task that asks for a retry five minutes later
    worker("-P", "solo", app=EXTRA)
    # When it runs
    res = extra.retry_later.delay()
    # Then its state is RETRY, not ready, carrying the reason
    wait_for(lambda: res.state == states.RETRY, 30, message="RETRY")
    assert not res.ready() and not res.failed()
    assert isinstance(res.result, ValueError) and str(res.result) == "try again later"
    assert "ValueError: try again later" in res.traceback


def test_revoked_state_for_an_expired_message(app, worker):
    # Given a message that expired before any worker saw it
    res = app.tasks["tests.add"].apply_async((1, 1), expires=_utcnow() - dt.timedelta(seconds=1))
    # When a worker takes it
    worker("-P", "solo")
    # Then it is not run and is REVOKED
    with pytest.raises(TaskRevokedError, match="expired"):
        res.get(timeout=30)
    assert res.state == states.REVOKED
    assert res.ready() and not res.successful()


def test_retried_task_succeeds_and_counts_its_retries(app, worker, ledger):
    # Given a task that fails twice before it succeeds
    worker("-P", "solo")
    key = f"flaky-{uuid.uuid4()}"
    # When it runs
    res = app.tasks["tests.flaky"].delay(key, 2)
    # Then it ends in SUCCESS after two retries
    assert res.get(timeout=30) == 3
    assert res.state == states.SUCCESS
    assert res.retries == 2


# --- get() ----------------------------------------------------------------------------------


def test_get_times_out_with_fastq_timeout_error(app):
    # Given a task id with no result
    res = app.AsyncResult(str(uuid.uuid4()))
    # When get() is given a short timeout
    t0 = time.monotonic()
    with pytest.raises(fastq.exceptions.TimeoutError) as info:
        res.get(timeout=0.5)
    # Then it gives up with fastq's TimeoutError (also a builtin TimeoutError)
    assert time.monotonic() - t0 >= 0.45
    assert isinstance(info.value, TimeoutError)


def _blocked_waiters(client) -> list[dict]:
    return [c for c in client.client_list()
            if c.get("cmd") == "blmove" and "b" in c.get("flags", "") and int(c.get("db", -1)) == TEST_DB]


def test_get_blocks_in_redis_and_wakes_when_the_result_is_stored(app, worker, r):
    # Given a worker and two threads waiting for a task id not yet sent
    worker("-P", "solo")
    task_id = str(uuid.uuid4())
    got: list = []

    def wait():
        got.append(app.AsyncResult(task_id).get(timeout=60))

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    # Then they wait inside Redis (a blocking BLMOVE), not in a polling loop
    wait_for(lambda: len(_blocked_waiters(r)) >= 2, 20, message="blocked BLMOVE waiters")
    # When the task is sent and stored
    app.tasks["tests.add"].apply_async((20, 22), task_id=task_id)
    # Then both waiters wake with the value
    for t in threads:
        t.join(30)
    assert got == [42, 42]


def test_get_after_the_result_is_stored_returns_at_once(app, worker):
    # Given a finished task
    worker("-P", "solo")
    res = app.tasks["tests.add"].delay(1, 1)
    wait_for(res.ready, 30, message="the result")
    # When get() is called with a tiny timeout
    # Then the stored result is returned
    assert app.AsyncResult(res.id).get(timeout=0.01) == 2


# --- expiry, ignore_result, forget ----------------------------------------------------------


def test_results_expire_after_the_default_result_expires(app, worker, r):
    # Given a worker with the default result_expires (one day)
    worker("-P", "solo")
    # When a task succeeds and another fails
    ok = app.tasks["tests.add"].delay(1, 1)
    bad = app.tasks["tests.fail"].delay()
    ok.get(timeout=30)
    bad.get(timeout=30, propagate=False)
    # Then both result keys have a TTL of about a day
    for res in (ok, bad):
        ttl = r.ttl(f"fastq:r:{res.id}")
        assert 86400 - 600 < ttl <= 86400


def test_results_expire_after_the_configured_result_expires(expiring_app, worker, r):
    # Given a worker for an app with result_expires=120
    worker("-P", "solo", app="tests.apps.extra:expiring_app")
    # When a task succeeds and another fails
    ok = expiring_app.tasks["extra.expiring_add"].delay(1, 2)
    bad = expiring_app.tasks["extra.expiring_fail"].delay()
    assert ok.get(timeout=30) == 3
    assert isinstance(bad.get(timeout=30, propagate=False), ValueError)
    # Then the result keys expire within 120 s
    for res in (ok, bad):
        ttl = r.ttl(f"fastq:r:{res.id}")
        assert 0 < ttl <= extra.EXPIRING_RESULT_EXPIRES


def test_started_and_retry_states_expire_too(app, worker, r):
    # Given a worker and a task that stays in RETRY
    worker("-P", "solo", app=EXTRA)
    res = extra.retry_later.delay()
    wait_for(lambda: res.state == states.RETRY, 30, message="RETRY")
    # Then every key holding its state has a TTL
    keys = [k for k in r.scan_iter(f"fastq:*{res.id}*")]
    assert keys
    for k in keys:
        assert 0 < r.ttl(k) <= 86400


def test_ignore_result_task_option_stores_nothing(app, worker, r):
    # Given a worker and a task declared with ignore_result=True
    worker("-P", "solo")
    # When it runs (followed by a task whose result shows the first has run)
    ignored = app.tasks["tests.noop"].delay(1, 2)
    after = app.tasks["tests.add"].delay(1, 1)
    assert after.get(timeout=30) == 2
    wait_for(lambda: r.xlen("fastq:{default}:s") == 0, 10, message="the queue to drain")
    # Then nothing was stored for it
    assert list(r.scan_iter(f"fastq:*{ignored.id}*")) == []
    assert ignored.state == states.PENDING


def test_ignore_result_call_option_stores_nothing(app, worker, r):
    # Given a worker
    worker("-P", "solo")
    # When a task that returns a value and one that fails are sent with ignore_result=True
    a = app.tasks["tests.add"].apply_async((1, 1), ignore_result=True)
    b = app.tasks["tests.fail"].apply_async(ignore_result=True)
    after = app.tasks["tests.add"].delay(2, 2)
    assert after.get(timeout=30) == 4
    wait_for(lambda: r.xlen("fastq:{default}:s") == 0, 10, message="the queue to drain")
    # Then nothing was stored for either
    for res in (a, b):
        assert list(r.scan_iter(f"fastq:*{res.id}*")) == []


def test_get_of_an_ignored_result_returns_none_at_once(app, worker):
    # Given tasks whose results are not stored: declared so, or sent so
    declared = app.tasks["tests.noop"].delay(1, 2)
    sent_so = app.tasks["tests.add"].apply_async((1, 1), ignore_result=True)
    # Then get() does not wait for a result that never comes (Celery returns None too),
    # even with no worker running and no timeout
    for res in (declared, sent_so):
        assert res.ignored
        t0 = time.monotonic()
        assert res.get() is None
        assert asyncio.run(res.get_async()) is None
        assert time.monotonic() - t0 < 10
    # ... while a result that is stored is still waited for
    assert not app.tasks["tests.add"].delay(1, 1).ignored
    # ... and send_many marks them the same way
    many = app.send_many([app.tasks["tests.noop"].s(1), app.tasks["tests.add"].s(1, 2)])
    assert [r.ignored for r in many] == [True, False]
    assert many[0].get() is None


def test_forget_deletes_the_result(app, worker, r):
    # Given a finished task
    worker("-P", "solo")
    res = app.tasks["tests.add"].delay(2, 2)
    assert res.get(timeout=30) == 4
    assert r.exists(f"fastq:r:{res.id}") == 1
    # When it is forgotten
    res.forget()
    # Then the result is gone and the id reads PENDING again
    assert r.exists(f"fastq:r:{res.id}") == 0
    assert res.state == states.PENDING
    assert app.AsyncResult(res.id).state == states.PENDING


def test_a_saved_group_is_restored_forgotten_and_a_garbled_one_reads_as_unknown(app, worker, r):
    worker("-P", "solo")
    add = app.tasks["tests.add"]
    # Given a saved group with a nested group
    inner = GroupResult("inner-1", [add.delay(1, 1)], app=app)
    g = GroupResult("outer-1", [add.delay(2, 2), inner], app=app).save()
    # Then it is restored with the same shape and values
    back = GroupResult.restore("outer-1", app=app)
    assert back.get(timeout=30) == [4, [2]]
    # When the stored value is not a group (anything in Redis may be malformed)
    r.set("fastq:g:garbled", b"\xc1not msgpack")
    r.set("fastq:g:scalar", b"\x05")  # msgpack for 5: valid, but no list of ids
    # Then it reads as unknown, as an expired group does, instead of raising
    assert GroupResult.restore("garbled", app=app) is None
    assert GroupResult.restore("scalar", app=app) is None
    # And forget() deletes the group and its members' results
    g.forget()
    assert r.exists("fastq:g:outer-1") == 0
    assert GroupResult.restore("outer-1", app=app) is None
    assert all(r.exists(f"fastq:r:{leaf.id}") == 0 for leaf in g._leaves())


def test_result_set_built_by_add_and_joined_with_a_callback(app, worker):
    """Celery's ResultSet([]).add(...) and join(callback=...)."""
    from fastq import ResultSet

    worker("-P", "solo")
    add = app.tasks["tests.add"]
    rs = ResultSet([])
    rs.add(add.delay(1, 1))
    rs.add(add.delay(2, 2))
    assert rs.get(timeout=30) == [2, 4]
    rs.add(add.delay(3, 3))
    assert rs.join(timeout=30) == [2, 4, 6]
    seen = []
    assert rs.join(timeout=30, callback=lambda task_id, value: seen.append((task_id, value))) is None
    assert seen == [(r.id, v) for r, v in zip(rs.results, [2, 4, 6])]
    # The timeout is the whole call's budget: spent, a result still to come raises
    never = AsyncResult(str(uuid.uuid4()), app=app)
    with pytest.raises(fastq.exceptions.TimeoutError):
        ResultSet([rs.results[0], never]).join(timeout=0.2, callback=lambda i, v: time.sleep(0.3))


def test_result_set_get_reads_each_result_a_few_times_however_slowly_they_come(redis_url, worker, redis_server):
    # Given a result backend of its own (to count its reads) and 40 tasks of
    # 25 ms that one solo worker finishes one after another, over a second
    backend = redis_server()
    worker("-P", "solo", env={"FASTQ_RESULT_BACKEND": backend.url})
    app = FastQ("proj", broker=redis_url, backend=backend.url)
    results = [app.send_task("tests.sleep", args=(0.025, i)) for i in range(40)]
    counter = redis.Redis(port=backend.port)
    counter.config_resetstat()
    # When the producer waits for all of them
    values = ResultSet(results, app=app).get(timeout=60)
    # Then it gets every value, in order ...
    assert values == list(range(40))
    # ... having read each result about twice, not the whole rest of the set
    # again after each one came (that was 40 * 41 / 2 = 820 reads)
    reads = counter.info("commandstats").get("cmdstat_lindex", {}).get("calls", 0)
    assert reads <= 3 * len(results), reads


def test_backend_store_result_and_get_state_as_celerys(app):
    backend = app.backend
    tid = str(uuid.uuid4())
    # Given nothing stored, the state is PENDING
    assert backend.get_state(tid) == states.PENDING
    # When a state is stored through Celery's backend API, readers see it
    assert backend.store_result(tid, {"progress": 1}, "PROGRESS") == {"progress": 1}
    assert backend.get_state(tid) == "PROGRESS" and app.AsyncResult(tid).result == {"progress": 1}
    # ... and a final one, with an exception, is the task's outcome
    backend.store_result(tid, ValueError("stored"), states.FAILURE, traceback="tb")
    res = app.AsyncResult(tid)
    assert backend.get_state(tid) == states.FAILURE and res.traceback == "tb"
    with pytest.raises(ValueError, match="stored"):
        res.get(timeout=5)
