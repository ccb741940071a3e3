"""The worker's half of remote control (``fastq.control`` is the client's): the
listener on the control channel, the handlers that answer ``inspect`` and act on
``revoke``, ``rate_limit``, ``shutdown``, pool and queue changes, the revoke
state each process keeps, and the agent of a process-pool child (which applies
revokes and rate limits without answering). The protocol is described in
``fastq.control``.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import json
import logging
import os
import signal as _signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from .. import __version__
from ..broker.connect import safe_url
from ..broker.keys import validate_queue_name
from ..broker.redis import CONNECTION_ERRORS
from ..control import (
    NO_REPLY,
    _json,
    bugreport,
    celery_queue,
    celery_request,
    held_entries,
    read_messages,
    scheduled_messages,
    settings_report,
)
from ..metrics import tree_rss
from ..options import parse_rate
from ..stamping import revoke_values, revoked_by

log = logging.getLogger("fastq.control")


# --- revokes ---------------------------------------------------------------------------


class RevokeState:
    """The revoked ids one process knows, mirrored into its executors' sets.

    ``Executor.revoked`` is a plain set the worker checks before running a
    message; entries are removed when they expire so the set stays small (a
    non-empty set sends every message through the slower checked path)."""

    def __init__(self, app, executors: Callable[[], list]) -> None:
        self.app = app
        self.executors = executors
        self.expiry: dict[str, float] = {}
        #: revoked stamp values (fastq.stamping): JSON [name, value] -> (name, value, until)
        self.stamp_expiry: dict[str, tuple[str, Any, float]] = {}
        #: name -> revoked values: what executors check (a new dict on each change, never mutated)
        self.stamps: dict[str, list] = {}
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str], until: float | None = None) -> None:
        until = until or time.time() + float(self.app.conf.worker_revoke_expires)
        with self._lock:
            for i in ids:
                self.expiry[i] = max(until, self.expiry.get(i, 0.0))
            self._apply()

    def sync(self, client=None) -> None:
        """Load the revokes kept in Redis (at start and after a reconnect)."""
        self.add_many(self.app.broker.revoked(client))
        self._add_stamps(self.app.broker.revoked_stamps(client))

    def add_stamps(self, stamps: dict[str, list], until: float | None = None) -> None:
        """Revoke the tasks stamped with these values (name -> values)."""
        until = until or time.time() + float(self.app.conf.worker_revoke_expires)
        self._add_stamps([(name, v, until) for name, values in stamps.items() for v in values])

    def _add_stamps(self, items: list[tuple[str, Any, float]]) -> None:
        with self._lock:
            for name, value, until in items:
                key = json.dumps([name, value], sort_keys=True)
                old = self.stamp_expiry.get(key)
                self.stamp_expiry[key] = (name, value, max(until, old[2] if old else 0.0))
            self._apply_stamps()

    def _apply_stamps(self) -> None:
        stamps: dict[str, list] = {}
        for name, value, _ in self.stamp_expiry.values():
            stamps.setdefault(name, []).append(value)
        self.stamps = stamps
        for ex in self.executors():
            ex.revoked_stamps = stamps  # replaced, not changed: a consumer may be reading the old one

    def add_many(self, items: dict[str, float]) -> None:
        with self._lock:
            for i, until in items.items():
                self.expiry[i] = max(until, self.expiry.get(i, 0.0))
            self._apply()

    def prune(self) -> None:
        now = time.time()
        with self._lock:
            gone = [i for i, until in self.expiry.items() if until <= now]
            for i in gone:
                del self.expiry[i]
            for ex in self.executors():
                for i in gone:
                    ex.revoked.discard(i)
            lapsed = [k for k, (_, _, until) in self.stamp_expiry.items() if until <= now]
            for k in lapsed:
                del self.stamp_expiry[k]
            if lapsed:
                self._apply_stamps()

    def _apply(self) -> None:
        for ex in self.executors():
            # update in place: the consumer holds a reference to this set
            ex.revoked.update(self.expiry)

    def ids(self) -> list[str]:
        return sorted(self.expiry)


def set_rate_limit(app, task_name: str, rate_limit) -> None:
    """Change a registered task's rate limit in this process."""
    task = app.tasks.get(task_name)
    if task is None:
        raise KeyError(f"unknown task {task_name!r}")
    task.rate = None if rate_limit in (None, 0, "0") else parse_rate(rate_limit, f"task {task_name!r}")
    task.rate_limit = rate_limit
    task._refresh()


