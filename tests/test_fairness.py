"""Per-tenant fairness: fair queues with tenants (``apply_async(tenant_key=...)``).

Real ``fastq worker`` processes; runs are counted in the ledger DB. Checks are
counts and orderings (a flood cannot starve a small tenant; a cap is never
exceeded; nothing is lost), plus one loose lower bound for the rate limit.
"""

from __future__ import annotations

import pytest
import redis
from tests.apps import fair

from conftest import wait_for
from fastq import FastQ
from fastq.exceptions import ImproperlyConfigured
from fastq.fairness import TENANT_HEADER, tenants

APP = "tests.apps.fair:app"


def _app(redis_url):
    fair.app.conf.broker_url = redis_url
    fair.app._reset()
    return fair.app


def _done(ledger: redis.Redis, tenant: str) -> int:
    return int(ledger.get(f"done:{tenant}") or 0)


def _gate_is_empty(r: redis.Redis, queue: str) -> bool:
    """No backlog, no tenant in the ring, no count left over."""
    base = f"fastq:{{{queue}}}"
    return (int(r.get(f"{base}:gbn") or 0) == 0 and r.scard(f"{base}:gk") == 0 and r.zcard(f"{base}:gr") == 0
            and r.hlen(f"{base}:gc") == 0)


def _idle(app, queue: str) -> bool:
    s = app.broker.queue_stats(queue)
    return s["waiting"] == 0 and s["in_flight"] == 0 and s["delayed"] == 0


# --- fairness -----------------------------------------------------------------------------------


def test_a_small_tenant_is_not_starved_by_a_flood(redis_url, worker, ledger, r):
    app = _app(redis_url)
    # Given tenant A's 3,000 tasks waiting on a fair queue, then tenant B's 100
    app.send_many(fair.work.s("A", 0.001).set(tenant_key="A") for _ in range(3000))
    for _ in range(100):
        fair.work.apply_async(("B", 0.001), tenant_key="B")
    # (the gate holds most of them back: at most fair_window=20 are in the streams)
    stats = app.broker.queue_stats("fair")
    assert stats["waiting"] == 3100 and stats["backlog"] == 3080
    assert tenants(app, "fair")["B"] == {"active": 0, "backlog": 100}
    # When a worker serves the queue
    worker("-c", "2", "-Q", "fair", app=APP)
    # Then all of B's finish while most of A's backlog is still waiting
    wait_for(lambda: _done(ledger, "B") == 100, 60, message="B's 100 tasks")
    a_done = _done(ledger, "A")
    assert a_done < 1500, f"A had already run {a_done} of 3000 when B's 100 were done"
    # And A's backlog drains completely afterwards, leaving the gate empty
    wait_for(lambda: _done(ledger, "A") == 3000, 120, message="A's 3000 tasks")
    wait_for(lambda: _idle(app, "fair") and _gate_is_empty(r, "fair"), 10, message="an empty gate")


def test_tenants_take_turns_and_countdown_passes_the_gate(redis_url, worker, ledger, r):
    app = _app(redis_url)
    app.send_many(fair.seq.s("A", i).set(tenant_key="A") for i in range(200))
    for i in range(10):
        fair.seq.apply_async(("B", i), tenant_key="B")
    for i in range(5):
        fair.seq.apply_async(("C", i), tenant_key="C", countdown=0.2)
    # tasks sent without tenant_key share one tenant (the empty name)
    for i in range(5):
        fair.seq.apply_async(("N", i))
    # the tenant rides in the message headers
    assert r.zcard("fastq:{fair}:delayed") == 5
    worker("-P", "solo", "-Q", "fair", app=APP)
    wait_for(lambda: ledger.llen("order") == 220, 60, message="all 220 tasks")
    order = [x.decode().split(":")[0] for x in ledger.lrange("order", 0, -1)]
    # B's and N's tasks were not queued behind A's 200: they ran interleaved with A's
    assert max(i for i, t in enumerate(order) if t == "B") < 80, order
    assert max(i for i, t in enumerate(order) if t == "N") < 80, order
    # within a tenant, the order of sending is kept
    a_order = [int(x.decode().split(":")[1]) for x in ledger.lrange("order", 0, -1) if x.startswith(b"A:")]
    assert a_order == sorted(a_order)
    wait_for(lambda: _idle(app, "fair") and _gate_is_empty(r, "fair"), 10, message="an empty gate")


