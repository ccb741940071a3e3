"""The app the tests' workers run (``-A tests.apps.basic:app``).

The broker comes from FASTQ_BROKER_URL (set by the fixtures). Tasks that record
their runs write into a ledger kept in another Redis DB (FASTQ_TEST_LEDGER), so
fault tests can count executions outside the broker's keys.
"""

import json
import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ
from fastq.exceptions import Reject

app = FastQ("tests")
app.conf.worker_lease_timeout = float(os.environ.get("FASTQ_TEST_LEASE", "30"))
# A test that needs a worker to hold a batch behind a slow task turns the hold watch off.
app.conf.worker_hold_time = float(os.environ.get("FASTQ_TEST_HOLD_TIME", "0.02"))
# The scale-out tests shard queues and ask for replica acknowledgements.
app.conf.queue_shards = json.loads(os.environ.get("FASTQ_TEST_SHARDS", "null"))
app.conf.broker_wait_replicas = int(os.environ.get("FASTQ_TEST_WAIT_REPLICAS", "0"))



@app.task(name="tests.add")
def add(x, y):
    return x + y


@app.task(name="tests.noop", ignore_result=True)
def noop(*args, **kwargs):
    return None


@app.task(name="tests.echo")
def echo(value):
    return value


@app.task(name="tests.fail")
def fail(message="boom"):
    raise ValueError(message)


@app.task(name="tests.sleep")
def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


@app.task(name="tests.who", bind=True)
def who(self):
    r = self.request
    return {"id": r.id, "retries": r.retries, "hostname": r.hostname, "queue": r.queue, "pid": os.getpid(),
            "delivery_count": r.delivery_count}


@app.task(name="tests.record", ignore_result=True)
def record(key, item, seconds=0.0):
    """Count one run of ``item`` in the ledger hash ``key``."""
    if seconds:
        time.sleep(seconds)
    ledger().hincrby(key, item, 1)


@app.task(name="tests.record_result")
def record_result(key, item, seconds=0.0):
    if seconds:
        time.sleep(seconds)
    ledger().hincrby(key, item, 1)
    return item


@app.task(name="tests.exit_process")
def exit_process(code=1):
    os._exit(code)


@app.task(name="tests.system_exit")
def system_exit():
    raise SystemExit(3)


@app.task(name="tests.keyboard_interrupt")
def keyboard_interrupt():
    raise KeyboardInterrupt()


@app.task(name="tests.unserializable")
def unserializable():
    return object()


@app.task(name="tests.reject")
def reject():
    raise Reject("not for me")


@app.task(name="tests.flaky", bind=True, max_retries=5)
def flaky(self, key, fails):
    """Fails ``fails`` times (counted in the ledger), then succeeds."""
    n = ledger().hincrby(key, "tries", 1)
    if n <= fails:
        raise self.retry(exc=OSError(f"try {n} failed"), countdown=0.2)
    return n


@app.task(name="tests.autoretry", autoretry_for=(OSError,), max_retries=2, default_retry_delay=0.1)
def autoretry(key):
    ledger().hincrby(key, "tries", 1)
    raise OSError("always")


@app.task(name="tests.started", track_started=True)
def started(seconds):
    time.sleep(seconds)
    return "done"


@app.task(name="tests.early_ack", acks_late=False)
def early_ack(key):
    ledger().hincrby(key, "runs", 1)
    return "ok"


@app.task(name="tests.record_order", bind=True, ignore_result=True)
def record_order(self, seq):
    """Append ``seq`` to the ledger list of the (physical) queue it came from: order per shard."""
    ledger().rpush(f"order:{self.request.queue}", seq)
    ledger().hincrby("runs", seq, 1)


@app.task(name="tests.span", ignore_result=True)
def span(key, item, seconds=0.0):
    """Sleep ``seconds``; append [item, start, end, pid] to the ledger list ``key``."""
    t0 = time.time()
    if seconds:
        time.sleep(seconds)
    ledger().rpush(key, json.dumps([item, t0, time.time(), os.getpid()]))


@app.task(name="tests.hold_once")
def hold_once(key):
    """Mark ``key`` started and hold the first delivery for ten minutes; a redelivery returns at once."""
    if ledger().hsetnx(key, "started", os.getpid()):
        time.sleep(600)
    ledger().hincrby(key, "finished", 1)
    return "done"


@app.task(name="tests.big_result")
def big_result(size):
    """A result of ``size`` bytes (memory-pressure tests)."""
    return "x" * size


@app.task(name="tests.stamp_time", ignore_result=True)
def stamp_time(key, item):
    """Record when it ran, on Redis's clock (the ledger's server, on the tests' host)."""
    secs, usecs = ledger().time()
    ledger().hset(key, item, secs + usecs / 1e6)

