"""Issue 18: no single message, key or memory limit stops a queue or loses work
silently. Each fault is injected on a private redis-server (keys by the broker's
layout, tests/test_faults.py), with real `fastq worker` processes; then 50 good
tasks, immediate and delayed, still run, and the bad item is dead-lettered with
its reason.
"""

from __future__ import annotations

import time

import msgspec
import pytest
import redis

from conftest import wait_for
from fastq import FastQ
from fastq.messages import Message

BASE = "fastq:{default}"
STREAM = f"{BASE}:s"
DELAYED = f"{BASE}:delayed"
DLQ = f"{BASE}:dlq"
POOLS = [("-P", "solo"), ("-P", "process", "-c", "2")]


@pytest.fixture
def on(redis_url):
    """``on(url)``: the tests' app (tests.apps.basic) publishing to broker ``url``."""
    from tests.apps import basic

    def point(url: str) -> FastQ:
        basic.app.conf.broker_url = url
        basic.app.conf.task_always_eager = False
        basic.app._reset()
        return basic.app

    yield point
    basic.app.conf.broker_url = redis_url
    basic.app._reset()


def raw_message(task: str, args: list, options: dict | None = None, task_id: str = "planted") -> bytes:
    """A message as a producer that skipped fastq's checks would write it."""
    return msgspec.msgpack.encode(Message(task_id, task, args, {}, options=options))


def send_good(app, key: str, n: int = 50) -> list[str]:
    """n tasks recording themselves in the ledger hash ``key``: half now, half with a countdown."""
    record = app.tasks["tests.record"]
    items = [str(i) for i in range(n)]
    for i in items:
        if int(i) % 2:
            record.apply_async((key, i), countdown=1)
        else:
            record.delay(key, i)
    return items


def all_ran(ledger, key: str, items: list[str], timeout: float = 60.0) -> None:
    wait_for(lambda: ledger.hlen(key) >= len(items), timeout, 0.1,
             f"{len(items)} good tasks to run ({ledger.hlen(key)} did)")
    counts = {k.decode() for k in ledger.hgetall(key)}
    assert counts == set(items)


def dead_letters(client) -> list[dict]:
    return [{k.decode(): v for k, v in f.items()} for _, f in client.xrange(DLQ)]


# --- 1. options: checked at the call and per message in the worker -------------------------


@pytest.mark.parametrize("option,value,error", [
    ("time_limit", "abc", TypeError), ("soft_time_limit", [1], TypeError), ("time_limit", -1, ValueError),
    ("soft_time_limit", float("nan"), ValueError), ("max_retries", "3", TypeError),
    ("ignore_result", "yes", TypeError), ("countdown", float("inf"), ValueError), ("retries", -1, ValueError),
    ("task_id", 5, TypeError), ("headers", "h", TypeError),
])
def test_a_bad_option_is_refused_at_the_call(app, option, value, error):
    with pytest.raises(error, match=option):
        app.tasks["tests.add"].apply_async((1, 1), **{option: value})


@pytest.mark.parametrize("pool", [("-P", "solo"), ("-P", "process", "-c", "1"), ("-P", "thread", "-c", "2")])
def test_a_message_with_a_bad_option_is_dead_lettered(on, ledger, worker, redis_server, pool):
    # Given a message whose time_limit is not a number, written past fastq's checks
    server = redis_server()
    broker = redis.Redis(port=server.port)
    app = on(server.url)
    broker.xadd(STREAM, {"p": raw_message("tests.record", ["bad", "x"], {"time_limit": "abc"})})
    worker(*pool, broker=server.url)
    # When 50 good tasks follow it, then they all run
    all_ran(ledger, "opts", send_good(app, "opts"))
    # ... and the bad one is dead-lettered with its reason and fails its result
    wait_for(lambda: broker.xlen(DLQ) == 1, 30, message="the dead letter")
    (dl,) = dead_letters(broker)
    assert dl["reason"] == b"bad_option" and b"time_limit must be a number" in dl["error"], dl
    assert ledger.hlen("bad") == 0
    with pytest.raises(ValueError, match="time_limit"):
        app.AsyncResult("planted").get(timeout=30)


@pytest.mark.parametrize("pool", POOLS)
def test_a_message_the_worker_itself_fails_on_is_dead_lettered(on, ledger, worker, redis_server, pool):
    # Given a message whose workflow options are not what fastq writes (link is a number)
    server = redis_server()
    broker = redis.Redis(port=server.port)
    app = on(server.url)
    broker.xadd(STREAM, {"p": raw_message("tests.record_result", ["bad", "x"], {"link": 5})})
    w = worker(*pool, broker=server.url)
    # When 50 good tasks follow, then they all run
    all_ran(ledger, "crash", send_good(app, "crash"))
    # ... and the message is dead-lettered with what went wrong; the consumer loop never saw it
    wait_for(lambda: broker.xlen(DLQ) == 1, 30, message="the dead letter")
    (dl,) = dead_letters(broker)
    assert dl["reason"] == b"worker_error" and b"TypeError" in dl["error"], dl
    assert "Consumer error" not in w.log()


