"""Broker URLs (one server, cluster, sentinel), password masking, and queue_shards checks."""

from __future__ import annotations

import pytest

from fastq import FastQ
from fastq.broker.connect import parse_url, safe_url
from fastq.exceptions import ImproperlyConfigured


def test_cluster_urls_parse_every_host_user_and_password():
    t = parse_url("rediss+cluster://app:p%40ss@h1:7000,h2:7001,[::1]:7002/0?ssl_cert_reqs=none")
    assert t.kind == "cluster" and t.ssl
    assert t.hosts == [("h1", 7000), ("h2", 7001), ("::1", 7002)]
    assert (t.username, t.password) == ("app", "p@ss")


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://h1:7000/2", "only database 0"),
    ("redis+cluster://h1:x/0", "bad port"),
    ("redis+cluster:///0", "names no host"),
    ("amqp://h1:5672//", "unknown scheme 'amqp'"),
    ("h1:6379", "has no scheme"),
])
def test_bad_broker_urls_say_what_is_wrong(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_url(url)


@pytest.mark.parametrize("url", [
    "redis://u:s3cret@h:6379/0",
    "redis+cluster://u:s3cret@h1:7000,h2:7001/0",
    "sentinel://:s3cret@h1:26379;sentinel://:s3cret@h2:26379/0?master=m",
    "redis://:p,s3cret@word@localhost:6379/0",  # a raw "@" in the password
    "redis://user:s3cret@@localhost:6379/0",
])
def test_passwords_are_masked_in_every_url_form(url):
    masked = safe_url(url)
    assert "s3cret" not in masked and "word" not in masked and ":********@" in masked


def test_masking_keeps_the_rest_of_the_url():
    assert safe_url("redis://:p,ass@word@localhost:6379/0") == "redis://:********@localhost:6379/0"
    assert safe_url("sentinel://:a@h1:26379;sentinel://:b@h2:26379/0") == \
        "sentinel://:********@h1:26379;sentinel://:********@h2:26379/0"
    assert safe_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


@pytest.mark.parametrize(("shards", "message"), [
    ({"default": 0}, "from 1 to 1024"),
    ({"default": "8"}, "from 1 to 1024"),
    ({"bad name": 2}, "invalid queue name"),
    (["default"], "must be a dict"),
])
def test_bad_queue_shards_are_refused_when_the_app_connects(redis_url, shards, message):
    # a value of the wrong type fails when set; bad contents when the broker is built
    with pytest.raises(ImproperlyConfigured, match=message):
        app = FastQ("shards", broker=redis_url, queue_shards=shards)
        app.broker  # noqa: B018 - the broker is built (and the setting checked) on first use


def test_a_sharded_queue_on_one_server_is_sent_round_robin_and_drained(redis_url, r, worker, ledger):
    from tests.apps import basic

    basic.app.conf.update(broker_url=redis_url, queue_shards={"default": 4})
    basic.app._reset()
    try:
        for seq in range(40):
            basic.record_order.delay(seq)
        assert [r.xlen(f"fastq:{{default~{i}}}:s") for i in range(4)] == [10, 10, 10, 10]
        worker("-P", "solo", env={"FASTQ_TEST_SHARDS": '{"default": 4}'})
        from conftest import wait_for

        wait_for(lambda: ledger.hlen("runs") == 40, 30, message="40 runs")
        assert basic.app.broker.queue_stats("default")["waiting"] == 0
    finally:
        basic.app.conf.update(queue_shards=None)
        basic.app._reset()
