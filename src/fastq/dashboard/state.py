"""What the dashboard keeps in memory: recent tasks, per-second counts and queue
samples, all rebuilt from Redis when it starts.

Workers already write task events to the capped stream ``<prefix>events`` once
per batch; the dashboard tails it (after reading back the newest entries at
start), so the workers do no extra write for it. Everything else (results,
queues, workers, dead letters) is read from Redis when asked for.

Layer: apps; may import any layer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque

from .. import events
from ..broker.redis import CONNECTION_ERRORS
from ..metrics import EventFeed, RedisCollector, TaskMetrics, new_registry
from ..monitor import QueueRates, dead_letters

log = logging.getLogger("fastq.dashboard")

#: Recent tasks kept (oldest dropped first).
MAX_TASKS = 10_000
#: Stream entries read back at start (each holds a batch of events).
BACKFILL_ENTRIES = 2_000
#: Seconds of history for the charts.
HISTORY = 15 * 60
#: Seconds between queue samples.
SAMPLE_INTERVAL = 2.0
#: Dead letters per queue the task list shows.
DEAD_LISTED = 1_000

_EVENT_STATES = {
    "task-started": "STARTED", "task-succeeded": "SUCCESS", "task-failed": "FAILURE",
    "task-retried": "RETRY", "task-revoked": "REVOKED", "task-rejected": "REJECTED",
}


class DashboardState:
    """Recent tasks, chart series and Prometheus metrics of one dashboard process."""

    def __init__(self, app, max_tasks: int = MAX_TASKS) -> None:
        self.app = app
        self.max_tasks = max_tasks
        self.tasks: OrderedDict[str, dict] = OrderedDict()
        self.lock = threading.Lock()
        #: second -> [succeeded, failed]
        self.per_second: dict[int, list[int]] = {}
        #: (time, {queue: waiting}, {queue: in_flight})
        self.queue_samples: deque = deque(maxlen=int(HISTORY / SAMPLE_INTERVAL))
        self.rates = QueueRates(app)
        self.queue_rates: dict[str, dict] = {}
        self.registry = new_registry()
        self.metrics = TaskMetrics(self.registry)
        self.registry.register(RedisCollector(app))
        #: task id -> parent id, learnt from extended results (they never change)
        self.parents: OrderedDict[str, str | None] = OrderedDict()
        self.feed: EventFeed | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        since = "$"
        try:
            since = self._backfill()
        except CONNECTION_ERRORS as exc:
            log.warning("Cannot read past events (%s)", exc)
        self.feed = EventFeed(self.app, self.on_event, since=since, name="fastq-dashboard-events")
        self.feed.start()
        self._sampler = threading.Thread(target=self._sample_loop, name="fastq-dashboard-sampler", daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        if self.feed is not None:
            self.feed.stop()

    def _backfill(self) -> str:
        rows = self.app.broker.recent_events(BACKFILL_ENTRIES)
        for _entry_id, _host, fields in rows:
            for ev in events.unpack_entry(fields):
                self.on_event(ev, count=False)
        return rows[-1][0] if rows else "$"

    # --- events ----------------------------------------------------------------------

    def on_event(self, ev: dict, count: bool = True) -> None:
        """Apply one event (``count``: also to the Prometheus counters)."""
        if count:
            self.metrics.observe(ev)
        kind = ev.get("type")
        state = _EVENT_STATES.get(kind)
        if state is None:
            if kind != "task-progress":
                return
            state = ev.get("state") or "PROGRESS"  # update_state(): PROGRESS or the task's own state
        ts = ev.get("timestamp") or time.time()
        if kind in ("task-succeeded", "task-failed"):
            sec = int(ts)
            with self.lock:
                slot = self.per_second.get(sec)
                if slot is None:
                    slot = self.per_second[sec] = [0, 0]
                slot[0 if kind == "task-succeeded" else 1] += 1
        task_id = ev.get("uuid")
        if not task_id:
            return
        with self.lock:
            t = self.tasks.pop(task_id, None) or {"id": task_id, "received": ts}
            t.update(name=ev.get("name") or t.get("name"), state=state, hostname=ev.get("hostname"), timestamp=ts)
            if ev.get("runtime") is not None:
                t["runtime"] = ev["runtime"]
            if ev.get("exception"):
                t["exception"] = ev["exception"]
            if ev.get("reason"):
                t["reason"] = ev["reason"]
            if kind == "task-progress" and "meta" in ev:
                t["meta"] = ev["meta"]
            if kind == "task-retried":
                t["retries"] = t.get("retries", 0) + 1
            self.tasks[task_id] = t  # most recent last
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)

    # --- queries ----------------------------------------------------------------------

    def recent(self, state: str | None = None, name: str | None = None, search: str | None = None,
               limit: int = 100, dead: list[dict] | None = None) -> tuple[list[dict], int]:
        """Newest first, filtered; returns (page, total matching). ``dead``
        (dead_tasks()) are listed too, as DEAD: no event says a task was
        dead-lettered (the reaper's and a dying pool process's sends none)."""
        with self.lock:
            items = list(reversed(self.tasks.values()))
        if dead:
            ids = {t["id"] for t in dead}
            merged = dead + [t for t in items if t["id"] not in ids]
            items = sorted(merged, key=lambda t: t.get("timestamp") or 0, reverse=True)
        if state:
            items = [t for t in items if t["state"] == state]
        if name:
            items = [t for t in items if t.get("name") == name]
        if search:
            s = search.strip().lower()
            items = [t for t in items if s in t["id"].lower() or s in (t.get("name") or "").lower()]
        return [dict(t) for t in items[:limit]], len(items)

    def dead_tasks(self) -> list[dict]:
        """The dead letters of every known queue, as task rows (state DEAD)."""
        rows = []
        for d in dead_letters(self.app, self.app.broker.known_queues(), DEAD_LISTED):
            if d["task_id"]:  # an undecodable message names no task: the queue's dead-letter view shows it
                rows.append({"id": d["task_id"], "name": d["task"], "state": "DEAD", "timestamp": d["dead_lettered_at"],
                             "received": d["dead_lettered_at"], "queue": d["queue"], "reason": d["reason"],
                             "exception": d["error"], "dead_letter_id": d["id"]})
        return rows

    def task_names(self) -> list[str]:
        with self.lock:
            return sorted({t["name"] for t in self.tasks.values() if t.get("name")})

    def event_record(self, task_id: str) -> dict | None:
        with self.lock:
            t = self.tasks.get(task_id)
            return dict(t) if t else None

    def recent_ids(self, limit: int = 2000, lock: bool = True) -> list[str]:
        if not lock:  # the caller holds it
            return list(self.tasks)[-limit:]
        with self.lock:
            return list(self.tasks)[-limit:]

    def task_series(self, seconds: int) -> list[list]:
        """[[second, succeeded, failed], ...] for the last ``seconds`` seconds, one per second."""
        now = int(time.time())
        with self.lock:
            for sec in [s for s in self.per_second if s < now - HISTORY]:
                del self.per_second[sec]
            return [[s, *self.per_second.get(s, (0, 0))] for s in range(now - seconds + 1, now + 1)]

    def queue_series(self, seconds: int) -> dict:
        cutoff = time.time() - seconds
        samples = [s for s in list(self.queue_samples) if s[0] >= cutoff]
        names = sorted({q for s in samples for q in s[1]})
        return {"t": [s[0] for s in samples],
                "waiting": {q: [s[1].get(q, 0) for s in samples] for q in names},
                "in_flight": {q: [s[2].get(q, 0) for s in samples] for q in names}}

    # --- sampling -----------------------------------------------------------------------

    def _sample_loop(self) -> None:
        down = False
        while not self._stop.is_set():
            try:
                self.sample()
                down = False
            except CONNECTION_ERRORS as exc:
                if not down:
                    log.warning("Dashboard cannot reach Redis (%s)", exc)
                    down = True
            except Exception:
                log.exception("Queue sampling failed")
            self._stop.wait(SAMPLE_INTERVAL)

    def sample(self) -> None:
        names = self.app.broker.known_queues()
        self.queue_rates = dict(self.rates.sample(names))
        waiting, flight = {}, {}
        for q in names:
            s = self.app.broker.queue_stats(q)
            waiting[q], flight[q] = s["waiting"], s["in_flight"]
        self.queue_samples.append((time.time(), waiting, flight))
