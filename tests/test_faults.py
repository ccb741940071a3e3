"""Fault injection: real `fastq worker` processes, private redis-servers, and an
execution ledger kept outside the broker (FASTQ_TEST_LEDGER), so a loss or a
duplicate cannot hide in the broker's own bookkeeping.

Every test prints one ``FAULT-RESULT`` line (run with ``-s``); docs/reliability.md
is filled from them. Invariants checked after each scenario (reliability design
5.1): no task lost (ledger count >= 1 for every task sent), the dead-letter
stream holds exactly the injected bad messages, no worker exit the test did not
cause, and a clean end state (streams, pending lists and delayed set empty).
Duplicates are counted and reported, not forbidden: delivery is at least once.

Run: FASTQ_TEST_DB=3 FASTQ_TEST_LEDGER_DB=4 python -m pytest tests/test_faults.py -s
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time

import pytest
import redis

from conftest import wait_for

pytestmark = pytest.mark.fault

QUEUE = "default"
BASE = f"fastq:{{{QUEUE}}}"
# every stream of the queue, in the order fetch.lua serves them (returned p, priority p, p = 9 .. 0)
STREAMS = [s for p in range(9, -1, -1) for s in (f"{BASE}:ret{p or ''}", f"{BASE}:s{p or ''}")]
DELAYED = f"{BASE}:delayed"
DLQ = f"{BASE}:dlq"
CONSUMER_GROUP = "fastq"


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def fq(redis_url):
    """``fq(url)``: the tests' app (tests.apps.basic) publishing to broker ``url``."""
    from tests.apps import basic

    def on(url: str):
        basic.app.conf.broker_url = url
        basic.app.conf.task_always_eager = False
        basic.app._reset()
        return basic.app

    yield on
    basic.app.conf.broker_url = redis_url
    basic.app._reset()


def publish(app, task_name: str, calls: list[tuple]) -> list[str]:
    """Send ``task_name(*args)`` for each args tuple, pipelined; return the task ids."""
    task = app.tasks[task_name]
    ids: list[str] = []
    for i in range(0, len(calls), 1000):
        ids += [r.id for r in app.send_many([task.s(*args) for args in calls[i : i + 1000]])]
    return ids


def queue_state(client: redis.Redis) -> dict:
    """Entries in all streams (ready + in flight), pending entries, delayed, dead letters."""
    pipe = client.pipeline(transaction=False)
    for s in STREAMS:
        pipe.xlen(s)
    for s in STREAMS:
        pipe.xpending(s, CONSUMER_GROUP)
    pipe.zcard(DELAYED)
    pipe.xlen(DLQ)
    replies = pipe.execute(raise_on_error=False)
    n = len(STREAMS)
    entries = sum(r for r in replies[:n] if isinstance(r, int))
    pending = sum(r["pending"] for r in replies[n : 2 * n] if isinstance(r, dict))
    return {"entries": entries, "pending": pending, "delayed": replies[-2], "dead": replies[-1]}


def drained(client: redis.Redis):
    s = queue_state(client)
    return s["entries"] == 0 and s["pending"] == 0 and s["delayed"] == 0


def pending_of(client: redis.Redis, consumer_prefix: str) -> int:
    """Entries held by consumers whose name starts with ``consumer_prefix``."""
    n = 0
    for s in STREAMS:
        try:
            for c in client.xinfo_consumers(s, CONSUMER_GROUP):
                if c["name"].decode().startswith(consumer_prefix):
                    n += c["pending"]
        except redis.ResponseError:
            pass
    return n


def dead_letters(client: redis.Redis) -> list[dict]:
    return [{k.decode(): v for k, v in f.items()} for _, f in client.xrange(DLQ)]


def account(ledger: redis.Redis, key: str, items) -> tuple[list, int, int]:
    """(lost items, tasks run more than once, extra executions) from the ledger hash."""
    counts = {k.decode(): int(v) for k, v in ledger.hgetall(key).items()}
    lost = [i for i in items if counts.get(str(i), 0) == 0]
    dup_tasks = sum(1 for c in counts.values() if c > 1)
    extra = sum(c - 1 for c in counts.values() if c > 1)
    return lost, dup_tasks, extra


def unplanned_exits(worker_procs) -> list[str]:
    """Pool children that died of something other than the test's SIGKILL."""
    out = []
    for wp in worker_procs:
        for line in wp.log().splitlines():
            if "died with" in line and "SIGKILL" not in line:
                out.append(f"{wp.name}: {line}")
    return out