# --- 2. malformed stream fields ---------------------------------------------------------------


@pytest.mark.parametrize("pool", POOLS)
def test_entries_with_a_malformed_delivery_count_are_dead_lettered(on, ledger, worker, redis_server, pool):
    # Given entries whose delivery count is not a number, or is huge, ahead of good ones
    server = redis_server()
    broker = redis.Redis(port=server.port)
    app = on(server.url)
    bad = {"abc": b"abc", "huge": b"99999999999999999999999", "neg": b"-1"}
    for name, dc in bad.items():
        broker.xadd(STREAM, {"p": raw_message("tests.record", ["bad", name], task_id=name), "dc": dc})
    broker.xadd(STREAM, {"dc": b"3"})  # no payload field at all
    w = worker(*pool, broker=server.url)
    # When 50 good tasks follow, then they all run
    all_ran(ledger, "fields", send_good(app, "fields"))
    # ... and each bad entry is dead-lettered, saying what was wrong
    wait_for(lambda: broker.xlen(DLQ) == 4, 30, message="4 dead letters")
    dls = dead_letters(broker)
    assert sorted(d["reason"] for d in dls) == [b"malformed"] * 3 + [b"undecodable"]
    assert all(b"delivery count field dc=" in d["error"] for d in dls if d["reason"] == b"malformed"), dls
    assert ledger.hlen("bad") == 0
    assert "Consumer error" not in w.log()


def test_hand_back_and_reaper_dead_letter_a_malformed_delivery_count(on, redis_server):
    # Given entries with a malformed delivery count held by a consumer
    server = redis_server()
    broker = redis.Redis(port=server.port)
    app = on(server.url)
    app.broker.ensure_queue("default")
    good = broker.xadd(STREAM, {"p": raw_message("tests.add", [1, 2], task_id="good"), "dc": b"1"})
    ids = [broker.xadd(STREAM, {"p": raw_message("tests.add", [1, 2], task_id=f"b{i}"), "dc": dc})
           for i, dc in enumerate([b"abc", b"99999999999999999999999"])]
    broker.xreadgroup("fastq", "c1", {STREAM: ">"})
    # When a warm shutdown hands them back (release.lua), then the script does not
    # fail: the good one goes back, the bad ones are dead-lettered with the reason
    assert app.broker.release(STREAM, "default", "c1", [good, *ids]) == [1, 2]
    assert [d["reason"] for d in dead_letters(broker)] == [b"malformed", b"malformed"]
    # And when the reaper finds one held by a dead consumer, the same
    broker.delete(DLQ)
    bad = broker.xadd(STREAM, {"p": raw_message("tests.add", [1, 2], task_id="b3"), "dc": b"x1"})
    # (and one whose "came from" field names a key outside the queue: it goes back to its own stream)
    elsewhere = broker.xadd(STREAM, {"p": raw_message("tests.add", [1, 2], task_id="b4"), "src": "fastq:other"})
    broker.xreadgroup("fastq", "c2", {STREAM: ">"})
    requeued, buried, _dead_ids = app.broker.reap("default", "reaper", 0, 5, 1000)
    assert (requeued, buried) == (1, 1) and dead_letters(broker)[0]["reason"] == b"malformed"
    assert broker.xrange(STREAM, bad, bad) == [] and broker.xrange(STREAM, elsewhere, elsewhere) == []
    assert not broker.exists("fastq:other") and broker.xlen(STREAM) == 1