# --- worker side -------------------------------------------------------------------------


class ControlListener:
    """Subscribes to the control channel in a daemon thread and runs handlers.

    ``handlers`` maps a command to a callable taking the request's arguments as
    keywords; its return value is the reply (``NO_REPLY`` for none). With
    ``reply=False`` (pool children) nothing is ever published. ``tick`` is
    called about every ``tick_interval`` seconds from the same thread, and
    ``on_connect`` after every (re)subscription. Never raises: Redis outages
    are logged once and retried.
    """

    def __init__(self, app, hostname: str, handlers: dict[str, Callable[..., Any]], reply: bool = True,
                 tick: Callable[[], None] | None = None, tick_interval: float = 1.0,
                 on_connect: Callable[[Any], None] | None = None) -> None:
        self.app = app
        self.hostname = hostname
        self.handlers = handlers
        self.reply = reply
        self.tick = tick
        self.tick_interval = tick_interval
        self.on_connect = on_connect
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription = None
        #: Control requests addressed to this worker so far: its logical clock (inspect clock).
        self.answered = 0

    def start(self, wait: float = 5.0) -> None:
        """Start listening; wait up to ``wait`` seconds for the subscription."""
        self._thread = threading.Thread(target=self._run, name="fastq-control", daemon=True)
        self._thread.start()
        self._ready.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=3)

    def _run(self) -> None:
        down = False
        backoff = 0.5
        next_tick = 0.0
        while not self._stop.is_set():
            sub = None
            try:
                sub = self._subscription = self.app.broker.subscribe_control()
                if self.on_connect is not None:
                    self.on_connect(sub.client)
                self._ready.set()
                if down:
                    log.warning("Control channel reconnected")
                    down, backoff = False, 0.5
                while not self._stop.is_set():
                    raw = sub.next(min(1.0, self.tick_interval))
                    if raw is not None:
                        self._dispatch(raw)
                    if self.tick is not None and time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + self.tick_interval
                        self._safe(self.tick)
            except CONNECTION_ERRORS as exc:
                if not down:
                    log.warning("Control channel lost its Redis connection (%s); retrying", exc)
                    down = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("Control listener failed; restarting it")
                self._stop.wait(1.0)
            finally:
                if sub is not None:
                    sub.close()

    def _safe(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("Control tick failed")

    def _dispatch(self, raw: bytes) -> None:
        try:
            req = json.loads(raw)
            command = req["command"]
        except (ValueError, KeyError, TypeError):
            log.warning("Ignored a malformed control message")
            return
        dest = req.get("destination")
        if dest and self.hostname not in dest:
            return
        self.answered += 1
        handler = self.handlers.get(command)
        reply_to = req.get("reply_to")
        if handler is None:
            if self.reply and reply_to:
                self._publish(reply_to, {"error": f"unknown command {command!r}"})
            return
        try:
            value = handler(**(req.get("arguments") or {}))
        except Exception as exc:  # noqa: BLE001 - the error is the reply
            log.warning("Control command %s failed: %s", command, exc)
            value = {"error": f"{type(exc).__name__}: {exc}"}
        if self.reply and reply_to and value is not NO_REPLY:
            self._publish(reply_to, value)

    def _publish(self, reply_to: str, value: Any) -> None:
        self._subscription.reply(reply_to, _json({"hostname": self.hostname, "reply": value}))


class WorkerControl:
    """The commands a worker answers, for its pool (process, thread or solo)."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.pool = worker.pool
        self.process_pool = hasattr(self.pool, "children")
        # The pool parent has no executor: its children keep their own revokes.
        self.revokes = RevokeState(self.app, self._executors)
        self.listener = ControlListener(self.app, worker.hostname, self.handlers(), reply=True, tick=self._tick,
                                        tick_interval=5.0, on_connect=self.revokes.sync)

    def _executors(self) -> list:
        if self.process_pool:
            return []
        return [c.executor for c in getattr(self.pool, "consumers", [])]

    def _tick(self) -> None:
        self.revokes.prune()

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in (
            "ping", "stats", "registered", "active", "reserved", "scheduled", "revoked", "active_queues",
            "query_task", "clock", "conf", "report",
            "revoke", "revoke_by_stamped_headers", "rate_limit", "shutdown", "pool_grow", "pool_shrink",
            "add_consumer", "cancel_consumer",
        )}

    # --- inspect --------------------------------------------------------------------------

    def ping(self) -> dict:
        return {"ok": "pong"}

    def registered(self, taskinfoitems: list[str] | None = None) -> list[str]:
        if not taskinfoitems:
            return sorted(self.app.tasks)
        out = []
        for name in sorted(self.app.tasks):
            task = self.app.tasks[name]
            fields = " ".join(f"{k}={getattr(task, k)}" for k in taskinfoitems if getattr(task, k, None) is not None)
            out.append(f"{name} [{fields}]" if fields else name)
        return out

    def active_queues(self) -> list[dict]:
        return [celery_queue(q) for q in self.worker.queues]

    def clock(self) -> dict:
        return {"clock": self.listener.answered}

    def conf(self, with_defaults: bool = False) -> dict:
        return settings_report(self.app.conf, with_defaults)

    def report(self) -> dict:
        return {"ok": bugreport(self.app)}

    def query_task(self, ids: list[str] | None = None) -> dict:
        wanted = set(ids or ())
        out: dict = {}
        for state, requests in (("active", self.active()), ("reserved", self.reserved())):
            for r in requests:
                if r["id"] in wanted:
                    out.setdefault(r["id"], [state, r])
        for s in self.scheduled():
            if s["request"]["id"] in wanted:
                out.setdefault(s["request"]["id"], ["scheduled", s["request"]])
        return out

    def revoked(self) -> list[str]:
        return self.revokes.ids()

    def stats(self) -> dict:
        me = psutil.Process()
        rss = tree_rss()
        counters = self.pool.counters() if hasattr(self.pool, "counters") else {}
        times = me.cpu_times()
        return {
            "hostname": self.worker.hostname, "pid": os.getpid(), "version": __version__,
            "uptime": time.time() - self.worker.started,
            "pool": {"implementation": self.worker.pool_name, "max-concurrency": self.pool.concurrency
                     if hasattr(self.pool, "concurrency") else self.worker.concurrency,
                     "processes": [c.process.pid for c in self.pool.children] if self.process_pool else [os.getpid()]},
            "prefetch": self.worker.prefetch, "prefetch_count": self.worker.prefetch,
            "queues": list(self.worker.queues), "clock": self.listener.answered,
            "broker": {"url": safe_url(self.app.broker_url)},
            "rusage": {"utime": times.user, "stime": times.system, "rss": rss},
            "loadavg": list(os.getloadavg()), **counters,
        }

    def active(self) -> list[dict]:
        return [celery_request(t, True) for t in self.pool.active()]

    def reserved(self) -> list[dict]:
        names = self.pool.maintenance.consumers()
        running = {t.get("entry_id") for t in self.pool.active()}
        entries = [(q, e) for q, e, _ in held_entries(self.app, list(self.worker.queues), names)
                   if e.decode() not in running]
        out = read_messages(self.app, entries)
        for r in out:
            r["hostname"] = self.worker.hostname
        return out

    def scheduled(self) -> list[dict]:
        return scheduled_messages(self.app, list(self.worker.queues))

    # --- control --------------------------------------------------------------------------

    def revoke(self, task_id, terminate: bool = False, signal: str = "SIGKILL", expires: float | None = None) -> dict:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self.revokes.add(ids, expires)
        msg = f"tasks {', '.join(ids)} flagged as revoked"
        if terminate:
            if not hasattr(self.pool, "terminate"):
                return {"ok": msg + "; terminate is not supported by the " + self.worker.pool_name + " pool"}
            killed = self.pool.terminate(ids, _signal.Signals[signal] if isinstance(signal, str) else signal)
            if killed:
                msg += f"; terminated {', '.join(killed)}"
        return {"ok": msg}

    def revoke_by_stamped_headers(self, headers, terminate: bool = False, signal: str = "SIGKILL",
                                  expires: float | None = None) -> dict:
        """Revoke the tasks stamped with these values (fastq.stamping); with
        ``terminate``, also the running ones, as ``revoke`` does. Celery's replies."""
        stamps = revoke_values(headers)
        self.revokes.add_stamps(stamps, expires)
        if not terminate:
            return {"ok": f"headers {headers} flagged as revoked, but not terminated"}
        if not hasattr(self.pool, "terminate"):
            return {"ok": f"headers {headers} flagged as revoked; terminate is not supported by the "
                          f"{self.worker.pool_name} pool"}
        ids = [t["id"] for t in self.pool.active() if revoked_by(t.get("stamps") or {}, stamps)]
        killed = self.pool.terminate(ids, _signal.Signals[signal] if isinstance(signal, str) else signal) if ids else []
        if not killed:
            return {"ok": f"headers {headers} were not terminated"}
        return {"ok": f"headers {headers} revoked; terminated {', '.join(killed)}"}

    def rate_limit(self, task_name: str, rate_limit) -> dict:
        set_rate_limit(self.app, task_name, rate_limit)
        return {"ok": f"new rate limit set successfully for {task_name}: {rate_limit}"}

    def shutdown(self) -> dict:
        # Reply first: stop a moment later from another thread.
        threading.Timer(0.2, self.pool.stop).start()
        log.warning("Remote shutdown requested")
        return {"ok": "shutdown signal sent"}

    def pool_grow(self, n: int = 1) -> dict:
        if not hasattr(self.pool, "grow"):
            raise ValueError(f"the {self.worker.pool_name} pool cannot grow")
        size = self.pool.grow(int(n))
        return {"ok": f"pool will grow to {size}"}

    def pool_shrink(self, n: int = 1) -> dict:
        if not hasattr(self.pool, "shrink"):
            raise ValueError(f"the {self.worker.pool_name} pool cannot shrink")
        size = self.pool.shrink(int(n))
        return {"ok": f"pool will shrink to {size}"}

    def add_consumer(self, queue: str) -> dict:
        validate_queue_name(queue)
        if queue in self.worker.queues:
            return {"ok": f"already consuming from {queue!r}"}
        self.app.broker.ensure_queue(queue)
        self.pool.set_queues([*self.worker.queues, queue])
        return {"ok": f"add consumer {queue}"}

    def cancel_consumer(self, queue: str) -> dict:
        if queue not in self.worker.queues:
            return {"ok": f"not consuming from {queue!r}"}
        if len(self.worker.queues) == 1:
            raise ValueError("cannot cancel the last queue (shut the worker down instead)")
        self.pool.set_queues([q for q in self.worker.queues if q != queue])
        return {"ok": f"no longer consuming from {queue}"}


class ChildAgent:
    """In a process-pool child: applies revokes and rate limits to its consumer
    (without replying: the parent answers for the worker) and copies the
    consumer's counters into shared memory for the parent."""

    def __init__(self, app, hostname: str, consumer, counts=None) -> None:
        self.consumer = consumer
        self.counts = counts
        self.revokes = RevokeState(app, lambda: [consumer.executor])
        self._synced = time.monotonic()
        self.listener = ControlListener(
            app, hostname, {"revoke": self._revoke, "revoke_by_stamped_headers": self._revoke_stamps,
                            "rate_limit": self._rate_limit}, reply=False,
            tick=self._tick, tick_interval=1.0, on_connect=self.revokes.sync,
        )
        self.app = app

    def start(self) -> None:
        try:
            self.revokes.sync()  # before the first fetch
        except CONNECTION_ERRORS:
            pass
        self.listener.start(wait=0)

    def _revoke(self, task_id, expires: float | None = None, **_: Any):
        self.revokes.add([task_id] if isinstance(task_id, str) else task_id, expires)
        return NO_REPLY

    def _revoke_stamps(self, headers, expires: float | None = None, **_: Any):
        self.revokes.add_stamps(revoke_values(headers), expires)
        return NO_REPLY

    def _rate_limit(self, task_name: str, rate_limit):
        if task_name in self.app.tasks:
            set_rate_limit(self.app, task_name, rate_limit)
        return NO_REPLY

    def _tick(self) -> None:
        c = self.consumer
        if self.counts is not None:
            self.counts[0] = c.processed
            self.counts[1] = getattr(c.executor, "failures", 0)
            busy = getattr(c, "busy", None)  # an AsyncConsumer runs many at once
            self.counts[2] = busy() if busy is not None else (0 if c.runner.current is None else 1)
        self.revokes.prune()
        if time.monotonic() - self._synced > 30:  # pub/sub can drop a message while reconnecting
            self._synced = time.monotonic()
            sub = self.listener._subscription
            self.revokes.sync(sub.client if sub is not None else None)


__all__ = ["ChildAgent", "ControlListener", "RevokeState", "WorkerControl", "set_rate_limit"]
