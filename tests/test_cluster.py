"""fastq on a real Redis Cluster (3 masters + 3 replicas on loopback ports).

The core, reliability and workflow scenarios run against the cluster: results
spread over the masters, a sharded queue spread over nodes and FIFO per shard,
rate limits, delayed tasks, leases after a worker dies, chords, beat
leadership, and a master failover mid-drain with ``broker_wait_replicas=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import ROOT, fastq_command, wait_for
from fastq.exceptions import BrokerError
from topologies import CountingProducer, LocalCluster

pytestmark = pytest.mark.scale


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(masters=3, replicas=1)
    yield c
    c.close()


@pytest.fixture
def capp(cluster, ledger):
    """tests.apps.basic's app on the cluster, every master flushed."""
    from tests.apps import basic

    for s in cluster.masters():
        s.client.flushall()
    old = dict(basic.app.conf)
    basic.app.conf.broker_url = cluster.url
    basic.app.conf.queue_shards = None
    basic.app.conf.broker_wait_replicas = 0
    basic.app._reset()
    yield basic.app
    basic.app.conf.update(old)
    basic.app._reset()


def cluster_worker(worker, cluster, *args, env=None):
    return worker(*args, broker=cluster.url, env=env)


def keys_per_master(cluster, pattern: str) -> dict[int, int]:
    return {s.port: len(list(s.client.scan_iter(pattern, count=1000))) for s in cluster.masters()}


def test_core_calls_results_and_workflows_on_a_cluster(cluster, capp, worker):
    from tests.apps import basic

    from fastq import chain, chord, group

    # Given a worker on the cluster
    cluster_worker(worker, cluster, "-c", "2")
    # When tasks, a countdown, a retrying task, a chain, a group and a chord are sent
    results = [basic.add.delay(i, i) for i in range(300)]
    later = basic.add.apply_async((20, 22), countdown=1)
    flaky = basic.flaky.delay("flaky", 2)
    steps = chain(basic.add.s(1, 1), basic.add.s(2), basic.add.s(3)).apply_async()
    grp = group(basic.add.s(i, 1) for i in range(20)).apply_async()
    ch = chord([basic.add.s(i, i) for i in range(30)])(basic.echo.s())
    # Then every result arrives, right
    assert [r.get(timeout=60) for r in results] == [2 * i for i in range(300)]
    assert later.get(timeout=30) == 42
    assert flaky.get(timeout=30) == 3  # failed twice, retried, then succeeded
    assert steps.get(timeout=30) == 7
    assert grp.get(timeout=30) == [i + 1 for i in range(20)]
    assert sorted(ch.get(timeout=30)) == sorted(2 * i for i in range(30))
    # And results are spread over every master (their keys carry no hash tag)
    spread = keys_per_master(cluster, "fastq:r:*")
    assert all(n > 0 for n in spread.values()), spread


def test_async_producers_send_and_wait_on_a_cluster(cluster, capp, worker):
    import asyncio

    from tests.apps import basic

    from fastq import aio

    capp.conf.queue_shards = {"default": 3}
    capp._reset()
    cluster_worker(worker, cluster, "-P", "solo", env={"FASTQ_TEST_SHARDS": json.dumps({"default": 3})})

    async def main():
        results = [await basic.add.delay_async(i, 1) for i in range(30)]
        values = [await r.get_async(timeout=30) for r in results]
        await aio.aclose()
        return values

    # Given an asyncio producer on the cluster / Then its sends spread over the shards and every result arrives
    assert asyncio.run(main()) == [i + 1 for i in range(30)]


def test_fair_queues_serve_groups_on_a_cluster(cluster, capp, worker, ledger):
    from tests.apps import fair

    fair.app.conf.broker_url = cluster.url
    fair.app._reset()
    # Given tenant A's 600 tasks, then tenant B's 20, on a fair queue (its gate scripts run in the queue's slot)
    fair.app.send_many(fair.work.s("A", 0.002).set(tenant_key="A") for _ in range(600))
    for _ in range(20):
        fair.work.apply_async(("B",), tenant_key="B")
    worker("-c", "2", "-Q", "fair", app="tests.apps.fair:app", broker=cluster.url)
    # Then B's tasks all run while most of A's wait, and then everything runs
    wait_for(lambda: int(ledger.get("done:B") or 0) == 20, 60, message="B's 20 tasks")
    assert int(ledger.get("done:A") or 0) < 400
    wait_for(lambda: int(ledger.get("done:A") or 0) == 600, 90, message="A's 600 tasks")