def test_warm_shutdown_hands_back_around_a_malformed_entry(on, ledger, worker, redis_server):
    # Given a worker running a slow task with a malformed entry and good ones prefetched behind it
    # (its fetch window grows on 20 quick tasks, 1, 2, 4, 8, 16: the slow one, 21st, shares a
    # batch with those behind it; the hold watch is off, so only the warm stop hands them back)
    server = redis_server()
    broker = redis.Redis(port=server.port)
    app = on(server.url)
    for i in range(20):
        app.tasks["tests.record"].delay("quick", str(i))
    app.tasks["tests.record"].delay("warm", "slow", 3.0)
    broker.xadd(STREAM, {"p": raw_message("tests.record", ["bad", "x"]), "dc": b"abc"})
    good = [app.tasks["tests.record"].delay("warm", str(i)).id for i in range(5)]
    w = worker("-P", "solo", broker=server.url, env={"FASTQ_TEST_HOLD_TIME": "60"})
    wait_for(lambda: ledger.hlen("quick") == 20, 30, message="the quick tasks")
    time.sleep(1.0)  # into the 3 s task
    # When it is told to stop, then the hand-back (release.lua) dead-letters the bad entry
    # instead of failing, hands back the rest, and the worker exits cleanly
    w.signal(15)
    assert w.proc.wait(30) == 0
    assert "attempt to compare" not in w.log() and "Traceback" not in w.log()
    assert [d["reason"] for d in dead_letters(broker)] == [b"malformed"]
    # And another worker runs the handed-back good tasks
    worker("-P", "solo", broker=server.url)
    wait_for(lambda: ledger.hlen("warm") == 6, 30, message="the good tasks")
    assert len(good) == 5


# --- 3. a garbage member in the delayed set ---------------------------------------------------


@pytest.mark.parametrize("member", [b"garbage-member", b"g", b"gp0x:abc", b"gp09:ab", b"", b"x", b"p"])
def test_a_garbage_delayed_member_is_dead_lettered_and_countdowns_go_on(on, ledger, worker, redis_server, member):
    # Given a member of the delayed set that fastq did not write
    server = redis_server()
    broker = redis.Redis(port=server.port)
    app = on(server.url)
    broker.zadd(DELAYED, {member: 0})
    w = worker("-P", "solo", broker=server.url)
    # When 50 tasks follow, half with a countdown, then they all run
    all_ran(ledger, "delayed", send_good(app, "delayed"))
    # ... and the member is dead-lettered as it was, with the reason
    wait_for(lambda: broker.xlen(DLQ) == 1, 30, message="the dead letter")
    (dl,) = dead_letters(broker)
    assert dl["reason"] == b"malformed" and dl["raw"] == member, dl
    assert broker.zcard(DELAYED) == 0
    assert "Maintenance step failed" not in w.log()


def test_fair_promote_dead_letters_a_garbage_member(redis_server):
    from tests.apps import fair

    server = redis_server()
    broker = redis.Redis(port=server.port)
    fair.app.conf.broker_url = server.url
    fair.app._reset()
    key = "fastq:{fair}:delayed"
    good = b"g" + b"p0" + b"1:a" + raw_message("fair.work", ["a"])
    broker.zadd(key, {b"gp0x:abc": 0, b"garbage": 0, good: 0})
    # When the fair queue's promotion runs, then it does not fail: the good member
    # goes through the gate, the garbage ones are dead-lettered
    assert fair.app.broker.promote("fair") == 3
    reasons = [f[b"reason"] for _, f in broker.xrange("fastq:{fair}:dlq")]
    assert reasons == [b"malformed", b"malformed"]
    assert broker.xlen("fastq:{fair}:s") == 1


# --- 4. the eviction policy ---------------------------------------------------------------------


def test_a_worker_refuses_an_evicting_redis_unless_allowed(worker, redis_server):
    # Given a Redis that evicts any key when full (queued tasks included)
    server = redis_server("--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru")
    # When a worker starts on it, then it refuses in one line naming the fix and the override
    w = worker("-P", "solo", broker=server.url, wait=False)
    assert w.proc.wait(30) != 0
    log = w.log()
    assert "maxmemory-policy allkeys-lru" in log and "--allow-eviction" in log and "noeviction" in log, log
    assert "Traceback" not in log
    # And with --allow-eviction it starts, and says so loudly
    w = worker("-P", "solo", "--allow-eviction", broker=server.url)
    assert "deletes queued tasks" in w.log()


def test_a_worker_warns_about_volatile_eviction_and_rechecks_after_a_reconnect(on, worker, redis_server):
    # Given a worker on a Redis that evicts only keys with a TTL: it warns and runs
    server = redis_server("--maxmemory", "50mb", "--maxmemory-policy", "volatile-lru")
    admin = redis.Redis(port=server.port)
    w = worker("-P", "solo", broker=server.url)
    assert "maxmemory-policy volatile-lru" in w.log()
    # When the policy changes to allkeys-lru and the worker's connections are cut
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    # Then after reconnecting it says so (it keeps running: stopping would not save the queue)
    wait_for(lambda: "maxmemory-policy allkeys-lru" in w.log(), 30, message="the warning after reconnecting")
    assert on(server.url).tasks["tests.add"].delay(2, 3).get(timeout=30) == 5


# --- 8. memory and authentication errors are fastq's, in one line --------------------------------


