"""Unique sends (one waiting or running task per key) and debounced sends
(one trailing run per window, with the latest arguments)."""

from __future__ import annotations

import threading
import time

import pytest
from tests.apps import typedapp

from conftest import wait_for
from fastq import FastQ
from fastq.canvas import chain, group
from fastq.exceptions import ImproperlyConfigured

APP = "tests.apps.typedapp:app"
LOCK = "fastq:{default}:u:"


@pytest.fixture
def uapp(redis_url):
    app = typedapp.app
    app.conf.broker_url = redis_url
    app.conf.task_always_eager = False
    app.conf.task_serializer = "msgpack"
    app._reset()
    yield app
    app.conf.task_serializer = "msgpack"
    app._reset()


def _waiting(app, queue: str = "default") -> int:
    s = app.broker.queue_stats(queue)
    return s["waiting"] + s["delayed"] + s["in_flight"]


def _at_once(n: int, fn) -> list:
    """Call fn() from n threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


# --- unique: the producer side ---------------------------------------------------------------------


def test_second_send_returns_the_first_and_sends_nothing(uapp, r):
    a = typedapp.record.apply_async(("k", "a"), unique_key="report:42", unique_for=600)
    b = typedapp.record.apply_async(("k", "b"), unique_key="report:42", unique_for=600)
    c = uapp.send_task("uniq.record", ["k", "c"], unique_key="report:42")
    assert a.id == b.id == c.id
    assert _waiting(uapp) == 1
    assert r.get(LOCK + "report:42").decode() == a.id
    assert 599_000 < r.pttl(LOCK + "report:42") <= 600_000
    other = typedapp.record.apply_async(("k", "x"), unique_key="report:43")
    assert other.id != a.id and _waiting(uapp) == 2
    assert 3_500_000 < r.pttl(LOCK + "report:43") <= 3_600_000  # the default: an hour
    # keys are per queue (the lock carries the queue's hash tag)
    elsewhere = typedapp.record.apply_async(("k", "y"), unique_key="report:42", queue="other")
    assert elsewhere.id != a.id and r.exists("fastq:{other}:u:report:42")


def test_twenty_threads_one_message_one_run(uapp, worker, ledger):
    results = _at_once(20, lambda: typedapp.record.apply_async(("runs", "x"), unique_key="race", unique_for=60))
    assert all(not isinstance(x, Exception) for x in results), results
    ids = {x.id for x in results}
    assert len(ids) == 1
    assert _waiting(uapp) == 1
    worker("-P", "solo", app=APP)
    assert results[0].get(timeout=30) == "x"
    time.sleep(0.5)  # nothing else could run: there was one message
    assert ledger.hgetall("runs") == {b"x": b"1"}


def test_twenty_threads_on_the_derived_key(uapp, worker, ledger):
    results = _at_once(20, lambda: typedapp.report.delay(7))
    assert len({x.id for x in results}) == 1, results
    assert _waiting(uapp) == 1
    worker("-P", "solo", app=APP)
    assert results[0].get(timeout=30) == "7:daily"
    assert ledger.hgetall("report") == {b"7:daily": b"1"}


def test_derived_key_binds_the_arguments(uapp, r):
    a = typedapp.report.delay(1)
    assert typedapp.report.delay(account=1).id == a.id
    assert typedapp.report.delay(1, "daily").id == a.id  # the default, given
    assert typedapp.report.apply_async((1,), {"kind": "daily"}).id == a.id
    assert typedapp.report.delay(1, "weekly").id != a.id
    assert typedapp.report.delay(2).id != a.id
    assert _waiting(uapp) == 3
    locks = sorted(k.decode() for k in r.keys(LOCK + "*"))
    assert len(locks) == 3 and all(k.startswith(LOCK + "uniq.report:") for k in locks)
    assert 59_000 < r.pttl(locks[0]) <= 60_000  # @app.task(unique_for=60)
    # a key given at the call replaces the derived one
    mine = typedapp.report.apply_async((1,), unique_key="mine")
    assert mine.id != a.id and r.exists(LOCK + "mine")


def test_unique_with_countdown_and_eta(uapp, worker, ledger, r):
    import datetime as dt

    a = typedapp.record.apply_async(("delayed", "a"), unique_key="later", countdown=1)
    b = typedapp.record.apply_async(("delayed", "b"), unique_key="later", countdown=1)
    eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    c = typedapp.record.apply_async(("delayed", "c"), unique_key="later", eta=eta)
    assert a.id == b.id == c.id
    assert r.zcard("fastq:{default}:delayed") == 1 and uapp.broker.queue_stats("default")["waiting"] == 0
    worker("-P", "solo", app=APP)
    assert a.get(timeout=30) == "a"
    wait_for(lambda: not r.exists(LOCK + "later"), 30, message="the lock to be released")
    assert ledger.hgetall("delayed") == {b"a": b"1"}


def test_unique_for_expires_the_lock(uapp, r):
    a = typedapp.record.apply_async(("k", "a"), unique_key="short", unique_for=0.3)
    wait_for(lambda: not r.exists(LOCK + "short"), 10, message="the lock to expire")
    b = typedapp.record.apply_async(("k", "b"), unique_key="short", unique_for=0.3)
    assert b.id != a.id and _waiting(uapp) == 2


# --- unique: the worker releases the lock -----------------------------------------------------------


@pytest.mark.parametrize("pool", [["-P", "solo"], ["-P", "process", "-c", "2"], ["-P", "thread", "-c", "4"]])
def test_released_after_success_then_a_new_run(uapp, worker, ledger, r, pool):
    worker(*pool, app=APP)
    a = typedapp.record.apply_async(("runs", "x"), unique_key="again")
    assert a.get(timeout=30) == "x"
    wait_for(lambda: not r.exists(LOCK + "again"), 30, message="the lock to be released")
    b = typedapp.record.apply_async(("runs", "x"), unique_key="again")
    assert b.id != a.id and b.get(timeout=30) == "x"
    assert ledger.hget("runs", "x") == b"2"


def test_released_after_failure(uapp, worker, ledger, r):
    worker("-P", "solo", app=APP)
    a = typedapp.fail.apply_async(("failing",), unique_key="bad")
    with pytest.raises(ValueError, match="boom"):
        a.get(timeout=30)
    wait_for(lambda: not r.exists(LOCK + "bad"), 30, message="the lock to be released")
    b = typedapp.fail.apply_async(("failing",), unique_key="bad")
    assert b.id != a.id


def test_released_after_expiry_and_a_typed_failure(uapp, worker, r, redis_url):
    a = typedapp.record.apply_async(("k", "a"), unique_key="exp", expires=0.05)
    other = FastQ("other", broker=redis_url)  # by name, with a wrong type: fails at the worker
    b = other.send_task("typed.add", ["x", 1], unique_key="typed-bad")
    time.sleep(0.2)
    worker("-P", "solo", app=APP)
    wait_for(lambda: a.state == "REVOKED", 30, message="the expired task")
    wait_for(lambda: b.state == "FAILURE", 30, message="the typed failure")
    wait_for(lambda: not r.exists(LOCK + "exp") and not r.exists(LOCK + "typed-bad"), 30, message="the locks released")


def test_running_task_holds_the_lock(uapp, worker, ledger):
    worker("-P", "solo", app=APP)
    a = typedapp.record.apply_async(("slow", "x", 2.0), unique_key="slow")
    wait_for(lambda: a.state == "STARTED" or uapp.broker.queue_stats("default")["in_flight"] == 1, 30,
             message="the task to start")
    b = typedapp.record.apply_async(("slow", "x", 2.0), unique_key="slow")
    assert b.id == a.id
    assert a.get(timeout=30) == "x"
    assert ledger.hgetall("slow") == {b"x": b"1"}


def test_task_waiting_to_retry_keeps_the_lock(uapp, worker, ledger, r):
    worker("-P", "solo", app=APP)
    a = typedapp.flaky.apply_async(("flaky", 2.0), unique_key="retrying")
    wait_for(lambda: a.state == "RETRY", 30, message="the first try to fail")
    assert r.get(LOCK + "retrying").decode() == a.id
    b = typedapp.flaky.apply_async(("flaky", 2.0), unique_key="retrying")
    assert b.id == a.id
    assert a.get(timeout=30) == 2
    wait_for(lambda: not r.exists(LOCK + "retrying"), 30, message="the lock to be released")
    assert ledger.hget("flaky", "runs") == b"2"


# --- unique: bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"unique_key": ""}, ValueError, "unique_key must be a non-empty string"),
    ({"unique_key": 42}, TypeError, "unique_key must be a non-empty string, not int"),
    ({"unique_key": "k", "unique_for": 0}, ValueError, "unique_for must be a positive number of seconds"),
    ({"unique_key": "k", "unique_for": -5}, ValueError, "unique_for must be a positive number of seconds"),
    ({"unique_key": "k", "unique_for": "600"}, TypeError, "unique_for must be a positive number of seconds, not str"),
    ({"unique_key": "k", "unique_for": True}, TypeError, "unique_for must be a positive number"),
    ({"unique_for": 60}, ValueError, "unique_for needs unique_key"),
    ({"unique_key": "k", "debounce_key": "d", "countdown": 1}, ValueError, "cannot be combined"),
])
def test_unique_bad_input(uapp, options, error, words):
    with pytest.raises(error, match=words) as info:
        typedapp.record.apply_async(("k", "a"), **options)
    assert "uniq.record" in str(info.value)
    assert _waiting(uapp) == 0


def test_unique_options_are_refused_where_they_cannot_work(uapp):
    with pytest.raises(TypeError, match="unique_key: only for a single send"):
        chain(typedapp.record.s("k", "a").set(unique_key="x"), typedapp.record.si("k", "b")).apply_async()
    with pytest.raises(TypeError, match="debounce_key: only for a single send"):
        group([typedapp.record.s("k", "a").set(debounce_key="x", countdown=1)]).apply_async()
    with pytest.raises(ImproperlyConfigured, match="unique_for must be a positive number"):
        uapp.task(name="uniq.bad", unique=True, unique_for=-1)(lambda: None)
    assert _waiting(uapp) == 0


def test_send_many_honours_unique(uapp):
    sigs = [typedapp.record.s("k", "a").set(unique_key="many"), typedapp.record.s("k", "b").set(unique_key="many"),
            typedapp.report.s(3), typedapp.report.s(account=3), typedapp.record.s("k", "plain")]
    results = uapp.send_many(sigs)
    assert results[0].id == results[1].id and results[2].id == results[3].id
    assert _waiting(uapp) == 3


# --- debounce --------------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_debounce_runs_once_with_the_latest_arguments(uapp, worker, ledger, r, serializer):
    uapp.conf.task_serializer = serializer
    uapp._reset()
    sends = [typedapp.last.apply_async(("deb", f"v{i}"), debounce_key="reindex:7", countdown=1.5) for i in range(5)]
    assert len({s.id for s in sends}) == 1
    assert r.zcard("fastq:{default}:delayed") == 1
    worker("-P", "solo", app=APP, env={"FASTQ_TEST_SERIALIZER": serializer})
    assert sends[0].get(timeout=30) == "v4"
    time.sleep(0.5)
    assert ledger.hget("deb", "runs") == b"1"
    assert ledger.lrange("deb:values", 0, -1) == [b"v4"]
    # the window is over: the next send is a new run
    nxt = typedapp.last.apply_async(("deb", "v5"), debounce_key="reindex:7", countdown=0.2)
    assert nxt.id != sends[0].id
    assert nxt.get(timeout=30) == "v5"
    assert ledger.hget("deb", "runs") == b"2"


def test_each_send_pushes_the_due_time(uapp, r):
    typedapp.last.apply_async(("deb", "a"), debounce_key="push", countdown=30)
    first = r.zrange("fastq:{default}:delayed", 0, -1, withscores=True)
    time.sleep(0.05)
    typedapp.last.apply_async(("deb", "b"), debounce_key="push", countdown=30)
    second = r.zrange("fastq:{default}:delayed", 0, -1, withscores=True)
    assert len(first) == len(second) == 1
    assert second[0][1] > first[0][1] and second[0][0] != first[0][0] and b"b" in second[0][0]
    # a shorter countdown moves it earlier: the due time is always the latest send's
    typedapp.last.apply_async(("deb", "c"), debounce_key="push", countdown=10)
    third = r.zrange("fastq:{default}:delayed", 0, -1, withscores=True)
    assert len(third) == 1 and third[0][1] < second[0][1]
    # other keys do not interfere
    other = typedapp.last.apply_async(("deb", "z"), debounce_key="other", countdown=30)
    assert r.zcard("fastq:{default}:delayed") == 2 and other.id


def test_debounce_twenty_threads(uapp, worker, ledger):
    results = _at_once(20, lambda: typedapp.last.apply_async(("deb20", "x"), debounce_key="crowd", countdown=1))
    assert all(not isinstance(x, Exception) for x in results), results
    assert len({x.id for x in results}) == 1
    worker("-P", "solo", app=APP)
    assert results[0].get(timeout=30) == "x"
    time.sleep(0.5)
    assert ledger.hget("deb20", "runs") == b"1"


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"debounce_key": "k"}, ValueError, "debounce_key needs countdown"),
    ({"debounce_key": "k", "countdown": None}, ValueError, "debounce_key needs countdown"),
    ({"debounce_key": "k", "countdown": 0}, ValueError, "countdown must be a positive number"),
    ({"debounce_key": "k", "countdown": "5"}, TypeError, "countdown must be a positive number of seconds, not str"),
    ({"debounce_key": 7, "countdown": 5}, TypeError, "debounce_key must be a non-empty string, not int"),
    ({"debounce_key": "", "countdown": 5}, ValueError, "debounce_key must be a non-empty string"),
    ({"debounce_key": "k", "countdown": 5, "task_id": "mine"}, ValueError, "task_id"),
    ({"debounce_key": "k", "countdown": 5, "unique_for": 5}, ValueError, "unique_for is an option of unique_key"),
])
def test_debounce_bad_input(uapp, options, error, words):
    with pytest.raises(error, match=words) as info:
        typedapp.last.apply_async(("deb", "a"), **options)
    assert "uniq.last" in str(info.value)
    assert _waiting(uapp) == 0
