"""Issue 18: no single message, key or memory limit stops a queue or loses work
silently. Each fault is injected on a private redis-server (keys by the broker's
layout, tests/test_faults.py), with real `fastq worker` processes; then 50 good
tasks, immediate and delayed, still run, and the bad item is dead-lettered with
its reason.
"""

from __future__ import annotations

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
    w = worker(*pool, broker=server.url)
    # When 50 good tasks follow, then they all run
    all_ran(ledger, "fields", send_good(app, "fields"))
    # ... and each bad entry is dead-lettered, saying what was wrong
    wait_for(lambda: broker.xlen(DLQ) == 3, 30, message="3 dead letters")
    dls = dead_letters(broker)
    assert {d["reason"] for d in dls} == {b"malformed"}
    assert all(b"delivery count field dc=" in d["error"] for d in dls), dls
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
    broker.xreadgroup("fastq", "c2", {STREAM: ">"})
    requeued, buried = app.broker.reap("default", "reaper", 0, 5, 1000)
    assert buried == 1 and dead_letters(broker)[0]["reason"] == b"malformed"
    assert broker.xrange(STREAM, bad, bad) == []


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