def test_out_of_memory_reaches_producers_as_broker_error_and_workers_wait_for_memory(on, worker, redis_server):
    from fastq.exceptions import BrokerError, BrokerOutOfMemory

    # Given a Redis with no memory left (noeviction) and no queue yet
    server = redis_server("--maxmemory-policy", "noeviction")
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory", "1")
    app = on(server.url)
    # When a producer sends, then it gets fastq's BrokerError saying what happened
    with pytest.raises(BrokerOutOfMemory, match="out of memory") as info:
        app.tasks["tests.add"].delay(1, 1)
    assert isinstance(info.value, BrokerError)
    # When a worker starts, then it cannot create its consumer groups and retries, one line each
    w = worker("-P", "solo", broker=server.url, wait=False)
    wait_for(lambda: w.log().count("out of memory") >= 2, 30, message="the worker to retry")
    assert w.proc.poll() is None and "Traceback" not in w.log()
    # And once memory is there it starts and runs tasks
    admin.config_set("maxmemory", "0")
    w.wait_ready(admin)
    assert app.tasks["tests.add"].delay(2, 2).get(timeout=30) == 4


def test_a_wrong_password_is_an_authentication_failure(on, worker, redis_server):
    from fastq.exceptions import BrokerAuthError

    server = redis_server("--requirepass", "right-pw")
    url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
    # A producer gets fastq's error at once, not retries as if Redis were down
    with pytest.raises(BrokerAuthError, match="refused the login"):
        FastQ("client", broker=url).send_task("tests.add", args=(1, 1))
    # A worker exits with one line saying so (and never the password)
    w = worker("-P", "solo", broker=url, wait=False)
    assert w.proc.wait(30) != 0
    log = w.log()
    assert "refused the login" in log, log
    assert "Traceback" not in log and "wrong-pw" not in log and "Cannot connect" not in log
    # And any other command says so in one line
    import subprocess

    from conftest import ROOT, fastq_command

    cli = subprocess.run([*fastq_command(), "-A", "tests.apps.basic:app", "-b", url, "queues"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and "refused the login" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr and "wrong-pw" not in cli.stderr


# --- 5. a result Redis refuses is never acknowledged without it ---------------------------------


def _unacked_ids(client) -> set[str]:
    """Task ids of the messages still in the queue's streams (not acknowledged: acks delete)."""
    ids = set()
    for stream in (STREAM, f"{BASE}:ret"):
        for _, fields in client.xrange(stream):
            ids.add(msgspec.msgpack.decode(fields[b"p"])[0])
    return ids


@pytest.mark.parametrize("pool", [("-P", "solo"), ("-P", "process", "-c", "2"), ("-P", "asyncio", "-c", "4")])
@pytest.mark.timeout(240)
def test_results_refused_for_memory_are_never_acknowledged_without_them(on, worker, redis_server, pool):
    # Given 120 tasks with 400 KB results queued on a Redis of 30 MB (noeviction)
    server = redis_server("--maxmemory", "30mb", "--maxmemory-policy", "noeviction")
    admin = redis.Redis(port=server.port)
    app = on(server.url)
    big = app.tasks["tests.big_result"]
    results = [big.delay(400_000) for _ in range(120)]
    # When a worker runs them and Redis fills up
    w = worker(*pool, broker=server.url)
    wait_for(lambda: "out of memory" in w.log(), 120, 0.2, "Redis to refuse results")
    # Then every acknowledged task has its result; the others are still in flight
    for _ in range(3):
        unacked = _unacked_ids(admin)  # read first: a task acked after this has its result already
        stored = {r.id for r in results if admin.exists(f"fastq:r:{r.id}")}
        acked = {r.id for r in results} - unacked
        assert acked <= stored, f"{len(acked - stored)} task(s) acknowledged without a result"
        assert unacked, "Redis never ran out of memory"
    assert "Traceback" not in w.log()
    # And once memory is freed, every task finishes with its result; get() returns it
    admin.config_set("maxmemory", "0")
    assert all(len(r.get(timeout=120)) == 400_000 for r in results)
    wait_for(lambda: not _unacked_ids(admin), 30, message="every message acknowledged")


# --- 7. due times on Redis's clock --------------------------------------------------------------

_PRODUCER = """
import datetime as dt, json, sys, time
import redis
from tests.apps import basic
url = sys.argv[1]
app = basic.app
app.conf.broker_url = url
app._reset()
client = redis.Redis.from_url(url)
def redis_now():
    secs, usecs = client.time()
    return secs + usecs / 1e6
stamp = app.tasks["tests.stamp_time"]
sent = redis_now()
stamp.apply_async(("clock", "countdown"), countdown=5)
eta = redis_now() + 5
stamp.apply_async(("clock", "eta"), eta=dt.datetime.fromtimestamp(eta, dt.timezone.utc))
print(json.dumps({"countdown": sent + 5, "eta": eta, "skew": time.time() - redis_now()}))
"""


def _clock_off_by(offset: str) -> dict:
    """Environment setting a process's clock off by ``offset`` (libfaketime; tests/test_control.py)."""
    import glob

    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime is missing: apt-get install faketime (.ci/deps.sh does)"
    return {"LD_PRELOAD": libs[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.parametrize("offset", ["-60s", "+20s"])
def test_countdowns_and_etas_are_due_on_redis_clock_whatever_the_producers(ledger, worker, redis_server, offset):
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    # Given a worker, and a producer whose clock is off
    server = redis_server()
    worker("-P", "solo", broker=server.url)
    env = {**os.environ, **_clock_off_by(offset)}
    # When it sends a task with countdown=5 and one with an eta 5 s ahead (on Redis's clock)
    out = subprocess.run([sys.executable, "-c", _PRODUCER, server.url], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    due = json.loads(out)
    assert abs(due["skew"] - int(offset[:-1])) < 5, due  # its clock really is off
    # Then each runs at its due time on Redis's clock: not early, and not 20 s late
    wait_for(lambda: ledger.hlen("clock") == 2, 40, 0.1, "both tasks to run")
    ran = {k.decode(): float(v) for k, v in ledger.hgetall("clock").items()}
    for kind in ("countdown", "eta"):
        late = ran[kind] - due[kind]
        assert -0.5 <= late <= 3.0, f"{kind} ran {late:+.2f}s from its due time (producer clock {offset})"


def test_a_retry_countdown_is_due_on_redis_clock_whatever_the_workers(on, ledger, worker, redis_server):
    # Given a worker whose clock is 20 s ahead
    server = redis_server()
    app = on(server.url)
    worker("-P", "solo", broker=server.url, env=_clock_off_by("+20s"))
    # When a task fails once and retries with countdown=0.2
    t0 = time.monotonic()
    assert app.tasks["tests.flaky"].delay("flaky", 1).get(timeout=60) == 2
    # Then the retry ran 0.2 s later on Redis's clock, not 20 s later
    assert time.monotonic() - t0 < 10


# --- 8. stored exceptions are rebuilt only as Exception subclasses -------------------------------


@pytest.mark.parametrize("exc_type", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException"])
def test_a_planted_base_exception_result_comes_back_as_task_error(app, r, exc_type):
    from fastq.exceptions import TaskError
    from fastq.messages import ResultMeta, encode_result

    r.rpush("fastq:r:planted", encode_result(ResultMeta("FAILURE", None, exc_type, "builtins", "bye")))
    res = app.AsyncResult("planted")
    with pytest.raises(TaskError, match=exc_type) as info:
        res.get(timeout=5)
    assert info.value.exc_type == exc_type
    # and a result fastq cannot read at all is a clear failure, not a decoder's exception
    r.rpush("fastq:r:garbage", b"\xc1 not msgpack")
    with pytest.raises(ValueError, match="stored result cannot be read"):
        app.AsyncResult("garbage").get(timeout=5)


def test_planted_heartbeats_events_and_control_replies_are_skipped(app, r, worker):
    """Keys that carry no task are read defensively too: a heartbeat that is not a
    JSON object, an events entry fastq did not write, a control reply without a
    hostname. `fastq status` and the readers carry on; nothing raises."""
    import subprocess

    from conftest import ROOT, fastq_command
    from fastq import events

    w = worker("-P", "solo")
    r.zadd("fastq:workers", {"ghost@nowhere": time.time()})
    r.set("fastq:worker:ghost@nowhere", b"[1, 2, 3]")
    r.xadd("fastq:events", {"h": "x", "e": b"\xc1garbage"})
    r.xadd("fastq:events", {"h": "x", "e": msgspec.msgpack.encode([["task-sent", None, None, "no", None, 5]])})
    for _id, fields in r.xrange("fastq:events", "-", "+"):
        events.unpack_entry(fields)  # never raises
    assert events.unpack_entry({b"h": b"x", b"e": b"\xc1garbage"}) == []
    out = subprocess.run([*fastq_command(), "-A", "tests.apps.basic:app", "status"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert w.name in out.stdout and "Traceback" not in out.stderr
    r.publish("fastq:control", b"{not json")  # the workers ignore it and keep answering
    assert any(w.name in reply for reply in app.control.ping(timeout=5))
