"""The Celery app the benchmark's Celery workers run (``celery -A celery_tasks worker``).

Broker and result backend are both Redis, at BENCH_BROKER_URL (the same URL fastq gets).
The tasks do exactly what fastq bench's do: ``noop`` returns nothing and stores no result,
``echo`` returns its argument.

Settings, from Celery's "Optimizing" guide and settings reference:

- ``worker_prefetch_multiplier``: the guide says that for many short tasks a high
  multiplier is better (fewer round trips per task). BENCH_CELERY_PREFETCH overrides.
- ``task_acks_late`` stays False (the default): the message is acknowledged just before
  the task runs, which is Celery's fast path (and what the guide assumes for short tasks).
  The realistic scenario's workers set BENCH_CELERY_ACKS_LATE=1 and prefetch 1: the
  guide's advice for long tasks (see celery_bench.py).
- ``worker_disable_rate_limits``: the guide's advice when no task uses rate limits.
- ``broker_connection_retry_on_startup``: only silences a Celery 5.3+ deprecation warning.
"""

from __future__ import annotations

import os
import time

from _common import load_realistic
from celery import Celery

URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5")
#: The realistic scenario's CPU-bound body, from src/fastq/bench_realistic.py.
spin = load_realistic().spin

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "64")),
    worker_disable_rate_limits=True,
    task_acks_late=os.environ.get("BENCH_CELERY_ACKS_LATE") == "1",
    broker_connection_retry_on_startup=True,
    # Results of the e2e/latency runs are read at once; a short expiry keeps Redis small.
    result_expires=3600,
)


@app.task(name="bench.noop", ignore_result=True)
def noop(*args):
    """Does nothing and stores no result (the drain/enqueue/bulk task)."""
    return None


@app.task(name="bench.echo")
def echo(x):
    """Returns its argument (the e2e/latency task)."""
    return x


@app.task(name="bench.sleep")
def sleep_task(seconds):
    """An I/O-bound task (the realistic scenario): waits; returns its (start, end) wall times."""
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


@app.task(name="bench.cpu")
def cpu_task(seconds):
    """A CPU-bound task (the realistic scenario): spins for `seconds` of CPU time, with
    fastq's own spin(), so all three systems run the same loop."""
    t0 = time.time()
    spin(seconds)
    return t0, time.time()
