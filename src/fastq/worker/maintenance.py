"""Maintenance every worker does, off the task path, on its own connection.

- renew the leases of everything its consumers hold (every lease/3), so a task
  that runs longer than the lease under a live worker is never redelivered;
- reap: return the messages of dead consumers (one worker per queue per
  interval, by a lock), dead-lettering those that failed max_deliveries times;
- promote due delayed messages (countdown, ETA, retries) to their stream;
- fair queues (fastq.fairness): pump their gate with the promotion, and recount
  it from the streams every few seconds (one worker per queue), so counts that
  drifted never strand a backlog;
- publish the worker's heartbeat (``fastq status``).

The process pool runs it in the parent's main loop; solo and thread pools in a
thread. It never raises: Redis outages are logged once and retried.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from .. import events
from ..broker.redis import CONNECTION_ERRORS, safe_url
from ..exceptions import BrokerError
from ..messages import dead_letter_row
from ..metrics import tree_rss
from .naming import process_identity

log = logging.getLogger("fastq.worker")

#: Seconds between heartbeats in the workers registry.
HEARTBEAT_INTERVAL = 2.0
#: Seconds a heartbeat stays in the registry (the TTL of ``fastq:worker:<name>``).
HEARTBEAT_TTL = max(10, int(HEARTBEAT_INTERVAL * 5))

_instance: tuple[int, str] | None = None


def instance_id() -> str:
    """A random id of this process, published in its heartbeat. Pids repeat across
    hosts (in containers every worker may be pid 1); this id does not."""
    global _instance
    if _instance is None or _instance[0] != os.getpid():
        _instance = (os.getpid(), uuid.uuid4().hex)
    return _instance[1]


def log_dead_letters(broker, physical: str, ids: list, client=None) -> None:
    """One line per dead letter naming its task and id, so a log search for the task finds why it stopped."""
    for item in broker.dlq_entries(physical, ids, client):
        row = dead_letter_row(item)
        log.error("Dead-lettered task %s[%s] on %r (entry %s): %s: %s", row["task"] or "?", row["task_id"] or "?",
                  row["queue"], row["id"], row["reason"], row["error"],
                  extra={"task_name": row["task"], "task_id": row["task_id"], "state": "DEAD"})


def _process_stats() -> dict:
    """Memory of the worker's process tree and the load average."""
    return {"rss": tree_rss(), "loadavg": list(os.getloadavg())}


class Maintenance:
    def __init__(self, app, queues: list[str], hostname: str, consumers: Callable[[], list[str]],
                 info: Callable[[], dict] | None = None) -> None:
        conf = app.conf
        self.app = app
        self.broker = app.broker
        self.client = self.broker.new_client()
        self.queues = list(queues)
        self.hostname = hostname
        self.consumers = consumers
        self.info = info or dict
        self.lease_ms = int(float(conf.worker_lease_timeout) * 1000)
        self.max_deliveries = int(conf.worker_max_deliveries)
        self.promote_interval = float(conf.worker_promote_interval)
        self.renew_interval = self.lease_ms / 3000
        self.reap_interval = min(5.0, self.lease_ms / 4000)
        self._next = {"renew": 0.0, "reap": 0.0, "promote": 0.0, "heartbeat": 0.0}
        self.fair = self.broker.fair
        self.heal_interval = min(10.0, self.lease_ms / 1000)
        if self.fair:
            self._next["heal"] = time.monotonic() + self.heal_interval
        self._down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> float:
        """Do what is due; return seconds until something is due again."""
        now = time.monotonic()
        try:
            if now >= self._next["promote"]:
                self.promote()
                self._next["promote"] = now + self.promote_interval
            if now >= self._next["renew"]:
                self.renew()
                self._next["renew"] = now + self.renew_interval
            if now >= self._next["reap"]:
                self.reap()
                self._next["reap"] = now + self.reap_interval
            if now >= self._next["heartbeat"]:
                self.heartbeat()
                self._next["heartbeat"] = now + HEARTBEAT_INTERVAL
            if self.fair and now >= self._next["heal"]:
                self.heal()
                self._next["heal"] = now + self.heal_interval
            if self._down:
                log.warning("Maintenance reconnected to Redis")
                self._down = False
        except (*CONNECTION_ERRORS, BrokerError) as exc:
            if not self._down:
                log.warning("Maintenance cannot reach Redis at %s (%s); retrying", safe_url(self.broker.url), exc)
                self._down = True
            return 0.5
        except Exception:
            log.exception("Maintenance step failed")
            return 0.5
        return max(0.0, min(self._next.values()) - time.monotonic())

    def renew(self) -> None:
        names = self.consumers()
        if not names:
            return
        for q in self.broker.expand_queues(self.queues):
            self.broker.renew(q, names, self.lease_ms // 3, client=self.client)

    def reap(self) -> None:
        for q in self.broker.expand_queues(self.queues):
            r = self.broker.reap(q, self.hostname, self.lease_ms, self.max_deliveries,
                                 int(self.reap_interval * 1000), client=self.client)
            if isinstance(r, list) and (r[0] or r[1]):
                log.warning("Recovered %d message(s) of lost workers on %r (%d dead-lettered)", r[0], q, r[1])
                if len(r) > 2 and r[2]:
                    log_dead_letters(self.broker, q, r[2], self.client)

    def promote(self) -> None:
        # Packed EVALSHAs in one write (routed per slot on a cluster, where
        # redis-py's pipelines refuse scripts); NOSCRIPT is handled there.
        self.broker.execute_packed(self.broker.promote_commands(self.queues))

    def heal(self) -> None:
        """Recount the gates of the fair queues from their streams (fastq.fairness)."""
        for q in self.queues:
            fq = self.fair.get(q)
            if fq is not None:
                fixed = self.broker.heal_fair(q, self.hostname, int(self.heal_interval * 1000), self.client)
                if fixed > 0:
                    log.warning("Repaired the fair-queue counts of %d tenant(s) on %r", fixed, q)
                elif fixed == -2:
                    log.warning("Fair queue %r has too many messages in its streams to recount them", q)

    def heartbeat(self) -> None:
        info = {"hostname": self.hostname, "pid": os.getpid(), "instance": instance_id(), "queues": self.queues,
                "ts": time.time(), "proc": process_identity(),  # lets a successor tell whether we died (naming.py)
                **_process_stats(), **self.info()}
        self.broker.heartbeat(self.hostname, json.dumps(info), HEARTBEAT_TTL, self.client)
        if self.app.conf.worker_send_task_events:
            self.broker.publish_events(self.hostname, [events.worker_event("worker-heartbeat", self.hostname, info)])

    def deregister(self) -> None:
        try:
            self.broker.deregister_worker(self.hostname, self.client)
        except CONNECTION_ERRORS:
            pass

    # --- as a thread (solo and thread pools) ---------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fastq-maintenance", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(min(self.tick(), 0.25))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