def result(**figures) -> None:
    print("\nFAULT-RESULT " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# --- 1. chaos: SIGKILL pool children and whole workers during a drain --------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_children_and_workers_during_a_drain(fq, ledger, worker, redis_server):
    # Given a private Redis, 20,000 tasks and two workers of two processes with a 3 s lease
    n, lease = 20_000, 3
    server = redis_server()
    broker = redis.Redis.from_url(server.url)
    app = fq(server.url)
    args = ("-c", "2", "--lease-timeout", str(lease))
    live = [worker(*args, broker=server.url) for _ in range(2)]
    every = list(live)
    publish(app, "tests.record", [("chaos", i, 0.005) for i in range(n)])

    # When, every ~2 s until the drain ends, a random pool child is SIGKILLed, and
    # every third fault a whole worker (parent and children) is, and replaced
    rng = random.Random(20_000)
    child_kills = worker_kills = 0
    next_fault = time.monotonic() + 2
    t0 = time.monotonic()
    deadline = t0 + 300
    while ledger.hlen("chaos") < n:
        assert time.monotonic() < deadline, f"drain stalled: {ledger.hlen('chaos')}/{n} ran, {queue_state(broker)}"
        time.sleep(0.05)
        if time.monotonic() < next_fault:
            continue
        if (child_kills + worker_kills) % 3 == 2:
            victim = rng.choice(live)
            victim.kill_all()
            live.remove(victim)
            worker_kills += 1
            fresh = worker(*args, broker=server.url)
            live.append(fresh)
            every.append(fresh)
        else:
            kids = rng.choice(live).children()
            if kids:
                os.kill(rng.choice(kids), signal.SIGKILL)
                child_kills += 1
        next_fault = time.monotonic() + rng.uniform(1.5, 2.5)
    drain_s = time.monotonic() - t0
    wait_for(lambda: drained(broker), 60, 0.2, f"an empty queue and pending list ({queue_state(broker)})")

    # Then every task ran at least once, nothing went to the dead-letter stream,
    # the surviving workers are up, and no pool child died of anything but SIGKILL
    lost, dup_tasks, extra = account(ledger, "chaos", range(n))
    result(scenario=1, tasks=n, faults=f"{child_kills}child+{worker_kills}worker-SIGKILL", lost=len(lost),
           duplicates=extra, dup_tasks=dup_tasks, dead=queue_state(broker)["dead"], drain_s=f"{drain_s:.1f}")
    assert lost == []
    assert child_kills >= 3 and worker_kills >= 1, "the drain ended before enough faults were injected"
    assert dead_letters(broker) == []
    assert all(w.proc.poll() is None for w in live)
    assert unplanned_exits(every) == []


# --- 2. Redis SIGKILLed and restarted from its AOF mid-drain ----------------------------


@pytest.mark.timeout(300)
def test_redis_restart_mid_drain(fq, ledger, worker, redis_server):
    # Given a private Redis with appendfsync always, two workers and 8,000 tasks
    n, lease = 8_000, 10
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    broker = redis.Redis.from_url(server.url)
    app = fq(server.url)
    workers = [worker("-c", "2", "--lease-timeout", str(lease), broker=server.url) for _ in range(2)]
    publish(app, "tests.record", [("restart", i, 0.002) for i in range(n)])

    # When Redis is SIGKILLed with about a quarter done, and restarted 1 s later
    # on the same port and directory
    wait_for(lambda: ledger.hlen("restart") >= n // 4, 120, message="a quarter of the drain")
    server.kill()
    done_at_kill = ledger.hlen("restart")
    time.sleep(1)
    server.start()
    restarted = time.monotonic()

    # Then the workers reconnect and finish: every task ran, none was lost
    wait_for(lambda: ledger.hlen("restart") >= n, 180, 0.1,
             f"all tasks to run after the restart ({ledger.hlen('restart')}/{n})")
    recovery_s = time.monotonic() - restarted
    wait_for(lambda: drained(broker), 60, 0.2, "an empty queue and pending list")
    lost, dup_tasks, extra = account(ledger, "restart", range(n))
    result(scenario=2, tasks=n, faults="1redis-SIGKILL+AOF-restart", lost=len(lost), duplicates=extra,
           dup_tasks=dup_tasks, done_at_kill=done_at_kill, finish_after_restart_s=f"{recovery_s:.1f}")
    assert lost == []
    assert dead_letters(broker) == []
    assert all(w.proc.poll() is None for w in workers)
    assert all("Reconnected to Redis" in w.log() or "reconnected" in w.log() for w in workers)
    assert unplanned_exits(workers) == []


# --- 3. a worker host cut off from Redis (network namespace) -----------------------------


@pytest.fixture
def netns():
    """``netns()`` -> a fresh NetNamespace, deleted (with its links) after the test."""
    from tests.netns import NetNamespace, netns_available

    why = netns_available()
    if why:
        if os.environ.get("CI"):  # CI runs as root with iproute2: never let this hide
            pytest.fail(f"network namespaces unavailable in CI: {why}")
        pytest.skip(why)
    made = []

    def make():
        ns = NetNamespace()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_cut_off_from_redis(fq, worker, redis_server, netns):
    from tests.netns import NetnsWorker

    lease, k, seconds, partition, m = 4, 6, 2.0, 25, 30
    # Given a worker C inside a network namespace that reaches Redis over one
    # veth link and the ledger over another (a task's side effects do not go
    # through the broker's link), with a 4 s lease
    ns = netns()
    broker_link, ledger_link = ns.add_link(), ns.add_link()
    server = redis_server("--bind", "127.0.0.1", broker_link.root_ip, "--protected-mode", "no")
    ledger_server = redis_server("--bind", "127.0.0.1", ledger_link.root_ip, "--protected-mode", "no")
    ledger_url = f"redis://{ledger_link.root_ip}:{ledger_server.port}/0"
    led = redis.Redis(port=ledger_server.port)
    broker = redis.Redis.from_url(server.url)
    app = fq(server.url)
    c_name = f"cut-{os.getpid()}@test"
    c_env = {**os.environ, "FASTQ_BROKER_URL": f"redis://{broker_link.root_ip}:{server.port}/0",
             "FASTQ_TEST_LEDGER": ledger_url}
    # ... running the first of six 2 s tasks (it fetches slow tasks one at a time)
    ids = publish(app, "tests.record_result", [("cut", i, seconds) for i in range(k)])
    c = NetnsWorker(ns.name, ["-P", "solo", "--prefetch", "3", "--lease-timeout", str(lease)], c_env, c_name)
    try:
        c.wait_ready(broker)
        wait_for(lambda: pending_of(broker, c_name + "/") >= 1, 20, message="C to hold a task")
        time.sleep(0.5)
        assert led.hlen("cut") == 0  # the first one is running

        # When C's link is cut (its packets are dropped) while it runs the first task
        ns.cut(broker_link)
        cut_at = time.monotonic()
        b = worker("-c", "3", "--prefetch", "1", "--lease-timeout", str(lease), broker=server.url,
                   env={"FASTQ_TEST_LEDGER": ledger_url})

        # Then, once C's lease has lapsed, worker B (root namespace) runs them all
        def all_by_b():
            metas = app.backend.get_many(ids)
            return all(mt is not None and mt.hostname == b.name for mt in metas)

        wait_for(all_by_b, 60, 0.1, "B to run every task C held")
        recovered_s = time.monotonic() - cut_at
        assert b.stop() == 0  # from now on only C consumes

        # When the link comes back after 25 s (C's connection timed out meanwhile)
        # and more tasks are sent once C has reconnected
        time.sleep(max(0.0, partition - (time.monotonic() - cut_at)))
        ns.restore(broker_link)
        restored_at = time.monotonic()
        wait_for(lambda: "Reconnected to Redis at" in c.log(), 60, 0.2, "C to reconnect")
        more = publish(app, "tests.record_result", [("after", i, 0.3) for i in range(m)])

        # Then every one of them runs: nothing is left stuck on C ...
        def stuck():
            rows = []
            for s_ in STREAMS:
                rows += broker.xpending_range(s_, CONSUMER_GROUP, "-", "+", 100)
            return [(r["consumer"].decode(), r["time_since_delivered"], r["times_delivered"]) for r in rows]

        wait_for(lambda: led.hlen("after") >= m, 60, 0.1,
                 f"every task sent after the partition to run ({led.hlen('after')}/{m}; pending "
                 f"(consumer, idle ms, deliveries): {stuck()})")
        wait_for(lambda: drained(broker), 30, 0.2, f"an empty queue and pending list ({queue_state(broker)})")
        # ... no result B stored was replaced by C's late one, and nothing was lost
        metas = app.backend.get_many(ids)
        stale = [i for i, mt in zip(ids, metas) if mt is None or mt.hostname != b.name]
        late_copies = sum(broker.llen(f"fastq:r:{i}") - 1 for i in ids)
        lost, _, extra = account(led, "cut", range(k))
        lost2, _, extra2 = account(led, "after", range(m))
        assert all(r.get(timeout=10) is not None for r in (app.AsyncResult(i) for i in more))
        result(scenario=3, tasks=k + m, faults="1partition", partition_s=f"{restored_at - cut_at:.1f}",
               lost=len(lost) + len(lost2), duplicates=extra + extra2, c_ran_while_cut_off=extra,
               b_recovered_s=f"{recovered_s:.1f}", late_results_appended=late_copies,
               stale_results_visible=len(stale))
        assert stale == []
        assert lost == [] and lost2 == []
        assert dead_letters(broker) == []
        assert c.proc.poll() is None
    except BaseException:
        import sys

        sys.stderr.write(f"\n----- log of {c.name} -----\n{c.log()[-20000:]}\n")
        raise
    finally:
        c.kill_all()
        c._log.close()


# --- 4. poison messages ---------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_poison_messages_are_dead_lettered(fq, ledger, worker, redis_server):
    # Given a process-pool worker and good tasks mixed with poison: undecodable
    # bytes, unknown task names, and tasks that kill their pool process every time
    n, max_deliveries = 300, 5
    server = redis_server()
    broker = redis.Redis.from_url(server.url)
    app = fq(server.url)
    w = worker("-P", "process", "-c", "2", "--lease-timeout", "5", "--max-deliveries", str(max_deliveries),
               broker=server.url)
    exits, unknown = [], []
    for i in range(n):
        publish(app, "tests.record", [("poison", i)])
        if i % 100 == 50:
            broker.xadd(f"{BASE}:s", {"p": b"\xc1\xff not msgpack \x00"})
            unknown.append(app.send_task("tests.no_such_task", args=[i]).id)
            exits.append(app.tasks["tests.exit_process"].delay().id)

    # Then every good task runs, every bad message lands in the dead-letter
    # stream with its reason, and the worker stays up
    wait_for(lambda: ledger.hlen("poison") >= n and queue_state(broker)["dead"] >= 9, 180, 0.1,
             f"the good tasks to run and 9 dead letters ({ledger.hlen('poison')}/{n}, {queue_state(broker)})")
    wait_for(lambda: drained(broker), 60, 0.2, f"an empty queue and pending list ({queue_state(broker)})")
    dl = dead_letters(broker)
    reasons = collections.Counter(e["reason"].decode() for e in dl)
    lost, _, extra = account(ledger, "poison", range(n))
    deaths = w.log().count("died with exit code 1")
    result(scenario=4, tasks=n + 9, faults="3undecodable+3unknown+3exit_process", lost=len(lost),
           duplicates=extra, dead=dict(reasons), child_deaths=deaths)
    assert lost == []
    assert reasons == {"undecodable": 3, "unknown_task": 3, "max_deliveries": 3}
    good_in_dlq = [e for e in dl if b"tests.record" in e.get("p", b"")]
    assert good_in_dlq == []
    assert deaths == 3 * max_deliveries
    assert all(app.AsyncResult(i).state == "FAILURE" for i in exits + unknown)
    assert w.proc.poll() is None
    wait_for(lambda: len(w.children()) == 2, 20, message="the pool to be back to 2 children")


# --- 5. a task three times longer than the lease ------------------------------------------


@pytest.mark.parametrize("pool", ["solo", "process"])
@pytest.mark.timeout(120)
def test_task_longer_than_the_lease_runs_once(fq, ledger, worker, redis_server, pool):
    # Given a worker with a 2 s lease and an idle second worker ready to take
    # anything whose lease lapses
    lease = 2
    server = redis_server()
    broker = redis.Redis.from_url(server.url)
    app = fq(server.url)
    a = worker("-P", pool, "-c", "1", "--lease-timeout", str(lease), broker=server.url)
    # When a task that runs 3 leases is sent
    publish(app, "tests.record", [("long", "x", 3 * lease)])
    wait_for(lambda: pending_of(broker, a.name + "/") == 1, 20, message="A to take the task")
    b = worker("-P", "solo", "--lease-timeout", str(lease), broker=server.url)
    # Then it runs once: done, acknowledged, and never handed to B
    wait_for(lambda: ledger.hget("long", "x") is not None, 60, 0.1, "the task to finish")
    wait_for(lambda: drained(broker), 30, 0.1, "an empty queue and pending list")
    runs = int(ledger.hget("long", "x"))
    result(scenario=5, pool=pool, tasks=1, faults=f"task={3 * lease}s>lease={lease}s", lost=0, duplicates=runs - 1)
    assert runs == 1
    assert dead_letters(broker) == []
    assert a.proc.poll() is None and b.proc.poll() is None


# --- 6. warm shutdown with a full prefetch buffer --------------------------------------------


@pytest.mark.parametrize("pool", ["solo", "process"])
@pytest.mark.timeout(180)
def test_warm_shutdown_hands_back_prefetched_messages(fq, ledger, worker, redis_server, pool):
    # Given worker A (solo, or one pool process; prefetch 100) whose fetch window grew on 100
    # quick tasks, so that it holds a batch behind the slow task that follows them; its hold
    # watch is off (hold time 60 s), so only the warm stop hands them back. Worker B runs what
    # A does not hold. Leases are long (60 s): nothing comes back by lease expiry meanwhile.
    n, slow, lease, quick = 150, 12, 60, 100
    server = redis_server()
    broker = redis.Redis.from_url(server.url)
    app = fq(server.url)
    publish(app, "tests.record", [("quick", i) for i in range(quick)] + [("warm", "slow", slow)]
            + [("warm", i) for i in range(n)])
    a = worker("-P", pool, "-c", "1", "--prefetch", "100", "--lease-timeout", str(lease), broker=server.url,
               env={"FASTQ_TEST_HOLD_TIME": "60"})
    wait_for(lambda: ledger.hlen("quick") == quick and pending_of(broker, a.name + "/") > 20, 20,
             message="A to hold a batch behind its slow task")
    b = worker("-P", "solo", "--lease-timeout", str(lease), broker=server.url)

    def settled():  # B ran everything A does not hold
        before = ledger.hlen("warm")
        time.sleep(0.5)
        return ledger.hlen("warm") == before

    wait_for(settled, 30, message="B to run what A does not hold")
    held = n - ledger.hlen("warm")
    assert held >= 20 and not ledger.hexists("warm", "slow")  # A is in the slow task; what it holds waits

    # When A gets SIGTERM
    a.signal(signal.SIGTERM)
    t0 = time.monotonic()

    # Then the unstarted messages go back at once and B runs them while A is
    # still finishing its slow task
    first_run: list[float] = []
    ran_while_a_busy = [0]  # handed-back messages seen done while A's slow task still ran

    def snapshot():
        pipe = ledger.pipeline(transaction=True)
        pipe.hlen("warm")
        pipe.hexists("warm", "slow")
        ran, slow_done = pipe.execute()
        ran -= slow_done
        if ran and not first_run:
            first_run.append(time.monotonic() - t0)
        if not slow_done:
            ran_while_a_busy[0] = ran
        return ran >= n or slow_done

    wait_for(snapshot, slow + 30, 0.02, "the handed-back messages to run, or A's task to end")
    wait_for(lambda: snapshot() and first_run, 30, 0.02, "a handed-back message to run")
    ran_before_slow_ended, handed_back_s = ran_while_a_busy[0], first_run[0]
    # ... A finishes its task and exits 0, and nothing ran twice
    assert a.proc.wait(slow + 30) == 0
    wait_for(lambda: ledger.hlen("warm") >= n + 1, 60, 0.1, "every task to run")
    wait_for(lambda: drained(broker), 30, 0.1, "an empty queue and pending list")
    lost, _, extra = account(ledger, "warm", ["slow", *range(n)])
    result(scenario=6, pool=pool, tasks=n + 1, held_by_a=held, faults="1SIGTERM", lost=len(lost), duplicates=extra,
           ran_on_b_before_slow_task_ended=ran_before_slow_ended, handed_back_s=f"{handed_back_s:.1f}")
    assert lost == [] and extra == 0
    assert ran_before_slow_ended == n, (
        f"{n - ran_before_slow_ended}/{n} unstarted messages were held until A's {slow} s task ended: "
        f"the first ran on B {handed_back_s:.1f} s after SIGTERM")
    assert "Handed back" in a.log()
    assert b.proc.poll() is None
