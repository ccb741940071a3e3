"""App for the retry / time-limit / recycling tests (``-A tests.apps.limits:app``)."""

import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ
from fastq.exceptions import SoftTimeLimitExceeded

app = FastQ("limits")
_hog = []




@app.task(name="limits.flaky", bind=True, max_retries=5)
def flaky(self, key, fails):
    n = ledger().hincrby(key, "tries", 1)
    if n <= fails:
        raise self.retry(exc=OSError(f"try {n} failed"), countdown=0.3)
    return {"tries": n, "retries": self.request.retries}


@app.task(name="limits.auto", autoretry_for=(OSError,), max_retries=2, retry_backoff=0.1, retry_jitter=False)
def auto(key):
    ledger().hincrby(key, "tries", 1)
    raise OSError("always fails")


@app.task(name="limits.forever", bind=True, max_retries=None)
def forever(self, key, until):
    n = ledger().hincrby(key, "tries", 1)
    if n < until:
        raise self.retry(countdown=0.05)
    return n


@app.task(name="limits.hang", time_limit=1.5)
def hang(key):
    ledger().hincrby(key, "runs", 1)
    while True:
        time.sleep(0.1)


@app.task(name="limits.soft", soft_time_limit=0.5)
def soft(key):
    try:
        while True:
            time.sleep(0.05)
    except SoftTimeLimitExceeded:
        ledger().hset(key, "cleaned", 1)
        return "cleaned up"


@app.task(name="limits.soft_raise", soft_time_limit=0.5)
def soft_raise():
    while True:
        time.sleep(0.05)


@app.task(name="limits.pid")
def pid():
    return os.getpid()


@app.task(name="limits.hog")
def hog(mb):
    _hog.append(bytearray(mb * 1024 * 1024))
    return os.getpid()