def test_a_sharded_queue_spreads_over_masters_and_keeps_fifo_per_shard(cluster, capp, worker, ledger):
    from tests.apps import basic

    capp.conf.queue_shards = {"default": 6}
    capp._reset()
    # Given 600 tasks sent in order to a queue of 6 shards, before any worker runs
    for seq in range(600):
        basic.record_order.delay(seq)
    # Then the shards live on different masters
    shard_nodes = {cluster.server_for_key(f"fastq:{{default~{i}}}:s").port for i in range(6)}
    assert len(shard_nodes) >= 2, shard_nodes
    stats = capp.broker.queue_stats("default")
    assert stats["waiting"] == 600 and stats["shards"] == 6
    # When one single-threaded worker drains it
    cluster_worker(worker, cluster, "-P", "solo", env={"FASTQ_TEST_SHARDS": json.dumps({"default": 6})})
    wait_for(lambda: ledger.hlen("runs") == 600, 90, message="600 runs")
    # Then every task ran once, each shard got a share, and each shard ran in send order
    assert set(ledger.hvals("runs")) == {b"1"}
    per_shard = {i: [int(x) for x in ledger.lrange(f"order:default~{i}", 0, -1)] for i in range(6)}
    assert all(len(v) == 100 for v in per_shard.values()), {k: len(v) for k, v in per_shard.items()}
    for order in per_shard.values():
        assert order == sorted(order)
    # And `fastq queues` shows the queue once, its shards summed
    out = subprocess.run([*fastq_command(), "-A", "tests.apps.basic:app", "queues", "--json"], cwd=ROOT,
                         env={**os.environ, "FASTQ_BROKER_URL": cluster.url,
                              "FASTQ_TEST_SHARDS": json.dumps({"default": 6})},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["queue"] == "default"]
    assert len(rows) == 1 and rows[0]["waiting"] == 0


def test_a_worker_killed_mid_drain_loses_nothing_on_a_cluster(cluster, capp, worker, ledger):
    from tests.apps import basic

    env = {"FASTQ_TEST_LEASE": "3", "FASTQ_TEST_SHARDS": json.dumps({"default": 3})}
    capp.conf.queue_shards = {"default": 3}
    capp._reset()
    # Given two workers draining 1500 slow-ish tasks over 3 shards
    doomed = cluster_worker(worker, cluster, "-c", "2", env=env)
    cluster_worker(worker, cluster, "-c", "2", env=env)
    capp.send_many([basic.record_order.s(seq) for seq in range(1500)])
    wait_for(lambda: ledger.hlen("runs") >= 200, 60, message="200 runs")
    # When one worker and its pool die at once
    doomed.kill_all()
    # Then the other worker runs the rest, including what the dead one held (after its lease)
    wait_for(lambda: ledger.hlen("runs") == 1500, 120, message="every task to run")
    dups = sum(int(v) - 1 for v in ledger.hvals("runs"))
    print(f"\ncluster, worker SIGKILLed mid-drain: 1500 tasks, lost 0, duplicated {dups}")


