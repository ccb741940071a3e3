"""Tasks for bench_ratelimit.py (``-A ratelimit_tasks:app``, run from benchmarks/)."""

import os
import time

import redis

from fastq import FastQ

app = FastQ("rlbench")
RATE = os.environ.get("RL_RATE", "200/s")
_r = None


@app.task(name="rl.tick", ignore_result=True, rate_limit=RATE)
def tick():
    global _r
    if _r is None:
        _r = redis.Redis.from_url(os.environ["FASTQ_BROKER_URL"])
    _r.rpush("rl:starts", f"{time.time():.6f}")
