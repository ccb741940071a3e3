"""``fastq beat``: send tasks on schedules, from any number of processes.

Entries come from ``app.conf.beat_schedule`` (and ``app.add_periodic_task``)::

    app.conf.beat_schedule = {
        "every-10s": {"task": "proj.add", "schedule": 10.0, "args": (1, 2)},
        "mornings": {"task": "proj.report", "schedule": crontab(minute=30, hour=7),
                     "options": {"queue": "reports"}},
    }

High availability, unlike Celery beat:

- **One leader.** Every beat process competes for a Redis lock with a lease
  (``SET NX PX``, renewed every quarter lease by ``beat_lock.lua``). Standbys
  retry often enough to lead within the lease after the leader dies; a leader
  that stops cleanly hands the lock back at once. A leader that cannot renew
  (Redis unreachable, process paused) stops sending when its lease may have
  run out.
- **Each run once.** Every entry has a state hash in Redis, in its queue's
  cluster slot, holding the due time of the latest run sent. ``beat_send.lua``
  checks it, sends the message and moves it forward in one atomic step, and
  refuses a run that is not later. So even two processes that both believe
  they lead, or a new leader right after a failover, never send a run twice.
- **State in Redis.** Due times derive from that state only (never from when a
  process started), so every beat computes the same runs. An entry seen for
  the first time is anchored at that moment; intervals run on a grid from it.
- **Missed runs once.** After downtime only the latest missed run is sent,
  then the schedule continues (not once per missed interval).
- **One clock.** Due times are compared with the Redis server's clock (offset
  measured at every lock call), so skewed hosts agree.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import msgspec

from .broker.redis import CONNECTION_ERRORS, safe_url
from .exceptions import ImproperlyConfigured
from .schedules import BaseSchedule, crontab, schedule, to_schedule, zone

log = logging.getLogger("fastq.beat")

#: Seconds a leader holds leadership without renewing (``--lease``).
DEFAULT_LEASE = 10.0
#: Keys an entry of ``beat_schedule`` may have.
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options"})
#: Header names a periodic run carries (entry name, due time in epoch ms).
HEADER_ENTRY = "fastq-beat-entry"
HEADER_DUE = "fastq-beat-due"


class ScheduleEntry:
    """One validated entry of the schedule."""

    __slots__ = ("args", "kwargs", "name", "options", "queue", "schedule", "task")

    def __init__(self, name: str, task: str, sched: BaseSchedule, args: tuple, kwargs: dict, options: dict,
                 queue: str) -> None:
        self.name = name
        self.task = task
        self.schedule = sched
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.queue = queue

    def __repr__(self) -> str:
        return f"<ScheduleEntry {self.name!r}: {self.task} {self.schedule!r}>"


def load_entries(app, schedule_conf: dict | None = None) -> list[ScheduleEntry]:
    """Validate ``app.conf.beat_schedule``; raise ImproperlyConfigured naming the entry.

    Checks every entry as far as possible before the first run: its keys, the
    schedule (crontab fields, intervals), that the task is registered, and that
    a message can be built (options, serializable arguments)."""
    conf = app.conf.beat_schedule if schedule_conf is None else schedule_conf
    if conf is None:
        return []
    if not isinstance(conf, dict):
        raise ImproperlyConfigured(f"beat_schedule must be a dict of entries, not {type(conf).__name__}")
    out = []
    for name, spec in conf.items():
        where = f"beat_schedule entry {name!r}"
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(f"{where}: names must be non-empty strings")
        if not isinstance(spec, dict):
            raise ImproperlyConfigured(f"{where}: must be a dict with 'task' and 'schedule', not {spec!r}")
        unknown = set(spec) - ENTRY_KEYS
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                                       f"(allowed: {', '.join(sorted(ENTRY_KEYS))})")
        task = spec.get("task")
        if not isinstance(task, str) or not task:
            raise ImproperlyConfigured(f"{where}: 'task' must be a task name, not {task!r}")
        if task not in app.tasks:
            raise ImproperlyConfigured(f"{where}: unknown task {task!r} (not registered in the app; "
                                       f"registered: {', '.join(sorted(app.tasks)) or 'none'})")
        if "schedule" not in spec:
            raise ImproperlyConfigured(f"{where}: has no 'schedule'")
        try:
            sched = to_schedule(spec["schedule"])
        except ValueError as exc:
            raise ImproperlyConfigured(f"{where}: invalid schedule: {exc}") from None
        args, kwargs, options = spec.get("args") or (), spec.get("kwargs") or {}, spec.get("options") or {}
        if not isinstance(args, (list, tuple)):
            raise ImproperlyConfigured(f"{where}: 'args' must be a list or tuple, not {type(args).__name__}")
        if not isinstance(kwargs, dict):
            raise ImproperlyConfigured(f"{where}: 'kwargs' must be a dict, not {type(kwargs).__name__}")
        if not isinstance(options, dict):
            raise ImproperlyConfigured(f"{where}: 'options' must be a dict, not {type(options).__name__}")
        for bad in ("task_id", "countdown", "eta"):
            if bad in options:
                raise ImproperlyConfigured(f"{where}: option {bad!r} makes no sense for a periodic task")
        try:  # a trial message: unknown options, bad priority, unserializable args fail now
            trial = {k: v for k, v in options.items() if k != "headers"}  # set after build, as in _send
            msg, queue, _, _ = app.producer.build(task, tuple(args), dict(kwargs), trial, app.tasks[task])
            app.producer.encode(msg, app.tasks[task])
        except (TypeError, ValueError, ImproperlyConfigured) as exc:
            raise ImproperlyConfigured(f"{where}: {exc}") from None
        out.append(ScheduleEntry(name, task, sched, tuple(args), dict(kwargs), dict(options), queue))
    return out


class Beat:
    """The scheduler. ``Beat(app).run()`` blocks; ``start()`` runs it in a thread
    (``fastq worker --beat``). Several may run against one Redis at once."""

    def __init__(self, app, lease: float | None = None, hostname: str | None = None) -> None:
        self.app = app
        self.entries = load_entries(app)
        try:
            self.tz = zone(app.conf.timezone)
        except ValueError as exc:
            raise ImproperlyConfigured(f"timezone: {exc}") from None
        lease = float(lease if lease is not None else app.conf.get("beat_lease", DEFAULT_LEASE))
        if not lease >= 0.5:
            raise ImproperlyConfigured(f"the beat lease must be at least 0.5 seconds, not {lease!r}")
        self.lease = lease
        # The lock lives a little less than the lease and standbys poll every
        # 5% of it, so a standby leads within the lease after the leader dies.
        self.ttl_ms = int(lease * 900)
        self.renew_interval = lease / 4
        self.poll_interval = min(0.5, max(0.05, lease / 20))
        self.id = f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.broker = app.broker
        self.is_leader = False
        self._valid_until = 0.0  # monotonic: leadership is certain until then
        self._lock_due = 0.0  # monotonic: next lock call
        self._offset = 0.0  # Redis server clock minus ours, seconds
        self._last: dict[str, int] = {}  # entry -> latest due sent (ms), as read or sent
        self._next: dict[str, int] = {}  # entry -> next due (ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        self._registered = False

    # --- time ----------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The Redis server's clock (as last measured), in epoch ms."""
        return int((time.time() + self._offset) * 1000)

    # --- leadership ------------------------------------------------------------------------

    def lock_step(self) -> bool:
        """Take or renew leadership; return whether this process leads."""
        sent = time.monotonic()
        sent_wall = time.time()
        status, server_time = self.broker.beat_lock(self.id, self.ttl_ms)
        got = time.monotonic()
        self._offset = server_time - (sent_wall + (got - sent) / 2)
        if status:
            # the key's TTL started after `sent`; keep a margin for clock-rate drift
            self._valid_until = sent + self.ttl_ms / 1000 * 0.95
            if status == 2 or not self.is_leader:
                log.warning("beat %s is now the leader (lease %.3gs)", self.id, self.lease)
                self._last.clear()  # another leader may have moved the state on: read it again
                self._next.clear()
            self.is_leader = True
            self._lock_due = got + self.renew_interval
        else:
            if self.is_leader:
                log.warning("beat %s lost leadership", self.id)
            self.is_leader = False
            self._lock_due = got + self.poll_interval
        return self.is_leader

    def release(self) -> None:
        """Hand leadership back (clean stop), so a standby takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            self.broker.beat_release(self.id)
            log.info("beat %s released leadership", self.id)
        except CONNECTION_ERRORS:
            pass

    def leader(self) -> str | None:
        """The id of the beat that leads now, if any."""
        return self.broker.beat_leader()

    def _leads(self) -> bool:
        return self.is_leader and time.monotonic() < self._valid_until

    # --- scheduling ------------------------------------------------------------------------

    def _register_queues(self) -> None:
        if not self._registered:
            self.broker.register_queues(sorted({e.queue for e in self.entries}))
            self._registered = True

    def _load(self, entry: ScheduleEntry, now_ms: int) -> None:
        """Read an entry's state; anchor a new entry at ``now_ms``."""
        due = self.broker.beat_due(entry.queue, entry.name, now_ms)
        self._last[entry.name] = last = now_ms if due is None else due
        self._next[entry.name] = entry.schedule.next_after_ms(last, self.tz)

    def tick(self, now_ms: int | None = None) -> float:
        """Send what is due (when leading); return seconds until the next due run.

        ``now_ms`` (default: the Redis clock) lets tests drive time."""
        if now_ms is None:
            now_ms = self.now_ms()
        self._register_queues()
        for entry in self.entries:
            if entry.name not in self._next:
                self._load(entry, now_ms)
            if self._next[entry.name] > now_ms:
                continue
            if not self._leads():
                break
            last = self._last[entry.name]
            # only the latest due run: missed runs are sent once, not once per interval
            due = entry.schedule.latest_due_ms(last, now_ms, self.tz) or self._next[entry.name]
            if self._send(entry, due):
                missed = f" ({(now_ms - due) / 1000:.3g}s late)" if now_ms - due > 1000 else ""
                log.info("Sent %s for %r, due %s%s", entry.task, entry.name, self._fmt(due), missed)
                self._last[entry.name] = due
            else:  # another beat sent it: take its state
                self._last[entry.name] = max(due, self.broker.beat_due(entry.queue, entry.name) or due)
                log.info("Run of %r due %s was already sent", entry.name, self._fmt(due))
            self._next[entry.name] = entry.schedule.next_after_ms(self._last[entry.name], self.tz)
        if not self._next:
            return 3600.0
        return max(0.0, (min(self._next.values()) - self.now_ms()) / 1000)

    def _send(self, entry: ScheduleEntry, due_ms: int) -> bool:
        app = self.app
        task = app.tasks.get(entry.task)
        options = dict(entry.options)
        options["queue"] = entry.queue  # the state hash is in this queue's slot
        # (countdown and eta are refused at load, so the run goes straight to its stream)
        msg, queue, priority, _ = app.producer.build(entry.task, entry.args, entry.kwargs, options, task)
        # the headers build made (the entry's, and a tenant_key's) plus the run's own
        msg = msgspec.structs.replace(msg, headers={**(msg.headers or {}), HEADER_ENTRY: entry.name, HEADER_DUE: due_ms})
        payload = app.producer.encode(msg, task)
        cmd = app.broker.beat_send_command(entry.name, queue, priority, app.serializer.field, payload,
                                           due_ms, msg.id)
        return bool(app.broker.execute_packed([cmd], confirm=True)[0])  # BrokerError is a ConnectionError

    def _fmt(self, ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, self.tz).isoformat(timespec="milliseconds")

    # --- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Lead or stand by until ``stop()``; never raises on Redis outages."""
        log.warning("beat %s starting: %d entr%s, timezone %s, broker %s", self.id, len(self.entries),
                    "y" if len(self.entries) == 1 else "ies", self.app.conf.timezone,
                    safe_url(self.app.broker_url))
        for e in self.entries:
            log.info("  %s: %s %r -> queue %r", e.name, e.task, e.schedule, e.queue)
        try:
            while not self._stop.is_set():
                self._stop.wait(self._step())
        finally:
            self.release()
        return 0

    def _step(self) -> float:
        """One round: lock upkeep, then due runs. Returns seconds to sleep."""
        try:
            if time.monotonic() >= self._lock_due:
                self.lock_step()
            wait = self._lock_due - time.monotonic()
            if self.is_leader and not self._leads():
                log.warning("beat %s could not renew its lease in time: stops sending", self.id)
                self.is_leader = False
                self._lock_due = 0.0
                return self.poll_interval
            if self.is_leader:
                wait = min(wait, self.tick())
            if self._down:
                log.warning("beat reconnected to Redis")
                self._down = False
            return max(0.0, min(wait, 1.0))
        except CONNECTION_ERRORS as exc:
            if not self._down:
                log.warning("beat cannot reach Redis at %s (%s); retrying", safe_url(self.app.broker_url), exc)
                self._down = True
            self._lock_due = 0.0
            return self.poll_interval
        except Exception:
            log.exception("beat step failed")
            return 1.0

    def start(self) -> None:
        """Run in a daemon thread (``fastq worker --beat``)."""
        self._thread = threading.Thread(target=self.run, name="fastq-beat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and hand back leadership."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run_forever(self) -> int:
        """``fastq beat``: run in this thread; SIGTERM/SIGINT stop it cleanly, a second one at once."""
        count = [0]

        def handle(signum, frame) -> None:
            count[0] += 1
            if count[0] > 1:
                os._exit(1)
            log.warning("%s: beat stopping", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        return self.run()

    # --- listing -----------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Each entry with its last and next run (epoch ms), from the state in Redis."""
        now = self.now_ms()
        states = self.broker.beat_states([(e.queue, e.name) for e in self.entries])
        rows = []
        for e, st in zip(self.entries, states, strict=True):
            last, sent = st["due"], st["sent"]
            nxt = e.schedule.next_after_ms(last if last is not None else now, self.tz)
            rows.append({"name": e.name, "task": e.task, "schedule": describe_schedule(e.schedule),
                         "queue": e.queue, "last_run": sent, "next_run": max(nxt, now) if last else nxt,
                         "overdue": last is not None and nxt <= now})
        return rows

    def format_schedule(self) -> str:
        """The ``fastq beat --list`` table."""
        try:
            self._offset = self.broker.clock("beat") - time.time()  # any node's clock will do for a listing
            leader = self.leader()
            rows = self.describe()
        except CONNECTION_ERRORS as exc:
            raise ImproperlyConfigured(f"cannot reach Redis at {safe_url(self.app.broker_url)}: {exc}") from None

        def when(ms: int | None) -> str:
            return "-" if ms is None else self._fmt(ms)[:19].replace("T", " ")

        head = ("entry", "task", "schedule", "queue", "last sent", "next run")
        table = [head] + [(r["name"], r["task"], r["schedule"], r["queue"], when(r["last_run"]),
                           when(r["next_run"]) + (" (overdue)" if r["overdue"] else "")) for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}; times in {self.app.conf.timezone}; "
                     f"leader: {leader or 'none'}")
        return "\n".join(lines)


def describe_schedule(s: BaseSchedule) -> str:
    """A short human description: ``every 10s``, ``cron 30 7 * * mon-fri``."""
    if isinstance(s, schedule):
        return f"every {s.seconds:g}s"
    if isinstance(s, crontab):
        return "cron " + repr(s).removeprefix("<crontab: ").split(" (m h")[0]
    return repr(s)
