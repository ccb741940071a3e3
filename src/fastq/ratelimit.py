"""Rate limits: per task (``@app.task(rate_limit="100/s")``) and per queue
(``app.conf.queue_rate_limits = {"mail": "50/s"}``).

Cluster-wide by default: one token bucket in Redis per task name (and per
limited queue), shared by every worker on every host (``rate_claim.lua``). A
consumer claims a few tokens at a time into a local ``TokenBucket`` (the
compiled core's), so a limit costs far less than a round trip per task. With
``rate_limit_scope="worker"`` each consumer has its own refilling bucket
instead (Celery's behaviour).

A message that finds no token is not run and does not block anything: it is
moved atomically to the delayed set (``retry.lua``, same payload), at the next
free slot for that limit, so a backlog comes back spread out at the limited
rate instead of all at once. Limits changed at run time
(``app.control.rate_limit`` / ``fastq control rate_limit``) are stored in Redis:
the bucket uses the new rate at once, and consumers pick up which tasks are
limited within a second.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import time

from ._speedups import TokenBucket
from .broker.keys import logical_queue
from .options import parse_rate

#: Share of a second's worth of tokens a consumer claims at once.
CLAIM_SECONDS = 0.05
#: Seconds between reads of the run-time overrides.
REFRESH_INTERVAL = 1.0
#: Bucket size, in seconds of the rate: the most a one-second window can exceed the rate by.
BURST_SECONDS = 0.1


def capacity_for(rate: float) -> float:
    return max(1.0, rate * BURST_SECONDS)


def set_rate_limit(app, task_name: str, rate_limit) -> float | None:
    """Change a task's limit for the whole cluster (None or 0 removes it)."""
    rate = None if rate_limit in (None, 0, "0") else parse_rate(rate_limit, f"task {task_name!r}")
    app.broker.store_rate_limit(task_name, rate)
    return rate


class Limiter:
    """The rate limits one consumer applies."""

    def __init__(self, app, queue_names: list[str]) -> None:
        conf = app.conf
        self.app = app
        self.broker = app.broker
        self.scope = conf.get("rate_limit_scope", "cluster")
        #: Local buckets by (kind, name): claimed tokens (cluster scope) or the whole bucket (worker scope).
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.next_slot: dict[tuple[str, str], float] = {}
        self.queue_rates = {
            q: parse_rate(r, f"queue_rate_limits[{q!r}]") for q, r in (conf.get("queue_rate_limits") or {}).items()
        }
        # A shard ("default~3") shares its queue's limit (and bucket).
        self.limited_queues = {q for q in queue_names if self.queue_rates.get(logical_queue(q))}
        self._refreshed = 0.0
        self._defaults = {name: task.rate for name, task in app.tasks.items()}

    def refresh(self) -> None:
        """Apply run-time overrides (at most once per REFRESH_INTERVAL)."""
        now = time.monotonic()
        if now - self._refreshed < REFRESH_INTERVAL:
            return
        self._refreshed = now
        tasks = self.app.tasks
        for name, rate in self.broker.rate_limit_overrides().items():
            task = tasks.get(name)
            if task is None:
                continue
            if task.rate != rate:
                task.rate = rate
                task._refresh()
                self.buckets.pop(("task", task.name), None)

    def _acquire(self, key: tuple[str, str], rate: float, scope: str) -> float:
        """0.0 when a token was taken, else seconds until one may be there."""
        bucket = self.buckets.get(key)
        if scope == "worker":
            if bucket is None or bucket.rate != rate:
                bucket = self.buckets[key] = TokenBucket(rate, capacity_for(rate))
            return 0.0 if bucket.consume(1.0) else bucket.expected_wait(1.0)
        claim = max(1.0, min(rate * CLAIM_SECONDS, capacity_for(rate)))
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(rate, claim, False)
        if bucket.consume(1.0):
            return 0.0
        granted, wait_ms = self.broker.claim_rate(key[0], key[1], rate, capacity_for(rate), int(claim))
        if granted:
            bucket.add(float(granted))
            if bucket.consume(1.0):
                return 0.0
        return max(wait_ms / 1000.0, 0.001)

    def acquire(self, task, queue: str) -> float:
        """Take the tokens a message of ``task`` from ``queue`` needs; 0.0 when it may
        run now, else the earliest delay after which to try again."""
        if task.rate:
            key = ("task", task.name)
            wait = self._acquire(key, task.rate, getattr(task, "rate_limit_scope", None) or self.scope)
            if wait:
                return self._slot(key, task.rate, wait)
        queue = logical_queue(queue)
        qrate = self.queue_rates.get(queue)
        if qrate:
            key = ("queue", queue)
            wait = self._acquire(key, qrate, self.scope)
            if wait:
                if task.rate:  # give back the task token we took
                    self.buckets["task", task.name].add(1.0)
                return self._slot(key, qrate, wait)
        return 0.0

    def _slot(self, key: tuple[str, str], rate: float, wait: float) -> float:
        """The delay for the next deferred message of this limit: deferred messages
        take successive slots 1/rate apart, so they come back spread out."""
        now = time.time()
        slot = max(now + wait, self.next_slot.get(key, 0.0))
        self.next_slot[key] = slot + 1.0 / rate
        return slot - now
