"""Prometheus metrics, with ``prometheus-client`` (``pip install 'fastq[metrics]'``).

``fastq worker --metrics-port 9808`` serves them from the worker's parent
process, and ``fastq dashboard`` at ``/metrics``:

- ``fastq_tasks_total{task,state}``: tasks that ended in a state (succeeded,
  failed, retried, revoked, rejected; started with ``track_started``);
- ``fastq_task_runtime_seconds{task}``: histogram of runtimes (succeeded and failed);
- ``fastq_tasks_received_total``: messages fetched;
- ``fastq_queue_length{queue}``, ``fastq_in_flight{queue}``,
  ``fastq_queue_delayed{queue}``, ``fastq_queue_dead_letters{queue}``: read from
  Redis when scraped;
- ``fastq_workers_online``: workers with a recent heartbeat;
- process metrics (``process_*``), and on a worker ``fastq_worker_memory_bytes``
  (parent and pool children) and ``fastq_worker_concurrency``.

Task counts come from the event stream (``worker_send_task_events``, on by
default), which workers already write once per batch: the pool children's hot
path does no extra work for metrics, and no multiprocess files are needed. A
worker counts only its own events (filtered on its hostname); the dashboard
counts everyone's. Labels are task and queue names only, never ids or
arguments, and at most ``MAX_TASK_NAMES`` task names get their own label (the
rest are counted as ``task="other"``).

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psutil

from . import events
from .broker.redis import CONNECTION_ERRORS
from .control import online_workers
from .exceptions import ImproperlyConfigured

log = logging.getLogger("fastq.metrics")

#: Distinct task label values; more names are counted as "other".
MAX_TASK_NAMES = 500
#: Runtime histogram buckets (seconds).
RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
#: Event type -> ``state`` label.
EVENT_STATES = {
    "task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried",
    "task-revoked": "revoked", "task-rejected": "rejected", "task-started": "started",
}


def _require():
    try:
        import prometheus_client  # optional (fastq[metrics]): imported when metrics are asked for
    except ImportError:  # pragma: no cover - depends on the install
        raise ImproperlyConfigured("metrics need prometheus-client: pip install 'fastq[metrics]'") from None
    return prometheus_client


class TaskMetrics:
    """Task counters and runtime histograms, fed with events (dicts from ``fastq.events``)."""

    def __init__(self, registry) -> None:
        pc = _require()
        self.tasks = pc.Counter("fastq_tasks", "Tasks that reached a state.", ["task", "state"], registry=registry)
        self.runtime = pc.Histogram("fastq_task_runtime_seconds", "Task runtime in seconds.", ["task"],
                                    buckets=RUNTIME_BUCKETS, registry=registry)
        self.received = pc.Counter("fastq_tasks_received", "Messages fetched by workers.", registry=registry)
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def _task_label(self, name: str | None) -> str:
        if not name:
            return "unknown"
        if name in self._names:
            return name
        with self._lock:
            if len(self._names) >= MAX_TASK_NAMES:
                return "other"
            self._names.add(name)
        return name

    def observe(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "task-received":
            self.received.inc(event.get("n", 1))
            return
        state = EVENT_STATES.get(kind)
        if state is None:
            return
        task = self._task_label(event.get("name"))
        self.tasks.labels(task, state).inc()
        runtime = event.get("runtime")
        if runtime is not None and state in ("succeeded", "failed"):
            self.runtime.labels(task).observe(runtime)


class RedisCollector:
    """Queue lengths and workers online, read from Redis at scrape time."""

    def __init__(self, app, queues: Callable[[], list[str]] | None = None) -> None:
        self.app = app
        self.queues = queues  #: None: every known queue

    def describe(self):
        return []  # collected at scrape time only; no duplicate checks needed

    def collect(self):
        _require()
        from prometheus_client.core import GaugeMetricFamily  # optional (fastq[metrics])

        length = GaugeMetricFamily("fastq_queue_length", "Messages waiting in a queue.", labels=["queue"])
        flight = GaugeMetricFamily("fastq_in_flight", "Messages fetched by workers and not yet acknowledged.",
                                   labels=["queue"])
        delayed = GaugeMetricFamily("fastq_queue_delayed", "Messages waiting for their countdown/ETA.", labels=["queue"])
        dead = GaugeMetricFamily("fastq_queue_dead_letters", "Messages in the dead-letter queue.", labels=["queue"])
        up = GaugeMetricFamily("fastq_redis_up", "1 when Redis answered the last scrape.")
        try:
            names = self.queues() if self.queues is not None else self.app.broker.known_queues()
            for q in names:
                s = self.app.broker.queue_stats(q)
                length.add_metric([q], s["waiting"])
                flight.add_metric([q], s["in_flight"])
                delayed.add_metric([q], s["delayed"])
                dead.add_metric([q], s["dead"])
            online = GaugeMetricFamily("fastq_workers_online", "Workers with a recent heartbeat.",
                                       value=len(online_workers(self.app)))
            up.add_metric([], 1)
        except CONNECTION_ERRORS:
            up.add_metric([], 0)
            yield up
            return
        yield from (length, flight, delayed, dead, online, up)


class WorkerCollector:
    """Memory (parent and children) and pool size of the worker this runs in."""

    def __init__(self, worker) -> None:
        self.worker = worker

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily  # optional (fastq[metrics])

        yield GaugeMetricFamily("fastq_worker_memory_bytes", "Resident memory of the worker and its pool.",
                                value=tree_rss())
        pool = self.worker.pool
        size = getattr(pool, "concurrency", self.worker.concurrency)
        yield GaugeMetricFamily("fastq_worker_concurrency", "Pool size.", value=size)


class EventFeed:
    """Tails the event stream in a daemon thread and calls ``callback(event)``.

    ``hostname`` keeps one worker's events only. Starts at the stream's end (or
    after ``since``); survives Redis outages."""

    def __init__(self, app, callback: Callable[[dict], None], hostname: str | None = None, since: str = "$",
                 name: str = "fastq-events") -> None:
        self.app = app
        self.callback = callback
        self.hostname = hostname
        self.since = since
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self) -> None:
        broker = self.app.broker
        last = self.since
        client = None
        down = False
        while not self._stop.is_set():
            try:
                if client is None:
                    client = broker.new_client(socket_timeout=10)
                    if last == "$":  # a fixed id, so a reconnect resumes where we were
                        last = broker.last_event_id()
                for entry_id, host, fields in broker.read_events(last, 1000, 500, client):
                    last = entry_id
                    if self.hostname and host != self.hostname:
                        continue
                    for ev in events.unpack_entry(fields):
                        self.callback(ev)
                if down:
                    log.warning("Event feed reconnected")
                    down = False
            except CONNECTION_ERRORS as exc:
                if not down:
                    log.warning("Event feed lost Redis (%s); retrying", exc)
                    down = True
                client = None
                self._stop.wait(1.0)
            except Exception:
                log.exception("Event feed failed")
                self._stop.wait(1.0)


def new_registry():
    """A registry with the process and platform collectors."""
    pc = _require()
    registry = pc.CollectorRegistry()
    pc.ProcessCollector(registry=registry)
    pc.PlatformCollector(registry=registry)
    return registry


def exposition(registry) -> tuple[bytes, str]:
    """(body, content type) of the text exposition format."""
    pc = _require()
    return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST


class WorkerMetrics:
    """The worker's ``--metrics-port`` endpoint (runs in the worker's parent process)."""

    def __init__(self, worker, port: int, address: str = "127.0.0.1") -> None:
        self.worker = worker
        self.port = port
        self.address = address
        self.registry = new_registry()
        self.tasks = TaskMetrics(self.registry)
        self.registry.register(RedisCollector(worker.app, lambda: list(worker.queues)))
        self.registry.register(WorkerCollector(worker))
        if not worker.app.conf.worker_send_task_events:
            log.warning("worker_send_task_events is off: fastq_tasks_total and runtimes will stay empty")
        self.feed = EventFeed(worker.app, self.tasks.observe, hostname=worker.hostname, name="fastq-metrics")
        self._server = None

    def start(self) -> None:
        pc = _require()
        self.feed.start()
        started = pc.start_http_server(self.port, addr=self.address, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None
        log.warning("Prometheus metrics on http://%s:%d/metrics", self.address, self.port)

    def stop(self) -> None:
        self.feed.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def tree_rss() -> int:
    """Resident memory of this process and its children, in bytes (psutil)."""

    me = psutil.Process()
    rss = me.memory_info().rss
    for child in me.children():
        try:
            rss += child.memory_info().rss
        except psutil.Error:  # a child that just exited
            pass
    return rss

__all__ = ["EventFeed", "RedisCollector", "TaskMetrics", "WorkerMetrics", "exposition", "new_registry"]
