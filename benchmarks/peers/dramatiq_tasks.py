"""The Dramatiq broker and actors the benchmark's Dramatiq workers run
(``dramatiq dramatiq_tasks``).

Broker: ``RedisBroker`` at BENCH_BROKER_URL (the same URL fastq gets), with the default
middleware plus ``Results`` on a ``RedisBackend`` (Dramatiq's documented way to get
return values), and a tiny boot marker (below). The actors do exactly what fastq bench's
tasks do: ``noop`` returns nothing and stores no result, ``echo`` returns its argument;
``bench.sleep`` and ``bench.cpu`` (the realistic scenario) return their (start, end) wall
times through the same Results middleware.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from _common import load_realistic
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5")
#: Incremented once by each worker process when it has booted (see BootMarker).
BOOT_KEY = "bench:dramatiq:booted"
#: The realistic scenario's CPU-bound body, from src/fastq/bench_realistic.py.
spin = load_realistic().spin


class BootMarker(Middleware):
    """Counts booted worker processes in Redis, so the runner knows every process is up
    before it times e2e/latency. Dramatiq has no remote-control ping like Celery's; this
    hook runs once per process, outside any task, so the tasks' work is unchanged."""

    def after_worker_boot(self, broker, worker):
        redis.Redis.from_url(URL).incr(BOOT_KEY)


broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
broker.add_middleware(BootMarker())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.noop")
def noop(*args):
    """Does nothing and stores no result (the drain/enqueue/bulk task)."""
    return None


@dramatiq.actor(actor_name="bench.echo", store_results=True)
def echo(x):
    """Returns its argument (the e2e/latency task)."""
    return x


@dramatiq.actor(actor_name="bench.sleep", store_results=True)
def sleep_task(seconds):
    """An I/O-bound task (the realistic scenario): waits; returns its (start, end) wall times."""
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


@dramatiq.actor(actor_name="bench.cpu", store_results=True)
def cpu_task(seconds):
    """A CPU-bound task (the realistic scenario): spins for `seconds` of CPU time, with
    fastq's own spin(), so all three systems run the same loop."""
    t0 = time.time()
    spin(seconds)
    return t0, time.time()
