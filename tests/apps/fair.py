"""App for the fairness tests (``-A tests.apps.fair:app``): fair queues with groups."""

import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ

app = FastQ("fair")
app.conf.task_queues = {
    # a small window, so a test's backlog is mostly held back by the gate
    "fair": {"fair_tenants": True, "fair_window": int(os.environ.get("FAIR_WINDOW", "20"))},
    "capped": {"fair_tenants": True, "tenant_concurrency": 2},
    "limited": {"fair_tenants": True, "tenant_rate_limit": "10/s"},
    "plain": None,
}
if os.environ.get("FAIR_BAD"):  # a worker start with a bad setting: FAIR_BAD=option=value (a Python literal)
    import ast

    _opt, _value = os.environ["FAIR_BAD"].split("=", 1)
    app.conf.task_queues["capped"][_opt] = ast.literal_eval(_value)

# Records the most tasks of one group running at once (INCR at start, DECR at the end).
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


@app.task(name="fair.work", queue="fair", ignore_result=True)
def work(tenant, seconds=0.0):
    if seconds:
        time.sleep(seconds)
    ledger().incr(f"done:{tenant}")


@app.task(name="fair.seq", queue="fair", ignore_result=True)
def seq(tenant, i, seconds=0.0):
    """Logs the order of completion (tenant:i)."""
    if seconds:
        time.sleep(seconds)
    led = ledger()
    led.rpush("order", f"{tenant}:{i}")
    led.hincrby(f"runs:{tenant}", str(i), 1)


@app.task(name="fair.concurrent", queue="capped", ignore_result=True)
def concurrent(tenant, seconds=0.05):
    led = ledger()
    led.eval(_ENTER, 2, f"running:{tenant}", f"max:{tenant}")
    try:
        time.sleep(seconds)
    finally:
        led.decr(f"running:{tenant}")
        led.incr(f"done:{tenant}")


@app.task(name="fair.count", queue="capped", ignore_result=True)
def count(tenant, i, seconds=0.0):
    """Counts runs per task index (nothing lost, duplicates visible)."""
    if seconds:
        time.sleep(seconds)
    ledger().hincrby(f"runs:{tenant}", str(i), 1)


@app.task(name="fair.stamp", queue="limited", ignore_result=True)
def stamp(tenant):
    ledger().rpush(f"starts:{tenant}", f"{time.time():.6f}")


@app.task(name="fair.retrying", queue="capped", bind=True, max_retries=3, ignore_result=True)
def retrying(self, tenant, key):
    n = ledger().hincrby(f"tries:{tenant}", key, 1)
    if n < 3:
        raise self.retry(countdown=0.1)
    ledger().incr(f"done:{tenant}")


@app.task(name="fair.plain", queue="plain")
def plain():
    return "ok"


@app.task(name="fair.whoami", queue="fair", bind=True, ignore_result=True)
def whoami(self, tag):
    """Records the group the message carried (its headers)."""
    ledger().rpush("groups", f"{tag}={(self.request.headers or {}).get('fastq-tenant')}")