def test_rate_limits_and_beat_leadership_hold_on_a_cluster(cluster, capp, worker, ledger, tmp_path):
    from tests.apps import routing

    # Given two workers of two processes each on a task limited to 5/s cluster-wide
    limited_workers = [worker("-c", "2", "--prefetch", "10", app="tests.apps.routing:app", broker=cluster.url)
                       for _ in range(2)]
    routing.app.conf.broker_url = cluster.url
    routing.app._reset()
    n = 30
    routing.app.send_many(routing.limited.s("lim", i) for i in range(n))
    wait_for(lambda: ledger.llen("lim") >= n, 60, message="limited tasks")
    stamps = sorted(float(e.split(b"|")[1]) for e in ledger.lrange("lim", 0, -1))
    # Then together they ran no faster than the limit (burst: a bucket of 1 token)
    assert len(stamps) == n
    assert stamps[-1] - stamps[0] >= (n - 2) / 5 * 0.9, stamps[-1] - stamps[0]
    for w in limited_workers:  # they would take the beat app's messages from the default queue
        w.kill_all()
    # When two beat processes run a 1-second schedule on the cluster for 8 s
    env = {**os.environ, "FASTQ_BROKER_URL": cluster.url}
    worker("-P", "solo", app="tests.apps.beatapp:app", broker=cluster.url)
    beats = [subprocess.Popen([*fastq_command(), "beat", "-A", "tests.apps.beatapp:app"], cwd=ROOT, env=env,
                              stdout=open(tmp_path / f"beat{i}.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True) for i in range(2)]
    try:
        time.sleep(8)
    finally:
        for b in beats:
            b.terminate()
            b.wait(20)
    time.sleep(2)
    # Then every run was sent once (one leader at a time), and runs were sent
    ticks = {int(k): int(v) for k, v in ledger.hgetall("ticks").items()}
    assert len(ticks) >= 4, ticks
    assert set(ticks.values()) == {1}, ticks


@pytest.fixture
def failover_cluster():
    c = LocalCluster(masters=3, replicas=1)
    yield c
    c.close()


def test_master_failover_mid_drain_loses_nothing_acknowledged(failover_cluster, worker, ledger):
    from tests.apps import basic

    cluster = failover_cluster
    shards = {"default": 6}
    env = {"FASTQ_TEST_SHARDS": json.dumps(shards), "FASTQ_TEST_LEASE": "5"}
    old = dict(basic.app.conf)
    basic.app.conf.update(broker_url=cluster.url, queue_shards=shards, broker_wait_replicas=1,
                          broker_wait_timeout=2.0, broker_connection_retries=8)
    basic.app._reset()
    try:
        # Given two workers draining while a producer sends 3000 tasks, each send
        # confirmed by a replica (broker_wait_replicas=1)
        cluster_worker(worker, cluster, "-c", "2", env=env)
        cluster_worker(worker, cluster, "-c", "2", env=env)
        producer = CountingProducer(basic.record_order, 3000)
        producer.start()
        wait_for(lambda: ledger.hlen("runs") >= 500, 90, message="500 runs")
        # When the master of a shard is SIGKILLed mid-drain
        victim = cluster.server_for_key("fastq:{default~0}:s")
        victim.kill()
        cluster.wait_failover(victim, "fastq:{default~0}:s")
        # (until the dead node is replaced, its old replica - now master - has no replica of
        # its own, so sends to it cannot be confirmed and raise BrokerError after 2 s)
        victim.restart()
        wait_for(cluster._healthy, 60, interval=0.2, message="the restarted node to rejoin as a replica")
        producer.join(300)
        assert not producer.is_alive()
        # Then every send acknowledged to the producer runs
        print("\n" + producer.report(ledger, "cluster master failover mid-drain"))
        assert len(producer.acknowledged) > 2000
    finally:
        basic.app.conf.update(old)
        basic.app._reset()


def test_cluster_urls_reach_the_cluster_and_bad_ones_say_why(cluster):
    from fastq import FastQ
    from fastq.exceptions import ImproperlyConfigured

    app = FastQ("urls", broker=cluster.url.replace("redis+cluster://", "redis+cluster://default:@"))
    assert app.broker.client.ping()
    with pytest.raises(ImproperlyConfigured, match="only database 0"):
        _ = FastQ("bad", broker=cluster.url + "/3").broker
    with pytest.raises(BrokerError, match=r"Redis Cluster at redis\+cluster://127.0.0.1:1 is unreachable"):
        _ = FastQ("down", broker="redis+cluster://127.0.0.1:1").broker
