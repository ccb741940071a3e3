"""Coroutine tasks, with sync ones in the same app (``-A tests.apps.asyncapp:app``).

Tasks that record their runs write into the ledger DB (FASTQ_TEST_LEDGER), as
tests.apps.basic does.
"""

import asyncio
import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ

app = FastQ("asynctests")
app.conf.worker_lease_timeout = float(os.environ.get("FASTQ_TEST_LEASE", "30"))


@app.task(name="aio.add")
async def add(x, y):
    await asyncio.sleep(0)
    return x + y


@app.task(name="aio.sleep")
async def sleep(seconds, value=None):
    await asyncio.sleep(seconds)
    return value


@app.task(name="aio.sync_add")
def sync_add(x, y):
    return x + y


@app.task(name="aio.sync_sleep")
def sync_sleep(seconds, value=None):
    """Blocks its thread, not the event loop."""
    time.sleep(seconds)
    return value


@app.task(name="aio.fail")
async def fail(message="boom"):
    await asyncio.sleep(0)
    raise ValueError(message)


@app.task(name="aio.who", bind=True)
async def who(self):
    await asyncio.sleep(0)
    r = self.request
    return {"id": r.id, "retries": r.retries, "hostname": r.hostname, "queue": r.queue, "pid": os.getpid()}


@app.task(name="aio.record", ignore_result=True)
async def record(key, item, seconds=0.0):
    """Count one run of ``item`` in the ledger hash ``key`` (after ``seconds``)."""
    await asyncio.sleep(seconds)
    ledger().hincrby(key, item, 1)


@app.task(name="aio.crash", ignore_result=True)
async def crash(key, seconds=0.5):
    """Kills its own process after ``seconds`` (a C extension crashing, the OOM killer)."""
    ledger().hincrby(key, "crash", 1)
    await asyncio.sleep(seconds)
    os._exit(3)


@app.task(name="aio.soft", soft_time_limit=1)
async def soft(key, swallow=False):
    """Sleeps past its soft limit; marks in the ledger that it saw the cancellation."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ledger().hset(key, "cancelled", 1)
        if swallow:
            return "cleaned up"
        raise
    finally:
        ledger().hset(key, "finally", 1)
    return "slept"


@app.task(name="aio.hard", time_limit=1)
async def hard(key):
    """Ignores the cancellation at its hard limit: the task still fails."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ledger().hset(key, "cancelled", 1)
    return "ignored the limit"


@app.task(name="aio.sync_soft", soft_time_limit=1)
def sync_soft(key):
    from fastq.exceptions import SoftTimeLimitExceeded

    try:
        for _ in range(600):  # short sleeps: in a thread the exception lands between bytecodes
            time.sleep(0.1)
    except SoftTimeLimitExceeded:
        ledger().hset(key, "soft", 1)
        raise


@app.task(name="aio.flaky", bind=True, max_retries=5)
async def flaky(self, key, fails):
    """Fails ``fails`` times (counted in the ledger), then succeeds."""
    n = ledger().hincrby(key, "tries", 1)
    await asyncio.sleep(0)
    if n <= fails:
        raise self.retry(exc=OSError(f"try {n} failed"), countdown=0.2)
    return n


@app.task(name="aio.autoretry", autoretry_for=(OSError,), max_retries=2, default_retry_delay=0.1)
async def autoretry(key):
    ledger().hincrby(key, "tries", 1)
    await asyncio.sleep(0)
    raise OSError("always")


@app.task(name="aio.spawn")
async def spawn(x):
    """Sends a task from inside a coroutine task, without blocking the loop."""
    r = await add.delay_async(x, 1)
    return r.id


@app.task(name="aio.rated", rate_limit="5/s")
async def rated(key, item):
    ledger().hincrby(key, item, 1)
    return item


@app.task(name="aio.early", acks_late=False)
async def early(value):
    await asyncio.sleep(0)
    return value


@app.task(name="aio.started", track_started=True)
async def started(seconds):
    await asyncio.sleep(seconds)
    return "done"


@app.task(name="aio.sum_of")
async def sum_of(values):
    await asyncio.sleep(0)
    return sum(values)
