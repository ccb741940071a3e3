"""fastq behind Redis Sentinel: 1 master, 1 replica and 3 sentinels on loopback.

Workers and producers find the master through the sentinels and follow it
when it fails over mid-drain; sends confirmed by a replica
(``broker_wait_replicas=1``) are never lost. The test prints lost and
duplicated task counts.
"""

from __future__ import annotations

import pytest

from conftest import wait_for
from topologies import CountingProducer, LocalSentinel, _Server, _start

pytestmark = pytest.mark.scale


@pytest.fixture
def sentinel():
    s = LocalSentinel()
    yield s
    s.close()


@pytest.fixture
def sapp(sentinel):
    from tests.apps import basic

    old = dict(basic.app.conf)
    basic.app.conf.update(broker_url=sentinel.url, broker_wait_replicas=1, broker_wait_timeout=2.0,
                          broker_connection_retries=10)
    basic.app._reset()
    yield basic.app
    basic.app.conf.update(old)
    basic.app._reset()


def test_calls_and_results_go_through_sentinel(sentinel, sapp, worker):
    from tests.apps import basic

    worker("-c", "2", broker=sentinel.url)
    results = [basic.add.delay(i, 1) for i in range(100)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(100)]
    # The replica has the messages too: the master was asked to WAIT for it
    assert sentinel.replica.client.exists("fastq:{default}:s") == 1

    # And an asyncio producer finds the master through the sentinels too
    import asyncio

    from fastq import aio

    async def main():
        r = await basic.add.delay_async(20, 22)
        value = await r.get_async(timeout=30)
        await aio.aclose()
        return value

    assert asyncio.run(main()) == 42


def test_failover_mid_drain_workers_and_producers_follow_the_new_master(sentinel, sapp, worker, ledger):
    from tests.apps import basic

    # Given two workers draining while a producer sends 2000 tasks, each confirmed by the replica
    for _ in range(2):
        worker("-c", "2", broker=sentinel.url, env={"FASTQ_TEST_LEASE": "5"})
    producer = CountingProducer(basic.record_order, 2000)
    producer.start()
    wait_for(lambda: ledger.hlen("runs") >= 300, 90, message="300 runs")
    # When the master dies
    old_port = sentinel.master.port
    sentinel.master.kill()
    # Then the sentinels promote the replica
    wait_for(lambda: sentinel.current_master_port() != old_port, 60, interval=0.2, message="the failover")
    new_port = sentinel.current_master_port()
    # (the dead master comes back as a replica of the new one, so sends can be confirmed again)
    sentinel.master = _Server(old_port, _start(["--port", str(old_port), "--bind", "127.0.0.1", "--save", "",
                                                "--appendonly", "no", "--replicaof", "127.0.0.1", str(new_port),
                                                "--dir", str(sentinel.dir)], sentinel.dir, "old-master"))
    producer.join(300)
    assert not producer.is_alive()

    # And every send acknowledged to the producer runs
    print("\n" + producer.report(ledger, "sentinel failover mid-drain"))
    assert len(producer.acknowledged) > 1500


def test_sentinel_urls_say_what_is_wrong():
    from fastq.broker.connect import parse_url, safe_url
    from fastq.exceptions import ImproperlyConfigured

    t = parse_url("sentinel://:s3cret@h1:26379;sentinel://h2:26380/2?master=mymaster&sentinel_password=x")
    assert (t.kind, t.hosts, t.db, t.password, t.options["master"]) == (
        "sentinel", [("h1", 26379), ("h2", 26380)], 2, "s3cret", "mymaster")
    assert "s3cret" not in safe_url(t.url)
    with pytest.raises(ImproperlyConfigured, match=r"\?master=mymaster"):
        parse_url("sentinel://h1:26379/0")
    with pytest.raises(ImproperlyConfigured, match="bad port"):
        parse_url("sentinel://h1:port/0?master=m")