def test_tenant_key_follows_chains_and_groups(redis_url, worker, ledger, r):
    from fastq import chain, group

    app = _app(redis_url)
    chain(fair.whoami.si("c1"), fair.whoami.si("c2")).apply_async(tenant_key="Q")
    group(fair.whoami.si("g1"), fair.whoami.si("g2")).apply_async(tenant_key="P")
    worker("-P", "solo", "-Q", "fair", app=APP)
    wait_for(lambda: ledger.llen("groups") == 4, 30, message="4 tasks")
    assert sorted(x.decode() for x in ledger.lrange("groups", 0, -1)) == ["c1=Q", "c2=Q", "g1=P", "g2=P"]
    wait_for(lambda: _idle(app, "fair") and _gate_is_empty(r, "fair"), 10, message="an empty gate")


def test_tenant_concurrency_is_never_exceeded(redis_url, worker, ledger, r):
    app = _app(redis_url)
    # Given two tenants' tasks on a queue with tenant_concurrency=2, and 6 processes
    app.send_many(fair.concurrent.s(t, 0.05).set(tenant_key=t) for _ in range(30) for t in ("X", "Y"))
    worker("-c", "3", "--prefetch", "1", "-Q", "capped", app=APP)
    worker("-c", "3", "--prefetch", "1", "-Q", "capped", app=APP)
    wait_for(lambda: _done(ledger, "X") == 30 and _done(ledger, "Y") == 30, 90, message="60 tasks")
    # Then no more than 2 of one tenant's tasks ever ran at once (cluster-wide)
    for t in ("X", "Y"):
        most = int(ledger.get(f"max:{t}"))
        assert 1 <= most <= 2, f"{most} of {t}'s tasks ran at once"
    wait_for(lambda: _idle(app, "capped") and _gate_is_empty(r, "capped"), 10, message="an empty gate")


