"""The Dramatiq broker and actors the benchmark's Dramatiq workers run
(``dramatiq dramatiq_tasks``).

Broker: ``RedisBroker`` at BENCH_BROKER_URL (the same URL fastq gets), with the default
middleware plus ``Results`` on a ``RedisBackend`` (Dramatiq's documented way to get
return values), and a tiny boot marker (below). The actors do exactly what fastq bench's
tasks do: ``noop`` returns nothing and stores no result, ``echo`` returns its argument.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5")
#: Incremented once by each worker process when it has booted (see BootMarker).
BOOT_KEY = "bench:dramatiq:booted"


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
