"""The Celery app the benchmark's Celery workers run (``celery -A celery_tasks worker``).

Broker and result backend are both Redis, at BENCH_BROKER_URL (the same URL fastq gets).
The tasks do exactly what fastq bench's do: ``noop`` returns nothing and stores no result,
``echo`` returns its argument.

Settings, from Celery's "Optimizing" guide and settings reference:

- ``worker_prefetch_multiplier``: the guide says that for many short tasks a high
  multiplier is better (fewer round trips per task). BENCH_CELERY_PREFETCH overrides.
- ``task_acks_late`` stays False (the default): the message is acknowledged just before
  the task runs, which is Celery's fast path (and what the guide assumes for short tasks).
- ``worker_disable_rate_limits``: the guide's advice when no task uses rate limits.
- ``broker_connection_retry_on_startup``: only silences a Celery 5.3+ deprecation warning.
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "64")),
    worker_disable_rate_limits=True,
    task_acks_late=False,
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