def test_tenant_rate_limit_holds_roughly(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given 30 tasks of tenant R on a queue limited to 10/s per tenant, and 5 of tenant S
    app.send_many(fair.stamp.s("R").set(tenant_key="R") for _ in range(30))
    app.send_many(fair.stamp.s("S").set(tenant_key="S") for _ in range(5))
    worker("-c", "2", "-Q", "limited", app=APP)
    wait_for(lambda: ledger.llen("starts:R") == 30 and ledger.llen("starts:S") == 5, 60, message="35 tasks")
    r_starts = sorted(float(x) for x in ledger.lrange("starts:R", 0, -1))
    s_starts = sorted(float(x) for x in ledger.lrange("starts:S", 0, -1))
    # Then R's 30 starts are spread at about 10/s (29 intervals: 2.9 s; loose lower bound)
    assert r_starts[-1] - r_starts[0] >= 2.0
    worst = max(sum(1 for t in r_starts if s <= t < s + 1.0) for s in r_starts)
    assert worst <= 13, f"{worst} of R's tasks started within one second"
    # And S, limited on its own, is not held up behind R
    assert s_starts[-1] < r_starts[-1]


# --- reliability --------------------------------------------------------------------------------


def test_sigkill_mid_run_loses_nothing_and_the_backlog_drains(redis_url, worker, ledger, r):
    app = _app(redis_url)
    # Given a capped tenant's 150 tasks (2 in the streams at a time, the rest in its backlog)
    app.send_many(fair.count.s("K", i, 0.02).set(tenant_key="K") for i in range(150))
    w = worker("-c", "2", "--lease-timeout", "2", "-Q", "capped", app=APP)
    wait_for(lambda: ledger.hlen("runs:K") >= 30, 60, message="30 tasks to run")
    # When the whole worker is SIGKILLed mid-run (its 2 in-flight messages are lost with it)
    w.kill_all()
    assert ledger.hlen("runs:K") < 150
    # Then another worker recovers them (lease 2 s) and the tenant's backlog still drains
    w2 = worker("-c", "2", "--lease-timeout", "2", "-Q", "capped", app=APP)
    wait_for(lambda: ledger.hlen("runs:K") == 150, 90, message="all 150 tasks to run")
    assert "of lost workers on 'capped'" in w2.log()  # the reaper returned them, tenant and all
    runs = {int(k): int(v) for k, v in ledger.hgetall("runs:K").items()}
    assert set(runs) == set(range(150))  # nothing lost (a killed task may have run twice)
    wait_for(lambda: _idle(app, "capped") and _gate_is_empty(r, "capped"), 10, message="an empty gate")
    assert r.xlen("fastq:{capped}:dlq") == 0


def test_drifted_counts_are_repaired_by_the_recount(redis_url, worker, ledger, r):
    app = _app(redis_url)
    # Given a tenant whose count says 2 (its cap) although none of its messages is in the
    # streams (as after a hand-made XDEL), so its new messages all wait in its backlog
    r.hset("fastq:{capped}:gc", "D", 2)
    app.send_many(fair.count.s("D", i).set(tenant_key="D") for i in range(5))
    assert tenants(app, "capped")["D"] == {"active": 0, "backlog": 5}
    # When a worker runs (it recounts every min(10 s, lease))
    w = worker("-P", "solo", "--lease-timeout", "2", "-Q", "capped", app=APP)
    # Then the count is repaired and the backlog drains
    wait_for(lambda: ledger.hlen("runs:D") == 5, 60, message="the stranded backlog to drain")
    assert "Repaired the fair-queue counts of 1 tenant(s) on 'capped'" in w.log()
    wait_for(lambda: _idle(app, "capped") and _gate_is_empty(r, "capped"), 10, message="an empty gate")


def test_retries_and_dead_letters_keep_the_tenant_and_free_its_place(redis_url, worker, ledger, r):
    app = _app(redis_url)
    # Retries with a countdown leave the streams and come back through the gate
    app.send_many(fair.retrying.s("T", str(i)).set(tenant_key="T") for i in range(6))
    # An unknown task is dead-lettered, with its tenant, and frees its place
    app.send_task("fair.nope", queue="capped", tenant_key="T")
    worker("-P", "solo", "-Q", "capped", app=APP)
    wait_for(lambda: _done(ledger, "T") == 6, 60, message="6 retried tasks")
    wait_for(lambda: r.xlen("fastq:{capped}:dlq") == 1, 30, message="the dead letter")
    wait_for(lambda: _idle(app, "capped") and _gate_is_empty(r, "capped"), 10, message="an empty gate")
    (_, fields), = r.xrange("fastq:{capped}:dlq")
    assert fields[b"g"] == b"T" and fields[b"reason"] == b"unknown_task"
    # Requeued, the dead letter goes back through the gate in its tenant
    assert app.broker.dlq_requeue("capped") == 1
    wait_for(lambda: r.xlen("fastq:{capped}:dlq") == 1, 30, message="the dead letter again")
    wait_for(lambda: _idle(app, "capped") and _gate_is_empty(r, "capped"), 10, message="an empty gate")


def test_hand_back_and_dead_letter_keep_the_gate_right(redis_url, r, monkeypatch):
    """release.lua (warm shutdown / dead pool process) without a worker: the handed-back
    message keeps its tenant; a dead-lettered one frees its place for the backlog."""
    monkeypatch.setitem(fair.app.conf, "worker_max_deliveries", 1)
    app = _app(redis_url)
    for i in range(3):
        fair.count.apply_async(("H", i), tenant_key="H")
    qk = app.broker.ensure_queue("capped")
    assert tenants(app, "capped")["H"] == {"active": 2, "backlog": 1}
    ((_, entries),) = r.xreadgroup("fastq", "c1", {qk.streams[0]: ">"})
    ids = [e[0] for e in entries]
    moved, buried = app.broker.release(qk.streams[0], "capped", "c1", ids, strike=ids[0])
    assert (moved, buried) == (1, 1)
    # the handed-back one waits in the returned stream with its tenant, the third was admitted
    ((_, fields),) = r.xrange(qk.returned[0])
    assert fields[b"g"] == b"H"
    assert tenants(app, "capped")["H"] == {"active": 2, "backlog": 0}
    assert r.hget("fastq:{capped}:gc", "H") == b"2"
    (_, dead), = r.xrange(qk.dlq)
    assert dead[b"g"] == b"H"


def test_plain_queues_do_not_pass_the_gate(redis_url, r):
    app = _app(redis_url)
    fair.plain.delay()
    app.send_many([fair.plain.s()])
    # plain entries: payload only, and no gate keys
    for _, fields in r.xrange("fastq:{plain}:s"):
        assert list(fields) == [b"p"]
    assert not r.keys("fastq:{plain}:g*")
    # a fair message carries its tenant in its headers and in the stream entry
    fair.work.apply_async(("A",), tenant_key="tenant-1")
    (_, fields), = r.xrange("fastq:{fair}:s")
    assert fields[b"g"] == b"tenant-1"
    msg = app.serializer.decode_message(fields[b"p"])
    assert msg.headers == {TENANT_HEADER: "tenant-1"}


# --- bad input ----------------------------------------------------------------------------------


def test_tenant_key_on_a_queue_that_is_not_fair_fails_at_call_time(redis_url, r):
    app = _app(redis_url)
    with pytest.raises(ImproperlyConfigured, match=r"task 'fair.plain'.*queue 'plain' is not one"):
        fair.plain.apply_async(tenant_key="A")
    with pytest.raises(ImproperlyConfigured, match=r"queue 'default' is not one"):
        fair.work.apply_async(("A",), queue="default", tenant_key="A")
    with pytest.raises(ImproperlyConfigured, match="queue 'plain'"):
        app.send_many([fair.plain.s().set(tenant_key="A")])
    assert not r.keys("fastq:{plain}:*") and not r.keys("fastq:{default}:*")  # nothing was sent


@pytest.mark.parametrize("value", ["", 17, b"A", ["A"], "x" * 257])
def test_tenant_key_must_be_a_non_empty_string(redis_url, r, value):
    _app(redis_url)
    with pytest.raises(ValueError, match=r"task 'fair.work': tenant_key"):
        fair.work.apply_async(("A",), tenant_key=value)
    assert r.xlen("fastq:{fair}:s") == 0


@pytest.mark.parametrize(("queues", "error"), [
    ({"q": {"fair_tenants": True, "tenant_concurrency": 0}}, r"task_queues\['q'\]: tenant_concurrency must be"),
    ({"q": {"fair_tenants": True, "tenant_concurrency": "2"}}, r"task_queues\['q'\]: tenant_concurrency must be"),
    ({"q": {"fair_tenants": True, "tenant_rate_limit": "10/x"}}, r"task_queues\['q'\] tenant_rate_limit.*'10/x'"),
    ({"q": {"fair_tenants": True, "tenant_rate_limit": -1}}, r"task_queues\['q'\] tenant_rate_limit.*positive"),
    ({"q": {"fair_tenants": True, "fair_window": 0}}, r"task_queues\['q'\]: fair_window must be"),
    ({"q": {"fair_tenants": "yes"}}, r"task_queues\['q'\]: fair_tenants must be True or False"),
    ({"q": {"tenant_concurrency": 2}}, r"task_queues\['q'\]: tenant_concurrency set but 'fair_tenants' is not True"),
    ({"q": {"fair_tenants": True, "tenant_concurency": 2}}, r"task_queues\['q'\]: unknown option\(s\) tenant_concurency"),
    ({"q": ["fair_tenants"]}, r"task_queues\['q'\] must be a dict"),
    ({"bad queue": {"fair_tenants": True}}, r"task_queues\['bad queue'\]: invalid queue name"),
    (["q"], r"task_queues must be a dict"),
])
def test_bad_queue_settings_fail_when_read(redis_url, queues, error):
    # a value of the wrong type fails when set; bad contents when the broker is built
    with pytest.raises(ImproperlyConfigured, match=error):
        app = FastQ("bad", broker=redis_url, task_queues=queues)
        app.broker  # noqa: B018


def test_the_names_before_the_rename_still_work(redis_url, r):
    """group_key, fair_groups, group_concurrency, group_rate_limit and the fastq-group
    header were the tenant feature's names before #19; setups using them keep working."""
    # old queue options mean the new ones
    app = FastQ("old", broker=redis_url, task_queues={
        "q": {"fair_groups": True, "group_concurrency": 2, "group_rate_limit": "5/s"}})
    fq = app.broker.fair["q"]
    assert (fq.concurrency, fq.rate) == (2, 5.0)
    # old and new name of one option together are refused
    with pytest.raises(ImproperlyConfigured, match=r"both 'group_concurrency' and 'tenant_concurrency'"):
        _ = FastQ("both", broker=redis_url, task_queues={
            "q": {"fair_tenants": True, "group_concurrency": 2, "tenant_concurrency": 3}}).broker
    # group_key is tenant_key, and passes the gate the same way
    app = _app(redis_url)
    fair.work.apply_async(("A",), group_key="old-tenant")
    (_, fields), = r.xrange("fastq:{fair}:s")
    assert fields[b"g"] == b"old-tenant"
    assert app.serializer.decode_message(fields[b"p"]).headers == {TENANT_HEADER: "old-tenant"}
    with pytest.raises(ValueError, match="both tenant_key and group_key"):
        fair.work.apply_async(("A",), group_key="a", tenant_key="b")
    # a message queued by an older version (fastq-group header) keeps its tenant
    from fastq.broker.fair import tenant_of
    old = app.producer.encode(app.producer.build("fair.work", ("A",), {}, {"headers": {"fastq-group": "T"}},
                                                 fair.work)[0], fair.work)
    assert tenant_of(app.serializer.field, old) == "T"


def test_bad_queue_settings_stop_the_worker_at_start(redis_url, worker):
    w = worker("-P", "solo", "-Q", "capped", app=APP, env={"FAIR_BAD": "tenant_rate_limit='10/x'"}, wait=False)
    assert w.proc.wait(30) != 0
    assert "task_queues['capped'] tenant_rate_limit" in w.log()


def test_a_worker_without_the_fair_settings_says_so(redis_url, worker, r):
    # Given a queue that producers use as a fair queue (its gate keys exist) ...
    r.set("fastq:{plain}:gbn", 0)
    # ... when a worker whose settings call it plain starts, it logs the mismatch
    w = worker("-P", "solo", "-Q", "plain", app=APP)
    wait_for(lambda: "Queue 'plain' has fair-queue keys in Redis" in w.log(), 10, message="the error")


# --- one send path ----------------------------------------------------------------------------------


def test_async_and_sync_sends_both_pass_the_gate(redis_url, r):
    """The async producer used to send straight to the streams (3 in the stream, none
    held back), and then marked the fair queue as a plain known queue, so even the
    sync sends of the same process skipped the gate afterwards."""
    import asyncio

    from fastq.aio import aclose

    app = _app(redis_url)

    async def send_async():
        for i in range(3):
            await fair.concurrent.apply_async_async(("a", i), tenant_key="a")
        await aclose()

    asyncio.run(send_async())
    assert tenants(app, "capped")["a"] == {"active": 2, "backlog": 1}  # tenant_concurrency=2
    for i in range(3):
        fair.concurrent.apply_async(("b", i), tenant_key="b")
    assert tenants(app, "capped")["b"] == {"active": 2, "backlog": 1}
    assert app.broker.queue_stats("capped")["backlog"] == 2


def test_an_asyncio_worker_frees_its_tenants_places(redis_url, worker, ledger, r):
    """The asyncio pool acked with the plain ack, which does not free a tenant's place
    at the gate: after tenant_concurrency tasks, the rest of the tenant waited for good."""
    app = _app(redis_url)
    app.send_many(fair.concurrent.s("Z", 0.01).set(tenant_key="Z") for _ in range(10))
    worker("-P", "asyncio", "-Q", "capped", app=APP)
    wait_for(lambda: _done(ledger, "Z") == 10, 60, message="10 tasks of one tenant")
    wait_for(lambda: _idle(app, "capped") and _gate_is_empty(r, "capped"), 10, message="an empty gate")


def test_unique_debounced_and_periodic_sends_pass_the_gate(redis_url, r):
    """unique_publish.lua and beat_send.lua wrote straight to the stream (no tenant,
    no gate), and debounced sends lost their tenant in the delayed set."""
    import time

    from fastq.beat import Beat
    from fastq.broker.fair import split_member

    app = _app(redis_url)
    results = [fair.concurrent.apply_async(("a", i), tenant_key="a", unique_key=f"u{i}") for i in range(3)]
    assert fair.concurrent.apply_async(("a", 0), tenant_key="a", unique_key="u0").id == results[0].id  # still unique
    assert tenants(app, "capped")["a"] == {"active": 2, "backlog": 1}

    fair.concurrent.apply_async(("d", 0), tenant_key="d", debounce_key="k", countdown=30)
    (member,) = r.zrange("fastq:{capped}:delayed", 0, -1)
    assert split_member(member)[0] == "d"

    app.conf.beat_schedule = {"every": {"task": "fair.concurrent", "schedule": 10.0, "args": ("b",),
                                        "options": {"tenant_key": "b"}}}
    try:
        beat = Beat(app)
        beat.is_leader, beat._valid_until = True, time.monotonic() + 3600
        t0 = 1_700_000_000_000
        for i in range(4):  # the first tick anchors the entry; three runs follow
            beat.tick(t0 + i * 10_000)
    finally:
        app.conf.beat_schedule = {}
    assert tenants(app, "capped")["b"] == {"active": 2, "backlog": 1}
